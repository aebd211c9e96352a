"""DeviceImage: the device as a board sees it — N journal ports, the link and the register map.

The image has one clock domain and no pins: a board adds its clocks, a UART on the link byte
streams (`hdl.uart.UART`) and its storage; the virtual board feeds the byte streams and the
storage interfaces from the simulator directly.

| member | dir | payload | meaning |
|---|---|---|---|
| `rx` | in | 8 | link bytes from the host (COBS frames, `firmware.abi.frames`; serial link) |
| `tx` | out | 8 | link bytes to the host (serial link) |
| `bar` | in | `RegisterBus` | the register map as the DMA link's BAR (DMA link) |
| `wr` | out | {addr: 64, data: 64, first, last} | memory writes into host memory (DMA link, W = 64 only) |
| `dma_busy` | out | 1 | `DmaRingWriter.busy`: an entry is being or could be written (DMA link) |
| `rx_framing_errors` | in | 32 | the board UART's framing errors (register of that name; 0 without a UART) |
| `timebase` | in | 1 | the time base's broadcast wire (`hdl.timebase`; only with `time_source="dpll"`) |
| `port[i].time` | in | 64 | the port's local time, ns (only with `time_source="input"`: a test's stand-in) |
| `port[i].locked` | out | 1 | port i's DPLL is locked (`"dpll"`; 1 with `"clock"`, absent with `"input"`) |
| `port[i].ingress` | in | {data: W, first, last} | block writes into port i (`JournalPort.ingress`) |
| `port[i].pri_write` | out | {data: W, first, last} | port i's writes to primary storage |
| `port[i].pri_wresp` | in | {ok} | their completions, in order |
| `port[i].pri_rcmd` | out | {lba: 64} | copy-on-write pre-image reads |
| `port[i].pri_rdata` | in | {data: W, last, ok} | the pre-image beats |
| `store_rcmd` | out | {lba: 64} | READ_BLOCK's read of the on-chip volume (only with `store_blocks`) |
| `store_rdata` | in | {data: W, last, ok} | its beats |

W = `datapath_bits` (8, 16, 32 or 64; default 64): the width of every port's beats, of the
injector's buffer and of the link's frame buffers; the IDENTITY frame and the `datapath_bits`
register report it. Entries are the same bytes at every width. The DMA link takes 64 only.

Inside: `JournalPort` i (`hdl/journal_port.py`) with its `flush`/`ack`/`flush_cmd`/`resend`
wired to `LinkController.port[i]` (`hdl/link.py`), its control inputs driven and its counters
read by `RegisterBlock.port[i]` (`firmware/registers.py`, built from `firmware/abi/regmap.py`),
which the link reaches over its register bus.

With `link="dma"` the link is `DmaRingWriter` (`hdl/dma.py`) instead: each port's flush stream
goes into its ring in host memory over `wr` and the port's doorbell register acknowledges;
enabling a port's ring pulses the port's `resend`, so the ring starts with the port's oldest
unacknowledged entry (`hdl/dma.py`); the host reaches the registers through `bar`, a board's
PCIe endpoint turning BAR accesses into register-bus cycles (register `r` at BAR byte offset
`4*r`). Ports start with `watermark` 1, so an entry is flushed as soon as it is complete; the
link counters and `max_payload` read 0. On the serial link the `dma` registers are not built:
they read 0 and ignore writes.

Each port's local time comes from `time_source`. With `"dpll"` (the default) each port has a
`DigitalPLL` (`hdl/dpll.py`) locked to the
`timebase` wire: its integer `time` is the port's local time (the JournalPort's timestamps and
the link's FLUSH_MARK times) and its outputs drive the port's `dpll` registers, split into
32-bit words by `firmware.abi.regmap.DPLL_WORDS`. For now every DPLL runs in the image's one
clock domain (`clk_hz`); `interval_ns`/`unit_ns` must match the board's `TimeBase`.
`port_ppm` gives port i an oscillator `port_ppm[i]` ppm off nominal the way a board with one
clock can: its DPLL is built for a clock of `clk_hz / (1 + ppm·1e-6)`, so its nominal
increment is off by that much and its loop must find and cancel the offset — the same loop
problem as a port oscillator that far off, with the same clock edges. With `"clock"` the
ports count time on the image's clock (one `BoardClock`, `hdl/board_clock.py`, for all), for a
board whose ports and time base share one oscillator, where a DPLL would have nothing to
correct (the iCEBreaker, which has no room for one): the `dpll` registers read that time and
increment, `locked` 1 and `state` tracking, the rest 0, and IDENTITY's `FEATURE_BOARD_CLOCK`
says so. With `"input"` the board drives `port[i].time` itself and the `dpll` registers read 0
(`sim/device_top.py`, the link tests).

With `store_blocks` > 0 the image is *standalone*: its board has no servers and no storage
network, and keeps a volume of `store_blocks` blocks in on-chip RAM (`boards.storage.BlockStore`,
on the ports' primary-storage streams and on `store_rcmd`/`store_rdata`). The host injects the
write traffic over the link (INJECT_WRITE) and reads the volume back (READ_BLOCK): an `Injector`
(`hdl/inject.py`) is every port's ingress, so `port[i]` has no `ingress` member. The
`store_blocks` register and IDENTITY's `FEATURE_INJECTION` bit tell the host. Only on the serial
link, and at most 2**W blocks (a port's header beat carries the lba in W bits).
"""

