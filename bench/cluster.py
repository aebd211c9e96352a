"""Replicated primary journal: ingest into a 3-node JetStream cluster against the local store,
then a restore on a host that has nothing but the cluster's URL.

Prints, as its last line:
    cluster: nodes=3 replicas=3 collectors=C entries=N ingest_entries_per_s=I local_ratio=L restore_s=S

The same flush batches go first into the local store (one collector: the store has one writer,
fsync per batch) and then into the cluster by C collector processes, each owning a share of
the ports, appending batch by batch and waiting for JetStream's acknowledgement as a real
collector must before it acknowledges to the port. `ingest_entries_per_s` is all entries over
the time from the first collector's start to the last one's end; `local_ratio` is that over the
local store's rate. `restore_s` is a fresh host's whole restore: open the volume (read the
stream), fetch the base copy, merge, write the image at mid-history; the image is checked
against the local store's restore of the same instant.
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
from host.journal.store import LocalJournal
from host.restore import restore_to_file
from host.storage import FileStorage
from host.views import open_view
from sim.nats_cluster import make_cluster
from sim.workload import make_streams, round_robin

ROOT = Path(__file__).resolve().parents[1]
WINDOW_NS = 100 * 10**6
SPAN_NS = 60 * 10**9


def ingest_local(folder: Path, streams, batch: int, base: Path) -> tuple[LocalJournal, float]:
    """Every batch into a local store; its rate in entries per second."""
    journal = LocalJournal.create(folder, block_bytes=streams[0].entries.dtype["data"].shape[0],
                                  ports=len(streams), mode=Mode.REDO, window_ns=WINDOW_NS)
    with FileStorage(base, journal.state.block_bytes) as volume:
        take_base_copy(journal, volume, 0)
    start = time.perf_counter()
    for port, raw, newest in round_robin(streams, batch):
        journal.append(port, raw, newest + 1)
    seconds = time.perf_counter() - start
    return journal, len(journal.index) / seconds


def collector(url: str, streams, batch: int, ports: list[int], ready, go, results) -> None:
    """One collector process: its ports' batches into the cluster, each acknowledged before the next."""
    with JetStreamJournal.open(url) as journal:
        ready.wait()
        go.wait()
        start = time.perf_counter()
        count = 0
        for port, raw, newest in round_robin(streams, batch, set(ports)):
            journal.append(port, raw, newest + 1)
            count += len(raw) // streams[port].entries.itemsize
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
        print(f"local store: {local_rate:.0f} entries/s (one collector, fsync per batch)", flush=True)

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
