"""Primary journal store: durability, resends, gaps, torn tails and corruption."""

import os

import numpy as np
import pytest

from firmware.abi.entry import Kind, Mode, Status, entry_bytes, pack
from host.journal.records import HEADER_BYTES, scan
from host.journal.store import JournalBusy, JournalCorrupt, JournalError, LocalJournal, SequenceGap
from host.journal.verify import verify
from sim.workload import make_streams

BLOCK = 64


@pytest.fixture
def streams():
    return make_streams(ports=2, entries=200, block_bytes=BLOCK, blocks=16, span_ns=10**7, seed=3)


def new_journal(tmp_path, **kw):
    return LocalJournal.create(tmp_path / "j", block_bytes=BLOCK, ports=2, mode=Mode.REDO,
                               window_ns=10**6, **kw)


def fill(journal, streams, size=10):
    for s in streams:
        for raw, newest in s.batches(size):
            journal.append(s.port, raw, newest)


def test_reopen_returns_everything_durable(tmp_path, streams):
    with new_journal(tmp_path) as j:
        fill(j, streams)
        before = j.index.copy()
        data = j.read_data(np.arange(len(before)))
    with LocalJournal.open(tmp_path / "j") as j:
        assert not j.recovered
        assert np.array_equal(j.index, before)
        assert np.array_equal(j.read_data(np.arange(len(before))), data)
        assert list(j.last_seq) == [len(s.entries) - 1 for s in streams]
    stored = {(int(r["port"]), int(r["seq"])) for r in before}
    assert stored == {(s.port, i) for s in streams for i in range(len(s.entries))}


def test_segments_roll_over(tmp_path, streams):
    with new_journal(tmp_path, segment_bytes=4096) as j:
        fill(j, streams)
        assert len(j.segment_paths()) > 3
        n = len(j.index)
    with LocalJournal.open(tmp_path / "j") as j:
        assert len(j.index) == n
    assert verify(tmp_path / "j").ok


def test_resend_is_deduplicated_and_checked(tmp_path, streams):
    s = streams[0]
    with new_journal(tmp_path) as j:
        batches = list(s.batches(10))
        j.append(0, *batches[0])
        j.append(0, *batches[1])
        assert j.append(0, *batches[1]) == 19          # identical resend: nothing new
        assert len(j.index) == 20
        tampered = bytearray(batches[1][0])
        other = pack(seq=10, port=0, mode=Mode.REDO, status=Status.OK, kind=Kind.WRITE, timestamp=1,
                     lba=0, data=bytes(BLOCK))
        tampered[:len(other)] = other
        with pytest.raises(JournalError, match="differs"):
            j.append(0, bytes(tampered), 0)


def test_gap_is_refused(tmp_path, streams):
    batches = list(streams[0].batches(10))
    with new_journal(tmp_path) as j:
        j.append(0, *batches[0])
        with pytest.raises(SequenceGap, match="expected sequence 10, got 20"):
            j.append(0, *batches[2])
        assert len(j.index) == 10


def test_bad_entry_is_refused_and_nothing_stored(tmp_path, streams):
    raw, newest = next(streams[0].batches(10))
    broken = bytearray(raw)
    broken[HEADER_BYTES + 100] ^= 1
    with new_journal(tmp_path) as j:
        with pytest.raises(JournalError, match="CRC"):
            j.append(0, bytes(broken), newest)
        with pytest.raises(JournalError, match="port 1"):
            j.append(0, next(streams[1].batches(10))[0], newest)
        assert len(j.index) == 0


def test_torn_tail_is_cut_and_reported(tmp_path, streams):
    with new_journal(tmp_path) as j:
        fill(j, streams)
        n = len(j.index)
    seg = (tmp_path / "j" / "received").glob("*.seg").__next__()
    size = seg.stat().st_size
    with open(seg, "r+b") as f:
        f.truncate(size - 100)
    assert not verify(tmp_path / "j").ok
    with LocalJournal.open(tmp_path / "j") as j:
        assert len(j.recovered) == 1 and j.recovered[0].bytes_cut > 0
        assert "cut" in str(j.recovered[0])
        last_batch = len(streams[1].entries) % 10 or 10
        assert len(j.index) == n - last_batch             # the last batch was torn
        j.append(1, *list(streams[1].batches(10))[-1])    # ingest resumes where it stood
        assert len(j.index) == n
    assert verify(tmp_path / "j").ok


