"""A journal filled from a scripted write workload, with the storage model's record beside it."""

import numpy as np

from firmware.abi.entry import Mode, unpack
from host.journal.base import take_base_copy
from host.journal.store import LocalJournal
from host.storage import FileStorage
from sim.storage_model import Request, StorageModel, journal_requests

BLOCK = 16
BLOCKS = 12
WINDOW = 100


def build_journal(tmp_path, ports, writes, mode, silent=None, merge_at=None, *, block=BLOCK, blocks=BLOCKS,
                  create=LocalJournal.create):
    """Run the writes through the storage model and ports, flush them into a journal made by
    `create` (a store's `create`, or the tests' `new_journal` fixture).

    `silent` = (port, t): that port's entries stamped at or after t never reach the host, and
    the collector marks it invalid from t. Returns the journal, model, volume path."""
    rng = np.random.default_rng(len(writes))
    initial = rng.bytes(block * blocks)
    model = StorageModel(blocks, block, initial)
    requests = [Request(t, p, lba, rng.bytes(block), status) for t, p, lba, status in writes]
    per_port = journal_requests(requests, model, mode, ports)
    volume = tmp_path / "volume.img"
    volume.write_bytes(bytes(model.image))          # primary storage now
    (tmp_path / "initial.img").write_bytes(initial)
    journal = create(tmp_path / "j", block_bytes=block, ports=ports, mode=mode,
                                  window_ns=WINDOW)
    if mode == Mode.REDO:
        with FileStorage(tmp_path / "initial.img", block) as first:
            take_base_copy(journal, first, 0)
    last_time = max(t for t, *_ in writes) + 1
    for port, entries in enumerate(per_port):
        if silent and silent[0] == port:
            entries = [e for e in entries if unpack(e)[0]["timestamp"] < silent[1]]
            flushed = silent[1]
        else:
            flushed = last_time
        if merge_at is not None:       # flush what came before merge_at, merge, then the rest
            early = [e for e in entries if unpack(e)[0]["timestamp"] < merge_at]
            journal.append(port, b"".join(early), min(merge_at, flushed))
            entries = entries[len(early):]
        journal.append(port, b"".join(entries), flushed)
        if merge_at is not None and port == ports - 1:
            journal.merge()
    if merge_at is None:
        journal.merge()
    if silent:
        journal.invalidate(silent[0], silent[1], "test: stopped answering")
    return journal, model, volume


