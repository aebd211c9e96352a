"""The virtual board end to end: its pseudo-terminal as a host sees it, its storage log and volume.

Starts `sim.vboard.VirtualBoard` (the C++ Verilator harness, built once and cached), talks to it
with pyserial and `firmware.abi.frames`, and checks the journal against the harness's storage log
and the volume file against that log. Device time comes from the image's DPLLs locked to the
board's time base (the servers start once their port's DPLL has locked), so the entries'
timestamps must agree with the harness's own record of simulated time to within microseconds.
"""

import struct

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
        import time

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