@pytest.mark.parametrize("damage", ["flip", "zeros"])
def test_mid_file_corruption_stops_open_and_is_located(tmp_path, streams, damage):
    with new_journal(tmp_path) as j:
        fill(j, streams)
    seg = next((tmp_path / "j" / "received").glob("*.seg"))
    where = seg.stat().st_size // 3
    with open(seg, "r+b") as f:
        f.seek(where)
        if damage == "flip":
            byte = f.read(1)
            f.seek(where)
            f.write(bytes([byte[0] ^ 0xFF]))
        else:
            f.write(bytes(1500))
    with pytest.raises(JournalCorrupt, match=rf"{seg.name}:\d+: .*valid record follows"):
        LocalJournal.open(tmp_path / "j")
    report = verify(tmp_path / "j")
    assert not report.ok
    first = report.problems[0]
    assert first.file == str(seg) and first.offset <= where
    assert "skipped" in first.what
    entry = report.problems[1]    # the record's header holds, so the damaged entry itself is named
    assert "damaged entry" in entry.what and entry.offset <= where < entry.offset + entry_bytes(BLOCK)


def test_truncated_middle_segment_is_corruption_not_a_tail(tmp_path, streams):
    with new_journal(tmp_path, segment_bytes=4096) as j:
        fill(j, streams)
    first = sorted((tmp_path / "j" / "received").glob("*.seg"))[0]
    size = first.stat().st_size
    with open(first, "r+b") as f:
        f.truncate(size - 50)
    with pytest.raises(JournalCorrupt, match="not the last segment"):
        LocalJournal.open(tmp_path / "j", segment_bytes=4096)
    problem = verify(tmp_path / "j").problems[0]
    assert problem.file == str(first) and problem.offset < size - 50 and "opening refuses" in problem.what


def test_damaged_last_record_is_kept_and_invalidates_its_port(tmp_path, streams):
    """A complete record whose bytes changed was durable (maybe acknowledged): cutting it must
    neither lose the bytes nor let the port pass as complete."""
    with new_journal(tmp_path) as j:
        fill(j, streams)                              # the last record is port 1's last batch
        last_start = int(j.index["offset"][-1])       # the last entry of that batch
    batches = list(streams[1].batches(10))
    flushed_before = batches[-2][1]                   # what port 1 had flushed before that batch
    seg = next((tmp_path / "j" / "received").glob("*.seg"))
    raw = bytearray(seg.read_bytes())
    raw[last_start + 100] ^= 0xFF
    seg.write_bytes(bytes(raw))
    with pytest.raises(JournalCorrupt, match="journal repair"):     # damage waits for a decision
        LocalJournal.open(tmp_path / "j")
    with LocalJournal.open(tmp_path / "j", repair=True) as j:
        cut = j.recovered[0]
        assert not cut.torn and cut.port == 1
        kept = tmp_path / "j" / "cuts" / f"{seg.stem}-{cut.offset}.cut"
        assert kept.read_bytes() == bytes(raw[cut.offset:])
        assert int(j.invalid_since()[1]) == flushed_before
        assert "damaged entries cut" in j.state.port_state[1].reason
    report = verify(tmp_path / "j")
    assert report.ok and any("kept in" in note for note in report.notes)


def test_unreadable_state_is_a_clear_error(tmp_path):
    new_journal(tmp_path).close()
    (tmp_path / "j" / "journal.json").write_text("{not json")
    with pytest.raises(JournalError, match="not a readable journal state"):
        LocalJournal.open(tmp_path / "j")


def test_open_refuses_a_folder_that_is_no_journal(tmp_path):
    with pytest.raises(JournalError, match="not a journal"):
        LocalJournal.open(tmp_path)
    new_journal(tmp_path).close()
    with pytest.raises(JournalError, match="already holds"):
        new_journal(tmp_path)


