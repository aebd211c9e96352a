"""FlushEngine: drains complete partial-journal entries, oldest first, to a stream of words.

Each entry goes out as exactly the bytes of `firmware.abi.entry` (little-endian, one
`datapath_bits` word per beat, `first` on its first beat and `last` on its last): the header
is rebuilt from the entry's seq, the ring's header RAM (a header word within the timestamp or
the lba reads that field's RAM word) and its per-slot registers, the data is read from the ring's
data RAM, and the CRC-32C is computed in flight over header and data (`hdl.crc.CRC32C`) and
sent as the trailer with its zero pad.

A *drain* starts on one of four triggers and lasts until every complete entry (`done`) has
been sent: a resend request, the flush command, the ring fill reaching `watermark` (0 = off),
or the periodic timer (`timer_period` cycles, 0 = off). Sending does not free anything: the
ring's tail (`acked`) moves only on an acknowledge from the host (`ack`, "every entry up to and
including `seq` is stored"), and `resend` rewinds to the oldest unacknowledged entry
(go-back-N) at the next entry boundary.

Sequence numbers are 32 bits where they are counters, the host's (`ack`) or in an entry, but
`acked`, `flushed`, the next and current seq and the ring's `done` and `head` are always within
`depth` of each other, so the engine compares them on their differences' low bits (at most
`slot_bits + 2`, enough for -depth..depth).

Datapath: a three-stage pipeline (choose the word and register its RAM addresses; the RAMs
read; then assemble the word, update the CRC and push it into a small FIFO, `hdl.block_fifo`,
whose read side is the output stream), so an entry follows the previous one with no idle cycle
while the output is ready. The registered addresses keep the choice and the RAMs' address
setup in separate cycles (on an ECP5 the two together were the image's longest path).
"""

import enum

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out

from firmware.abi.entry import Kind
from hdl.block_fifo import BlockFIFO
from hdl.crc import CRC32C
from hdl.journal_ring import (
    HEADER_BITS,
    KIND_BITS,
    META_BITS,
    META_WORDS,
    MODE_BITS,
    STATUS_BITS,
    TRAILER_BITS,
    HeaderLayout,
    check_geometry,
)
from hdl.timestamper import SEQ_BITS
from hdl.write_path import beat_layout


class FlushTrigger(enum.IntEnum):
    NONE = 0
    WATERMARK = 1
    TIMER = 2
    COMMAND = 3
    RESEND = 4


AckLayout = data.StructLayout({"seq": SEQ_BITS})

OUT_FIFO_DEPTH = 8


