"""dm-log-writes export and import: format, round trip, malformed logs, and QEMU's blklogwrites as a peer."""

import json
import struct
import subprocess

import crc32c
import numpy as np
import pytest
from click.testing import CliRunner

from firmware.abi.entry import Mode, Status
from host import dmlog
from host.cli import cli
from host.dmlog import DmLogError, export, import_log
from host.journal.base import take_base_copy
from host.journal.store import LocalJournal
from host.restore import restore_to_file
from host.storage import FileStorage
from host.views import open_view
from sim.workload import make_streams

BLOCK = 512
BLOCKS = 48
WINDOW = 10**6
BASE = np.random.default_rng(11).integers(0, 256, BLOCKS * BLOCK, dtype=np.uint8).tobytes()


def restored(journal: LocalJournal, at: int | None = None, *, force: bool = False) -> bytes:
    """The volume at `at` (default: the horizon) the way a user gets it: open_view, restore_to_file."""
    view = open_view(journal, journal.horizon() if at is None else at, force=force)
    out = journal.folder.parent / f"{journal.folder.name}-restored.img"
    try:
        summary = restore_to_file(view, out)
    finally:
        view.backing.close()
    data = out.read_bytes()
    assert summary.crc32c == crc32c.crc32c(data)
    return data


def end_of(journal: LocalJournal) -> int:
    """Just after the journal's newest entry: the instant an exported log's end stands for."""
    return int(journal.index["timestamp"].max()) + 1


def base_image(journal: LocalJournal):
    return journal.folder / journal.state.base.path


def reference(streams, until_ns=None, invalid=None) -> bytes:
    """The same from the generated streams, without the journal: the base copy, then OK writes in
    (time, port, seq) order."""
    vol = bytearray(BASE)
    writes = sorted((int(h["timestamp"]), s.port, int(h["seq"]), int(h["lba"]), bytes(e["data"]))
                    for s in streams for e, h in zip(s.entries, s.entries["header"], strict=True)
                    if h["status"] == Status.OK and (until_ns is None or h["timestamp"] < until_ns)
                    and not (invalid and s.port == invalid[0] and h["timestamp"] >= invalid[1]))
    for _, _, _, lba, data in writes:
        vol[lba * BLOCK:(lba + 1) * BLOCK] = data
    return bytes(vol)


def on_a_write(streams) -> int:
    """The time of a write that changes its block, with no other write at that time: a bookmark
    there must not include it (marks go before the writes stamped at their time)."""
    h = streams[0].entries["header"]
    ok = np.flatnonzero((h["status"] == Status.OK) & (h["timestamp"] >= 25 * WINDOW))
    return int(h["timestamp"][ok[0]])


@pytest.fixture
def source(tmp_path):
    """A 3-port journal with failures, an invalidated port, a random (non-zero) base copy and
    bookmarks, one stamped exactly at a write's time."""
    streams = make_streams(ports=3, entries=500, block_bytes=BLOCK, blocks=BLOCKS, span_ns=40 * WINDOW,
                           failure_rate=0.1, seed=5)
    first = tmp_path / "first.img"
    first.write_bytes(BASE)
    j = LocalJournal.create(tmp_path / "src", block_bytes=BLOCK, ports=3, mode=Mode.REDO, window_ns=WINDOW)
    with FileStorage(first, BLOCK) as storage:
        take_base_copy(j, storage, 0)
    for s in streams:
        for raw, newest in s.batches(32):
            j.append(s.port, raw, newest + 1)
    j.invalidate(2, 30 * WINDOW, "test: missed its deadline")
    j.state.bookmarks = {"early": 5 * WINDOW, "middle": 17 * WINDOW + 3, "same-time": 17 * WINDOW + 3,
                         "on-a-write": on_a_write(streams), "late": 35 * WINDOW, "start": 0}
    j.state.save(j.folder)
    yield j, streams
    j.close()


