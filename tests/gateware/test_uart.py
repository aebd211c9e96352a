"""UART in the Amaranth simulator: loopback at random divisors, framing errors counted."""

import random

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator
from streams import stream_put

from hdl.uart import UART


def _run(dut, *benches):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for bench in benches:
        sim.add_testbench(bench)
    sim.run()


def test_rejects_tiny_divisor():
    with pytest.raises(ValueError, match="divisor"):
        UART(2)


@pytest.mark.parametrize("seed", range(4))
def test_loopback(seed):
    """tx wired to rx: every byte comes back, in order, with no framing error."""
    rng = random.Random(seed)
    divisor = rng.randint(4, 37)
    payload = rng.randbytes(24) + b"\x00\xff\x55\xaa"
    dut = UART(divisor)
    m = Module()
    m.submodules.dut = dut
    m.d.comb += dut.rx.eq(dut.tx)
    received = []

    async def sender(ctx):
        for byte in payload:
            await stream_put(ctx, dut.i_stream, byte)
            ctx.set(dut.i_stream.valid, 0)
            for _ in range(rng.randint(0, 2 * divisor)):
                await ctx.tick()

    async def receiver(ctx):
        ctx.set(dut.o_stream.ready, 1)
        while len(received) < len(payload):
            await ctx.tick().until(dut.o_stream.valid)
            received.append(ctx.get(dut.o_stream.payload))
        assert bytes(received) == payload, f"divisor {divisor}"
        assert ctx.get(dut.framing_errors) == 0 and ctx.get(dut.overruns) == 0

    _run(m, sender, receiver)


def test_framing_error_and_glitch():
    """A low stop bit is counted and dropped; a short low glitch is not a start bit."""
    divisor = 8
    dut = UART(divisor)
    got = []

    async def line(ctx):
        ctx.set(dut.o_stream.ready, 1)

        async def bits(levels):
            for level in levels:
                ctx.set(dut.rx, level)
                for _ in range(divisor):
                    await ctx.tick()
                    if ctx.get(dut.o_stream.valid):
                        got.append(ctx.get(dut.o_stream.payload))

        await bits([1] * 4)
        ctx.set(dut.rx, 0)                      # a 2-cycle glitch
        await ctx.tick().repeat(2)
        await bits([1] * 4)
        await bits([0] + [1, 0, 1, 0, 0, 1, 0, 1] + [0] + [1] * 12)   # 0xA5 with a bad stop bit
        await bits([0] + [0, 1, 1, 0, 0, 1, 1, 0] + [1] * 4)          # 0x66, good
        assert got == [0x66]
        assert ctx.get(dut.framing_errors) == 1

    _run(dut, line)
