"""Base copy, compaction, the collector's deadlines and the journal CLI."""

import numpy as np
import pytest
from click.testing import CliRunner

from firmware.abi.entry import Mode, Status
from host.cli import cli
from host.journal.base import compact, resync, take_base_copy
from host.journal.collector import Collector, LinkFault
from host.journal.store import NEVER, JournalError, LocalJournal
from host.storage import FileStorage, StorageError
from sim.workload import make_streams

BLOCK = 64
BLOCKS = 32
WINDOW = 10**6


def new_journal(tmp_path, ports, **kwargs):
    return LocalJournal.create(tmp_path / "j", block_bytes=BLOCK, ports=ports, mode=Mode.REDO,
                               window_ns=WINDOW, **kwargs)


def volume(tmp_path, seed=0):
    path = tmp_path / "volume.img"
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, BLOCK * BLOCKS, dtype=np.uint8).tobytes())
    return path


def shadow_at(base: bytes, streams, until_ns: int) -> bytes:
    """The volume after every OK write stamped before `until_ns`, applied in (time, port, seq) order."""
    vol = bytearray(base)
    writes = sorted((int(h["timestamp"]), s.port, int(h["seq"]), int(h["lba"]), bytes(e["data"]))
                    for s in streams for e, h in zip(s.entries, s.entries["header"], strict=True)
                    if h["status"] == Status.OK and h["timestamp"] < until_ns)
    for _, _, _, lba, data in writes:
        vol[lba * BLOCK:(lba + 1) * BLOCK] = data
    return bytes(vol)


def test_compaction_folds_history_into_the_base(tmp_path):
    vol = volume(tmp_path)
    streams = make_streams(ports=3, entries=600, block_bytes=BLOCK, blocks=BLOCKS, span_ns=50 * WINDOW,
                           failure_rate=0.1, seed=2)
    with new_journal(tmp_path, ports=3, segment_bytes=2048) as j:
        with FileStorage(vol, BLOCK) as storage:
            take_base_copy(j, storage, 0)
        for s in streams:
            for raw, newest in s.batches(8):
                j.append(s.port, raw, newest + 1)
        j.merge()
        segments_before = len(j.segment_paths())
        summary = compact(j, retention_ns=20 * WINDOW)
        cutoff = summary["cutoff_ns"]
        assert cutoff > 0 and summary["blocks_folded"] > 0 and summary["segments_removed"] > 0
        assert len(j.segment_paths()) == segments_before - summary["segments_removed"]
        assert j.state.base.time_ns == cutoff
        assert (j.folder / j.state.base.path).read_bytes() == shadow_at(vol.read_bytes(), streams, cutoff)
        assert np.all(j.merged["window_end"] > cutoff)
    with LocalJournal.open(tmp_path / "j", segment_bytes=2048) as j:   # survives a reopen
        assert list(j.last_seq) == [len(s.entries) - 1 for s in streams]
        assert np.all(j.index["timestamp"][j.index["seg"] == j.index["seg"].min()] >= 0)
        assert len(j.read_at(j.merged["seg"], j.merged["offset"])) == len(j.merged)


def test_redo_compaction_needs_a_base(tmp_path):
    streams = make_streams(ports=1, entries=50, block_bytes=BLOCK, blocks=BLOCKS, span_ns=10 * WINDOW)
    with new_journal(tmp_path, ports=1) as j:
        for raw, newest in streams[0].batches(50):
            j.append(0, raw, newest + 1)
        j.merge()
        with pytest.raises(Exception, match="needs a base copy"):
            compact(j, 0)


def test_storage_reader_checks_geometry(tmp_path):
    bad = tmp_path / "odd.img"
    bad.write_bytes(bytes(100))
    with pytest.raises(StorageError, match="whole number"):
        FileStorage(bad, BLOCK)
    with pytest.raises(StorageError, match="cannot open"):
        FileStorage(tmp_path / "missing.img", BLOCK)
    with FileStorage(volume(tmp_path), BLOCK) as s, pytest.raises(StorageError, match="outside"):
        s.read(BLOCKS - 1, 2)


