"""Base copy, resync and compaction (the seed's periodic compression of the journal).

The base copy is the volume as it was at device time `time_ns`: every write stamped before it
is in it. Redo restore starts from it. Compaction folds merged windows older than the
retention period into the base copy (redo) or drops them (copy-on-write, where the primary
storage itself is the newest state), then removes received segments nobody needs any more.
"""

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import crc32c
import numpy as np

from firmware.abi.entry import Mode

from .primary import JournalError, PrimaryJournal
from .state import BaseCopy
from .store import LocalJournal

CHUNK_BLOCKS = 4096

Progress = Callable[[int, int], None]   # (blocks done, blocks in all)


def take_base_copy(journal: PrimaryJournal, storage, time_ns: int,
                   progress: Progress | None = None) -> BaseCopy:
    """Copy the whole volume from `storage` into the journal folder as the base at `time_ns`."""
    if storage.block_bytes != journal.state.block_bytes:
        raise JournalError(f"storage blocks are {storage.block_bytes} bytes, the journal's "
                           f"{journal.state.block_bytes}")
    if time_ns < 0:
        raise JournalError(f"device time cannot be negative ({time_ns})")
    base = journal.state.base
    if base is not None and base.blocks != storage.blocks:
        raise JournalError(f"the volume has {storage.blocks} blocks, the journal's base copy {base.blocks}: "
                           "is this the same volume? Give the one this journal is for (--storage)")
    tmp = journal.folder / "base.tmp"
    with open(tmp, "wb") as out:
        for lba in range(0, storage.blocks, CHUNK_BLOCKS):
            count = min(CHUNK_BLOCKS, storage.blocks - lba)
            out.write(storage.read(lba, count))
            if progress:
                progress(lba + count, storage.blocks)
        out.flush()
        os.fsync(out.fileno())
    return install_base(journal, tmp, time_ns, storage.blocks)


def install_base(journal: PrimaryJournal, tmp: Path, time_ns: int, blocks: int) -> BaseCopy:
    """Make the fsynced image `tmp` the base copy at `time_ns`.

    Each base copy has its own file name, and the state is switched to it atomically before
    the old file goes, so a crash leaves an image and a time that belong together."""
    old = journal.state.base
    name = f"base-{time_ns}.img"
    crc = file_crc(tmp)
    journal.keep_base(tmp, name)
    journal.update_state(lambda state: setattr(state, "base", BaseCopy(path=name, time_ns=time_ns,
                                                                        blocks=blocks, crc32c=crc)))
    if old is not None and old.path != name:
        journal.drop_base(old.path)
    return journal.state.base


def file_crc(path: Path) -> int:
    """CRC-32C of a whole file, read in large chunks."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            crc = crc32c.crc32c(chunk, crc)
    return crc


def resync(journal: PrimaryJournal, port: int, storage, time_ns: int,
           progress: Progress | None = None) -> None:
    """Take a fresh base copy at `time_ns` and count `port` again from then on."""
    take_base_copy(journal, storage, time_ns, progress)
    journal.revalidate(port, time_ns)


def compact(journal: LocalJournal, retention_ns: int) -> dict:
    """Fold or drop merged history older than `retention_ns` before the horizon; return a summary."""
    window = journal.state.window_ns
    cutoff = min(journal.merged_through, max(journal.horizon() - retention_ns, 0)) // window * window
    old = journal.merged["window_end"] <= cutoff
    summary = {"cutoff_ns": cutoff, "merged_dropped": int(old.sum()), "segments_removed": 0,
               "blocks_folded": 0}
    if not old.any():
        return summary
    if journal.state.mode == Mode.REDO:
        base = journal.state.base
        if base is None:
            raise JournalError("redo compaction needs a base copy: take one first with 'portjournal journal "
                               "base --storage VOLUME --at NS'")
        newer = old & (journal.merged["window_end"] > base.time_ns)
        summary["blocks_folded"] = _fold(journal, journal.merged[newer], max(base.time_ns, cutoff))
    journal.update_state(lambda state: setattr(state, "history_from_ns", max(state.history_from_ns, cutoff)))
    # Order matters for a crash in between: base, then merged portion, then segments.
    journal.rewrite_merged(journal.merged[~old], journal.merged_through)
    summary["segments_removed"] = _drop_segments(journal, cutoff)
    return summary


def _fold(journal: LocalJournal, rows: np.ndarray, time_ns: int) -> int:
    """Write each block's newest merged value among `rows` into a new base copy at `time_ns`."""
    if len(rows):
        rows = rows[np.lexsort((rows["window_end"], rows["lba"]))]
        rows = rows[np.append(rows["lba"][1:] != rows["lba"][:-1], True)]
    data = journal.read_at(rows["seg"], rows["offset"])
    tmp = journal.folder / "base.tmp"
    shutil.copyfile(journal.folder / journal.state.base.path, tmp)
    block = journal.state.block_bytes
    with open(tmp, "r+b") as f:
        for lba, blockdata in zip(rows["lba"].tolist(), data, strict=True):
            f.seek(lba * block)
            f.write(blockdata.tobytes())
        f.flush()
        os.fsync(f.fileno())
    install_base(journal, tmp, time_ns, journal.state.base.blocks)
    return len(rows)


def _drop_segments(journal: LocalJournal, cutoff: int) -> int:
    """Remove received segments (never the newest) whose entries all lie before `cutoff`."""
    index = journal.index
    paths = journal.segment_paths()[:-1]
    removed = 0
    for path in paths:
        seg = int(path.stem)
        mine = index[index["seg"] == seg]
        if len(mine) and int(mine["timestamp"].max()) >= cutoff:
            break
        removed += 1
    dropped = index[np.isin(index["seg"], [int(p.stem) for p in paths[:removed]])]

    def note_compacted(state) -> None:
        for port in np.unique(dropped["port"]).tolist():
            st = state.port_state[port]
            st.compacted_seq = max(st.compacted_seq, int(dropped["seq"][dropped["port"] == port].max()))
            st.compacted_flushed_ns = max(st.compacted_flushed_ns, int(journal.flushed_through[port]))

    journal.update_state(note_compacted)
    gone = [int(p.stem) for p in paths[:removed]]
    for path in paths[:removed]:
        path.unlink()
    journal.forget_segments(gone)
    return removed