from amaranth.hdl import Const, Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from firmware.abi.entry import Mode
from firmware.abi.frames import FEATURE_BOARD_CLOCK, FEATURE_INJECTION, IDENTITY, IMAGE_ID, IMAGE_VERSION
from firmware.abi.regmap import COUNTERS, DMA_REGISTERS, DPLL_WORDS, PORT
from firmware.registers import RegisterBlock
from hdl.board_clock import BoardClock
from hdl.dma import DmaRingWriter, WriteBeat
from hdl.dpll import TRACK, DigitalPLL
from hdl.inject import Injector, inject_port_watch
from hdl.journal_port import JournalPort
from hdl.journal_ring import check_datapath_bits
from hdl.link import LinkController, RegisterBus
from hdl.timebase import DEFAULT_BIT_RATE, DEFAULT_INTERVAL_NS, DEFAULT_UNIT_NS
from hdl.timestamper import TIME_BITS
from hdl.write_path import ReadCommand, port_io_members, read_beat_layout

TIME_SOURCES = ("dpll", "clock", "input")


def board_port_signature(time_source: str, injection: bool, datapath_bits: int) -> wiring.Signature:
    """A port as the board sees it: its `locked` out (for a board's LED or harness), or its
    `time` in if the board drives it; its ingress unless the host injects the writes; its
    storage streams."""
    members = {"time": In(TIME_BITS)} if time_source == "input" else {"locked": Out(1)}
    members.update({name: member for name, member in port_io_members(datapath_bits).items()
                    if not (injection and name == "ingress")})
    return wiring.Signature(members)


CONTROLS = [r.name for r in PORT if r.group == "control"]


