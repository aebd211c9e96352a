"""The virtual board: `DeviceImage` with every board-side interface left to the simulator.

`SimBoard` is the top the C++ Verilator harness (`sim/vboard/board.cpp`, launched by
`sim/vboard.py`) drives: no UART (the harness paces link bytes at the configured baud itself),
no stub storage inside. Its time base is inside: a `TimeBase` (`hdl/timebase.py`) on the
board's one clock, broadcasting every `SIM_BOARD.interval_ns` to the image's per-port DPLLs,
with its time origin (`time_origin`, in units of `unit_ns`, read on the first cycle) given by
the harness at start: the Unix-epoch time of the first clock edge. Its ports are flat signals
(Verilator escapes `__` in names), so the harness reaches each one as a plain integer
(`top->p0_in_data`), never as a wide struct:

| signal | dir | width | meaning |
|---|---|---:|---|
| `clk` | in | 1 | the one clock (no reset: registers start at their init values) |
| `rx_valid/ready/data` | in | 8 | link bytes from the host |
| `tx_valid/ready/data` | out | 8 | link bytes to the host |
| `time_origin` | in | 48 | the time base's T at the first clock edge, in units of `unit_ns` |
| `p{i}_locked` | out | 1 | port i's DPLL is locked (the harness starts port i's server on it) |
| `p{i}_in_valid/ready/data/first/last` | in | 64 | block writes into port i (header beat: data = lba) |
| `p{i}_wr_valid/ready/data/first/last` | out | 64 | port i's writes to primary storage |
| `p{i}_wresp_valid/ready/ok` | in | 1 | their completions, in order |
| `p{i}_rcmd_valid/ready/lba` | out | 64 | copy-on-write pre-image reads |
| `p{i}_rdata_valid/ready/data/last/ok` | in | 64 | the pre-image beats |

With `link="dma"` (`SimBoardConfig.link`) the image's link is the DMA ring writer
(`hdl/dma.py`) and the byte streams give way to:

| signal | dir | width | meaning |
|---|---|---:|---|
| `bar_r_addr`, `bar_r_data` | in, out | 16, 32 | register read: `bar_r_data` is the register 2 cycles later |
| `bar_w_en/addr/data` | in | 1, 16, 32 | register write, taking effect at the edge |
| `dma_valid/ready/addr/data/first/last` | out | 64 | memory writes into host memory (`DeviceImage.wr`) |
| `dma_busy` | out | 1 | the ring writer has an entry to write (`bus_util` = beats per busy cycle) |

Every stream crosses a small FIFO (`SyncFIFOBuffered`, registered outputs), `time_origin` is
only read into a register on the first cycle, and the clock domain has no reset (registers
start at their init values), so no output depends combinationally on an input and no input fans
out to every register: Verilator's input-combinational region (run on every `eval()`, twice per
cycle) stays tiny instead of re-running most of the image's logic (here 0.7 → 1.3 M cycles/s).

**Standalone** (`SimBoardConfig.store_blocks` > 0, `SIM_STANDALONE`): the board variant a dev
board runs. The image is `DeviceImage(store_blocks=…)` — the same RTL with the host's
INJECT_WRITE/READ_BLOCK path (`hdl/inject.py`, `hdl/link.py`) — on a `BlockStore`
(`boards/storage.py`, the volume in on-chip RAM) inside the top, exactly as `boards/devboard.py`
builds it for a real board. The ports' streams stay inside: of the per-port signals only
`p{i}_locked` remains, and the harness runs no servers and no file volume; the host is the
traffic source (`portjournal demo --port`, `--standalone`). Only this variant takes a
`datapath_bits` other than 64 (`SimBoardConfig.datapath_bits`, as a small dev board's image):
the beats stay inside, and the host sees the same entries at any width.

`SIM_BOARD` holds the board's parameters in one place; the harness gets the ones it needs
(ports, block size, clock, time unit) on its command line from `sim/vboard.py`.
"""

from dataclasses import asdict, dataclass

from amaranth.hdl import Cat, ClockDomain, ClockSignal, Module
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from boards.storage import STANDALONE_BLOCKS, BlockStore, connect_store
from firmware.abi.entry import Mode
from firmware.image import DeviceImage
from hdl.timebase import PAYLOAD_BYTES, TimeBase

MAX_PORTS = 8          # what the harness binds (sim/vboard/board.cpp)
PPM_PATTERN = (+120, -80, +40, -150, +200, -200, +10, -30)   # port oscillators' offsets, ppm
BOUNDARY_DEPTH = 4     # the FIFO on each stream between the harness and the image


