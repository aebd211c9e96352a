"""Replicated primary journal: ingest into a 3-node JetStream cluster against the local store,
then a restore on a host that has nothing but the cluster's URL.

Prints, as its last line:
    cluster: nodes=3 replicas=3 collectors=C entries=N ingest_entries_per_s=I local_ratio=L restore_s=S

The same flush batches go first into the local store and then into the cluster, both the way
`Collector.poll` stores them: in rounds, the next batch of every port a collector owns stored
together and acknowledged together (`PrimaryJournal.append_round`). The local store has one
writer, so one collector, one fsync per round; in the cluster, C collector processes each own
a share of the ports, publish every batch of a round at once and wait for all of JetStream's
acknowledgements (a majority of the replicas holds each) before the next round, as a real
collector must before it acknowledges to its ports. `ingest_entries_per_s` is all entries over
the time from the first collector's start to the last one's end; `local_ratio` is that over the
local store's rate. `restore_s` is a fresh host's whole restore: open the volume (read the
stream), fetch the base copy, merge, write the image at mid-history; the image is checked
against the local store's restore of the same instant.

How it scales. A round keeps one publish per owned port in flight, so the 8 ports' batches are
in flight together whether 1, 2 or 3 collectors own them; more collectors add client CPU, not
concurrency. A collector cannot have two rounds in flight: a port's next batch is fenced by the
stream sequence of its previous one (Nats-Expected-Last-Subject-Sequence), known only from its
acknowledgement, and the port resends everything unacknowledged anyway. What bounds ingest is
then the servers' work per byte: every batch is written by the stream leader and both
followers (each to its Raft log and its stream), and on this 2-core machine (shared with other
jobs) the three servers use about 1.4 CPU-seconds per 100,000 entries of 512 B, so 1, 2 and 3
collectors all measure 65,000-105,000 entries/s; larger messages cost less per entry (batches
of 1,024 entries ran ~40% faster than 256). More nodes do not speed up one volume (only its 3 replicas take
part) but carry more volumes, each stream led by a different node; with nodes on machines of
their own, one volume is bound by its leader's CPU and network.
"""

import argparse
import multiprocessing
import shutil
import tempfile
import time
from pathlib import Path

from firmware.abi.entry import Mode
from host.journal.base import take_base_copy
from host.journal.jetstream import REPLICAS, JetStreamJournal
from host.journal.primary import Batch, PrimaryJournal
from host.journal.store import LocalJournal
from host.restore import restore_to_file
from host.storage import FileStorage
from host.views import open_view
from sim.nats_cluster import make_cluster
from sim.workload import make_streams, rounds

ROOT = Path(__file__).resolve().parents[1]
WINDOW_NS = 100 * 10**6
SPAN_NS = 60 * 10**9


def store_round(journal: PrimaryJournal, batches) -> None:
    """One collector round: every batch stored together (group commit), as Collector.poll."""
    outcomes = journal.append_round([Batch(port, raw, newest + 1) for port, raw, newest in batches])
    refused = [o for o in outcomes if isinstance(o, Exception)]
    if refused:
        raise SystemExit(f"a batch was refused: {refused[0]}")


def ingest_local(folder: Path, streams, batch: int, base: Path) -> tuple[LocalJournal, float]:
    """Every batch into a local store, round by round; its rate in entries per second."""
    journal = LocalJournal.create(folder, block_bytes=streams[0].entries.dtype["data"].shape[0],
                                  ports=len(streams), mode=Mode.REDO, window_ns=WINDOW_NS)
    with FileStorage(base, journal.state.block_bytes) as volume:
        take_base_copy(journal, volume, 0)
    start = time.perf_counter()
    for batches in rounds(streams, batch):
        store_round(journal, batches)
    seconds = time.perf_counter() - start
    return journal, len(journal.index) / seconds


