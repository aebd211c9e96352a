"""Injector: block writes the host sends over the link enter a port's ingress like a server's.

A standalone image (a dev board, or the virtual board in standalone mode) has no servers: the
host injects its traffic with INJECT_WRITE frames (`firmware.abi.frames`). The link
(`hdl.link.LinkController`) loads the frame's block into this core's buffer byte by byte as
it arrives (`control.load_*`), checks the frame, and then pulses `start` with the port and lba. The
injector sends the request into that port's ingress exactly as a server does — a header beat
(data = lba, its low `datapath_bits` bits) and `block_bytes * 8 / datapath_bits` data beats — so
the port stamps, journals and forwards it to primary storage by its ordinary write path. The
data beats leave through a short queue filled from the buffer ahead of the port
(`hdl.read_ahead`), so the port's ready reaches neither the buffer nor its address. It
then waits for the port's write to end: the primary write's completion (`Status.OK`, or
`PRIMARY_FAILED` when storage failed it), or, in copy-on-write mode, a failed pre-image read
(`JOURNAL_FAILED`: the port consumes the data and writes nothing; the result waits until it
has). `done` then holds the
result until the link has sent it in a WRITTEN frame and pulses `release`; `busy` is high from
`start` to `release`, and the link refuses another INJECT_WRITE (and does not load the buffer)
meanwhile.

The result: `time`, the port's local time when the header beat went in (the cycle the port
stamps the entry with), `seq`, the port's `entries_written` then (the entry's sequence
number), and `status`. The injector is the only source of a standalone port's ingress, so the
next completion on that port is this write's, and the port's `stamp` (`JournalPort.stamp`:
time and seq of the last request that went in, journaled or not) holds this write's until the
next INJECT_WRITE: `time` and `seq` are the stamp of the chosen port, not a copy.

Per port (`port[i]`, from the injector's side): `ingress` out, and what it watches in: `stamp`,
`wresp` (a primary completion taken this cycle) with `wresp_ok`, and `rbeat` (a pre-image beat
taken this cycle) with `rbeat_ok` and `rbeat_last`.
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from firmware.abi.entry import Status
from hdl.journal_ring import check_datapath_bits
from hdl.ram import NO_RW_CHECK
from hdl.read_ahead import ReadAhead
from hdl.timestamper import SEQ_BITS, TIME_BITS, StampLayout
from hdl.write_path import beat_layout


def inject_port_signature(datapath_bits: int) -> wiring.Signature:
    """One port as the injector sees it: the port's ingress and what it watches of the port."""
    return wiring.Signature({
        "ingress": Out(stream.Signature(beat_layout(datapath_bits))),
        "stamp": In(StampLayout),
        "wresp": In(1),
        "wresp_ok": In(1),
        "rbeat": In(1),
        "rbeat_ok": In(1),
        "rbeat_last": In(1),
    })


