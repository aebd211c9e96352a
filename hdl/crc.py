"""CRC-32C (Castagnoli) engine over a byte or word stream, one word per cycle.

CRC-32C is the check on journal entries and link frames; host and gateware must agree bit for
bit, so the conventions are those of iSCSI/ext4/the `crc32c` Python package: reflected
polynomial 0x82F63B78, initial value and final XOR 0xFFFFFFFF, bytes taken LSB first. A word
holds its bytes little-endian (byte 0 in bits 7:0), the order they have in memory and on the
wire.

The next-state function of a CRC register is linear over GF(2), so the per-word update is
derived at elaboration time: each register bit becomes the XOR of the state and data bits that
a symbolic run of the bitwise algorithm says it depends on. No lookup tables, no loops in
hardware, any word width that is a whole number of bytes.
"""

from amaranth.hdl import Cat, Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

POLY_REFLECTED = 0x82F63B78
INIT = 0xFFFFFFFF
XOROUT = 0xFFFFFFFF
CHECK = 0xE3069283  # CRC-32C of b"123456789"


def crc32c_step(state: int, word: int, width: int) -> int:
    """Bitwise reference update of the raw CRC register by one `width`-bit word (no init/xorout)."""
    for bit in range(width):
        lsb = (state ^ (word >> bit)) & 1
        state >>= 1
        if lsb:
            state ^= POLY_REFLECTED
    return state


def update_matrix(width: int) -> list[tuple[int, int]]:
    """For each register bit, the masks of (state bits, data bits) whose XOR gives its next value."""
    rows = [[0, 0] for _ in range(32)]
    for i in range(32):
        col = crc32c_step(1 << i, 0, width)
        for out in range(32):
            if col >> out & 1:
                rows[out][0] |= 1 << i
    for j in range(width):
        col = crc32c_step(0, 1 << j, width)
        for out in range(32):
            if col >> out & 1:
                rows[out][1] |= 1 << j
    return [(s, d) for s, d in rows]


def _xor_of(value, mask: int):
    bits = [value[i] for i in range(len(value)) if mask >> i & 1]
    return Cat(*bits).xor() if bits else 0


class CRC32C(wiring.Component):
    """Accumulates CRC-32C over `data.payload.data`, one word per valid cycle.

    A word with `first` set starts a new CRC (as if the register held INIT before it). `crc`
    is the finished value (final XOR applied) over every word since the last `first`, valid
    the cycle after the last word is accepted. The stream is always ready.
    """

    def __init__(self, data_width: int = 8):
        if data_width <= 0 or data_width % 8:
            self._MustUse__silence = True  # a rejected core is not an unused one
            raise ValueError(f"data_width must be a positive multiple of 8, not {data_width}")
        self.data_width = data_width
        payload = data.StructLayout({"data": unsigned(data_width), "first": 1})
        super().__init__({
            "data": In(stream.Signature(payload)),
            "crc": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.data.ready.eq(1)
        state = Signal(32, init=INIT)
        current = Signal(32)
        m.d.comb += current.eq(state)
        with m.If(self.data.payload.first):
            m.d.comb += current.eq(INIT)
        nxt = Cat(*(_xor_of(current, s) ^ _xor_of(self.data.payload.data, d)
                    for s, d in update_matrix(self.data_width)))
        with m.If(self.data.valid):
            m.d.sync += state.eq(nxt)
        m.d.comb += self.crc.eq(state ^ XOROUT)
        return m
