"""dm-log-writes logs: export a journal's writes as one, import one as a new journal.

The format is the Linux kernel's (drivers/md/dm-log-writes.c; QEMU's blklogwrites driver writes
the same). Little-endian. The log is cut in sectors of `sectorsize` bytes:

    sector 0                  super: magic 0x6a736677736872, version 1, nr_entries, sectorsize
    then, nr_entries times:   one sector of entry header {sector, nr_sectors, flags, data_len},
                              then nr_sectors sectors of data (none for a MARK or a DISCARD)

`sector` and `nr_sectors` count `sectorsize` units (the kernel converts bio sectors with
`bio_to_dev_sectors`, QEMU shifts by the log sector size); with the sectorsize of 512 that
`export` writes they are plain 512-byte sectors too. A MARK carries `data_len` bytes of label
in its header sector, after the 32 header bytes; data_len is 0 for a write.

Export: the journal's usable writes (status OK, kind WRITE, stamped at or after the base
copy's time, port valid at the time: the merge filter) in (timestamp, port, sequence) order,
one entry per block write, and each bookmark from the base copy's time on as a MARK named
after it, after every write stamped before the bookmark's time and before the others.
Replaying the log onto the base copy gives the volume at the end, or at each mark.
Copy-on-write journals are refused: their entries hold pre-images, not what was written.

Import: a new 1-port redo journal. Log entry i gets the synthetic device time
(i + 1) * STEP_NS (1 us apart): a write becomes one journal entry per block, all stamped with
its entry's time; a MARK becomes a bookmark at its own time, between the writes around it;
FLUSH / FUA flags and empty flush entries carry no data and are skipped; a DISCARD is turned
into writes of zero blocks (`discard="zero"`, the default; blocks never written since the
start are already zero and are skipped) or refused (`discard="reject"`). Writes must be
aligned to the journal's block size. The base copy, at device time 0, is a copy of the image
`base` when given (the volume is its size; a DISCARD then zeroes every block of its range
that the base or an earlier write left non-zero), else a zero-filled volume of `volume_bytes`
(default: up to the highest block written).
"""

import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import crc32c
import numpy as np

from firmware.abi.entry import HEADER_BYTES, Kind, Mode, Status, entry_dtype

from .journal.base import install_base
from .journal.store import LocalJournal

MAGIC = 0x6A736677736872
VERSION = 1
FLAG_FLUSH, FLAG_FUA, FLAG_DISCARD, FLAG_MARK, FLAG_METADATA = 1, 2, 4, 8, 16
KNOWN_FLAGS = FLAG_FLUSH | FLAG_FUA | FLAG_DISCARD | FLAG_MARK | FLAG_METADATA
SUPER = struct.Struct("<QQQI")
ENTRY = struct.Struct("<QQQQ")
STEP_NS = 1000          # synthetic device time between imported log entries
CHUNK = 4096            # entries per bulk step

Progress = Callable[[int, int], None]   # (done, total)


class DmLogError(ValueError):
    """A log that cannot be read or written as asked; the message says where and why."""


@dataclass
class ExportSummary:
    writes: int
    marks: int
    log_bytes: int
    sectorsize: int


@dataclass
class ImportSummary:
    log_entries: int = 0
    writes: int = 0
    blocks: int = 0
    discards: int = 0
    zero_blocks: int = 0
    flushes: int = 0
    marks: dict[str, int] = field(default_factory=dict)
    volume_blocks: int = 0
    last_ns: int = 0


# --- export -----------------------------------------------------------------------------------

def usable_writes(journal: LocalJournal, until_ns: int | None = None) -> np.ndarray:
    """Entry ids of the writes merge would count, in (timestamp, port, sequence) order."""
    ids = journal.received(until_ns)
    rows = journal.index[ids]
    ts, port = rows["timestamp"], rows["port"]
    valid_from = journal.valid_from()
    invalid_since = journal.invalid_since()
    keep = ((rows["status"] == Status.OK) & (rows["kind"] == Kind.WRITE)
            & (ts >= valid_from[port]) & (ts < invalid_since[port]))
    if journal.state.base is not None:          # older writes are in the base copy already
        keep &= ts >= np.uint64(journal.state.base.time_ns)
    return ids[keep]


