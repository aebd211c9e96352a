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
from hdl.cobs import CheckedFrameByte, COBSDecoder, COBSEncoder, FrameByte
from hdl.crc import CRC32C
from hdl.flush import AckLayout
from hdl.inject import InjectorControl
from hdl.journal_ring import check_datapath_bits
from hdl.ram import NO_RW_CHECK
from hdl.timestamper import SEQ_BITS, TIME_BITS
from hdl.write_path import ReadCommand, beat_layout, lba_in_volume, read_beat_layout

CRC_RESIDUE = crc32c.crc32c(b"\0" + crc32c.crc32c(b"\0").to_bytes(4, "little"))
IDENTITY_BYTES = 16

# The register bus (`firmware.registers.RegisterBlock` is its target). A read is pipelined: the
# register at `r_addr` in cycle t is on `r_data` in cycle t + READ_LATENCY, a new read may start
# every cycle, and the value read is the register's in cycle t (an event register's count: of
# its pulses up to cycle t - 2, `firmware.registers`). A write (`w_addr`, `w_data`,
# `w_en`) takes effect at the end of the cycle `w_en` is high: a read issued in the next cycle
# sees it. Two cycles, not one: the read multiplexer over every register and the counter bank's
# RAM and adder were the longest paths of a large image; in two stages each is a few levels of
# logic between registers.
RegisterBus = wiring.Signature({
    "r_addr": Out(ADDRESS_BITS),
    "r_data": In(32),
    "w_en": Out(1),
    "w_addr": Out(ADDRESS_BITS),
    "w_data": Out(32),
})
READ_LATENCY = 2


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
_OUT_FIFO_DEPTH = 8
_IN_FLIGHT = 4             # bytes of a frame in the send stages (A to D) besides the one issued
_GRACE = 4                 # turns (a cycle, every other cycle) a JOURNAL frame offers at an entry
#                            boundary for the next entry


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
        """Receive, a frame at a time: RECV (the bytes, a stage each: registered from the decoder
        with their offset, then kept, CRC'd and loaded), CHECK (the checks' flags, registered),
        VERDICT (their priority, then BUSY: the NakReason, or 0), ACT (the response and every
        action decided and registered), COMMIT (the response queued, the actions' pulses a cycle later).
        A byte at 2 Mbaud is 50 cycles: the stages cost the link nothing."""
        n = self.ports
        dec = m.submodules.cobs_dec = COBSDecoder()
        wiring.connect(m, wiring.flipped(self.rx), dec.i_stream)
        crc = m.submodules.rx_crc = CRC32C(8)
        buf = Array([Signal(8, name=f"rx_buf{i}") for i in range(_PARSE_BYTES)])
        count = Signal(range(_COUNT_MAX + 1))      # the frame's bytes taken so far
        got, got_byte, got_index = Signal(), Signal(CheckedFrameByte), Signal.like(count)   # stage 1
        cobs_error = Signal()

        def u16(i):
            return Cat(buf[i], buf[i + 1])

        ftype, port, seq, length = buf[0], buf[1], u16(2), u16(4)
        reg_addr, reg_count = u16(8), u16(10)
        reg_value = Cat(buf[10], buf[11], buf[12], buf[13])
        ack_seq = Cat(buf[8], buf[9], buf[10], buf[11])
        lba = Cat(*(buf[8 + i] for i in range(INJECT.size)))
        store = bool(self.store_blocks)
        blocked = Signal()              # the injector was busy while this frame's block arrived
        written_queued = Signal()       # the injector's WRITTEN response is in the queue
        inject_seq, inject_port = Signal(16), Signal(8)     # the INJECT_WRITE under way
        if store:
            self._load_block(m, got, got_byte, got_index, ftype, blocked)
            m.d.sync += self.inject.release.eq(written_sent)    # registered: a cycle after the frame
            with m.If(self.inject.release):
                m.d.comb += self.injected_writes.eq(1)
                m.d.sync += written_queued.eq(0)

        # CHECK's flags and decoded fields, registered.
        kinds = [FrameType.FLUSH, FrameType.RESEND, FrameType.ACK, FrameType.REG_READ, FrameType.REG_WRITE,
                 FrameType.IDENTIFY, FrameType.INJECT_WRITE, FrameType.READ_BLOCK]
        kind = {k: Signal(name=f"is_{k.name.lower()}") for k in kinds}
        at_port = Signal(n)             # one-hot: the frame's port
        want = Signal(17)               # the frame's bytes its length field says
        flags = {name: Signal(name=f"flag_{name}") for name in
                 ("cobs", "short", "crc", "saturated", "type", "size", "port", "lba")}
        verdict = Signal(8)             # VERDICT's: the NakReason of the frame received, or 0
        verdict_ok = Signal()           # VERDICT's: the frame is good (`verdict` is 0)
        # ACT's decisions, registered: COMMIT carries them out.
        resp = Signal(Response)
        responds = Signal()
        act = {name: Signal(name=f"act_{name}") for name in ("write", "inject", "read", "nak", "ok")}
        act_flush, act_resend, act_ack = Signal(n), Signal(n), Signal(n)
        reason = Signal(8)              # the final NakReason (BUSY included)
        go = Signal()                   # COMMIT carries out ACT's decisions now
        written_resp = Signal(Response)
        m.d.comb += [written_resp.src.eq(SRC_WRITTEN), written_resp.ftype.eq(FrameType.WRITTEN),
                     written_resp.seq.eq(inject_seq), written_resp.port.eq(inject_port)]

        # COMMIT's pulses, a cycle after it (the frame's fields stay in `buf` that long: RECV's
        # first stage takes a byte in that cycle at the earliest, its second keeps it the next).
        m.d.sync += self.bus.w_en.eq(go & act["write"])
        m.d.sync += [self.bus.w_addr.eq(reg_addr), self.bus.w_data.eq(reg_value)]
        if store:
            m.d.sync += self.inject.start.eq(go & act["inject"])
            m.d.comb += [self.inject.start_port.eq(port), self.inject.start_lba.eq(lba)]
        for p in range(n):
            lp = self.port[p]
            m.d.sync += [lp.flush_cmd.eq(go & act_flush[p]), lp.resend.eq(go & act_resend[p])]
            with m.If(lp.ack.ready):        # an ack is held until taken
                m.d.sync += lp.ack.valid.eq(0)
            with m.If(go & act_ack[p]):
                m.d.sync += lp.ack.valid.eq(1)
            with m.If(~lp.ack.valid | lp.ack.ready):    # loaded while free: the request's at `go`
                m.d.sync += lp.ack.payload.seq.eq(ack_seq)

        m.d.sync += got.eq(0)
        with m.FSM(name="rx"):
            with m.State("RECV"):
                if store:       # the injector's result goes out as WRITTEN (COMMIT queues the others)
                    with m.If(self.inject.done & ~written_queued & resp_fifo.w_rdy):
                        m.d.comb += [resp_fifo.w_en.eq(1), resp_fifo.w_data.eq(written_resp)]
                        m.d.sync += written_queued.eq(1)
                # Stage 1: the decoder's byte and its offset (none after a frame's last byte).
                byte = dec.o_stream.payload
                m.d.comb += dec.o_stream.ready.eq(~(got & got_byte.last))
                with m.If(dec.o_stream.valid & dec.o_stream.ready):
                    index = Mux(byte.first, 0, count)
                    m.d.sync += [got.eq(1), got_byte.eq(byte), got_index.eq(index),
                                 count.eq(index + (index != _COUNT_MAX))]
                # Stage 2: keep the first bytes, CRC every one.
                m.d.comb += [crc.data.valid.eq(got), crc.data.payload.data.eq(got_byte.data),
                             crc.data.payload.first.eq(got_byte.first)]
                with m.If(got):
                    with m.If(got_index < _PARSE_BYTES):
                        m.d.sync += buf[got_index[:(_PARSE_BYTES - 1).bit_length()]].eq(got_byte.data)
                    with m.If(got_byte.last):
                        m.d.sync += cobs_error.eq(got_byte.error)
                        m.next = "CHECK"
            with m.State("CHECK"):
                expected = Signal(16)
                is_request = Signal()
                with m.Switch(ftype):
                    for k, size in self.requests.items():
                        with m.Case(k):
                            m.d.comb += [expected.eq(size), is_request.eq(1)]
                needs_port = Signal()
                m.d.comb += needs_port.eq((ftype == FrameType.FLUSH) | (ftype == FrameType.ACK)
                                          | (ftype == FrameType.RESEND) | (ftype == FrameType.INJECT_WRITE))
                lba_bad = Const(0)
                if store:
                    lba_bad = (((ftype == FrameType.INJECT_WRITE) | (ftype == FrameType.READ_BLOCK))
                               & ~lba_in_volume(lba, self.store_blocks))
                m.d.sync += [
                    want.eq(length + HEADER_BYTES + CRC_BYTES),
                    flags["cobs"].eq(cobs_error),
                    flags["short"].eq(count < HEADER_BYTES + CRC_BYTES),
                    flags["crc"].eq(crc.crc != CRC_RESIDUE),
                    flags["saturated"].eq(count == _COUNT_MAX),
                    flags["type"].eq(~is_request),
                    flags["size"].eq((length != expected)
                                     | ((ftype == FrameType.REG_READ) & (reg_count > _MAX_READ))),
                    flags["port"].eq(needs_port & (port >= n)),
                    flags["lba"].eq(lba_bad),
                    at_port.eq(Cat(port == p for p in range(n))),
                ]
                m.d.sync += [kind[k].eq(ftype == k) for k in kinds]
                m.next = "VERDICT"
            with m.State("VERDICT"):
                # The frame's checks in priority order: the first that fails names the reason.
                checks = [(flags["cobs"], NakReason.BAD_COBS),
                          (flags["short"], NakReason.BAD_LENGTH),
                          (flags["crc"], NakReason.BAD_CRC),
                          ((count != want) | flags["saturated"], NakReason.BAD_LENGTH),
                          (flags["type"], NakReason.UNKNOWN_TYPE),
                          (flags["size"], NakReason.BAD_LENGTH),
                          (flags["port"], NakReason.BAD_PORT),
                          (flags["lba"], NakReason.BAD_LBA)]
                # BUSY is judged now, on the injector's and the pending READ_BLOCK's state (only
                # the link starts either, so a state found idle stays so until COMMIT).
                if store:
                    checks.append(((kind[FrameType.INJECT_WRITE] & (self.inject.busy | blocked))
                                   | (kind[FrameType.READ_BLOCK] & reading["pending"]), NakReason.BUSY))
                why = Const(0, 8)
                for failed, code in reversed(checks):
                    why = Mux(failed, code, why)
                m.d.sync += [verdict.eq(why), verdict_ok.eq(why == 0)]
                m.next = "ACT"
            with m.State("ACT"):
                final, ok = verdict, verdict_ok
                r = Signal(Response)
                with m.If(~ok):
                    m.d.comb += [r.src.eq(SRC_NAK), r.ftype.eq(FrameType.NAK), r.reason.eq(final)]
                with m.Else():
                    m.d.comb += [r.seq.eq(seq), r.port.eq(port), r.src.eq(SRC_REGS)]
                    with m.If(kind[FrameType.IDENTIFY]):
                        m.d.comb += [r.src.eq(SRC_IDENTITY), r.ftype.eq(FrameType.IDENTITY), r.port.eq(0)]
                    with m.If(kind[FrameType.REG_READ]):
                        m.d.comb += [r.ftype.eq(FrameType.REG_VALUES), r.addr.eq(reg_addr),
                                     r.count.eq(reg_count), r.prefix.eq(1)]
                    with m.If(kind[FrameType.REG_WRITE]):
                        m.d.comb += [r.ftype.eq(FrameType.REG_VALUES), r.addr.eq(reg_addr),
                                     r.count.eq(1), r.prefix.eq(1)]
                    with m.If(kind[FrameType.ACK]):
                        m.d.comb += [r.ftype.eq(FrameType.ACKED), r.count.eq(1)]
                        for p in range(n):
                            with m.If(at_port[p]):
                                m.d.comb += r.addr.eq(address("acknowledged", p))
                # FLUSH and RESEND are answered by journal data, INJECT_WRITE and READ_BLOCK later.
                later = (kind[FrameType.FLUSH] | kind[FrameType.RESEND] | kind[FrameType.INJECT_WRITE]
                         | kind[FrameType.READ_BLOCK])
                m.d.sync += [resp.eq(r), responds.eq(~ok | ~later), reason.eq(final),
                             act["ok"].eq(ok), act["nak"].eq(~ok),
                             act["write"].eq(ok & kind[FrameType.REG_WRITE]),
                             act["inject"].eq(ok & kind[FrameType.INJECT_WRITE]),
                             act["read"].eq(ok & kind[FrameType.READ_BLOCK]),
                             act_flush.eq(at_port & Mux(ok & kind[FrameType.FLUSH], (1 << n) - 1, 0)),
                             act_resend.eq(at_port & Mux(ok & kind[FrameType.RESEND], (1 << n) - 1, 0)),
                             act_ack.eq(at_port & Mux(ok & kind[FrameType.ACK], (1 << n) - 1, 0))]
                m.next = "COMMIT"
            with m.State("COMMIT"):
                m.d.comb += [go.eq(~responds | resp_fifo.w_rdy), resp_fifo.w_data.eq(resp)]
                with m.If(go):
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
                    m.d.comb += [self.naks_sent.eq(act["nak"]), self.rx_frames.eq(act["ok"])]
                    if store:
                        with m.If(act["inject"]):
                            m.d.sync += [inject_seq.eq(seq), inject_port.eq(port)]
                        with m.If(act["read"]):
                            m.d.sync += [reading["pending"].eq(1), reading["lba"].eq(lba),
                                         reading["seq"].eq(seq)]

    def _load_block(self, m, got, byte, index, ftype, blocked):
        """INJECT_WRITE's block bytes into the injector's buffer as they arrive (if it is idle):
        from RECV's first stage (`got`: a byte at frame offset `index`), registered on the way out.
        The injector becomes busy only by the link's `start`, never while a frame arrives."""
        inj = self.inject
        offset = Signal.like(index)
        m.d.comb += offset.eq(index - _BLOCK_AT)
        with m.If(got):
            with m.If(byte.first):
                m.d.sync += blocked.eq(inj.busy)
            with m.Elif(inj.busy):
                m.d.sync += blocked.eq(1)
        in_block = (index >= _BLOCK_AT) & (index < _BLOCK_AT + self.block_bytes)
        m.d.sync += [inj.load_en.eq(got & in_block & (ftype == FrameType.INJECT_WRITE) & ~inj.busy),
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
        # Registered, so a cycle late: a mark pending with every entry before it sent, and a
        # drain that ended a cycle ago (its mark may be ready, `mark_ready` does not say yet).
        mark_ready, mark_new = Signal(n), Signal(n)
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
            m.d.sync += [mark_ready[p].eq(mark_pending[p] & (link_next[p] == mark_seq[p])),
                         mark_new[p].eq(ended)]

        # Round robin: the first port at or after `rr` with a mark ready, else with an entry.
        rr = Signal(range(n))
        cur = Signal(range(n))
        cur_oh = Signal(n)              # JOURNAL's `cur`, one-hot: its stream's `ready` and stop

        def pick(cands, name):
            """The port picked among `cands`, and whether one was, registered: IDLE acts on the
            picks of a cycle ago (a mark taken is off them by the time IDLE acts again, and JOURNAL
            checks the marks itself before it takes a beat)."""
            chosen, found = Signal(range(n), name=f"{name}_port"), Signal(name=f"{name}_found")
            m.d.sync += found.eq(0)
            with m.Switch(rr):
                for r in range(n):
                    with m.Case(r):
                        for i in reversed(range(n)):
                            q = (r + i) % n
                            with m.If(cands[q]):
                                m.d.sync += [chosen.eq(q), found.eq(1)]
            return chosen, found

        mark_port, any_mark = pick(mark_ready, "mark")
        data_port, any_data = pick(Cat(*(self.port[p].flush.valid for p in range(n))), "data")
        # JOURNAL takes port `cur`'s beats into a register (`beat`, `valid`) and writes them from
        # there a cycle later.
        beat = Signal(beat_layout(self.width))
        valid = Signal()
        m.d.sync += valid.eq(0)
        in_entry = Signal()             # the last beat written was not an entry's last
        stamp_at = 8 // word_bytes        # the beat the entry's timestamp starts on (byte 8)
        # The entry's beat number, counting on past the timestamp's beats and then holding: 0
        # starts the seq, stamp_at the timestamp (with 64-bit beats: 0 the seq word, 1 the
        # timestamp, 2 and 3 later).
        beat_k = Signal(range(2 * stamp_at + 2))
        seq_w = min(self.width, SEQ_BITS)
        seq_carry = Signal()            # seq + 1's carry into its next word (beats under 32 bits)
        grace = Signal(range(_GRACE + 1))
        open_ = Signal()                # JOURNAL may take port `cur`'s beats
        stop = Signal()                 # JOURNAL's frame ends now (decided a cycle ago)
        taken, taken_last = Signal(), Signal()     # a beat of port `cur`'s taken now, an entry's last
        flush = [self.port[p].flush for p in range(n)]
        m.d.comb += [taken.eq(Cat(f.valid & f.ready for f in flush).any()),
                     taken_last.eq(Cat(f.valid & f.ready & f.payload.last for f in flush).any())]
        m.d.comb += [wp.addr.eq(Cat(widx[:frames["half_bits"]], wsel)), wp.data.eq(beat.data)]

        # A frame closed is handed over a cycle later (`closing`, from registers: the decisions
        # that close a frame are the states' own), and IDLE starts nothing until then.
        closing = Signal()
        close_type, close_seq = Signal(8), Signal(16)
        close_len = Signal(range(MAX_PAYLOAD + 1))
        m.d.sync += closing.eq(0)

        def close(ftype, length, seq=0):
            """The buffer being filled is a whole frame: hand it to the sender, fill the other."""
            m.d.sync += [closing.eq(1), close_type.eq(ftype), close_len.eq(length), close_seq.eq(seq)]

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
        read_regs = self._read_regs(m, reading) if self.store_blocks else None
        with m.FSM(name="collect"):
            with m.State("IDLE"):
                block_first = reading["pending"] if self.store_blocks else Const(0)
                with m.If(~closing & ~full.bit_select(wsel, 1)):
                    with m.If(block_first):     # a READ_BLOCK's block (only with a store)
                        if self.store_blocks:
                            m.d.sync += cur.eq(0)
                            m.next = "BLOCK_CMD"
                    with m.Elif(any_mark & mark_ready.bit_select(mark_port, 1)):     # still ready
                        m.d.sync += cur.eq(mark_port)
                        for p in range(n):
                            with m.If(mark_port == p):
                                m.d.comb += mark_taken[p].eq(1)
                                m.d.sync += mark_word.eq(Cat(
                                    Mux(mark_idle[p], mark_time[p], last_stamp[p]), mark_seq[p]))
                        m.next = "MARK"
                    with m.Elif(any_data):
                        m.d.sync += [cur.eq(data_port), cur_oh.eq(1 << data_port), in_entry.eq(0),
                                     grace.eq(_GRACE), open_.eq(0), stop.eq(0)]
                        m.next = "JOURNAL"
            with m.State("JOURNAL"):
                # A beat is taken when the register will be written from next cycle. The stream's
                # `ready` is of registers only: `open`, closed once an entry's last beat is taken
                # and at a boundary (register empty) that took none. A boundary with `open` closed
                # (the first cycle is one) decides, registered: the port's mark goes first, and the
                # frame ends (`stop`, the cycle after) when no entry came in the grace turns; else
                # `open` again for a turn. A drain that ended in the deciding cycle holds `ready`
                # off the turn after (its `mark_new`), so no entry of a next drain passes its mark.
                at_boundary = ~in_entry & ~valid
                for p in range(n):
                    lp = self.port[p]
                    m.d.comb += lp.flush.ready.eq(cur_oh[p] & open_ & ~mark_new[p])
                    with m.If(cur_oh[p]):
                        m.d.sync += beat.eq(lp.flush.payload)       # used only if taken
                with m.If(taken):
                    m.d.sync += valid.eq(1)
                with m.If(open_):
                    with m.If(Mux(taken, taken_last, at_boundary)):
                        m.d.sync += open_.eq(0)
                with m.Elif(at_boundary & ~stop):
                    with m.If(((mark_ready | mark_new) & cur_oh).any() | (grace == 0)):
                        m.d.sync += stop.eq(1)
                    with m.Else():
                        m.d.sync += [open_.eq(1), grace.eq(grace - 1)]
                with m.If(stop):
                    with m.If(widx != 0):
                        close_port(FrameType.JOURNAL, Cat(Const(0, self.lane_bits), widx))
                    m.next = "IDLE"
                with m.If(valid):
                    m.d.comb += wp.en.eq(1)
                    m.d.sync += grace.eq(_GRACE)
                    m.d.sync += [widx.eq(widx + 1), in_entry.eq(~beat.last),
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
                        with m.If(widx >= max_words - entry_words):     # no room for another
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
                self._read_block(m, reading, wp, widx, close, read_regs)
        with m.If(closing):
            m.d.sync += [full.bit_select(wsel, 1).eq(1), frames["ftype"][wsel].eq(close_type),
                         frames["port"][wsel].eq(cur), frames["length"][wsel].eq(close_len),
                         frames["seq"][wsel].eq(close_seq), wsel.eq(~wsel), widx.eq(0)]
        return frames

    def _word(self, value, widx):
        """`value` into a frame buffer a word a cycle from `widx` 0: (the word to write now, a
        condition true on its last word — None when one word holds it all)."""
        words = -(-len(value) // self.width)
        if words == 1:
            return value, None
        index = widx[:(words - 1).bit_length()]
        return value.word_select(index, self.width), index == words - 1

    def _read_regs(self, m, reading):
        """`_read_block`'s registers beside its states: the command's `valid` (until taken) and
        the data beat taken (valid, data, last), a cycle late; and the lba, 64 bits wide."""
        cmd, rdata = self.store_rcmd, self.store_rdata
        lba = Signal(64)
        m.d.comb += [lba.eq(reading["lba"]), cmd.payload.lba.eq(lba)]
        with m.If(cmd.ready):
            m.d.sync += cmd.valid.eq(0)
        got, got_last = Signal(name="rd_got"), Signal(name="rd_last")
        got_data = Signal(self.width, name="rd_data")
        m.d.sync += [got.eq(rdata.valid & rdata.ready), got_data.eq(rdata.payload.data),
                     got_last.eq(rdata.payload.last)]
        return lba, got, got_data, got_last

    def _read_block(self, m, reading, wp, widx, close, regs):
        """READ_BLOCK: the lba, then the block's words from the store, into a BLOCK frame. The
        store's stream signals go into registers only: the command's `valid` is a register, raised
        with the lba's last word, and each data beat is registered and written a cycle later."""
        cmd, rdata = self.store_rcmd, self.store_rdata
        lba, got, got_data, got_last = regs
        with m.State("BLOCK_CMD"):
            # The lba a word a cycle; the command goes out after its last word.
            word, last = self._word(lba, widx)
            m.d.comb += [wp.en.eq(1), wp.data.eq(word)]
            m.d.sync += widx.eq(widx + 1)
            with _when(m, last):
                m.d.sync += cmd.valid.eq(1)
                m.next = "BLOCK_DATA"
        with m.State("BLOCK_DATA"):
            m.d.comb += [rdata.ready.eq(1), wp.data.eq(got_data)]
            with m.If(got):
                m.d.comb += wp.en.eq(1)
                m.d.sync += widx.eq(widx + 1)
                with m.If(got_last):
                    close(FrameType.BLOCK, INJECT.size + self.block_bytes, reading["seq"])
                    m.d.sync += reading["pending"].eq(0)
                    m.next = "IDLE"

    # --- send: header, payload, CRC into the COBS encoder ---------------------------------------
    def _send(self, m, resp_fifo, frames, written_sent):
        """A frame a byte a cycle, each byte through five stages: S (the byte's number `i`), A (its
        kind, its lanes and the payload's addresses, registered: the frame buffer's read port
        reads there in B, the register bus from B to C), B (a header or constant byte picked),
        C (the frame buffer's byte picked; the register's word on the bus), D (the byte, the
        register's picked from the bus), E (CRC'd; queued, a CRC byte from the CRC of the bytes
        before it)."""
        assert READ_LATENCY == 2, "the register's word is on the bus in C: D picks its byte"
        enc = m.submodules.cobs_enc = COBSEncoder()
        wiring.connect(m, enc.o_stream, wiring.flipped(self.tx))
        out = m.submodules.tx_fifo = BlockFIFO(width=FrameByte.size, depth=_OUT_FIFO_DEPTH)
        m.d.comb += [enc.i_stream.valid.eq(out.r_rdy), enc.i_stream.payload.eq(out.r_data),
                     out.r_en.eq(enc.i_stream.ready)]
        crc = m.submodules.tx_crc = CRC32C(8)
        rp, full, rsel = frames["rp"], frames["full"], frames["rsel"]

        # The frame being sent, latched when it starts: the response queue's head (popped once
        # its last byte is issued: the later stages read only their own registers then), or the
        # frame buffer's.
        from_queue = Signal()
        desc = Signal(Response)
        length = Signal(range(MAX_PAYLOAD + 1))
        frame = range(_FRAME_BYTES + 1)
        payload_end = Signal(frame)     # the first CRC byte
        i = Signal(frame)
        at_last, before_last = Signal(), Signal(frame)     # `i` is the frame's last byte; the one before it
        # Stage S issues a byte when the queue has room for it and every byte in the stages, by
        # its level a cycle ago (registered; a byte a cycle comes in at most).
        room = Signal()
        m.d.sync += room.eq(out.level < _OUT_FIFO_DEPTH - _IN_FLIGHT - 1)
        issue = Signal()
        with m.FSM(name="send"):
            with m.State("IDLE"):
                head = Signal(Response)
                m.d.comb += head.eq(resp_fifo.r_data)
                with m.If(resp_fifo.r_rdy):
                    m.d.sync += [from_queue.eq(1), desc.eq(head)]
                    with m.Switch(head.src):
                        with m.Case(SRC_IDENTITY):
                            m.d.sync += length.eq(IDENTITY_BYTES)
                        with m.Case(SRC_REGS):
                            m.d.sync += length.eq((head.count + head.prefix) * 4)
                        with m.Case(SRC_NAK):
                            m.d.sync += length.eq(1)
                        with m.Case(SRC_WRITTEN):
                            m.d.sync += length.eq(WRITTEN.size)
                    m.next = "START"
                with m.Elif(full.bit_select(rsel, 1)):
                    m.d.sync += [from_queue.eq(0), desc.eq(0), desc.src.eq(SRC_BUF),
                                 desc.ftype.eq(frames["ftype"][rsel]), desc.port.eq(frames["port"][rsel]),
                                 desc.seq.eq(frames["seq"][rsel]), length.eq(frames["length"][rsel])]
                    m.next = "START"
            with m.State("START"):
                m.d.sync += [i.eq(0), at_last.eq(0), before_last.eq(length + HEADER_BYTES + CRC_BYTES - 2),
                             payload_end.eq(length + HEADER_BYTES)]
                m.next = "SEND"
            with m.State("SEND"):
                m.d.comb += issue.eq(room)
                with m.If(issue):
                    m.d.sync += [i.eq(i + 1), at_last.eq(i == before_last)]
                    with m.If(at_last):
                        m.d.comb += [self.tx_frames.eq(1), resp_fifo.r_en.eq(from_queue)]
                        with m.If(desc.src == SRC_BUF):
                            m.d.sync += [full.bit_select(rsel, 1).eq(0), rsel.eq(~rsel)]
                        with m.If(desc.src == SRC_WRITTEN):
                            m.d.comb += written_sent.eq(1)
                        m.next = "IDLE"

        # Stage A: the byte's kind and lanes; the payload source's addresses (buffer word, register).
        lanes = self.lane_bits
        j = Signal(frame)                   # the payload's byte
        reg_j = Signal(frame)               # the values' byte (after a REG_VALUES prefix)
        m.d.comb += [j.eq(i - HEADER_BYTES), reg_j.eq(j - 4 * desc.prefix)]
        a = {name: Signal(name=f"a_{name}") for name in ("valid", "header", "crc", "first", "last", "prefix")}
        a_i, a_j, a_reg_lane = Signal(3), Signal(4), Signal(2)
        a_lane, a_crc_index = Signal(max(lanes, 1)), Signal(2)
        rp_addr, r_addr = Signal.like(rp.addr), Signal.like(self.bus.r_addr)
        m.d.comb += [rp.addr.eq(rp_addr), rp.en.eq(1), self.bus.r_addr.eq(r_addr)]
        m.d.sync += [a["valid"].eq(issue), a["header"].eq(i < HEADER_BYTES), a["crc"].eq(i >= payload_end),
                     a["first"].eq(i == 0), a["last"].eq(at_last), a["prefix"].eq(desc.prefix & (j < 4)),
                     a_i.eq(i), a_j.eq(j), a_reg_lane.eq(reg_j), a_lane.eq(j[:lanes] if lanes else 0),
                     a_crc_index.eq(i - payload_end),
                     rp_addr.eq(Cat(j[lanes:lanes + frames["half_bits"]], rsel)),
                     r_addr.eq(desc.addr + reg_j[2:])]

        # Stage B: a header or constant byte; which source the others come from.
        b = {name: Signal(name=f"b_{name}") for name in ("valid", "buf", "reg", "crc", "first", "last")}
        b_const, b_lane, b_reg_lane, b_crc_index = Signal(8), Signal.like(a_lane), Signal(2), Signal(2)
        m.d.sync += [b[k].eq(a[k]) for k in ("valid", "crc", "first", "last")]
        m.d.sync += [b_lane.eq(a_lane), b_reg_lane.eq(a_reg_lane), b_crc_index.eq(a_crc_index),
                     b["buf"].eq(0), b["reg"].eq(0)]
        header = Cat(desc.ftype, desc.port, desc.seq, length, Const(0, 16))
        identity = Const(int.from_bytes(self.identity, "little"), 8 * IDENTITY_BYTES)
        with m.If(a["header"]):
            m.d.sync += b_const.eq(header.word_select(a_i, 8))
        with m.Elif(~a["crc"]):
            with m.Switch(desc.src):
                with m.Case(SRC_BUF):
                    m.d.sync += b["buf"].eq(1)
                with m.Case(SRC_IDENTITY):
                    m.d.sync += b_const.eq(identity.word_select(a_j, 8))
                with m.Case(SRC_NAK):
                    m.d.sync += b_const.eq(desc.reason)
                if self.store_blocks:
                    inj = self.inject
                    written = Cat(inj.time, inj.seq, inj.status, Const(0, 24))
                    with m.Case(SRC_WRITTEN):
                        m.d.sync += b_const.eq(written.word_select(a_j, 8))
                with m.Case(SRC_REGS):
                    with m.If(a["prefix"]):
                        m.d.sync += b_const.eq(Cat(desc.addr, desc.count).word_select(a_j[:2], 8))
                    with m.Else():
                        m.d.sync += b["reg"].eq(1)

        # Stage C: the frame buffer's byte (read from A's address); the register's word is on
        # the bus from this cycle (READ_LATENCY after A's), its byte is D's to pick.
        c = {name: Signal(name=f"c_{name}") for name in ("valid", "buf", "reg", "crc", "first", "last")}
        c_buf, c_const, c_reg_lane, c_crc_index = Signal(8), Signal(8), Signal(2), Signal(2)
        m.d.sync += [c[k].eq(b[k]) for k in c]
        m.d.sync += [c_buf.eq(rp.data.word_select(b_lane, 8) if lanes else rp.data),
                     c_const.eq(b_const), c_reg_lane.eq(b_reg_lane), c_crc_index.eq(b_crc_index)]

        # Stage D: the byte.
        d = {name: Signal(name=f"d_{name}") for name in ("valid", "crc", "first", "last")}
        d_byte, d_crc_index = Signal(8), Signal(2)
        c_reg = self.bus.r_data.word_select(c_reg_lane, 8)
        m.d.sync += [d[k].eq(c[k]) for k in d]
        m.d.sync += [d_byte.eq(Mux(c["buf"], c_buf, Mux(c["reg"], c_reg, c_const))),
                     d_crc_index.eq(c_crc_index)]

        # Stage E: CRC it, queue it (a CRC byte: the CRC's, of every byte before the first).
        o = Signal(FrameByte)
        m.d.comb += [o.data.eq(Mux(d["crc"], crc.crc.word_select(d_crc_index, 8), d_byte)),
                     o.first.eq(d["first"]), o.last.eq(d["last"]),
                     out.w_en.eq(d["valid"]), out.w_data.eq(o),
                     crc.data.valid.eq(d["valid"] & ~d["crc"]), crc.data.payload.data.eq(d_byte),
                     crc.data.payload.first.eq(d["first"])]