def test_append_is_fsynced_before_return(tmp_path, streams, monkeypatch):
    """The segment's own descriptor is fsynced after the batch is written, every time."""
    calls = []
    real_write, real_fsync = os.write, os.fsync
    monkeypatch.setattr(os, "write", lambda fd, data: (calls.append(("write", fd)), real_write(fd, data))[1])
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(("fsync", fd)), real_fsync(fd))[1])
    with new_journal(tmp_path) as j:
        for raw, newest in list(streams[0].batches(5))[:3]:
            calls.clear()
            j.append(0, raw, newest)
            writes = [fd for op, fd in calls if op == "write"]
            assert writes and calls[-1] == ("fsync", writes[-1]), f"append returned unsynced: {calls}"


def test_first_batch_must_start_the_sequence(tmp_path, streams):
    batches = list(streams[0].batches(10))
    with new_journal(tmp_path) as j:
        with pytest.raises(SequenceGap, match="expected sequence 0, got 20"):
            j.append(0, *batches[2])
        assert len(j.index) == 0


def test_one_writer_and_state_changes_from_others_are_kept(tmp_path, streams):
    with new_journal(tmp_path) as writer:
        with pytest.raises(JournalBusy, match="open for writing by another process"):
            LocalJournal.open(tmp_path / "j")
        reader = LocalJournal.open(tmp_path / "j", readonly=True)     # e.g. 'bookmark add'
        writer.invalidate(1, 1000, "missed flush deadline")
        reader.update_state(lambda state: state.bookmarks.update(mark=5))
        writer.invalidate(0, 2000, "missed flush deadline")
        reader.close()
    with LocalJournal.open(tmp_path / "j") as j:
        assert j.state.bookmarks == {"mark": 5}
        assert [p.invalid_since_ns for p in j.state.port_state] == [2000, 1000]


def test_a_cut_takes_merged_rows_that_point_into_it_back(tmp_path, streams):
    with new_journal(tmp_path) as j:
        fill(j, streams)
        j.merge()
        assert len(j.merged) and j.merged_through > 0
        last_start = int(j.index["offset"][-1])
    seg = next((tmp_path / "j" / "received").glob("*.seg"))
    raw = bytearray(seg.read_bytes())
    raw[last_start + 100] ^= 0xFF
    seg.write_bytes(bytes(raw))
    with LocalJournal.open(tmp_path / "j", repair=True) as j:
        assert j.recovered
        located = set(zip(j.index["seg"].tolist(), j.index["offset"].tolist(), strict=True))
        assert all((int(r["seg"]), int(r["offset"])) in located for r in j.merged)
        assert np.all(j.merged["window_end"] <= j.merged_through)
    assert verify(tmp_path / "j").ok


@pytest.mark.parametrize("case", ["length flipped", "unfinished"])
def test_damaged_header_is_damage_not_an_unfinished_write(tmp_path, streams, case):
    """A length field that changed makes the record run past the end of the file, as an
    unfinished write does; the header's own CRC tells the two apart."""
    with new_journal(tmp_path) as j:
        fill(j, streams)
    seg = next((tmp_path / "j" / "received").glob("*.seg"))
    raw = bytearray(seg.read_bytes())
    last = scan(bytes(raw))[0][-1].offset
    if case == "length flipped":
        raw[last + 10] ^= 0x40                      # the length field's high bits
    else:
        del raw[last + 200:]                        # a sound header, the rest never written
    seg.write_bytes(bytes(raw))
    with LocalJournal.open(tmp_path / "j", repair=case == "length flipped") as j:
        cut = j.recovered[0]
        if case == "length flipped":
            assert not cut.torn and cut.port is None and "header" in cut.reason
            assert all(p.invalid_since_ns is not None for p in j.state.port_state)   # whose? all
        else:
            assert cut.torn and cut.port == 1
            assert all(p.invalid_since_ns is None for p in j.state.port_state)       # never acked
