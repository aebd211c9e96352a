"""Timestamper: latches time and counts sequence numbers, one per take."""

import pytest
from amaranth.sim import Simulator

from hdl.timestamper import Timestamper


def test_stamps_follow_takes():
    dut = Timestamper(port=3)
    takes = [1, 0, 1, 1, 0, 0, 1, 1, 1, 0]

    async def bench(ctx):
        expected_seq = 0
        for cycle, take in enumerate(takes):
            ctx.set(dut.time, 1000 + 8 * cycle)
            ctx.set(dut.take, take)
            await ctx.tick()
            if take:
                assert ctx.get(dut.stamp.timestamp) == 1000 + 8 * cycle
                assert ctx.get(dut.stamp.seq) == expected_seq
                assert ctx.get(dut.stamp.port) == 3
                expected_seq += 1
        assert expected_seq == sum(takes)

    sim = Simulator(dut)
    sim.add_clock(8e-9)
    sim.add_testbench(bench)
    sim.run()


def test_port_index_must_fit():
    with pytest.raises(ValueError, match="does not fit"):
        Timestamper(port=256)