@dataclass(frozen=True)
class SimBoardConfig:
    """What the virtual board is built with (gateware) and runs at (harness defaults)."""

    ports: int = 4
    block_bytes: int = 512
    depth: int = 16                 # entries per port ring
    mode: Mode = Mode.REDO
    clock_hz: int = 125_000_000     # one clock for the image, the time base and every port's DPLL
    # Time base broadcasts: every 100 µs (not the 1 ms default) so a DPLL locks within ~2 ms of
    # simulated time (~16 broadcasts, ~0.25 M cycles); T counts units of 100 µs, so a Unix-epoch
    # origin fits its 48 bits (2**48 x 100 µs = 890 years).
    interval_ns: int = 100_000
    unit_ns: int = 100_000
    # Link line rate: a byte per clock_hz / (baud / 10) cycles each way. 250 Mbaud (a byte every 5
    # cycles) lets a demo of 10,000 blocks (5.5 MB of entries) finish in about half a minute at
    # ~1.2 M simulated cycles/s; `--baud 12.5e6` gives a real UART's pace.
    baud: int = 250_000_000
    # Each port's oscillator offset (see `DeviceImage`'s `port_ppm`); None: PPM_PATTERN's first
    # `ports`, so the DPLLs have real offsets to find (the DESIGN's "own clock with a ppm offset").
    port_ppm: tuple[float, ...] | None = None
    link: str = "serial"            # or "dma": journal rings in host memory (hdl/dma.py)
    # > 0: the standalone variant, a volume of this many blocks in on-chip RAM and the host's
    # injected writes instead of the harness's servers and file volume
    store_blocks: int = 0
    # The image's beats (`DeviceImage`): 64, or 8/16/32 on the standalone variant only (the
    # harness's servers and storage move 64-bit words)
    datapath_bits: int = 64

    @property
    def standalone(self) -> bool:
        return self.store_blocks > 0

    @property
    def ppm(self) -> tuple[float, ...]:
        return self.port_ppm if self.port_ppm is not None else tuple(PPM_PATTERN[p % len(PPM_PATTERN)]
                                                                     for p in range(self.ports))

    @property
    def ns_per_cycle(self) -> float:
        return 1e9 / self.clock_hz

    def image_args(self) -> dict:
        """The `DeviceImage` (and `SimBoard`) arguments: what changes the gateware."""
        d = asdict(self)
        return {**{k: d[k] for k in ("ports", "block_bytes", "depth", "mode", "clock_hz", "interval_ns",
                                     "unit_ns", "link", "store_blocks", "datapath_bits")},
                "port_ppm": self.ppm}


SIM_BOARD = SimBoardConfig()
SIM_STANDALONE = SimBoardConfig(store_blocks=STANDALONE_BLOCKS)


def _port_members(p: int, standalone: bool) -> dict:
    if standalone:
        return {f"p{p}_locked": Out(1)}
    return {
        f"p{p}_locked": Out(1),
        f"p{p}_in_valid": In(1), f"p{p}_in_ready": Out(1), f"p{p}_in_data": In(64),
        f"p{p}_in_first": In(1), f"p{p}_in_last": In(1),
        f"p{p}_wr_valid": Out(1), f"p{p}_wr_ready": In(1), f"p{p}_wr_data": Out(64),
        f"p{p}_wr_first": Out(1), f"p{p}_wr_last": Out(1),
        f"p{p}_wresp_valid": In(1), f"p{p}_wresp_ready": Out(1), f"p{p}_wresp_ok": In(1),
        f"p{p}_rcmd_valid": Out(1), f"p{p}_rcmd_ready": In(1), f"p{p}_rcmd_lba": Out(64),
        f"p{p}_rdata_valid": In(1), f"p{p}_rdata_ready": Out(1), f"p{p}_rdata_data": In(64),
        f"p{p}_rdata_last": In(1), f"p{p}_rdata_ok": In(1),
    }


