"""iCEBreaker (Lattice iCE40UP5K, SG48): the device image on a small iCE40 board.

The UP5K has 5,280 logic cells, 30 block RAMs of 4 Kbit and 8 DSPs. This image (8-bit beats,
the port's time on the board clock instead of a DPLL, 4-entry JOURNAL frames, the statistics
counters and the small FIFOs in block RAM, no read-write collision logic around its block RAMs:
`hdl.ram`) maps to ~3,900 LUT4s, ~2,380 flip-flops and 29 block RAMs in Yosys, which nextpnr
packs into ~5,230 logic cells (99 %) and routes (router1) at ~27 MHz: the port clock is 18 MHz.
The sizes below are the smallest sensible:

| what | value | why |
|---|---|---|
| ports | 1 | the fewest |
| datapath | 8-bit beats | an eighth of the 64-bit image's datapaths; 60 times the UART's bytes at 18 MHz |
| ring depth | 8 entries | 8 x 64 B of ring (the block RAMs also hold the link frame buffers) |
| block size | 64 B | a small block, to save block RAM |
| port clock | 18 MHz | 12 MHz x 3/2 through an `SB_PLL40_PAD` (VCO 576 MHz); the image routes at ~27 MHz |
| port time | `BoardClock`, no DPLL (`time_source="clock"`) | one oscillator: nothing to correct |
| link | 3 Mbaud 8N1 on the FT2232H's second channel (6 cycles per bit, exact) | |
| JOURNAL frames | up to 4 entries (416 B) | frame buffers of 2 block RAMs' depth |
| volume | 64 blocks of 64 B (4 KiB) in block RAM, for the host's injected writes | `BlockStore` |
| LEDs | green: lit (no DPLL); red: link bytes; PMOD LED2: block writes | `boards.devboard` |

Build with `make bitstream BOARD=icebreaker` (and `make bitstream-all`), program with
`make flash BOARD=icebreaker`.
"""

from amaranth.hdl import Instance, Module, Signal
from amaranth_boards.icebreaker import ICEBreakerPlatform

from boards.devboard import DevBoardConfig, DevBoardTop
from firmware.abi.entry import entry_bytes

OSCILLATOR_HZ = 12_000_000
VCO_HZ = (533e6, 1066e6)           # the SB_PLL40's VCO range
PFD_HZ = (10e6, 133e6)             # and its phase detector's

BLOCK_BYTES = 64
CONFIG = DevBoardConfig(name="icebreaker", ports=1, depth=8, block_bytes=BLOCK_BYTES, clock_hz=18_000_000,
                        baud=3_000_000, store_blocks=64, time_source="clock",
                        max_payload=4 * entry_bytes(BLOCK_BYTES), datapath_bits=8)


def sb_pll40_dividers(f_in: int, f_out: int) -> dict:
    """SB_PLL40 dividers for f_out = f_in x (DIVF + 1) / ((DIVR + 1) x 2**DIVQ) exactly."""
    for divr in range(16):
        pfd = f_in / (divr + 1)
        if not PFD_HZ[0] <= pfd <= PFD_HZ[1]:
            continue
        for divq in range(1, 7):
            divf, rest = divmod(f_out * (divr + 1) * 2**divq, f_in)
            divf -= 1
            if not rest and 0 <= divf < 128 and VCO_HZ[0] <= pfd * (divf + 1) <= VCO_HZ[1]:
                # The loop filter range for the phase detector's frequency (as icepll picks it).
                filter_range = sum(pfd >= f for f in (17e6, 26e6, 44e6, 66e6, 101e6)) + 1
                return {"DIVR": divr, "DIVF": divf, "DIVQ": divq, "FILTER_RANGE": filter_range}
    raise ValueError(f"no SB_PLL40 setting makes {f_out} Hz from {f_in} Hz")


class ICEBreakerBoard(DevBoardTop):
    """`DevBoardTop` on the iCEBreaker (with its break-off PMOD): PLL, button and LEDs."""

    platform_class = ICEBreakerPlatform
    # ABC optimises across the flip-flops too: ~430 fewer logic cells.
    synth_opts = "-dff"
    # router2 left two wires overused for 15 minutes on this full a chip; router1 routes it.
    nextpnr_opts = "--router router1"

    def __init__(self, config: DevBoardConfig = CONFIG):
        super().__init__(config)

    def pll(self, m: Module, platform):
        clk12 = platform.request("clk12", 0, dir="-")
        clk, locked = Signal(name="port_clk"), Signal(name="pll_locked")
        params = sb_pll40_dividers(OSCILLATOR_HZ, self.config.clock_hz)
        m.submodules.pll = Instance(
            "SB_PLL40_PAD",
            p_FEEDBACK_PATH="SIMPLE", p_PLLOUT_SELECT="GENCLK",
            **{f"p_{k}": v for k, v in params.items()},
            io_PACKAGEPIN=clk12.io, i_RESETB=1, i_BYPASS=0,
            o_PLLOUTGLOBAL=clk, o_LOCK=locked)
        return clk, locked

    def leds(self, platform):
        platform.add_resources(platform.break_off_pmod)
        return [("led_g", 0), ("led_r", 0), ("led", 2)][:self.config.ports + 2]
