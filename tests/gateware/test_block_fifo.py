"""BlockFIFO against Amaranth's SyncFIFOBuffered, cycle by cycle, and against a queue model."""

import random
from collections import deque

import pytest
from amaranth.hdl import Module
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.sim import Simulator

from hdl.block_fifo import BlockFIFO

PORTS = ("w_rdy", "r_rdy", "level")


@pytest.mark.parametrize("width, depth", [(8, 2), (8, 3), (18, 8), (76, 4), (5, 5), (5, 7)])
def test_same_as_sync_fifo_buffered(width, depth):
    """Random writes and reads (in bursts, so the FIFO runs full and empty): every cycle the same
    ready flags, level and head as SyncFIFOBuffered, and the entries come out in order."""
    m = Module()
    dut = m.submodules.dut = BlockFIFO(width=width, depth=depth)
    ref = m.submodules.ref = SyncFIFOBuffered(width=width, depth=depth)
    rng = random.Random(depth * 100 + width)

    async def bench(ctx):
        queue, full_seen, empty_seen = deque(), 0, 0
        for cycle in range(3000):
            phase = (cycle // 50) % 3          # mostly writing, mostly reading, both
            w_en = rng.random() < (0.9, 0.2, 0.6)[phase]
            r_en = rng.random() < (0.2, 0.9, 0.6)[phase]
            data = rng.getrandbits(width)
            for fifo in (dut, ref):
                ctx.set(fifo.w_en, w_en)
                ctx.set(fifo.r_en, r_en)
                ctx.set(fifo.w_data, data)
            for name in PORTS:
                assert ctx.get(getattr(dut, name)) == ctx.get(getattr(ref, name)), (cycle, name)
            if ctx.get(dut.r_rdy):
                assert ctx.get(dut.r_data) == ctx.get(ref.r_data) == queue[0], cycle
                if r_en:
                    queue.popleft()
            if ctx.get(dut.w_rdy) and w_en:
                queue.append(data)
            full_seen += not ctx.get(dut.w_rdy)
            empty_seen += ctx.get(dut.level) == 0
            await ctx.tick()
        assert full_seen > 20 and empty_seen > 20, (full_seen, empty_seen)

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def test_refuses_a_depth_under_two():
    with pytest.raises(ValueError, match="at least 2"):
        BlockFIFO(width=8, depth=1)


@pytest.mark.parametrize("family, style", [("iCE40", "block"), ("ECP5", None)])
def test_asks_for_block_ram_on_an_ice40_only(family, style):
    """An iCE40 has no distributed RAM: there the memory asks for block RAM; elsewhere Yosys picks."""
    platform = type("Platform", (), {"family": family})()
    fifo = BlockFIFO(width=8, depth=4)
    m = fifo.elaborate(platform)
    storage = m.submodules.storage
    for inspected in (fifo, m, storage):        # inspected, not built
        inspected._MustUse__silence = True
    assert storage.attrs.get("ram_style") == style
