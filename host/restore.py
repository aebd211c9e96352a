"""Restore (seed figures 10 and 16): write a point-in-time view out, or commit it back.

`restore_to_file` writes the view as a new image in one pass: backing blocks with the
redirected ones patched in from the journal. `commit` writes the view onto primary
storage, block by block where it differs, after saving what it overwrites in an undo file
(durable before the first block changes); `undo` puts those blocks back.
"""

import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import crc32c
import numpy as np

from firmware.abi.entry import Mode

from . import durable
from . import storage as storage_mod
from .journal import records
from .journal.records import RecordKind
from .views import PointInTimeView

CHUNK_BLOCKS = 32768          # 16 MiB of 512-byte blocks: fewer, larger steps restore fastest here
Progress = Callable[[int, int], None]   # (bytes done, bytes in all)


class RestoreError(OSError):
    """A restore could not be written or undone; nothing is left half done without saying so."""


class RestoreCheckFailed(RestoreError):
    """A committed restore did not read back as written."""


@dataclass
class RestoreSummary:
    blocks_from_journal: int
    blocks_from_backing: int
    bytes_written: int
    crc32c: int
    seconds: float
    backing: str

    def __str__(self):
        return (f"{self.blocks_from_journal} blocks from the journal, {self.blocks_from_backing} from the "
                f"{self.backing}, {self.bytes_written} bytes written in {self.seconds:.2f} s, "
                f"CRC-32C {self.crc32c:#010x}")


def _backing_name(view: PointInTimeView) -> str:
    return "base copy" if view.mode == Mode.REDO else "primary storage"


def restore_to_file(view: PointInTimeView, out: Path, progress: Progress | None = None, *,
                    durable: bool = False) -> RestoreSummary:
    """Write the view as a new image file (or onto a block device) at `out`.

    One pass in chunks: the backing image's blocks, with the redirected ones patched in from
    the journal, written out in order (and CRC'd on the way). A restored image can always be
    made again from the journal, so it is fsynced only when `durable`."""
    started = time.perf_counter()
    out = Path(out)
    if out.exists() and out.resolve() == view.backing.path.resolve():
        raise RestoreError(f"{out} is the view's own backing image: use --commit to write over it")
    tmp = out if out.is_block_device() else out.with_name(out.name + ".partial")
    block, crc = view.block_bytes, 0
    buf = np.empty((CHUNK_BLOCKS, block), np.uint8)
    try:
        with open(tmp, "wb" if tmp != out else "r+b") as f:
            for lba in range(0, view.blocks, CHUNK_BLOCKS):
                count = min(CHUNK_BLOCKS, view.blocks - lba)
                chunk = view.fill(lba, buf[:count])
                f.write(chunk)
                crc = crc32c.crc32c(chunk, crc)
                if progress:
                    progress((lba + count) * block, view.size_bytes)
            if durable:
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        if tmp != out:
            tmp.unlink(missing_ok=True)        # no half-written image left behind
        raise
    if tmp != out:
        os.replace(tmp, out)
    return RestoreSummary(len(view.lba), view.blocks - len(view.lba), view.size_bytes, crc,
                          time.perf_counter() - started, _backing_name(view))


