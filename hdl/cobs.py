"""Streaming COBS (consistent overhead byte stuffing) with a 0x00 frame delimiter.

The unencoded side carries frames as byte streams with `first`/`last`; the encoded side is a
plain byte stream in which 0x00 appears only as the delimiter after each frame. The coding is
the one of the `cobs` Python package (and `firmware.abi.frames`): a code byte n (1..255) is
followed by n-1 non-zero bytes, and stands for a zero after them unless n is 255 or the group
ends the frame.

`COBSEncoder` needs up to 254 bytes of lookahead (a code byte says how far the next zero is):
it collects each group into one half of a `lib.memory.Memory` while the other half is being
sent, so on long frames the output is busy every cycle (one code byte per 254 data bytes is the
only overhead). `COBSDecoder` drops the code bytes, restores the zeros and marks the last byte
of a frame with `error` when the frame is malformed (the delimiter came inside a group). It
emits one byte per input byte at most, holding one byte back so it can mark `last`.
"""

from amaranth.hdl import Array, Cat, Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hdl.block_fifo import BlockFIFO
from hdl.ram import NO_RW_CHECK

FrameByte = data.StructLayout({"data": 8, "first": 1, "last": 1})
CheckedFrameByte = data.StructLayout({"data": 8, "first": 1, "last": 1, "error": 1})

MAX_GROUP = 254          # data bytes under one 0xFF code
_OUT_FIFO_DEPTH = 4

# What follows a group on the wire.
_TAIL_NONE, _TAIL_DELIM, _TAIL_EMPTY_DELIM = 0, 1, 2   # -, 0x00, 0x01 0x00


class COBSEncoder(wiring.Component):
    """Frames (bytes with `first`/`last`) in, COBS bytes with a 0x00 after every frame out."""

    i_stream: In(stream.Signature(FrameByte))
    o_stream: Out(stream.Signature(8))

    def elaborate(self, platform):
        m = Module()
        # A group is read from one half while the next is written into the other.
        mem = m.submodules.mem = Memory(shape=8, depth=2 * 256, init=[], attrs=NO_RW_CHECK)
        wp = mem.write_port()
        rp = mem.read_port()

        # Per half: full, data byte count, code byte, what follows.
        full = Signal(2)
        count = Array([Signal(range(MAX_GROUP + 1), name=f"count{i}") for i in range(2)])
        code = Array([Signal(8, name=f"code{i}") for i in range(2)])
        tail = Array([Signal(2, name=f"tail{i}") for i in range(2)])

        # --- collect: one group into half `wsel` ----------------------------------------------
        wsel = Signal()
        n = Signal(range(MAX_GROUP + 1))
        byte = self.i_stream.payload
        m.d.comb += self.i_stream.ready.eq(~full.bit_select(wsel, 1))
        m.d.comb += [wp.addr.eq(Cat(n[:8], wsel)), wp.data.eq(byte.data)]
        close = Signal()
        with m.If(self.i_stream.valid & self.i_stream.ready):
            with m.If(byte.data != 0):
                m.d.comb += wp.en.eq(1)
                m.d.sync += n.eq(n + 1)
                with m.If((n + 1 == MAX_GROUP) | byte.last):
                    m.d.comb += close.eq(1)
                    m.d.sync += [count[wsel].eq(n + 1),
                                 code[wsel].eq(n + 2),        # 0xFF for a full group
                                 tail[wsel].eq(Cat(byte.last, 0))]
            with m.Else():
                m.d.comb += close.eq(1)
                m.d.sync += [count[wsel].eq(n), code[wsel].eq(n + 1),
                             tail[wsel].eq(Cat(0, byte.last))]
        with m.If(close):
            m.d.sync += [n.eq(0), wsel.eq(~wsel)]

        # --- emit: code byte, the group's bytes, its tail; two stages into a small FIFO --------
        fifo = m.submodules.fifo = BlockFIFO(width=8, depth=_OUT_FIFO_DEPTH)
        m.d.comb += [self.o_stream.valid.eq(fifo.r_rdy), self.o_stream.payload.eq(fifo.r_data),
                     fifo.r_en.eq(self.o_stream.ready)]
        rsel = Signal()
        i = Signal(range(MAX_GROUP + 3))     # 0: code, 1..count: data, then the tail bytes
        can_issue = fifo.level < _OUT_FIFO_DEPTH - 1
        cnt, tl = count[rsel], tail[rsel]
        end = Signal(range(MAX_GROUP + 3))   # index of the group's last output byte
        m.d.comb += end.eq(cnt)
        with m.Switch(tl):
            with m.Case(_TAIL_DELIM):
                m.d.comb += end.eq(cnt + 1)
            with m.Case(_TAIL_EMPTY_DELIM):
                m.d.comb += end.eq(cnt + 2)
        issue = full.bit_select(rsel, 1) & can_issue
        m.d.comb += [rp.addr.eq(Cat((i - 1)[:8], rsel)), rp.en.eq(1)]
        b_valid = Signal()
        b_kind = Signal(2)      # 0 code, 1 data, 2 0x01, 3 0x00
        b_code = Signal(8)
        m.d.sync += b_valid.eq(issue)
        with m.If(issue):
            m.d.sync += [i.eq(i + 1), b_code.eq(code[rsel])]
            with m.If(i == 0):
                m.d.sync += b_kind.eq(0)
            with m.Elif(i <= cnt):
                m.d.sync += b_kind.eq(1)
            with m.Elif((tl == _TAIL_EMPTY_DELIM) & (i == cnt + 1)):
                m.d.sync += b_kind.eq(2)
            with m.Else():
                m.d.sync += b_kind.eq(3)
            with m.If(i == end):
                m.d.sync += i.eq(0)
                m.d.sync += [full.bit_select(rsel, 1).eq(0), rsel.eq(~rsel)]
        with m.If(close):
            m.d.sync += full.bit_select(wsel, 1).eq(1)
        out = Signal(8)
        with m.Switch(b_kind):
            with m.Case(0):
                m.d.comb += out.eq(b_code)
            with m.Case(1):
                m.d.comb += out.eq(rp.data)
            with m.Case(2):
                m.d.comb += out.eq(1)
            with m.Case(3):
                m.d.comb += out.eq(0)
        m.d.comb += [fifo.w_en.eq(b_valid), fifo.w_data.eq(out)]
        return m


