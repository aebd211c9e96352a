"""Group commit: a round of batches is stored with one durable sync, each port acknowledged only
once its batch is durable, and one port's bad batch does not hold the others back."""

import asyncio

import pytest
from test_journal_lifecycle import FakePorts

from firmware.abi.entry import Mode
from host.journal import store
from host.journal.collector import Collector
from host.journal.jetstream import JetStreamJournal
from host.journal.primary import Batch, JournalError, SequenceGap
from host.journal.store import LocalJournal
from sim.workload import make_streams

BLOCK = 64
BLOCKS = 32
WINDOW = 10**6


def streams_of(ports: int, entries: int = 120):
    return make_streams(ports=ports, entries=entries, block_bytes=BLOCK, blocks=BLOCKS, span_ns=20 * WINDOW)


def create(new_journal, folder, ports: int):
    return new_journal(folder, block_bytes=BLOCK, ports=ports, mode=Mode.REDO, window_ns=WINDOW)


def stored_seqs(journal, port: int) -> list[int]:
    index = journal.index
    return index["seq"][index["port"] == port].tolist()


def test_one_bad_batch_leaves_the_rest_of_the_round_stored(new_journal, tmp_path):
    """Port 1's batch skips entries, port 2's is damaged: ports 0 and 3 are stored all the same."""
    streams = streams_of(4)
    raw = [s.entries[:5].tobytes() for s in streams]
    damaged = bytearray(raw[2])
    damaged[40] ^= 1
    with create(new_journal, tmp_path / "j", 4) as j:
        outcomes = j.append_round([Batch(0, raw[0], 100), Batch(1, streams[1].entries[2:5].tobytes(), 100),
                                   Batch(2, bytes(damaged), 100), Batch(3, raw[3], 100)])
        assert outcomes[0] == 4 and outcomes[3] == 4
        assert isinstance(outcomes[1], SequenceGap)
        assert isinstance(outcomes[2], JournalError) and "CRC" in str(outcomes[2])
        assert [stored_seqs(j, p) for p in range(4)] == [[0, 1, 2, 3, 4], [], [], [0, 1, 2, 3, 4]]
        assert list(j.flushed_through) == [100, 0, 0, 100]
        with pytest.raises(JournalError, match="one batch per port"):
            j.append_round([Batch(0, b"", 200), Batch(0, b"", 300)])
        outcomes = j.append_round([Batch(p, s.entries[:8].tobytes(), 200) for p, s in enumerate(streams)])
        assert outcomes == [7, 7, 7, 7]                  # resent entries dropped, the rest stored
        assert all(stored_seqs(j, p) == list(range(8)) for p in range(4))


def test_collector_acks_the_other_ports_in_the_round_of_a_gap(new_journal, tmp_path):
    streams = streams_of(3)
    link = FakePorts(streams, batch=10)
    with create(new_journal, tmp_path / "j", 3) as j:
        collector = Collector(j, link, deadline_s=60)
        collector.poll()
        link.skip_once.add(0)
        polls = collector.poll()
        assert "lost" in polls[0].error and link.resends == 1
        assert link.acked == [9, 19, 19]                 # ports 1 and 2 acknowledged in that round
        assert [p.entries for p in polls] == [0, 10, 10]
        collector.poll()
        assert link.acked == [19, 29, 29]


class LoggedPorts(FakePorts):
    """FakePorts that log each acknowledgement in `events`, beside the store's syncs."""

    def __init__(self, streams, batch, events):
        super().__init__(streams, batch)
        self.events = events

    def ack(self, port, seq):
        self.events.append(f"ack {port}")
        super().ack(port, seq)


def test_local_round_syncs_once_before_any_ack(tmp_path, monkeypatch):
    events = []
    real_fsync = store.os.fsync
    monkeypatch.setattr(store.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd)))
    link = LoggedPorts(streams_of(3), batch=10, events=events)
    with create(LocalJournal.create, tmp_path / "j", 3) as j:
        collector = Collector(j, link, deadline_s=60)
        collector.poll()                                 # the first also syncs the new segment's folder
        for _ in range(2):
            events.clear()
            collector.poll()
            assert events == ["fsync", "ack 0", "ack 1", "ack 2"]


