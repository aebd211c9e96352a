"""The DMA link's journal ring in host memory: slot format and phase rule (Corundum-style).

Each port has its own ring of `2**log_size` slots in host memory, programmed through the port's
`dma_*` registers (`firmware.abi.regmap.DMA_REGISTERS`). The device writes entry `i` (counting
every entry it has put in this ring, from 0) into slot `i mod 2**log_size`:

| offset | size | what |
|-------:|-----:|------|
| 0 | `entry_bytes(length)` | the entry, exactly the bytes of `firmware.abi.entry` (a marker is shorter) |
| `slot_bytes - 8` | 8 | the slot word: bit 0 is the phase, the other bits zero |

The slot word is written last, after the entry, so a host that sees the phase it expects
knows the whole entry is in memory. The phase of entry `i` is 1 on the ring's first pass, 0 on
the second, and so on (`phase(i, log_size)`): the host clears the ring once, then reads slot
`c mod size` when its phase equals `phase(c, log_size)` — it never reads a device register to
learn that new entries arrived. It frees slots by writing its consumer index `c` (slots
consumed, free-running) to the `dma_doorbell` register; that write is also the acknowledge:
the device frees, in the port's partial-journal ring, every entry up to the one in slot `c-1`.
The device never writes slot `i` while `i - c >= 2**log_size`: a full host ring holds the
port's flush, and the port's own ring then back-pressures its ingress.
"""

from firmware.abi.entry import entry_bytes

SLOT_WORD_BYTES = 8


def slot_bytes(block_bytes: int) -> int:
    """Bytes per ring slot: a write entry of `block_bytes` and the slot word."""
    return entry_bytes(block_bytes) + SLOT_WORD_BYTES


def phase(index: int, log_size: int) -> int:
    """The phase bit the device writes with entry `index` (1 on the first pass over the ring)."""
    return 1 - ((index >> log_size) & 1)