class COBSDecoder(wiring.Component):
    """COBS bytes in; frames out as bytes with `first`/`last`, `error` on a malformed frame's end.

    Empty frames (two delimiters in a row, or a frame that decodes to nothing) produce nothing.
    A malformed frame that decoded to no byte at all comes out as one byte with `first`, `last`
    and `error` set, so the consumer sees every defect.
    """

    i_stream: In(stream.Signature(8))
    o_stream: Out(stream.Signature(CheckedFrameByte))

    def elaborate(self, platform):
        m = Module()
        in_frame = Signal()         # a non-zero byte came since the last delimiter
        rem = Signal(8)             # data bytes left in the current group
        zero_next = Signal()        # the current group stands for a zero if another one follows
        pend = Signal(8)            # the byte held back (so `last` can be set on it)
        pend_valid = Signal()
        pend_first = Signal()
        emitted = Signal()          # a byte of this frame was produced

        b = self.i_stream.payload
        delim = b == 0
        produce = self.i_stream.valid & ~delim & ((rem != 0) | (in_frame & zero_next))
        at_end = self.i_stream.valid & delim & in_frame
        bad = rem != 0
        new_byte = Signal(8)
        m.d.comb += new_byte.eq(Cat(b) & (rem != 0).replicate(8))   # a code byte yields its zero

        o = self.o_stream.payload
        with m.If(at_end):
            m.d.comb += [self.o_stream.valid.eq(pend_valid | bad),
                         o.data.eq(pend), o.first.eq(pend_first | ~pend_valid), o.last.eq(1),
                         o.error.eq(bad)]
        with m.Else():
            m.d.comb += [self.o_stream.valid.eq(produce & pend_valid),
                         o.data.eq(pend), o.first.eq(pend_first)]
        m.d.comb += self.i_stream.ready.eq(~self.o_stream.valid | self.o_stream.ready)

        with m.If(self.i_stream.valid & self.i_stream.ready):
            with m.If(delim):
                m.d.sync += [in_frame.eq(0), rem.eq(0), zero_next.eq(0), pend_valid.eq(0),
                             emitted.eq(0)]
            with m.Else():
                m.d.sync += in_frame.eq(1)
                with m.If(rem == 0):
                    m.d.sync += [rem.eq(b - 1), zero_next.eq(b != 0xFF)]
                with m.Else():
                    m.d.sync += rem.eq(rem - 1)
                with m.If(produce):
                    m.d.sync += [pend.eq(new_byte), pend_valid.eq(1), pend_first.eq(~emitted),
                                 emitted.eq(1)]
        return m