def commit(view: PointInTimeView, target: Path, undo_path: Path | None,
           progress: Progress | None = None) -> RestoreSummary:
    """Write the view onto primary storage `target`, only the blocks that differ.

    With `undo_path`, the blocks about to be overwritten are saved there first (fsynced), so
    `undo` can return the target to what it was."""
    started = time.perf_counter()
    block = view.block_bytes
    changes: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    after = 0                     # CRC-32C of the target once the commit is done
    with storage_mod.FileStorage(target, block) as current:
        if current.blocks != view.blocks:
            raise RestoreError(f"{target} has {current.blocks} blocks, the view {view.blocks}: --commit "
                               "must name the volume this journal is for")
        for lba in range(0, view.blocks, CHUNK_BLOCKS):
            count = min(CHUNK_BLOCKS, view.blocks - lba)
            want = np.frombuffer(view.read_blocks(lba, count), np.uint8).reshape(count, block)
            have = np.frombuffer(current.read(lba, count), np.uint8).reshape(count, block)
            after = crc32c.crc32c(want, after)
            differ = np.flatnonzero(np.any(want != have, axis=1))
            if len(differ):
                changes.append((differ + lba, have[differ], want[differ]))
            if progress:
                progress((lba + count) * block, view.size_bytes)
    lbas = np.concatenate([c[0] for c in changes]) if changes else np.zeros(0, np.int64)
    if undo_path is not None:
        old = np.concatenate([c[1] for c in changes]) if changes else np.zeros((0, block), np.uint8)
        _write_undo(undo_path, lbas, old, block, view.size_bytes, after)
    fd = os.open(target, os.O_WRONLY)
    try:
        for lba_chunk, _, new in changes:
            for lba, data in zip(lba_chunk.tolist(), new, strict=True):
                os.pwrite(fd, data.tobytes(), lba * block)
        os.fsync(fd)
    finally:
        os.close(fd)
    with storage_mod.FileStorage(target, block) as result:
        crc = _crc_of(result)
    if crc != after:
        raise RestoreCheckFailed(f"{target} changed while the restore was committed (CRC {crc:#010x}, "
                                 f"expected {after:#010x}); the undo file still holds what was there "
                                 "before: stop what writes to it and commit again")
    return RestoreSummary(len(view.lba), view.blocks - len(view.lba), len(lbas) * block, crc,
                          time.perf_counter() - started, _backing_name(view))


def _crc_of(storage) -> int:
    crc = 0
    for lba in range(0, storage.blocks, CHUNK_BLOCKS):
        crc = crc32c.crc32c(storage.read(lba, min(CHUNK_BLOCKS, storage.blocks - lba)), crc)
    return crc


UNDO_HEADER = struct.Struct("<QI4x")   # target size in bytes, its CRC-32C right after the commit


def _write_undo(path: Path, lbas: np.ndarray, old: np.ndarray, block: int, size: int, after: int) -> None:
    payload = UNDO_HEADER.pack(size, after) + np.asarray(lbas, "<u8").tobytes() + old.tobytes()
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as f:
        f.write(records.encode(RecordKind.UNDO, payload, aux=block))
        f.flush()
        os.fsync(f.fileno())
    durable.replace(tmp, path)


def undo(undo_path: Path, target: Path, *, force: bool = False) -> int:
    """Put back the blocks a commit overwrote; return how many.

    Refuses (unless `force`) a target that is not exactly as the commit left it: a different
    volume, or one written since."""
    data = Path(undo_path).read_bytes()
    rec = records.read_at(data, 0)
    if isinstance(rec, records.Defect) or rec.kind != RecordKind.UNDO:
        reason = rec.reason if isinstance(rec, records.Defect) else f"record kind {rec.kind}"
        raise RestoreError(f"{undo_path} is not a usable undo file: {reason}; give the file "
                           "'portjournal restore --commit' printed (under the journal's undo/)")
    block = rec.aux
    size, after = UNDO_HEADER.unpack_from(rec.payload)
    body = rec.payload[UNDO_HEADER.size:]
    n = len(body) // (8 + block)
    lbas = np.frombuffer(body[:8 * n], "<u8")
    old = np.frombuffer(body[8 * n:], np.uint8).reshape(n, block)
    with storage_mod.FileStorage(target, block) as current:
        if current.blocks * block != size:
            raise RestoreError(f"{target} is {current.blocks * block} bytes; the commit this undoes wrote a "
                               f"{size}-byte volume: give the --storage the restore was committed to")
        if not force and _crc_of(current) != after:
            raise RestoreError(f"{target} has changed since the commit this undoes (--force puts the "
                               "old blocks back anyway)")
    fd = os.open(target, os.O_WRONLY)
    try:
        for lba, blockdata in zip(lbas.tolist(), old, strict=True):
            os.pwrite(fd, blockdata.tobytes(), lba * block)
        os.fsync(fd)
    finally:
        os.close(fd)
    return n
