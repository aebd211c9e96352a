"""LinkController: the device side of the link protocol of `firmware.abi.frames`, over byte streams.

Receive: `rx` bytes → `COBSDecoder` → a request parser that keeps the first bytes of each
frame, runs CRC-32C (`hdl.crc`, 8 bits) over all of it and checks, in this order: COBS, at
least a header and a CRC, the CRC (the CRC of a frame with its CRC appended is the constant
`CRC_RESIDUE`), the length field against the bytes received, the type (a request), the payload
size for the type, the port index. A defective frame is dropped, counted (`rx_*_errors`) and
answered by a NAK frame (payload: `NakReason`); nothing else happens. A good request acts:

| request | effect | response |
|---|---|---|
| IDENTIFY | — | IDENTITY (the `identity` bytes given at construction) |
| REG_READ addr, count | `count` register-bus reads, at send time | REG_VALUES addr, count, values |
| REG_WRITE addr, value | one register-bus write, now | REG_VALUES addr, 1, value read back |
| FLUSH | pulse the port's `flush_cmd` | the drain's JOURNAL frames and a FLUSH_MARK |
| ACK seq | the port's `ack` stream gets {seq} | ACKED: the port's `acknowledged` register |
| RESEND | pulse the port's `resend` | the resent entries in JOURNAL frames |
| INJECT_WRITE lba, block | `inject.start` (the block is in its buffer) | WRITTEN once the write ended |
| READ_BLOCK lba | a read on `store_rcmd`/`store_rdata` | BLOCK: lba, the block |

INJECT_WRITE and READ_BLOCK exist only with `store_blocks` > 0 (a standalone image: the port
writes go to a volume of that many blocks in on-chip RAM, `boards.storage.BlockStore`; without
it they are unknown types). While an INJECT_WRITE frame arrives, its block's bytes go straight
into the `Injector`'s buffer (`hdl/inject.py`); only a frame that passes every check starts the
injector, so a damaged frame changes nothing. Refused with a NAK: a port or lba out of range
(BAD_PORT, BAD_LBA), an INJECT_WRITE while the injector is busy, a READ_BLOCK while one is
pending (BUSY). The WRITTEN response (`firmware.abi.frames.WRITTEN`) is queued when the
injector is done and releases it once sent. READ_BLOCK's block is read through the store's
read stream into a frame buffer, like journal data, and sent as a BLOCK frame with the
request's seq.

Transmit: responses wait in a small queue (`hdl.block_fifo`) and go out between frames, before
anything else. Journal data is collected from the ports' `flush` streams (`datapath_bits` beats
of whole entries, little-endian) into one of two frame buffers (`lib.memory.Memory` of words of
the same width) while the other is sent, so the frame's length is known when its header goes
out. A JOURNAL frame holds whole entries of one port, in order: as many as fit in
`max_payload`, or until the port's drain pauses (no entry follows within a few cycles) or ends.
Ports take turns (round robin).

FLUSH_MARK (time u64, next seq u32) tells the host how far a port's history is complete:
every entry with seq < `next seq` has been sent, and every entry with seq >= `next seq` (sent
later) has a timestamp >= `time`. It is sent when the port's drain ends (`draining` falls; or
a FLUSH found nothing to drain), once every entry the drain sent has left in a JOURNAL frame.
`next seq` is the port's `flushed` count when the drain ended; `time` is the port's `time` at
that moment if every allocated entry had been sent (`entries_written == flushed`), otherwise
the timestamp of the last entry sent (entries in the ring but not yet complete were stamped
after it, since local time never goes backward).

All frames are CRC'd and COBS-encoded (`COBSEncoder`) onto `tx`. Unsolicited frames (JOURNAL,
FLUSH_MARK, NAK) carry link seq 0, responses the request's seq.

The link's counters (`firmware.abi.regmap.LINK_COUNTERS`) are one-bit outputs that pulse once
per event: the register block counts them (`hdl.counter_bank`).
"""

from contextlib import contextmanager

import crc32c
from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from firmware.abi.entry import entry_bytes
from firmware.abi.frames import CRC_BYTES, HEADER_BYTES, INJECT, MAX_PAYLOAD, WRITTEN, FrameType, NakReason
from firmware.abi.regmap import ADDRESS_BITS, LINK_COUNTERS, address
from hdl.block_fifo import BlockFIFO
from hdl.cobs import COBSDecoder, COBSEncoder, FrameByte
from hdl.crc import CRC32C
from hdl.flush import AckLayout
from hdl.inject import InjectorControl
from hdl.journal_ring import check_datapath_bits
from hdl.ram import NO_RW_CHECK
from hdl.timestamper import SEQ_BITS, TIME_BITS
from hdl.write_path import ReadCommand, beat_layout, lba_in_volume, read_beat_layout

