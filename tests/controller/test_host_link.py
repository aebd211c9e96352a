"""The host link (`host.link`) against a scripted board on a pseudo-terminal (`fake_board.py`):
requests and their repeats, damaged bytes either way, the journal stream and the Collector."""

import os
import random
import termios
import time

import pytest
from fake_board import FakeBoard

from firmware.abi.entry import Mode, unpack
from firmware.abi.frames import IMAGE_ID, IMAGE_VERSION, FrameType
from firmware.abi.frames import encode as encode_frame
from host.journal.collector import Collector
from host.journal.store import LocalJournal
from host.link.device import Device, DeviceError
from host.link.dma import DmaDevice
from host.link.serial import SerialTransport, TransportError

BLOCK = 64


def open_device(board, **kwargs):
    kwargs.setdefault("timeout", 0.2)
    kwargs.setdefault("flush_timeout", 0.3)
    return Device.open(board.path, **kwargs)


def blocks(rng, n):
    return [(rng.randrange(1 << 30), rng.randbytes(BLOCK)) for _ in range(n)]


def test_identify_and_registers():
    with FakeBoard(ports=3) as board, open_device(board) as dev:
        ident = dev.identity
        assert (ident.image_id, ident.ports, ident.mode, ident.block_bytes) == (IMAGE_ID, 3, Mode.REDO, BLOCK)
        assert dev.write("scratch", 0xDEADBEEF) == 0xDEADBEEF
        assert dev.read("scratch") == 0xDEADBEEF
        assert dev.write("watermark", 5, port=2) == 5
        assert dev.read_block(2)["watermark"] == 5
        assert dev.read_block()["ports"] == 3
        assert dev.read_registers(0, 3) == [IMAGE_ID, board.reg(1), 3]
        assert dev.write("reenable", 1, port=1) == 0 and board.pulses == [("reenable", 1)]
        c = dev.link_counters()
        assert c["retries"] == c["timeouts"] == c["naks"] == 0 and c["rx_crc_errors"] == 0


def test_injection_needs_a_standalone_board():
    """A board whose image has no on-chip volume is told apart before anything is sent."""
    with FakeBoard() as board, open_device(board) as dev:
        assert not dev.identity.standalone
        sent = len(board.requests)
        with pytest.raises(DeviceError, match="takes no injected writes.*--standalone"):
            dev.inject_write(0, 0, bytes(BLOCK))
        with pytest.raises(DeviceError, match="takes no injected writes"):
            dev.read_stored_block(0)
        assert len(board.requests) == sent


def test_nak_and_lost_response_are_repeated():
    with FakeBoard() as board, open_device(board) as dev:
        damaged = {"left": 1}

        def lose_first_response(ftype, wire):      # the response to the next read is lost once
            if ftype == FrameType.REG_VALUES and damaged["left"]:
                damaged["left"] -= 1
                return b""
            return wire
        board.tx_filter = lose_first_response
        t0 = time.monotonic()
        assert dev.read("ports") == 2
        assert 0.15 < time.monotonic() - t0 < 1.0
        assert dev.counters.timeouts == 1 and dev.counters.retries == 1

        # A request damaged on its way: the board NAKs (seq 0) and the host sends it again at once.
        original = dev.transport.send_raw
        hits = {"n": 0}

        def flip_once(wire):
            if hits["n"] == 0:
                hits["n"] += 1
                wire = wire[:3] + bytes([wire[3] ^ 0x20]) + wire[4:]
            original(wire)
        dev.transport.send_raw = flip_once
        t0 = time.monotonic()
        assert dev.write("scratch", 77) == 77
        assert time.monotonic() - t0 < 0.15            # no timeout waited: the NAK triggered the repeat
        assert dev.counters.naks == 1 and board.naks == 1


