"""DigitalPLL: a port's local time, locked to the time base's broadcast and never moving back.

One DigitalPLL runs in each port's own clock domain (`sync`; rename it with `DomainRenamer`).
The broadcast wire (see `hdl.timebase` for the frame) is asynchronous to it.

Local time is a fixed-point count of nanoseconds, 64 integer + 32 fractional bits, advanced by
`increment` (ns per cycle, 32 fractional bits, so ±200 ppm is resolved to 0.03 ppb at 8 ns)
on every cycle. `time` is its integer part, the input of the `Timestamper`.

**Phase detector.** The wire passes a 2-flip-flop synchroniser; a falling edge after at least
two byte times of idle is a marker, and local time is captured when the synchronised edge is
seen. The capture lags the marker by the synchroniser (1 cycle after the first flop samples
the edge) plus the wait for that first sampling edge (0 to 1 cycle, ½ on average): the
detector adds `(SYNC_CYCLES + ½) × nominal period` back. It also adds ½ ns, so that the
loop steers the fixed-point time to true time + ½ ns and the truncated integer `time` is
true time rounded to the nearest ns. When the frame has been received and its CRC-32C
checks, phase error e = T·unit_ns + compensation − captured time. A frame with a bad CRC,
a bad start/stop bit or a gap inside it is rejected: `rejected` counts it and nothing else
changes (no step, no phase or frequency update).

**Loop filter** (in the spirit of linuxptp's `pi.c`). The phase error is spread over one
nominal interval, `s = e / N` (N = cycles per interval; a constant multiply, done bit-serially
over 33 cycles), i.e. the increment change that would remove e by the next marker. Then, per
state:

- `UNLOCKED`: the first good frame's e is remembered (no correction) → `ACQUIRE`.
- `ACQUIRE`: at the frame ACQUIRE_FRAMES intervals later (by T; if that frame is lost the
  acquisition restarts from the next good one), the frequency error is
  (e − e_first) / ACQUIRE_FRAMES per interval: drift += s(e − e_first) / ACQUIRE_FRAMES. Then
  the phase: if local time is behind (e > 0) it steps forward by e, once; if it is ahead it is
  never stepped back: `TRACK` slews it → `TRACK`.
- `TRACK`: PI. Proportional: increment += s·KP for exactly N cycles (so it removes KP·e and
  then stops, which keeps holdover on the pure frequency estimate). Integral: drift += s·KI.
  The first FAST_FRAMES frames use the wider gains KP_FAST, KI_FAST to pull in what the
  acquisition estimate left; then the narrow KP, KI average the marker jitter (±1 reference
  cycle) and the capture quantisation (one port cycle). An error of SLEW_NS or more is
  slewed whole over one interval (within the clamp) and not integrated (anti-windup); that
  is how a local time found ahead at acquisition is pulled back without a backward step. All
  gains are powers of two (shifts). Per interval the loop is x' = x − KP·x − Σ KI·x: KP is
  the fraction of the phase error removed per interval, KI sets the integral corner
  (natural frequency √KI rad per interval, damping KP / (2√KI) ≈ 0.7 for both gear sets).
  The narrow set passes white phase noise at about √(KP/(2−KP)) ≈ 0.26 of its r.m.s.; its
  slow corner (~70 intervals) is why the fast set pulls in first.

**Anti-windup and clamp.** drift is saturated at ±MAX_DRIFT (nominal / 2**DRIFT_SHIFT ≈
±3900 ppm at the default 8); the increment is clamped to nominal ± nominal / 2**CLAMP_SHIFT
(±7800 ppm at the default 7). So it is never below 0.99 × nominal > 0: local time strictly
increases every cycle and only the one acquisition step moves it forward faster.

**Holdover.** Without good frames the increment keeps the last drift (the proportional part
expires after its interval). After `holdover_intervals` nominal intervals without a good
frame `locked` drops and the loop goes back to `UNLOCKED` (keeping its drift), to re-acquire
when frames come back. (Counted from the last frame's loop update; a frame whose CRC has
checked by the timeout is still used, the timeout waiting the few cycles to its update.)

**Lock.** `locked` rises in `TRACK` when the fast gains have been used up and the last
LOCK_FRAMES frames all had |e| < LOCK_NS. `lock_count` counts these transitions.

**Pipelining** (for a 100 MHz port clock on an ECP5). Everything after a frame is spread over
registered steps, each one add, compare or small decision: the phase error and its range flags,
the saturated error and the loop's flags (slew, lock window, acquisition span, step), the
serial multiply, then the decisions (`update`) and two steps of adding and clamping (`settle`)
before drift, the proportional term and the step take effect, about 40 cycles after the CRC
check; the increment follows 3 cycles after drift and proportional term (sum, clamp, add).
These delays are a few hundred ns in an interval of 100 µs or more: the loop's dynamics are
unchanged, and the proportional term still acts for exactly N cycles. Local time itself is
one two-operand add per cycle, of a registered addend (the increment a cycle after it is set,
or once the increment plus the step); `time` is the accumulator's integer part, as before:
the Timestamper sees the same time, with no added latency. `rejected` counts a bad frame one
cycle after the receiver drops it.

Register view. The outputs below are defined in the register map, `firmware.abi.regmap`
(`DPLL_OUTPUTS`, imported here: `DigitalPLL`'s outputs are built from it, so their names and
widths cannot differ). In a port's register block each is `dpll_<name>`; outputs wider than 32
bits are split into `_lo`/`_hi` words (`DPLL_WORDS`; read `_hi`, `_lo`, `_hi` and retry if
`_hi` changed). The device image (`firmware/image.py`) has one per port and wires these
registers (an image with another `time_source` reads 0 or its board clock in them). The
table, rendered from the register map by `registers_markdown()` and appended to this docstring
when the module is imported (as `hdl.journal_port` does with its counters):
"""

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from firmware.abi.regmap import DPLL_OUTPUTS, DPLL_WORDS, PORT