def export(journal: LocalJournal, out_path: Path, *, until_ns: int | None = None, sectorsize: int = 512,
           progress: Progress | None = None) -> ExportSummary:
    """Write the journal's writes (and bookmarks as MARKs) before `until_ns` as a dm-log-writes log."""
    if journal.state.mode != Mode.REDO:
        raise DmLogError("a copy-on-write journal holds pre-images, not the data written: "
                         "only a redo journal can be exported as a write log")
    if sectorsize < 512 or sectorsize & (sectorsize - 1):
        raise DmLogError(f"log sector size must be a power of two of at least 512, not {sectorsize}")
    block = journal.state.block_bytes
    if block % sectorsize:
        raise DmLogError(f"the journal's {block}-byte blocks are not whole {sectorsize}-byte sectors, "
                         "which is all a dm-log-writes log can address")
    ids = usable_writes(journal, until_ns)
    times = journal.index["timestamp"][ids]
    since = journal.state.base.time_ns if journal.state.base is not None else 0
    marks = sorted((t, name) for name, t in journal.state.bookmarks.items()
                   if since <= t and (until_ns is None or t <= until_ns))
    for _, name in marks:
        if len(name.encode()) > sectorsize - ENTRY.size - 1 or "\0" in name:
            raise DmLogError(f"bookmark {name!r} does not fit a MARK label of at most "
                             f"{sectorsize - ENTRY.size - 1} bytes without NUL: rename it, or export with "
                             "a larger --sector-bytes")
    # A mark at time t comes after every write stamped before t.
    cuts = np.searchsorted(times, np.array([t for t, _ in marks], dtype=np.uint64), side="left")
    record = np.dtype([("head", "<u8", 4), ("pad", "V", sectorsize - ENTRY.size), ("data", "u1", (block,))])
    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.name + ".tmp")
    try:
        size = _write_log(journal, ids, cuts, marks, tmp, record, sectorsize, progress)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out_path)
    return ExportSummary(writes=len(ids), marks=len(marks), log_bytes=size, sectorsize=sectorsize)


def _write_log(journal: LocalJournal, ids: np.ndarray, cuts: np.ndarray, marks: list[tuple[int, str]],
               tmp: Path, record: np.dtype, sectorsize: int, progress: Progress | None) -> int:
    block = journal.state.block_bytes
    per_block = block // sectorsize
    total = len(ids) + len(marks)
    done = 0
    with open(tmp, "wb") as f:
        f.write(bytes(sectorsize))     # super goes in last, with the count
        start = 0
        for cut, name in [*zip(cuts.tolist(), [n for _, n in marks], strict=True), (len(ids), None)]:
            for lo in range(start, cut, CHUNK):
                hi = min(lo + CHUNK, cut)
                chunk = np.zeros(hi - lo, record)
                lba = journal.index["lba"][ids[lo:hi]].astype(np.uint64)
                chunk["head"][:, 0] = lba * np.uint64(per_block)
                chunk["head"][:, 1] = per_block
                chunk["data"] = journal.read_data(ids[lo:hi])
                f.write(chunk.tobytes())
                done += hi - lo
                if progress:
                    progress(done, total)
            start = max(start, cut)
            if name is not None:
                label = name.encode()
                f.write((ENTRY.pack(0, 0, FLAG_MARK, len(label)) + label).ljust(sectorsize, b"\0"))
                done += 1
                if progress:
                    progress(done, total)
        size = f.tell()
        f.seek(0)
        f.write(SUPER.pack(MAGIC, VERSION, total, sectorsize))
        f.flush()
        os.fsync(f.fileno())
    return size


# --- reading a log ----------------------------------------------------------------------------

@dataclass(frozen=True)
class LogEntry:
    index: int
    offset: int          # byte offset of the entry's header sector in the log
    sector: int          # in units of the log's sectorsize
    nr_sectors: int
    flags: int
    label: str = ""      # MARK only
    data_offset: int = 0


def read_super(data) -> tuple[int, int]:
    """(nr_entries, sectorsize) of a log, checked."""
    if len(data) < SUPER.size:
        raise DmLogError(f"log of {len(data)} bytes is too short for a dm-log-writes super block")
    magic, version, nr_entries, sectorsize = SUPER.unpack_from(data)
    if magic != MAGIC:
        raise DmLogError(f"bad magic {magic:#x}: not a dm-log-writes log (expected {MAGIC:#x}); give a "
                         "log that dm-log-writes or 'portjournal export' wrote")
    if version != VERSION:
        raise DmLogError(f"dm-log-writes version {version} is not supported (only {VERSION})")
    if sectorsize < 512 or sectorsize & (sectorsize - 1) or sectorsize > 1 << 24:
        raise DmLogError(f"log sector size {sectorsize} is not a power of two from 512 bytes")
    return nr_entries, sectorsize


