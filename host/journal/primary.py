"""What every primary-journal store does the same way, whatever holds its bytes.

A store (the local folder in host.journal.store, the replicated JetStream stream in
host.journal.jetstream) keeps the received entries, indexed as `index` rows whose `seg` and
`offset` locate each entry's bytes, the merged portion and the small state. On top of those,
this module decides port validity, the consistency horizon, what a batch adds, and merging;
`PrimaryJournal` names what the collector, merge, views and restore use of a store, so they
work on either.
"""

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np

from firmware.abi.entry import EntryError, Kind, Mode

from .entries import INDEX_DTYPE, parse
from .merge import MERGED_DTYPE, merge
from .state import JournalState

NEVER = np.iinfo(np.uint64).max


class JournalError(Exception):
    """The journal cannot do what was asked; the message says why."""


class SequenceGap(JournalError):
    """A port's batch does not continue its sequence: entries were lost on the way."""


class Batch(NamedTuple):
    """One port's flush as the collector hands it to a store: `raw` entries of the device's port
    `device_port` (None: the same number), journaled as the volume's `port`, complete up to the
    device time `flushed_through`."""

    port: int
    raw: bytes
    flushed_through: int
    device_port: int | None = None


class PrimaryJournal(Protocol):
    """The primary journal as the collector, merge, views and restore see it."""

    state: JournalState
    folder: Path                  # local files: the journal itself, or a cache of a remote one
    merged: np.ndarray            # MERGED_DTYPE rows in window order
    merged_through: int           # device time up to which every window is merged
    flushed_through: np.ndarray   # per port, the device time up to which it has flushed
    last_seq: np.ndarray          # per port, the highest sequence stored

    @property
    def index(self) -> np.ndarray: ...
    def append(self, port: int, raw: bytes, flushed_through: int, *,
               device_port: int | None = None) -> int: ...
    def append_round(self, batches: Sequence[Batch]) -> list[int | JournalError]: ...
    def catch_up(self) -> int: ...
    def read_at(self, segs: np.ndarray, offsets: np.ndarray) -> np.ndarray: ...
    def base_image(self) -> Path: ...
    def keep_base(self, image: Path, name: str) -> None: ...
    def drop_base(self, name: str) -> None: ...
    def invalid_since(self) -> np.ndarray: ...
    def valid_from(self) -> np.ndarray: ...
    def horizon(self) -> int: ...
    def invalidate(self, port: int, since_ns: int, reason: str) -> None: ...
    def reinstate(self, port: int) -> tuple[int, int]: ...
    def merge(self) -> np.ndarray: ...
    def update_state(self, change: Callable[[JournalState], None]) -> JournalState: ...
    def close(self) -> None: ...