class SimBoard(wiring.Component):
    """The virtual board's top: `DeviceImage` with flat per-port signals for the C++ harness."""

    def __init__(self, *, ports: int = SIM_BOARD.ports, block_bytes: int = SIM_BOARD.block_bytes,
                 depth: int = SIM_BOARD.depth, mode: Mode = SIM_BOARD.mode,
                 clock_hz: int = SIM_BOARD.clock_hz, interval_ns: int = SIM_BOARD.interval_ns,
                 unit_ns: int = SIM_BOARD.unit_ns, port_ppm: tuple[float, ...] = (), link: str = "serial",
                 store_blocks: int = 0, datapath_bits: int = 64):
        if not 1 <= ports <= MAX_PORTS or (datapath_bits != 64 and not store_blocks):
            self._MustUse__silence = True
            raise ValueError(f"the virtual board has 1..{MAX_PORTS} ports, and beats other than 64-bit only "
                             f"in its standalone variant: the harness's servers and storage move 64-bit "
                             f"words (got {ports} ports, {datapath_bits} bits, {store_blocks} blocks)")
        self.image = DeviceImage(ports=ports, block_bytes=block_bytes, depth=depth, mode=mode,
                                 clk_hz=clock_hz, interval_ns=interval_ns, unit_ns=unit_ns,
                                 port_ppm=port_ppm, link=link, store_blocks=store_blocks,
                                 datapath_bits=datapath_bits)
        self.store = (BlockStore(ports=ports, block_bytes=block_bytes, blocks=store_blocks,
                                 datapath_bits=datapath_bits) if store_blocks else None)
        self.link = link
        self.timebase = TimeBase(ref_hz=clock_hz, interval_ns=interval_ns, unit_ns=unit_ns)
        self.ports = ports
        members = {"clk": In(1), "time_origin": In(8 * PAYLOAD_BYTES)}
        if link == "serial":
            members.update({"rx_valid": In(1), "rx_ready": Out(1), "rx_data": In(8),
                            "tx_valid": Out(1), "tx_ready": In(1), "tx_data": Out(8)})
        else:
            members.update({"bar_r_addr": In(16), "bar_r_data": Out(32), "bar_w_en": In(1),
                            "bar_w_addr": In(16), "bar_w_data": In(32),
                            "dma_valid": Out(1), "dma_ready": In(1), "dma_addr": Out(64), "dma_data": Out(64),
                            "dma_first": Out(1), "dma_last": Out(1), "dma_busy": Out(1)})
        for p in range(ports):
            members.update(_port_members(p, self.store is not None))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        # No reset input: registers start at their init values (Verilog initialisers), so no
        # top-level input reaches every register's next-state logic (see the module docstring).
        m.domains.sync = ClockDomain("sync", reset_less=True)
        m.d.comb += ClockSignal("sync").eq(self.clk)
        image = m.submodules.image = self.image
        timebase = m.submodules.timebase = self.timebase
        m.d.comb += [timebase.origin.eq(self.time_origin), image.timebase.eq(timebase.wire)]

        def into(name, sink, fields):
            """Harness → image through a FIFO: `{name}_valid/ready` and one signal per field."""
            width = sum(len(getattr(self, f"{name}_{f}")) for f in fields)
            fifo = m.submodules[f"{name}_fifo"] = SyncFIFOBuffered(width=width, depth=BOUNDARY_DEPTH)
            m.d.comb += [fifo.w_en.eq(getattr(self, f"{name}_valid")),
                         getattr(self, f"{name}_ready").eq(fifo.w_rdy),
                         fifo.w_data.eq(Cat(*(getattr(self, f"{name}_{f}") for f in fields))),
                         sink.valid.eq(fifo.r_rdy), fifo.r_en.eq(sink.ready), sink.payload.eq(fifo.r_data)]

        def out_of(name, source, fields):
            """Image → harness through a FIFO."""
            width = sum(len(getattr(self, f"{name}_{f}")) for f in fields)
            fifo = m.submodules[f"{name}_fifo"] = SyncFIFOBuffered(width=width, depth=BOUNDARY_DEPTH)
            m.d.comb += [fifo.w_en.eq(source.valid), source.ready.eq(fifo.w_rdy),
                         fifo.w_data.eq(source.payload),
                         getattr(self, f"{name}_valid").eq(fifo.r_rdy),
                         fifo.r_en.eq(getattr(self, f"{name}_ready")),
                         Cat(*(getattr(self, f"{name}_{f}") for f in fields)).eq(fifo.r_data)]

        if self.link == "serial":
            into("rx", image.rx, ["data"])
            out_of("tx", image.tx, ["data"])
        else:
            bar = image.bar
            m.d.comb += [bar.r_addr.eq(self.bar_r_addr), self.bar_r_data.eq(bar.r_data),
                         bar.w_en.eq(self.bar_w_en), bar.w_addr.eq(self.bar_w_addr),
                         bar.w_data.eq(self.bar_w_data), self.dma_busy.eq(image.dma_busy)]
            out_of("dma", image.wr, ["addr", "data", "first", "last"])
        if self.store is not None:
            store = m.submodules.store = self.store
            wiring.connect(m, image.store_rcmd, store.link_rcmd)
            wiring.connect(m, store.link_rdata, image.store_rdata)
        for p in range(self.ports):
            board = image.port[p]
            m.d.comb += getattr(self, f"p{p}_locked").eq(board.locked)
            if self.store is not None:
                connect_store(m, board, store.port[p])
                continue
            into(f"p{p}_in", board.ingress, ["data", "first", "last"])
            out_of(f"p{p}_wr", board.pri_write, ["data", "first", "last"])
            into(f"p{p}_wresp", board.pri_wresp, ["ok"])
            out_of(f"p{p}_rcmd", board.pri_rcmd, ["lba"])
            into(f"p{p}_rdata", board.pri_rdata, ["data", "last", "ok"])
        return m
