"""The collector loop: polls every port for its partial journal and keeps port validity.

Each poll asks a port to flush, stores what comes back durably, then acknowledges it, so a
port's ring only frees what is on disk. A port that has not flushed successfully within the
flush deadline is marked invalid from the device time up to which it had last flushed (seed:
"from this point on, the process may ignore any partial journal entries coming from that
port"); it stays invalid until an explicit resync, or an explicit `reinstate` once it answers
again with nothing lost.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .store import NEVER, JournalError, LocalJournal, SequenceGap


class LinkFault(Exception):
    """A port did not answer or its answer was unusable (timeout, broken link, bad frame)."""


class PortLink(Protocol):
    """What the collector needs of a device driver, per port."""

    def flush(self, port: int) -> tuple[bytes, int]:
        """Entries the port has not had acknowledged yet, and the device time they cover up to."""

    def ack(self, port: int, seq: int) -> None:
        """Tell the port that everything up to `seq` is durable."""

    def resend(self, port: int) -> None:
        """Ask the port to send again from its oldest unacknowledged entry."""


@dataclass
class PortPoll:
    port: int
    entries: int = 0
    durable_seq: int = -1
    error: str = ""
    invalidated: bool = False


class Collector:
    def __init__(self, journal: LocalJournal, link: PortLink, deadline_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.journal, self.link, self.deadline_s, self.clock = journal, link, deadline_s, clock
        now = clock()
        self.last_ok = [now] * journal.state.ports

    def poll(self) -> list[PortPoll]:
        """One round over all ports that are still valid."""
        since = self.journal.invalid_since()
        return [self._poll(port) for port in range(self.journal.state.ports) if since[port] == NEVER]

    def _poll(self, port: int) -> PortPoll:
        result = PortPoll(port)
        before = len(self.journal.index)
        try:
            raw, flushed_through = self.link.flush(port)
            result.durable_seq = self.journal.append(port, raw, flushed_through)
            self.link.ack(port, result.durable_seq)
        except (SequenceGap, JournalError) as exc:   # a gap or a damaged batch: nothing stored
            result.error = str(exc)
            self._resend(port, result)
        except LinkFault as exc:
            result.error = str(exc)
        else:
            self.last_ok[port] = self.clock()
        result.entries = len(self.journal.index) - before
        if result.error and self.clock() - self.last_ok[port] > self.deadline_s:
            self.journal.invalidate(port, int(self.journal.flushed_through[port]),
                                    f"missed its flush deadline of {self.deadline_s:g} s "
                                    f"(last error: {result.error})")
            result.invalidated = True
        return result

    def reinstate(self, port: int) -> tuple[int, int]:
        """Bring back a port that went silent and answers again: store its backlog, then count it
        over the outage (`LocalJournal.reinstate`, which refuses if entries were lost). Returns
        the outage (since, until) in device time; raises LinkFault if the port still does not
        answer."""
        poll = self._poll(port)
        if poll.error:
            raise LinkFault(f"port {port} does not answer yet: {poll.error}")
        return self.journal.reinstate(port)

    def _resend(self, port: int, result: PortPoll) -> None:
        try:
            self.link.resend(port)
        except LinkFault as exc:
            result.error += f"; resend failed: {exc}"