def test_damaged_and_garbage_frames_from_the_board_are_counted():
    rng = random.Random(5)
    with FakeBoard() as board, open_device(board) as dev:
        kinds = iter(["crc", "truncate", "garbage", "cobs"] * 3)

        def spoil(ftype, wire):
            if ftype != FrameType.REG_VALUES:
                return wire
            kind = next(kinds, None)
            if kind == "crc":                          # one bit flipped inside: CRC mismatch
                return wire[:5] + bytes([wire[5] ^ 0x01]) + wire[6:]
            if kind == "truncate":                     # cut short, then the delimiter
                return wire[:7] + b"\0" + wire
            if kind == "garbage":                      # noise before the frame, with and without zeros
                return bytes(rng.randrange(1, 256) for _ in range(30)) + b"\0\0\0" + wire
            if kind == "cobs":                         # a code byte pointing past the delimiter
                return b"\xf0\x01\x02\0" + wire
            return wire
        board.tx_filter = spoil
        for i in range(12):
            assert dev.write("scratch", i) == i
        c = dev.transport.counters
        assert c.rx_crc_errors >= 3 and c.rx_length_errors >= 3 and c.rx_cobs_errors >= 3, c
        assert dev.counters.retries >= 3              # the CRC-damaged answers were asked again

        # A run without any delimiter longer than any frame is dropped, and the link recovers.
        board._write(bytes(rng.randrange(1, 256) for _ in range(10000)) + b"\0")
        assert dev.read("scratch") == 11
        assert c.rx_oversized >= 1

        # The host's own garbage and truncated frames: the board NAKs them, nothing breaks.
        dev.transport.send_raw(b"\x05\x11\x22\0" + encode_frame(FrameType.IDENTIFY, seq=9)[:6] + b"\0")
        assert dev.read("scratch") == 11
        assert board.naks >= 2


def test_pulse_write_is_not_repeated_after_silence():
    with FakeBoard() as board, open_device(board) as dev:
        board.rx_filter = lambda frame: frame[0] != FrameType.REG_WRITE
        with pytest.raises(DeviceError, match="not repeated"):
            dev.write("reenable", 1, port=0)
        assert sum(f[0] == FrameType.REG_WRITE for f in board.requests) == 1
        with pytest.raises(DeviceError, match="no answer to REG_WRITE"):
            dev.write("watermark", 1, port=0)
        assert sum(f[0] == FrameType.REG_WRITE for f in board.requests) == 1 + dev.tries


@pytest.mark.parametrize("mode, message", [("silent", "nothing was received"),
                                           ("garbage", "no portjournal frame"),
                                           ("echo", "sends back the host's own requests")])
def test_not_a_portjournal_device(mode, message):
    with FakeBoard(mode=mode) as board:
        t0 = time.monotonic()
        with pytest.raises(DeviceError, match=message):
            Device.open(board.path)                     # default timing: 3 tries × 0.5 s
        assert time.monotonic() - t0 < 3.0


def test_paths_that_are_not_serial_ports(tmp_path):
    with pytest.raises(TransportError, match="no such device"):
        SerialTransport(str(tmp_path / "ttyNothing"))
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(TransportError, match="not a serial device"):
        SerialTransport(str(tmp_path / "file"))
    with pytest.raises(TransportError, match="serial port|terminal"):
        SerialTransport("/dev/null")


@pytest.mark.parametrize("content", [None, b"", b"\0" * 10, b"\0" * 4095])
def test_paths_that_are_not_host_memory_files(tmp_path, content):
    """The DMA link refuses a path that is not a virtual board's host-memory file — missing, a
    device, empty or smaller than the mailbox page — with one clear message, also from the CLI."""
    from click.testing import CliRunner

    from host.cli import cli

    path = "/dev/null" if content is None else str(tmp_path / "host-mem.bin")
    if content is not None:
        (tmp_path / "host-mem.bin").write_bytes(content)
    with pytest.raises(DeviceError, match="not a virtual board's host-memory file"):
        DmaDevice.open(path)
    result = CliRunner().invoke(cli, ["status", "--link", "dma", "--port", path])
    assert result.exit_code == 1, result.output
    assert "not a virtual board's host-memory file" in result.output and "Traceback" not in result.output


def test_a_missing_host_memory_file_is_named_so(tmp_path):
    with pytest.raises(DeviceError, match="no such file: `portjournal sim --link dma` prints"):
        DmaDevice.open(str(tmp_path / "host-mem.bin"))


