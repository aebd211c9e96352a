"""FlushEngine: drains complete partial-journal entries, oldest first, to a stream of words.

Each entry goes out as exactly the bytes of `firmware.abi.entry` (little-endian, one
`datapath_bits` word per beat, `first` on its first beat and `last` on its last): the header
is rebuilt from the entry's seq, the ring's header RAM (a header word within the timestamp or
the lba reads that field's RAM word) and its per-slot registers, the data is read from the ring's
data RAM, and the CRC-32C is computed in flight over header and data (`hdl.crc`'s update) and
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

Datapath: a four-stage pipeline (choose the word and register its RAM addresses; the RAMs
read; assemble the word into a register; update the CRC and push the word, or the trailer,
into a small FIFO, `hdl.block_fifo`, whose read side is the output stream), so an entry follows
the previous one with no idle cycle while the output is ready. The registered addresses keep
the choice and the RAMs' address setup in separate cycles (on an ECP5 the two together were the
image's longest path), the registered word the RAMs' output and the CRC.

Timing (a 100 MHz ECP5 port clock): every decision is a few gates from flip-flops. The start
of an entry is decided a cycle ahead (`go`); whether there is work is registered, so the engine
sees the ring's `done` a cycle late; for two cycles after an acknowledge moves `acked` no entry
starts (the next seq follows it a cycle later); what a start changes besides the word
counter (the next seq, `flushed`, `resent`) follows a cycle later.
"""

import enum

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out

from firmware.abi.entry import Kind
from hdl.block_fifo import BlockFIFO
from hdl.crc import INIT, XOROUT, update_matrix
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


