"""Ingests a fixed workload into a journal until killed, reporting each durable batch.

Run by test_journal_crash.py: `python crash_writer.py FOLDER SEED`. Opens (or creates) the
journal, resumes each port after its last durable sequence, and prints `durable PORT SEQ`
after every append returns.
"""

import sys
from pathlib import Path

from firmware.abi.entry import Mode
from host.journal.store import LocalJournal
from sim.workload import make_streams

BLOCK = 512


def main(folder: Path, seed: int) -> None:
    streams = make_streams(ports=3, entries=6000, block_bytes=BLOCK, blocks=64, span_ns=10**9, seed=seed)
    if (folder / "journal.json").exists():
        journal = LocalJournal.open(folder, segment_bytes=1 << 20)
    else:
        journal = LocalJournal.create(folder, block_bytes=BLOCK, ports=3, mode=Mode.REDO, window_ns=10**7,
                                      segment_bytes=1 << 20)
    cursors = [int(journal.last_seq[s.port]) + 1 for s in streams]
    while any(c < len(s.entries) for c, s in zip(cursors, streams, strict=True)):
        for s in streams:
            start = cursors[s.port]
            chunk = s.entries[start:start + 37]
            if not len(chunk):
                continue
            seq = journal.append(s.port, chunk.tobytes(), int(chunk["header"]["timestamp"][-1]))
            cursors[s.port] = seq + 1
            print(f"durable {s.port} {seq}", flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
