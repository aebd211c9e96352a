"""CRC32C core: Amaranth-simulator and Verilator (cocotb) runs against the `crc32c` package."""

import random

import cocotb
import crc32c
import pytest
from amaranth.sim import Simulator
from cocotb.triggers import ClockCycles, RisingEdge

from hdl.crc import CHECK, CRC32C, crc32c_step

WIDTHS = (8, 32, 64)


def words(data: bytes, width: int) -> list[int]:
    """Split `data` (a whole number of words) into little-endian words of `width` bits."""
    step = width // 8
    return [int.from_bytes(data[i:i + step], "little") for i in range(0, len(data), step)]


def test_reference_step_matches_library():
    data = random.Random(1).randbytes(64)
    state = 0xFFFFFFFF
    for word in words(data, 32):
        state = crc32c_step(state, word, 32)
    assert state ^ 0xFFFFFFFF == crc32c.crc32c(data)
    assert crc32c.crc32c(b"123456789") == CHECK


def test_rejects_partial_byte_width():
    with pytest.raises(ValueError, match="multiple of 8"):
        CRC32C(12)


@pytest.mark.parametrize("width", WIDTHS)
def test_amaranth_sim(width):
    rng = random.Random(width)
    messages = [b"123456789" if width == 8 else b"12345678" * 4]
    messages += [rng.randbytes(width // 8 * rng.randint(1, 40)) for _ in range(20)]
    dut = CRC32C(width)

    async def bench(ctx):
        for msg in messages:
            for i, word in enumerate(words(msg, width)):
                ctx.set(dut.data.payload.data, word)
                ctx.set(dut.data.payload.first, i == 0)
                ctx.set(dut.data.valid, 1)
                await ctx.tick()
                if rng.random() < 0.2:
                    ctx.set(dut.data.valid, 0)
                    await ctx.tick()
            ctx.set(dut.data.valid, 0)
            await ctx.tick()
            assert ctx.get(dut.crc) == crc32c.crc32c(msg), msg.hex()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    if width == 8:
        assert crc32c.crc32c(messages[0]) == CHECK


# --- cocotb under Verilator: the module is also loaded inside the simulator -----------------


async def _reset(dut):
    from cocotb.clock import Clock

    cocotb.start_soon(Clock(dut.clk, 8, unit="ns").start())
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0


async def _feed(dut, msg: bytes, rng: random.Random | None = None) -> int:
    """Drive `msg` word by word (with idle gaps if `rng`), return the CRC the core reports."""
    width = len(dut.data__payload) - 1
    for i, word in enumerate(words(msg, width)):
        dut.data__payload.value = word | (int(i == 0) << width)
        dut.data__valid.value = 1
        await RisingEdge(dut.clk)
        if rng and rng.random() < 0.1:
            dut.data__valid.value = 0
            await RisingEdge(dut.clk)
    dut.data__valid.value = 0
    await ClockCycles(dut.clk, 2)
    return int(dut.crc.value)


@cocotb.test()
async def crc_check_value(dut):
    """The standard check string, repeated to fill whole words, against the library."""
    await _reset(dut)
    width = len(dut.data__payload) - 1
    msg = b"123456789" * (width // 8)
    got = await _feed(dut, msg)
    assert got == crc32c.crc32c(msg), f"{got:#010x} != {crc32c.crc32c(msg):#010x}"
    if width == 8:
        assert got == CHECK


@cocotb.test()
async def crc_matches_library(dut):
    """Random messages with idle gaps, each restarted by `first`, against the library."""
    rng = random.Random(cocotb.RANDOM_SEED)
    await _reset(dut)
    width = len(dut.data__payload) - 1
    for _ in range(200):
        msg = rng.randbytes(width // 8 * rng.randint(1, 64))
        got = await _feed(dut, msg, rng)
        assert got == crc32c.crc32c(msg), f"{got:#010x} != {crc32c.crc32c(msg):#010x} for {msg.hex()}"


@pytest.mark.parametrize("width", (8, 64))
def test_verilator(width, sim_dir):
    from sim.image import build_image

    image = build_image(f"crc32c_w{width}", lambda: CRC32C(width))
    image.run("test_crc", test_dir=sim_dir / f"crc{width}")
