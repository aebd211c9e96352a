"""Ingests an endless workload into a journal until killed, reporting each durable batch.

Run by test_journal_crash.py: `python crash_writer.py FOLDER`. Opens (or creates) the journal,
resumes each port after its last durable sequence, and prints `durable PORT SEQ` after every
append returns. Entry contents are a function of (port, seq), so a resumed run writes exactly
what the killed one would have.
"""

import random
import sys
from pathlib import Path

from firmware.abi.entry import Kind, Mode, Status, pack
from host.journal.store import LocalJournal

BLOCK = 512
PORTS = 3
BATCH = 37


def entry(port: int, seq: int) -> bytes:
    data = random.Random(port * 1_000_003 + seq).randbytes(BLOCK)
    return pack(seq=seq, port=port, mode=Mode.REDO, status=Status.OK, kind=Kind.WRITE,
                timestamp=seq * 1000 + port, lba=seq % 97, data=data)


def main(folder: Path) -> None:
    if (folder / "journal.json").exists():
        journal = LocalJournal.open(folder, segment_bytes=1 << 20)
    else:
        journal = LocalJournal.create(folder, block_bytes=BLOCK, ports=PORTS, mode=Mode.REDO, window_ns=10**7,
                                      segment_bytes=1 << 20)
    while True:
        for port in range(PORTS):
            start = int(journal.last_seq[port]) + 1
            batch = b"".join(entry(port, seq) for seq in range(start, start + BATCH))
            seq = journal.append(port, batch, (start + BATCH) * 1000)
            print(f"durable {port} {seq}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