def entries(data) -> tuple[int, list[LogEntry]]:
    """The log's sector size and its entries, each checked against the log's length."""
    nr_entries, sectorsize = read_super(data)
    found, pos = [], sectorsize
    for i in range(nr_entries):
        if pos + sectorsize > len(data):
            raise DmLogError(f"log is truncated: entry {i} of {nr_entries} would start at byte {pos}, "
                             f"the log has {len(data)}")
        sector, nr_sectors, flags, data_len = ENTRY.unpack_from(data, pos)
        if flags & ~KNOWN_FLAGS:
            raise DmLogError(f"entry {i} at byte {pos}: unknown flags {flags:#x}")
        if flags & FLAG_MARK:
            if data_len > sectorsize - ENTRY.size:
                raise DmLogError(f"entry {i} at byte {pos}: mark label of {data_len} bytes overflows "
                                 "its sector")
            raw = bytes(data[pos + ENTRY.size:pos + ENTRY.size + data_len]).split(b"\0", 1)[0]
            found.append(LogEntry(i, pos, sector, nr_sectors, flags, raw.decode(errors="replace")))
            pos += sectorsize
            continue
        span = 0 if flags & FLAG_DISCARD else nr_sectors * sectorsize
        if pos + sectorsize + span > len(data):
            raise DmLogError(f"log is truncated: entry {i} at byte {pos} holds {span} bytes of data, "
                             f"only {len(data) - pos - sectorsize} remain")
        found.append(LogEntry(i, pos, sector, nr_sectors, flags, data_offset=pos + sectorsize))
        pos += sectorsize + span
    return sectorsize, found


# --- import -----------------------------------------------------------------------------------