class DeviceImage(wiring.Component):
    """`ports` journal ports of `depth` entries of `block_bytes`, the link and the registers."""

    def __init__(self, *, ports: int = 4, block_bytes: int = 512, depth: int = 16,
                 mode: Mode = Mode.REDO, max_payload: int | None = None, time_source: str = "dpll",
                 clk_hz: float = 125e6, interval_ns: int = DEFAULT_INTERVAL_NS,
                 unit_ns: int = DEFAULT_UNIT_NS, bit_rate: int = DEFAULT_BIT_RATE,
                 port_ppm: tuple[float, ...] = (), link: str = "serial", store_blocks: int = 0,
                 datapath_bits: int = 64):
        if not 1 <= ports <= 255 or depth > 0xFFFF or len(port_ppm) not in (0, ports) \
                or link not in ("serial", "dma") or not 0 <= store_blocks < 2**32 \
                or (store_blocks and link != "serial") or time_source not in TIME_SOURCES:
            self._MustUse__silence = True  # a rejected core is not an unused one
            raise ValueError(f"need 1..255 ports, a depth below 65536, a ppm offset per port or none, "
                             f"a serial or dma link, an on-chip volume only on the serial link and a "
                             f"time source of {TIME_SOURCES} (got {ports}, {depth}, {len(port_ppm)}, "
                             f"{link!r}, {store_blocks}, {time_source!r})")
        check_datapath_bits(self, datapath_bits)
        if (link == "dma" and datapath_bits != 64) or store_blocks > 2**datapath_bits:
            self._MustUse__silence = True
            raise ValueError(f"the DMA link takes 64-bit beats only, and an on-chip volume holds at most "
                             f"2**datapath_bits blocks (got {datapath_bits} bits, {link!r}, {store_blocks})")
        self.ports = ports
        self.block_bytes = block_bytes
        self.depth = depth
        self.mode = Mode(mode)
        self.time_source = time_source
        self.clk_hz = clk_hz
        self.store_blocks = store_blocks
        self.datapath_bits = datapath_bits
        self.dpll_args = [dict(clk_hz=clk_hz / (1 + ppm * 1e-6), interval_ns=interval_ns, unit_ns=unit_ns,
                               bit_rate=bit_rate) for ppm in (port_ppm or (0,) * ports)]
        try:
            if time_source == "dpll":       # check the DPLLs' arguments now, not at elaboration
                for args in self.dpll_args:
                    DigitalPLL(**args)._MustUse__silence = True
            if link == "serial":
                self.link = LinkController(ports=ports, block_bytes=block_bytes, identity=self.identity(),
                                           max_payload=max_payload, store_blocks=store_blocks,
                                           datapath_bits=datapath_bits)
            else:
                self.link = DmaRingWriter(ports=ports, block_bytes=block_bytes)
        except ValueError:
            self._MustUse__silence = True
            raise
        if link == "serial":
            members = {"rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8))}
        else:
            members = {"bar": In(RegisterBus), "wr": Out(stream.Signature(WriteBeat)), "dma_busy": Out(1)}
        members.update({
            "rx_framing_errors": In(32),
            "port": Out(board_port_signature(time_source, bool(store_blocks), datapath_bits)).array(ports),
        })
        if store_blocks:
            members.update({"store_rcmd": Out(stream.Signature(ReadCommand)),
                            "store_rdata": In(stream.Signature(read_beat_layout(datapath_bits)))})
        if time_source == "dpll":
            members["timebase"] = In(1, init=1)     # idle high
        super().__init__(members)

    def identity(self) -> bytes:
        """The IDENTITY response's payload (`firmware.abi.frames.IDENTITY`)."""
        features = ((FEATURE_INJECTION if self.store_blocks else 0)
                    | (FEATURE_BOARD_CLOCK if self.time_source == "clock" else 0))
        return IDENTITY.pack(IMAGE_ID, IMAGE_VERSION, self.ports, self.mode, self.depth,
                             self.block_bytes, self.datapath_bits, features)

    def elaborate(self, platform):
        m = Module()
        link = m.submodules.link = self.link
        serial = isinstance(link, LinkController)
        regs = m.submodules.regs = RegisterBlock(
            ports=self.ports,
            constants={"image_id": IMAGE_ID, "version": IMAGE_VERSION, "ports": self.ports,
                       "ring_depth": self.depth, "block_bytes": self.block_bytes,
                       "datapath_bits": self.datapath_bits, "mode": self.mode,
                       "max_payload": link.max_payload if serial else 0, "store_blocks": self.store_blocks},
            port_init={"mode": self.mode, **({} if serial else {"watermark": 1})},
            absent=frozenset({"dma"} if serial else ()))
        m.d.comb += regs.rx_framing_errors.eq(self.rx_framing_errors)
        if serial:
            wiring.connect(m, wiring.flipped(self.rx), link.rx)
            wiring.connect(m, link.tx, wiring.flipped(self.tx))
            wiring.connect(m, link.bus, regs.bus)
            for name, member in regs.signature.members.items():     # the link's counters
                if name not in ("bus", "port", "rx_framing_errors") and member.flow == In:
                    m.d.comb += getattr(regs, name).eq(getattr(link, name))
            if self.store_blocks:
                injector = m.submodules.injector = Injector(ports=self.ports, block_bytes=self.block_bytes,
                                                            datapath_bits=self.datapath_bits)
                wiring.connect(m, link.inject, injector.control)
                wiring.connect(m, link.store_rcmd, wiring.flipped(self.store_rcmd))
                wiring.connect(m, wiring.flipped(self.store_rdata), link.store_rdata)
        else:
            wiring.connect(m, wiring.flipped(self.bar), regs.bus)
            wiring.connect(m, link.wr, wiring.flipped(self.wr))
            m.d.comb += self.dma_busy.eq(link.busy)

        if self.time_source == "clock":         # one count of the one clock, for every port
            clock = m.submodules.clock = BoardClock(clk_hz=self.clk_hz)
        for p in range(self.ports):
            jp = m.submodules[f"port{p}"] = JournalPort(port=p, block_bytes=self.block_bytes,
                                                        datapath_bits=self.datapath_bits, depth=self.depth)
            board, rp = self.port[p], regs.port[p]
            if self.time_source == "dpll":
                dpll = m.submodules[f"dpll{p}"] = DigitalPLL(**self.dpll_args[p])
                m.d.comb += [dpll.wire.eq(self.timebase), board.locked.eq(dpll.locked)]
                time, outputs = dpll.time, {out: getattr(dpll, out) for _, out, _, _ in DPLL_WORDS}
            elif self.time_source == "clock":
                m.d.comb += board.locked.eq(1)
                time, outputs = clock.time, {"time": clock.time, "increment": clock.increment,
                                             "locked": Const(1), "state": Const(TRACK, 2)}
            else:
                time, outputs = board.time, {}      # the DPLL registers read 0
            for reg, output, lsb, width in DPLL_WORDS:
                if output in outputs:
                    m.d.comb += getattr(rp, reg).eq(outputs[output][lsb:lsb + width])
            m.d.comb += jp.time.eq(time)
            if self.store_blocks:
                wiring.connect(m, injector.port[p].ingress, jp.ingress)
                inject_port_watch(m, injector.port[p], jp)
            else:
                wiring.connect(m, wiring.flipped(board.ingress), jp.ingress)
            wiring.connect(m, jp.pri_write, wiring.flipped(board.pri_write))
            wiring.connect(m, wiring.flipped(board.pri_wresp), jp.pri_wresp)
            wiring.connect(m, jp.pri_rcmd, wiring.flipped(board.pri_rcmd))
            wiring.connect(m, wiring.flipped(board.pri_rdata), jp.pri_rdata)

            if serial:
                lp = link.port[p]
                wiring.connect(m, jp.flush, lp.flush)
                wiring.connect(m, lp.ack, jp.ack)
                m.d.comb += [lp.time.eq(time), jp.flush_cmd.eq(lp.flush_cmd), jp.resend.eq(lp.resend),
                             lp.draining.eq(jp.draining), lp.entries_written.eq(jp.entries_written),
                             lp.flushed.eq(jp.flushed)]
            else:       # the host ring: entries in order; enabling it rewinds the port
                wiring.connect(m, jp.flush, link.flush[p])
                wiring.connect(m, link.ack[p], jp.ack)
                m.d.comb += [jp.resend.eq(link.resend[p]), link.tail[p].eq(jp.acknowledged)]
                for name, _, access, _ in DMA_REGISTERS:
                    ring, reg = getattr(link.ring[p], name), getattr(rp, name)
                    m.d.comb += reg.eq(ring) if access == "RO" else ring.eq(reg)

            for name in CONTROLS:
                m.d.comb += getattr(jp, name).eq(getattr(rp, name))
            for name, _, _, _ in COUNTERS:
                m.d.comb += getattr(rp, name).eq(getattr(jp, name))
        return m
