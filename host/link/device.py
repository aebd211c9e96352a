"""Device: the host's driver for a portjournal board on a `SerialTransport`.

Requests (IDENTIFY, REG_READ, REG_WRITE, ACK) carry a link sequence number and wait for the
response with that number; on a timeout or a NAK they are sent again (same number, so a late
answer to an earlier try still counts), up to `tries` times. NAKs carry seq 0: one that
arrives while a request is outstanding is taken to be about that request (at worst it causes a
harmless repeat of a read or an ACK). A write to a write-1-to-pulse register (`reenable`) is
never repeated after a bare timeout, since it may have taken effect: the caller is told.

Journal data arrives without being asked for: JOURNAL frames go into per-port entry buffers
keyed by entry sequence (entries the host already acknowledged, and repeats, are dropped and
counted; a jump past a missing entry sends RESEND once per drain), FLUSH_MARK frames record
how far a port's history is complete. On top of this the driver is the Collector's `PortLink`:
`flush(port)` sends FLUSH and returns once a FLUSH_MARK has arrived and every entry before the
mark's `next seq` is in hand, `ack(port, seq)` sends ACK and drops what the device freed, and
`resend(port)` sends RESEND. The Collector acknowledges only what `LocalJournal.append` made
durable, so the ring never frees an entry the journal does not hold.

A standalone board (IDENTITY's `FEATURE_INJECTION`: a dev board, or the virtual board's
standalone variant) keeps its volume in on-chip RAM and takes its write traffic from the host:
`inject_write(port, lba, data)` sends INJECT_WRITE and returns the WRITTEN response (the
entry's timestamp and seq, the write's status) once the board's primary storage has the block;
`read_stored_block(lba)` reads a block of that volume (READ_BLOCK → BLOCK). Both are requests
like the others (same seq on a repeat). A repeated INJECT_WRITE whose first try did land writes
the same block again right after it (the caller sends its next write only after this one's
WRITTEN), so the volume is as if once; the journal then holds the write twice, the same data.
The device refuses an INJECT_WRITE with NAK BUSY while its last one is still stuck in a full
ring: collect the port first (`store_room` says how many writes a port's ring has room for).
"""

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import crc32c

from firmware.abi import regmap
from firmware.abi.entry import HEADER_BYTES as ENTRY_HEADER_BYTES
from firmware.abi.entry import Mode, Status, entry_bytes
from firmware.abi.frames import (
    FEATURE_BOARD_CLOCK,
    FEATURE_INJECTION,
    FLUSH_MARK,
    IDENTITY,
    IMAGE_ID,
    IMAGE_VERSION,
    INJECT,
    MAX_PAYLOAD,
    WRITTEN,
    FrameType,
)

from ..journal.collector import LinkFault
from .serial import Frame, SerialTransport

MAX_READ = (MAX_PAYLOAD - 4) // 4        # registers in one REG_VALUES response
RESPONSES = {FrameType.IDENTIFY: FrameType.IDENTITY, FrameType.REG_READ: FrameType.REG_VALUES,
             FrameType.REG_WRITE: FrameType.REG_VALUES, FrameType.ACK: FrameType.ACKED,
             FrameType.INJECT_WRITE: FrameType.WRITTEN, FrameType.READ_BLOCK: FrameType.BLOCK}


class DeviceError(LinkFault):
    """The device did not answer, answered nonsense, or is not a portjournal device."""


@dataclass(frozen=True)
class Identity:
    """The IDENTITY response: what image runs on the board and its geometry."""

    image_id: int
    version: int
    ports: int
    mode: Mode
    ring_depth: int
    block_bytes: int
    datapath_bits: int
    features: int = 0

    @classmethod
    def unpack(cls, payload: bytes) -> "Identity":
        image_id, version, ports, mode, depth, block, bits, features = IDENTITY.unpack(payload)
        return cls(image_id, version, ports, Mode(mode), depth, block, bits, features)

    @property
    def standalone(self) -> bool:
        """The board keeps its volume on chip and takes injected writes (INJECT_WRITE, READ_BLOCK)."""
        return bool(self.features & FEATURE_INJECTION)

    @property
    def board_clock(self) -> bool:
        """The ports count time on the board's one clock (`hdl.board_clock`), not with a DPLL."""
        return bool(self.features & FEATURE_BOARD_CLOCK)

    @property
    def version_text(self) -> str:
        return f"{self.version >> 16}.{self.version & 0xFFFF}"