def import_log(log_path: Path, journal_folder: Path, *, block_bytes: int, volume_bytes: int | None = None,
               base: Path | None = None, window_ns: int = 100_000_000, discard: str = "zero",
               progress: Progress | None = None) -> ImportSummary:
    """Replay a dm-log-writes log into a new 1-port redo journal whose base copy is the image
    `base` (default: zeros). Nothing is left behind if it fails."""
    if discard not in ("zero", "reject"):
        raise ValueError(f"discard must be 'zero' or 'reject', not {discard!r}")
    if block_bytes <= 0:
        raise DmLogError(f"block size must be a positive number of bytes, not {block_bytes}")
    if volume_bytes is not None and (volume_bytes < 0 or volume_bytes % block_bytes):
        raise DmLogError(f"volume size {volume_bytes} is not a whole number of {block_bytes}-byte blocks")
    journal_folder = Path(journal_folder)
    if (journal_folder / "journal.json").exists():
        raise DmLogError(f"{journal_folder} already holds a journal: import into a new folder")
    nonzero: set[int] = set()
    if base is not None:
        base_bytes = os.stat(base).st_size
        if base_bytes % block_bytes:
            raise DmLogError(f"base image {base} of {base_bytes} bytes is not a whole number of "
                             f"{block_bytes}-byte blocks: choose a --block-bytes that divides it")
        if volume_bytes is not None and volume_bytes != base_bytes:
            raise DmLogError(f"--volume-bytes {volume_bytes} differs from the base image's "
                             f"{base_bytes} bytes: leave --volume-bytes out to take the image's")
        volume_bytes = base_bytes
        nonzero = _nonzero_blocks(base, block_bytes)
    with open(log_path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        data = np.memmap(f, np.uint8, "r") if size else np.zeros(0, np.uint8)
        sectorsize, log = entries(data)
        plan = _plan(log, sectorsize, block_bytes, volume_bytes, discard, nonzero)
        summary = plan.summary
        created = not journal_folder.exists()
        try:
            journal = LocalJournal.create(journal_folder, block_bytes=block_bytes, ports=1, mode=Mode.REDO,
                                          window_ns=window_ns)
            with journal:
                _write_base(journal, summary.volume_blocks, base)
                _append(journal, data, plan, summary.last_ns, progress)
                journal.state.bookmarks.update(summary.marks)
                journal.state.save(journal.folder)
        except BaseException:
            if created:
                shutil.rmtree(journal_folder, ignore_errors=True)
            raise
    return summary


def _nonzero_blocks(path: Path, block: int) -> set[int]:
    """Blocks of the image at `path` holding anything but zeros."""
    found: set[int] = set()
    per_step = max(1, (64 << 20) // block)
    with open(path, "rb") as f:
        lba = 0
        while chunk := f.read(per_step * block):
            rows = np.frombuffer(chunk, np.uint8).reshape(-1, block)
            found.update((np.flatnonzero(rows.any(axis=1)) + lba).tolist())
            lba += len(rows)
    return found


@dataclass
class _Plan:
    summary: ImportSummary
    times: list[int] = field(default_factory=list)     # per block entry
    lbas: list[int] = field(default_factory=list)
    sources: list[int] = field(default_factory=list)   # byte offset of the block in the log, -1 = zeros


def _plan(log: list[LogEntry], sectorsize: int, block: int, volume_bytes: int | None, discard: str,
          nonzero: set[int] | frozenset = frozenset()) -> _Plan:
    """`nonzero`: blocks of the base copy that are not zeros (a discard must zero them)."""
    s = ImportSummary(log_entries=len(log))
    plan = _Plan(s)
    written: set[int] = set(nonzero)
    limit = None if volume_bytes is None else volume_bytes // block
    highest = -1
    for e in log:
        t = (e.index + 1) * STEP_NS
        if e.flags & FLAG_MARK:
            name = e.label or f"mark-{e.index}"
            n = 2
            while name in s.marks:
                name, n = f"{e.label or 'mark'} ({n})", n + 1
            s.marks[name] = t
            continue
        if not e.nr_sectors:
            s.flushes += 1
            continue
        start, length = e.sector * sectorsize, e.nr_sectors * sectorsize
        what = "discard" if e.flags & FLAG_DISCARD else "write"
        if start % block or length % block:
            raise DmLogError(f"entry {e.index} at byte {e.offset}: {what} of {length} bytes at byte {start} "
                             f"is not aligned to {block}-byte blocks; import with a --block-bytes that "
                             f"divides it (at most {sectorsize} always works)")
        first, count = start // block, length // block
        if limit is not None and first + count > limit:
            raise DmLogError(f"entry {e.index} at byte {e.offset}: {what} of blocks {first}..{first + count} "
                             f"runs past the volume's {limit} blocks; give a larger --volume-bytes or --base")
        if e.flags & FLAG_DISCARD:
            if discard == "reject":
                raise DmLogError(f"entry {e.index} at byte {e.offset}: the log discards blocks "
                                 f"{first}..{first + count}; import with --discard zero to write zeros there")
            s.discards += 1
            hit = sorted(b for b in written if first <= b < first + count)
            for b in hit:
                plan.times.append(t)
                plan.lbas.append(b)
                plan.sources.append(-1)
                written.discard(b)
            s.zero_blocks += len(hit)
            continue
        s.writes += 1
        for k in range(count):
            plan.times.append(t)
            plan.lbas.append(first + k)
            plan.sources.append(e.data_offset + k * block)
            written.add(first + k)
        highest = max(highest, first + count - 1)
        s.blocks += count
    s.volume_blocks = limit if limit is not None else highest + 1
    s.last_ns = (len(log) + 1) * STEP_NS
    return plan


def _write_base(journal: LocalJournal, blocks: int, base: Path | None = None) -> None:
    """The base copy at device time 0: a copy of the image `base`, or zeros (sparse: no data written)."""
    tmp = journal.folder / "base.tmp"
    with open(tmp, "wb") as f:
        if base is not None:
            with open(base, "rb") as src:
                shutil.copyfileobj(src, f, 16 << 20)
        f.truncate(blocks * journal.state.block_bytes)
        os.fsync(f.fileno())
    install_base(journal, tmp, 0, blocks)


def _append(journal: LocalJournal, data: np.ndarray, plan: _Plan, last_ns: int,
            progress: Progress | None) -> None:
    block = journal.state.block_bytes
    times = np.array(plan.times, dtype=np.uint64)
    lbas = np.array(plan.lbas, dtype=np.uint64)
    sources = np.array(plan.sources, dtype=np.int64)
    total = len(times)
    offsets = np.arange(block, dtype=np.int64)
    for lo in range(0, total, CHUNK):
        hi = min(lo + CHUNK, total)
        e = np.zeros(hi - lo, entry_dtype(block))
        h = e["header"]
        h["seq"] = np.arange(lo, hi)
        h["port"], h["mode"], h["status"], h["kind"] = 0, Mode.REDO, Status.OK, Kind.WRITE
        h["timestamp"], h["lba"], h["length"] = times[lo:hi], lbas[lo:hi], block
        src = sources[lo:hi]
        real = src >= 0
        if real.any():
            e["data"][real] = data[src[real][:, None] + offsets[None, :]]
        raw = e.view(np.uint8).reshape(len(e), -1)
        e["crc"] = np.fromiter((crc32c.crc32c(row[:HEADER_BYTES + block]) for row in raw), np.uint32, len(e))
        flushed = last_ns if hi == total else int(times[hi - 1]) + 1
        journal.append(0, e.tobytes(), flushed)
        if progress:
            progress(hi, total)
    if not total:
        journal.append(0, b"", last_ns)
