"""BoardClock: a port's local time counted on its own clock, for a board whose ports and time
base share one oscillator.

A `DigitalPLL` (`hdl/dpll.py`) steers a port's time to the time base's broadcast because the
port's oscillator is not the time base's. On a dev board with a single oscillator (the
iCEBreaker) they are one clock: a locked DPLL would find no frequency error to correct, and its
time would be the time base's own count of that clock. That count is what this core keeps,
without the broadcast: local time in ns, 64 integer + 32 fractional bits as in the DPLL,
advanced by the nominal period on every cycle from ½ ns at reset (the board's time origin; the
½ makes the truncated `time` round to the nearest ns, as the DPLL's compensation does), so it
reads n·period after n cycles to the nearest ns, give or take the period's rounding to 2**-32
ns (under 1 ns per 10**9 cycles). It never moves backward.
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from firmware.abi.regmap import DPLL_OUTPUTS

_WIDTH = {name: width for name, width, _, _ in DPLL_OUTPUTS}
FRAC_BITS = 32


def nominal_increment(clk_hz: float) -> int:
    """The clock's period in ns with FRAC_BITS fractional bits (the DPLL's nominal increment)."""
    return round(1e9 / clk_hz * 2**FRAC_BITS)


class BoardClock(wiring.Component):
    """`time` (integer ns since reset) and its constant `increment` (ns per cycle, 32 fractional bits)."""

    time: Out(_WIDTH["time"])
    increment: Out(_WIDTH["increment"])

    def __init__(self, *, clk_hz: float):
        self.inc = nominal_increment(clk_hz)
        if not 0 < self.inc < 2**_WIDTH["increment"]:
            self._MustUse__silence = True  # a rejected core is not an unused one
            raise ValueError(f"a {clk_hz} Hz clock's period does not fit the increment's "
                             f"{_WIDTH['increment']} bits")
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        frac = Signal(FRAC_BITS, init=1 << (FRAC_BITS - 1))
        m.d.sync += Cat(frac, self.time).eq(Cat(frac, self.time) + self.inc)
        m.d.comb += self.increment.eq(self.inc)
        return m