from .crc import INIT as CRC_INIT
from .crc import POLY_REFLECTED
from .crc import XOROUT as CRC_XOROUT
from .timebase import (
    BITS_PER_BYTE,
    DEFAULT_BIT_RATE,
    DEFAULT_INTERVAL_NS,
    DEFAULT_UNIT_NS,
    FRAME_BYTES,
    IDLE_BITS,
    PAYLOAD_BYTES,
)

_WIDTH = {name: width for name, width, _, _ in DPLL_OUTPUTS}
TIME_BITS = _WIDTH["time"]              # integer ns of local time (64)
FRAC_BITS = 32                          # fractional bits of local time and of the increment
INC_BITS = _WIDTH["increment"]          # 40: 8 integer bits (up to 255 ns per cycle) + 32 fractional
PHASE_BITS = _WIDTH["phase_error"]      # 32: signed integer ns, saturated
SIGNED_OUTPUTS = {"phase_error"}
assert INC_BITS > FRAC_BITS and TIME_BITS >= 64 and PHASE_BITS <= 32
ERR_FRAC = 8            # the loop works on the phase error with 1/256 ns resolution
ERR_BITS = 32           # ... in a signed 32-bit word: ±8.3 ms
SPREAD_SHIFT = 16       # extra precision of the reciprocal 1/N

SYNC_CYCLES = 1         # flops between the first synchroniser flop and the capture
ACQUIRE_FRAMES = 8      # intervals over which the first frequency estimate is taken (power of 2)
KP_FAST_SHIFT = 2       # KP_FAST = 1/4 of the phase error per interval while pulling in
KI_FAST_SHIFT = 5       # KI_FAST = 1/32
FAST_FRAMES = 6         # frames tracked with the fast gains after acquisition
KP_SHIFT = 3            # KP = 1/8
KI_SHIFT = 7            # KI = 1/128
DRIFT_SHIFT = 8         # |drift| <= nominal / 256 (anti-windup)
CLAMP_SHIFT = 7         # |increment - nominal| <= nominal / 128
SLEW_NS = 40            # |e| at or above this is slewed whole in one interval, not integrated
LOCK_NS = 24            # |e| below this counts towards lock
LOCK_FRAMES = 4         # consecutive such frames to declare lock
DEFAULT_HOLDOVER_INTERVALS = 16

