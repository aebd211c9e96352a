"""RegisterBlock in the Amaranth simulator: built from the regmap table, decodes every kind,
counts every event register's pulses."""

import pytest
from amaranth.sim import Simulator

from firmware.abi.regmap import GLOBAL, PORT, PORT_STRIDE, address
from firmware.registers import RegisterBlock
from hdl.link import READ_LATENCY

CONSTANTS = {r.name: 0x100 + r.offset for r in GLOBAL if r.const}


def test_missing_constant_is_refused():
    with pytest.raises(ValueError, match="constant registers"):
        RegisterBlock(ports=1, constants={})


def test_read_write_pulse():
    dut = RegisterBlock(ports=2, constants=CONSTANTS, port_init={"mode": 1})
    bus = dut.bus

    async def bench(ctx):
        async def read(addr):
            ctx.set(bus.r_addr, addr)
            await ctx.tick().repeat(READ_LATENCY)
            return ctx.get(bus.r_data)

        async def write(addr, value):
            ctx.set(bus.w_addr, addr)
            ctx.set(bus.w_data, value)
            ctx.set(bus.w_en, 1)
            await ctx.tick()
            ctx.set(bus.w_en, 0)

        for name, value in CONSTANTS.items():
            assert await read(address(name)) == value, name
        ctx.set(dut.rx_crc_errors, 1)                               # an event: 7 cycles, 7 counted
        await ctx.tick().repeat(7)
        ctx.set(dut.rx_crc_errors, 0)
        await ctx.tick()                                            # the bank's input register
        ctx.set(dut.port[1].acknowledged, 0xABCDEF01)
        ctx.set(dut.port[0].invalid, 1)
        ctx.set(dut.port[1].dpll_time_hi, 0x89ABCDEF)               # a split DPLL value, by word
        ctx.set(dut.port[1].dpll_time_lo, 0x01234567)
        ctx.set(dut.port[1].dpll_increment_hi, 0x08)
        assert await read(address("rx_crc_errors")) == 7
        assert await read(address("acknowledged", 1)) == 0xABCDEF01
        assert await read(address("invalid", 0)) == 1
        assert await read(address("dpll_time_hi", 1)) == 0x89ABCDEF
        assert await read(address("dpll_time_lo", 1)) == 0x01234567
        assert await read(address("dpll_increment_hi", 1)) == 0x08
        assert await read(address("dpll_time_lo", 0)) == 0
        assert await read(address("mode", 1)) == 1                   # reset value from port_init
        await write(address("watermark", 1), 0xFFFFFFFF)
        assert ctx.get(dut.port[1].watermark) == 0x1FFFF            # 17 bits kept
        assert ctx.get(dut.port[0].watermark) == 0
        assert await read(address("watermark", 1)) == 0x1FFFF
        await write(address("scratch"), 0x12345678)
        assert await read(address("scratch")) == 0x12345678
        await write(address("image_id"), 0)                          # RO: ignored
        assert await read(address("image_id")) == CONSTANTS["image_id"]
        ctx.set(bus.w_addr, address("reenable", 0))
        ctx.set(bus.w_data, 1)
        ctx.set(bus.w_en, 1)
        await ctx.tick()
        ctx.set(bus.w_en, 0)
        assert ctx.get(dut.port[0].reenable) == 1 and ctx.get(dut.port[1].reenable) == 0
        await ctx.tick()
        assert ctx.get(dut.port[0].reenable) == 0                    # one cycle only
        assert await read(address("reenable", 0)) == 0
        assert await read(0x7FFF) == 0

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("ports", [1, 3, 8])
def test_every_address_reads_its_register_or_zero(ports):
    """Every address of the map and around it, each RO register holding its own address (an
    event register: its pulse high for a number of cycles of its own, enough to carry into the
    counter bank's RAM): mapped ones read their value (cut to the register's width), everything
    else reads 0."""
    dut = RegisterBlock(ports=ports, constants=CONSTANTS)
    readable = {}
    for port, table in [(None, GLOBAL), *((p, PORT) for p in range(ports))]:
        for reg in table:
            if reg.access != "W1P":
                readable[address(reg.name, port)] = (reg, port)
    top = PORT_STRIDE * (ports + 2)

    def member(reg, port):
        return getattr(dut if port is None else dut.port[port], reg.name)

    def expected(addr):
        if addr not in readable:
            return 0
        reg, port = readable[addr]
        if reg.const:
            return CONSTANTS[reg.name]
        if reg.event:
            return pulses(addr)
        return addr & ((1 << reg.width) - 1) if reg.access == "RO" else reg.init

    def pulses(addr):      # over 256: past the low bits of a bank of up to 256 slots (15 ports)
        return 300 + addr % 61

    async def bench(ctx):
        events = {addr: member(reg, port) for addr, (reg, port) in readable.items() if reg.event}
        for addr, (reg, port) in readable.items():
            if reg.access == "RO" and not reg.const and not reg.event:
                ctx.set(member(reg, port), addr & ((1 << reg.width) - 1))
        for cycle in range(max(map(pulses, events))):
            for addr, pulse in events.items():
                ctx.set(pulse, cycle < pulses(addr))
            await ctx.tick()
        for pulse in events.values():
            ctx.set(pulse, 0)
        for addr in [*range(top), 0x7FFF, 0xFFFF]:
            ctx.set(dut.bus.r_addr, addr)
            await ctx.tick().repeat(READ_LATENCY)
            assert ctx.get(dut.bus.r_data) == expected(addr), hex(addr)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def test_every_register_is_decoded():
    """Each table row is a member of the block (or a constant): nothing is left out."""
    dut = RegisterBlock(ports=1, constants=CONSTANTS)
    dut._MustUse__silence = True    # inspected, not elaborated
    members = dut.signature.members
    assert all(r.name in members for r in GLOBAL if not r.const)
    assert set(dut.port[0].signature.members.keys()) == {r.name for r in PORT}


def test_an_absent_group_reads_zero_and_ignores_writes():
    """An image without the DMA ring (the serial link's) builds no `dma` registers."""
    dut = RegisterBlock(ports=2, constants=CONSTANTS, absent=frozenset({"dma"}))
    assert not any(name.startswith("dma_") for name in dut.port[1].signature.members)

    async def bench(ctx):
        ctx.set(dut.bus.w_addr, address("dma_ring_base_lo", 1))
        ctx.set(dut.bus.w_data, 0x12345678)
        ctx.set(dut.bus.w_en, 1)
        await ctx.tick()
        ctx.set(dut.bus.w_en, 0)
        for name in ("dma_ring_base_lo", "dma_enable", "dma_produced"):
            ctx.set(dut.bus.r_addr, address(name, 1))
            await ctx.tick().repeat(READ_LATENCY)
            assert ctx.get(dut.bus.r_data) == 0, name
        ctx.set(dut.bus.w_addr, address("watermark", 1))        # the other groups as before
        ctx.set(dut.bus.w_data, 5)
        ctx.set(dut.bus.w_en, 1)
        ctx.set(dut.bus.r_addr, address("watermark", 1))
        await ctx.tick().repeat(READ_LATENCY)
        assert ctx.get(dut.bus.r_data) == 0                      # read with the write: the old value
        await ctx.tick()
        assert ctx.get(dut.bus.r_data) == 5                      # read in the cycle after: the new

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
