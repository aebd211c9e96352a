"""Crash test: SIGKILL the ingesting process at random points; nothing reported durable is lost."""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from host.journal.store import LocalJournal
from host.journal.verify import verify

WRITER = Path(__file__).with_name("crash_writer.py")
KILLS = 50


def test_sigkill_never_loses_durable_entries(tmp_path):
    folder = tmp_path / "j"
    rng = random.Random(7)
    promised = {}
    cuts = 0
    for _ in range(KILLS):
        proc = subprocess.Popen([sys.executable, str(WRITER), str(folder), "11"], stdout=subprocess.PIPE,
                                text=True)
        deadline = time.monotonic() + rng.uniform(0.3, 0.9)   # startup takes ~0.3 s
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line or line == "done\n":
                break
            _, port, seq = line.split()
            promised[int(port)] = max(promised.get(int(port), -1), int(seq))
        proc.send_signal(signal.SIGKILL)
        for line in proc.stdout:      # lines written before the kill still count as promises
            if line.startswith("durable"):
                _, port, seq = line.split()
                promised[int(port)] = max(promised.get(int(port), -1), int(seq))
        proc.wait()
        with LocalJournal.open(folder, segment_bytes=1 << 20) as journal:
            cuts += len(journal.recovered)
            for port, seq in promised.items():
                assert journal.last_seq[port] >= seq, f"port {port}: durable seq {seq} lost"
                mine = journal.index[journal.index["port"] == port]
                assert np.array_equal(mine["seq"], np.arange(len(mine))), "hole in a port's sequence"
        report = verify(folder)
        assert report.ok, "\n".join(map(str, report.problems))
    assert promised, "the writer never reported a durable batch"
    print(f"{KILLS} kills, {cuts} torn tails cut, durable: {promised}")
