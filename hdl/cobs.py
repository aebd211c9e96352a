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
emits one byte per input byte at most, holding one byte back so it can mark `last`, from an
output register (it takes a byte every other cycle at most).
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
_OUT_FIFO_DEPTH = 5          # a byte a cycle through, on credit counted from the level a cycle ago

# What follows a group on the wire.
_TAIL_NONE, _TAIL_DELIM, _TAIL_EMPTY_DELIM = 0, 1, 2   # -, 0x00, 0x01 0x00


class COBSEncoder(wiring.Component):
    """Frames (bytes with `first`/`last`) in, COBS bytes with a 0x00 after every frame out.

    Its decisions are registers or a gate or two of them: the collector keeps flags on its byte
    count (0, 1, a full group's last byte), the emitter walks a group's bytes in phases (code,
    data, 0x01, 0x00) with its last data byte flagged a byte ahead, and issues on credit counted
    from the output FIFO's level a cycle ago."""

    i_stream: In(stream.Signature(FrameByte))
    o_stream: Out(stream.Signature(8))

    def elaborate(self, platform):
        m = Module()
        # A group is read from one half while the next is written into the other.
        mem = m.submodules.mem = Memory(shape=8, depth=2 * 256, init=[], attrs=NO_RW_CHECK)
        wp = mem.write_port()
        rp = mem.read_port()

        # Per half: full, data byte count (and whether it is 0 or 1), code byte, what follows.
        full = Signal(2)
        count = Array([Signal(range(MAX_GROUP + 1), name=f"count{i}") for i in range(2)])
        empty = Array([Signal(name=f"empty{i}") for i in range(2)])
        single = Array([Signal(name=f"single{i}") for i in range(2)])
        code = Array([Signal(8, name=f"code{i}") for i in range(2)])
        tail = Array([Signal(2, name=f"tail{i}") for i in range(2)])

        # --- collect: one group into half `wsel` ----------------------------------------------
        wsel = Signal()
        n = Signal(range(MAX_GROUP + 1))
        n_zero, n_one, n_max = Signal(init=1), Signal(), Signal()     # n is 0, 1, MAX_GROUP - 1
        byte = self.i_stream.payload
        m.d.comb += self.i_stream.ready.eq(~full.bit_select(wsel, 1))
        m.d.comb += [wp.addr.eq(Cat(n[:8], wsel)), wp.data.eq(byte.data)]
        close = Signal()
        with m.If(self.i_stream.valid & self.i_stream.ready):
            with m.If(byte.data != 0):
                m.d.comb += wp.en.eq(1)
                m.d.sync += [n.eq(n + 1), n_zero.eq(0), n_one.eq(n_zero), n_max.eq(n == MAX_GROUP - 2)]
                with m.If(n_max | byte.last):
                    m.d.comb += close.eq(1)
                    m.d.sync += [count[wsel].eq(n + 1), empty[wsel].eq(0), single[wsel].eq(n_zero),
                                 code[wsel].eq(n + 2),        # 0xFF for a full group
                                 tail[wsel].eq(Cat(byte.last, 0))]
            with m.Else():
                m.d.comb += close.eq(1)
                m.d.sync += [count[wsel].eq(n), empty[wsel].eq(n_zero), single[wsel].eq(n_one),
                             code[wsel].eq(n + 1), tail[wsel].eq(Cat(0, byte.last))]
        with m.If(close):
            m.d.sync += [n.eq(0), n_zero.eq(1), n_one.eq(0), n_max.eq(0), wsel.eq(~wsel),
                         full.bit_select(wsel, 1).eq(1)]

        # --- emit: code byte, the group's bytes, its tail; two stages into a small FIFO --------
        fifo = m.submodules.fifo = BlockFIFO(width=8, depth=_OUT_FIFO_DEPTH)
        m.d.comb += [self.o_stream.valid.eq(fifo.r_rdy), self.o_stream.payload.eq(fifo.r_data),
                     fifo.r_en.eq(self.o_stream.ready)]
        # A byte issued now is written two cycles later: the FIFO, by its level a cycle ago, has
        # room for it and the two before it (its level grew by one byte at most since).
        room = Signal()
        m.d.sync += room.eq(fifo.level <= _OUT_FIFO_DEPTH - 3)
        rsel = Signal()
        phase = Signal(2)       # the byte to issue: 0 code, 1 data, 2 0x01, 3 0x00 (`b_kind`'s)
        ra = Signal(8)          # the data byte's index in the group
        data_last = Signal()    # data byte `ra` is the group's last
        cnt, tl = count[rsel], tail[rsel]
        issue = full.bit_select(rsel, 1) & room
        m.d.comb += [rp.addr.eq(Cat(ra, rsel)), rp.en.eq(1)]
        b_valid = Signal()
        b_kind = Signal(2)      # 0 code, 1 data, 2 0x01, 3 0x00
        b_code = Signal(8)
        m.d.sync += b_valid.eq(issue)

        def after_data():
            """The group's data is issued: its tail's bytes next, or the next group."""
            with m.Switch(tl):
                with m.Case(_TAIL_DELIM):
                    m.d.sync += phase.eq(3)
                with m.Case(_TAIL_EMPTY_DELIM):
                    m.d.sync += phase.eq(2)
                with m.Default():
                    done()

        def done():
            m.d.sync += [phase.eq(0), full.bit_select(rsel, 1).eq(0), rsel.eq(~rsel)]

        with m.If(issue):
            m.d.sync += [b_kind.eq(phase), b_code.eq(code[rsel])]
            with m.Switch(phase):
                with m.Case(0):
                    m.d.sync += [ra.eq(0), data_last.eq(single[rsel])]
                    with m.If(empty[rsel]):
                        after_data()
                    with m.Else():
                        m.d.sync += phase.eq(1)
                with m.Case(1):
                    m.d.sync += [ra.eq(ra + 1), data_last.eq(ra + 2 == cnt)]
                    with m.If(data_last):
                        after_data()
                with m.Case(2):
                    m.d.sync += phase.eq(3)
                with m.Case(3):
                    done()
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
    and `error` set, so the consumer sees every defect. The output stream is a register (a byte
    comes out the cycle after the input byte that releases it), and an input byte is taken a
    cycle after it is offered (whether it is a delimiter is registered by then) while the output
    register is empty, so the decisions on a byte reach only registers.
    """

    i_stream: In(stream.Signature(8))
    o_stream: Out(stream.Signature(CheckedFrameByte))

    def elaborate(self, platform):
        m = Module()
        in_frame = Signal()         # a non-zero byte came since the last delimiter
        rem = Signal(8)             # data bytes left in the current group
        rem_nz = Signal()           # `rem` != 0
        zero_next = Signal()        # the current group stands for a zero if another one follows
        pend = Signal(8)            # the byte held back (so `last` can be set on it)
        pend_valid = Signal()
        pend_first = Signal()
        emitted = Signal()          # a byte of this frame was produced

        b = self.i_stream.payload
        # The byte offered is looked at a cycle before it is taken (it holds until then): whether
        # it is a delimiter is a register when the decisions need it.
        seen, delim = Signal(), Signal()
        m.d.sync += [seen.eq(self.i_stream.valid & ~self.i_stream.ready), delim.eq(b == 0)]
        produce = ~delim & (rem_nz | (in_frame & zero_next))
        new_byte = Signal(8)
        m.d.comb += new_byte.eq(Cat(b) & rem_nz.replicate(8))   # a code byte yields its zero

        o = self.o_stream
        # A byte is taken, once seen, while the output register is empty: a gate of registers
        # decides it (a byte every other cycle at most; a UART's come tens of cycles apart).
        m.d.comb += self.i_stream.ready.eq(seen & ~o.valid)
        with m.If(o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(self.i_stream.valid & self.i_stream.ready):
            with m.If(delim):
                with m.If(in_frame):
                    m.d.sync += [o.valid.eq(pend_valid | rem_nz), o.payload.data.eq(pend),
                                 o.payload.first.eq(pend_first | ~pend_valid), o.payload.last.eq(1),
                                 o.payload.error.eq(rem_nz)]
                m.d.sync += [in_frame.eq(0), rem.eq(0), rem_nz.eq(0), zero_next.eq(0), pend_valid.eq(0),
                             emitted.eq(0)]
            with m.Else():
                m.d.sync += in_frame.eq(1)
                with m.If(~rem_nz):
                    m.d.sync += [rem.eq(b - 1), rem_nz.eq(b != 1), zero_next.eq(b != 0xFF)]
                with m.Else():
                    m.d.sync += [rem.eq(rem - 1), rem_nz.eq(rem != 1)]
                with m.If(produce):
                    m.d.sync += [o.valid.eq(pend_valid), o.payload.data.eq(pend),
                                 o.payload.first.eq(pend_first), o.payload.last.eq(0), o.payload.error.eq(0),
                                 pend.eq(new_byte), pend_valid.eq(1), pend_first.eq(~emitted),
                                 emitted.eq(1)]
        return m
