"""The JetStream store's own promises: a resend is stored once, a second writer cannot
duplicate a port's entries, and a node killed mid-ingest loses no acknowledged entry."""

import threading
import time

import nats.errors
import numpy as np
import pytest
from click.testing import CliRunner
from test_journal_lifecycle import FakePorts

from firmware.abi.entry import Kind, Mode, Status, pack
from host.cli import cli
from host.journal import jetstream
from host.journal.base import take_base_copy
from host.journal.collector import Collector
from host.journal.jetstream import JetStreamJournal, parse_url
from host.journal.primary import JournalError
from host.journal.store import LocalJournal
from host.storage import FileStorage
from host.views import open_view
from sim.workload import make_streams

BLOCK = 16
WINDOW = 1000


@pytest.fixture
def volume(nats_cluster, request):
    """A fresh volume's URL on the session's cluster, deleted afterwards."""
    url = nats_cluster.journal_url(request.node.name.replace("[", "-").replace("]", "")[:40])
    yield url
    JetStreamJournal.delete(url)


def entries(port: int, first: int, count: int, *, dt: int = 10) -> bytes:
    """`count` consecutive write entries of `port` from sequence `first`, as the port sends them."""
    return b"".join(pack(seq=s, port=port, mode=Mode.REDO, status=Status.OK, kind=Kind.WRITE,
                         timestamp=dt * s + port, lba=(s * 7 + port) % 64,
                         data=bytes([s % 251, port]) * (BLOCK // 2)) for s in range(first, first + count))


def stored(url: str) -> np.ndarray:
    """(port, seq) of every entry the volume's stream holds, read by a journal opened afresh."""
    with JetStreamJournal.open(url) as j:
        return np.array(sorted(zip(j.index["port"].tolist(), j.index["seq"].tolist(), strict=True)))


def assert_once_each(url: str, last: dict[int, int]) -> None:
    """Every port's entries 0..last are stored exactly once, nothing else."""
    want = np.array([(p, s) for p in sorted(last) for s in range(last[p] + 1)])
    have = stored(url)
    assert len(have) == len(want) and (have == want).all()


def test_url_names_servers_and_volume():
    assert parse_url("nats://a:1,b:2/vol_1") == (["nats://a:1", "nats://b:2"], "vol_1")
    for bad in ("nats://a:1/", "nats://a:1/x.y", "http://a:1/v", "nats:///v"):
        with pytest.raises(JournalError, match="not a journal URL"):
            parse_url(bad)


def test_unreachable_cluster_is_named(monkeypatch):
    monkeypatch.setattr(jetstream, "CONNECT_DEADLINE_S", 1.0)
    with pytest.raises(JournalError, match="cannot reach the NATS servers of nats://127.0.0.1:1/v"):
        JetStreamJournal.open("nats://127.0.0.1:1/v")


def test_create_twice_and_open_nothing(volume, tmp_path):
    JetStreamJournal.create(volume, block_bytes=BLOCK, ports=1, mode=Mode.REDO, window_ns=WINDOW).close()
    with pytest.raises(JournalError, match="already holds a journal"):
        JetStreamJournal.create(volume, block_bytes=BLOCK, ports=1, mode=Mode.REDO, window_ns=WINDOW)
    with pytest.raises(JournalError, match="holds no journal"):
        JetStreamJournal.open(volume.rsplit("/", 1)[0] + "/nothing_here")


def test_lost_acknowledgement_is_retried_and_stored_once(volume, monkeypatch):
    """JetStream stores a batch but its acknowledgement is lost: the retry carries the same
    message id, JetStream answers 'duplicate' with the first copy's sequence."""
    j = JetStreamJournal.create(volume, block_bytes=BLOCK, ports=1, mode=Mode.REDO, window_ns=WINDOW)
    real, lost = j._js.publish, []

    async def publish_then_lose_ack(*args, **kwargs):
        ack = await real(*args, **kwargs)
        if not lost:
            lost.append(ack.seq)
            raise nats.errors.TimeoutError
        return ack

    monkeypatch.setattr(j._js, "publish", publish_then_lose_ack)
    assert j.append(0, entries(0, 0, 8), 80) == 7
    assert lost, "the acknowledgement was never lost: the retry path did not run"
    assert j.append(0, entries(0, 8, 4), 120) == 11
    j.close()
    assert_once_each(volume, {0: 11})


def test_resend_after_collector_crash_is_stored_once(volume):
    """A collector stored entries 0-9 and crashed before acknowledging them; the port resends
    from 0 with more entries, to a new collector: only 10-14 are new."""
    first = JetStreamJournal.create(volume, block_bytes=BLOCK, ports=2, mode=Mode.REDO, window_ns=WINDOW)
    assert first.append(0, entries(0, 0, 10), 100) == 9
    first.close()                                          # the crash: no ack reached the port
    again = JetStreamJournal.open(volume)
    assert again.append(0, entries(0, 0, 15), 150) == 14
    assert again.append(1, entries(1, 0, 3), 150) == 2
    again.close()
    assert_once_each(volume, {0: 14, 1: 2})


def test_second_writer_of_a_port_cannot_duplicate(volume):
    """Two collectors hold the same port (a zombie one that has not read the stream since): the
    stale one's publish is refused by JetStream, it reads what is stored and sends only the rest."""
    a = JetStreamJournal.create(volume, block_bytes=BLOCK, ports=1, mode=Mode.REDO, window_ns=WINDOW)
    b = JetStreamJournal.open(volume)
    assert a.append(0, entries(0, 0, 5), 50) == 4
    assert b.append(0, entries(0, 0, 9), 90) == 8          # b had seen nothing: 0-4 are dropped
    with pytest.raises(JournalError, match="differs from the stored one"):
        a.append(0, entries(0, 0, 9, dt=11), 99)          # and a different entry 5 is refused
    a.close()
    b.close()
    assert_once_each(volume, {0: 8})


def test_node_killed_mid_ingest(volume, nats_cluster, tmp_path):
    """Two collectors ingest while the stream's leader is killed and later restarted: every
    entry an append acknowledged is stored once, and the volume restored from the cluster
    equals the one restored from a local store fed the same batches."""
    ports, batches, size = 4, 30, 20
    JetStreamJournal.create(volume, block_bytes=BLOCK, ports=ports, mode=Mode.REDO, window_ns=WINDOW).close()
    acked = {p: -1 for p in range(ports)}
    errors = []

    def collect(my_ports):
        with JetStreamJournal.open(volume) as j:
            for b in range(batches):
                for p in my_ports:
                    try:
                        acked[p] = j.append(p, entries(p, b * size, size), (b + 1) * size * 10)
                    except JournalError as exc:        # the collector would ask the port to resend
                        errors.append(exc)
                if b == batches // 3:            # the middle third goes in with the leader down
                    reached.set()
                    assert killed.wait(60)
                if b == 2 * batches // 3:        # the last third once it is back
                    assert restarted.wait(60)

    reached, killed, restarted = threading.Event(), threading.Event(), threading.Event()
    watch = JetStreamJournal.open(volume)
    leader = watch.cluster_info().leader
    workers = [threading.Thread(target=collect, args=(mine,)) for mine in ([0, 1], [2, 3])]
    for w in workers:
        w.start()
    try:
        assert reached.wait(120)
        node = next(n for n in nats_cluster.nodes if n.name == leader)
        node.kill()
        killed.set()
        deadline = time.monotonic() + 30
        while watch.cluster_info().leader in (None, leader):    # another node takes over
            assert time.monotonic() < deadline, "no new stream leader"
            time.sleep(0.2)
        node.start()
        nats_cluster.wait_ready()
    finally:
        killed.set()
        restarted.set()
        for w in workers:
            w.join(180)
        watch.close()
    assert not errors, errors
    assert all(acked[p] == batches * size - 1 for p in range(ports)), acked
    assert_once_each(volume, acked)

    local = LocalJournal.create(tmp_path / "local", block_bytes=BLOCK, ports=ports, mode=Mode.REDO,
                                window_ns=WINDOW)
    for b in range(batches):
        for p in range(ports):
            local.append(p, entries(p, b * size, size), (b + 1) * size * 10)
    base = tmp_path / "zero.img"
    base.write_bytes(bytes(64 * BLOCK))
    with JetStreamJournal.open(volume, cache=tmp_path / "cache") as j, FileStorage(base, BLOCK) as zero:
        for journal in (local, j):
            take_base_copy(journal, zero, 0)
            journal.merge()
        at = local.horizon() * 2 // 3
        assert j.horizon() == local.horizon()
        want = open_view(local, at).read(0, 64 * BLOCK)
        with JetStreamJournal.open(volume) as elsewhere:     # another host: base copy from the cluster
            assert open_view(elsewhere, at).read(0, 64 * BLOCK) == want
    local.close()


def test_cli_takes_a_journal_url(volume, tmp_path):
    """-j nats://…/VOLUME: create, bookmark, info and restore on the cluster; the commands that
    check the local store's files say they do not apply."""
    runner = CliRunner()
    made = runner.invoke(cli, ["journal", "create", "-j", volume, "--ports", "2", "--block-bytes", str(BLOCK),
                               "--window", "1000ns"])
    assert made.exit_code == 0, made.output
    image = tmp_path / "zero.img"
    image.write_bytes(bytes(64 * BLOCK))
    based = runner.invoke(cli, ["journal", "base", "-j", volume, "--storage", str(image), "--at", "0"])
    assert based.exit_code == 0, based.output
    with JetStreamJournal.open(volume) as j:
        for p in range(2):
            j.append(p, entries(p, 0, 50), 600)
        j.merge()
    marked = runner.invoke(cli, ["bookmark", "add", "-j", volume, "mid", "--at", "300"])
    assert marked.exit_code == 0, marked.output
    info = runner.invoke(cli, ["journal", "info", "-j", volume])
    assert info.exit_code == 0 and "100 entries in stream PJ_" in info.output, info.output
    out = tmp_path / "r.img"
    done = runner.invoke(cli, ["restore", "-j", volume, "--at", "mid", "-o", str(out)])
    assert done.exit_code == 0, done.output
    local = LocalJournal.create(tmp_path / "local", block_bytes=BLOCK, ports=2, mode=Mode.REDO,
                                window_ns=WINDOW)
    with FileStorage(image, BLOCK) as zero:
        take_base_copy(local, zero, 0)
    for p in range(2):
        local.append(p, entries(p, 0, 50), 600)
    assert out.read_bytes() == open_view(local, 300).read(0, 64 * BLOCK)
    local.close()
    refused = runner.invoke(cli, ["journal", "verify", "-j", volume])
    assert refused.exit_code == 1 and "works on a journal folder" in refused.output


def test_two_devices_one_volume(volume, tmp_path):
    """A volume protected by two devices (2 and 4 ports), each collected by its own collector
    into one replicated journal: device B's ports are the volume's 2-5. Every entry is stored
    once under the volume's port, and merge and a view equal a local store's given the same
    batches."""
    a = make_streams(ports=2, entries=300, block_bytes=BLOCK, blocks=64, span_ns=20 * WINDOW, seed=1)
    b = make_streams(ports=4, entries=600, block_bytes=BLOCK, blocks=64, span_ns=20 * WINDOW, seed=2)
    JetStreamJournal.create(volume, block_bytes=BLOCK, ports=6, mode=Mode.REDO, window_ns=WINDOW).close()
    links = [FakePorts(a, batch=16), FakePorts(b, batch=16)]

    def collect(link, first, count):
        with JetStreamJournal.open(volume) as j:
            collector = Collector(j, link, deadline_s=60, first_port=first, ports=count)
            while any(link.acked[p] < len(link.streams[p].entries) - 1 for p in range(count)):
                assert not any(poll.error for poll in collector.poll())

    workers = [threading.Thread(target=collect, args=args) for args in ((links[0], 0, 2), (links[1], 2, 4))]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    local = LocalJournal.create(tmp_path / "local", block_bytes=BLOCK, ports=6, mode=Mode.REDO,
                                window_ns=WINDOW)
    for first, streams in ((0, a), (2, b)):
        for s in streams:
            local.append(first + s.port, s.entries.tobytes(), int(s.entries["header"]["timestamp"][-1]) + 1,
                         device_port=s.port)
    with pytest.raises(JournalError, match="entries of device port 1, expected 0"):
        local.append(2, b[1].entries.tobytes(), 0, device_port=0)
    assert_once_each(volume, {p: len(s.entries) - 1 for p, s in enumerate(a + b)})
    image = tmp_path / "zero.img"
    image.write_bytes(bytes(64 * BLOCK))
    with JetStreamJournal.open(volume) as j, FileStorage(image, BLOCK) as zero:
        for journal in (local, j):
            take_base_copy(journal, zero, 0)
            journal.merge()
        assert j.horizon() == local.horizon() and j.merged_through == local.merged_through > 0

        def located(journal):
            where = {(int(e["seg"]), int(e["offset"])): (int(e["port"]), int(e["seq"]))
                     for e in journal.index}
            return [(int(r["window_end"]), int(r["lba"]), int(r["port_mask"]),
                     where[(int(r["seg"]), int(r["offset"]))]) for r in journal.merged]

        assert located(j) == located(local)
        at = local.horizon() - WINDOW // 2
        assert open_view(j, at).read(0, 64 * BLOCK) == open_view(local, at).read(0, 64 * BLOCK)
    local.close()