def test_a_failed_sync_acknowledges_nobody(tmp_path, monkeypatch):
    """The round's fsync fails: the collector stops with the error before any acknowledgement and
    the journal takes nothing in; a collector started again stores every entry exactly once."""
    streams = streams_of(3)
    link = FakePorts(streams, batch=10)
    folder = tmp_path / "j"
    with create(LocalJournal.create, folder, 3) as j:
        collector = Collector(j, link, deadline_s=60)
        collector.poll()

        def broken(fd):
            raise OSError(5, "Input/output error")

        with monkeypatch.context() as m:
            m.setattr(store.os, "fsync", broken)
            with pytest.raises(OSError, match="Input/output"):
                collector.poll()
        assert link.acked == [9, 9, 9]
        assert len(j.index) == 30 and list(j.last_seq) == [9, 9, 9]
    with LocalJournal.open(folder) as j:                 # the restarted collector
        collector = Collector(j, link, deadline_s=60)
        for _ in range(15):
            collector.poll()
        assert all(stored_seqs(j, p) == list(range(len(s.entries))) for p, s in enumerate(streams))


def test_jetstream_round_publishes_at_once_and_stores_lost_acks_once(nats_cluster, monkeypatch):
    """Every port's publish of a round is in flight together; the first acknowledgement of each
    is lost, and the retries (same message ids) are stored once. Ports are acknowledged only
    after every publish of the round has returned."""
    url = nats_cluster.journal_url("group_commit")
    streams = streams_of(4, entries=400)
    events = []
    link = LoggedPorts(streams, batch=10, events=events)
    try:
        with JetStreamJournal.create(url, block_bytes=BLOCK, ports=4, mode=Mode.REDO, window_ns=WINDOW) as j:
            real, lost, flight = j._js.publish, set(), {"now": 0, "most": 0}

            async def publish(subject, *args, **kwargs):
                flight["now"] += 1
                flight["most"] = max(flight["most"], flight["now"])
                try:
                    await asyncio.sleep(0.01)               # let the others start
                    ack = await real(subject, *args, **kwargs)
                finally:
                    flight["now"] -= 1
                if subject not in lost:
                    lost.add(subject)
                    raise TimeoutError
                events.append("stored")
                return ack

            monkeypatch.setattr(j._js, "publish", publish)
            collector = Collector(j, link, deadline_s=60)
            for _ in range(3):
                events.clear()
                collector.poll()
                assert events == ["stored"] * 4 + [f"ack {p}" for p in range(4)]
            assert flight["most"] == 4 and len(lost) == 4
            assert link.acked == [29, 29, 29, 29]
        with JetStreamJournal.open(url) as fresh:
            assert all(stored_seqs(fresh, p) == list(range(30)) for p in range(4))
    finally:
        JetStreamJournal.delete(url)


def test_jetstream_round_that_fails_acknowledges_nobody(nats_cluster, monkeypatch):
    """One publish of the round fails in a way the journal does not know: the poll raises, no port
    is acknowledged, and a collector opened afresh stores every entry once."""
    url = nats_cluster.journal_url("group_commit_crash")
    streams = streams_of(3, entries=300)
    link = FakePorts(streams, batch=10)
    try:
        with JetStreamJournal.create(url, block_bytes=BLOCK, ports=3, mode=Mode.REDO, window_ns=WINDOW) as j:
            collector = Collector(j, link, deadline_s=60)
            collector.poll()
            real = j._js.publish

            async def publish(subject, *args, **kwargs):
                if subject.endswith(".port.1"):
                    raise RuntimeError("the client broke")
                return await real(subject, *args, **kwargs)

            monkeypatch.setattr(j._js, "publish", publish)
            with pytest.raises(RuntimeError, match="client broke"):
                collector.poll()
            assert link.acked == [9, 9, 9]
        with JetStreamJournal.open(url) as j:
            collector = Collector(j, link, deadline_s=60)
            for _ in range(12):
                collector.poll()
            assert all(stored_seqs(j, p) == list(range(len(s.entries))) for p, s in enumerate(streams))
    finally:
        JetStreamJournal.delete(url)