def InjectorControl(ports: int, block_bytes: int, datapath_bits: int) -> wiring.Signature:
    """The link's side of the injector: load the buffer (a byte into `load_lane` of word
    `load_addr`), start, read the result, release."""
    return wiring.Signature({
        "load_en": Out(1),
        "load_addr": Out(range(block_bytes * 8 // datapath_bits)),
        "load_lane": Out((datapath_bits // 8 - 1).bit_length()),
        "load_data": Out(8),
        "start": Out(1),
        "start_port": Out(range(ports)),
        "start_lba": Out(64),
        "release": Out(1),
        "busy": In(1),
        "done": In(1),
        "time": In(TIME_BITS),
        "seq": In(SEQ_BITS),
        "status": In(8),
    })


def inject_port_watch(m: Module, watch, port) -> None:
    """Drive `watch` (an `inject_port_signature` port, flipped) from a `JournalPort`'s streams."""
    wresp, rdata = port.pri_wresp, port.pri_rdata
    m.d.comb += [watch.stamp.eq(port.stamp),
                 watch.wresp.eq(wresp.valid & wresp.ready), watch.wresp_ok.eq(wresp.payload.ok),
                 watch.rbeat.eq(rdata.valid & rdata.ready), watch.rbeat_ok.eq(rdata.payload.ok),
                 watch.rbeat_last.eq(rdata.payload.last)]


class Injector(wiring.Component):
    """One host-injected block write at a time into `port[i].ingress`; its outcome in `done`."""

    READ_AHEAD = 3      # the beats' queue: about one every other cycle, far above the link's pace of
    #                     loading them; each more entry is a word of flip-flops on an iCE40

    def __init__(self, *, ports: int, block_bytes: int, datapath_bits: int = 64):
        check_datapath_bits(self, datapath_bits)
        self.ports = ports
        self.width = datapath_bits
        self.block_words = block_bytes * 8 // datapath_bits
        super().__init__({
            "control": In(InjectorControl(ports, block_bytes, datapath_bits)),
            "port": Out(inject_port_signature(datapath_bits)).array(ports),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.control
        words = self.block_words
        # Loaded while idle, read while busy: never both.
        buf = m.submodules.buf = Memory(shape=self.width, depth=words, init=[], attrs=NO_RW_CHECK)
        wp = buf.write_port(granularity=8)
        rp = buf.read_port()
        m.d.comb += [wp.addr.eq(c.load_addr), wp.data.eq(c.load_data.replicate(self.width // 8)),
                     wp.en.eq(c.load_en << c.load_lane)]      # one byte lane
        beat = beat_layout(self.width)
        ahead = m.submodules.ahead = ReadAhead(width=self.width, words=words, depth=self.READ_AHEAD)
        m.d.comb += [rp.addr.eq(ahead.addr), ahead.data.eq(rp.data)]

        port = Signal(range(self.ports))
        chosen = Signal(self.ports)     # `port` one-hot: each ingress valid a gate of two registers
        lba = Signal(64)
        header = Signal()               # the header beat is offered, ahead of the block's words
        read_failed = Signal()          # a pre-image beat of this write came back failed
        ended = Signal()                # the port's write ended without a primary write
        # The chosen port's ingress (the header, then the queue's head) and watched signals.
        offered = Signal(beat)
        m.d.comb += [offered.data.eq(Mux(header, lba, ahead.out.payload.data)), offered.first.eq(header),
                     offered.last.eq(~header & ahead.out.payload.last)]
        watch = inject_port_signature(self.width).flip().create(path=("watch",))
        for p in range(self.ports):
            ingress = self.port[p].ingress
            m.d.comb += [ingress.valid.eq((header | ahead.out.valid) & chosen[p]),
                         ingress.payload.eq(offered)]
            with m.If(port == p):
                m.d.comb += [getattr(watch, name).eq(getattr(self.port[p], name))
                             for name in ("stamp", "wresp", "wresp_ok", "rbeat", "rbeat_ok",
                                          "rbeat_last")]
        taken = Cat(chosen[p] & self.port[p].ingress.ready for p in range(self.ports)).any()
        m.d.comb += [c.time.eq(watch.stamp.timestamp), c.seq.eq(watch.stamp.seq),
                     ahead.out.ready.eq(taken & ~header)]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(c.start):
                    m.d.sync += [port.eq(c.start_port), chosen.eq(1 << c.start_port), lba.eq(c.start_lba),
                                 header.eq(1), c.busy.eq(1), read_failed.eq(0), ended.eq(0)]
                    m.d.comb += ahead.start.eq(1)
                    m.next = "HEADER"
            with m.State("HEADER"):
                with m.If(taken):
                    m.d.sync += header.eq(0)
                    m.next = "WAIT"
            with m.State("WAIT"):
                self._watch_read(m, watch, read_failed, ended)
                # Every beat handed to the port (a copy-on-write port that failed its pre-image read
                # still consumes the data: the result waits for that, so the queue is empty for the next).
                with m.If(ended & ahead.idle):
                    m.d.sync += [c.status.eq(Status.JOURNAL_FAILED), c.done.eq(1)]
                    m.next = "DONE"
                with m.Elif(watch.wresp):
                    m.d.sync += [c.status.eq(Status.OK), c.done.eq(1)]
                    with m.If(~watch.wresp_ok):
                        m.d.sync += c.status.eq(Status.PRIMARY_FAILED)
                    m.next = "DONE"
            with m.State("DONE"):
                with m.If(c.release):
                    m.d.sync += [c.done.eq(0), c.busy.eq(0)]
                    m.next = "IDLE"
        return m

    @staticmethod
    def _watch_read(m, watch, read_failed, ended):
        """Copy-on-write: a pre-image read with any failed beat ends the write without a primary write."""
        with m.If(watch.rbeat):
            with m.If(~watch.rbeat_ok):
                m.d.sync += read_failed.eq(1)
            with m.If(watch.rbeat_last & (read_failed | ~watch.rbeat_ok)):
                m.d.sync += ended.eq(1)