CRC_RESIDUE = crc32c.crc32c(b"\0" + crc32c.crc32c(b"\0").to_bytes(4, "little"))
IDENTITY_BYTES = 16

RegisterBus = wiring.Signature({
    "r_addr": Out(ADDRESS_BITS),
    "r_data": In(32),
    "w_en": Out(1),
    "w_addr": Out(ADDRESS_BITS),
    "w_data": Out(32),
})


def link_port_signature(datapath_bits: int) -> wiring.Signature:
    """What the link needs of one JournalPort (from the link's side)."""
    return wiring.Signature({
        "flush": In(stream.Signature(beat_layout(datapath_bits))),
        "ack": Out(stream.Signature(AckLayout)),
        "flush_cmd": Out(1),
        "resend": Out(1),
        "draining": In(1),
        "entries_written": In(SEQ_BITS),
        "flushed": In(SEQ_BITS),
        "time": In(TIME_BITS),
    })


_MAX_READ = (MAX_PAYLOAD - 4) // 4     # the most registers a REG_READ reads

# Payload sources of a frame being sent.
SRC_IDENTITY, SRC_REGS, SRC_NAK, SRC_BUF, SRC_WRITTEN = range(5)

Response = data.StructLayout({
    "src": 3, "ftype": 8, "port": 8, "seq": 16, "addr": ADDRESS_BITS, "count": _MAX_READ.bit_length(),
    "prefix": 1, "reason": 8,
})

_PARSE_BYTES = HEADER_BYTES + 8 + CRC_BYTES   # the longest request but INJECT_WRITE, whose block
#                                               goes to the injector's buffer
_BLOCK_AT = HEADER_BYTES + INJECT.size        # INJECT_WRITE: frame offset of the block's first byte
_REQUEST_PAYLOAD = {FrameType.IDENTIFY: 0, FrameType.REG_READ: 4, FrameType.REG_WRITE: 6,
                    FrameType.FLUSH: 0, FrameType.ACK: 4, FrameType.RESEND: 0}
# The longest frame either side may build: frame byte counters have its width. A received frame
# too long to count saturates the count, and is refused as BAD_LENGTH (if its CRC is good).
_FRAME_BYTES = HEADER_BYTES + MAX_PAYLOAD + CRC_BYTES
_COUNT_MAX = (1 << _FRAME_BYTES.bit_length()) - 1
_OUT_FIFO_DEPTH = 4
_GRACE = 4                 # cycles a JOURNAL frame waits at an entry boundary for the next entry


@contextmanager
def _when(m, condition):
    """`m.If(condition)`, or no condition when `condition` is None."""
    if condition is None:
        yield
    else:
        with m.If(condition):
            yield