def test_host_memory_in_use_is_refused_and_released(tmp_path):
    """One process at a time on a host-memory file: a file another holder has locked is refused
    at once, and an open that fails later (no board answers) leaves the file unlocked."""
    import fcntl

    path = tmp_path / "host-mem.bin"
    path.write_bytes(bytes(2 * 4096))
    with open(path, "rb") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        with pytest.raises(DeviceError, match="in use by another portjournal process"):
            DmaDevice.open(str(path), timeout=0.05)
    with pytest.raises(DeviceError, match="did not answer"):
        DmaDevice.open(str(path), timeout=0.05)
    with open(path, "rb") as after:
        fcntl.flock(after, fcntl.LOCK_EX | fcntl.LOCK_NB)      # free again


def test_a_terminal_is_left_as_it_was():
    """A terminal given by mistake (a pty in its default, cooked mode) gets its settings back."""
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        transport = SerialTransport(os.ttyname(slave))
        assert termios.tcgetattr(slave) != before            # pyserial made it raw
        transport.close()
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_flush_ack_resend_with_lost_frames():
    rng = random.Random(7)
    with FakeBoard(per_frame=2) as board, open_device(board) as dev:
        writes = blocks(rng, 9)
        board.write_blocks(0, writes)
        lost = {"journal": 1, "mark": 0}

        def lose(ftype, wire):
            if ftype == FrameType.JOURNAL and lost["journal"]:     # the second frame of the drain
                lost["journal"] = 0 if lost.get("seen") else 1
                lost["seen"] = True
                return b"" if lost["journal"] == 0 else wire
            if ftype == FrameType.FLUSH_MARK and lost["mark"]:
                lost["mark"] = 0
                return b""
            return wire
        board.tx_filter = lose
        raw, through = dev.flush(0)
        entries = [raw[i:i + 104] for i in range(0, len(raw), 104)]
        assert [unpack(e)[0]["seq"] for e in entries] == list(range(9))
        assert [(unpack(e)[0]["lba"], unpack(e)[1]) for e in entries] == writes
        assert through == board.ports[0].time
        assert dev.counters.gaps == dev.counters.resends == 1 and dev.counters.duplicates >= 1

        dev.ack(0, 8)
        assert board.ports[0].tail == 9 and dev.streams[0].entries == {}
        board.write_blocks(0, blocks(rng, 2))
        lost["mark"] = 1                                # the drain's FLUSH_MARK is lost: quiet, FLUSH again
        raw, _ = dev.flush(0)
        assert dev.counters.timeouts == 1 and dev.counters.flushes == 3
        assert [unpack(raw[i:i + 104])[0]["seq"] for i in range(0, len(raw), 104)] == [9, 10]
        raw2, _ = dev.flush(0)                          # not acknowledged: handed out again, nothing new
        assert raw2 == raw
        dev.resend(0)                                   # the board sends 9 and 10 again: duplicates
        raw3, _ = dev.flush(0)
        assert raw3 == raw


def collect_all(board, dev, journal, total, limit_s=30):
    collector = Collector(journal, dev, deadline_s=10)
    end = time.monotonic() + limit_s
    while len(journal.index) < total and time.monotonic() < end:
        for poll in collector.poll():
            assert not poll.invalidated, poll
    return collector


@pytest.mark.parametrize("rate", [0.0, 3e-4])
def test_collector_over_a_damaged_link(tmp_path, rate):
    """Two ports, 2 × 300 entries, bytes corrupted and dropped both ways: each entry stored once."""
    rng = random.Random(11)
    with FakeBoard(per_frame=4, seed=3, corrupt=(rate, rate), drop=(rate, rate)) as board, \
            open_device(board, tries=6) as dev, \
            LocalJournal.create(tmp_path / "j", block_bytes=BLOCK, ports=2, mode=Mode.REDO,
                                window_ns=10**6) as journal:
        writes = {p: [] for p in range(2)}
        for burst in range(10):
            for p in range(2):
                more = blocks(rng, 30)
                writes[p] += more
                board.write_blocks(p, more)
            collect_all(board, dev, journal, total=60 * (burst + 1))
        index = journal.index
        assert len(index) == 600
        for p in range(2):
            mine = index[index["port"] == p]
            assert list(mine["seq"]) == list(range(300))
            got = [(int(r["lba"]), bytes(d)) for r, d in zip(mine, journal.read_data(
                (index["port"] == p).nonzero()[0]), strict=True)]
            assert got == writes[p]
            assert board.ports[p].tail == 300
        if rate:                                        # damage happened both ways, and was recovered
            assert dev.transport.counters.rx_errors > 0 and board.naks > 0
            assert dev.counters.retries + dev.counters.resends > 0