class FakePorts:
    """A device driver double: serves each port's stream in flushes, with faults on demand."""

    def __init__(self, streams, batch):
        self.streams, self.batch = streams, batch
        self.acked = [-1] * len(streams)
        self.down: set[int] = set()
        self.skip_once: set[int] = set()
        self.damage_once: set[int] = set()
        self.resends = 0

    def flush(self, port):
        if port in self.down:
            raise LinkFault("timeout")
        if port in self.damage_once:        # a batch damaged in the port's memory or on the way
            self.damage_once.discard(port)
            raw, newest = self.flush(port)
            return raw[:40] + bytes([raw[40] ^ 1]) + raw[41:], newest
        start = self.acked[port] + 1
        if port in self.skip_once:          # a lost frame: the next batch arrives first
            self.skip_once.discard(port)
            start += self.batch
        chunk = self.streams[port].entries[start:start + self.batch]
        newest = int(chunk["header"]["timestamp"][-1]) + 1 if len(chunk) else 0
        return chunk.tobytes(), newest

    def ack(self, port, seq):
        assert seq >= self.acked[port]
        self.acked[port] = seq

    def resend(self, port):
        self.resends += 1


def test_collector_invalidates_a_silent_port_and_resends_after_a_gap(tmp_path):
    streams = make_streams(ports=3, entries=300, block_bytes=BLOCK, blocks=BLOCKS, span_ns=30 * WINDOW)
    now = [0.0]
    link = FakePorts(streams, batch=10)
    with new_journal(tmp_path, ports=3) as j:
        collector = Collector(j, link, deadline_s=1.0, clock=lambda: now[0])
        collector.poll()
        link.skip_once.add(0)
        gap = [p for p in collector.poll() if p.port == 0][0]
        assert "lost" in gap.error and link.resends == 1 and not gap.invalidated
        collector.poll()
        assert link.acked[0] == 19                       # caught up after the resend
        link.damage_once.add(1)
        damaged = [p for p in collector.poll() if p.port == 1][0]
        assert "CRC" in damaged.error and damaged.entries == 0 and link.resends == 2
        collector.poll()
        assert link.acked[1] == 39                       # the damaged batch came again, intact
        link.down.add(2)
        flushed_before = int(j.flushed_through[2])
        now[0] = 0.5
        assert not any(p.invalidated for p in collector.poll())
        now[0] = 1.6
        polls = collector.poll()
        assert [p.port for p in polls if p.invalidated] == [2]
        since = j.invalid_since()
        assert since[2] == flushed_before and since[0] == NEVER
        assert [p.port for p in collector.poll()] == [0, 1]   # an invalid port is not polled
        assert "deadline" in j.state.port_state[2].reason
    with LocalJournal.open(tmp_path / "j") as j:            # the verdict is durable
        assert j.invalid_since()[2] == flushed_before
        vol = volume(tmp_path)
        with FileStorage(vol, BLOCK) as storage:
            resync(j, 2, storage, time_ns=5 * WINDOW)
        assert j.invalid_since()[2] == NEVER and j.valid_from()[2] == 5 * WINDOW


