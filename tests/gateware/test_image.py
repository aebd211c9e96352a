"""DeviceImage: identity, argument checks, and it elaborates for any port count."""

import pytest
from amaranth.back import rtlil
from amaranth.sim import Simulator

from firmware.abi.entry import Mode
from firmware.abi.frames import FEATURE_BOARD_CLOCK, IDENTITY, IMAGE_ID, IMAGE_VERSION
from firmware.abi.regmap import address
from firmware.image import DeviceImage
from hdl.board_clock import nominal_increment
from hdl.dpll import TRACK
from hdl.link import READ_LATENCY


def test_identity_bytes():
    image = DeviceImage(ports=3, block_bytes=64, depth=8, mode=Mode.COPY_ON_WRITE)
    assert IDENTITY.unpack(image.identity()) == (IMAGE_ID, IMAGE_VERSION, 3, 1, 8, 64, 64, 0)
    image._MustUse__silence = image.link._MustUse__silence = True     # not elaborated


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="ports"):
        DeviceImage(ports=0)
    with pytest.raises(ValueError, match="max_payload"):
        DeviceImage(ports=1, block_bytes=64, max_payload=64)


@pytest.mark.parametrize("ports", [1, 3])
def test_elaborates(ports):
    assert "port2" in rtlil.convert(DeviceImage(ports=ports, block_bytes=64, depth=4)) or ports < 3


def test_time_source_seam():
    """`"dpll"`: a `timebase` wire in, a DPLL per port driving `time` and the `dpll` registers;
    `"input"`: the board drives each port's `time` and the `dpll` registers read 0; `"clock"`:
    neither, a `BoardClock` per port."""
    with_dpll = DeviceImage(ports=2, block_bytes=64, depth=4, clk_hz=125e6, interval_ns=100_000,
                            unit_ns=100_000)
    assert "timebase" in with_dpll.signature.members
    assert "time" not in with_dpll.signature.members["port"].signature.members
    assert "dpll1" in rtlil.convert(with_dpll)
    seam = DeviceImage(ports=2, block_bytes=64, depth=4, time_source="input")
    assert "timebase" not in seam.signature.members
    assert "time" in seam.signature.members["port"].signature.members
    assert "dpll0" not in rtlil.convert(seam)
    clock = DeviceImage(ports=2, block_bytes=64, depth=4, time_source="clock")
    assert "timebase" not in clock.signature.members
    assert "time" not in clock.signature.members["port"].signature.members
    assert IDENTITY.unpack(clock.identity())[7] == FEATURE_BOARD_CLOCK
    modules = [line for line in rtlil.convert(clock).splitlines() if line.startswith("module")]
    assert sum("clock" in line for line in modules) == 1        # one BoardClock for both ports
    with pytest.raises(ValueError, match="time source"):
        DeviceImage(ports=1, block_bytes=64, time_source="gps")
    with pytest.raises(ValueError, match="cycles per bit"):
        DeviceImage(ports=1, block_bytes=64, clk_hz=20e6)


def test_board_clock_registers():
    """`"clock"`: each port's `dpll` registers read its BoardClock, locked and tracking."""
    clk_hz = 24e6
    dut = DeviceImage(ports=2, block_bytes=64, depth=4, time_source="clock", link="dma", clk_hz=clk_hz)

    async def bench(ctx):
        ticks = 0

        async def read(name, port):
            """The register as it was on the cycle it is read in (after `ticks` cycles)."""
            nonlocal ticks
            ctx.set(dut.bar.r_addr, address(name, port))
            await ctx.tick().repeat(READ_LATENCY)
            ticks += READ_LATENCY
            return ctx.get(dut.bar.r_data)

        for port in (0, 1):
            assert await read("dpll_locked", port) == 1
            assert await read("dpll_state", port) == TRACK
            assert await read("dpll_frames", port) == 0
            inc = await read("dpll_increment_lo", port) | await read("dpll_increment_hi", port) << 32
            assert inc == nominal_increment(clk_hz)
            assert ctx.get(dut.port[port].locked) == 1
        for _ in range(3):
            at = ticks
            value = await read("dpll_time_lo", 1)
            assert abs(value - at * 1e9 / clk_hz) <= 0.5 + 1e-6, (at, value)

    sim = Simulator(dut)
    sim.add_clock(1 / clk_hz)
    sim.add_testbench(bench)
    sim.run()