UNLOCKED, ACQUIRE, TRACK = 0, 1, 2



def registers_markdown() -> str:
    """`DPLL_OUTPUTS` and their registers as the Markdown table the module docstring carries."""
    offsets = {r.name: r.offset for r in PORT if r.group == "dpll"}
    rows = ["| output | width | access | register (offset in the port block: bits) | description |",
            "|---|---|---|---|---|"]
    for name, width, access, desc in DPLL_OUTPUTS:
        words = [(reg, lsb, w) for reg, output, lsb, w in DPLL_WORDS if output == name]
        regs = ", ".join(f"`{reg}` ({offsets[reg]:#04x}" + ("" if w == width else f": {lsb + w - 1}:{lsb}")
                         + ")" for reg, lsb, w in words)
        rows.append(f"| {name} | {width} | {access} | {regs} | {desc} |")
    return "\n".join(rows)


__doc__ += "\n" + registers_markdown() + "\n"


def _fits(value, bits: int):
    """Whether `value` (signed) is in the signed `bits`-bit range: its bits from bits − 1 up all
    equal (an AND and an OR tree, where a compare with the range's ends is a long carry chain)."""
    top = value[bits - 1:]
    return top.all() | ~top.any()


def _clip(value, bits: int, fits):
    """`value` (signed) saturated to a signed `bits`-bit range, given `_fits(value, bits)`."""
    hi, lo = 2**(bits - 1) - 1, -2**(bits - 1)
    return Mux(fits, value[:bits].as_signed(), Mux(value[-1], lo, hi))


