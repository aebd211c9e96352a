"""The virtual board end to end: its pseudo-terminal as a host sees it, its storage log and volume.

Starts `sim.vboard.VirtualBoard` (the C++ Verilator harness, built once and cached), talks to it
with pyserial and `firmware.abi.frames`, and checks the journal against the harness's storage log
and the volume file against that log. Device time comes from the image's DPLLs locked to the
board's time base (the servers start once their port's DPLL has locked), so the entries'
timestamps must agree with the harness's own record of simulated time to within microseconds.
The harness's commands (pause, ransom, silence) are checked against the storage log and, for
silence, against the host's device driver.
"""

import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial

from boards.sim import SIM_BOARD
from firmware.abi import regmap
from firmware.abi.entry import Kind, Mode, Status, entry_bytes, unpack
from firmware.abi.frames import FLUSH_MARK, IDENTITY, IMAGE_ID, IMAGE_VERSION, FrameType
from firmware.abi.frames import decode as decode_frame
from firmware.abi.frames import encode as encode_frame
from hdl.dpll import SLEW_NS

BLOCKS, WRITES, SEED = 32, 6, 7
STAMP_TO_STORAGE_NS = 20_000    # an entry's timestamp to its write's completion: ~3 µs of datapath


class Link:
    """A bare host over a serial port: whole frames in and out."""

    def __init__(self, tty):
        self.port = serial.Serial(tty, timeout=0.2)
        self.buf = bytearray()
        self.seq = 0

    def send(self, ftype, payload=b"", port=0):
        self.seq = (self.seq + 1) & 0xFFFF
        self.port.write(encode_frame(ftype, payload, port=port, seq=self.seq))
        return self.seq

    def frame(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while 0 not in self.buf:
            if time.monotonic() > deadline:
                raise TimeoutError("no frame from the virtual board")
            self.buf += self.port.read(max(1, self.port.in_waiting))
        end = self.buf.index(0)
        wire = bytes(self.buf[:end])
        del self.buf[:end + 1]
        return decode_frame(wire)

    def registers(self, addr, count):
        """`count` registers from `addr` (REG_READ → REG_VALUES)."""
        seq = self.send(FrameType.REG_READ, struct.pack("<HH", addr, count))
        while True:
            kind, _, got_seq, payload = self.frame()
            if kind == FrameType.REG_VALUES and got_seq == seq:
                assert struct.unpack_from("<HH", payload) == (addr, count)
                return struct.unpack_from(f"<{count}I", payload, 4)

    def dpll(self, port):
        """Port `port`'s DPLL registers by name, wide outputs joined from their _lo/_hi words."""
        names = [r.name for r in regmap.PORT if r.group == "dpll"]
        first = regmap.address(names[0], port)
        values = dict(zip(names, self.registers(first, len(names)), strict=True))
        assert [regmap.address(n, port) for n in names] == list(range(first, first + len(names)))
        out = {}
        for reg, output, lsb, _ in regmap.DPLL_WORDS:
            out[output] = out.get(output, 0) | values[reg] << lsb
        return out

    def drain(self, port):
        """JOURNAL entries of `port` up to its FLUSH_MARK (other frames are skipped)."""
        entries = []
        while True:
            kind, p, _, payload = self.frame()
            if p != port:
                continue
            if kind == FrameType.FLUSH_MARK:
                return entries, FLUSH_MARK.unpack(payload)
            if kind != FrameType.JOURNAL:
                continue
            while payload:
                size = entry_bytes(int.from_bytes(payload[24:28], "little"))
                entries.append(payload[:size])
                payload = payload[size:]


def drain(device, port):
    """Flush `port` with the host's driver and acknowledge what came: the entries' seqs."""
    raw, _ = device.flush(port)
    seqs = []
    while raw:
        seqs.append(int.from_bytes(raw[:4], "little"))
        raw = raw[entry_bytes(int.from_bytes(raw[24:28], "little")):]
    if seqs:
        device.ack(port, seqs[-1])
    return seqs


def drain_until(device, done, timeout=60):
    """Keep every port's ring drained (so no server waits on a full ring) until `done()`."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        for p in range(device.identity.ports):
            drain(device, p)


@pytest.fixture(scope="module")
def harness():
    from sim.vboard import build

    return build()


def test_identify_flush_and_storage_log(harness, tmp_path):
    from sim.vboard import KIND_WRITE, VirtualBoard, apply_log, log_origin, server_block

    volume, log = tmp_path / "volume.img", tmp_path / "storage.log"
    ports = SIM_BOARD.ports
    with VirtualBoard(volume, binary=harness, blocks=BLOCKS, log=log, rate=-1, writes=WRITES, seed=SEED,
                      write_fail=0.25, report_ms=50) as board:
        link = Link(board.tty)
        seq = link.send(FrameType.IDENTIFY)
        kind, _, got_seq, payload = link.frame()
        assert (kind, got_seq) == (FrameType.IDENTITY, seq)
        assert IDENTITY.unpack(payload) == (IMAGE_ID, IMAGE_VERSION, ports, Mode.REDO, SIM_BOARD.depth,
                                            SIM_BOARD.block_bytes, 64, 0)
        status = board.wait_status(lambda s: int(s["applied"]) + int(s["write_failed"]) == ports * WRITES)
        assert int(status["writes"]) == ports * WRITES
        dplls = [link.dpll(p) for p in range(ports)]
        later = board.wait_status(lambda s: int(s["time_ns"]) > int(status["time_ns"]))
        journal, marks = {}, {}
        for p in range(ports):
            link.send(FrameType.FLUSH, port=p)
            journal[p], (marks[p], next_seq) = link.drain(p)
            assert next_seq == WRITES
        link.port.close()
    assert board.exit is not None and not board.running()

    records = board.storage_log()
    writes = {(r.port, r.index): r for r in records if r.kind == KIND_WRITE}
    assert len(writes) == len(records) == ports * WRITES
    assert any(not r.ok for r in records) and any(r.ok for r in records)
    origin = log_origin(log)
    for p, d in enumerate(dplls):           # locked once, tracking, time between two harness reports
        assert (d["locked"], d["state"], d["lock_count"]) == (1, 2, 1), (p, d)
        assert d["frames"] > 10 and d["rejected"] == 0, (p, d)
        # A millisecond after lock, with oscillators up to 150 ppm off: inside the slew threshold.
        error = d["phase_error"] - (d["phase_error"] >= 2**31) * 2**32
        assert abs(error) < SLEW_NS, (p, d)
        assert int(status["time_ns"]) < d["time"] < int(later["time_ns"]), (p, d, status, later)
    first = min(r.time_ns for r in records)
    assert origin + 1_000_000 < first < origin + 4_000_000     # servers waited for the lock: ~1.5 ms
    for p in range(ports):
        assert len(journal[p]) == WRITES
        for k, raw in enumerate(journal[p]):
            fields, data = unpack(raw)
            rec = writes[(p, k)]
            assert (fields["seq"], fields["port"], fields["kind"]) == (k, p, Kind.WRITE)
            assert (fields["lba"], data) == (rec.lba, rec.data)
            assert data == server_block(SEED, p, k)
            assert fields["status"] == (Status.OK if rec.ok else Status.PRIMARY_FAILED)
            assert 0 < rec.time_ns - fields["timestamp"] < STAMP_TO_STORAGE_NS, (p, k, rec.time_ns)
            assert fields["timestamp"] < rec.time_ns <= marks[p]
            assert 0 <= fields["lba"] < BLOCKS
    expected = apply_log(bytearray(BLOCKS * SIM_BOARD.block_bytes), records, SIM_BOARD.block_bytes)
    assert volume.read_bytes() == expected


def test_corruption_and_options(harness, tmp_path):
    """Corrupted host bytes give NAKs, not actions; a bad option is refused with a message."""
    from sim.vboard import VirtualBoard

    with VirtualBoard(tmp_path / "v.img", binary=harness, blocks=8, rate=0, corrupt_rx=0.05, seed=3,
                      report_ms=50) as board:
        link = Link(board.tty)
        naks = identities = 0
        for _ in range(20):
            link.send(FrameType.IDENTIFY)
        while True:
            try:
                kind, _, _, _ = link.frame(timeout=2)
            except TimeoutError:
                break
            naks += kind == FrameType.NAK
            identities += kind == FrameType.IDENTITY
        link.port.close()
        status = board.wait_status(lambda s: int(s["rx_corrupted"]) > 0)
    assert naks > 0 and 0 < identities < 20, (naks, identities, status)
    assert int(board.exit["rx_bytes"]) > 0

    with pytest.raises(RuntimeError, match="holds"):
        (tmp_path / "odd.img").write_bytes(b"x" * 1000)
        VirtualBoard(tmp_path / "odd.img", binary=harness, blocks=4).start()


def test_pause_gives_a_quiet_instant(harness, tmp_path):
    """Writes in flight at the pause are answered before the quiet time T; none is after T
    until the resume. Slow storage (80 µs) keeps writes in flight; two ports in copy-on-write
    with failing pre-image reads (a write that yields no primary write)."""
    from host.link.device import Device
    from sim.vboard import KIND_READ, KIND_WRITE, VirtualBoard, apply_log

    volume, log = tmp_path / "volume.img", tmp_path / "storage.log"
    with VirtualBoard(volume, binary=harness, blocks=BLOCKS, log=log, rate=-1, seed=SEED,
                      write_latency=10_000, read_fail=0.2, report_ms=50) as board:
        dev = Device.open(board.tty, flush_timeout=1)
        for p in (2, 3):
            dev.write("mode", Mode.COPY_ON_WRITE, p)
        drain_until(dev, lambda: int(board.status.get("writes", 0)) >= 40)
        board.command("pause")
        drain_until(dev, lambda: any(e["kind"] == "quiet" for e in board.events))
        paused, quiet = board.wait_event("pause"), board.wait_event("quiet", 0)
        board.command("resume")
        resumed = board.wait_event("resume")
        writes = int(board.status["writes"])
        drain_until(dev, lambda: int(board.status["writes"]) > writes + 20)
        dev.close()

    pause_ns, quiet_ns, resume_ns = int(paused["time_ns"]), int(quiet["time_ns"]), int(resumed["time_ns"])
    assert pause_ns < quiet_ns < resume_ns
    records = board.storage_log()
    writes = [r for r in records if r.kind == KIND_WRITE]
    assert any(pause_ns < r.time_ns < quiet_ns for r in writes)        # in flight at the pause
    assert [r for r in writes if quiet_ns <= r.time_ns <= resume_ns] == []
    assert any(r.time_ns > resume_ns for r in writes)
    assert any(r.kind == KIND_READ and not r.ok for r in records)
    assert volume.read_bytes() == apply_log(bytearray(BLOCKS * SIM_BOARD.block_bytes), records,
                                            SIM_BOARD.block_bytes)


def test_ransom_and_refused_commands(harness, tmp_path):
    """A ransom is COUNT garbage writes of one server to consecutive blocks, back to back; the
    servers' own writes keep their numbering. Bad commands get an error event and change nothing."""
    from sim.vboard import KIND_WRITE, VirtualBoard, server_block

    port, lba, count, normal_max = 1, 20, 5, 8
    ports = SIM_BOARD.ports
    with VirtualBoard(tmp_path / "v.img", binary=harness, blocks=BLOCKS, log=tmp_path / "storage.log", rate=5,
                      writes=WRITES, lba_max=normal_max, seed=SEED, report_ms=50) as board:
        board.command(f"ransom {port} 30 5")
        with pytest.raises(RuntimeError, match="outside the volume"):
            board.wait_event("ransom")
        board.command("frobnicate 1")
        assert "frobnicate" in board.wait_event("error")["what"]
        board.wait_status(lambda s: int(s["writes"]) >= 4)
        board.command(f"ransom {port} {lba} {count}")
        started, done = board.wait_event("ransom"), board.wait_event("ransom_done")
        status = board.wait_status(lambda s: int(s["applied"]) == ports * WRITES + count)
    assert (started["port"], started["lba"], started["count"], done["port"]) == (str(port), str(lba),
                                                                                  str(count), str(port))
    assert int(status["writes"]) == ports * WRITES + count

    records = [r for r in board.storage_log() if r.kind == KIND_WRITE]
    assert len(records) == ports * WRITES + count
    own = [r for r in records if r.port == port]
    ransom = [r for r in own if r.lba >= normal_max]
    assert [r.lba for r in ransom] == list(range(lba, lba + count))
    first = own.index(ransom[0])
    assert own[first:first + count] == ransom                          # back to back
    assert int(started["time_ns"]) < ransom[0].time_ns and int(done["time_ns"]) < ransom[-1].time_ns
    blocks = {server_block(SEED, p, n) for p in range(ports) for n in range(WRITES + count)}
    assert len({r.data for r in ransom} - blocks) == count
    for p in range(ports):
        assert [r.data for r in records if r.port == p and r.lba < normal_max] == [
            server_block(SEED, p, n) for n in range(WRITES)], p


def test_silence_and_speak(harness, tmp_path):
    """A silenced port drops the host's FLUSH and ACK (the driver gives up on it) while another
    port answers; after speak the port's journal goes on, no entry lost or repeated."""
    from host.link.device import Device, DeviceError
    from sim.vboard import VirtualBoard

    port, other, writes, depth = 1, 2, 24, SIM_BOARD.depth
    with VirtualBoard(tmp_path / "v.img", binary=harness, blocks=BLOCKS, rate=-1, writes=writes, seed=SEED,
                      report_ms=50) as board:
        dev = Device.open(board.tty, timeout=0.2, tries=2, flush_timeout=0.3)
        board.wait_status(lambda s: int(s["writes"]) == SIM_BOARD.ports * depth)     # every ring full
        raw, _ = dev.flush(port)
        assert len(raw) == depth * entry_bytes(SIM_BOARD.block_bytes)
        board.command(f"silence {port}")
        assert board.wait_event("silence")["port"] == str(port)
        with pytest.raises(DeviceError):
            dev.ack(port, depth - 1)
        with pytest.raises(DeviceError):
            dev.flush(port)
        assert drain(dev, other) == list(range(depth))
        assert dev.read("ring_fill", port) == depth                    # the ACK never arrived
        board.command(f"speak {port}")
        board.wait_event("speak")
        got = []
        while len(got) < writes:
            got += drain(dev, port)
        assert got == list(range(writes))
        dev.close()
    assert int(board.exit["silenced_frames"]) >= 4                      # two ACKs, two FLUSHes


def test_portjournal_sim_stops_on_sigint_even_as_a_background_job(harness, tmp_path):
    """`portjournal sim` started the way a shell starts `cmd &` (SIGINT ignored) still stops
    cleanly on SIGINT: the board exits, its volume synced, and the exit line is printed."""
    tool = Path(sys.executable).with_name("portjournal")
    proc = subprocess.Popen([str(tool), "sim", "--volume", str(tmp_path / "vol.img"), "--blocks", "256"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert proc.stdout.readline().startswith("pty /dev/")
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=30)[0]
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "exit cycles=" in rest