def test_dma_link_seam():
    """`link="dma"`: the register bus as the BAR and the memory-write stream, no byte streams."""
    dma = DeviceImage(ports=1, block_bytes=64, depth=4, time_source="input", link="dma")
    members = dma.signature.members
    assert {"bar", "wr", "dma_busy"} <= set(members) and not {"rx", "tx"} & set(members)
    assert "dma_produced" in rtlil.convert(dma)
    with pytest.raises(ValueError, match="serial or dma"):
        DeviceImage(ports=1, block_bytes=64, link="pcie")


def test_standalone_seam():
    """`store_blocks`: the injector is every port's ingress (no `ingress` member), the link's
    READ_BLOCK reaches the board's store, IDENTITY says so; only on the serial link."""
    from firmware.abi.frames import FEATURE_INJECTION

    image = DeviceImage(ports=2, block_bytes=64, depth=4, time_source="input", store_blocks=32)
    members = image.signature.members
    assert {"store_rcmd", "store_rdata"} <= set(members)
    assert "ingress" not in members["port"].signature.members
    assert IDENTITY.unpack(image.identity())[7] == FEATURE_INJECTION
    assert "injector" in rtlil.convert(image)
    plain = DeviceImage(ports=2, block_bytes=64, depth=4, time_source="input")
    assert "ingress" in plain.signature.members["port"].signature.members
    assert "store_rcmd" not in plain.signature.members
    plain._MustUse__silence = plain.link._MustUse__silence = True     # not elaborated
    with pytest.raises(ValueError, match="on-chip volume only on the serial link"):
        DeviceImage(ports=1, block_bytes=64, link="dma", store_blocks=8)


@pytest.mark.parametrize("width", [8, 16, 32])
def test_datapath_width(width):
    """`datapath_bits`: every port stream and the store's beats are that wide, IDENTITY says it,
    and the narrow image elaborates (the injector, the link's frame buffers at that width)."""
    image = DeviceImage(ports=2, block_bytes=64, depth=4, time_source="input", store_blocks=32,
                        datapath_bits=width)
    port = image.signature.members["port"].signature.members
    for name in ("pri_write", "pri_rdata"):
        assert port[name].signature.members["payload"].shape.size == width + 2, name
    assert image.signature.members["store_rdata"].signature.members["payload"].shape.size == width + 2
    assert IDENTITY.unpack(image.identity())[6] == width
    assert "injector" in rtlil.convert(image)


def test_rejects_bad_widths():
    from boards.sim import SimBoard
    from boards.storage import BlockStore
    from hdl.inject import Injector
    from hdl.link import LinkController

    with pytest.raises(ValueError, match="datapath_bits must be 8, 16, 32 or 64"):
        DeviceImage(ports=1, block_bytes=64, datapath_bits=24)
    with pytest.raises(ValueError, match="DMA link takes 64-bit beats only"):
        DeviceImage(ports=1, block_bytes=64, link="dma", datapath_bits=16)
    with pytest.raises(ValueError, match=r"at most 2\*\*datapath_bits blocks"):
        DeviceImage(ports=1, block_bytes=64, store_blocks=257, datapath_bits=8)
    for core in (lambda: LinkController(ports=1, block_bytes=64, identity=bytes(16), datapath_bits=128),
                 lambda: Injector(ports=1, block_bytes=64, datapath_bits=128),
                 lambda: BlockStore(ports=1, block_bytes=64, blocks=8, datapath_bits=128)):
        with pytest.raises(ValueError, match="datapath_bits must be"):
            core()
    with pytest.raises(ValueError, match=r"1 to 2\*\*datapath_bits blocks"):
        BlockStore(ports=1, block_bytes=64, blocks=257, datapath_bits=8)
    with pytest.raises(ValueError, match="only in its standalone variant"):
        SimBoard(ports=1, datapath_bits=16)
