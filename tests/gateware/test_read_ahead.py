"""ReadAhead against the RAM it reads: every block comes out whole, in order, its last word
marked, whatever the consumer's ready does (the queue's bound is what a lost word would break)."""

import random

import pytest
from amaranth.hdl import Module
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from hdl.read_ahead import ReadAhead

WIDTH = 16


def run_blocks(words: int, depth: int, ready_odds: float, blocks: int = 6) -> None:
    """Stream `blocks` blocks of a RAM holding random words to a consumer ready with `ready_odds`
    each cycle, and check each word, `last`, and `idle` against the RAM's contents."""
    rng = random.Random(words * 1000 + depth * 10 + int(ready_odds * 10))
    contents = [rng.getrandbits(WIDTH) for _ in range(words)]
    m = Module()
    mem = m.submodules.mem = Memory(shape=WIDTH, depth=words, init=contents)
    rp = mem.read_port()
    dut = m.submodules.dut = ReadAhead(width=WIDTH, words=words, depth=depth)
    m.d.comb += [rp.addr.eq(dut.addr), dut.data.eq(rp.data)]

    async def bench(ctx):
        assert ctx.get(dut.idle)
        for block in range(blocks):
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            assert not ctx.get(dut.idle), block
            got, cycles = [], 0
            while len(got) < words:
                ready = rng.random() < ready_odds
                ctx.set(dut.out.ready, ready)
                if ctx.get(dut.out.valid) and ready:
                    word = ctx.get(dut.out.payload)
                    got.append(word.data)
                    assert word.last == (len(got) == words), (block, len(got))
                cycles += 1
                await ctx.tick()
                assert cycles < 50 * words, f"the queue stopped offering words after {len(got)}"
            ctx.set(dut.out.ready, 0)
            assert got == contents, block
            await ctx.tick().repeat(depth + 2)
            assert ctx.get(dut.idle) and not ctx.get(dut.out.valid), block

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("depth", [3, 4, 6])
@pytest.mark.parametrize("ready_odds", [1.0, 0.7, 0.3])
def test_blocks_come_out_whole_under_backpressure(depth, ready_odds):
    run_blocks(words=16, depth=depth, ready_odds=ready_odds)


@pytest.mark.parametrize("words", [1, 2, 3])
def test_short_blocks(words):
    """Blocks no longer than the queue: the fetch stops at the block's end, not at the queue's."""
    run_blocks(words=words, depth=3, ready_odds=0.5)


def test_streams_a_word_every_other_cycle_at_least():
    """With the consumer always ready, 3 entries give at least a word every other cycle."""
    words = 32
    m = Module()
    mem = m.submodules.mem = Memory(shape=WIDTH, depth=words, init=range(words))
    rp = mem.read_port()
    dut = m.submodules.dut = ReadAhead(width=WIDTH, words=words, depth=3)
    m.d.comb += [rp.addr.eq(dut.addr), dut.data.eq(rp.data), dut.out.ready.eq(1)]

    async def bench(ctx):
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        cycles, taken = 0, 0
        while taken < words:
            taken += ctx.get(dut.out.valid)
            cycles += 1
            await ctx.tick()
        assert cycles <= 2 * words + 4, cycles

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def test_refuses_a_queue_under_three():
    with pytest.raises(ValueError, match="at least 3"):
        ReadAhead(width=8, words=4, depth=2)
