"""BoardClock: a port's local time counted on its own clock, for a board whose ports and time
base share one oscillator.

A `DigitalPLL` (`hdl/dpll.py`) steers a port's time to the time base's broadcast because the
port's oscillator is not the time base's. On a dev board with a single oscillator (the
iCEBreaker) they are one clock: a locked DPLL would find no frequency error to correct, and its
time would be the time base's own count of that clock. That count is what this core keeps,
without the broadcast: local time in ns, advanced by the clock's period on every cycle from ½ ns
at reset (the board's time origin; the ½ makes the whole-ns `time` the nearest ns), so it reads
n·period after n cycles to the nearest ns, exactly: the period 10**9/clk_hz ns is P/Q in lowest
terms, and the count keeps whole ns and a remainder in (2Q)ths of a ns (24 MHz: 41 ns and 2/3 ns
a cycle), where the DPLL's 32 fractional bits would round the period and take 32 flip-flops
and carries more (cells the iCEBreaker lacks). It never moves backward. `increment` reads the
period as the DPLL's does, ns with 32 fractional bits.
"""

from fractions import Fraction

from amaranth.hdl import Module, Mux, Signal
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
        if not float(clk_hz).is_integer() or not 0 < self.inc < 2**_WIDTH["increment"]:
            self._MustUse__silence = True  # a rejected core is not an unused one
            raise ValueError(f"a board clock counts a whole number of Hz whose period fits the "
                             f"increment's {_WIDTH['increment']} bits (got {clk_hz} Hz)")
        self.period = Fraction(10**9, int(clk_hz))      # ns, P/Q
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        whole, part = divmod(self.period.numerator, self.period.denominator)
        unit = 2 * self.period.denominator          # the remainder counts ns / unit
        rest = Signal(range(unit), init=self.period.denominator)       # ½ ns
        step = rest + 2 * part
        carry = step >= unit
        m.d.sync += [rest.eq(Mux(carry, step - unit, step)), self.time.eq(self.time + whole + carry)]
        m.d.comb += self.increment.eq(self.inc)
        return m