def parse_log(path):
    """An independent reader of the format, with struct only."""
    raw = path.read_bytes()
    magic, version, nr, sectorsize = struct.unpack_from("<QQQI", raw)
    pos, found = sectorsize, []
    for _ in range(nr):
        sector, nr_sectors, flags, data_len = struct.unpack_from("<QQQQ", raw, pos)
        if flags & 8:
            found.append(("mark", raw[pos + 32:pos + 32 + data_len].decode()))
            assert raw[pos + 32 + data_len:pos + sectorsize] == bytes(sectorsize - 32 - data_len)
            pos += sectorsize
        else:
            assert data_len == 0 and flags == 0
            found.append(("write", sector, raw[pos + sectorsize:pos + sectorsize + nr_sectors * sectorsize]))
            pos += sectorsize + nr_sectors * sectorsize
    assert pos == len(raw)
    return (magic, version, nr, sectorsize), found


def test_export_format(source, tmp_path):
    j, streams = source
    out = tmp_path / "log.bin"
    summary = export(j, out)
    (magic, version, nr, sectorsize), found = parse_log(out)
    assert (magic, version, sectorsize) == (0x6A736677736872, 1, 512)
    assert nr == summary.writes + summary.marks and summary.marks == 6
    usable = sum(int(((s.entries["header"]["status"] == Status.OK)
                      & ~((s.port == 2) & (s.entries["header"]["timestamp"] >= 30 * WINDOW))).sum())
                 for s in streams)
    assert summary.writes == usable
    assert [f[1] for f in found if f[0] == "mark"] == ["start", "early", "middle", "same-time", "on-a-write",
                                                       "late"]
    assert found[0] == ("mark", "start")
    # The state in front of each mark is the reference state at the bookmark's time.
    vol = bytearray(BASE)
    for f in found:
        if f[0] == "write":
            assert len(f[2]) == BLOCK and f[1] % (BLOCK // 512) == 0
            vol[f[1] * 512:f[1] * 512 + BLOCK] = f[2]
        else:
            assert bytes(vol) == reference(streams, j.state.bookmarks[f[1]], invalid=(2, 30 * WINDOW))
    assert bytes(vol) == reference(streams, invalid=(2, 30 * WINDOW))


@pytest.mark.parametrize("merged", [False, True], ids=["received", "merged"])
def test_round_trip(source, tmp_path, merged):
    """export -> import --base -> restore gives, byte for byte, the source's restore at the end and
    at every bookmark."""
    j, streams = source
    if merged:
        assert len(j.merge())         # the source's views then read merged windows too
    out = tmp_path / "log.bin"
    export(j, out)
    summary = import_log(out, tmp_path / "copy", block_bytes=BLOCK, base=base_image(j))
    assert set(summary.marks) == set(j.state.bookmarks)
    with LocalJournal.open(tmp_path / "copy") as copy:
        assert copy.state.ports == 1 and copy.state.mode == Mode.REDO
        assert copy.state.base.time_ns == 0 and copy.state.base.blocks == BLOCKS
        assert (copy.folder / copy.state.base.path).read_bytes() == BASE != bytes(len(BASE))
        assert copy.horizon() == summary.last_ns
        # Port 2 is invalid from 30 windows on, so the source vouches for neither its end nor
        # "late": forced, its views count what merge counts, which is what the log holds.
        expected = reference(streams, invalid=(2, 30 * WINDOW))
        assert restored(copy) == restored(j, end_of(j), force=True) == expected
        for name, t in j.state.bookmarks.items():
            expected = restored(j, t, force=True)
            assert restored(copy, copy.state.bookmarks[name]) == expected, name
            assert expected == reference(streams, t, invalid=(2, 30 * WINDOW)), name
        t = j.state.bookmarks["on-a-write"]      # the write at the mark's time is not in it
        assert restored(j, t + 1, force=True) != restored(j, t, force=True)
        times = copy.index["timestamp"][copy.received()]
        assert np.all(np.diff(times.astype(np.int64)) >= 0) and times[0] >= dmlog.STEP_NS


def test_export_starts_at_the_base_copy(source, tmp_path):
    """Writes and bookmarks older than the base copy are in the base already: not exported."""
    j, streams = source
    at = 20 * WINDOW
    then = tmp_path / "then.img"
    then.write_bytes(restored(j, at))
    with FileStorage(then, BLOCK) as storage:
        take_base_copy(j, storage, at)
    out = tmp_path / "log.bin"
    summary = export(j, out)
    _, found = parse_log(out)
    assert [f[1] for f in found if f[0] == "mark"] == ["on-a-write", "late"]
    assert summary.writes == sum(int(((h["status"] == Status.OK) & (h["timestamp"] >= at)
                                      & ~((s.port == 2) & (h["timestamp"] >= 30 * WINDOW))).sum())
                                 for s in streams for h in [s.entries["header"]])
    import_log(out, tmp_path / "copy", block_bytes=BLOCK, base=base_image(j))
    with LocalJournal.open(tmp_path / "copy") as copy:
        assert restored(copy) == restored(j, end_of(j), force=True)
        assert restored(copy, copy.state.bookmarks["on-a-write"]) == restored(
            j, j.state.bookmarks["on-a-write"], force=True)


def test_export_until_and_cli(source, tmp_path):
    """The commands as a user runs them: `export --until` through the real --at parser (a bookmark
    name, raw ns, a relative time), `import --base`, then `restore`."""
    j, streams = source
    folder = str(j.folder)
    runner = CliRunner()
    out = tmp_path / "until.bin"
    result = runner.invoke(cli, ["export", "--format", "dm-log-writes", "-j", folder, "--until", "middle",
                                 str(out)])
    assert result.exit_code == 0, result.output
    assert "marks" in result.output
    _, found = parse_log(out)
    assert [f[1] for f in found if f[0] == "mark"] == ["start", "early", "middle", "same-time"]
    export(j, tmp_path / "api.bin", until_ns=17 * WINDOW + 3)
    assert out.read_bytes() == (tmp_path / "api.bin").read_bytes()
    t = j.state.bookmarks["on-a-write"]
    for until in (str(t), f"-{j.horizon() - t}ns"):            # raw ns, and relative to the horizon
        result = runner.invoke(cli, ["export", "--format", "dm-log-writes", "-j", folder, "--until", until,
                                     str(tmp_path / "raw.bin")])
        assert result.exit_code == 0, result.output
        export(j, tmp_path / "api.bin", until_ns=t)
        assert (tmp_path / "raw.bin").read_bytes() == (tmp_path / "api.bin").read_bytes(), until
    bad = runner.invoke(cli, ["export", "--format", "dm-log-writes", "-j", folder, "--until", "nonsense",
                              str(tmp_path / "no.bin")])
    assert bad.exit_code == 2 and "--until" in bad.output and "--at" not in bad.output
    assert "is not a time" in bad.output and not (tmp_path / "no.bin").exists()
    result = runner.invoke(cli, ["import", "--format", "dm-log-writes", str(out), "--journal",
                                 str(tmp_path / "imp"), "--block-bytes", "1024", "--volume-bytes",
                                 str(BLOCKS * BLOCK)])
    assert result.exit_code != 0 and "not aligned to 1024-byte blocks" in result.output
    result = runner.invoke(cli, ["import", "--format", "dm-log-writes", str(out), "--journal",
                                 str(tmp_path / "imp1"), "--block-bytes", "256", "--base", str(base_image(j)),
                                 "--volume-bytes", str(BLOCKS * BLOCK * 2)])
    assert result.exit_code == 1 and "differs from the base image" in result.output
    assert not (tmp_path / "imp1").exists()
    result = runner.invoke(cli, ["import", "--format", "dm-log-writes", str(out), "--journal",
                                 str(tmp_path / "imp2"), "--block-bytes", "256",
                                 "--base", str(base_image(j))])
    assert result.exit_code == 0, result.output
    assert "4 marks as bookmarks" in result.output and "volume 96 blocks" in result.output
    restored_img = tmp_path / "r.img"
    result = runner.invoke(cli, ["restore", "-j", str(tmp_path / "imp2"), "--at", "same-time",
                                 "-o", str(restored_img)])
    assert result.exit_code == 0, result.output
    expected = reference(streams, 17 * WINDOW + 3, invalid=(2, 30 * WINDOW))
    assert restored_img.read_bytes() == expected
    with LocalJournal.open(tmp_path / "imp2") as copy:
        assert copy.state.base.blocks == BLOCKS * 2
        assert restored(copy) == expected


def test_cli_errors_are_one_line(source, tmp_path):
    """Unwritable outputs and impossible sizes or times: a one-line error, no traceback."""
    j, _ = source
    folder = str(j.folder)
    runner = CliRunner()
    log = tmp_path / "log.bin"
    export(j, log)
    cases = [
        (["export", "--format", "dm-log-writes", "-j", folder, "/nonexistent/out.log"], 1,
         "cannot write /nonexistent/out.log"),
        (["export", "--format", "dm-log-writes", "-j", folder, "--until", str(2**64), str(tmp_path / "x")], 2,
         "outside device time"),
        (["import", "--format", "dm-log-writes", "-j", str(tmp_path / "i0"), "--block-bytes", "0", str(log)],
         2, "--block-bytes"),
        (["import", "--format", "dm-log-writes", "-j", "/proc/imported", "--block-bytes", "512", str(log)], 1,
         "cannot import into /proc/imported"),
        (["import", "--format", "dm-log-writes", "-j", folder, "--block-bytes", "512", str(log)], 1,
         "already holds a journal"),
    ]
    for args, code, message in cases:
        result = runner.invoke(cli, args)
        assert result.exit_code == code and message in result.output, (args, result.output)
        assert not isinstance(result.exception, (OSError, ArithmeticError)), result.exception
    with pytest.raises(DmLogError, match="positive"):
        import_log(log, tmp_path / "i1", block_bytes=0)
    assert not (tmp_path / "i1").exists()


def test_export_refuses_what_the_format_cannot_hold(tmp_path):
    with LocalJournal.create(tmp_path / "small", block_bytes=64, ports=1, mode=Mode.REDO,
                             window_ns=WINDOW) as j:
        with pytest.raises(DmLogError, match="not whole 512-byte sectors"):
            export(j, tmp_path / "x.bin")
    with LocalJournal.create(tmp_path / "cow", block_bytes=512, ports=1, mode=Mode.COPY_ON_WRITE,
                             window_ns=WINDOW) as j:
        with pytest.raises(DmLogError, match="copy-on-write"):
            export(j, tmp_path / "x.bin")


def log_bytes(entries, sectorsize=512, nr=None):
    """Hand-made logs: entries are (sector, nr_sectors, flags, payload)."""
    body = b""
    for sector, nr_sectors, flags, payload in entries:
        label = payload if flags & dmlog.FLAG_MARK else b""
        body += (struct.pack("<QQQQ", sector, nr_sectors, flags, len(label)) + label).ljust(sectorsize, b"\0")
        if not flags & (dmlog.FLAG_MARK | dmlog.FLAG_DISCARD):
            body += payload
    count = len(entries) if nr is None else nr
    return struct.pack("<QQQI", dmlog.MAGIC, 1, count, sectorsize).ljust(sectorsize, b"\0") + body


def test_malformed_logs_are_clear_errors(tmp_path):
    good = log_bytes([(0, 1, 0, b"a" * 512), (0, 0, dmlog.FLAG_MARK, b"m")])
    cases = {
        "bad magic": b"\0" * 8 + good[8:],
        "version 2 is not supported": good[:8] + struct.pack("<Q", 2) + good[16:],
        "too short": good[:10],
        "truncated: entry 0 at byte 512 holds 512 bytes": good[:1500],
        "truncated: entry 2 of 3": log_bytes([(0, 1, 0, b"a" * 512), (0, 0, dmlog.FLAG_MARK, b"m")], nr=3),
        "unknown flags": log_bytes([(0, 1, 64, b"a" * 512)]),
        "not a power of two": good[:24] + struct.pack("<I", 100) + good[28:],
    }
    for n, (message, raw) in enumerate(cases.items()):
        path = tmp_path / f"bad{n}.bin"
        path.write_bytes(raw)
        with pytest.raises(DmLogError, match=message):
            import_log(path, tmp_path / f"j{n}", block_bytes=512)
        assert not (tmp_path / f"j{n}").exists()      # nothing created from a bad log
    path = tmp_path / "bad.bin"
    path.write_bytes(b"\0" * 8 + good[8:])
    result = CliRunner().invoke(cli, ["import", "--format", "dm-log-writes", str(path), "--journal",
                                      str(tmp_path / "jj"), "--block-bytes", "512"])
    assert result.exit_code == 1 and "bad magic" in result.output


def test_discards_flushes_and_marks(tmp_path):
    raw = log_bytes([(0, 0, dmlog.FLAG_FLUSH, b""), (2, 2, dmlog.FLAG_FUA, b"x" * 1024),
                     (0, 0, dmlog.FLAG_MARK, b"after-x"), (0, 8, dmlog.FLAG_DISCARD, b""),
                     (0, 0, dmlog.FLAG_MARK, b"after-x"), (6, 1, 0, b"y" * 512)])
    path = tmp_path / "log.bin"
    path.write_bytes(raw)
    with pytest.raises(DmLogError, match="discards blocks 0..8"):
        import_log(path, tmp_path / "r", block_bytes=512, discard="reject")
    s = import_log(path, tmp_path / "z", block_bytes=512, volume_bytes=16 * 512)
    assert (s.writes, s.blocks, s.discards, s.zero_blocks, s.flushes) == (2, 3, 1, 2, 1)
    assert s.marks == {"after-x": 3000, "after-x (2)": 5000} and s.volume_blocks == 16
    with LocalJournal.open(tmp_path / "z") as j:
        assert restored(j, 3000) == bytes(1024) + b"x" * 1024 + bytes(6 * 1024)
        assert restored(j, 5000) == bytes(16 * 512)
        assert restored(j) == bytes(6 * 512) + b"y" * 512 + bytes(9 * 512)
    # On a non-zero base a discard zeroes its whole range, not only the blocks the log wrote.
    base = tmp_path / "base.img"
    base.write_bytes(b"b" * 16 * 512)
    s = import_log(path, tmp_path / "b", block_bytes=512, base=base)
    assert s.zero_blocks == 8 and s.volume_blocks == 16
    with LocalJournal.open(tmp_path / "b") as j:
        assert restored(j, 0) == base.read_bytes()
        assert restored(j, 3000) == b"b" * 1024 + b"x" * 1024 + b"b" * 6 * 1024
        assert restored(j) == bytes(6 * 512) + b"y" * 512 + bytes(512) + b"b" * 8 * 512
    base.write_bytes(b"b" * 3 * 512)
    with pytest.raises(DmLogError, match="runs past the volume's 3 blocks"):
        import_log(path, tmp_path / "short", block_bytes=512, base=base)
    with pytest.raises(DmLogError, match="runs past the volume's 4 blocks"):
        import_log(path, tmp_path / "small", block_bytes=512, volume_bytes=4 * 512)


# --- QEMU's blklogwrites driver writes the same format: a real peer ---------------------------------

def qemu_io(data, log, *commands, append=False):
    spec = {"driver": "blklogwrites", "file": {"driver": "file", "filename": str(data)},
            "log": {"driver": "file", "filename": str(log)}}
    spec["log-append" if append else "log-sector-size"] = True if append else 512
    args = ["qemu-io"]
    for c in (*commands, "flush"):
        args += ["-c", c]
    result = subprocess.run([*args, "json:" + json.dumps(spec)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_import_a_log_written_by_qemu(tmp_path):
    data, log = tmp_path / "data.img", tmp_path / "log.img"
    data.write_bytes(bytes(256 * 1024))
    log.write_bytes(b"")
    qemu_io(data, log, "write -P 0xab 4096 8192", "write -P 0xcd 0 512", "discard 4096 4096",
            "write -z 65536 4096", "write -P 0x11 131072 65536")
    s = import_log(log, tmp_path / "j", block_bytes=512, volume_bytes=256 * 1024)
    assert s.writes == 4 and s.discards == 1 and s.flushes >= 1
    with LocalJournal.open(tmp_path / "j") as j:
        assert restored(j) == data.read_bytes()


def test_qemu_appends_to_an_exported_log(source, tmp_path):
    """QEMU walks our exported entries to find the end of the log, then appends its own."""
    j, streams = source
    log = tmp_path / "log.bin"
    export(j, log)
    data = tmp_path / "data.img"
    data.write_bytes(restored(j, end_of(j), force=True))
    qemu_io(data, log, "write -P 0x5a 1024 1536", append=True)
    s = import_log(log, tmp_path / "j", block_bytes=BLOCK, base=base_image(j))
    assert s.writes == export(j, tmp_path / "again.bin").writes + 1
    with LocalJournal.open(tmp_path / "j") as copy:
        assert restored(copy) == data.read_bytes()
