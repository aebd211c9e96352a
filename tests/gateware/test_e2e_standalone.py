"""End to end on the standalone virtual board: the host injects the writes over the pty.

The virtual board's standalone variant (`SIM_STANDALONE`: the dev boards' image, a volume in
on-chip RAM, no servers) runs with bytes corrupted and dropped on the link both ways. The host
(`host.standalone.HostTraffic`) takes the base copy by READ_BLOCK, injects seeded random writes
through all four ports and collects the journal between them (`Collector` into a
`LocalJournal`), keeping each ring below full. Checked against the host's own record of
confirmed writes: every journal entry (port, seq, lba, timestamp, data), the board's volume read
back at the end, and point-in-time views of the journal at instants along the run. (The
copy-on-write pre-images are checked against a model in `test_inject.py`.) Once with the
image's default 64-bit beats and once with 8-bit ones (the iCEBreaker's image): the host
sees the same entries and the same volume.
"""

import dataclasses
import random

import numpy as np
import pytest

from firmware.abi.entry import Mode
from host.journal.base import install_base
from host.journal.collector import Collector
from host.journal.store import LocalJournal
from host.link.device import Device
from host.standalone import HostTraffic, device_time, wait_locked
from host.views import open_view

WRITES = 600
RATE = 5e-5                 # per byte, each of: corrupted, dropped; each direction
TRIES = 8                   # the host's tries of a request (`Device.open`)


@pytest.mark.parametrize("width", [64, 8])
def test_injected_writes_journaled_stored_and_restored(tmp_path, width):
    from boards.sim import SIM_STANDALONE
    from sim.vboard import VirtualBoard, build

    config = dataclasses.replace(SIM_STANDALONE, datapath_bits=width)
    board = VirtualBoard(config=config, binary=build(config), baud=config.clock_hz * 10, seed=3,
                         corrupt_rx=RATE, corrupt_tx=RATE, drop_rx=RATE, drop_tx=RATE)
    with board, Device.open(board.tty, timeout=0.2, flush_timeout=0.3, tries=TRIES) as dev:
        ident = dev.identity
        assert ident.standalone and dev.store_blocks() == config.store_blocks
        assert ident.datapath_bits == dev.read("datapath_bits") == width
        board.command("ransom 1 0 4")            # the host is the traffic: no servers to command
        with pytest.raises(RuntimeError, match="no servers"):
            board.wait_event("ransom", timeout=30)
        wait_locked(dev)
        journal = LocalJournal.create(tmp_path / "journal", block_bytes=ident.block_bytes, ports=ident.ports,
                                      mode=Mode.REDO, window_ns=10**5)
        collector = Collector(journal, dev, deadline_s=60)
        traffic = HostTraffic(dev, seed=11, make_room=lambda port: collector.poll())
        base = traffic.read_volume()
        base_path = tmp_path / "base.img"
        base.tofile(base_path)
        install_base(journal, base_path, device_time(dev), traffic.blocks)

        written = 0
        while written < WRITES:
            written += traffic.random_writes(20, range(ident.ports))
            for poll in collector.poll():
                assert not poll.error and not poll.invalidated, poll
        while any(dev.read("ring_fill", p) for p in range(ident.ports)):
            collector.poll()
        collector.poll()
        final = traffic.read_volume()
        counters = dev.link_counters()

    record = traffic.record
    assert len(record) == WRITES and traffic.failed == 0
    assert np.array_equal(final, traffic.volume_at(record[-1].time_ns + 1)), "the board's volume differs"
    assert [w.time_ns for w in record] == sorted(w.time_ns for w in record)

    # Every entry is a confirmed write; a repeated INJECT_WRITE (its WRITTEN lost or late: the
    # host tries up to TRIES times) journals the write again, right after on the same port with
    # the same block, until one is confirmed.
    index = journal.index
    data = journal.read_data(np.arange(len(index)))
    confirmed = {(w.port, w.seq): w for w in record}
    repeats = 0
    for row, block in zip(index, data, strict=True):
        key = (int(row["port"]), int(row["seq"]))
        w = confirmed.pop(key, None)
        if w is None:
            after = next((confirmed[key[0], key[1] + k] for k in range(1, TRIES)
                          if (key[0], key[1] + k) in confirmed), None)
            assert after is not None and int(row["lba"]) == after.lba and block.tobytes() == after.data, \
                f"entry {key} was never injected"
            repeats += 1
            continue
        assert (int(row["lba"]), int(row["timestamp"])) == (w.lba, w.time_ns), key
        assert int(row["mode"]) == Mode.REDO, key
        assert block.tobytes() == w.data, key
    assert not confirmed, f"{len(confirmed)} confirmed writes missing from the journal"

    # Point-in-time views along the run (just after a write, and at it: without it) equal the
    # record's volume at those instants.
    journal.merge()
    instants = [w.time_ns + 1 for w in random.Random(4).sample(record, 5)] + [record[-1].time_ns,
                                                                               record[-1].time_ns + 1]
    for at in instants:
        view = open_view(journal, at)
        try:
            got = np.frombuffer(view.read(0, view.size_bytes), dtype=np.uint8)
        finally:
            view.backing.close()
        assert np.array_equal(got, traffic.volume_at(at)), f"the view at {at} differs"
    print(f"standalone: writes={WRITES} repeats={repeats} link={counters}")