class JournalRules:
    """Validity, horizon, batch checks and merging over a store's index, merged rows and state.

    A store provides `state`, `last_seq`, `flushed_through`, `merged`, `merged_through`,
    `append_round`, `read_at`, `update_state`, `append_merged` and `rewrite_merged`, and fills
    `index` through `_add_rows` (starting from `_chunks = []`)."""

    _markers: tuple[np.ndarray, np.ndarray] | None = None
    _chunks: list[np.ndarray]
    _index: np.ndarray | None = None

    # --- the index of stored entries ----------------------------------------------------------

    def _add_rows(self, rows: np.ndarray) -> None:
        """Index rows of newly stored entries; joined into one array on the next `index` read."""
        self._chunks.append(rows)
        self._index = None

    @property
    def index(self) -> np.ndarray:
        """Every stored entry, in the order stored (per port: sequence order)."""
        if self._index is None:
            self._index = np.concatenate(self._chunks) if self._chunks else np.zeros(0, INDEX_DTYPE)
            self._chunks = [self._index]
        return self._index

    # --- batches ------------------------------------------------------------------------------

    def append(self, port: int, raw: bytes, flushed_through: int, *, device_port: int | None = None) -> int:
        """Store one batch of `port`'s entries durably; return the highest sequence now durable.

        A round of one (`append_round`): a gap raises SequenceGap, a damaged batch JournalError,
        and nothing of the batch is stored then."""
        [outcome] = self.append_round([Batch(port, raw, flushed_through, device_port)])
        if isinstance(outcome, JournalError):
            raise outcome
        return outcome

    @staticmethod
    def check_round(batches: Sequence[Batch]) -> None:
        """A round holds at most one batch per port: a port's next batch is checked against (and,
        in the cluster, fenced by) what its previous one stored."""
        ports = [b.port for b in batches]
        if len(set(ports)) != len(ports):
            raise JournalError(f"a round holds one batch per port, got ports {ports}")

    def fresh_entries(self, port: int, raw, device_port: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Index rows and batch offsets of the entries of `raw` not stored yet.

        The entries are those of the device's port `device_port` (default `port`), journaled as
        the volume's port `port`: a volume protected by several devices numbers their ports one
        after the other, and the rows carry the volume's number. Entries already stored (a
        resend) are dropped if byte-identical; a gap in the sequence raises SequenceGap; a
        damaged or foreign entry raises JournalError."""
        if not 0 <= port < self.state.ports:
            raise JournalError(f"port {port} is outside this journal's {self.state.ports} ports")
        try:
            rows, starts = parse(raw, self.state.block_bytes)
        except EntryError as exc:
            raise JournalError(f"port {port}: bad entry in batch: {exc}") from exc
        own = port if device_port is None else device_port
        strangers = rows["port"][rows["port"] != own]
        if len(strangers):
            raise JournalError(f"port {port}: batch holds entries of device port {int(strangers[0])}, "
                               f"expected {own}")
        rows["port"] = port
        if len(rows) and np.any(np.diff(rows["seq"].astype(np.int64)) != 1):
            raise JournalError(f"port {port}: batch sequence numbers are not consecutive")
        fresh = rows["seq"].astype(np.int64) > self.last_seq[port]
        self._check_resent(port, rows[~fresh])
        rows, starts = rows[fresh], starts[fresh]
        if len(rows) and rows["seq"][0] != self.last_seq[port] + 1:
            raise SequenceGap(f"port {port}: expected sequence {self.last_seq[port] + 1}, "
                              f"got {rows['seq'][0]}: entries were lost, ask for a resend")
        return rows, starts

    def _check_resent(self, port: int, again: np.ndarray) -> None:
        if not len(again):
            return
        index = self.index
        mine = index[index["port"] == port]
        stored = mine[np.searchsorted(mine["seq"], again["seq"])]
        if np.any(stored["crc"] != again["crc"]):
            bad = int(again["seq"][stored["crc"] != again["crc"]][0])
            raise JournalError(f"port {port}: resent entry {bad} differs from the stored one")

    # --- reading ------------------------------------------------------------------------------

    @property
    def markers(self) -> np.ndarray:
        """The PORT_INVALID marker entries, found once per change of the index."""
        index = self.index
        if self._markers is None or self._markers[0] is not index:
            self._markers = (index, index[index["kind"] == Kind.PORT_INVALID])
        return self._markers[1]

    def received(self, until_ns: int | None = None) -> np.ndarray:
        """Entry ids of the received portion in (timestamp, port, sequence) order."""
        index = self.index
        order = np.lexsort((index["seq"], index["port"], index["timestamp"]))
        if until_ns is not None:
            order = order[index["timestamp"][order] < until_ns]
        return order

    def read_data(self, ids) -> np.ndarray:
        """The data blocks of entries `ids` (positions in `index`), as an (n, block_bytes) array."""
        rows = self.index[np.asarray(ids, dtype=np.int64)]
        if np.any(rows["kind"] != 0):
            raise JournalError("asked for the data of a marker entry")
        return self.read_at(rows["seg"], rows["offset"])

    # --- validity and the consistency horizon ----------------------------------------------

    def invalid_since(self) -> np.ndarray:
        """Per port, the device time from which its entries are ignored (NEVER if valid).

        A port is invalid from the earlier of the host's verdict (missed flush deadline) and
        the port's own PORT_INVALID marker (its ring filled), counting only markers after
        the port was last made valid."""
        since = np.full(self.state.ports, NEVER, dtype=np.uint64)
        markers = self.markers
        for port, st in enumerate(self.state.port_state):
            if st.invalid_since_ns is not None:
                since[port] = st.invalid_since_ns
            counted = (markers["port"] == port) & (markers["timestamp"] >= st.valid_from_ns)
            mine = markers["timestamp"][counted]
            if len(mine):
                since[port] = min(int(since[port]), int(mine.min()))
        return since

    def valid_from(self) -> np.ndarray:
        return np.array([p.valid_from_ns for p in self.state.port_state], dtype=np.uint64)

    def horizon(self) -> int:
        """Latest device time up to which every valid port has flushed: history before it is final."""
        since = self.invalid_since()
        valid = since == NEVER
        if not valid.any():
            return int(self.flushed_through.max(initial=0))
        return int(self.flushed_through[valid].min())

    def invalidate(self, port: int, since_ns: int, reason: str) -> None:
        def mark(state: JournalState) -> None:
            st = state.port_state[port]
            if st.invalid_since_ns is None or since_ns < st.invalid_since_ns:
                st.invalid_since_ns, st.reason = since_ns, reason

        self.update_state(mark)

    def revalidate(self, port: int, from_ns: int) -> None:
        """Count `port` again from device time `from_ns` (after a fresh base copy)."""
        if from_ns < 0:
            raise JournalError(f"device time cannot be negative ({from_ns})")

        def clear(state: JournalState) -> None:
            st = state.port_state[port]
            st.valid_from_ns, st.invalid_since_ns, st.reason = from_ns, None, ""

        self.update_state(clear)

    def reinstate(self, port: int) -> tuple[int, int]:
        """Count `port` again after an outage its ring rode out; return the outage (since, until).

        A port the host invalidated for missing its flush deadline (seed: "the invalid state may
        be reset should the port return to a valid state, for example if a problem with a
        communication medium has been corrected") lost nothing when its link came back with its
        sequence unbroken: its ring never overwrites an unacknowledged entry, and `append` refuses
        gaps. So once its backlog is stored past the verdict's time the port counts again over
        the outage too, and merged windows from the verdict on are taken back to be merged again
        with its entries. A port that marked itself invalid (PORT_INVALID: its ring overflowed)
        did lose entries and needs a resync instead."""
        if not 0 <= port < self.state.ports:
            raise JournalError(f"port {port} is outside this journal's {self.state.ports} ports")
        st = self.state.port_state[port]
        if st.invalid_since_ns is None:
            raise JournalError(f"port {port} is valid: nothing to reinstate")
        markers = self.markers
        own = (markers["port"] == port) & (markers["timestamp"] >= st.valid_from_ns)
        if own.any():
            raise JournalError(f"port {port} reported itself invalid (its ring overflowed, entries were "
                               "lost): take a fresh base copy with 'portjournal ports resync' instead")
        since, until = int(st.invalid_since_ns), int(self.flushed_through[port])
        if until <= since:
            raise JournalError(f"port {port} has not flushed past its outage (since {since} ns) yet: collect "
                               "its backlog first")
        back_to = min(self.merged_through, since // self.state.window_ns * self.state.window_ns)
        if back_to < self.merged_through:
            self.rewrite_merged(self.merged[self.merged["window_end"] <= back_to], back_to)

        def clear(state: JournalState) -> None:
            ps = state.port_state[port]
            ps.outages.append([since, until])
            ps.invalid_since_ns, ps.reason = None, ""

        self.update_state(clear)
        return since, until

    # --- the merged portion -----------------------------------------------------------------

    def merge(self) -> np.ndarray:
        """Merge every whole window between the last merge and the horizon; return the new rows."""
        window = self.state.window_ns
        end = self.horizon() // window * window
        if end <= self.merged_through:
            return np.zeros(0, MERGED_DTYPE)
        table = merge(self.index, mode=Mode(self.state.mode), window_ns=window,
                      start_ns=self.merged_through, end_ns=end, valid_from=self.valid_from(),
                      invalid_since=self.invalid_since())
        self.append_merged(table, end)
        return table