def test_a_port_back_from_an_outage_is_reinstated_with_its_backlog(tmp_path):
    streams = make_streams(ports=2, entries=200, block_bytes=BLOCK, blocks=BLOCKS, span_ns=20 * WINDOW)
    now = [0.0]
    link = FakePorts(streams, batch=10)
    with new_journal(tmp_path, ports=2) as j:
        collector = Collector(j, link, deadline_s=1.0, clock=lambda: now[0])
        for _ in range(3):
            collector.poll()
        link.down.add(1)
        now[0] = 2.0
        collector.poll()
        since = int(j.invalid_since()[1])
        assert since != NEVER
        for _ in range(10):                              # port 0 goes on, merged without port 1
            collector.poll()
        j.merge()
        assert j.merged_through > since
        with pytest.raises(LinkFault):                   # still silent: nothing changes
            collector.reinstate(1)
        assert j.invalid_since()[1] == since
        link.down.discard(1)
        outage = collector.reinstate(1)
        assert outage[0] == since < outage[1] == int(j.flushed_through[1])
        assert j.invalid_since()[1] == NEVER and j.state.port_state[1].outages == [list(outage)]
        assert j.merged_through <= since                 # windows merged without port 1 taken back
        for _ in range(20):
            collector.poll()
        index = j.index
        seqs = index["seq"][index["port"] == 1]
        assert list(seqs) == list(range(len(streams[1].entries)))     # nothing lost, nothing twice
        j.merge()
        # Port 1's writes during the outage now count: the merged portion equals a fresh merge.
        with new_journal(tmp_path / "fresh", ports=2) as fresh:
            for port in range(2):
                fresh.append(port, streams[port].entries.tobytes(), int(j.flushed_through[port]))
            fresh.merge()
            assert fresh.merged_through == j.merged_through
            assert sorted(map(tuple, fresh.merged[["lba", "window_end"]].tolist())) == \
                sorted(map(tuple, j.merged[["lba", "window_end"]].tolist()))
        with pytest.raises(JournalError, match="valid"):
            j.reinstate(1)


def test_cli_verify_exit_codes_and_reports(tmp_path):
    folder = tmp_path / "j"
    runner = CliRunner()
    assert runner.invoke(cli, ["journal", "create", "-j", str(folder), "--ports", "2", "--block-bytes",
                               str(BLOCK), "--window", "1ms"]).exit_code == 0
    streams = make_streams(ports=2, entries=100, block_bytes=BLOCK, blocks=BLOCKS, span_ns=10 * WINDOW)
    with LocalJournal.open(folder) as j:
        for s in streams:
            for raw, newest in s.batches(10):
                j.append(s.port, raw, newest + 1)
    ok = runner.invoke(cli, ["journal", "verify", "-j", str(folder)])
    assert ok.exit_code == 0 and "ok" in ok.output
    merged = runner.invoke(cli, ["journal", "merge", "-j", str(folder)])
    assert merged.exit_code == 0 and "merged" in merged.output
    info = runner.invoke(cli, ["journal", "info", "-j", str(folder)])
    assert info.exit_code == 0 and "100 entries" in info.output
    seg = next((folder / "received").glob("*.seg"))
    raw = bytearray(seg.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    seg.write_bytes(bytes(raw))
    bad = runner.invoke(cli, ["journal", "verify", "-j", str(folder)])
    assert bad.exit_code == 3 and f"{seg}:" in bad.output and "problem" in bad.output    # check failed
    refused = runner.invoke(cli, ["journal", "info", "-j", str(folder)])
    assert refused.exit_code == 1 and "not served" in refused.output
    ports = runner.invoke(cli, ["ports", "-j", str(tmp_path / "nothing")])
    assert ports.exit_code == 1 and "not a journal" in ports.output
    wrong = runner.invoke(cli, ["journal", "compact", "-j", str(folder), "--retention", "soon"])
    assert wrong.exit_code == 2 and "not a duration" in wrong.output


def test_cli_refuses_bad_state_and_negative_times(tmp_path):
    folder = tmp_path / "j"
    new_journal(tmp_path, ports=1).close()
    vol = volume(tmp_path)
    runner = CliRunner()
    negative = runner.invoke(cli, ["journal", "base", "-j", str(folder), "--storage", str(vol), "--at", "-5"])
    assert negative.exit_code == 2 and "-5" in negative.output
    (folder / "journal.json").write_text('{"format": 1}')
    broken = runner.invoke(cli, ["journal", "info", "-j", str(folder)])
    assert broken.exit_code == 1 and "not a readable journal state" in broken.output
    assert broken.exception is None or isinstance(broken.exception, SystemExit)
