"""End to end: the host collects the virtual board's journals over its pseudo-terminal.

The virtual board (`sim/vboard.py`: the device image under Verilator, 4 servers writing, primary
storage, a storage log) runs with bytes corrupted and dropped on the link in both directions;
the host (`host.link.Device` driven by `host.journal.collector.Collector`) stores into a
`LocalJournal`, and on the way also puts garbage, truncated frames and wrong CRCs on the wire
itself. Every entry must arrive exactly once, in per-port sequence order, CRC intact, equal to
what storage applied; the damage must show in the counters of both ends.
"""

import random
import time

from firmware.abi.entry import Status
from firmware.abi.frames import FrameType
from firmware.abi.frames import encode as encode_frame
from host.journal.collector import Collector
from host.journal.store import LocalJournal
from host.journal.verify import verify
from host.link.device import Device
from sim import vboard

PORTS = 4
WRITES = 2500                       # per port: 10,000 blocks in all
RATE = 1e-4                         # per byte, each of: corrupted, dropped; each direction


def host_damage(rng: random.Random, kind: int) -> bytes:
    """Bytes the host puts on the wire between its frames: each costs the device one NAK."""
    good = encode_frame(FrameType.IDENTIFY, seq=0xFFFF)
    if kind == 0:
        return bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 40))) + b"\0"
    if kind == 1:
        return good[:rng.randrange(1, len(good) - 1)] + b"\0"          # truncated
    body = bytearray(good)
    body[2] ^= 0x10                                                    # wrong CRC (or COBS)
    return bytes(body)


def test_collect_10000_blocks_over_a_damaged_link(tmp_path):
    rng = random.Random(20)
    config = vboard.SIM_BOARD
    assert config.ports == PORTS
    log = tmp_path / "storage.log"
    board = vboard.VirtualBoard(tmp_path / "volume.img", blocks=8192, rate=-1, writes=WRITES, seed=5,
                                log=log, write_fail=0.01, baud=config.clock_hz * 10, corrupt_rx=RATE,
                                corrupt_tx=RATE, drop_rx=RATE, drop_tx=RATE)
    injected = 0
    t0 = time.monotonic()
    with board:
        dev = Device.open(board.tty, timeout=0.2, flush_timeout=0.3, tries=8)
        ident = dev.identity
        assert (ident.ports, ident.block_bytes) == (PORTS, config.block_bytes)
        journal = LocalJournal.create(tmp_path / "journal", block_bytes=ident.block_bytes, ports=ident.ports,
                                      mode=ident.mode, window_ns=10**8)
        collector = Collector(journal, dev, deadline_s=60)
        rounds = 0
        while len(journal.index) < PORTS * WRITES:
            assert time.monotonic() - t0 < 400, f"only {len(journal.index)} entries after 400 s"
            for poll in collector.poll():
                assert not poll.invalidated, poll
            rounds += 1
            if rounds % 10 == 0:
                dev.transport.send_raw(host_damage(rng, injected % 3))
                injected += 1
        device = dev.read_block()
        fills = [dev.read("ring_fill", p) for p in range(PORTS)]
        host = dev.link_counters()
        dev.close()
    records = [r for r in board.storage_log() if r.kind == vboard.KIND_WRITE]
    elapsed = time.monotonic() - t0

    # Every entry exactly once, per-port sequence order without gaps (the journal refuses gaps).
    index = journal.index
    assert len(index) == PORTS * WRITES
    for p in range(PORTS):
        assert list(index["seq"][index["port"] == p]) == list(range(WRITES)), p
    assert fills == [0] * PORTS                          # everything acknowledged
    journal.close()
    report = verify(tmp_path / "journal")                # every record and entry CRC
    assert report.ok, report.problems

    # Equal to what storage applied: redo-mode write index k is entry seq k.
    with LocalJournal.open(tmp_path / "journal", readonly=True) as j:
        index = j.index
        for p in range(PORTS):
            ids = (index["port"] == p).nonzero()[0]
            data = j.read_data(ids)
            applied = sorted((r for r in records if r.port == p), key=lambda r: r.index)
            assert len(applied) == WRITES, (p, len(applied))
            for row, block, rec in zip(index[ids], data, applied, strict=True):
                assert (int(row["seq"]), int(row["lba"])) == (rec.index, rec.lba)
                assert int(row["status"]) == (Status.OK if rec.ok else Status.PRIMARY_FAILED)
                assert bytes(block) == rec.data == vboard.server_block(5, p, rec.index)   # server p's
    assert any(not r.ok for r in records) and any(r.ok for r in records)   # both statuses journaled

    # The damage happened, both ways, and was recovered from.
    end = board.exit
    assert int(end["rx_corrupted"]) + int(end["rx_dropped"]) > 0, end       # host -> device, on the line
    assert int(end["tx_corrupted"]) > 0 and int(end["tx_dropped"]) > 0, end  # device -> host
    device_rx_errors = sum(device[n] for n in ("rx_cobs_errors", "rx_crc_errors", "rx_length_errors",
                                               "rx_type_errors"))
    assert device_rx_errors >= injected > 0 and device["naks_sent"] >= injected
    assert host["rx_crc_errors"] + host["rx_cobs_errors"] + host["rx_length_errors"] > 0
    assert host["resends"] > 0 and host["duplicates"] > 0
    print(f"\n{PORTS * WRITES} entries in {elapsed:.1f} s; device {device_rx_errors} bad frames, "
          f"{device['naks_sent']} NAKs; host {host}")
