"""What every dev board adds around the device image: clock, UART link, time base, LEDs, traffic.

`DevBoardTop` is the top a real board builds (`boards/ulx3s.py`, `boards/icebreaker.py`): the
same `DeviceImage` (`firmware/image.py`) the virtual board runs (`boards/sim.py`), and around
it only what the board has instead of a simulator:

- **Clock.** The board's oscillator feeds a PLL (the board's `pll` method, an FPGA primitive)
  that makes the port clock `clock_hz`; the one `sync` domain runs the image, the time base and
  every port's DPLL, held in reset until the PLL locks. The reset leaves its synchroniser
  through the board's `reset_buffer` (on the ECP5 a global buffer: it reaches every flip-flop).
- **Link.** `hdl.uart.UART` (8N1, `clock_hz / baud` cycles per bit, rounded: the board states
  its baud and the rounding error) on the board's USB-UART pins; its framing errors feed the
  image's `rx_framing_errors` register.
- **Time base.** `hdl.timebase.TimeBase` runs on the board's clock and drives the image's
  `timebase` wire, as on the virtual board. There is no wall clock on the board: T counts
  `unit_ns` from power-up (origin 0), so device times read as 1970 plus the uptime. A board
  whose config says `time_source="clock"` has no time base: its ports count time on the board's
  one clock (`hdl.board_clock`; what their DPLLs would lock to on a board with one oscillator),
  from power-up too.
- **Traffic and storage.** A dev board has no servers and no storage network, so it runs the
  *standalone* image (`DeviceImage(store_blocks=…)`, as the virtual board's standalone variant
  does): its primary storage is `boards.storage.BlockStore`, a volume of `store_blocks` blocks in
  block RAM, and its write traffic is injected by the host over the link (INJECT_WRITE), which
  reads the volume back with READ_BLOCK (`portjournal demo --port`).
- **LEDs** (`leds`, in the board's order): one per port lit while its DPLL is locked (always,
  with a board clock), then link activity (a byte in either direction) and write activity (a
  primary-write beat on any port), each lit to the end of the blink period after the one it was
  seen in (periods of at least `BLINK_S`, counted by one free-running counter for all), so a
  single byte shows.
"""

from dataclasses import dataclass

from amaranth.hdl import Cat, ClockDomain, ClockSignal, Elaboratable, Module, ResetSignal, Signal, Value
from amaranth.lib import io, wiring
from amaranth.lib.cdc import ResetSynchronizer

from boards.storage import STANDALONE_BLOCKS, BlockStore, connect_store
from firmware.abi.entry import Mode
from firmware.image import DeviceImage
from hdl.timebase import DEFAULT_BIT_RATE, DEFAULT_INTERVAL_NS, DEFAULT_UNIT_NS, TimeBase
from hdl.uart import UART

BLINK_S = 0.02          # an activity pulse lights its LED for at least 20 ms, visible to the eye


@dataclass(frozen=True)
class DevBoardConfig:
    """A dev board's image sizes, clock and link: what its bitstream is built with."""

    name: str
    ports: int
    depth: int                      # entries per port ring
    block_bytes: int
    clock_hz: int                   # the port clock made by the board's PLL
    baud: int                       # the link's UART line rate
    mode: Mode = Mode.REDO
    interval_ns: int = DEFAULT_INTERVAL_NS
    unit_ns: int = DEFAULT_UNIT_NS
    timebase_bit_rate: int = DEFAULT_BIT_RATE
    store_blocks: int = STANDALONE_BLOCKS     # the on-chip volume, blocks of `block_bytes`
    time_source: str = "dpll"       # a DPLL per port on the board's time base, or "clock"
    max_payload: int | None = None  # JOURNAL frame payload bytes (frame buffers); None: the most
    datapath_bits: int = 64                   # the image's beats (`DeviceImage`): 8, 16, 32 or 64

    def __post_init__(self):
        if self.time_source not in ("dpll", "clock"):
            raise ValueError(f"a dev board's ports keep time with a DPLL or the board clock: "
                             f"time_source 'dpll' or 'clock', not {self.time_source!r}")

    @property
    def uart_divisor(self) -> int:
        return round(self.clock_hz / self.baud)

    @property
    def baud_error(self) -> float:
        """Relative error of the UART's real line rate against `baud`."""
        return self.clock_hz / self.uart_divisor / self.baud - 1

    def image(self) -> DeviceImage:
        return DeviceImage(ports=self.ports, block_bytes=self.block_bytes, depth=self.depth,
                           mode=self.mode, clk_hz=self.clock_hz, interval_ns=self.interval_ns,
                           unit_ns=self.unit_ns, bit_rate=self.timebase_bit_rate,
                           store_blocks=self.store_blocks, time_source=self.time_source,
                           max_payload=self.max_payload, datapath_bits=self.datapath_bits)


