"""ULX3S (Lattice ECP5 LFE5U-85F, BG381, speed 6): the device image on a real ECP5 board.

| what | value | why |
|---|---|---|
| ports | 4 | the project's goal for this board |
| ring depth | 16 entries per port | the virtual board's; at 64 the rings' read muxes congested the router |
| block size | 512 B | the virtual board's size: the host sees the same geometry |
| port clock | 50 MHz | 25 MHz x 2 (`EHXPLLL`, VCO 600 MHz): the image routes at ~70 MHz (below) |
| link | 2 Mbaud 8N1, FT231X USB-UART | 25 cycles per bit, exact; the FT231X divides 3 MHz by 1.5 |
| time base | on board: 1 ms broadcasts of T (ms from power-up), 12.5 Mbit/s | 4 cycles per bit (the least) |
| volume | 256 blocks of 512 B (128 KiB: 64 of the 208 DP16KD), for injected writes | `BlockStore` |
| LEDs | D0-D3: port 0-3 DPLL locked; D4: link bytes; D5: block writes | `boards.devboard` |

The goal is a 100 MHz port clock. The cores' control is pipelined (decisions registered a cycle
ahead, handshakes between modules from registers, block-RAM reads into registers), which took
the image from ~40 to ~70 MHz; the reset reaches its ~13,000 flip-flops over a primary clock
net (`reset_buffer`), which let nextpnr's router2 converge at a 50 MHz target (README's dev-board
section).
Build with
`make bitstream BOARD=ulx3s`, program with `make flash BOARD=ulx3s` (`boards/build.py`).
"""

from amaranth.hdl import Instance, Module, Signal
from amaranth.lib import io
from amaranth_boards.ulx3s import ULX3S_85F_Platform

from boards.devboard import DevBoardConfig, DevBoardTop

OSCILLATOR_HZ = 25_000_000
VCO_HZ = (400e6, 800e6)            # the EHXPLLL's VCO range

CONFIG = DevBoardConfig(name="ulx3s", ports=4, depth=16, block_bytes=512, clock_hz=50_000_000,
                        baud=2_000_000, timebase_bit_rate=12_500_000)


def ehxplll_dividers(f_in: int, f_out: int) -> dict:
    """EHXPLLL dividers for f_out = f_in x CLKFB_DIV / CLKI_DIV exactly, VCO = f_out x CLKOP_DIV."""
    for clki_div in range(1, 129):
        fb_div, rest = divmod(f_out * clki_div, f_in)
        if rest or not 1 <= fb_div <= 80:
            continue
        # The VCO nearest the middle of its range.
        op_div = min(range(1, 129), key=lambda d: abs(f_out * d - sum(VCO_HZ) / 2))
        if VCO_HZ[0] <= f_out * op_div <= VCO_HZ[1]:
            return {"CLKI_DIV": clki_div, "CLKFB_DIV": fb_div, "CLKOP_DIV": op_div,
                    "CLKOP_CPHASE": op_div // 2 - 1}   # as Lattice's and ecppll's tools choose
    raise ValueError(f"no EHXPLLL setting makes {f_out} Hz from {f_in} Hz")


class ULX3SBoard(DevBoardTop):
    """`DevBoardTop` on the ULX3S: its PLL, buttons and LEDs."""

    platform_class = ULX3S_85F_Platform
    # router2 routes this image in minutes where router1 stalls.
    nextpnr_opts = "--router router2"

    def __init__(self, config: DevBoardConfig = CONFIG):
        super().__init__(config)

    def pll(self, m: Module, platform):
        clk25 = m.submodules.clk25_buf = io.Buffer("i", platform.request("clk25", 0, dir="-"))
        clk, locked = Signal(name="port_clk"), Signal(name="pll_locked")
        params = ehxplll_dividers(OSCILLATOR_HZ, self.config.clock_hz)
        m.submodules.pll = Instance(
            "EHXPLLL",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_CLKOP_ENABLE="ENABLED",
            p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
            **{f"p_{k}": v for k, v in params.items()},
            a_FREQUENCY_PIN_CLKI=str(OSCILLATOR_HZ / 1e6),
            a_FREQUENCY_PIN_CLKOP=str(self.config.clock_hz / 1e6),
            i_CLKI=clk25.i, i_CLKFB=clk, i_RST=0, i_STDBY=0, i_PHASESEL0=0, i_PHASESEL1=0,
            i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1, i_PLLWAKESYNC=0, i_ENCLKOP=0,
            o_CLKOP=clk, o_LOCK=locked)
        return clk, locked

    def reset_buffer(self, m: Module, reset):
        """The reset on a primary clock net (a `DCCA`): its ~13,000 flip-flops' LSR pins through
        the clock tree instead of fabric routing, which made it the image's longest path."""
        buffered = Signal(name="reset_global")
        m.submodules.reset_dcca = Instance("DCCA", i_CLKI=reset, i_CE=1, o_CLKO=buffered)
        return buffered

    def leds(self, platform):
        return [("led", n) for n in range(self.config.ports + 2)]
