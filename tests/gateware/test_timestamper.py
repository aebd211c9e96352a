"""Timestamper: latches time and counts sequence numbers, one per take."""

import pytest
from amaranth.sim import Simulator

from hdl.timestamper import Timestamper


def test_stamps_follow_takes():
    """A take stamps and counts; a note stamps with the next seq and does not count."""
    dut = Timestamper(port=3)
    takes = [1, 0, 1, 1, 0, 0, 1, 1, 1, 0, 0, 1, 0]
    notes = [0, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 1]

    async def bench(ctx):
        expected_seq = 0
        stamp = None
        for cycle, (take, note) in enumerate(zip(takes, notes, strict=True)):
            ctx.set(dut.time, 1000 + 8 * cycle)
            ctx.set(dut.take, take)
            ctx.set(dut.note, note)
            await ctx.tick()
            if take or note:
                stamp = (1000 + 8 * cycle, expected_seq)
            expected_seq += take
            assert (ctx.get(dut.stamp.timestamp), ctx.get(dut.stamp.seq)) == (stamp or (0, 0))
            assert ctx.get(dut.stamp.port) == 3
            assert ctx.get(dut.next_seq) == expected_seq
        assert expected_seq == sum(takes)

    sim = Simulator(dut)
    sim.add_clock(8e-9)
    sim.add_testbench(bench)
    sim.run()


def test_port_index_must_fit():
    with pytest.raises(ValueError, match="does not fit"):
        Timestamper(port=256)