class DevBoardTop(Elaboratable):
    """The device image on a dev board; a board subclass provides `platform_class` and `pll`,
    and may buffer the reset (`reset_buffer`) and give Yosys and nextpnr options of its own
    (`synth_opts`, `nextpnr_opts`)."""

    synth_opts = ""
    nextpnr_opts = ""

    def __init__(self, config: DevBoardConfig):
        self.config = config
        self.image = config.image()

    def pll(self, m: Module, platform) -> tuple[Signal, Signal]:
        """Instantiate the board's PLL from its oscillator: (port clock, locked)."""
        raise NotImplementedError

    def reset_buffer(self, m: Module, reset: Value) -> Value:
        """The synchronised reset as the `sync` domain's flip-flops see it; here the net itself."""
        return reset

    def elaborate(self, platform):
        cfg = self.config
        m = Module()
        clk, pll_locked = self.pll(m, platform)
        m.domains.sync = ClockDomain("sync")
        m.d.comb += ClockSignal("sync").eq(clk)
        # No clock constraint of our own: nextpnr derives the PLL output's from the oscillator's
        # and the PLL's dividers (one on the PLL's net would name a net Yosys has renamed).
        # The synchroniser runs in a domain of its own on the same clock, so that its output can
        # reach `sync` through the board's buffer.
        m.domains.power_on = ClockDomain("power_on")
        m.d.comb += ClockSignal("power_on").eq(clk)
        m.submodules.reset_sync = ResetSynchronizer(~pll_locked, domain="power_on")
        m.d.comb += ResetSignal("sync").eq(self.reset_buffer(m, ResetSignal("power_on")))

        image = m.submodules.image = self.image
        if cfg.time_source == "dpll":
            timebase = m.submodules.timebase = TimeBase(
                ref_hz=cfg.clock_hz, interval_ns=cfg.interval_ns, unit_ns=cfg.unit_ns,
                bit_rate=cfg.timebase_bit_rate)
            m.d.comb += image.timebase.eq(timebase.wire)

        pins = platform.request("uart", 0, dir="-")
        rx_pin = m.submodules.uart_rx_buf = io.Buffer("i", pins.rx)
        tx_pin = m.submodules.uart_tx_buf = io.Buffer("o", pins.tx)
        uart = m.submodules.uart = UART(cfg.uart_divisor)
        m.d.comb += [uart.rx.eq(rx_pin.i), tx_pin.o.eq(uart.tx),
                     image.rx_framing_errors.eq(uart.framing_errors)]
        wiring.connect(m, uart.o_stream, image.rx)
        wiring.connect(m, image.tx, uart.i_stream)

        store = m.submodules.store = BlockStore(ports=cfg.ports, block_bytes=cfg.block_bytes,
                                                blocks=cfg.store_blocks, datapath_bits=cfg.datapath_bits)
        wiring.connect(m, image.store_rcmd, store.link_rcmd)
        wiring.connect(m, store.link_rdata, image.store_rdata)
        for p in range(cfg.ports):
            connect_store(m, image.port[p], store.port[p])

        link_busy = ~rx_pin.i | ~uart.tx
        write_busy = Cat(image.port[p].pri_write.valid & image.port[p].pri_write.ready
                         for p in range(cfg.ports)).any()
        leds = []
        for n, (name, number) in enumerate(self.leds(platform)):
            led = m.submodules[f"led{n}_buf"] = io.Buffer("o", platform.request(name, number, dir="-"))
            leds.append(led.o)
        for p in range(min(cfg.ports, len(leds))):
            m.d.comb += leds[p].eq(image.port[p].locked)
        # One free-running count of blink periods for every activity LED.
        period = Signal((round(cfg.clock_hz * BLINK_S) - 1).bit_length())
        m.d.sync += period.eq(period + 1)
        stretched = [self._stretch(m, link_busy, period.all(), "link"),
                     self._stretch(m, write_busy, period.all(), "write")]
        for led, lit in zip(leds[cfg.ports:], stretched, strict=False):
            m.d.comb += led.eq(lit)
        return m

    @staticmethod
    def _stretch(m: Module, pulse, period_end, name: str) -> Value:
        """`pulse` held until the end of the period after the one it was last seen in."""
        seen, held = Signal(name=f"{name}_seen"), Signal(name=f"{name}_held")
        with m.If(period_end):
            m.d.sync += [held.eq(seen | pulse), seen.eq(0)]
        with m.Elif(pulse):
            m.d.sync += seen.eq(1)
        return seen | held

    def leds(self, platform) -> list[tuple[str, int]]:
        """The board's LEDs (resource name, number) in order: port locks first, then link and
        write activity."""
        raise NotImplementedError
