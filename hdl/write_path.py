"""Write path of a journal port: the seed's three-phase write (figure 8), redo and copy-on-write.

A header beat's route (forward only, journal, or mark the port invalid first) is chosen the cycle
it arrives and taken the next (both a register away from the handshakes and enables they drive).
Phase 1, when the request's header beat is accepted: take the (timestamp, port, seq) stamp,
allocate the ring slot `seq % depth` with the entry's kind and mode, and write the header fields
known now into the ring's header RAM: the timestamp in the next cycle (the stamp is registered),
the lba in the one after (`META_WORDS`; the next request takes at the earliest in that cycle, so
both still hold this entry's values).
Phase 2: commit the block to the ring and issue the primary write. In redo mode both happen at
once: each data beat is written into the ring and forwarded to primary storage in the same
cycle. In copy-on-write mode (figure 11) the old block is read from primary storage first and
journaled; only if that read succeeded is the primary write issued (else the entry's status is
JOURNAL_FAILED and the new data is consumed without being written anywhere).
Phase 3: the primary completion (in order, several writes in flight) records OK or
PRIMARY_FAILED in the entry.

Ring full: with `policy` = BACKPRESSURE (0) ingress waits for the host to acknowledge entries.
With `policy` = INVALIDATE (1) the last free slot is kept for a marker: when a write finds no
room, the port writes a `Kind.PORT_INVALID` marker (stamped like a write, its own seq, no data,
`lba` = the first write not journaled, status OK) and becomes *invalid*: from then on writes
still go to primary storage but are not journaled (counted in `unjournaled`) until the host
pulses `reenable`. Nothing is dropped silently.
"""

import enum

from amaranth.hdl import Cat, Module, Mux, Signal, Value
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import WritePort
from amaranth.lib.wiring import In, Out

from firmware.abi.entry import Kind, Mode, Status
from hdl.journal_ring import KIND_BITS, META_BITS, META_WORDS, MODE_BITS, StatusWrite, check_geometry
from hdl.timestamper import StampLayout


class FullPolicy(enum.IntEnum):
    BACKPRESSURE = 0
    INVALIDATE = 1


def beat_layout(datapath_bits: int) -> data.StructLayout:
    """A beat of a block request: a header beat (`first`, data = lba) then the data beats."""
    return data.StructLayout({"data": datapath_bits, "first": 1, "last": 1})


def read_beat_layout(datapath_bits: int) -> data.StructLayout:
    """A beat of a pre-image read: `ok` low on any beat fails the whole read."""
    return data.StructLayout({"data": datapath_bits, "last": 1, "ok": 1})


ReadCommand = data.StructLayout({"lba": 64})
WriteResponse = data.StructLayout({"ok": 1})


def lba_in_volume(lba: Value, blocks: int) -> Value:
    """`lba` < `blocks` (a volume's size, fixed when built) as "no bit above the size's and the
    rest below it": a compare over all 64 bits is a carry chain, a logic cell a bit on an iCE40."""
    top = blocks.bit_length()
    return (lba[top:] == 0) & (lba[:top] < blocks)


def port_io_members(datapath_bits: int) -> dict:
    """A port's two sides as signature members, from the port's view: block writes from a
    server in, and the primary-storage interface (writes, completions, pre-image reads) out."""
    beat = beat_layout(datapath_bits)
    return {
        "ingress": In(stream.Signature(beat)),
        "pri_write": Out(stream.Signature(beat)),
        "pri_wresp": In(stream.Signature(WriteResponse)),
        "pri_rcmd": Out(stream.Signature(ReadCommand)),
        "pri_rdata": In(stream.Signature(read_beat_layout(datapath_bits))),
    }


