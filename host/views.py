"""Point-in-time views (seed figures 10 and 12-15): the volume as it was at device time Tx.

A view is a backing image plus a map of redirected blocks, each pointing at a journal entry's
data. "As it was at Tx" means every write stamped before Tx is in, none stamped at or after.

- Redo (figure 10): the backing is the base copy; a block written in [base time, Tx) reads
  its last such write, taken from the merged portion for whole merged windows and from the
  received portion after them.
- Copy-on-write (figures 12-15): the backing is the primary storage as it is now; a block
  written at or after Tx reads the pre-image of its first such write. `refresh` keeps the map
  current as entries arrive.

Opening refuses a Tx the journal cannot vouch for (before its history, past the consistency
horizon, or where a port's writes are missing) unless forced; a forced view says in
`warnings` what it could not guarantee. Reading a view never writes anything.
"""

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from firmware.abi.entry import Mode

from .journal.merge import pick_per_block, usable
from .journal.primary import NEVER, JournalError, PrimaryJournal
from .storage import FileStorage
from .timefmt import format_ns


class ViewRefused(JournalError):
    """The journal cannot give the volume at that time (unless forced)."""


@dataclass
class PointInTimeView:
    journal: PrimaryJournal
    at_ns: int
    backing: FileStorage
    lba: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))      # sorted
    seg: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    offset: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    warnings: list[str] = field(default_factory=list)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def mode(self) -> Mode:
        return Mode(self.journal.state.mode)

    @property
    def block_bytes(self) -> int:
        return self.journal.state.block_bytes

    @property
    def blocks(self) -> int:
        return self.backing.blocks

    @property
    def size_bytes(self) -> int:
        return self.blocks * self.block_bytes

    def read_blocks(self, lba: int, count: int) -> bytes:
        """Blocks [lba, lba + count) as they were at Tx."""
        return self.fill(lba, np.empty((count, self.block_bytes), np.uint8)).tobytes()

    def fill(self, lba: int, out: np.ndarray) -> np.ndarray:
        """Put blocks [lba, lba + len(out)) as they were at Tx into the (n, block_bytes) array `out`."""
        with self._lock:
            return self._fill(lba, out)

    def _fill(self, lba: int, out: np.ndarray) -> np.ndarray:
        count = len(out)
        self.backing.read_into(lba, out)
        lo, hi = np.searchsorted(self.lba, np.array([lba, lba + count], np.uint64))
        if hi > lo:
            out[(self.lba[lo:hi] - np.uint64(lba)).astype(np.int64)] = self.journal.read_at(
                self.seg[lo:hi], self.offset[lo:hi])
        return out

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes from byte `offset` (any alignment), as they were at Tx."""
        if offset < 0 or length < 0 or offset + length > self.size_bytes:
            raise ValueError(f"read of {length} bytes at {offset} is outside the "
                             f"{self.size_bytes}-byte volume")
        if not length:
            return b""
        first, last = offset // self.block_bytes, (offset + length - 1) // self.block_bytes
        data = self.read_blocks(first, last - first + 1)
        skip = offset - first * self.block_bytes
        return data[skip:skip + length]

    def refresh(self) -> None:
        """Take in entries that arrived since the view was opened, from this process or from
        another one appending to the journal (copy-on-write keeps its map current this way; a
        redo view of a past Tx only changes if older entries arrive late)."""
        with self._lock:
            self.journal.catch_up()
            self.lba, self.seg, self.offset = _redirects(self.journal, self.at_ns)

    def follow(self, interval_s: float = 1.0) -> threading.Event:
        """Refresh every `interval_s` in a background thread until the returned event is set."""
        stop = threading.Event()

        def run():
            while not stop.wait(interval_s):
                self.refresh()

        threading.Thread(target=run, name="view-follow", daemon=True).start()
        return stop


def open_view(journal: PrimaryJournal, at_ns: int, *, storage: Path | None = None,
              force: bool = False) -> PointInTimeView:
    """The volume at `at_ns`. Copy-on-write journals need the primary `storage` to read from."""
    st = journal.state
    problems: list[str] = []
    if at_ns < st.history_from_ns:
        raise ViewRefused(f"{format_ns(at_ns)} is before the journal's history, which starts at "
                          f"{format_ns(st.history_from_ns)} (compacted): choose a later --at "
                          "('portjournal journal info' shows the history)")
    if Mode(st.mode) == Mode.REDO:
        if st.base is None:
            raise ViewRefused("a redo restore needs a base copy: take one with 'portjournal journal base "
                              "--storage VOLUME --at NS'")
        if at_ns < st.base.time_ns:
            raise ViewRefused(f"{format_ns(at_ns)} is before the base copy at {format_ns(st.base.time_ns)}: "
                              "choose an --at from there on")
        backing = FileStorage(journal.base_image(), st.block_bytes)
        if backing.blocks != st.base.blocks:
            backing.close()
            raise ViewRefused(f"the base copy {st.base.path} holds {backing.blocks} blocks, the journal "
                              f"recorded {st.base.blocks}: it was changed or truncated; put it back from "
                              "a copy ('portjournal journal verify' checks it)")
    else:
        if storage is None:
            raise ViewRefused("a copy-on-write view reads the primary storage: give its path (--storage)")
        backing = FileStorage(storage, st.block_bytes)
    horizon = journal.horizon()
    if at_ns > horizon:
        problems.append(f"{format_ns(at_ns)} is past the consistency horizon {format_ns(horizon)}: "
                        "not every port has flushed up to it, so writes before it may be missing")
    since, valid_from = journal.invalid_since(), journal.valid_from()
    first_needed = st.base.time_ns if Mode(st.mode) == Mode.REDO else at_ns
    last_needed = at_ns if Mode(st.mode) == Mode.REDO else int(NEVER)   # cow: every write after Tx
    for port, port_state in enumerate(st.port_state):
        why = f" ({port_state.reason})" if port_state.reason else ""
        if since[port] < last_needed:
            problems.append(f"port {port} is invalid from {format_ns(int(since[port]))}{why}: its writes "
                            "after that are not in the journal")
        elif valid_from[port] > first_needed:
            problems.append(f"port {port} counts only from {format_ns(int(valid_from[port]))} (resync): its "
                            "writes before that are not in the journal")
    if problems and not force:
        backing.close()
        raise ViewRefused("; ".join(problems) + " (choose another --at, or --force to restore anyway)")
    view = PointInTimeView(journal, at_ns, backing, warnings=problems)
    view.refresh()
    return view


def _redirects(journal: PrimaryJournal, at_ns: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lba, segment, offset) of every redirected block, sorted by lba."""
    index, st = journal.index, journal.state
    valid_from, since = journal.valid_from(), journal.invalid_since()
    if Mode(st.mode) == Mode.COPY_ON_WRITE:
        lba, chosen = pick_per_block(index, usable(index, at_ns, int(NEVER), valid_from, since), last=False)
        return lba, index["seg"][chosen], index["offset"][chosen]
    base = st.base.time_ns
    whole = min(journal.merged_through, at_ns // st.window_ns * st.window_ns)
    ends = journal.merged["window_end"]           # non-decreasing: rows are stored in window order
    lo, hi = np.searchsorted(ends, [base, whole], side="right")
    merged = _newest_per_block(journal.merged[lo:hi])
    lba, chosen = pick_per_block(index, usable(index, max(whole, base), at_ns, valid_from, since), last=True)
    # A write after the merged windows replaces the block's merged value.
    older = ~np.isin(merged["lba"], lba)
    all_lba = np.concatenate([lba, merged["lba"][older]])
    all_seg = np.concatenate([index["seg"][chosen], merged["seg"][older]])
    all_off = np.concatenate([index["offset"][chosen], merged["offset"][older]])
    order = np.argsort(all_lba)
    return all_lba[order], all_seg[order], all_off[order]


def _newest_per_block(merged: np.ndarray) -> np.ndarray:
    """Each block's row from its latest window. Rows are stored in window order, so sorting
    (lba, row number) packed in one uint64 puts each block's newest row last in its run."""
    if not len(merged):
        return merged
    row_bits = np.uint64(max(int(len(merged) - 1).bit_length(), 1))
    if int(merged["lba"].max()).bit_length() + int(row_bits) > 64:
        order = np.lexsort((np.arange(len(merged)), merged["lba"]))
    else:
        order = np.sort(merged["lba"] << row_bits | np.arange(len(merged), dtype=np.uint64))
        order = (order & ((np.uint64(1) << row_bits) - np.uint64(1))).astype(np.int64)
    lba = merged["lba"][order]
    return merged[order[np.append(lba[1:] != lba[:-1], True)]]
