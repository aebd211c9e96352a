"""End to end over the DMA link: the host collects the virtual board's journals from rings in its
memory (`host.link.dma.DmaDevice`, the harness's host-memory file and BAR mailbox).

The board (`SimBoard(link="dma")` under the C++ harness) runs 4 servers back to back with a few
primary-write failures; the host (`Collector` over `DmaDevice`, the same PortLink as the serial
driver) stores into a `LocalJournal`. Every entry must arrive exactly once, in per-port sequence
order, CRC intact, equal to what storage applied; the device's rings must end empty. Then a
silenced doorbell: the port's host ring fills, the port back-pressures its server, and no entry
is lost once the doorbell speaks again.
"""

import dataclasses
import time

from click.testing import CliRunner

from firmware.abi.entry import Status
from host.cli import cli
from host.journal.collector import Collector
from host.journal.primary import NEVER
from host.journal.store import LocalJournal
from host.journal.verify import verify
from host.link.dma import DmaDevice
from host.standalone import wait_locked
from sim import vboard

PORTS = 4
WRITES = 2500                       # per port: 10,000 blocks in all
DMA_BOARD = dataclasses.replace(vboard.SIM_BOARD, link="dma")


def collect_until(collector: Collector, entries: int, t0: float, limit_s: float) -> None:
    """Poll until the collector's journal holds `entries`, within `limit_s` of `t0`; no poll may
    fail or invalidate a port."""
    journal = collector.journal
    while len(journal.index) < entries:
        assert time.monotonic() - t0 < limit_s, f"only {len(journal.index)} entries after {limit_s} s"
        for poll in collector.poll():
            assert not poll.invalidated and not poll.error, poll


def test_collect_10000_blocks_over_dma(tmp_path):
    log = tmp_path / "storage.log"
    board = vboard.VirtualBoard(tmp_path / "volume.img", config=DMA_BOARD, blocks=8192, rate=-1,
                                writes=WRITES, seed=5, log=log, write_fail=0.01,
                                host_mem=tmp_path / "host-mem.bin")
    t0 = time.monotonic()
    with board:
        dev = DmaDevice.open(board.host_mem, ring_log_size=6)
        ident = dev.identity
        assert (ident.ports, ident.block_bytes) == (PORTS, DMA_BOARD.block_bytes)
        journal = LocalJournal.create(tmp_path / "journal", block_bytes=ident.block_bytes, ports=ident.ports,
                                      mode=ident.mode, window_ns=10**8)
        collect_until(Collector(journal, dev, deadline_s=60), PORTS * WRITES, t0, 300)
        fills = [dev.read("ring_fill", p) for p in range(PORTS)]
        produced = [dev.read("dma_produced", p) for p in range(PORTS)]
        full = [dev.read("dma_full_cycles", p) for p in range(PORTS)]
        host = dev.link_counters()
        dev.close()
    elapsed = time.monotonic() - t0
    records = [r for r in board.storage_log() if r.kind == vboard.KIND_WRITE]

    index = journal.index
    assert len(index) == PORTS * WRITES
    for p in range(PORTS):
        assert list(index["seq"][index["port"] == p]) == list(range(WRITES)), p
    assert fills == [0] * PORTS and produced == [WRITES] * PORTS
    journal.close()
    report = verify(tmp_path / "journal")
    assert report.ok, report.problems
    with LocalJournal.open(tmp_path / "journal", readonly=True) as j:
        index = j.index
        for p in range(PORTS):
            ids = (index["port"] == p).nonzero()[0]
            applied = sorted((r for r in records if r.port == p), key=lambda r: r.index)
            assert len(applied) == WRITES, (p, len(applied))
            for row, block, rec in zip(index[ids], j.read_data(ids), applied, strict=True):
                assert (int(row["seq"]), int(row["lba"])) == (rec.index, rec.lba)
                assert int(row["status"]) == (Status.OK if rec.ok else Status.PRIMARY_FAILED)
                assert bytes(block) == rec.data == vboard.server_block(5, p, rec.index)
    assert any(not r.ok for r in records)
    end = board.exit
    assert int(end["dma_errors"]) == 0
    print(f"\n{PORTS * WRITES} entries in {elapsed:.1f} s over DMA; host {host}; "
          f"full-ring cycles {full}; bus beats {end['dma_beats']} / busy {end['dma_busy_cycles']}")


def test_silenced_doorbell_fills_the_host_ring_then_nothing_is_lost(tmp_path):
    """Port 2's doorbell writes are dropped (`silence 2`): its 8-slot host ring fills, entries wait
    in the port's 16-entry ring behind it, which fills and holds its server; after `speak 2` the
    host rings again and every entry of every port arrives once, in order."""
    writes = 300
    board = vboard.VirtualBoard(tmp_path / "volume.img", config=DMA_BOARD, blocks=4096, rate=-1,
                                writes=writes, seed=9, host_mem=tmp_path / "host-mem.bin")
    with board:
        dev = DmaDevice.open(board.host_mem, ring_log_size=3, flush_timeout=0.3)
        journal = LocalJournal.create(tmp_path / "journal", block_bytes=dev.identity.block_bytes,
                                      ports=PORTS, mode=dev.identity.mode, window_ns=10**8)
        collector = Collector(journal, dev, deadline_s=60)
        board.command("silence 2")
        board.wait_event("silence")
        errors = 0
        t0 = time.monotonic()
        while dev.read("dma_full_cycles", 2) == 0 or dev.read("stall_cycles", 2) == 0:
            assert time.monotonic() - t0 < 60, "port 2's host ring never filled"
            errors += sum(bool(poll.error) for poll in collector.poll())
        silent_until = time.monotonic() + 1.0
        while time.monotonic() < silent_until:      # the host keeps polling; port 2 cannot answer
            errors += sum(bool(poll.error) for poll in collector.poll())
        held = dev.read("dma_produced", 2)
        assert held == 8 and dev.read("dma_doorbell", 2) == 0      # the device saw no doorbell
        assert dev.read("ring_fill", 2) == vboard.SIM_BOARD.depth    # 8 in host memory, 8 waiting
        board.command("speak 2")
        board.wait_event("speak")
        while len(journal.index) < PORTS * writes:
            assert time.monotonic() - t0 < 120, f"only {len(journal.index)} entries"
            collector.poll()
        counters = dev.link_counters()
        dev.close()
    index = journal.index
    for p in range(PORTS):
        assert list(index["seq"][index["port"] == p]) == list(range(writes)), p
    assert errors > 0 and counters["timeouts"] > 0          # flushes of port 2 waited in vain
    assert int(board.exit["silenced_frames"]) > 0           # doorbells were dropped
    journal.close()