class LinkController(wiring.Component):
    """Requests in on `rx`, responses and journal data out on `tx`; `port[i]` per journal port."""

    def __init__(self, *, ports: int, block_bytes: int, identity: bytes, max_payload: int | None = None,
                 store_blocks: int = 0, datapath_bits: int = 64):
        check_datapath_bits(self, datapath_bits)
        entry = entry_bytes(block_bytes)
        if max_payload is None:
            max_payload = MAX_PAYLOAD // entry * entry
        if len(identity) != IDENTITY_BYTES or not entry <= max_payload <= MAX_PAYLOAD or max_payload % 8:
            self._MustUse__silence = True  # a rejected core is not an unused one
            raise ValueError(f"need a {IDENTITY_BYTES}-byte identity and {entry} <= max_payload "
                             f"<= {MAX_PAYLOAD}, a multiple of 8 (got {max_payload})")
        self.ports = ports
        self.block_bytes = block_bytes
        self.identity = identity
        self.max_payload = max_payload
        self.store_blocks = store_blocks
        self.width = datapath_bits
        self.lane_bits = (datapath_bits // 8 - 1).bit_length()     # a byte's index in a word
        self.requests = dict(_REQUEST_PAYLOAD)
        members = {
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "bus": Out(RegisterBus),
            "port": Out(link_port_signature(datapath_bits)).array(ports),
        }
        if store_blocks:
            self.requests.update({FrameType.INJECT_WRITE: INJECT.size + block_bytes,
                                  FrameType.READ_BLOCK: INJECT.size})
            members.update({
                "inject": Out(InjectorControl(ports, block_bytes, datapath_bits)),
                "store_rcmd": Out(stream.Signature(ReadCommand)),
                "store_rdata": In(stream.Signature(read_beat_layout(datapath_bits))),
            })
        members.update({name: Out(1) for name, _, _, _ in LINK_COUNTERS})     # events (`EVENTS`)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        resp_fifo = m.submodules.resp_fifo = BlockFIFO(width=Response.size, depth=4)
        # A READ_BLOCK taken by the receiver and not yet read into a frame buffer.
        # Its lba was checked to be in the volume: the bits above that are 0.
        reading = {"pending": Signal(), "lba": Signal(range(max(2, self.store_blocks))), "seq": Signal(16)}
        written_sent = Signal()         # the send path finished a WRITTEN frame
        self._receive(m, resp_fifo, reading, written_sent)
        frames = self._collect(m, reading)
        self._send(m, resp_fifo, frames, written_sent)
        return m

    # --- receive: deframe, check, act, queue the response --------------------------------------
    def _receive(self, m, resp_fifo, reading, written_sent):
        n = self.ports
        dec = m.submodules.cobs_dec = COBSDecoder()
        wiring.connect(m, wiring.flipped(self.rx), dec.i_stream)
        crc = m.submodules.rx_crc = CRC32C(8)
        buf = Array([Signal(8, name=f"rx_buf{i}") for i in range(_PARSE_BYTES)])
        count = Signal(range(_COUNT_MAX + 1))
        cobs_error = Signal()
        byte = dec.o_stream.payload

        def u16(i):
            return Cat(buf[i], buf[i + 1])

        ftype, port, seq, length = buf[0], buf[1], u16(2), u16(4)
        reg_addr, reg_count = u16(8), u16(10)
        reg_value = Cat(buf[10], buf[11], buf[12], buf[13])
        ack_seq = Cat(buf[8], buf[9], buf[10], buf[11])
        lba = Cat(*(buf[8 + i] for i in range(INJECT.size)))
        injects = ftype == FrameType.INJECT_WRITE
        reads = ftype == FrameType.READ_BLOCK
        store = bool(self.store_blocks)
        blocked = Signal()              # the injector was busy while this frame's block arrived
        written_queued = Signal()       # the injector's WRITTEN response is in the queue
        inject_seq, inject_port = Signal(16), Signal(8)     # the INJECT_WRITE under way
        if store:
            self._load_block(m, dec, count, ftype, blocked)
            m.d.comb += self.inject.release.eq(written_sent)
            with m.If(written_sent):
                m.d.comb += self.injected_writes.eq(1)
                m.d.sync += written_queued.eq(0)

        resp = Signal(Response)
        verdict = Signal(8)             # CHECK's: the NakReason of the frame received, or 0
        m.d.comb += resp_fifo.w_data.eq(resp)
        m.d.sync += self.bus.w_en.eq(0)     # a register write: the cycle after ACT
        for p in range(n):          # pulses last one cycle; an ack is held until taken
            lp = self.port[p]
            m.d.sync += [lp.flush_cmd.eq(0), lp.resend.eq(0)]
            with m.If(lp.ack.ready):
                m.d.sync += lp.ack.valid.eq(0)
        with m.FSM(name="rx"):
            with m.State("RECV"):
                m.d.comb += dec.o_stream.ready.eq(1)
                if store:       # the injector's result goes out as WRITTEN (ACT queues the others)
                    with m.If(self.inject.done & ~written_queued & resp_fifo.w_rdy):
                        m.d.comb += [resp_fifo.w_en.eq(1), resp.src.eq(SRC_WRITTEN),
                                     resp.ftype.eq(FrameType.WRITTEN), resp.seq.eq(inject_seq),
                                     resp.port.eq(inject_port)]
                        m.d.sync += written_queued.eq(1)
                index = Signal.like(count)
                m.d.comb += index.eq(count)
                with m.If(byte.first):
                    m.d.comb += index.eq(0)
                m.d.comb += [crc.data.valid.eq(dec.o_stream.valid), crc.data.payload.data.eq(byte.data),
                             crc.data.payload.first.eq(byte.first)]
                with m.If(dec.o_stream.valid):
                    with m.If(index < _PARSE_BYTES):
                        m.d.sync += buf[index[:(_PARSE_BYTES - 1).bit_length()]].eq(byte.data)
                    m.d.sync += count.eq(index + (index != _COUNT_MAX))
                    with m.If(byte.last):
                        m.d.sync += cobs_error.eq(byte.error)
                        m.next = "CHECK"
            with m.State("CHECK"):
                # The frame's checks in priority order, registered: the action on their verdict
                # (ACT) is the next cycle's.
                reason = Signal(8)
                expected = Signal(16)
                is_request = Signal()
                with m.Switch(ftype):
                    for kind, size in self.requests.items():
                        with m.Case(kind):
                            m.d.comb += [expected.eq(size), is_request.eq(1)]
                needs_port = ((ftype == FrameType.FLUSH) | (ftype == FrameType.ACK)
                              | (ftype == FrameType.RESEND) | injects)
                with m.If(cobs_error):
                    m.d.comb += reason.eq(NakReason.BAD_COBS)
                with m.Elif(count < HEADER_BYTES + CRC_BYTES):
                    m.d.comb += reason.eq(NakReason.BAD_LENGTH)
                with m.Elif(crc.crc != CRC_RESIDUE):
                    m.d.comb += reason.eq(NakReason.BAD_CRC)
                with m.Elif((count != length + HEADER_BYTES + CRC_BYTES) | (count == _COUNT_MAX)):
                    m.d.comb += reason.eq(NakReason.BAD_LENGTH)
                with m.Elif(~is_request):
                    m.d.comb += reason.eq(NakReason.UNKNOWN_TYPE)
                with m.Elif((length != expected)
                            | ((ftype == FrameType.REG_READ) & (reg_count > _MAX_READ))):
                    m.d.comb += reason.eq(NakReason.BAD_LENGTH)
                with m.Elif(needs_port & (port >= n)):
                    m.d.comb += reason.eq(NakReason.BAD_PORT)
                if store:
                    with m.Elif((injects | reads) & ~lba_in_volume(lba, self.store_blocks)):
                        m.d.comb += reason.eq(NakReason.BAD_LBA)
                m.d.sync += verdict.eq(reason)
                m.next = "ACT"
            with m.State("ACT"):
                # BUSY is judged now, on the injector's and the pending READ_BLOCK's state.
                reason = Signal(8)
                m.d.comb += reason.eq(verdict)
                if store:
                    with m.If((verdict == 0) & ((injects & (self.inject.busy | blocked))
                                                | (reads & reading["pending"]))):
                        m.d.comb += reason.eq(NakReason.BUSY)

                # FLUSH and RESEND are answered by journal data, INJECT_WRITE and READ_BLOCK later.
                responds = (reason != 0) | ((ftype != FrameType.FLUSH) & (ftype != FrameType.RESEND)
                                            & ~injects & ~reads)
                with m.If(reason != 0):
                    m.d.comb += [resp.src.eq(SRC_NAK), resp.ftype.eq(FrameType.NAK), resp.reason.eq(reason)]
                with m.Else():
                    m.d.comb += [resp.seq.eq(seq), resp.port.eq(port), resp.src.eq(SRC_REGS)]
                    with m.Switch(ftype):
                        with m.Case(FrameType.IDENTIFY):
                            m.d.comb += [resp.src.eq(SRC_IDENTITY), resp.ftype.eq(FrameType.IDENTITY),
                                         resp.port.eq(0)]
                        with m.Case(FrameType.REG_READ):
                            m.d.comb += [resp.ftype.eq(FrameType.REG_VALUES), resp.addr.eq(reg_addr),
                                         resp.count.eq(reg_count), resp.prefix.eq(1)]
                        with m.Case(FrameType.REG_WRITE):
                            m.d.comb += [resp.ftype.eq(FrameType.REG_VALUES), resp.addr.eq(reg_addr),
                                         resp.count.eq(1), resp.prefix.eq(1)]
                        with m.Case(FrameType.ACK):
                            m.d.comb += [resp.ftype.eq(FrameType.ACKED), resp.count.eq(1)]
                            for p in range(n):
                                with m.If(port == p):
                                    m.d.comb += resp.addr.eq(address("acknowledged", p))

                with m.If(~responds | resp_fifo.w_rdy):
                    m.d.comb += resp_fifo.w_en.eq(responds)
                    m.next = "RECV"
                    counters = {NakReason.BAD_COBS: self.rx_cobs_errors,
                                NakReason.BAD_CRC: self.rx_crc_errors,
                                NakReason.BAD_LENGTH: self.rx_length_errors,
                                NakReason.UNKNOWN_TYPE: self.rx_type_errors,
                                NakReason.BAD_PORT: self.rx_port_errors,
                                NakReason.BAD_LBA: self.rx_lba_errors,
                                NakReason.BUSY: self.rx_busy}
                    with m.Switch(reason):
                        for code, counter in counters.items():
                            with m.Case(code):
                                m.d.comb += counter.eq(1)
                    with m.If(reason != 0):
                        m.d.comb += self.naks_sent.eq(1)
                    with m.Else():
                        m.d.comb += self.rx_frames.eq(1)
                        with m.If(ftype == FrameType.REG_WRITE):
                            m.d.sync += [self.bus.w_en.eq(1), self.bus.w_addr.eq(reg_addr),
                                         self.bus.w_data.eq(reg_value)]
                        if store:
                            with m.If(injects):
                                m.d.comb += [self.inject.start.eq(1), self.inject.start_port.eq(port),
                                             self.inject.start_lba.eq(lba)]
                                m.d.sync += [inject_seq.eq(seq), inject_port.eq(port)]
                            with m.If(reads):
                                m.d.sync += [reading["pending"].eq(1), reading["lba"].eq(lba),
                                             reading["seq"].eq(seq)]
                        for p in range(n):
                            lp = self.port[p]
                            with m.If(port == p):
                                with m.Switch(ftype):
                                    with m.Case(FrameType.FLUSH):
                                        m.d.sync += lp.flush_cmd.eq(1)
                                    with m.Case(FrameType.RESEND):
                                        m.d.sync += lp.resend.eq(1)
                                    with m.Case(FrameType.ACK):
                                        m.d.sync += [lp.ack.valid.eq(1), lp.ack.payload.seq.eq(ack_seq)]


    def _load_block(self, m, dec, count, ftype, blocked):
        """INJECT_WRITE's block bytes into the injector's buffer as they arrive (if it is idle)."""
        inj = self.inject
        taken = dec.o_stream.valid & dec.o_stream.ready
        byte = dec.o_stream.payload
        index = Mux(byte.first, 0, count)           # this byte's offset in the frame
        offset = Signal.like(count)
        m.d.comb += offset.eq(index - _BLOCK_AT)
        with m.If(taken):
            with m.If(byte.first):
                m.d.sync += blocked.eq(inj.busy)
            with m.Elif(inj.busy):
                m.d.sync += blocked.eq(1)
        in_block = (index >= _BLOCK_AT) & (index < _BLOCK_AT + self.block_bytes)
        m.d.comb += [inj.load_en.eq(taken & in_block & (ftype == FrameType.INJECT_WRITE) & ~inj.busy),
                     inj.load_addr.eq(offset[self.lane_bits:]), inj.load_lane.eq(offset[:self.lane_bits]),
                     inj.load_data.eq(byte.data)]

    # --- collect: journal entries and flush marks into the two frame buffers --------------------
    def _collect(self, m, reading):
        n = self.ports
        word_bytes = self.width // 8
        max_words = self.max_payload // word_bytes
        entry_words = entry_bytes(self.block_bytes) // word_bytes
        half = 1 << (max_words - 1).bit_length()
        # A frame is sent from one half while the next is collected into the other.
        mem = m.submodules.frame_buf = Memory(shape=self.width, depth=2 * half, init=[], attrs=NO_RW_CHECK)
        wp = mem.write_port()
        rp = mem.read_port()
        frames = {
            "rp": rp, "half_bits": (half - 1).bit_length(),
            "full": Signal(2), "rsel": Signal(),
            "ftype": Array([Signal(8, name=f"buf_type{i}") for i in range(2)]),
            "port": Array([Signal(8, name=f"buf_port{i}") for i in range(2)]),
            "length": Array([Signal(range(MAX_PAYLOAD + 1), name=f"buf_len{i}") for i in range(2)]),
            "seq": Array([Signal(16, name=f"buf_seq{i}") for i in range(2)]),
        }
        full = frames["full"]
        wsel = Signal()
        widx = Signal(range(half + 1))

        # Per port: where the link is in its stream, and the flush mark to send.
        link_next = [Signal(SEQ_BITS, name=f"link_next{p}") for p in range(n)]
        last_stamp = [Signal(TIME_BITS, name=f"last_stamp{p}") for p in range(n)]
        mark_pending = [Signal(name=f"mark_pending{p}") for p in range(n)]
        mark_seq = [Signal(SEQ_BITS, name=f"mark_seq{p}") for p in range(n)]
        mark_time = [Signal(TIME_BITS, name=f"mark_time{p}") for p in range(n)]
        mark_idle = [Signal(name=f"mark_idle{p}") for p in range(n)]    # every allocated entry sent
        mark_ready = Signal(n)
        mark_taken = Signal(n)          # the mark goes into a frame buffer now
        for p in range(n):
            lp = self.port[p]
            was_draining = Signal(name=f"was_draining{p}")
            flush_wait = Signal(2, name=f"flush_wait{p}")
            m.d.sync += was_draining.eq(lp.draining)
            with m.If(flush_wait != 0):
                m.d.sync += flush_wait.eq(flush_wait - 1)
            with m.If(lp.flush_cmd):
                m.d.sync += flush_wait.eq(3)
            ended = (was_draining & ~lp.draining) | ((flush_wait == 1) & ~lp.draining & ~was_draining)
            with m.If(mark_taken[p]):
                m.d.sync += mark_pending[p].eq(0)
            with m.If(ended):                   # a newer mark wins over the one being taken
                m.d.sync += [mark_pending[p].eq(1), mark_seq[p].eq(lp.flushed), mark_time[p].eq(lp.time),
                             mark_idle[p].eq(lp.entries_written == lp.flushed)]
            m.d.comb += mark_ready[p].eq(mark_pending[p] & (link_next[p] == mark_seq[p]))

        # Round robin: the first port at or after `rr` with a mark ready, else with an entry.
        rr = Signal(range(n))
        cur = Signal(range(n))

        def pick(cands, name):
            chosen, found = Signal(range(n), name=f"{name}_port"), Signal(name=f"{name}_found")
            with m.Switch(rr):
                for r in range(n):
                    with m.Case(r):
                        for i in reversed(range(n)):
                            q = (r + i) % n
                            with m.If(cands[q]):
                                m.d.comb += [chosen.eq(q), found.eq(1)]
            return chosen, found

        mark_port, any_mark = pick(mark_ready, "mark")
        data_port, any_data = pick(Cat(*(self.port[p].flush.valid for p in range(n))), "data")
        beat = Signal(beat_layout(self.width))
        valid = Signal()
        for p in range(n):
            with m.If(cur == p):
                m.d.comb += [beat.eq(self.port[p].flush.payload), valid.eq(self.port[p].flush.valid)]
        in_entry = Signal()
        stamp_at = 8 // word_bytes        # the beat the entry's timestamp starts on (byte 8)
        # The entry's beat number, counting on past the timestamp's beats and then holding: 0
        # starts the seq, stamp_at the timestamp (with 64-bit beats: 0 the seq word, 1 the
        # timestamp, 2 and 3 later).
        beat_k = Signal(range(2 * stamp_at + 2))
        seq_w = min(self.width, SEQ_BITS)
        seq_carry = Signal()            # seq + 1's carry into its next word (beats under 32 bits)
        grace = Signal(range(_GRACE + 1))
        m.d.comb += [wp.addr.eq(Cat(widx[:frames["half_bits"]], wsel)), wp.data.eq(beat.data)]

        def close(ftype, length, seq=0):
            """The buffer being filled is a whole frame: hand it to the sender, fill the other."""
            m.d.sync += [full.bit_select(wsel, 1).eq(1), frames["ftype"][wsel].eq(ftype),
                         frames["port"][wsel].eq(cur), frames["length"][wsel].eq(length),
                         frames["seq"][wsel].eq(seq), wsel.eq(~wsel), widx.eq(0)]

        def close_port(ftype, length):
            """`close`, a frame of port `cur`'s stream: the next port's turn comes."""
            close(ftype, length)
            m.d.sync += rr.eq(Cat(cur + 1)[:len(rr)])
            if n & (n - 1):
                with m.If(cur == n - 1):
                    m.d.sync += rr.eq(0)

        # A mark is latched when chosen (taken then: a drain ending meanwhile leaves its newer
        # mark pending for its turn) and written a word a cycle, so its words all come from one
        # mark. (Read from the port's registers as they were written, a drain ending between its
        # time word and its seq word paired the old time with the new seq and lost the new mark.)
        mark_word = Signal(-(-(TIME_BITS + SEQ_BITS) // self.width) * self.width)
        with m.FSM(name="collect"):
            with m.State("IDLE"):
                block_first = reading["pending"] if self.store_blocks else Const(0)
                with m.If(~full.bit_select(wsel, 1)):
                    with m.If(block_first):     # a READ_BLOCK's block (only with a store)
                        if self.store_blocks:
                            m.d.sync += cur.eq(0)
                            m.next = "BLOCK_CMD"
                    with m.Elif(any_mark):
                        m.d.sync += cur.eq(mark_port)
                        for p in range(n):
                            with m.If(mark_port == p):
                                m.d.comb += mark_taken[p].eq(1)
                                m.d.sync += mark_word.eq(Cat(
                                    Mux(mark_idle[p], mark_time[p], last_stamp[p]), mark_seq[p]))
                        m.next = "MARK"
                    with m.Elif(any_data):
                        m.d.sync += [cur.eq(data_port), in_entry.eq(0), grace.eq(_GRACE)]
                        m.next = "JOURNAL"
            with m.State("JOURNAL"):
                at_boundary = ~in_entry
                stop = Signal()
                with m.If(at_boundary):
                    m.d.comb += stop.eq(mark_ready.bit_select(cur, 1) | ((grace == 0) & ~valid))
                    with m.If(stop):
                        with m.If(widx != 0):
                            close_port(FrameType.JOURNAL, Cat(Const(0, self.lane_bits), widx))
                        m.next = "IDLE"
                with m.If(~stop):
                    for p in range(n):
                        with m.If(cur == p):
                            m.d.comb += self.port[p].flush.ready.eq(1)
                    with m.If(at_boundary & ~valid):
                        m.d.sync += grace.eq(grace - 1)
                    with m.If(valid):
                        m.d.comb += wp.en.eq(1)
                        m.d.sync += [widx.eq(widx + 1), in_entry.eq(~beat.last), grace.eq(_GRACE),
                                     beat_k.eq(beat_k + (beat_k != 2 * stamp_at + 1))]
                        with m.If(beat.first):
                            m.d.sync += beat_k.eq(1)
                        # The entry's seq + 1 and timestamp go into the port's `link_next` and
                        # `last_stamp` a word at a time as their beats pass: they are read only
                        # between entries (IDLE, a boundary), when the words are whole.
                        for i in range(max(1, SEQ_BITS // self.width)):
                            with m.If(beat.first if i == 0 else beat_k == i):
                                next_word = Signal(seq_w + 1, name=f"next_seq_word{i}")
                                m.d.comb += next_word.eq(beat.data[:seq_w] + (1 if i == 0 else seq_carry))
                                m.d.sync += seq_carry.eq(next_word[-1])
                                for p in range(n):
                                    with m.If(cur == p):
                                        m.d.sync += link_next[p].word_select(i, seq_w).eq(next_word[:seq_w])
                        for i in range(TIME_BITS // self.width):
                            with m.If(beat_k == stamp_at + i):
                                for p in range(n):
                                    with m.If(cur == p):
                                        m.d.sync += last_stamp[p].word_select(i, self.width).eq(beat.data)
                        with m.If(beat.last):
                            m.d.comb += self.tx_journal_entries.eq(1)
                            with m.If(widx + 1 + entry_words > max_words):
                                close_port(FrameType.JOURNAL, Cat(Const(0, self.lane_bits), widx + 1))
                                m.next = "IDLE"
            with m.State("MARK"):
                word, last = self._word(mark_word, widx)
                m.d.comb += [wp.en.eq(1), wp.data.eq(word)]
                m.d.sync += widx.eq(widx + 1)
                with m.If(last):
                    close_port(FrameType.FLUSH_MARK, 12)
                    m.next = "IDLE"
            if self.store_blocks:
                self._read_block(m, reading, wp, widx, close)
        return frames

    def _word(self, value, widx):
        """`value` into a frame buffer a word a cycle from `widx` 0: (the word to write now, a
        condition true on its last word — None when one word holds it all)."""
        words = -(-len(value) // self.width)
        if words == 1:
            return value, None
        index = widx[:(words - 1).bit_length()]
        return value.word_select(index, self.width), index == words - 1

    def _read_block(self, m, reading, wp, widx, close):
        """READ_BLOCK: the lba, then the block's words from the store, into a BLOCK frame."""
        cmd, rdata = self.store_rcmd, self.store_rdata
        with m.State("BLOCK_CMD"):
            # The lba a word a cycle; the command goes out with its last word.
            lba = Signal(64)
            m.d.comb += lba.eq(reading["lba"])
            word, last = self._word(lba, widx)
            m.d.comb += [cmd.valid.eq(1 if last is None else last), cmd.payload.lba.eq(lba),
                         wp.data.eq(word)]
            with m.If(cmd.ready if last is None else ~last | cmd.ready):
                m.d.comb += wp.en.eq(1)
                m.d.sync += widx.eq(widx + 1)
                with _when(m, last):
                    m.next = "BLOCK_DATA"
        with m.State("BLOCK_DATA"):
            m.d.comb += [rdata.ready.eq(1), wp.data.eq(rdata.payload.data)]
            with m.If(rdata.valid):
                m.d.comb += wp.en.eq(1)
                m.d.sync += widx.eq(widx + 1)
                with m.If(rdata.payload.last):
                    close(FrameType.BLOCK, INJECT.size + self.block_bytes, reading["seq"])
                    m.d.sync += reading["pending"].eq(0)
                    m.next = "IDLE"

    # --- send: header, payload, CRC into the COBS encoder ---------------------------------------
    def _send(self, m, resp_fifo, frames, written_sent):
        enc = m.submodules.cobs_enc = COBSEncoder()
        wiring.connect(m, enc.o_stream, wiring.flipped(self.tx))
        out = m.submodules.tx_fifo = BlockFIFO(width=FrameByte.size, depth=_OUT_FIFO_DEPTH)
        m.d.comb += [enc.i_stream.valid.eq(out.r_rdy), enc.i_stream.payload.eq(out.r_data),
                     out.r_en.eq(enc.i_stream.ready)]
        crc = m.submodules.tx_crc = CRC32C(8)
        rp, full, rsel = frames["rp"], frames["full"], frames["rsel"]

        # The frame being sent: the response queue's head (popped once its last byte is issued:
        # stage B of that byte, a CRC byte, reads nothing of it), or the frame buffer's.
        from_queue = Signal()
        desc = Signal(Response)
        with m.If(from_queue):
            m.d.comb += desc.eq(resp_fifo.r_data)
        with m.Else():
            m.d.comb += [desc.src.eq(SRC_BUF), desc.ftype.eq(frames["ftype"][rsel]),
                         desc.port.eq(frames["port"][rsel]), desc.seq.eq(frames["seq"][rsel])]
        length = Signal(range(MAX_PAYLOAD + 1))
        # Byte counters of a frame: `i` the frame's byte, `j` the payload's, `reg_j` the values'
        # (wrapping before the payload: they are read only there).
        frame = range(_FRAME_BYTES + 1)
        total = Signal(frame)
        m.d.comb += total.eq(length + HEADER_BYTES + CRC_BYTES)
        i = Signal(frame)
        issue = Signal()
        with m.FSM(name="send"):
            with m.State("IDLE"):
                head = Signal(Response)
                m.d.comb += head.eq(resp_fifo.r_data)
                with m.If(resp_fifo.r_rdy):
                    m.d.sync += from_queue.eq(1)
                    with m.Switch(head.src):
                        with m.Case(SRC_IDENTITY):
                            m.d.sync += length.eq(IDENTITY_BYTES)
                        with m.Case(SRC_REGS):
                            m.d.sync += length.eq((head.count + head.prefix) * 4)
                        with m.Case(SRC_NAK):
                            m.d.sync += length.eq(1)
                        with m.Case(SRC_WRITTEN):
                            m.d.sync += length.eq(WRITTEN.size)
                    m.d.sync += i.eq(0)
                    m.next = "SEND"
                with m.Elif(full.bit_select(rsel, 1)):
                    m.d.sync += [from_queue.eq(0), length.eq(frames["length"][rsel]), i.eq(0)]
                    m.next = "SEND"
            with m.State("SEND"):
                m.d.comb += issue.eq(out.level < _OUT_FIFO_DEPTH - 1)
                with m.If(issue):
                    m.d.sync += i.eq(i + 1)
                    with m.If(i == total - 1):
                        m.d.comb += [self.tx_frames.eq(1), resp_fifo.r_en.eq(from_queue)]
                        with m.If(desc.src == SRC_BUF):
                            m.d.sync += [full.bit_select(rsel, 1).eq(0), rsel.eq(~rsel)]
                        with m.If(desc.src == SRC_WRITTEN):
                            m.d.comb += written_sent.eq(1)
                        m.next = "IDLE"

        # Stage A: address the payload's source for byte i (buffer word, register).
        j = Signal(frame)
        m.d.comb += j.eq(i - HEADER_BYTES)
        reg_j = Signal(frame)
        m.d.comb += reg_j.eq(j - 4 * desc.prefix)
        lanes = self.lane_bits
        m.d.comb += [rp.addr.eq(Cat(j[lanes:lanes + frames["half_bits"]], rsel)), rp.en.eq(1),
                     self.bus.r_addr.eq(desc.addr + reg_j[2:])]

        # Stage B: pick the byte, CRC it, queue it.
        b_valid, b_i, b_j, b_reg_j = Signal(), Signal(frame), Signal(frame), Signal(frame)
        b_last_payload = Signal(frame)
        m.d.sync += [b_valid.eq(issue), b_i.eq(i), b_j.eq(j), b_reg_j.eq(reg_j),
                     b_last_payload.eq(HEADER_BYTES + length)]
        header = Cat(desc.ftype, desc.port, desc.seq, length, Const(0, 16))
        identity = Const(int.from_bytes(self.identity, "little"), 8 * IDENTITY_BYTES)
        byte = Signal(8)
        is_crc = b_i >= b_last_payload
        with m.If(b_i < HEADER_BYTES):
            m.d.comb += byte.eq(header.word_select(b_i[:3], 8))
        with m.Elif(~is_crc):
            with m.Switch(desc.src):
                with m.Case(SRC_BUF):
                    m.d.comb += byte.eq(rp.data.word_select(b_j[:lanes], 8))
                with m.Case(SRC_IDENTITY):
                    m.d.comb += byte.eq(identity.word_select(b_j[:4], 8))
                with m.Case(SRC_NAK):
                    m.d.comb += byte.eq(desc.reason)
                if self.store_blocks:
                    inj = self.inject
                    written = Cat(inj.time, inj.seq, inj.status, Const(0, 24))
                    with m.Case(SRC_WRITTEN):
                        m.d.comb += byte.eq(written.word_select(b_j[:4], 8))
                with m.Case(SRC_REGS):
                    with m.If(desc.prefix & (b_j < 4)):
                        m.d.comb += byte.eq(Cat(desc.addr, desc.count).word_select(b_j[:2], 8))
                    with m.Else():
                        m.d.comb += byte.eq(self.bus.r_data.word_select(b_reg_j[:2], 8))
        with m.Else():
            m.d.comb += byte.eq(crc.crc.word_select((b_i - b_last_payload)[:2], 8))
        o = Signal(FrameByte)
        m.d.comb += [o.data.eq(byte), o.first.eq(b_i == 0), o.last.eq(b_i == b_last_payload + CRC_BYTES - 1),
                     out.w_en.eq(b_valid), out.w_data.eq(o),
                     crc.data.valid.eq(b_valid & ~is_crc), crc.data.payload.data.eq(byte),
                     crc.data.payload.first.eq(b_i == 0)]
