"""`journal verify`: check every record, every entry, the ordering and the merged index.

Unlike opening, verifying never changes a file; it goes on past a defect to report every
problem it can find, each with the file and byte offset.
"""

from dataclasses import dataclass, field
from pathlib import Path

import crc32c
import numpy as np

from firmware.abi.entry import TRAILER_BYTES, EntryError, Kind, entry_bytes

from . import records
from .base import file_crc
from .entries import BadEntry, parse
from .merge import MERGED_DTYPE
from .records import RecordKind
from .state import JournalState


@dataclass(frozen=True)
class Problem:
    file: str
    offset: int
    what: str

    def __str__(self):
        return f"{self.file}:{self.offset}: {self.what}"


@dataclass
class Report:
    problems: list[Problem]
    notes: list[str] = field(default_factory=list)   # worth knowing, not a defect (past recoveries)
    records: int = 0
    entries: int = 0
    merged: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(folder: Path) -> Report:
    folder = Path(folder)
    report = Report([])
    if not (folder / "journal.json").exists():
        report.problems.append(Problem(str(folder), 0, "not a journal (no journal.json)"))
        return report
    try:
        state = JournalState.load(folder)
    except ValueError as exc:
        report.problems.append(Problem(str(folder / "journal.json"), 0, str(exc)))
        return report
    _check_base(folder, state, report)
    report.notes += [f"recovery cut {c['bytes_cut']} bytes at {c['file']}:{c['offset']} ({c['reason']}); "
                     f"kept in {c.get('kept_in', '?')}" for c in state.cuts]
    last_seq = [p.compacted_seq for p in state.port_state]
    last_ts = [0] * state.ports
    located: dict[tuple[int, int], int] = {}   # (segment, offset) of each entry -> its lba
    segments = sorted((folder / "received").glob("*.seg"))
    for n, path in enumerate(segments):
        for rec in _records(path, report, state.block_bytes, last=n == len(segments) - 1):
            if rec.kind != RecordKind.ENTRIES:
                report.problems.append(Problem(str(path), rec.offset, f"unexpected record kind {rec.kind}"))
                continue
            try:
                rows, starts = parse(rec.payload, state.block_bytes)
            except EntryError as exc:
                report.problems.append(Problem(str(path), rec.offset + records.HEADER_BYTES,
                                               f"bad entry: {exc}"))
                continue
            for row, start in zip(rows, starts.tolist(), strict=True):
                where = rec.offset + records.HEADER_BYTES + start
                port, seq, ts = int(row["port"]), int(row["seq"]), int(row["timestamp"])
                if port != rec.port or port >= state.ports:
                    report.problems.append(Problem(str(path), where, f"entry of port {port} in a "
                                                   f"record of port {rec.port}"))
                    continue
                if seq != last_seq[port] + 1:
                    report.problems.append(Problem(str(path), where, f"port {port}: sequence {seq} "
                                                   f"follows {last_seq[port]}"))
                if ts < last_ts[port] and row["kind"] == Kind.WRITE:
                    report.problems.append(Problem(str(path), where, f"port {port}: time {ts} goes back "
                                                   f"from {last_ts[port]}"))
                last_seq[port], last_ts[port] = seq, max(ts, last_ts[port])
                located[(int(path.stem), where)] = int(row["lba"])
                report.entries += 1
    merged_path = folder / "merged.seg"
    if merged_path.exists():
        for rec in _records(merged_path, report, state.block_bytes, last=True):
            table = np.frombuffer(rec.payload, MERGED_DTYPE)
            for row in table:
                lba = located.get((int(row["seg"]), int(row["offset"])))
                if lba != int(row["lba"]):
                    what = "no received entry" if lba is None else f"an entry of block {lba}"
                    report.problems.append(Problem(str(merged_path), rec.offset, f"merged entry for block "
                                                   f"{int(row['lba'])} points at {what}"))
                    break
            report.merged += len(table)
    return report


def _records(path: Path, report: Report, block_bytes: int, *, last: bool) -> list[records.Record]:
    """Every well-formed record of `path`, reporting each defect and resuming after it.

    `last`: the file is where appends go, so a defect with nothing valid after it is a tail
    that opening will cut (and keep under cuts/); anywhere else it stops the open."""
    data = path.read_bytes()
    found, offset = [], 0
    while offset < len(data):
        got, defect = records.scan(data, offset)
        found += got
        report.records += len(got)
        if defect is None:
            break
        later = records.next_valid(data, defect.offset)
        if later is not None:
            tail = f"{later - defect.offset} bytes skipped"
        elif last:
            tail = "tail, cut on the next open and kept under cuts/"
        else:
            tail = "to the end of a segment that is not the last: opening refuses the journal"
        report.problems.append(Problem(str(path), defect.offset, f"{defect.reason} ({tail})"))
        damaged = _damaged_entry(data, defect.offset, block_bytes)
        if damaged is not None:
            report.problems.append(Problem(str(path), *damaged))
        if later is None:
            break
        offset = later
    return found


def _damaged_entry(data: bytes, offset: int, block_bytes: int) -> tuple[int, str] | None:
    """Inside a record whose CRC failed but whose header holds, the first entry that is damaged.

    A record of whole write entries is checked at their fixed stride first, so damage that
    breaks a length field is still pinned to the entry it is in."""
    header = records.sound_header(data, offset)
    if header is None:
        return None
    kind, _, length, _ = header
    start = offset + records.HEADER_BYTES
    if kind != RecordKind.ENTRIES or start + length > len(data):
        return None
    size = entry_bytes(block_bytes)
    if length % size == 0:
        for i, at in enumerate(range(start, start + length, size)):
            body = data[at:at + size - TRAILER_BYTES]
            if crc32c.crc32c(body) != int.from_bytes(data[at + size - 8:at + size - 4], "little"):
                return at, f"damaged entry: entry {i} at byte {at - start}: CRC does not match its contents"
        return None
    try:
        parse(data[start:start + length], block_bytes)
    except BadEntry as exc:
        return start + exc.offset, f"damaged entry: {exc}"
    return None


def _check_base(folder: Path, state: JournalState, report: Report) -> None:
    """The base copy is there, of the recorded size and (where recorded) CRC."""
    base = state.base
    if base is None:
        return
    path = folder / base.path
    if not path.exists():
        report.problems.append(Problem(str(path), 0, "the base copy is missing"))
        return
    size = path.stat().st_size
    if size != base.blocks * state.block_bytes:
        report.problems.append(Problem(str(path), 0, f"the base copy is {size} bytes, the journal recorded "
                                       f"{base.blocks * state.block_bytes}"))
    elif base.crc32c is not None and file_crc(path) != base.crc32c:
        report.problems.append(Problem(str(path), 0, "the base copy's CRC does not match the journal's"))
