"""JournalPort: one switch port's write path, partial-journal ring and flush engine.

Composes `Timestamper` (phase 1 stamp), `WritePath` (three-phase write, redo or copy-on-write),
`JournalRing` (on-chip RAM ring) and `FlushEngine` (DMA-style drain with acknowledge and
go-back-N resend). `time` is the port's local time in ns: in the device image the integer
output of the port's `DigitalPLL`, or the board's `BoardClock`, or the board's own input
(`DeviceImage.time_source`, `firmware/image.py`); a free-running counter in some tests.

Interfaces (W = `datapath_bits`, B = `block_bytes`; every stream is `amaranth.lib.stream`):

| port | dir | payload | meaning |
|---|---|---|---|
| `time` | in | 64 | local time, ns |
| `mode` | in | 1 | `Mode` for the next writes: 0 redo, 1 copy-on-write (sampled per request) |
| `policy` | in | 1 | ring full: 0 back-pressure ingress, 1 invalidate the port with a marker |
| `reenable` | in | 1 | pulse: an invalid port journals again |
| `ingress` | in | {data: W, first, last} | header beat (`first`, data = lba), B*8/W data beats, `last` |
| `pri_write` | out | {data: W, first, last} | primary write: same shape as `ingress` |
| `pri_wresp` | in | {ok} | primary write completion, in issue order |
| `pri_rcmd` | out | {lba: 64} | copy-on-write pre-image read |
| `pri_rdata` | in | {data: W, last, ok} | B*8/W beats of the old block; any `ok` = 0 fails the read |
| `watermark` | in | range(depth+1) | drain when the ring holds this many entries (0 = off) |
| `timer_period` | in | 32 | drain every this many cycles (0 = off) |
| `flush_cmd` | in | 1 | pulse: drain now |
| `ack` | in | {seq: 32} | host stored every entry up to and including `seq` |
| `resend` | in | 1 | pulse: go back to the oldest unacknowledged entry |
| `flush` | out | {data: W, first, last} | entries as `firmware.abi.entry` bytes, `first`/`last` |
| `stamp` | out | {timestamp: 64, port: 8, seq: 32} | the last request's (see below) |

`stamp` is the `Timestamper`'s: the last request's time and seq, from the cycle after its header
beat went in; an unjournaled request's (an invalid port's) is its time and the next seq; a
PORT_INVALID marker's, from its allocation until the request that found the ring full goes in.

Counters and status (outputs of the same names, the port's registers in the register map): see
`COUNTERS` below, defined in `firmware.abi.regmap`. Those in `EVENTS` (the statistics) are
one-bit outputs that pulse once per event, for the register block to count
(`hdl.counter_bank`); the others are the values themselves.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from firmware.abi.regmap import COUNTERS, EVENTS
from hdl.flush import AckLayout, FlushEngine
from hdl.journal_ring import JournalRing, check_geometry
from hdl.timestamper import TIME_BITS, StampLayout, Timestamper
from hdl.write_path import WritePath, beat_layout, port_io_members


def counters_markdown() -> str:
    rows = ["| name | register width | access | description |", "|---|---:|---|---|"]
    rows += [f"| `{n}` | {w} | {a} | {d}{' (an event: the output pulses)' if n in EVENTS else ''} |"
             for n, w, a, d in COUNTERS]
    return "\n".join(rows)


__doc__ += "\n" + counters_markdown() + "\n"


class JournalPort(wiring.Component):
    """One journal port: ingress → ring + primary storage; ring → flush stream."""

    def __init__(self, *, port: int = 0, block_bytes: int = 512, datapath_bits: int = 64,
                 depth: int = 16, max_inflight: int = 4):
        check_geometry(self, block_bytes, datapath_bits, depth)
        self.port = port
        self.block_bytes = block_bytes
        self.datapath_bits = datapath_bits
        self.depth = depth
        self.max_inflight = max_inflight
        members = {
            "time": In(TIME_BITS),
            "mode": In(1),
            "policy": In(1),
            "reenable": In(1),
            **port_io_members(datapath_bits),
            "watermark": In(range(depth + 1)),
            "timer_period": In(32),
            "flush_cmd": In(1),
            "ack": In(stream.Signature(AckLayout)),
            "resend": In(1),
            "flush": Out(stream.Signature(beat_layout(datapath_bits))),
            "stamp": Out(StampLayout),
        }
        members.update({name: Out(1 if name in EVENTS else width) for name, width, _, _ in COUNTERS})
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        geometry = dict(block_bytes=self.block_bytes, datapath_bits=self.datapath_bits,
                        depth=self.depth)
        stamper = m.submodules.stamper = Timestamper(self.port)
        writes = m.submodules.writes = WritePath(**geometry, max_inflight=self.max_inflight)
        ring = m.submodules.ring = JournalRing(**geometry)
        flush = m.submodules.flush = FlushEngine(port=self.port, **geometry)

        # The ring's tail a cycle after the flush engine moves it: `hold` only grows, so the ring
        # frees a slot a cycle late, never early; the acknowledge's compare and the write path's
        # room check are then separate cycles (together they were the ECP5 build's longest path).
        tail = Signal.like(flush.hold)
        m.d.sync += tail.eq(flush.hold)
        m.d.comb += [
            stamper.time.eq(self.time), stamper.take.eq(writes.take), writes.stamp.eq(stamper.stamp),
            stamper.note.eq(writes.unjournaled), self.stamp.eq(stamper.stamp),
            ring.head.eq(stamper.next_seq),
            writes.mode.eq(self.mode), writes.policy.eq(self.policy),
            writes.reenable.eq(self.reenable), writes.fill.eq(ring.fill),
            ring.alloc.eq(writes.alloc), ring.tail.eq(tail),
            ring.alloc_kind.eq(writes.alloc_kind), ring.alloc_mode.eq(writes.alloc_mode),
            flush.done.eq(ring.done), flush.fill.eq(ring.fill), ring.slot_addr.eq(flush.slot_addr),
            flush.status.eq(ring.status), flush.entry_kind.eq(ring.entry_kind),
            flush.entry_mode.eq(ring.entry_mode),
            flush.watermark.eq(self.watermark), flush.timer_period.eq(self.timer_period),
            flush.flush_cmd.eq(self.flush_cmd), flush.resend.eq(self.resend),
        ]
        wiring.connect(m, wiring.flipped(self.ingress), writes.ingress)
        wiring.connect(m, writes.pri_write, wiring.flipped(self.pri_write))
        wiring.connect(m, wiring.flipped(self.pri_wresp), writes.pri_wresp)
        wiring.connect(m, writes.pri_rcmd, wiring.flipped(self.pri_rcmd))
        wiring.connect(m, wiring.flipped(self.pri_rdata), writes.pri_rdata)
        wiring.connect(m, wiring.flipped(self.ack), flush.ack)
        wiring.connect(m, flush.out, wiring.flipped(self.flush))
        wiring.connect(m, writes.meta_w, ring.meta_w)
        wiring.connect(m, writes.data_w, ring.data_w)
        wiring.connect(m, writes.status_now, ring.status_w0)
        wiring.connect(m, writes.status_done, ring.status_w1)
        wiring.connect(m, flush.meta_r, ring.meta_r)
        wiring.connect(m, flush.data_r, ring.data_r)

        was_stalling = Signal()
        m.d.sync += was_stalling.eq(writes.stalling)
        m.d.comb += [
            self.stall_cycles.eq(writes.stalling), self.stall_events.eq(writes.stalling & ~was_stalling),
            self.entries_written.eq(stamper.next_seq), self.flushed.eq(flush.flushed),
            self.acknowledged.eq(flush.acked), self.resent.eq(flush.resent),
            self.resend_requests.eq(flush.resend_requests), self.ring_fill.eq(ring.fill),
            self.primary_failures.eq(writes.primary_failures),
            self.journal_failures.eq(writes.journal_failures),
            self.unjournaled.eq(writes.unjournaled), self.markers.eq(writes.markers),
            self.protocol_errors.eq(writes.protocol_errors), self.invalid.eq(writes.invalid),
            self.draining.eq(flush.draining), self.flush_trigger.eq(flush.trigger),
        ]
        return m
