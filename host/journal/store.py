"""The primary journal on local disk: append-only segments of entry records, fsynced before ack.

Folder layout:

    journal.json        geometry, base copy, port validity, bookmarks (host.journal.state)
    received/NNNNNN.seg received entries, one ENTRIES record per flushed batch (host.journal.records)
    merged.seg          the merged portion, one MERGED record per merge run

On open every record is checked. A defect in the last segment with nothing valid after it is a
torn tail from a crash: it is cut and reported in `recovered`. Any other defect is corruption
in the middle: opening fails with `JournalCorrupt`, naming the file and offset, and nothing
after it is served.
"""

import fcntl
import mmap
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from firmware.abi.entry import HEADER_BYTES, Mode

from ..durable import fsync_dir, replace
from . import records
from .entries import parse
from .merge import MERGED_DTYPE
from .primary import NEVER as NEVER  # re-exported: callers have always imported it from here
from .primary import Batch, JournalError, JournalRules
from .primary import SequenceGap as SequenceGap  # re-exported, as NEVER
from .records import RecordKind
from .state import JournalState

SEGMENT_BYTES = 1 << 30
WRITER_LOCK = "writer.lock"
STATE_LOCK = "state.lock"


def not_a_journal(folder: Path) -> JournalError:
    """The error for a folder without journal.json: what is wrong and the two ways on."""
    return JournalError(f"{folder} is not a journal (no journal.json): check -j/--journal (or "
                        f"PORTJOURNAL_JOURNAL), or create one with 'portjournal journal create -j {folder} "
                        "--ports N' ('portjournal collect' creates it from the board)")


class JournalCorrupt(JournalError):
    """A journal file is damaged somewhere other than a torn tail."""


class JournalBusy(JournalError):
    """Another process holds the journal open for writing."""


@dataclass(frozen=True)
class Cut:
    """What recovery cut from the tail of the last segment (the bytes are kept under cuts/)."""

    file: str
    offset: int
    bytes_cut: int
    reason: str
    torn: bool            # an unfinished write (never acknowledged) rather than damaged records
    port: int | None      # the damaged record's port, where its header could be read

    def __str__(self):
        what = "an unfinished write" if self.torn else "damaged records"
        return f"cut {self.bytes_cut} bytes at {self.file}:{self.offset}: {what} ({self.reason})"


