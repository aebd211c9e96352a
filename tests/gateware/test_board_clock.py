"""BoardClock: ns since reset, against the exact time n / clk_hz rounded to the nearest ns."""

import math
from fractions import Fraction

import pytest
from amaranth.sim import Simulator

from hdl.board_clock import BoardClock


@pytest.mark.parametrize("clk_hz", [24_000_000, 30_000_000, 12_000_000, 25_000_000, 7_000_000])
def test_counts_the_nearest_ns_of_the_period(clk_hz):
    dut = BoardClock(clk_hz=clk_hz)
    cycles = 3000

    async def bench(ctx):
        last = -1
        for n in range(cycles + 1):
            now = ctx.get(dut.time)
            exact = Fraction(n * 10**9, clk_hz)
            assert now == math.floor(exact + Fraction(1, 2)), (n, now, float(exact))
            assert now > last
            last = now
            assert ctx.get(dut.increment) == dut.inc
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1 / clk_hz)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("clk_hz", [1_000, 24e6 + 0.5])
def test_rejects_a_clock_it_cannot_count(clk_hz):
    """A period wider than the increment register, or a clock of a fraction of a Hz."""
    with pytest.raises(ValueError, match="whole number of Hz"):
        BoardClock(clk_hz=clk_hz)