def test_second_host_session_resumes_where_the_first_stopped(tmp_path):
    """Two collector sessions one after the other into one journal, as `collect` stopped with
    Ctrl-C and started again: the first stores some of every port's entries and stops, ports 0 and 1
    right after an acknowledged round, ports 2 and 3 after rounds stored but not acknowledged;
    the device fills the host rings behind it with entries nobody reads. The second session
    programs the rings afresh (the device goes back to each port's oldest unacknowledged entry)
    and stores the rest: every entry once, in order, no port invalid."""
    writes = 1000                   # per port: none is done when the first session stops
    board = vboard.VirtualBoard(tmp_path / "volume.img", config=DMA_BOARD, blocks=4096, rate=-1,
                                writes=writes, seed=13, log=tmp_path / "storage.log",
                                host_mem=tmp_path / "host-mem.bin")
    folder = tmp_path / "journal"
    with board:
        with DmaDevice.open(board.host_mem, ring_log_size=3, flush_timeout=0.5) as dev:
            journal = LocalJournal.create(folder, block_bytes=dev.identity.block_bytes, ports=PORTS,
                                          mode=dev.identity.mode, window_ns=10**8)
            collector = Collector(journal, dev, deadline_s=2)
            # The DPLLs lock one by one and a port writes once locked: collect only when all are,
            # or the first would finish its writes, as fast as this host reads, before the last starts.
            wait_locked(dev)
            t0 = time.monotonic()
            while min(journal.last_seq) < 40:          # every port under way
                assert time.monotonic() - t0 < 60, f"only {len(journal.index)} entries"
                assert not any(poll.error for poll in collector.poll())
            # Ports 2 and 3 stop between the store and the doorbell: entries stored, not acknowledged.
            acked, ack = [int(s) for s in journal.last_seq], dev.ack
            dev.ack = lambda port, seq: ack(port, seq) if port < 2 else None
            while any(journal.last_seq[p] <= acked[p] for p in (2, 3)):
                assert time.monotonic() - t0 < 60, "ports 2 and 3 stored nothing more"
                collector.poll()
            first = [int(s) for s in journal.last_seq]
            read = [ring.consumed for ring in dev.rings]
            journal.close()
        with DmaDevice.open(board.host_mem) as look:    # opening does not touch the rings
            def state(p):
                return [look.read(name, p) for name in ("dma_produced", "dma_doorbell", "ring_fill")]

            t1 = time.monotonic()
            while any(produced - doorbell < 8 or fill < vboard.SIM_BOARD.depth
                      for produced, doorbell, fill in map(state, range(PORTS))):
                assert time.monotonic() - t1 < 30, ("rings never full", [state(p) for p in range(PORTS)])
            stored_not_acked = [first[p] + 1 - look.read("acknowledged", p) for p in range(PORTS)]
            unread = [look.read("dma_produced", p) - read[p] for p in range(PORTS)]
        status = CliRunner().invoke(cli, ["status", "--link", "dma", "--port", str(board.host_mem)],
                                    env={"COLUMNS": "300"})
        assert status.exit_code == 0, status.output
        assert "journal rings in host memory" in status.output and "frames up to" not in status.output
        # Ports 0 and 1 were acknowledged to the end: their rings filled with entries nobody read.
        assert stored_not_acked[0] == stored_not_acked[1] == 0 and min(stored_not_acked[2:]) > 0
        assert min(unread[:2]) > 0, unread
        journal = LocalJournal.open(folder)
        with DmaDevice.open(board.host_mem, ring_log_size=3, flush_timeout=0.5) as dev:
            collect_until(Collector(journal, dev, deadline_s=2), PORTS * writes, t0, 120)
            fills = [dev.read("ring_fill", p) for p in range(PORTS)]
    index = journal.index
    for p in range(PORTS):
        assert list(index["seq"][index["port"] == p]) == list(range(writes)), p
    assert fills == [0] * PORTS, fills
    assert all(since == NEVER for since in journal.invalid_since())
    journal.close()
    report = verify(folder)
    assert report.ok, report.problems
    records = {(r.port, r.index): r for r in board.storage_log() if r.kind == vboard.KIND_WRITE}
    with LocalJournal.open(folder, readonly=True) as j:
        for row, block in zip(j.index, j.read_data(range(len(j.index))), strict=True):
            rec = records[int(row["port"]), int(row["seq"])]
            assert int(row["lba"]) == rec.lba and bytes(block) == rec.data