class LocalJournal(JournalRules):
    """Primary journal in a folder: received and merged portions, with their small state."""

    def __init__(self, folder: Path, state: JournalState, *, segment_bytes: int = SEGMENT_BYTES):
        self.folder = Path(folder)
        self.state = state
        self.segment_bytes = segment_bytes
        self.recovered: list[Cut] = []
        self._chunks: list[np.ndarray] = []
        self._index: np.ndarray | None = None
        self._maps: dict[int, mmap.mmap] = {}
        self.last_seq = np.array([p.compacted_seq for p in state.port_state], dtype=np.int64)
        self.flushed_through = np.array([p.compacted_flushed_ns for p in state.port_state], dtype=np.uint64)
        self.merged = np.zeros(0, MERGED_DTYPE)
        self.merged_through = 0
        self._segment = 0
        self._fd: int | None = None
        self._writer = None
        self._tail = (0, 0)     # (segment, offset) just after the last record indexed
        self._markers: tuple[np.ndarray, np.ndarray] | None = None

    # --- creating and opening -------------------------------------------------------------

    @classmethod
    def create(cls, folder: Path, *, block_bytes: int, ports: int, mode: Mode, window_ns: int,
               **kwargs) -> "LocalJournal":
        folder = Path(folder)
        if (folder / "journal.json").exists():
            raise JournalError(f"{folder} already holds a journal: use it as it is ('portjournal journal "
                               f"info -j {folder}') or choose a new folder")
        state = JournalState(block_bytes=block_bytes, ports=ports, mode=int(mode), window_ns=window_ns)
        (folder / "received").mkdir(parents=True, exist_ok=True)
        state.save(folder)
        return cls.open(folder, **kwargs)

    @classmethod
    def open(cls, folder: Path, *, readonly: bool = False, repair: bool = False,
             **kwargs) -> "LocalJournal":
        """Open a journal; a read-only one never changes a file.

        A torn tail (an unfinished write) is cut on a writing open. Damaged records at the tail
        stop the open unless `repair`: then they are cut too (their bytes kept under cuts/)
        and their port is marked invalid from its last intact flush."""
        folder = Path(folder)
        if not (folder / "journal.json").exists():
            raise not_a_journal(folder)
        try:
            state = JournalState.load(folder)
        except ValueError as exc:
            raise JournalError(f"{exc}; put journal.json back from a copy of the journal") from exc
        journal = cls(folder, state, **kwargs)
        if not readonly:
            journal._lock_for_writing()
        try:
            journal._load(readonly, repair)
        except BaseException:
            journal.close()
            raise
        return journal

    def _lock_for_writing(self) -> None:
        """One writer per journal: appends, merges and recovery would tear each other apart."""
        self._writer = open(self.folder / WRITER_LOCK, "a")
        try:
            fcntl.flock(self._writer, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._writer.close()
            self._writer = None
            raise JournalBusy(f"{self.folder} is open for writing by another process (a collector?): "
                              "stop it (Ctrl-C) first; read-only commands (info, verify, restore -o, "
                              "serve) still work") from None

    def _load(self, readonly: bool, repair: bool) -> None:
        segments = self.segment_paths()
        for n, path in enumerate(segments):
            last = n == len(segments) - 1
            for rec in self._scan(path, last, readonly, repair):
                self._index_record(int(path.stem), rec)
        self._segment = int(segments[-1].stem) if segments else 0
        for cut in self.recovered:
            if cut.torn or readonly:
                continue
            # Written, fsynced, maybe acknowledged, and now damaged: the port's history after its
            # last intact flush cannot be vouched for (every port's, if the header hides whose).
            known = cut.port is not None and cut.port < self.state.ports
            for port in [cut.port] if known else range(self.state.ports):
                self.invalidate(port, int(self.flushed_through[port]),
                                f"damaged entries cut at {cut.file}:{cut.offset}")
        merged_path = self.folder / "merged.seg"
        if merged_path.exists():
            for rec in self._scan(merged_path, True, readonly, repair):
                self.merged = np.concatenate([self.merged, np.frombuffer(rec.payload, MERGED_DTYPE)])
                self.merged_through = max(self.merged_through, rec.aux)
        if self.recovered and len(self.merged):
            self._unmerge_cut_entries(readonly)

    def _unmerge_cut_entries(self, readonly: bool) -> None:
        """Merged rows may point at entries a recovery just cut: take the merged portion back to
        before the first window that does, so the next merge works from what is stored."""
        index = self.index
        stored = index["seg"].astype(np.uint64) << np.uint64(40) | index["offset"]
        wanted = self.merged["seg"].astype(np.uint64) << np.uint64(40) | self.merged["offset"]
        missing = ~np.isin(wanted, stored)
        if not missing.any():
            return
        back_to = int(self.merged["window_end"][missing].min()) - self.state.window_ns
        kept = self.merged[self.merged["window_end"] <= back_to]
        if readonly:
            self.merged, self.merged_through = kept, back_to
        else:
            self.rewrite_merged(kept, back_to)

    def _scan(self, path: Path, last: bool, readonly: bool, repair: bool) -> list[records.Record]:
        data = path.read_bytes()
        found, defect = records.scan(data)
        if defect is None:
            return found
        later = records.next_valid(data, defect.offset)
        if later is not None or not last:
            where = f"valid record follows at {later}" if later is not None else "not the last segment"
            raise JournalCorrupt(f"{path}:{defect.offset}: {defect.reason}; {where}. Data after this "
                                 f"point is not served; run 'portjournal journal verify' for a full report")
        if not defect.torn and not readonly and not repair:
            raise JournalCorrupt(f"{path}:{defect.offset}: {defect.reason}: records that were written are "
                                 "damaged at the tail. 'portjournal journal repair' cuts them (keeping the "
                                 "bytes under cuts/) and marks their port invalid from its last intact flush")
        cut = Cut(str(path), defect.offset, len(data) - defect.offset, defect.reason, defect.torn,
                  defect.port)
        if not readonly:
            kept = self.folder / "cuts" / f"{path.stem}-{defect.offset}.cut"
            kept.parent.mkdir(exist_ok=True)
            with open(kept, "wb") as f:            # the cut bytes are kept, never just dropped
                f.write(data[defect.offset:])
                os.fsync(f.fileno())
            self.update_state(lambda state: state.cuts.append({**asdict(cut), "kept_in": str(kept)}))
            with open(path, "r+b") as f:
                f.truncate(defect.offset)
                os.fsync(f.fileno())
        self.recovered.append(cut)
        return found

    def segment_paths(self) -> list[Path]:
        return sorted((self.folder / "received").glob("*.seg"))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        for m in self._maps.values():
            m.close()
        self._maps.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- the base copy ----------------------------------------------------------------------

    def keep_base(self, image: Path, name: str) -> None:
        """Make the fsynced `image` the journal's base image file `name` (host.journal.base)."""
        replace(image, self.folder / name)

    def drop_base(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)

    def base_image(self) -> Path:
        """The file of the current base copy."""
        return self.folder / self.state.base.path

    # --- the received portion -------------------------------------------------------------

    def append_round(self, batches: Sequence[Batch]) -> list[int | JournalError]:
        """Store a round of batches (one per port) with one fsync; per batch, the highest sequence
        of its port now durable, or the JournalError that kept that batch out while the others
        were stored (SequenceGap: entries were lost on the way; a damaged batch).

        Entries already stored (a resend) are dropped if byte-identical. Every batch's record
        is written, the segment fsynced once, and only then are the entries indexed: when this
        returns, the caller may acknowledge each port up to its sequence; when it raises (a
        write or the fsync failed), nothing of the round may be acknowledged."""
        self.check_round(batches)
        refused: list[JournalError | None] = []
        written = []            # (port, rows, starts, record, flushed), in writing order
        for port, raw, flushed_through, device_port in batches:
            try:
                rows, starts = self.fresh_entries(port, raw, device_port)
            except JournalError as exc:
                refused.append(exc)
                continue
            refused.append(None)
            flushed = max(int(flushed_through), int(self.flushed_through[port]))
            if len(rows) or flushed > int(self.flushed_through[port]):
                payload = memoryview(raw)[int(starts[0]):] if len(rows) else b""
                written.append((port, rows, starts,
                                records.encode(RecordKind.ENTRIES, payload, port=port, aux=flushed), flushed))
        places = self._write([w[3] for w in written])
        for (port, rows, starts, _, flushed), (seg, offset) in zip(written, places, strict=True):
            if len(rows):
                rows["seg"] = seg
                rows["offset"] = offset + records.HEADER_BYTES + (starts - starts[0])
                self._add_rows(rows)
                self.last_seq[port] = rows["seq"][-1]
            self.flushed_through[port] = flushed
        return [exc or int(self.last_seq[b.port]) for exc, b in zip(refused, batches, strict=True)]

    def _write(self, recs: list[bytes]) -> list[tuple[int, int]]:
        """Append `recs` to the received segments and fsync once (twice where they reach into a
        new segment); return the (segment, offset) of each."""
        if not recs:
            return []
        if self._fd is None:
            self._open_segment(self._segment)
        offset = os.lseek(self._fd, 0, os.SEEK_END)
        places, run = [], []
        for record in recs:
            if offset and offset + len(record) > self.segment_bytes:
                self._write_out(run)
                os.close(self._fd)
                self._segment += 1
                self._open_segment(self._segment)
                offset, run = 0, []
            places.append((self._segment, offset))
            run.append(record)
            offset += len(record)
        self._write_out(run)
        self._tail = (self._segment, offset)
        return places

    def _write_out(self, run: list[bytes]) -> None:
        view = memoryview(b"".join(run))
        while view:
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)

    def _open_segment(self, n: int) -> None:
        path = self.folder / "received" / f"{n:06d}.seg"
        created = not path.exists()
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if created:
            fsync_dir(path.parent)

    def catch_up(self) -> int:
        """Index the records another process (the collector) appended since this one looked;
        returns how many entries came in. A record still being written is left for next time."""
        before = len(self.index)
        for path in self.segment_paths():
            seg = int(path.stem)
            if seg < self._tail[0]:
                continue
            found, _ = records.scan(self._map(seg), self._tail[1] if seg == self._tail[0] else 0)
            for rec in found:
                self._index_record(seg, rec)
        return len(self.index) - before

    def _index_record(self, seg: int, rec: records.Record) -> None:
        if rec.kind != RecordKind.ENTRIES:
            raise JournalCorrupt(f"segment {seg}: record at {rec.offset} has kind {rec.kind}, "
                                 "expected entries")
        self._tail = (seg, rec.end)
        rows, starts = parse(rec.payload, self.state.block_bytes)
        port = rows["port"] = rec.port          # the volume's port (the device's may differ)
        if len(rows):
            rows["seg"] = seg
            rows["offset"] = rec.offset + records.HEADER_BYTES + starts
            self._add_rows(rows)
            self.last_seq[port] = rows["seq"][-1]
        self.flushed_through[port] = max(int(self.flushed_through[port]), rec.aux)

    def forget_segments(self, segs: list[int]) -> None:
        """Drop the index rows of received segments that compaction removed."""
        index = self.index
        self._chunks, self._index = [index[~np.isin(index["seg"], segs)]], None
        for seg in segs:
            mapped = self._maps.pop(seg, None)
            if mapped is not None:
                mapped.close()

    def read_at(self, segs: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """The data blocks of the entries stored at (segment, offset), e.g. merged rows."""
        block = self.state.block_bytes
        out = np.empty((len(segs), block), np.uint8)
        for seg in np.unique(segs):
            sel = np.flatnonzero(segs == seg)
            out[sel] = self._blocks_of(int(seg))[offsets[sel].astype(np.int64) + HEADER_BYTES]
        return out

    def _blocks_of(self, seg: int) -> np.ndarray:
        """A read-only (n, block_bytes) view of a segment in which row i starts at byte i.

        Fancy-indexing it with data offsets gathers whole blocks with one memcpy each."""
        raw = np.frombuffer(self._map(seg), np.uint8)
        block = self.state.block_bytes
        return np.lib.stride_tricks.as_strided(raw, shape=(max(len(raw) - block + 1, 0), block),
                                               strides=(1, 1), writeable=False)

    def _map(self, seg: int) -> mmap.mmap:
        m = self._maps.get(seg)
        path = self.folder / "received" / f"{seg:06d}.seg"
        if m is None or len(m) < path.stat().st_size:
            with open(path, "rb") as f:
                m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps[seg] = m
        return m

    def update_state(self, change: Callable[[JournalState], None]) -> JournalState:
        """Apply `change` to the state as it is on disk, under the folder's state lock.

        Another process (a CLI command beside a running collector) may have changed the state
        since this one read it; reading it again under the lock keeps both changes."""
        with open(self.folder / STATE_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                fresh = JournalState.load(self.folder)
            except ValueError as exc:
                raise JournalError(str(exc)) from exc
            change(fresh)
            fresh.save(self.folder)
        self.state = fresh
        return fresh

    # --- the merged portion -----------------------------------------------------------------

    def rewrite_merged(self, rows: np.ndarray, through_ns: int) -> None:
        """Replace the merged portion with `rows` (merged through `through_ns`), atomically."""
        tmp = self.folder / "merged.tmp"
        with open(tmp, "wb") as f:
            f.write(records.encode(RecordKind.MERGED, rows.astype(MERGED_DTYPE).tobytes(), aux=through_ns))
            f.flush()
            os.fsync(f.fileno())
        replace(tmp, self.folder / "merged.seg")
        self.merged, self.merged_through = rows, through_ns

    def append_merged(self, table: np.ndarray, through_ns: int) -> None:
        """Store merged entries for windows up to `through_ns`, durably."""
        record = records.encode(RecordKind.MERGED, table.astype(MERGED_DTYPE).tobytes(), aux=through_ns)
        fd = os.open(self.folder / "merged.seg", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            view = memoryview(record)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        self.merged = np.concatenate([self.merged, table.astype(MERGED_DTYPE)])
        self.merged_through = through_ns