class FlushEngine(wiring.Component):
    """Reads complete entries from a `JournalRing` and streams them out; tail moves on acks."""

    def __init__(self, *, port: int = 0, block_bytes: int = 512, datapath_bits: int = 64,
                 depth: int = 16):
        check_geometry(self, block_bytes, datapath_bits, depth)
        self.port = port
        self.block_bytes = block_bytes
        self.width = datapath_bits
        self.block_words = block_bytes * 8 // datapath_bits
        self.header_words = HEADER_BITS // datapath_bits
        self.trailer_words = TRAILER_BITS // datapath_bits
        self.depth = depth
        self.slot_bits = (depth - 1).bit_length()
        super().__init__({
            "done": In(self.slot_bits + 1),
            "fill": In(range(depth + 1)),
            "acked": Out(SEQ_BITS),
            "hold": Out(self.slot_bits + 1),
            "meta_r": In(ReadPort.Signature(addr_width=self.slot_bits + 1, shape=META_BITS)),
            "data_r": In(ReadPort.Signature(addr_width=(depth * self.block_words - 1).bit_length(),
                                             shape=datapath_bits)),
            "slot_addr": Out(self.slot_bits),
            "status": In(STATUS_BITS),
            "entry_kind": In(KIND_BITS),
            "entry_mode": In(MODE_BITS),
            "watermark": In(range(depth + 1)),
            "timer_period": In(32),
            "flush_cmd": In(1),
            "resend": In(1),
            "ack": In(stream.Signature(AckLayout)),
            "out": Out(stream.Signature(beat_layout(datapath_bits))),
            "trigger": Out(3),
            "draining": Out(1),
            "flushed": Out(32),
            "resent": Out(1),                   # events: a one-cycle pulse each (`regmap.EVENTS`)
            "resend_requests": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        hw, bw, tw = self.header_words, self.block_words, self.trailer_words
        last_k = hw + bw + tw - 1
        near = self.slot_bits + 2      # bits of a difference of two seqs within `depth`

        def ahead(a, b):
            """`a` is after `b`, two seqs within `depth` of each other."""
            diff = (a - b)[:near]
            return (diff != 0) & ~diff[-1]

        def same(a, b):
            """`a` equals `b`, two seqs within `depth` of each other."""
            return a[:near - 1] == b[:near - 1]

        fifo = m.submodules.fifo = BlockFIFO(width=len(self.out.payload.as_value()),
                                             depth=OUT_FIFO_DEPTH)
        crc = m.submodules.crc = CRC32C(self.width)
        m.d.comb += [self.out.valid.eq(fifo.r_rdy), self.out.payload.eq(fifo.r_data),
                     fifo.r_en.eq(self.out.ready)]

        # --- acknowledges and the ring's tail -------------------------------------------------
        sent_hw = self.flushed                     # every seq below it went out at least once
        m.d.comb += self.ack.ready.eq(1)
        # The host's seq is any 32-bit value: it acknowledges when acked <= seq < sent_hw, where
        # sent_hw - acked <= depth.
        ack_offset = (self.ack.payload.seq - self.acked)[:SEQ_BITS]
        with m.If(self.ack.valid & (ack_offset[near - 1:] == 0)
                  & (ack_offset[:near - 1] < (sent_hw - self.acked)[:near - 1])):
            m.d.sync += self.acked.eq(self.ack.payload.seq + 1)

        # --- triggers --------------------------------------------------------------------------
        resend_pending = Signal()
        cmd_pending = Signal()
        timer_pending = Signal()
        timer = Signal(32)
        watermark_hit = (self.watermark != 0) & (self.fill >= self.watermark)

        # --- stage A: choose the next word and issue its RAM reads -----------------------------
        cur = Signal(SEQ_BITS)        # seq being sent (or last started)
        in_entry = Signal()
        k = Signal(range(last_k + 1))
        can_issue = fifo.level < OUT_FIFO_DEPTH - 3     # room for the words still in flight

        # The next seq to start (`eff_send`) is the one after `cur`, or `acked` on a resend or
        # once the host has acknowledged past it. Chosen between starts, `acked` stays the
        # choice until the next start (`acked` only grows): `from_acked` remembers it.
        from_acked = Signal(init=1)
        after_cur = Signal(SEQ_BITS)
        use_acked = from_acked | resend_pending | ahead(self.acked, after_cur)
        eff_send = Signal(SEQ_BITS)
        m.d.comb += [after_cur.eq(cur + 1), eff_send.eq(Mux(use_acked, self.acked, after_cur))]
        have_work = eff_send[:len(self.done)] != self.done

        start = Signal()
        issue = Signal()
        with m.If(~in_entry):
            m.d.sync += [resend_pending.eq(0), cmd_pending.eq(0), timer_pending.eq(0)]
            m.d.sync += from_acked.eq(use_acked)
            reason = Signal(3)
            with m.If(resend_pending):
                m.d.comb += reason.eq(FlushTrigger.RESEND)
            with m.Elif(cmd_pending):
                m.d.comb += reason.eq(FlushTrigger.COMMAND)
            with m.Elif(watermark_hit):
                m.d.comb += reason.eq(FlushTrigger.WATERMARK)
            with m.Elif(timer_pending):
                m.d.comb += reason.eq(FlushTrigger.TIMER)
            with m.If(~have_work):
                m.d.sync += self.draining.eq(0)
            with m.Elif(self.draining | (reason != FlushTrigger.NONE)):
                with m.If(~self.draining | (reason == FlushTrigger.RESEND)):
                    m.d.sync += [self.draining.eq(1), self.trigger.eq(reason)]
                with m.If(can_issue):
                    m.d.comb += [start.eq(1), issue.eq(1)]
                with m.Else():
                    # Keep pending requests until the entry can start.
                    m.d.sync += [resend_pending.eq(resend_pending), cmd_pending.eq(cmd_pending),
                                 timer_pending.eq(timer_pending), self.draining.eq(1)]
        with m.Else():
            m.d.comb += issue.eq(can_issue)

        # Requests arriving now are latched after the boundary's clear, so none is lost.
        with m.If(self.resend):
            m.d.comb += self.resend_requests.eq(1)
            m.d.sync += resend_pending.eq(1)
        with m.If(self.flush_cmd):
            m.d.sync += cmd_pending.eq(1)
        with m.If(self.timer_period != 0):
            m.d.sync += timer.eq(timer + 1)
            with m.If(timer + 1 >= self.timer_period):
                m.d.sync += [timer.eq(0), timer_pending.eq(1)]

        word_seq = Signal(SEQ_BITS)
        m.d.comb += word_seq.eq(Cat(cur))
        with m.If(start):
            m.d.comb += word_seq.eq(eff_send)
        word_k = Signal.like(k)
        m.d.comb += word_k.eq(Cat(k))
        with m.If(start):
            m.d.comb += word_k.eq(0)
        slot = word_seq[:self.slot_bits]
        # The RAM addresses are registered before the RAMs' own read registers: the choice of
        # the next word (acknowledges, triggers, resend) and the address arithmetic then take
        # one cycle and the RAM's address setup another, so the words come out two cycles after
        # their issue (stage B below, after a register stage A2).
        assert META_WORDS == ("timestamp", "lba")
        lba_word = HeaderLayout["lba"].offset // self.width    # header words from here read the lba
        m.d.sync += [
            self.meta_r.addr.eq(Cat(word_k >= lba_word, slot)),
            self.data_r.addr.eq(slot * bw + (word_k - hw)[:len(self.data_r.addr)]),
        ]
        m.d.comb += [self.meta_r.en.eq(1), self.data_r.en.eq(1)]

        # Read at stage B's slot, which is this entry's once it has issued two words (hw >= 4).
        marker = self.entry_kind == Kind.PORT_INVALID
        with m.If(start):
            m.d.sync += [cur.eq(eff_send), from_acked.eq(0)]
            with m.If(same(eff_send, sent_hw)):
                m.d.sync += self.flushed.eq(self.flushed + 1)
            with m.Else():
                m.d.comb += self.resent.eq(1)
        with m.If(issue):
            m.d.sync += [in_entry.eq(1), k.eq(word_k + 1)]
            with m.If((word_k == hw - 1) & marker):
                m.d.sync += k.eq(hw + bw)
            with m.If(word_k == last_k):
                m.d.sync += [in_entry.eq(0), k.eq(0)]

        # The ring's tail (modulo 2·depth): acked, or the entry being sent if acked passed it.
        m.d.comb += self.hold.eq(self.acked)
        with m.If(in_entry & ahead(self.acked, cur)):
            m.d.comb += self.hold.eq(cur)

        # --- stage B: assemble the word, CRC in flight, into the output FIFO -------------------
        a2_valid, b_valid = Signal(), Signal()
        a2_k, b_k = Signal.like(k), Signal.like(k)
        a2_slot, b_slot = Signal(self.slot_bits), Signal(self.slot_bits)
        m.d.sync += [a2_valid.eq(issue), a2_k.eq(word_k), a2_slot.eq(slot),
                     b_valid.eq(a2_valid), b_k.eq(a2_k), b_slot.eq(a2_slot)]
        m.d.comb += self.slot_addr.eq(b_slot)

        # `cur` is still this entry's seq at stage B of its header words: the next entry starts
        # after this one's last word issues, at least one trailer word after its header's.
        header = Signal(HeaderLayout)
        m.d.comb += [
            header.seq.eq(cur), header.port.eq(self.port), header.mode.eq(self.entry_mode),
            header.status.eq(self.status), header.kind.eq(self.entry_kind),
            header.timestamp.eq(self.meta_r.data), header.lba.eq(self.meta_r.data),
            header.length.eq(Const(self.block_bytes) * (self.entry_kind == Kind.WRITE)),
        ]
        trailer = Cat(crc.crc, Const(0, 32))
        word = Signal(self.width)
        is_trailer = b_k >= hw + bw
        with m.If(b_k < hw):
            m.d.comb += word.eq(header.as_value().word_select(b_k[:max(1, (hw - 1).bit_length())],
                                                              self.width))
        with m.Elif(~is_trailer):
            m.d.comb += word.eq(self.data_r.data)
        with m.Else():
            m.d.comb += word.eq(trailer.word_select((b_k - hw - bw)[:max(1, (tw - 1).bit_length())],
                                                    self.width))
        out_beat = Signal(self.out.payload.shape())
        m.d.comb += [out_beat.data.eq(word), out_beat.first.eq(b_k == 0),
                     out_beat.last.eq(b_k == last_k),
                     fifo.w_en.eq(b_valid), fifo.w_data.eq(out_beat)]
        m.d.comb += [crc.data.valid.eq(b_valid & ~is_trailer), crc.data.payload.data.eq(word),
                     crc.data.payload.first.eq(b_k == 0)]
        return m