class WritePath(wiring.Component):
    """Ingress → ring + primary storage, with phase-3 status from primary completions."""

    def __init__(self, *, block_bytes: int = 512, datapath_bits: int = 64, depth: int = 16,
                 max_inflight: int = 4):
        check_geometry(self, block_bytes, datapath_bits, depth)
        self.block_words = block_bytes * 8 // datapath_bits
        self.depth = depth
        self.slot_bits = (depth - 1).bit_length()
        self.max_inflight = max_inflight
        super().__init__({
            "mode": In(1),
            "policy": In(1),
            "reenable": In(1),
            **port_io_members(datapath_bits),
            "take": Out(1),
            "stamp": In(StampLayout),
            "alloc": Out(1),
            "alloc_kind": Out(KIND_BITS),
            "alloc_mode": Out(MODE_BITS),
            "fill": In(range(depth + 1)),
            "meta_w": In(WritePort.Signature(addr_width=self.slot_bits + 1, shape=META_BITS)),
            "data_w": In(WritePort.Signature(addr_width=(depth * self.block_words - 1).bit_length(),
                                              shape=datapath_bits)),
            "status_now": Out(StatusWrite),
            "status_done": Out(StatusWrite),
            "invalid": Out(1),
            "stalling": Out(1),
            "primary_failures": Out(1),         # events: a one-cycle pulse each (`regmap.EVENTS`)
            "journal_failures": Out(1),
            "unjournaled": Out(1),
            "markers": Out(1),
            "protocol_errors": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        bw = self.block_words
        ing, pw = self.ingress, self.pri_write

        inflight = m.submodules.inflight = SyncFIFO(width=self.slot_bits + 1, depth=self.max_inflight)
        slot = self.stamp.seq[:self.slot_bits]
        beat = Signal(range(bw))
        lba = Signal(64)
        journal = Signal()          # data beats in DATA state also go to the ring
        read_failed = Signal()
        meta_pending = Signal(len(META_WORDS))      # one-hot: the header word to write now

        # A header's route, chosen in IDLE and taken in HEADER a cycle later (so the handshakes
        # with primary storage and the stamp's and ring's enables start from registers): forward
        # only (an invalid port), journal (redo or copy-on-write), or mark the port invalid first.
        # Each is high only in HEADER: the take is a gate of registers and the storage's readies.
        forward, redo, cow, mark = Signal(), Signal(), Signal(), Signal()
        m.d.comb += [
            self.take.eq((redo & inflight.w_rdy & pw.ready)
                         | (cow & inflight.w_rdy & self.pri_rcmd.ready) | mark),
            self.alloc_kind.eq(Mux(mark, Kind.PORT_INVALID, Kind.WRITE)),
            self.alloc_mode.eq(Mux(mark, self.mode, Mux(cow, Mode.COPY_ON_WRITE, Mode.REDO))),
        ]
        # The in-flight queue's writes, from registers too: a forwarded header (journaled bit
        # clear), the cycle after a redo header's take (REDO_ISSUE), a copy-on-write's header
        # (COW_ISSUE, once its pre-image is journaled).
        redo_issue, cow_issue = Signal(), Signal()
        forwarding = forward & inflight.w_rdy & pw.ready
        m.d.sync += redo_issue.eq(redo & self.take)
        m.d.comb += [
            self.unjournaled.eq(forwarding),
            inflight.w_en.eq(forwarding | redo_issue | (cow_issue & pw.ready)),
            inflight.w_data.eq(Cat(slot, ~forward)),
        ]

        room_write = Signal()
        with m.If(self.policy == FullPolicy.INVALIDATE):
            m.d.comb += room_write.eq(self.fill < self.depth - 1)
        with m.Else():
            m.d.comb += room_write.eq(self.fill < self.depth)

        # Phase 1, second and third cycles: the stamp is registered, write the header words.
        assert META_WORDS == ("timestamp", "lba")
        m.d.sync += meta_pending.eq(meta_pending << 1)
        m.d.comb += [
            self.meta_w.en.eq(meta_pending != 0),
            self.meta_w.addr.eq(Cat(meta_pending[1], slot)),
            self.meta_w.data.eq(Mux(meta_pending[1], lba, self.stamp.timestamp)),
            self.data_w.addr.eq(slot * bw + beat),
            self.alloc.eq(self.take),
        ]

        def start_entry():
            m.d.sync += [meta_pending.eq(1), forward.eq(0), redo.eq(0), cow.eq(0), mark.eq(0)]

        def next_beat(last_state):
            m.d.sync += beat.eq(beat + 1)
            with m.If(beat == bw - 1):
                m.next = last_state

        # Phase 3: completions come back in order of the writes issued.
        m.d.comb += [
            self.pri_wresp.ready.eq(inflight.r_rdy),
            inflight.r_en.eq(self.pri_wresp.valid),
            self.status_done.addr.eq(inflight.r_data[:self.slot_bits]),
            self.status_done.en.eq(self.pri_wresp.valid & inflight.r_rdy & inflight.r_data[-1]),
            self.status_done.status.eq(Status.OK),
        ]
        with m.If(~self.pri_wresp.payload.ok):
            m.d.comb += self.status_done.status.eq(Status.PRIMARY_FAILED)
        with m.If(self.pri_wresp.valid & inflight.r_rdy & ~self.pri_wresp.payload.ok):
            m.d.comb += self.primary_failures.eq(1)

        m.d.comb += self.status_now.addr.eq(slot)
        with m.If(self.reenable):
            m.d.sync += self.invalid.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(ing.valid & ~ing.payload.first):
                    m.d.comb += ing.ready.eq(1)   # a data beat outside a request: count, drop
                    m.d.comb += self.protocol_errors.eq(1)
                with m.Elif(ing.valid & self.invalid):
                    m.d.sync += forward.eq(1)
                    m.next = "HEADER"
                with m.Elif(ing.valid & room_write):
                    m.d.sync += [redo.eq(self.mode == Mode.REDO), cow.eq(self.mode != Mode.REDO)]
                    m.next = "HEADER"
                with m.Elif(ing.valid & (self.policy == FullPolicy.INVALIDATE)
                            & (self.fill < self.depth)):
                    m.d.sync += mark.eq(1)
                    m.next = "HEADER"
                with m.Elif(ing.valid):
                    m.d.comb += self.stalling.eq(1)

            with m.State("HEADER"):
                # The header holds at ingress until taken: its lba is copied every cycle.
                m.d.sync += [lba.eq(ing.payload.data), beat.eq(0)]
                with m.If(forward):
                    # Not journaled: forward to primary storage only.
                    m.d.comb += [pw.valid.eq(inflight.w_rdy), pw.payload.eq(ing.payload),
                                 ing.ready.eq(pw.ready & inflight.w_rdy)]
                    with m.If(pw.valid & pw.ready):
                        m.d.sync += [journal.eq(0), forward.eq(0)]
                        m.next = "DATA"
                with m.If(redo):
                    m.d.comb += [pw.valid.eq(inflight.w_rdy), pw.payload.eq(ing.payload),
                                 ing.ready.eq(pw.ready & inflight.w_rdy)]
                    with m.If(pw.valid & pw.ready):
                        start_entry()
                        m.d.sync += journal.eq(1)
                        m.next = "REDO_ISSUE"
                with m.If(cow):
                    m.d.comb += [self.pri_rcmd.valid.eq(inflight.w_rdy),
                                 self.pri_rcmd.payload.lba.eq(ing.payload.data),
                                 ing.ready.eq(self.pri_rcmd.ready & inflight.w_rdy)]
                    with m.If(self.pri_rcmd.valid & self.pri_rcmd.ready):
                        start_entry()
                        m.d.sync += read_failed.eq(0)
                        m.next = "COW_READ"
                with m.If(mark):
                    start_entry()
                    m.next = "MARK"

            with m.State("REDO_ISSUE"):
                # The header went to primary storage with the take; its slot is known now.
                m.next = "DATA"
                self._forward(m, journal, beat, next_beat)

            with m.State("DATA"):
                self._forward(m, journal, beat, next_beat)

            with m.State("COW_READ"):
                rd = self.pri_rdata
                m.d.comb += [rd.ready.eq(1), self.data_w.data.eq(rd.payload.data),
                             self.data_w.en.eq(rd.valid)]
                with m.If(rd.valid):
                    m.d.sync += beat.eq(beat + 1)
                    with m.If(~rd.payload.ok):
                        m.d.sync += read_failed.eq(1)
                    with m.If(beat == bw - 1):
                        m.d.sync += beat.eq(0)
                        with m.If(read_failed | ~rd.payload.ok):
                            m.d.comb += [self.status_now.en.eq(1),
                                         self.status_now.status.eq(Status.JOURNAL_FAILED)]
                            m.d.comb += self.journal_failures.eq(1)
                            m.next = "DRAIN"
                        with m.Else():
                            m.d.sync += cow_issue.eq(1)
                            m.next = "COW_ISSUE"

            with m.State("COW_ISSUE"):
                # Pre-image journaled: now the primary write (header beat from the saved lba).
                m.d.comb += [pw.valid.eq(1), pw.payload.data.eq(lba), pw.payload.first.eq(1)]
                with m.If(pw.ready):
                    m.d.sync += [journal.eq(0), beat.eq(0), cow_issue.eq(0)]
                    m.next = "DATA"

            with m.State("DRAIN"):
                # The pre-image read failed: the new data is consumed, primary is not written.
                m.d.comb += ing.ready.eq(1)
                with m.If(ing.valid):
                    next_beat("IDLE")

            with m.State("MARK"):
                m.d.comb += [self.status_now.en.eq(1), self.status_now.status.eq(Status.OK)]
                m.d.comb += self.markers.eq(1)
                m.d.sync += self.invalid.eq(1)
                m.next = "IDLE"
        return m

    def _forward(self, m, journal, beat, next_beat):
        """One data beat: to primary storage and, when journaling, into the ring."""
        ing, pw = self.ingress, self.pri_write
        m.d.comb += [pw.valid.eq(ing.valid), pw.payload.data.eq(ing.payload.data),
                     pw.payload.last.eq(beat == self.block_words - 1),
                     ing.ready.eq(pw.ready),
                     self.data_w.data.eq(ing.payload.data),
                     self.data_w.en.eq(journal & ing.valid & pw.ready)]
        with m.If(ing.valid & pw.ready):
            next_beat("IDLE")
