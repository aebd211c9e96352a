"""What restore, undo and the base copy refuse: a changed target, a truncated or damaged base."""

import numpy as np
import pytest
from scenario import BLOCK, BLOCKS, build_journal

from firmware.abi.entry import Mode, Status
from host.journal.base import take_base_copy
from host.journal.store import JournalError, LocalJournal
from host.journal.verify import verify
from host.restore import RestoreError, commit, undo
from host.storage import FileStorage
from host.views import ViewRefused, open_view
from sim.storage_model import Request, StorageModel, journal_requests

WRITES = [(t, t % 2, (5 * t) % BLOCKS, Status.OK) for t in range(0, 600, 13)]


def test_undo_refuses_a_target_that_changed_or_is_another_volume(tmp_path):
    journal, model, volume = build_journal(tmp_path, 2, WRITES, Mode.COPY_ON_WRITE)
    present = volume.read_bytes()
    view = open_view(journal, 300, storage=volume)
    undo_file = tmp_path / "u.undo"
    commit(view, volume, undo_file)
    view.backing.close()
    assert volume.read_bytes() == model.image_at(300)
    other = tmp_path / "other.img"
    other.write_bytes(bytes(2 * BLOCK * BLOCKS))
    with pytest.raises(RestoreError, match="bytes; the commit this undoes wrote"):
        undo(undo_file, other)
    assert other.read_bytes() == bytes(2 * BLOCK * BLOCKS)            # untouched
    changed = bytearray(volume.read_bytes())
    changed[0] ^= 1
    volume.write_bytes(bytes(changed))
    with pytest.raises(RestoreError, match="has changed since the commit"):
        undo(undo_file, volume)
    changed[0] ^= 1
    volume.write_bytes(bytes(changed))
    undo(undo_file, volume)
    assert volume.read_bytes() == present


def test_a_truncated_or_damaged_base_copy_is_refused_and_reported(tmp_path):
    journal, _, volume = build_journal(tmp_path, 2, WRITES, Mode.REDO)
    base = journal.folder / journal.state.base.path
    assert verify(journal.folder).ok
    data = bytearray(base.read_bytes())
    data[5] ^= 1
    base.write_bytes(bytes(data))
    assert any("CRC does not match" in p.what for p in verify(journal.folder).problems)
    base.write_bytes(bytes(data[:BLOCK * 4]))
    assert any("bytes, the journal recorded" in p.what for p in verify(journal.folder).problems)
    with pytest.raises(ViewRefused, match="changed or truncated"):
        open_view(journal, 300)
    base.unlink()
    assert any("missing" in p.what for p in verify(journal.folder).problems)
    journal.close()


def test_a_base_copy_of_another_size_is_refused(tmp_path):
    journal, _, _ = build_journal(tmp_path, 2, WRITES[:5], Mode.REDO)
    bigger = tmp_path / "bigger.img"
    bigger.write_bytes(bytes(2 * BLOCK * BLOCKS))
    with FileStorage(bigger, BLOCK) as storage, pytest.raises(JournalError, match="same volume"):
        take_base_copy(journal, storage, 10)
    journal.close()
    assert LocalJournal.open(journal.folder, readonly=True).state.base.time_ns == 0


def test_a_cow_view_follows_what_another_process_appends(tmp_path):
    """A copy-on-write view of Tx stays right as later writes land on primary storage and a
    collector (another open of the journal) appends their pre-images."""
    rng = np.random.default_rng(9)
    model = StorageModel(BLOCKS, BLOCK, rng.bytes(BLOCK * BLOCKS))
    requests = [Request(10 * i, 0, (7 * i) % BLOCKS, rng.bytes(BLOCK)) for i in range(1, 40)]
    entries = journal_requests(requests, model, Mode.COPY_ON_WRITE, 1)[0]
    early = sum(r.timestamp < 200 for r in requests)
    volume = tmp_path / "volume.img"
    volume.write_bytes(model.image_at(200))
    collector = LocalJournal.create(tmp_path / "j", block_bytes=BLOCK, ports=1, mode=Mode.COPY_ON_WRITE,
                                    window_ns=100, segment_bytes=512)
    collector.append(0, b"".join(entries[:early]), 200)
    reader = LocalJournal.open(tmp_path / "j", readonly=True)
    view = open_view(reader, 95, storage=volume)
    assert view.read(0, view.size_bytes) == model.image_at(95)
    volume.write_bytes(bytes(model.image))
    for i in range(early, len(entries), 5):               # several records, across segments
        collector.append(0, b"".join(entries[i:i + 5]), 400)
    assert len(collector.segment_paths()) > 1
    assert view.read(0, view.size_bytes) != model.image_at(95)    # a stale map shows the new data
    view.refresh()
    assert len(reader.index) == len(entries)
    assert view.read(0, view.size_bytes) == model.image_at(95)
    view.backing.close()
    reader.close()
    collector.close()


def test_device_times_read_as_instants_and_round_trip_through_at(tmp_path):
    """Device time is Unix-epoch ns: shown as ISO-8601 UTC, and that text is a valid --at."""
    from host.timefmt import format_ns
    from host.timespec import parse_at

    journal = LocalJournal.create(tmp_path / "j", block_bytes=BLOCK, ports=1, mode=Mode.REDO, window_ns=100)
    instant = 1_795_812_923_868_123_000
    assert format_ns(instant) == "2026-11-27T20:55:23.868123Z"
    assert parse_at(format_ns(instant), journal) == instant
    assert format_ns(2_500_000_000) == "2.5 s"                  # durations stay durations
    journal.close()
