"""TimeBase: the stable time base's transmitter, one frame per interval on a single wire.

The time base counts its own reference clock (`ref_hz`, 100 MHz by default) and every
`interval_ns` (1 ms by default) sends one frame. The frame's start edge is the on-time marker;
its payload is the time at that marker, so a receiver learns *when* (the edge) and *what time
it was then* (the payload, which arrives a few microseconds later).

Frame format (idle-high, UART-like, `bit_rate` bits per second, 12.5 Mbit/s by default)::

    idle 1 ... | byte 0 | byte 1 | ... | byte 9 | idle 1 ...
    byte    = start bit 0, 8 data bits LSB first, stop bit 1   (10 bit times, no gap)
    bytes 0-5  T: time at the marker in units of `unit_ns` (1 ms by default), little-endian
    bytes 6-9  CRC-32C of bytes 0-5 (`hdl.crc` conventions), little-endian

The falling edge of byte 0's start bit after at least 2 byte times of idle is the marker. The
marker of frame k leaves on the reference edge number k·N (N = reference cycles per interval),
so with the reference clock's first rising edge at time 0 the marker of the frame carrying
T = k·interval_ns/unit_ns is on the wire at exactly k·interval_ns. The first frame is k = 1
(at power-up the CRC of T = 0 is not ready yet).

CRC-32C rather than a CRC-8: the conventions of the `hdl.crc` core, computed one bit per cycle
on both ends (the sender after each T update, the receiver `hdl.dpll` as the data bits arrive),
and a receiver shares nothing else with the sender. A 100-bit frame takes 8 µs at the
default bit rate, well inside the shortest interval the tests use (100 µs).

Test hooks (inputs; tie them to their defaults in a real design): `jitter` moves the next
marker by -1, 0 or +1 reference cycle (the payload still names the nominal time, as a real
time base with an edge-jittery output would); `corrupt` flips bit 0 of the next frame's CRC;
`enable` low suppresses frames (the time keeps counting), to test holdover.

`origin` (input, in units of `unit_ns`, 0 by default) is the time of the reference clock's first
rising edge: it is loaded on the first cycle after reset (or power-up), so frame k carries
T = origin + k·interval_ns/unit_ns. Hold it steady; a board whose time base is set to, say,
the Unix epoch ties it to the start time (the virtual board: `boards/sim.py`).
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .crc import INIT as CRC_INIT
from .crc import POLY_REFLECTED
from .crc import XOROUT as CRC_XOROUT

PAYLOAD_BYTES = 6
CRC_BYTES = 4
FRAME_BYTES = PAYLOAD_BYTES + CRC_BYTES
BITS_PER_BYTE = 10  # start, 8 data, stop
FRAME_BITS = FRAME_BYTES * BITS_PER_BYTE
IDLE_BITS = 2 * BITS_PER_BYTE  # idle the receiver needs before it accepts a marker

DEFAULT_REF_HZ = 100_000_000
DEFAULT_INTERVAL_NS = 1_000_000
DEFAULT_UNIT_NS = 1_000_000
DEFAULT_BIT_RATE = 12_500_000


def frame_bits(t: int, crc: int) -> list[int]:
    """The line levels of one frame, one entry per bit time (the reference for both ends)."""
    payload = t.to_bytes(PAYLOAD_BYTES, "little") + crc.to_bytes(CRC_BYTES, "little")
    bits = []
    for byte in payload:
        bits += [0, *((byte >> i) & 1 for i in range(8)), 1]
    return bits


class TimeBase(wiring.Component):
    """Sends `T` (time at the marker, in `unit_ns`) once per `interval_ns` on `wire`.

    `t` is the value carried by the next frame (for observation). All timing is in whole
    reference cycles: the interval and the bit time must be whole numbers of them.
    """

    wire: Out(1, init=1)
    t: Out(8 * PAYLOAD_BYTES)
    enable: In(1, init=1)
    jitter: In(signed(2))
    corrupt: In(1)
    origin: In(8 * PAYLOAD_BYTES)

    def __init__(self, *, ref_hz: int = DEFAULT_REF_HZ, interval_ns: int = DEFAULT_INTERVAL_NS,
                 unit_ns: int = DEFAULT_UNIT_NS, bit_rate: int = DEFAULT_BIT_RATE):
        problems = []
        if (ref_hz * interval_ns) % 1_000_000_000:
            problems.append(f"interval {interval_ns} ns is not a whole number of {ref_hz} Hz cycles")
        if ref_hz % bit_rate:
            problems.append(f"bit time is not a whole number of reference cycles ({ref_hz}/{bit_rate})")
        if interval_ns % unit_ns:
            problems.append(f"interval {interval_ns} ns is not a whole number of units of {unit_ns} ns")
        interval_cycles = ref_hz * interval_ns // 1_000_000_000
        bit_cycles = ref_hz // bit_rate if bit_rate else 0
        if not problems and (FRAME_BITS + IDLE_BITS) * bit_cycles + 4 > interval_cycles:
            problems.append("a frame and its idle gap do not fit in one interval")
        if problems:
            self._MustUse__silence = True  # a rejected core is not an unused one
            raise ValueError("; ".join(problems))
        self.ref_hz = ref_hz
        self.interval_ns = interval_ns
        self.unit_ns = unit_ns
        self.bit_rate = bit_rate
        self.interval_cycles = interval_cycles
        self.bit_cycles = bit_cycles
        self.t_step = interval_ns // unit_ns
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        n = self.interval_cycles

        phase = Signal(range(n))          # reference cycle within the interval
        start_at = Signal(range(n))       # phase at which this interval's frame starts
        next_t = Signal.like(self.t)      # T of the next marker
        m.d.comb += self.t.eq(next_t)

        m.d.sync += phase.eq(phase + 1)
        with m.If(phase == n - 1):
            m.d.sync += phase.eq(0)
        # The next marker's offset is chosen two cycles before the earliest it can start.
        with m.If(phase == n - 2):
            with m.Switch(self.jitter):
                with m.Case(-1):
                    m.d.sync += start_at.eq(n - 1)
                with m.Case(1):
                    m.d.sync += start_at.eq(1)
                with m.Default():
                    m.d.sync += start_at.eq(0)
        # After any marker of this interval has left, the next frame names the next boundary.
        with m.If(phase == 2):
            m.d.sync += next_t.eq(next_t + self.t_step)

        # CRC of next_t, one bit per cycle from phase 3 (next_t last changed at phase 2, or on
        # the first cycle), so it is ready by phase 3 + 48, long before the next frame starts
        # (the interval holds a frame and its idle gap: > 120 cycles). Cheaper to simulate than
        # the parallel `CRC32C` of a 48-bit word every cycle; same value (`crc32c_step`).
        crc_state = Signal(32)
        crc_shift = Signal.like(next_t)
        crc_left = Signal(range(len(next_t) + 1))
        with m.If(phase == 3):
            m.d.sync += [crc_state.eq(CRC_INIT), crc_shift.eq(next_t), crc_left.eq(len(next_t))]
        with m.Elif(crc_left != 0):
            lsb = crc_state[0] ^ crc_shift[0]
            m.d.sync += [crc_state.eq((crc_state >> 1) ^ Mux(lsb, POLY_REFLECTED, 0)),
                         crc_shift.eq(crc_shift >> 1), crc_left.eq(crc_left - 1)]
        crc = crc_state ^ CRC_XOROUT

        # Serializer: the whole frame's line levels in a shift register, LSB out first.
        shift = Signal(FRAME_BITS, init=(1 << FRAME_BITS) - 1)
        bits_left = Signal(range(FRAME_BITS + 1))
        bit_timer = Signal(range(max(self.bit_cycles, 2)))
        data = Cat(next_t, crc ^ self.corrupt)
        levels = Cat(*(Cat(Const(0, 1), data[8 * i:8 * i + 8], Const(1, 1)) for i in range(FRAME_BYTES)))

        # No frame on the very first cycle (T = 0, its CRC not computed).
        started = Signal()
        m.d.sync += started.eq(1)
        with m.If(~started):
            m.d.sync += next_t.eq(self.origin)      # T at the first edge (see the docstring)
        with m.If((phase == start_at) & self.enable & started):
            m.d.sync += [
                shift.eq(levels[1:]),
                self.wire.eq(levels[0]),  # the start edge: the marker
                bits_left.eq(FRAME_BITS - 1),
                bit_timer.eq(self.bit_cycles - 1),
            ]
        with m.Elif(bits_left != 0):
            m.d.sync += bit_timer.eq(bit_timer - 1)
            with m.If(bit_timer == 0):
                m.d.sync += [
                    self.wire.eq(shift[0]),
                    shift.eq(Cat(shift[1:], Const(1, 1))),
                    bits_left.eq(bits_left - 1),
                    bit_timer.eq(self.bit_cycles - 1),
                ]
        with m.Else():
            with m.If(bit_timer != 0):
                m.d.sync += bit_timer.eq(bit_timer - 1)
            with m.Else():
                m.d.sync += self.wire.eq(1)  # stop bit done: back to idle
        return m
