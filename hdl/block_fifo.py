"""BlockFIFO: a synchronous FIFO whose entries sit in block RAM even when it is small.

An iCE40 has no distributed RAM, so Yosys builds a small memory (a FIFO of a few entries) from
flip-flops, a logic cell a bit, where one block RAM of the 30 would do: on the iCEBreaker the
link's response queue and the flush engine's output FIFO were ~700 of its 5,280 cells. This is
`amaranth.lib.fifo.SyncFIFOBuffered` (same ports, same behaviour: `depth` entries, the head in
the output register, a written entry readable two cycles later) with two differences: on an
iCE40 its memory asks for block RAM, and it says that a read never meets a write to the same
entry (that would take a full or an empty FIFO: `hdl.ram.NO_RW_CHECK`), so Yosys builds no
emulation of one around the block RAM. On other devices the memory is left to Yosys (an ECP5
puts it in distributed RAM).

Against `SyncFIFO` (unbuffered) an entry comes out a cycle later. Writers that count credits
on `level` instead of looking at `w_rdy` (the flush engine, the link's sender, the COBS
encoder) may: from a depth of 3, `w_rdy` is exactly `level != depth`.
"""

from amaranth.hdl import Elaboratable, Module, Mux, Signal
from amaranth.lib.fifo import FIFOInterface
from amaranth.lib.memory import Memory

from hdl.ram import NO_RW_CHECK


def _next(index: Signal, count: int):
    """`index` + 1, wrapping at `count`."""
    return 0 if count == 1 else Mux(index == count - 1, 0, index + 1)


class BlockFIFO(Elaboratable, FIFOInterface):
    """`depth` (at least 2) entries of `width` bits: `SyncFIFOBuffered`'s ports, plus `level`."""

    def __init__(self, *, width: int, depth: int):
        if depth < 2:
            self._MustUse__silence = True  # a rejected core is not an unused one
            raise ValueError(f"a BlockFIFO holds at least 2 entries (got {depth})")
        super().__init__(width=width, depth=depth)
        self.level = Signal(range(depth + 1))

    def elaborate(self, platform):
        m = Module()
        inner = self.depth - 1              # entries in the RAM; one more in the output register
        storage = m.submodules.storage = Memory(shape=self.width, depth=inner, init=[], attrs=NO_RW_CHECK)
        if getattr(platform, "family", None) == "iCE40":
            storage.attrs["ram_style"] = "block"
        w_port = storage.write_port()
        r_port = storage.read_port()
        produce, consume = Signal(range(inner)), Signal(range(inner))
        stored = Signal(range(inner + 1))

        do_write = self.w_rdy & self.w_en
        do_read = (stored != 0) & (~self.r_rdy | self.r_en)    # RAM -> output register
        m.d.comb += [
            self.w_rdy.eq(stored != inner),
            w_port.addr.eq(produce), w_port.data.eq(self.w_data), w_port.en.eq(do_write),
            r_port.addr.eq(consume), r_port.en.eq(do_read), self.r_data.eq(r_port.data),
            self.level.eq(stored + self.r_rdy), self.w_level.eq(self.level), self.r_level.eq(self.level),
        ]
        with m.If(do_write):
            m.d.sync += produce.eq(_next(produce, inner))
        with m.If(do_read):
            m.d.sync += [consume.eq(_next(consume, inner)), self.r_rdy.eq(1)]
        with m.Elif(self.r_en):
            m.d.sync += self.r_rdy.eq(0)
        with m.If(do_write & ~do_read):
            m.d.sync += stored.eq(stored + 1)
        with m.If(do_read & ~do_write):
            m.d.sync += stored.eq(stored - 1)
        return m