@dataclass(frozen=True)
class Written:
    """A standalone board's answer to an injected write: it is in the board's primary storage."""

    time: int           # the entry's timestamp: the port's time when the write went in, ns
    seq: int            # the entry's seq (the port's entries_written then)
    status: Status      # OK, or PRIMARY_FAILED / JOURNAL_FAILED


@dataclass
class DeviceCounters:
    """The host's view of the link: what it asked, repeated, lost and got."""

    requests: int = 0
    retries: int = 0
    timeouts: int = 0
    naks: int = 0
    stale_responses: int = 0        # answers to a request already answered (a repeat's echo)
    unexpected_frames: int = 0
    echoes: int = 0                 # frames of a request's type: the far end sends ours back
    flushes: int = 0
    resends: int = 0                # RESEND frames sent (gaps seen by the driver or the journal)
    gaps: int = 0                   # JOURNAL frames that skipped a missing entry
    marks: int = 0
    journal_frames: int = 0
    entries: int = 0                # entries taken into a buffer for the first time
    duplicates: int = 0             # entries dropped: already acknowledged or already buffered
    conflicts: int = 0              # a repeated entry that differs from the buffered one
    bad_entries: int = 0            # JOURNAL frames whose entries do not parse (kept none of them)
    acks: int = 0
    injected: int = 0               # INJECT_WRITEs answered by WRITTEN

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class PortStream:
    """What the host holds of one port's journal between FLUSH_MARKs."""

    expected: int | None = None     # first seq not yet acknowledged (None until learnt)
    entries: dict[int, bytes] = field(default_factory=dict)
    contig: int = 0                 # first seq >= expected not in `entries`
    mark: tuple[int, int] | None = None     # latest FLUSH_MARK: (time, next seq)
    marks: int = 0
    resend_at: float | None = None  # when a RESEND last went out, until a mark shows nothing missing
    last_seen: int = -1             # last seq of the latest JOURNAL frame (a lower one = rewound)
    activity: float = 0.0           # when a frame of this port last arrived
    tail: int = 0                   # the ring's tail as the device last said (ACKED)

    def advance(self) -> int:
        if self.expected is not None:
            self.contig = max(self.contig, self.expected)
            while self.contig in self.entries:
                self.contig += 1
        return self.contig