def test_transport_survives_the_other_end_closing():
    board = FakeBoard()
    board.__enter__()
    dev = open_device(board)
    os.close(board.master)
    board._stop.set()
    board.master = os.open("/dev/null", os.O_RDONLY)     # so __exit__ closes something valid
    with pytest.raises((DeviceError, TransportError)):
        dev.read("scratch")
    dev.close()
    board.__exit__()


def test_status_command():
    from click.testing import CliRunner

    from host.cli import cli

    with FakeBoard(ports=2) as board:
        board.write_blocks(1, blocks(random.Random(1), 3))
        result = CliRunner().invoke(cli, ["status", "--port", board.path, "--timeout", "0.2"])
        assert result.exit_code == 0, result.output
        major, minor = IMAGE_VERSION >> 16, IMAGE_VERSION & 0xFFFF
        assert f"portjournal image 0x504a524e version {major}.{minor}, 2 ports, redo" in result.output
        for name in ("dpll_locked", "ring_fill", "entries_written", "rx_crc_errors", "host rx_frames"):
            assert name in result.output
        assert "3/64" in result.output                 # port 1's ring holds 3 of 64 entries
        locked_row = next(line for line in result.output.splitlines() if "dpll_locked" in line)
        assert "unlocked" in locked_row and "board clock" not in locked_row
    result = CliRunner().invoke(cli, ["status", "--port", "/dev/null"])
    assert result.exit_code == 1 and "cannot open as a serial port" in result.output


def test_status_of_a_board_clock_image():
    """A board whose ports count time on its clock (no DPLL) is shown as such, not as unlocked."""
    from click.testing import CliRunner

    from firmware.abi.frames import FEATURE_BOARD_CLOCK
    from host.cli import cli

    with FakeBoard(ports=1, features=FEATURE_BOARD_CLOCK) as board:
        result = CliRunner().invoke(cli, ["status", "--port", board.path, "--timeout", "0.2"])
        assert result.exit_code == 0, result.output
        locked_row = next(line for line in result.output.splitlines() if "dpll_locked" in line)
        assert "board clock" in locked_row and "unlocked" not in locked_row


def test_collect_command_until_interrupted(tmp_path):
    import signal
    import threading

    from click.testing import CliRunner

    from host.cli import cli

    rng = random.Random(2)
    with FakeBoard(ports=2) as board:
        for p in range(2):
            board.write_blocks(p, blocks(rng, 40))
        args = ["collect", "--port", board.path, "--timeout", "0.2", "-j", str(tmp_path / "j")]
        result = CliRunner().invoke(cli, [*args, "--duration", "1"])
        assert result.exit_code == 0, result.output
        assert "creating journal" in result.output and "80 entries stored" in result.output
        board.write_blocks(0, blocks(rng, 5))
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert "stopped (interrupted): 5 entries stored" in result.output
        with LocalJournal.open(tmp_path / "j", readonly=True) as j:
            assert [int(s) for s in j.last_seq] == [44, 39]
            assert [p.tail for p in board.ports] == [45, 40]    # acknowledged = stored, no more
        # A new journal for the same board: each port's history starts at its ring's tail.
        board.write_blocks(1, blocks(rng, 3))
        args[-1] = str(tmp_path / "j2")
        result = CliRunner().invoke(cli, [*args, "--duration", "1"])
        assert result.exit_code == 0, result.output
        assert "creating journal" in result.output and "3 entries stored" in result.output
        with LocalJournal.open(tmp_path / "j2", readonly=True) as j:
            assert [int(s) for s in j.last_seq] == [44, 42] and len(j.index) == 3