def _xor_of(value, mask: int):
    """The XOR of the bits of `value` set in `mask` (0 for none)."""
    bits = [value[i] for i in range(len(value)) if mask >> i & 1]
    return Cat(*bits).xor() if bits else 0


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
        m.d.comb += [self.out.valid.eq(fifo.r_rdy), self.out.payload.eq(fifo.r_data),
                     fifo.r_en.eq(self.out.ready)]

        # --- acknowledges and the ring's tail -------------------------------------------------
        sent_hw = self.flushed                     # every seq below it went out at least once
        m.d.comb += self.ack.ready.eq(1)
        # The host's seq is any 32-bit value: it acknowledges when acked <= seq < sent_hw, where
        # sent_hw - acked <= depth.
        ack_offset = (self.ack.payload.seq - self.acked)[:SEQ_BITS]
        acked_moved = Signal()          # `acked` changed this cycle: `send` follows it next cycle
        m.d.sync += acked_moved.eq(0)
        with m.If(self.ack.valid & (ack_offset[near - 1:] == 0)
                  & (ack_offset[:near - 1] < (sent_hw - self.acked)[:near - 1])):
            m.d.sync += [self.acked.eq(self.ack.payload.seq + 1), acked_moved.eq(1)]

        # --- triggers --------------------------------------------------------------------------
        resend_pending = Signal()
        cmd_pending = Signal()
        timer_pending = Signal()
        timer = Signal(32)
        watermark_hit = Signal()
        m.d.sync += watermark_hit.eq((self.watermark != 0) & (self.fill >= self.watermark))

        # --- stage A: choose the next word and issue its RAM reads -----------------------------
        cur = Signal(SEQ_BITS)        # seq being sent (or last started)
        in_entry = Signal()
        k = Signal(range(last_k + 1))
        can_issue = fifo.level < OUT_FIFO_DEPTH - 4     # room for the words still in flight

        # The next seq to start: `send`, the one after `cur`, or `acked` once the host has
        # acknowledged past it (`send` follows `acked` a cycle later), or `acked` itself while
        # a resend is pending. For two cycles after `acked` moves (`settling`: it moved, then
        # `send` followed) no decision is taken at a boundary, nor a start decided for the next
        # cycle: the flags below, registered a cycle before their use, were taken on old values.
        send = Signal(SEQ_BITS)
        eff_send = Mux(resend_pending, self.acked, send)
        settling, settling2 = Signal(), Signal()
        m.d.sync += settling2.eq(acked_moved)
        m.d.comb += settling.eq(acked_moved | settling2)

        # Whether there is work (an entry complete and not yet sent) is registered for both
        # choices of the next seq: the engine sees `done` a cycle late, as if the ring recorded
        # each completion a cycle later, and decides in one gate.
        work_send, work_acked = Signal(), Signal()
        m.d.sync += [work_send.eq(send[:len(self.done)] != self.done),
                     work_acked.eq(self.acked[:len(self.done)] != self.done)]
        have_work = Mux(resend_pending, work_acked, work_send)

        reason = Signal(3)
        with m.If(resend_pending):
            m.d.comb += reason.eq(FlushTrigger.RESEND)
        with m.Elif(cmd_pending):
            m.d.comb += reason.eq(FlushTrigger.COMMAND)
        with m.Elif(watermark_hit):
            m.d.comb += reason.eq(FlushTrigger.WATERMARK)
        with m.Elif(timer_pending):
            m.d.comb += reason.eq(FlushTrigger.TIMER)
        drain = have_work & (self.draining | (reason != FlushTrigger.NONE))

        # The start itself is decided a cycle ahead (`go`), so that it (a wide fanout) is one
        # gate from flip-flops. The decision holds a cycle later unless what it was taken on
        # changed: a start (then `in_entry`), an acknowledge (`settling`), a resend request
        # (`eff_send` becomes `acked`); other changes (a new trigger, a completed entry, words
        # leaving the FIFO) only make the entry start a cycle later. `new`: the start sends
        # `eff_send` for the first time (`flushed` counts it) rather than again (`resent`).
        go, new = Signal(), Signal()
        room = fifo.level + fifo.w_en < OUT_FIFO_DEPTH - 4      # can_issue next cycle
        m.d.sync += [go.eq(drain & room & ~settling & ~self.resend),
                     new.eq(same(eff_send, sent_hw))]
        boundary = ~in_entry & ~settling
        start = Signal()
        issue = Signal()
        m.d.comb += [start.eq(~in_entry & ~acked_moved & go),     # `go` implies ~settling2
                     issue.eq(start | (in_entry & can_issue))]

        # At a boundary the requests are served once an entry starts, or when there is nothing
        # to send; they are kept while an entry waits to start.
        with m.If(start | (boundary & ~have_work)):
            m.d.sync += [resend_pending.eq(0), cmd_pending.eq(0), timer_pending.eq(0)]
        with m.If(boundary & ~have_work):
            m.d.sync += self.draining.eq(0)
        with m.If(boundary & drain):
            m.d.sync += self.draining.eq(1)
            with m.If(~self.draining | (reason == FlushTrigger.RESEND)):
                m.d.sync += self.trigger.eq(reason)

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

        # The entry's seq, slot and kind are registers from its start on: the words' RAM
        # addresses are registered from `k` and `cur`, which is the new entry's from its second
        # word on; the first header word reads no RAM. The RAMs' own read registers follow, so a
        # word comes out two cycles after its issue (stage B below, after a register stage A2).
        assert META_WORDS == ("timestamp", "lba")
        assert HeaderLayout["timestamp"].offset >= 64, "the first word holds no RAM field"
        lba_word = HeaderLayout["lba"].offset // self.width    # header words from here read the lba
        slot = cur[:self.slot_bits]
        m.d.sync += [
            self.meta_r.addr.eq(Cat(k >= lba_word, slot)),
            self.data_r.addr.eq(slot * bw + (k - hw)[:len(self.data_r.addr)]),
        ]
        m.d.comb += [self.meta_r.en.eq(1), self.data_r.en.eq(1), self.slot_addr.eq(slot)]

        # The slot's registers are read at `cur`'s slot and registered: they are the entry's from
        # two cycles after its start, when its first word reaches stage B. A marker has no data
        # words; it is known well before its last header word issues (hw >= 4).
        kind, mode, status = Signal(KIND_BITS), Signal(MODE_BITS), Signal(STATUS_BITS)
        m.d.sync += [kind.eq(self.entry_kind), mode.eq(self.entry_mode), status.eq(self.status)]
        marker = kind == Kind.PORT_INVALID
        # Between entries `cur` follows the next seq: it is the new entry's from the cycle after
        # its start, when its first word's RAM reads (none) are issued. What else a start
        # changes follows a cycle later, long before the next boundary: `send` moves past the
        # entry, `flushed` counts it or `resent` pulses.
        started, counted, resent = Signal(), Signal(), Signal()
        m.d.sync += [started.eq(start), counted.eq(start & new), resent.eq(start & ~new)]
        m.d.comb += self.resent.eq(resent)
        with m.If(~in_entry):
            m.d.sync += cur.eq(eff_send)
        with m.If(started):
            m.d.sync += send.eq(cur + 1)
        with m.Elif(ahead(self.acked, send)):
            m.d.sync += send.eq(self.acked)
        with m.If(counted):
            m.d.sync += self.flushed.eq(self.flushed + 1)
        with m.If(issue):
            m.d.sync += [in_entry.eq(1), k.eq(k + 1)]
            with m.If((k == hw - 1) & marker):
                m.d.sync += k.eq(hw + bw)
            with m.If(k == last_k):
                m.d.sync += [in_entry.eq(0), k.eq(0)]

        # The ring's tail (modulo 2·depth): acked, or the entry being sent if acked passed it.
        m.d.comb += self.hold.eq(self.acked)
        with m.If(in_entry & ahead(self.acked, cur)):
            m.d.comb += self.hold.eq(cur)

        # --- stage B: assemble the word; the word's kind is decided at stage A2 ----------------
        a2_valid, b_valid = Signal(), Signal()
        a2_k = Signal.like(k)
        b_first, b_last, b_header, b_trailer = Signal(), Signal(), Signal(), Signal()
        b_index = Signal(max(1, (max(hw, tw) - 1).bit_length()))   # word within header/trailer
        m.d.sync += [
            a2_valid.eq(issue), a2_k.eq(k), b_valid.eq(a2_valid),
            b_first.eq(a2_k == 0), b_last.eq(a2_k == last_k),
            b_header.eq(a2_k < hw), b_trailer.eq(a2_k >= hw + bw),
            b_index.eq(Mux(a2_k < hw, a2_k, a2_k - hw - bw)[:len(b_index)]),
        ]

        # `cur` is still this entry's seq at stage B of its header words: the next entry starts
        # after this one's last word issues, at least one trailer word after its header's.
        header = Signal(HeaderLayout)
        m.d.comb += [
            header.seq.eq(cur), header.port.eq(self.port), header.mode.eq(mode),
            header.status.eq(status), header.kind.eq(kind),
            header.timestamp.eq(self.meta_r.data), header.lba.eq(self.meta_r.data),
            header.length.eq(Const(self.block_bytes) * (kind == Kind.WRITE)),
        ]

        header_word = header.as_value().word_select(b_index[:max(1, (hw - 1).bit_length())], self.width)

        # --- stage C: the CRC over the registered word, the trailer, into the output FIFO ------
        c_valid, c_first, c_last, c_trailer = Signal(), Signal(), Signal(), Signal()
        c_index = Signal.like(b_index)
        c_word = Signal(self.width)
        m.d.sync += [c_valid.eq(b_valid), c_first.eq(b_first), c_last.eq(b_last),
                     c_trailer.eq(b_trailer), c_index.eq(b_index),
                     c_word.eq(Mux(b_header, header_word, self.data_r.data))]
        # The CRC in two steps, each an XOR tree from flip-flops: a word's own term is registered
        # (`crc_in`), then folded into the register (`crc`) a cycle later; the trailer, at stage
        # C right after the last data word, folds that word's term in on its way out.
        # `crc` holds the CRC state XOR its initial value, which is the finished CRC (INIT and
        # the final XOR are both all ones) and restarts as 0 after the last trailer word: a
        # reset of its flip-flops rather than a select in front of its XORs.
        assert INIT == XOROUT == (1 << 32) - 1
        step = update_matrix(self.width)
        offset = Cat(*(_xor_of(Const(INIT, 32), s) for s, _ in step)) ^ INIT    # M·INIT ^ INIT
        crc, crc_in, crc_in_valid = Signal(32), Signal(32), Signal()
        m.d.sync += [crc_in.eq(Cat(*(_xor_of(c_word, d) for _, d in step)) ^ offset),
                     crc_in_valid.eq(c_valid & ~c_trailer)]
        advanced = Cat(*(_xor_of(crc, s) for s, _ in step)) ^ crc_in
        with m.If(crc_in_valid):
            m.d.sync += crc.eq(advanced)
        with m.If(c_valid & c_last):
            m.d.sync += crc.eq(0)
        trailer = Cat(Mux(crc_in_valid, advanced, crc), Const(0, 32))
        out_beat = Signal(self.out.payload.shape())
        m.d.comb += [
            out_beat.data.eq(c_word), out_beat.first.eq(c_first), out_beat.last.eq(c_last),
            fifo.w_en.eq(c_valid), fifo.w_data.eq(out_beat),
        ]
        with m.If(c_trailer):
            m.d.comb += out_beat.data.eq(trailer.word_select(c_index[:max(1, (tw - 1).bit_length())],
                                                             self.width))
        return m
