"""Restore benchmark: a redo restore to the middle of a long history, against a full replay.

Prints, as its last line:
    restore: volume_mb=V entries=N redo_s=A view_open_s=B replay_all_s=C speedup=S gb_per_s=G

`redo_s` is `portjournal restore`'s work (open the view, write base blocks with the journal's
patched in, CRC the image); `view_open_s` is opening the point-in-time view alone;
`replay_all_s` is the straightforward way measured in the same run: copy the base, then
replay every entry before Tx in order with one write each. Neither fsyncs (a restored image
can be made again from the journal; `restore --sync` adds it).
`speedup = replay_all_s / redo_s`; `gb_per_s` is restored image bytes per second of `redo_s`.
Both are timed the same way: dirty pages settled before each run, best of the runs (five
restores, two replays), so `gb_per_s` is page-cache throughput. The results are compared byte
for byte.
"""

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from firmware.abi.entry import HEADER_BYTES, Mode
from host.journal.base import take_base_copy
from host.journal.store import LocalJournal
from host.restore import restore_to_file
from host.storage import FileStorage
from host.views import open_view
from sim.workload import make_streams

ROOT = Path(__file__).resolve().parents[1]
SPAN_NS = 60 * 10**9


def replay_all(journal: LocalJournal, at_ns: int, out: Path) -> None:
    """Base copy, then every OK write before `at_ns` in (time, port, seq) order, one pwrite each."""
    shutil.copyfile(journal.folder / journal.state.base.path, out)
    index = journal.index
    block = journal.state.block_bytes
    fd = os.open(out, os.O_WRONLY)
    maps = {}
    for i in journal.received(until_ns=at_ns).tolist():
        row = index[i]
        if row["status"] != 1 or row["kind"] != 0:
            continue
        seg = int(row["seg"])
        if seg not in maps:
            maps[seg] = journal._map(seg)
        start = int(row["offset"]) + HEADER_BYTES
        os.pwrite(fd, maps[seg][start:start + block], int(row["lba"]) * block)
    os.close(fd)


def settle(previous: Path | None = None) -> None:
    """Start each timed run with no dirty pages pending: this VM throttles a writer to disk speed
    once about 0.5 GB are dirty, which would measure the disk's write-back, not the restore."""
    if previous is not None and previous.exists():
        previous.unlink()
    os.sync()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--volume-mb", type=int, default=256)
    parser.add_argument("--block-bytes", type=int, default=512)
    args = parser.parse_args()
    blocks = args.volume_mb * 2**20 // args.block_bytes

    (ROOT / "build").mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-restore-", dir=ROOT / "build"))
    try:
        print(f"generating {args.entries} entries over a {args.volume_mb} MiB volume…", flush=True)
        streams = make_streams(ports=4, entries=args.entries, block_bytes=args.block_bytes, blocks=blocks,
                               span_ns=SPAN_NS, failure_rate=0.01, seed=4)
        volume = folder / "volume.img"
        volume.write_bytes(np.random.default_rng(5).integers(0, 256, blocks * args.block_bytes, np.uint8))
        journal = LocalJournal.create(folder / "journal", block_bytes=args.block_bytes, ports=4,
                                      mode=Mode.REDO, window_ns=100 * 10**6)
        with FileStorage(volume, args.block_bytes) as storage:
            take_base_copy(journal, storage, 0)
        for s in streams:
            for raw, newest in s.batches(4096):
                journal.append(s.port, raw, newest + 1)
        journal.append(0, b"", SPAN_NS)
        for s in streams:
            journal.append(s.port, b"", SPAN_NS)
        journal.merge()
        at = SPAN_NS // 2 + 12345
        print(f"journal: {len(journal.index)} entries, {len(journal.merged)} merged; restoring to {at} ns",
              flush=True)

        opened = []
        for _ in range(3):
            start = time.perf_counter()
            view = open_view(journal, at)
            opened.append(time.perf_counter() - start)
            view.backing.close()
        redo = []
        for n in range(5):
            settle(folder / f"redo-{n - 1}.img")
            start = time.perf_counter()
            view = open_view(journal, at)
            summary = restore_to_file(view, folder / f"redo-{n}.img")
            redo.append(time.perf_counter() - start)
            view.backing.close()
            print(f"redo restore: {summary}", flush=True)
        replays = []
        for n in range(2):                     # the same treatment: settled, best of the runs
            settle(folder / f"replay-{n - 1}.img")
            start = time.perf_counter()
            replay_all(journal, at, folder / f"replay-{n}.img")
            replays.append(time.perf_counter() - start)
        replay_s = min(replays)
        if (folder / "replay-1.img").read_bytes() != (folder / "redo-4.img").read_bytes():
            raise SystemExit("redo restore and full replay disagree: the figures would be meaningless")
        journal.close()
    finally:
        shutil.rmtree(folder)

    redo_s, volume_bytes = min(redo), blocks * args.block_bytes
    print(f"restore: volume_mb={args.volume_mb} entries={args.entries} redo_s={redo_s:.3f} "
          f"view_open_s={min(opened):.3f} replay_all_s={replay_s:.3f} speedup={replay_s / redo_s:.1f} "
          f"gb_per_s={volume_bytes / redo_s / 1e9:.2f}")


if __name__ == "__main__":
    main()
