"""End to end on the replicated journal: two virtual boards, two collector processes, one
3-node NATS cluster, one node killed mid-ingest and started again.

Board A (2 ports) and board B (4 ports) each protect their own volume, journaled in its own
stream of the session's cluster by a `portjournal collect -j nats://…/VOLUME` process. While
both ingest, the stream leader of A's volume is killed (SIGKILL) and restarted a few seconds
later. Each board is paused once for a quiet instant that is bookmarked. Then: every entry
every port wrote is in its journal exactly once, equal to what storage applied; every ring is
empty (everything acknowledged); and a restore to the bookmark, on a connection that has only
the URL, equals the storage model's record of the volume at that instant byte for byte.
"""

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from boards.sim import SIM_BOARD
from firmware.abi.entry import Status
from host.demo import initial_volume, shadow_at
from host.journal.base import take_base_copy
from host.journal.jetstream import JetStreamJournal
from host.link.device import Device
from host.storage import FileStorage
from host.views import open_view
from sim import vboard

WRITES = 300                 # per port
BLOCKS = 2048
RATE = 3                     # writes per simulated ms per port: ingest lasts long enough to kill a node in it


class Protected:
    """One board, its volume, its storage log and its journal on the cluster."""

    def __init__(self, name: str, ports: int, seed: int, folder: Path, cluster):
        self.config = dataclasses.replace(SIM_BOARD, ports=ports)
        self.name, self.seed = name, seed
        self.block = self.config.block_bytes
        self.volume, self.log = folder / f"{name}.img", folder / f"{name}.log"
        self.url = cluster.journal_url(name)
        self.initial = initial_volume(seed, BLOCKS * self.block)
        self.initial.tofile(self.volume)
        origin = time.time_ns()
        self.origin = origin - origin % self.config.unit_ns
        with JetStreamJournal.create(self.url, block_bytes=self.block, ports=ports, mode=self.config.mode,
                                     window_ns=10**7) as journal, FileStorage(self.volume, self.block) as vol:
            take_base_copy(journal, vol, self.origin)
        self.board = vboard.VirtualBoard(self.volume, config=self.config, blocks=BLOCKS, log=self.log,
                                         rate=RATE, writes=WRITES, seed=seed, baud=self.config.clock_hz * 10,
                                         time_origin=self.origin, report_ms=200)
        self.collector: subprocess.Popen | None = None
        self.bookmark: int | None = None

    def collect(self, folder: Path) -> None:
        """The collector: `portjournal collect` into the volume's URL, in a process of its own."""
        cli = Path(sys.executable).with_name("portjournal")
        with open(folder / f"{self.name}.out", "w") as out:
            self.collector = subprocess.Popen([str(cli), "collect", "--port", self.board.tty, "-j", self.url,
                                               "--deadline", "120"], stdout=out, stderr=subprocess.STDOUT,
                                              env={**os.environ, "COLUMNS": "200"})

    def stop_collector(self) -> int:
        self.collector.send_signal(signal.SIGINT)
        return self.collector.wait(60)


def entries_in(journal: JetStreamJournal) -> int:
    journal.catch_up()
    return len(journal.index)


def test_two_boards_two_collectors_one_cluster(tmp_path, nats_cluster):
    boards = [Protected("board_a", 2, 11, tmp_path, nats_cluster),
              Protected("board_b", 4, 12, tmp_path, nats_cluster)]
    watchers = [JetStreamJournal.open(b.url) for b in boards]
    total = [b.config.ports * WRITES for b in boards]
    killed = None
    try:
        for b in boards:             # both boards up first: a board's writes wait on its collector
            b.board.start()          # (its ring holds 16 entries), so neither runs ahead of the kill
        for b in boards:
            b.collect(tmp_path)
        leader = watchers[0].cluster_info().leader
        deadline = time.monotonic() + 600
        seen = []                    # (seconds, entries per journal) at each look, for a failure's message
        while any(entries_in(w) < n for w, n in zip(watchers, total, strict=True)):
            assert time.monotonic() < deadline, [len(w.index) for w in watchers]
            seen.append((round(time.monotonic() - deadline + 600, 1), [len(w.index) for w in watchers]))
            if killed is None and len(watchers[0].index) >= total[0] // 4:
                killed = next(n for n in nats_cluster.nodes if n.name == leader)
                killed.kill()
                killed_at = (len(watchers[0].index), time.monotonic())
            down = killed is not None and killed.process.poll() is not None
            if down and time.monotonic() - killed_at[1] > 5:              # back after 5 s
                killed.start()
                nats_cluster.wait_ready()
            for b, w, n in zip(boards, watchers, total, strict=True):
                if b.bookmark is None and len(w.index) >= n // 2:       # a quiet instant, bookmarked
                    b.board.command("pause")
                    b.bookmark = int(b.board.wait_event("quiet", 60)["time_ns"])
                    w.update_state(lambda state, b=b: state.bookmarks.__setitem__("mid", b.bookmark))
                    b.board.command("resume")
            time.sleep(0.2)
        assert killed is not None and killed_at[0] < total[0], f"not killed mid-ingest: {seen}"
        elapsed = time.monotonic() - deadline + 600
        for b in boards:
            assert b.stop_collector() == 0, (tmp_path / f"{b.name}.out").read_text()
            dev = Device.open(b.board.tty, timeout=0.2, flush_timeout=0.3, tries=3)
            try:
                assert [dev.read("ring_fill", p) for p in range(b.config.ports)] == [0] * b.config.ports
            finally:
                dev.close()
            b.board.stop()
    finally:
        for w in watchers:
            w.close()
        for b in boards:
            if b.collector is not None and b.collector.poll() is None:
                b.collector.kill()
            b.board.stop()
        if killed is not None and killed.process.poll() is not None:
            killed.start()
            nats_cluster.wait_ready()

    for b in boards:
        records = [r for r in vboard.read_storage_log(b.log) if r.kind == vboard.KIND_WRITE]
        with JetStreamJournal.open(b.url) as j:        # a host with only the URL
            index = j.index
            for p in range(b.config.ports):
                ids = np.flatnonzero(index["port"] == p)
                assert sorted(index["seq"][ids].tolist()) == list(range(WRITES)), (b.name, p)   # once each
                applied = sorted((r for r in records if r.port == p), key=lambda r: r.index)
                for row, block, rec in zip(index[ids], j.read_data(ids), applied, strict=True):
                    assert (int(row["seq"]), int(row["lba"])) == (rec.index, rec.lba)
                    assert int(row["status"]) == (Status.OK if rec.ok else Status.PRIMARY_FAILED)
                    assert bytes(block) == rec.data
            j.merge()
            at = j.state.bookmarks["mid"]
            restored = open_view(j, at).read(0, BLOCKS * b.block)
        assert restored == shadow_at(b.initial, b.log, at, b.block).tobytes(), b.name
    print(f"\nstream leader {leader} killed after {killed_at[0]} of {total[0]} entries of board_a; "
          f"{sum(total)} entries, {elapsed:.1f} s")
    for b in boards:
        JetStreamJournal.delete(b.url)
