"""Primary-journal benchmark: ingest against raw disk, vectorised merge against a plain loop.

Prints, as its last line:
    merge: entries=N window_ms=W merge_entries_per_s=M naive_ratio=R ingest_mb_per_s=I disk_ratio=D

`disk_ratio` is the journal's ingest (checks, framing, index, fsync per batch) over a raw
append-and-fsync of the same batches to a file beside it; `naive_ratio` is the numpy merge
over `merge_reference`, the per-entry Python loop, on the same entries in the same run.
"""

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from firmware.abi.entry import Mode
from host.journal.merge import merge, merge_reference
from host.journal.store import NEVER, LocalJournal
from sim.workload import make_streams, round_robin

ROOT = Path(__file__).resolve().parents[1]


WINDOW_NS = 100 * 10**6


def ingest_against_raw(folder: Path, streams, batch: int) -> tuple[LocalJournal, float, float]:
    """Append every batch to the journal and, alternately, to a plain file with fsync.

    Alternating batch by batch puts both under the same disk conditions (the disk's speed here
    drifts from run to run). Returns the journal and both rates in MB/s."""
    journal = LocalJournal.create(folder / "journal", block_bytes=streams[0].entries.dtype["data"].shape[0],
                                  ports=len(streams), mode=Mode.REDO, window_ns=WINDOW_NS)
    fd = os.open(folder / "raw.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    total = raw_s = journal_s = 0.0
    for port, raw, newest in round_robin(streams, batch):
        start = time.perf_counter()
        view = memoryview(raw)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        middle = time.perf_counter()
        journal.append(port, raw, newest + 1)
        journal_s += time.perf_counter() - middle
        raw_s += middle - start
        total += len(raw)
    os.close(fd)
    return journal, total / journal_s / 1e6, total / raw_s / 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--block-bytes", type=int, default=512)
    parser.add_argument("--ports", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1024, help="entries per flush batch (one fsync each)")
    args = parser.parse_args()

    print(f"generating {args.entries} entries of {args.block_bytes} B on {args.ports} ports…", flush=True)
    streams = make_streams(ports=args.ports, entries=args.entries, block_bytes=args.block_bytes,
                           blocks=131072, span_ns=60 * 10**9, failure_rate=0.01, seed=1)
    (ROOT / "build").mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-merge-", dir=ROOT / "build"))
    try:
        journal, ingest_mb, raw_mb = ingest_against_raw(folder, streams, args.batch)
        print(f"journal ingest {ingest_mb:.0f} MB/s, raw append+fsync {raw_mb:.0f} MB/s", flush=True)

        index = journal.index
        bounds = dict(mode=Mode.REDO, window_ns=WINDOW_NS, start_ns=0, end_ns=60 * 10**9)
        validity = dict(valid_from=np.zeros(args.ports, np.uint64),
                        invalid_since=np.full(args.ports, NEVER, np.uint64))
        fast = []
        for _ in range(5):
            start = time.perf_counter()
            table = merge(index, **bounds, **validity)
            fast.append(time.perf_counter() - start)
        headers = [dict(zip(("timestamp", "port", "seq", "lba", "status", "kind"), row, strict=True))
                   for row in zip(*(index[k].tolist() for k in ("timestamp", "port", "seq", "lba", "status",
                                                                 "kind")), strict=True)]
        start = time.perf_counter()
        reference = merge_reference(headers, **bounds, valid_from=[0] * args.ports,
                                    invalid_since=[NEVER] * args.ports)
        naive = time.perf_counter() - start
        got = list(zip(table["window_end"].tolist(), table["lba"].tolist(), table["seg"].tolist(),
                       table["offset"].tolist(), strict=True))
        want = [(w, lba, int(index["seg"][eid]), int(index["offset"][eid])) for w, lba, _, eid in reference]
        if got != want:
            raise SystemExit("merge and reference disagree: the benchmark's figures would be meaningless")
        journal.close()
    finally:
        shutil.rmtree(folder)

    best = min(fast)
    print(f"merge: {len(index)} entries -> {len(table)} merged in {best * 1e3:.0f} ms "
          f"(naive loop {naive:.2f} s)")
    print(f"merge: entries={len(index)} window_ms={WINDOW_NS // 10**6} "
          f"merge_entries_per_s={len(index) / best:.0f} naive_ratio={naive / best:.1f} "
          f"ingest_mb_per_s={ingest_mb:.0f} disk_ratio={ingest_mb / raw_mb:.2f}")


if __name__ == "__main__":
    main()
