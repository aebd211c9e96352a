"""Write path of a journal port: the seed's three-phase write (figure 8), redo and copy-on-write.

A header beat's route (forward only, journal, or mark the port invalid first) is chosen the cycle
it arrives (a write's once the in-flight queue has room for its primary write), and taken from the
next on. The state is one-hot and the in-flight queue's room and occupancy are registered flags, so
every handshake and the take (the stamp's and the ring's enables) are a gate of registers and the
partner's ready or valid; a data beat outside a request is consumed the cycle after it is seen.
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
        ing, pw, rcmd, rd = self.ingress, self.pri_write, self.pri_rcmd, self.pri_rdata

        # The state, one-hot: a register per state (HEADER is one per route), and two more that
        # are unions of states, so that every handshake is a gate of registers and the partner's
        # ready or valid.
        idle = Signal(init=1)
        forward, redo, cow, mark = Signal(), Signal(), Signal(), Signal()   # HEADER, by route
        writing = Signal()          # ingress data beats go to primary storage ...
        journal = Signal()          # ... and, while this is high, into the ring
        cow_read, cow_issue, marking = Signal(), Signal(), Signal()
        drain = Signal()            # DRAIN: the new data of a failed copy-on-write is consumed
        drop = Signal()             # a data beat outside a request is consumed
        to_write = Signal()         # forward | redo | writing: ingress beats go to pri_write
        sink = Signal()             # drain | drop: ingress beats go nowhere

        # The beat of the block (a write's data, a pre-image read, a drain): it counts every block
        # through to its end and so is 0 again when the next one starts.
        beat = Signal(range(bw))
        at_last = Signal(init=bw == 1)      # beat == bw - 1
        lba = Signal(64)
        read_failed = Signal()
        meta_pending = Signal(len(META_WORDS))      # one-hot: the header word to write now
        slot = self.stamp.seq[:self.slot_bits]

        # The in-flight queue: a write is queued the cycle after its header beat went to primary
        # storage (`issue`; the slot of a redo write is known from then on), and the queue keeps
        # a registered "has room" flag, which a header's route waits for in IDLE (only completions
        # change the queue from there to its issue), and a registered "not empty", the ready of
        # the completions.
        inflight = m.submodules.inflight = SyncFIFO(width=self.slot_bits + 1, depth=self.max_inflight)
        issue, issue_journal = Signal(), Signal()
        room, pending = Signal(init=1), Signal()
        completing = self.pri_wresp.valid & pending
        level = inflight.level + issue - completing
        m.d.sync += [
            issue.eq(pw.valid & pw.ready & pw.payload.first), issue_journal.eq(~forward),
            room.eq(level < self.max_inflight), pending.eq(level != 0),
        ]
        m.d.comb += [
            inflight.w_en.eq(issue),
            inflight.w_data.eq(Cat(slot, issue_journal)),
            inflight.r_en.eq(completing),
        ]

        # The handshakes.
        m.d.comb += [
            ing.ready.eq((to_write & pw.ready) | (cow & rcmd.ready) | sink),
            # A header's valid from registers alone: HEADER is entered on the ingress's valid, which
            # holds until the beat is taken (a stream's rule), and the take must not depend on it.
            pw.valid.eq((writing & ing.valid) | forward | redo | cow_issue),
            pw.payload.data.eq(Mux(cow_issue, lba, ing.payload.data)),
            pw.payload.first.eq(forward | redo | cow_issue),
            pw.payload.last.eq(writing & at_last),
            rcmd.valid.eq(cow),
            rcmd.payload.lba.eq(ing.payload.data),
            rd.ready.eq(cow_read),
            self.pri_wresp.ready.eq(pending),
        ]

        # Phase 1: the take, its stamp and its allocation.
        m.d.comb += [
            self.take.eq((redo & pw.ready) | (cow & rcmd.ready) | mark),
            self.unjournaled.eq(forward & pw.ready),
            self.alloc.eq(self.take),
            self.alloc_kind.eq(Mux(mark, Kind.PORT_INVALID, Kind.WRITE)),
            self.alloc_mode.eq(Mux(mark, self.mode, Mux(cow, Mode.COPY_ON_WRITE, Mode.REDO))),
        ]

        # Phase 1, second and third cycles: the stamp is registered, write the header words.
        assert META_WORDS == ("timestamp", "lba")
        m.d.sync += meta_pending.eq(meta_pending << 1)
        with m.If(self.take):
            m.d.sync += meta_pending.eq(1)
        m.d.comb += [
            self.meta_w.en.eq(meta_pending != 0),
            self.meta_w.addr.eq(Cat(meta_pending[1], slot)),
            self.meta_w.data.eq(Mux(meta_pending[1], lba, self.stamp.timestamp)),
            self.data_w.addr.eq(slot * bw + beat),
            self.data_w.data.eq(Mux(cow_read, rd.payload.data, ing.payload.data)),
            self.data_w.en.eq((journal & ing.valid & pw.ready) | (cow_read & rd.valid)),
        ]

        # Phase 3: completions come back in order of the writes issued.
        m.d.comb += [
            self.status_done.addr.eq(inflight.r_data[:self.slot_bits]),
            self.status_done.en.eq(completing & inflight.r_data[-1]),
            self.status_done.status.eq(Mux(self.pri_wresp.payload.ok, Status.OK, Status.PRIMARY_FAILED)),
            self.primary_failures.eq(completing & ~self.pri_wresp.payload.ok),
            self.status_now.addr.eq(slot),
        ]

        def next_beat():
            """Count a beat; True (an Amaranth value) on the block's last."""
            m.d.sync += [beat.eq(Mux(at_last, 0, beat + 1)),
                         at_last.eq(Mux(at_last, bw == 1, beat == bw - 2))]
            return at_last

        # The ring's room for a write: under INVALIDATE the last free slot is kept for a marker.
        room_write = Mux(self.policy == FullPolicy.INVALIDATE, self.fill < self.depth - 1,
                         self.fill < self.depth)

        with m.If(idle):
            # The header beat holds at ingress until taken: its lba is copied while it waits.
            m.d.sync += lba.eq(ing.payload.data)
        with m.If(self.reenable):
            m.d.sync += self.invalid.eq(0)

        # IDLE: a header's route is chosen (forward only for an invalid port, journal, or mark
        # the port invalid first) and taken from the next cycle on (HEADER), so the handshakes
        # and the stamp's and ring's enables start from registers.
        with m.If(idle & ing.valid):
            with m.If(~ing.payload.first):
                m.d.sync += [idle.eq(0), drop.eq(1), sink.eq(1)]
            with m.Elif(self.invalid):
                with m.If(room):
                    m.d.sync += [idle.eq(0), forward.eq(1), to_write.eq(1)]
            with m.Elif(room_write):
                with m.If(room & (self.mode == Mode.REDO)):
                    m.d.sync += [idle.eq(0), redo.eq(1), to_write.eq(1)]
                with m.Elif(room):
                    m.d.sync += [idle.eq(0), cow.eq(1)]
            with m.Elif((self.policy == FullPolicy.INVALIDATE) & (self.fill < self.depth)):
                m.d.sync += [idle.eq(0), mark.eq(1)]
            with m.Else():
                m.d.comb += self.stalling.eq(1)

        # HEADER: the header beat goes to primary storage (forward, redo: then the data beats
        # follow, written into the ring too in redo mode) or becomes the pre-image read (cow).
        with m.If((forward | redo) & pw.ready):
            m.d.sync += [forward.eq(0), redo.eq(0), writing.eq(1), journal.eq(redo)]
        with m.If(cow & rcmd.ready):
            m.d.sync += [cow.eq(0), cow_read.eq(1), read_failed.eq(0)]
        with m.If(mark):
            m.d.sync += [mark.eq(0), marking.eq(1)]

        with m.If(writing & ing.valid & pw.ready):
            with m.If(next_beat()):
                m.d.sync += [writing.eq(0), journal.eq(0), to_write.eq(0), idle.eq(1)]

        # Copy-on-write: the old block is read and journaled; then the primary write (its header
        # beat from the saved lba) if the read succeeded, else the new data is consumed.
        with m.If(cow_read & rd.valid):
            with m.If(~rd.payload.ok):
                m.d.sync += read_failed.eq(1)
            with m.If(next_beat()):
                m.d.sync += cow_read.eq(0)
                with m.If(read_failed | ~rd.payload.ok):
                    m.d.comb += [self.status_now.en.eq(1), self.status_now.status.eq(Status.JOURNAL_FAILED),
                                 self.journal_failures.eq(1)]
                    m.d.sync += [drain.eq(1), sink.eq(1)]
                with m.Else():
                    m.d.sync += cow_issue.eq(1)
        with m.If(cow_issue & pw.ready):
            m.d.sync += [cow_issue.eq(0), writing.eq(1), to_write.eq(1)]

        with m.If(drain & ing.valid):
            with m.If(next_beat()):
                m.d.sync += [drain.eq(0), sink.eq(0), idle.eq(1)]
        with m.If(drop):
            m.d.comb += self.protocol_errors.eq(ing.valid)
            m.d.sync += [drop.eq(0), sink.eq(0), idle.eq(1)]

        with m.If(marking):
            m.d.comb += [self.status_now.en.eq(1), self.status_now.status.eq(Status.OK),
                         self.markers.eq(1)]
            m.d.sync += [marking.eq(0), self.invalid.eq(1), idle.eq(1)]
        return m
