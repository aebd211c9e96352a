"""BoardClock: ns since reset at the nominal period, against the exact time n / clk_hz."""

from fractions import Fraction

import pytest
from amaranth.sim import Simulator

from hdl.board_clock import BoardClock


@pytest.mark.parametrize("clk_hz", [24_000_000, 30_000_000, 12_000_000])
def test_counts_the_nearest_ns_of_the_period(clk_hz):
    dut = BoardClock(clk_hz=clk_hz)
    cycles = 3000

    async def bench(ctx):
        last = -1
        for n in range(cycles + 1):
            now = ctx.get(dut.time)
            exact = Fraction(n * 10**9, clk_hz)
            assert abs(now - exact) <= Fraction(1, 2) + Fraction(n, 2**32), (n, now, float(exact))
            assert now > last
            last = now
            assert ctx.get(dut.increment) == dut.inc
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1 / clk_hz)
    sim.add_testbench(bench)
    sim.run()


def test_rejects_a_clock_whose_period_does_not_fit():
    with pytest.raises(ValueError, match="does not fit"):
        BoardClock(clk_hz=1_000)