class Device:
    """A portjournal board behind a transport: identity, registers, flush, ack, resend."""

    def __init__(self, transport: SerialTransport, *, timeout: float = 0.5, tries: int = 3,
                 flush_timeout: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self.transport, self.timeout, self.tries = transport, timeout, tries
        self.flush_timeout, self.clock = flush_timeout, clock
        self.counters = DeviceCounters()
        self.identity: Identity | None = None
        self.streams: list[PortStream] = []
        self._seq = 0
        self._store_blocks: int | None = None
        self._entries_written: dict[int, int] = {}      # per port, as the last WRITTEN told

    @classmethod
    def open(cls, path: str, *, baud: int = 115200, **kwargs) -> "Device":
        """Open `path` and identify the board on it (DeviceError if it is not one)."""
        transport = SerialTransport(path, baud=baud)
        device = cls(transport, **kwargs)
        try:
            device.identify()
        except BaseException:
            transport.close()
            raise
        return device

    def close(self) -> None:
        self.transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- requests ----------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = self._seq % 0xFFFF + 1                  # 1..65535: 0 is for unsolicited frames
        return self._seq

    def _transact(self, ftype: FrameType, payload: bytes = b"", *, port: int = 0,
                  check: Callable[[Frame], bool] = lambda f: True, repeat_on_timeout: bool = True) -> Frame:
        """Send a request and return its response, repeating on timeout or NAK."""
        seq, want = self._next_seq(), RESPONSES[ftype]
        self.counters.requests += 1
        naked = False
        for attempt in range(self.tries):
            if attempt:
                self.counters.retries += 1
            self.transport.send(ftype, payload, port=port, seq=seq)
            deadline = self.clock() + self.timeout
            naked = False
            while (frame := self._pump(deadline - self.clock())) is not None:
                if frame.type == FrameType.NAK:
                    self.counters.naks += 1
                    naked = True
                    if repeat_on_timeout:
                        break                       # the device dropped a frame: most likely ours
                elif frame.seq == seq and frame.type == want and check(frame):
                    return frame
                elif frame.seq != seq and frame.type in RESPONSES.values():
                    self.counters.stale_responses += 1
                elif not frame.type & 0x80:         # requests are 0x01-0x7F, answers 0x80 up
                    self.counters.echoes += 1
                else:
                    self.counters.unexpected_frames += 1
            else:
                self.counters.timeouts += 1
                if not repeat_on_timeout and not naked:
                    raise DeviceError(f"{self.transport.path}: no answer to {ftype.name}; not repeated "
                                      "because it may have taken effect: read the state back")
        raise DeviceError(self._silence(ftype))

    def _silence(self, ftype: FrameType) -> str:
        c = self.transport.counters
        waited = f"{self.tries} tries of {self.timeout:g} s"
        if c.rx_bytes == 0:
            return (f"{self.transport.path}: no answer to {ftype.name} after {waited}: nothing was "
                    "received (not a portjournal device, not running, or another baud rate?): check "
                    "--port and --baud, and that the board (or 'portjournal sim') is running")
        if self.counters.echoes:
            return (f"{self.transport.path}: no answer to {ftype.name} after {waited}: the other end "
                    f"sends back the host's own requests ({self.counters.echoes} of them): a loopback or "
                    "an echoing terminal, not a portjournal device: check --port")
        if c.rx_frames == 0:
            return (f"{self.transport.path}: no portjournal frame in answer to {ftype.name} after {waited}: "
                    f"{c.rx_bytes} bytes received, {c.rx_errors} of them runs that are not frames "
                    "(not a portjournal device, or another baud rate?): check --port and --baud")
        return (f"{self.transport.path}: no answer to {ftype.name} after {waited} "
                f"({self.counters.naks} NAKs, {c.rx_errors} damaged frames received): the link is "
                "too damaged; check the cable, or try a lower --baud or a longer --timeout")

    def identify(self) -> Identity:
        self.transport.drain()
        frame = self._transact(FrameType.IDENTIFY, check=lambda f: len(f.payload) == IDENTITY.size)
        identity = Identity.unpack(frame.payload)
        if identity.image_id != IMAGE_ID:
            raise DeviceError(f"{self.transport.path}: image id {identity.image_id:#010x} is not "
                              f"portjournal's {IMAGE_ID:#010x}: check that --port is a portjournal board")
        if identity.version >> 16 != IMAGE_VERSION >> 16:
            raise DeviceError(f"{self.transport.path}: image version {identity.version_text} does not "
                              f"speak this host's link ABI {IMAGE_VERSION >> 16}.x: load a board image "
                              "and a host tool of the same version")
        if self.identity is None or self.identity.ports != identity.ports:
            self.streams = [PortStream() for _ in range(identity.ports)]
        self.identity = identity
        return identity

    def _ports(self) -> int:
        if self.identity is None:
            self.identify()
        return self.identity.ports

    def read_registers(self, addr: int, count: int = 1) -> list[int]:
        values: list[int] = []
        while count > 0:
            n = min(count, MAX_READ)
            head = struct.pack("<HH", addr, n)
            frame = self._transact(FrameType.REG_READ, head, check=lambda f, h=head, n=n:
                                   f.payload[:4] == h and len(f.payload) == 4 + 4 * n)
            values += struct.unpack_from(f"<{n}I", frame.payload, 4)
            addr, count = addr + n, count - n
        return values

    def read(self, name: str, port: int | None = None) -> int:
        return self.read_registers(regmap.address(name, port))[0]

    def write(self, name: str, value: int, port: int | None = None) -> int:
        """Write a register by name; returns the value read back (0 for a pulse)."""
        reg = regmap.register(name, port)
        addr = regmap.address(name, port)
        frame = self._transact(FrameType.REG_WRITE, struct.pack("<HI", addr, value),
                               check=lambda f: f.payload[:4] == struct.pack("<HH", addr, 1),
                               repeat_on_timeout=reg.access != "W1P")
        return struct.unpack_from("<I", frame.payload, 4)[0]

    def read_block(self, port: int | None = None) -> dict[str, int]:
        """Every register of the global block, or of one port's block, by name."""
        table = regmap.GLOBAL if port is None else regmap.PORT
        base = 0 if port is None else regmap.port_base(port)
        last = max(r.offset for r in table)
        values = self.read_registers(base, last + 1)
        return {r.name: values[r.offset] for r in table}

    # --- a standalone board's volume and traffic ------------------------------------------------

    def store_blocks(self) -> int:
        """Blocks of the board's on-chip volume (DeviceError unless the board is standalone)."""
        if not self._identity().standalone:
            raise DeviceError(f"{self.transport.path}: the board's image takes no injected writes (its "
                              "primary storage is outside it): load a standalone image, or use the "
                              "virtual board's standalone variant ('portjournal sim --standalone')")
        if self._store_blocks is None:
            self._store_blocks = self.read("store_blocks")
        return self._store_blocks

    def _check_block(self, lba: int) -> None:
        if not 0 <= lba < self.store_blocks():
            raise ValueError(f"block {lba} is outside the board's volume of {self._store_blocks} blocks")

    def inject_write(self, port: int, lba: int, data: bytes) -> Written:
        """Write `data` to block `lba` through `port`, as a server on that port would; returns when
        the board's primary storage has it."""
        self._check_block(lba)
        if not 0 <= port < self.identity.ports or len(data) != self.identity.block_bytes:
            raise ValueError(f"need a port below {self.identity.ports} and a block of "
                             f"{self.identity.block_bytes} bytes (got {port}, {len(data)} bytes)")
        frame = self._transact(FrameType.INJECT_WRITE, INJECT.pack(lba) + data, port=port,
                               check=lambda f: f.port == port and len(f.payload) == WRITTEN.size)
        self.counters.injected += 1
        time_ns, seq, status = WRITTEN.unpack(frame.payload)
        self._entries_written[port] = seq + 1
        return Written(time_ns, seq, Status(status))

    def read_stored_block(self, lba: int) -> bytes:
        """Block `lba` of the board's on-chip volume as it is now."""
        self._check_block(lba)
        head = INJECT.pack(lba)
        size = INJECT.size + self.identity.block_bytes
        frame = self._transact(FrameType.READ_BLOCK, head,
                               check=lambda f: len(f.payload) == size and f.payload[:INJECT.size] == head)
        return frame.payload[INJECT.size:]

    def store_room(self, port: int) -> int:
        """Writes `port` can take now without its ring filling: its ring's depth less one (room for
        a marker) less the entries written and not yet acknowledged."""
        if port not in self._entries_written:
            self._entries_written[port] = self.read("entries_written", port)
        unacknowledged = self._entries_written[port] - self._learn_tail(port).expected
        return self._identity().ring_depth - 1 - unacknowledged

    def _identity(self) -> Identity:
        if self.identity is None:
            self.identify()
        return self.identity

    # --- the journal stream ------------------------------------------------------------------

    def _pump(self, timeout: float, stop: Callable[[], bool] = lambda: False) -> Frame | None:
        """Take in JOURNAL and FLUSH_MARK frames; return the first other frame, or None on timeout
        or as soon as `stop()` holds after a frame was taken in."""
        deadline = self.clock() + timeout
        while True:
            frame = self.transport.recv(max(0.0, deadline - self.clock()))
            if frame is None:
                return None
            if frame.type == FrameType.JOURNAL:
                self._on_journal(frame)
            elif frame.type == FrameType.FLUSH_MARK:
                self._on_mark(frame)
            else:
                return frame
            if stop():
                return None

    def _stream(self, port: int) -> PortStream | None:
        if not self.streams:
            return None
        if port >= len(self.streams):
            self.counters.unexpected_frames += 1
            return None
        return self.streams[port]

    def _on_journal(self, frame: Frame) -> None:
        self.counters.journal_frames += 1
        st = self._stream(frame.port)
        if st is None:
            return
        st.activity = self.clock()
        payload, batch, off = frame.payload, [], 0
        while off < len(payload):
            if len(payload) - off < ENTRY_HEADER_BYTES:
                self.counters.bad_entries += 1
                return
            seq, port = struct.unpack_from("<IB", payload, off)
            size = entry_bytes(struct.unpack_from("<I", payload, off + 24)[0])
            raw = payload[off:off + size]
            if (len(raw) != size or port != frame.port
                    or crc32c.crc32c(raw[:-8]) != int.from_bytes(raw[-8:-4], "little")):
                self.counters.bad_entries += 1
                return
            batch.append((seq, raw))
            off += size
        if not batch:
            return
        first = batch[0][0]
        if st.resend_at is not None and (first <= st.last_seen or first == st.expected):
            st.resend_at = None             # the device went back: the resend is under way
        st.last_seen = batch[-1][0]
        if st.expected is not None and batch[0][0] > st.advance() and not self._resending(st):
            self.counters.gaps += 1
            self._send_resend(frame.port)
        for seq, raw in batch:
            if st.expected is not None and seq < st.expected:
                self.counters.duplicates += 1
            elif seq in st.entries:
                self.counters.duplicates += 1
                self.counters.conflicts += st.entries[seq] != raw
            else:
                st.entries[seq] = raw
                self.counters.entries += 1

    def _on_mark(self, frame: Frame) -> None:
        self.counters.marks += 1
        st = self._stream(frame.port)
        if st is None or len(frame.payload) != FLUSH_MARK.size:
            self.counters.unexpected_frames += st is not None
            return
        st.mark = FLUSH_MARK.unpack(frame.payload)
        st.marks += 1
        st.activity = self.clock()
        if st.advance() >= st.mark[1]:
            st.resend_at = None             # nothing missing before the mark: no resend pending

    def _resending(self, st: PortStream) -> bool:
        """A RESEND went out lately and the device has not yet been seen going back: do not repeat it.

        (The mark of a drain already under way may come first; once frames show the rewind, the
        next mark ends the resent drain, and a gap after it asks again at once. A RESEND that was
        lost shows as quiet and is repeated then.)"""
        return st.resend_at is not None and self.clock() - st.resend_at < self.flush_timeout

    def _send_resend(self, port: int) -> None:
        self.counters.resends += 1
        self.streams[port].resend_at = self.clock()
        self.transport.send(FrameType.RESEND, port=port)

    def _learn_tail(self, port: int) -> PortStream:
        st = self.streams[port]
        if st.expected is None:
            st.expected = st.tail = self.read("acknowledged", port)
            for seq in [s for s in st.entries if s < st.expected]:
                del st.entries[seq]
            st.contig = st.expected
        return st

    def flush(self, port: int) -> tuple[bytes, int]:
        """PortLink: the port's unacknowledged entries in sequence order, and the time they cover."""
        if not 0 <= port < self._ports():
            raise DeviceError(f"port {port} is outside the device's {self.identity.ports} ports")
        st = self._learn_tail(port)
        marks = st.marks
        self.counters.flushes += 1
        self.transport.send(FrameType.FLUSH, port=port)
        since, quiet = self.clock(), 0
        while True:
            if st.marks > marks:
                mark_time, next_seq = st.mark
                if st.advance() >= next_seq:
                    raw = b"".join(st.entries[s] for s in range(st.expected, max(next_seq, st.expected)))
                    return raw, mark_time
                marks = st.marks                    # entries before the mark were lost: go back
                if not self._resending(st):
                    self.counters.gaps += 1
                    self._send_resend(port)
            left = max(since, st.activity) + self.flush_timeout - self.clock()
            frame = self._pump(left, stop=lambda m=marks: st.marks > m)
            if frame is not None:
                if frame.type == FrameType.NAK:     # maybe our FLUSH or RESEND: ask again
                    self.counters.naks += 1
                    self._resume(port, st)
                elif frame.type in RESPONSES.values():
                    self.counters.stale_responses += 1
                else:
                    self.counters.unexpected_frames += 1
            elif st.marks == marks and max(since, st.activity) + self.flush_timeout <= self.clock():
                quiet += 1
                self.counters.timeouts += 1
                if quiet >= self.tries:
                    raise DeviceError(f"{self.transport.path}: port {port} sent no FLUSH_MARK within "
                                      f"{self.tries} × {self.flush_timeout:g} s of quiet")
                self.counters.retries += 1
                since = self.clock()
                self._resume(port, st)

    def _resume(self, port: int, st: PortStream) -> None:
        """After a lost request or silence during a flush: resend if a drain was resending, else flush."""
        if st.resend_at is not None:
            self._send_resend(port)
        else:
            self.counters.flushes += 1
            self.transport.send(FrameType.FLUSH, port=port)

    def ack(self, port: int, seq: int) -> None:
        """PortLink: everything of `port` up to `seq` is durable; the ring may free it."""
        st = self._learn_tail(port)
        if seq < st.expected:
            return                                  # nothing new to free
        frame = self._transact(FrameType.ACK, struct.pack("<I", seq), port=port,
                               check=lambda f: f.port == port and len(f.payload) == 4)
        self.counters.acks += 1
        st.tail = struct.unpack("<I", frame.payload)[0]
        st.expected = seq + 1
        for s in [s for s in st.entries if s < st.expected]:
            del st.entries[s]

    def resend(self, port: int) -> None:
        """PortLink: ask the port to send again from its oldest unacknowledged entry."""
        self._learn_tail(port)
        self._send_resend(port)

    def link_counters(self) -> dict[str, int]:
        """Host-side counters: the transport's and the driver's, in one mapping."""
        return {**self.transport.counters.as_dict(), **self.counters.as_dict()}

    def bytes_received(self) -> int:
        """Bytes in from the device so far (for a rate)."""
        return self.transport.counters.rx_bytes

    def link_summary(self) -> str:
        """One line on the link's health, for a progress display."""
        c = self.link_counters()
        return (f"{c['rx_frames']} frames, {self.transport.counters.rx_errors} damaged frames received, "
                f"{c['naks']} NAKs, {c['retries']} retries, {c['resends']} resends, "
                f"{c['duplicates']} duplicate entries")


__all__ = ["Device", "DeviceCounters", "DeviceError", "Identity", "PortStream", "Written"]
