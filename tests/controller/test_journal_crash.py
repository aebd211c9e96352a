"""Crash test: SIGKILL the ingesting process mid-ingest; nothing reported durable is lost."""

import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from crash_writer import entry

from host.journal.store import LocalJournal
from host.journal.verify import verify

WRITER = Path(__file__).with_name("crash_writer.py")
KILLS = 50


def test_sigkill_never_loses_durable_entries(tmp_path):
    folder = tmp_path / "j"
    rng = random.Random(7)
    promised: dict[int, int] = {}
    for _ in range(KILLS):
        proc = subprocess.Popen([sys.executable, str(WRITER), str(folder)], stdout=subprocess.PIPE, text=True)
        for _ in range(rng.randint(1, 12)):          # kill after a random number of durable batches
            line = proc.stdout.readline()
            assert line.startswith("durable"), f"writer stopped early: {line!r}"
            _, port, seq = line.split()
            promised[int(port)] = max(promised.get(int(port), -1), int(seq))
        proc.send_signal(signal.SIGKILL)
        for line in proc.stdout:      # lines written before the kill landed are promises too
            _, port, seq = line.split()
            promised[int(port)] = max(promised.get(int(port), -1), int(seq))
        assert proc.wait() == -signal.SIGKILL, "the writer was not killed mid-ingest"
        with LocalJournal.open(folder, segment_bytes=1 << 20) as journal:
            for port, seq in promised.items():
                assert journal.last_seq[port] >= seq, f"port {port}: durable seq {seq} lost"
            for port in range(3):
                mine = journal.index[journal.index["port"] == port]
                assert np.array_equal(mine["seq"], np.arange(len(mine))), "hole in a port's sequence"
        report = verify(folder)
        assert report.ok, "\n".join(map(str, report.problems))
    with LocalJournal.open(folder, segment_bytes=1 << 20) as journal:   # and the bytes are the ones sent
        sample = np.arange(0, len(journal.index), 97)
        for row, block in zip(journal.index[sample], journal.read_data(sample), strict=True):
            assert block.tobytes() == entry(int(row["port"]), int(row["seq"]))[32:32 + 512]
    assert min(promised.values()) > KILLS, "ingest did not resume across kills"