class DigitalPLL(wiring.Component):
    """Local time of one port, locked to the broadcast on `wire` (see the module docstring)."""

    @staticmethod
    def members() -> dict:
        """`wire` in; the register view (`DPLL_OUTPUTS`) out."""
        return {"wire": In(1), **{name: Out(signed(width) if name in SIGNED_OUTPUTS else unsigned(width))
                                  for name, width, _, _ in DPLL_OUTPUTS}}

    def __init__(self, *, clk_hz: float, interval_ns: int = DEFAULT_INTERVAL_NS,
                 unit_ns: int = DEFAULT_UNIT_NS, bit_rate: int = DEFAULT_BIT_RATE,
                 holdover_intervals: int = DEFAULT_HOLDOVER_INTERVALS):
        bit_cycles = round(clk_hz / bit_rate)
        problems = []
        if bit_cycles < 4:
            problems.append(f"{clk_hz} Hz gives {bit_cycles} cycles per bit; need at least 4")
        # The sampling point drifts by the rounding error over one byte; keep it within 1/4 bit.
        elif abs(bit_cycles * bit_rate / clk_hz - 1) * BITS_PER_BYTE > 0.25:
            problems.append(f"{clk_hz} Hz is too far from a whole number of cycles per bit")
        if interval_ns % unit_ns:
            problems.append(f"interval {interval_ns} ns is not a whole number of units of {unit_ns} ns")
        if problems:
            self._MustUse__silence = True  # a rejected core is not an unused one
            raise ValueError("; ".join(problems))
        self.clk_hz = clk_hz
        self.interval_ns = interval_ns
        self.unit_ns = unit_ns
        self.bit_cycles = bit_cycles
        self.period_ns = 1e9 / clk_hz
        self.inc_nominal = round(self.period_ns * 2**FRAC_BITS)
        self.interval_cycles = round(interval_ns / self.period_ns)
        # (SYNC_CYCLES + 1/2) nominal periods of capture lag, + 1/2 ns so truncation rounds.
        self.compensation = round(((SYNC_CYCLES + 0.5) * self.period_ns + 0.5) * 2**FRAC_BITS)
        # s = e / N in increment units: e has ERR_FRAC fractional bits, the increment FRAC_BITS.
        self.reciprocal = round(2**(FRAC_BITS - ERR_FRAC + SPREAD_SHIFT) / self.interval_cycles)
        self.holdover_cycles = holdover_intervals * self.interval_cycles
        super().__init__(self.members())

    def elaborate(self, platform):
        m = Module()
        bit_cycles = self.bit_cycles
        inc_nom = self.inc_nominal
        max_adj = inc_nom >> CLAMP_SHIFT
        max_drift = inc_nom >> DRIFT_SHIFT

        # --- local time -------------------------------------------------------------------
        # local = whole:frac advances by `addend` modulo 2**96 on every cycle: one two-operand
        # add, a single carry chain. `addend` is the increment, registered (so a new increment
        # reaches local time a cycle after it is set), and in one cycle the increment plus the
        # acquisition's forward step (see `settle` below).
        frac = Signal(FRAC_BITS)
        whole = Signal(TIME_BITS)
        local = Cat(frac, whole)
        inc = Signal(INC_BITS, init=inc_nom)
        addend = Signal(TIME_BITS + FRAC_BITS, init=inc_nom)
        m.d.sync += [local.eq(local + addend), addend.eq(inc)]
        m.d.comb += [self.time.eq(whole), self.increment.eq(inc)]

        # --- synchroniser and marker detection -------------------------------------------
        sync1 = Signal(init=1, reset_less=True)
        sync2 = Signal(init=1, reset_less=True)
        last = Signal(init=1, reset_less=True)
        m.d.sync += [sync1.eq(self.wire), sync2.eq(sync1), last.eq(sync2)]
        fall = last & ~sync2
        idle_bits = IDLE_BITS * bit_cycles
        idle = Signal(range(idle_bits + 1))
        quiet = Signal()            # idle == idle_bits, registered with it (no compare before a marker)
        m.d.sync += quiet.eq(sync2 & (idle >= idle_bits - 1))
        with m.If(~sync2):
            m.d.sync += idle.eq(0)
        with m.Elif(idle != idle_bits):
            m.d.sync += idle.eq(idle + 1)

        # --- frame receiver ----------------------------------------------------------------
        captured = Signal.like(local)
        frame = Signal(8 * FRAME_BYTES)
        byte_index = Signal(range(FRAME_BYTES + 1))
        bit_index = Signal(range(BITS_PER_BYTE + 1))
        # A bit timer loaded with (cycles to wait − 1) that fires when it has counted below zero:
        # its sign bit is the event, so no compare sits before the receiver's decisions.
        timer = Signal(signed((2 * bit_cycles).bit_length() + 1))
        tick = timer[-1]
        first_sample = max(bit_cycles // 2 - SYNC_CYCLES - 1, 0)
        # CRC-32C of the payload, bit by bit as its data bits arrive (LSB first, as the
        # reflected CRC takes them: `hdl.crc.crc32c_step`), checked against bytes 6-9.
        crc = Signal(32)
        bit_value = Signal()        # the last data bit sampled ...
        got_data = Signal()         # ... taken in this cycle, the one after its sample
        got_payload = Signal()      # ... and it is one of T's
        crc_bit = crc[0] ^ bit_value
        crc_ok = Signal()
        payload = frame[:8 * PAYLOAD_BYTES]
        data_bit = (bit_index != 0) & (bit_index < BITS_PER_BYTE - 1)     # not 10, after the stop bit
        reject = Signal()
        good = Signal()
        # T·unit, also bit by bit: each payload bit that is set adds unit_ns << its index, so no
        # multiplier and no chain of wide adders sits in one cycle before the phase error (on an
        # ECP5 they held the port clock far below 100 MHz); target = T·unit + compensation,
        # registered at CHECK, leaves one 98-bit subtraction for the cycle of `good`.
        full_bits = TIME_BITS + FRAC_BITS + 2
        t_units = Signal(8 * PAYLOAD_BYTES + self.unit_ns.bit_length())
        t_addend = Signal.like(t_units)
        target = Signal(unsigned(full_bits))

        # The receiver's states, one-hot: each state test is one flip-flop, not a decode.
        rx_idle = Signal(init=1)    # waiting for a marker
        rx_wait = Signal()          # between bytes: waiting for the next start bit
        rx_bits = Signal()          # inside a byte
        rx_check = Signal()         # the frame is in: T·unit and the CRC compared
        rx_verify = Signal()        # good, or rejected
        # What the next tick in a byte samples, registered: the indices hold for bit_cycles − 1
        # cycles before a tick, except before a byte's first tick, which can come in the cycle
        # after its start edge; that tick samples the start bit, and the indices of the wait
        # before it (stop bit done: bit_index 10) and of IDLE (0) say "no data bit" too.
        sample_data = Signal()
        sample_payload = Signal()
        m.d.sync += [sample_data.eq(data_bit), sample_payload.eq(data_bit & (byte_index < PAYLOAD_BYTES))]

        # A data bit is taken into the frame, the CRC and T·unit in the cycle after its sample,
        # from registers (its value and two strobes): no decision and no wide fanout of the
        # synchroniser sits before those 200 flip-flops. CHECK comes a stop bit later.
        m.d.sync += [got_data.eq(0), got_payload.eq(0)]
        with m.If(got_data):
            m.d.sync += frame.eq(Cat(frame[1:], bit_value))
        with m.If(got_payload):
            m.d.sync += [crc.eq((crc >> 1) ^ Mux(crc_bit, POLY_REFLECTED, 0)),
                         t_units.eq(t_units + Mux(bit_value, t_addend, 0)),
                         t_addend.eq(t_addend << 1)]

        with m.If(rx_idle):
            # The accumulators start over and local time is captured in every idle cycle: the
            # capture of the marker's cycle, the last idle one, stays.
            m.d.sync += [crc.eq(CRC_INIT), t_units.eq(0), t_addend.eq(self.unit_ns),
                         byte_index.eq(0), bit_index.eq(0), captured.eq(local)]
            with m.If(fall & quiet):
                m.d.sync += [timer.eq(first_sample - 1), rx_idle.eq(0), rx_bits.eq(1)]
        with m.If(rx_wait):
            # The next start bit follows the stop bit without a gap; allow two bit times.
            m.d.sync += timer.eq(timer - 1)
            with m.If(fall):
                m.d.sync += [bit_index.eq(0), timer.eq(first_sample - 1), rx_wait.eq(0), rx_bits.eq(1)]
            with m.Elif(tick):
                m.d.comb += reject.eq(1)
                m.d.sync += [rx_wait.eq(0), rx_idle.eq(1)]
        with m.If(rx_bits):
            m.d.sync += timer.eq(timer - 1)
            with m.If(tick):
                m.d.sync += [timer.eq(bit_cycles - 2), bit_index.eq(bit_index + 1)]
                with m.If(bit_index == 0):          # start bit, sampled mid-bit
                    with m.If(sync2):
                        m.d.comb += reject.eq(1)
                        m.d.sync += [rx_bits.eq(0), rx_idle.eq(1)]
                with m.Elif(bit_index == BITS_PER_BYTE - 1):   # stop bit
                    with m.If(~sync2):
                        m.d.comb += reject.eq(1)
                        m.d.sync += [rx_bits.eq(0), rx_idle.eq(1)]
                    with m.Elif(byte_index == FRAME_BYTES - 1):
                        m.d.sync += [rx_bits.eq(0), rx_check.eq(1)]
                    with m.Else():
                        m.d.sync += [byte_index.eq(byte_index + 1), timer.eq(2 * bit_cycles - 1),
                                     rx_bits.eq(0), rx_wait.eq(1)]
                with m.If(sample_data):              # data bit, LSB first
                    m.d.sync += [bit_value.eq(sync2), got_data.eq(1), got_payload.eq(sample_payload)]
        with m.If(rx_check):
            m.d.sync += [target.eq((t_units << FRAC_BITS) + self.compensation),
                         crc_ok.eq((crc ^ CRC_XOROUT) == frame[8 * PAYLOAD_BYTES:]),
                         rx_check.eq(0), rx_verify.eq(1)]
        with m.If(rx_verify):
            m.d.comb += [good.eq(crc_ok), reject.eq(~crc_ok)]
            m.d.sync += [rx_verify.eq(0), rx_idle.eq(1)]

        rejected = Signal()         # counted a cycle after the decision, off the receiver's logic
        m.d.sync += rejected.eq(reject)
        with m.If(rejected):
            m.d.sync += self.rejected.eq(self.rejected + 1)

        # --- phase detector: e = T·unit + compensation − captured ----------------------------
        # After `good`, one-hot stages (`pipe`) each leave one short step: the subtraction; the
        # range checks; the saturated values and the acquisition span; the loop's inputs and
        # flags. Then the multiply, then the loop update (`update`, `settle`).
        err_full = Signal(signed(full_bits))        # fixed point, FRAC_BITS
        err_wide = err_full >> (FRAC_BITS - ERR_FRAC)
        phase_wide = err_full >> FRAC_BITS
        err_fits = Signal()
        phase_fits = Signal()
        behind = Signal()                           # e > 0: local time is behind
        err = Signal(signed(ERR_BITS))              # saturated, ERR_FRAC fractional bits
        err_first = Signal(signed(ERR_BITS))
        spread_in = Signal(signed(ERR_BITS + 1))
        slew = Signal()                             # |e| >= SLEW_NS
        close = Signal()                            # |e| < LOCK_NS
        t_frame = Signal.like(payload)               # T of the frame in the pipeline
        t_first = Signal.like(payload)               # T of the acquisition's first frame
        since_first = Signal.like(payload)
        span = ACQUIRE_FRAMES * (self.interval_ns // self.unit_ns)
        span_over = Signal()
        span_done = Signal()
        pipe = Signal(4)                            # one-hot stages after a good frame
        state = Signal(2)
        m.d.comb += self.state.eq(state)

        # A good frame is in flight from `good` to its `update`; holdover does not end then.
        in_flight = Signal()
        # The state, decoded and registered (one-hot, by state number): the state changes only
        # at `update` and at the holdover's end, which waits for a frame in flight, so from
        # the second stage after `good` to `update` this is the current state.
        in_state = Signal(3, init=1 << UNLOCKED)
        m.d.sync += in_state.eq(1 << state)

        m.d.sync += pipe.eq(Cat(good, pipe[:-1]))
        with m.If(good):
            m.d.sync += [
                in_flight.eq(1),
                err_full.eq(target - captured),
                t_frame.eq(payload),
                self.frames.eq(self.frames + 1),
            ]
        with m.If(pipe[0]):
            m.d.sync += [err_fits.eq(_fits(err_wide, ERR_BITS)),
                         phase_fits.eq(_fits(phase_wide, PHASE_BITS)),
                         behind.eq(~err_full[-1] & err_full.any()),
                         since_first.eq(t_frame - t_first)]
        with m.If(pipe[1]):
            m.d.sync += [err.eq(_clip(err_wide, ERR_BITS, err_fits)),
                         self.phase_error.eq(_clip(phase_wide, PHASE_BITS, phase_fits)),
                         span_over.eq(since_first > span),
                         span_done.eq(since_first == span)]
        with m.If(pipe[2]):
            m.d.sync += [spread_in.eq(Mux(in_state[ACQUIRE], err - err_first, err)),
                         slew.eq((err >= (SLEW_NS << ERR_FRAC)) | (err <= -(SLEW_NS << ERR_FRAC))),
                         close.eq((err < (LOCK_NS << ERR_FRAC)) & (err > -(LOCK_NS << ERR_FRAC)))]

        # spread = e / N in increment units = spread_in x reciprocal >> SPREAD_SHIFT, multiplied
        # serially, MSB first (Horner: acc = 2·acc + bit·reciprocal, the sign bit weighing −1):
        # ERR_BITS + 1 cycles once per frame instead of a 33 x 25-bit multiplier in one cycle.
        mul_x = Signal(ERR_BITS + 1)
        mul_acc = Signal(signed(ERR_BITS + 2 + self.reciprocal.bit_length()))
        mul_left = Signal(range(ERR_BITS + 2))
        mul_busy = Signal()
        mul_first = Signal()                        # the sign bit's step
        spread = mul_acc >> SPREAD_SHIFT
        update = Signal()                           # the loop update, once the multiply is done
        m.d.sync += update.eq(0)
        with m.If(pipe[3]):
            m.d.sync += [mul_x.eq(spread_in), mul_acc.eq(0), mul_left.eq(ERR_BITS + 1),
                         mul_busy.eq(1), mul_first.eq(1)]
        with m.Elif(mul_busy):
            weight = Mux(mul_first, -self.reciprocal, self.reciprocal)
            m.d.sync += [mul_acc.eq((mul_acc << 1) + Mux(mul_x[-1], weight, 0)),
                         mul_x.eq(mul_x << 1), mul_left.eq(mul_left - 1), mul_first.eq(0)]
            with m.If(mul_left == 1):
                m.d.sync += [update.eq(1), mul_busy.eq(0)]

        # --- loop filter ---------------------------------------------------------------------
        # `update` takes the decisions (state, counters, lock) from registered flags and
        # registers the arithmetic's operands; `settle` (two one-hot stages) adds them, with
        # their limit flags, then clamps and applies them: drift, the proportional term, the step.
        drift = Signal(signed(INC_BITS))
        prop = Signal(signed(INC_BITS))
        # cycles the proportional term has left, minus 2: it expires when this goes negative
        prop_left = Signal(signed(self.interval_cycles.bit_length() + 1), init=-1)
        drift_add = Signal.like(spread)
        drift_sum = Signal(signed(max(INC_BITS, len(spread)) + 1))
        kp_raw = Signal.like(spread)
        apply_prop = Signal()
        apply_step = Signal()
        drift_over = Signal()
        drift_under = Signal()
        prop_over = Signal()
        prop_under = Signal()
        settle = Signal(2)
        tracked = Signal(range(FAST_FRAMES + 1))
        in_range = Signal(range(LOCK_FRAMES + 1))
        # cycles without a good frame before holdover ends, minus 1: expired when negative
        holdover_left = Signal(signed(self.holdover_cycles.bit_length() + 1), init=self.holdover_cycles - 1)

        # The lock test's inputs, registered: `close` is set before the multiply and the
        # counters change only at `update`, so at `update` this is the current value.
        lock_due = Signal()
        m.d.sync += lock_due.eq(close & (tracked >= FAST_FRAMES - 1) & (in_range >= LOCK_FRAMES - 1))

        m.d.sync += settle.eq(Cat(update, settle[:-1]))
        with m.If(update):
            m.d.sync += [holdover_left.eq(self.holdover_cycles - 1), in_flight.eq(0),
                         drift_add.eq(0), apply_prop.eq(0), apply_step.eq(0)]
            with m.If(in_state[UNLOCKED]):
                m.d.sync += [err_first.eq(err), t_first.eq(t_frame), state.eq(ACQUIRE)]
            with m.If(in_state[ACQUIRE]):
                # The estimate needs exactly ACQUIRE_FRAMES intervals between its two
                # frames (by their T); a lost frame at the end restarts the acquisition.
                with m.If(span_over):
                    m.d.sync += [err_first.eq(err), t_first.eq(t_frame)]
                with m.Elif(span_done):
                    m.d.sync += [drift_add.eq(spread >> (ACQUIRE_FRAMES.bit_length() - 1)),
                                 apply_step.eq(behind),      # forward, once; never back
                                 tracked.eq(0), in_range.eq(0), state.eq(TRACK)]
            with m.If(in_state[TRACK]):
                fast = tracked != FAST_FRAMES
                with m.If(fast & ~slew):
                    m.d.sync += tracked.eq(tracked + 1)
                kp = Mux(slew, spread, Mux(fast, spread >> KP_FAST_SHIFT, spread >> KP_SHIFT))
                ki = Mux(slew, 0, Mux(fast, spread >> KI_FAST_SHIFT, spread >> KI_SHIFT))
                m.d.sync += [drift_add.eq(ki), kp_raw.eq(kp), apply_prop.eq(1)]
                with m.If(~close):
                    m.d.sync += in_range.eq(0)
                with m.Elif(in_range != LOCK_FRAMES):
                    m.d.sync += in_range.eq(in_range + 1)
                with m.If(lock_due & ~self.locked):
                    m.d.sync += [self.locked.eq(1), self.lock_count.eq(self.lock_count + 1)]
        with m.Elif(holdover_left[-1] & ~in_flight):
            m.d.sync += [self.locked.eq(0), state.eq(UNLOCKED)]
        with m.Else():
            m.d.sync += holdover_left.eq(holdover_left - 1)

        # The proportional correction runs for one interval, then expires. (Written before
        # `settle` below, which overrides it when a new correction starts.)
        with m.If(prop_left[-1]):
            m.d.sync += prop.eq(0)
        with m.Else():
            m.d.sync += prop_left.eq(prop_left - 1)
        with m.If(settle[0]):
            m.d.sync += [drift_sum.eq(drift + drift_add),
                         *_limit_flags(drift + drift_add, max_drift, drift_over, drift_under),
                         *_limit_flags(kp_raw, max_adj, prop_over, prop_under)]
        with m.If(settle[1]):
            m.d.sync += drift.eq(_limit(drift_sum, max_drift, drift_over, drift_under))
            with m.If(apply_prop):
                m.d.sync += [prop.eq(_limit(kp_raw, max_adj, prop_over, prop_under)),
                             prop_left.eq(self.interval_cycles - 2)]
            with m.If(apply_step):
                m.d.sync += addend.eq(inc + err_full[:len(addend)])     # e > 0 here

        # --- increment: nominal + drift + proportional, clamped ---------------------------
        # (registered in three steps, sum, clamp and add: a few cycles later, and each short)
        adj = Signal(signed(INC_BITS + 1))
        adj_over = Signal()
        adj_under = Signal()
        adj_clamped = Signal(signed(INC_BITS))
        m.d.sync += [adj.eq(drift + prop), *_limit_flags(drift + prop, max_adj, adj_over, adj_under),
                     adj_clamped.eq(_limit(adj, max_adj, adj_over, adj_under)),
                     inc.eq(inc_nom + adj_clamped)]
        return m


def _limit_flags(value, limit: int, over, under):
    """Assignments of the flags `_limit` takes: `value` (signed) above `limit`, below −`limit`
    (registered with the value, so the clamp is a multiplexer behind two flip-flops). Sign
    bits of sums rather than compares: with a `value` that is itself a sum, Yosys makes one
    adder of each, not an adder and a compare in series."""
    return [over.eq(~(value - (limit + 1))[-1]), under.eq((value + limit)[-1])]


def _limit(value, limit: int, over, under):
    """`value` limited to ±`limit`, given its `_limit_flags`."""
    return Mux(over, limit, Mux(under, -limit, value))

