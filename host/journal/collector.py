"""The collector loop: polls every port for its partial journal and keeps port validity.

Each poll is a round over the ports: it asks every port to flush, stores what came back with
one durable sync for the whole round (group commit: `PrimaryJournal.append_round`), then
acknowledges each port whose batch was stored, so a port's ring only frees what is durable,
and one port's lost or damaged batch does not hold the others back. A port that has not flushed
successfully within the flush deadline is marked invalid from the device time up to which it
had last flushed (seed: "from this point on, the process may ignore any partial journal entries
coming from that port"); it stays invalid until an explicit resync, or an explicit `reinstate`
once it answers again with nothing lost.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .primary import NEVER, Batch, JournalError, PrimaryJournal


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
    """Collects one device's ports into the journal.

    A volume protected by several devices (each with its own collector, possibly on its own
    host, all into one replicated journal) numbers their ports one after the other: this
    device's port 0 is the volume's `first_port`, and it has `ports` ports (default: all of the
    journal's). Ports in `PortPoll`, `last_ok` and the journal are the volume's."""

    def __init__(self, journal: PrimaryJournal, link: PortLink, deadline_s: float,
                 clock: Callable[[], float] = time.monotonic, *, first_port: int = 0,
                 ports: int | None = None):
        self.journal, self.link, self.deadline_s, self.clock = journal, link, deadline_s, clock
        count = journal.state.ports - first_port if ports is None else ports
        if first_port < 0 or count < 1 or first_port + count > journal.state.ports:
            raise JournalError(f"ports {first_port}..{first_port + count - 1} are not all among the "
                               f"journal's {journal.state.ports} ports")
        self.ports = range(first_port, first_port + count)
        now = clock()
        self.last_ok = [now] * journal.state.ports

    def poll(self) -> list[PortPoll]:
        """One round over this device's ports that are still valid."""
        since = self.journal.invalid_since()
        return self._round([port for port in self.ports if since[port] == NEVER])

    def _round(self, ports: list[int]) -> list[PortPoll]:
        """Flush `ports`, store their batches together, acknowledge each one stored.

        A failed store of the round (a write or sync error) raises before any acknowledgement."""
        polls = {port: PortPoll(port) for port in ports}
        batches = []
        for port in ports:
            try:
                raw, flushed_through = self.link.flush(port - self.ports.start)
            except LinkFault as exc:
                polls[port].error = str(exc)
            else:
                batches.append(Batch(port, raw, flushed_through, port - self.ports.start))
        before = {b.port: int(self.journal.last_seq[b.port]) for b in batches}
        for batch, outcome in zip(batches, self.journal.append_round(batches), strict=True):
            self._acknowledge(polls[batch.port], outcome)
            polls[batch.port].entries = int(self.journal.last_seq[batch.port]) - before[batch.port]
        for poll in polls.values():
            if poll.error and self.clock() - self.last_ok[poll.port] > self.deadline_s:
                self.journal.invalidate(poll.port, int(self.journal.flushed_through[poll.port]),
                                        f"missed its flush deadline of {self.deadline_s:g} s "
                                        f"(last error: {poll.error})")
                poll.invalidated = True
        return list(polls.values())

    def _acknowledge(self, poll: PortPoll, outcome: int | JournalError) -> None:
        """Acknowledge to the port what its batch made durable, or ask for a resend of a batch
        that had a gap or was damaged (nothing of it stored)."""
        device_port = poll.port - self.ports.start
        if isinstance(outcome, JournalError):
            poll.error = str(outcome)
            self._resend(device_port, poll)
            return
        poll.durable_seq = outcome
        try:
            self.link.ack(device_port, outcome)
        except LinkFault as exc:
            poll.error = str(exc)
        else:
            self.last_ok[poll.port] = self.clock()

    def reinstate(self, port: int) -> tuple[int, int]:
        """Bring back a port that went silent and answers again: store its backlog, then count it
        over the outage (`PrimaryJournal.reinstate`, which refuses if entries were lost). Returns
        the outage (since, until) in device time; raises LinkFault if the port still does not
        answer."""
        [poll] = self._round([port])
        if poll.error:
            raise LinkFault(f"port {port} does not answer yet: {poll.error}")
        return self.journal.reinstate(port)

    def _resend(self, device_port: int, result: PortPoll) -> None:
        try:
            self.link.resend(device_port)
        except LinkFault as exc:
            result.error += f"; resend failed: {exc}"