def collector(url: str, streams, batch: int, ports: list[int], ready, go, results) -> None:
    """One collector process: its ports' batches into the cluster round by round, every batch
    of a round in flight together and acknowledged before the next round."""
    entry_bytes = streams[0].entries.itemsize
    with JetStreamJournal.open(url) as journal:
        ready.wait()
        go.wait()
        start = time.perf_counter()
        count = 0
        for batches in rounds(streams, batch, set(ports)):
            store_round(journal, batches)
            count += sum(len(raw) for _, raw, _ in batches) // entry_bytes
        results.put((start, time.perf_counter(), count))


def ingest_cluster(url: str, streams, batch: int, collectors: int) -> float:
    """The batches into the cluster by `collectors` processes, ports dealt out among them; entries/s."""
    ctx = multiprocessing.get_context("fork")
    ready, go, results = ctx.Barrier(collectors + 1), ctx.Event(), ctx.Queue()
    shares = [list(range(len(streams)))[c::collectors] for c in range(collectors)]
    procs = [ctx.Process(target=collector, args=(url, streams, batch, share, ready, go, results))
             for share in shares]
    for p in procs:
        p.start()
    ready.wait()
    go.set()
    done = [results.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
    total = sum(count for _, _, count in done)
    return total / (max(end for _, end, _ in done) - min(start for start, _, _ in done))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--block-bytes", type=int, default=512)
    parser.add_argument("--ports", type=int, default=8)
    parser.add_argument("--blocks", type=int, default=65536, help="volume size in blocks (32 MiB)")
    parser.add_argument("--batch", type=int, default=256, help="entries per flush batch")
    parser.add_argument("--collectors", type=int, default=2)
    args = parser.parse_args()

    print(f"generating {args.entries} entries of {args.block_bytes} B on {args.ports} ports…", flush=True)
    streams = make_streams(ports=args.ports, entries=args.entries, block_bytes=args.block_bytes,
                           blocks=args.blocks, span_ns=SPAN_NS, seed=3)
    (ROOT / "build").mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-cluster-", dir=ROOT / "build"))
    cluster = make_cluster(folder / "cluster")
    try:
        base = folder / "volume.img"
        base.write_bytes(bytes(args.blocks * args.block_bytes))
        local, local_rate = ingest_local(folder / "local", streams, args.batch, base)
        print(f"local store: {local_rate:.0f} entries/s (one collector, one fsync per round)", flush=True)

        cluster.start()
        url = cluster.journal_url("bench")
        geometry = dict(block_bytes=args.block_bytes, ports=args.ports, mode=Mode.REDO, window_ns=WINDOW_NS)
        with JetStreamJournal.create(url, **geometry) as journal, FileStorage(base, args.block_bytes) as vol:
            take_base_copy(journal, vol, 0)
        rate = ingest_cluster(url, streams, args.batch, args.collectors)
        print(f"cluster: {rate:.0f} entries/s with {args.collectors} collector processes", flush=True)

        at = SPAN_NS // 2
        start = time.perf_counter()
        with JetStreamJournal.open(url) as fresh:
            opened = time.perf_counter()
            fresh.merge()
            restore_to_file(open_view(fresh, at), folder / "cluster.img")
            entries = len(fresh.index)
        restore_s = time.perf_counter() - start
        print(f"restore from the cluster: {restore_s:.2f} s, {opened - start:.2f} s of it reading the stream")
        local.merge()
        restore_to_file(open_view(local, at), folder / "local.img")
        local.close()
        if (folder / "cluster.img").read_bytes() != (folder / "local.img").read_bytes():
            raise SystemExit("the cluster's restore differs from the local store's: no figures")
        print("restored image equals the local store's: yes")
    finally:
        cluster.stop()
        shutil.rmtree(folder)

    print(f"cluster: nodes={len(cluster.nodes)} replicas={REPLICAS} collectors={args.collectors} "
          f"entries={entries} ingest_entries_per_s={rate:.0f} local_ratio={rate / local_rate:.2f} "
          f"restore_s={restore_s:.2f}")


if __name__ == "__main__":
    main()
