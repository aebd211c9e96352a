"""The device register map: one table from which the gateware decoder, the host's constants and
the Markdown table in `docs/registers.md` are all produced (`python -m firmware.abi.regmap`).

Registers are 32 bits wide on the link (REG_READ/REG_WRITE address whole registers, not bytes);
a narrower register reads with its upper bits zero. The address space has a global block at 0
and one block per port at `port_base(port) = PORT_STRIDE * (port + 1)`; a register's address is
its block's base plus its offset.

Access: `RO` read only; `RW` read/write (reads return what was written); `W1P` write 1 to pulse
(a one-cycle strobe; reads 0). An `RO` register in `GLOBAL` with `const` set holds a value
fixed when the image is built (its geometry and identity).

The journal port's counters (`COUNTERS`) are defined here and imported by the gateware
(`hdl.journal_port`), so the outputs of `JournalPort` and the registers are one list. The
statistics among them and the link's counters are `EVENTS`: the core's output of that name is a
one-cycle pulse per event, and the register block counts the pulses (`hdl.counter_bank`, in
block RAM; `Register.event`); the others (sequence numbers, fill, status) are values the core
keeps and the register reads. The same
holds for the DPLL: `DPLL_OUTPUTS` is imported by `hdl.dpll`, whose `DigitalPLL` has outputs of
those names and widths, and each output is register `dpll_<name>` in the port's block.

Wide values: a register is at most 32 bits, so an output wider than 32 bits is split into
32-bit words at consecutive offsets, `<register>_lo` (bits 31:0) then `<register>_hi` (bits
63:32, or fewer: `dpll_increment_hi` holds bits 39:32); `DPLL_WORDS` lists which bits of which
output each `dpll` register carries. The words are read one REG_READ register at a time, not
together: for a value that can carry into the upper word between the two reads (`dpll_time`
every cycle; `dpll_increment` rarely), read `_hi`, `_lo`, `_hi` again and retry if `_hi` changed.
"""

from dataclasses import dataclass

PORT_STRIDE = 0x100
ADDRESS_BITS = 16
ACCESS = ("RO", "RW", "W1P")


@dataclass(frozen=True)
class Register:
    name: str
    offset: int
    width: int
    access: str
    description: str
    const: bool = False     # RO, fixed when the image is built
    init: int = 0           # RW: value after reset (an image may override it)
    group: str = "global"   # "global", or what drives it in a port block: "control", "port", "dma", "dpll"
    event: bool = False     # RO, counts its source's one-cycle pulses (`EVENTS`)


# (name, width, access, description): the journal port's counters and status, outputs of JournalPort.
COUNTERS = [
    ("entries_written", 32, "RO", "entries allocated (journaled writes and markers) = next seq"),
    ("flushed", 32, "RO", "entries sent to the flush stream for the first time"),
    ("acknowledged", 32, "RO", "entries acknowledged by the host (the ring's tail seq)"),
    ("resent", 32, "RO", "entries sent again after a resend request"),
    ("resend_requests", 32, "RO", "resend (go-back-N) requests received"),
    ("ring_fill", 32, "RO", "entries in the ring not yet acknowledged (or being sent)"),
    ("stall_cycles", 32, "RO", "cycles a request waited at ingress because the ring was full"),
    ("stall_events", 32, "RO", "times the ring-full back-pressure began"),
    ("primary_failures", 32, "RO", "primary writes completed with a failure (PRIMARY_FAILED)"),
    ("journal_failures", 32, "RO", "pre-image reads that failed (JOURNAL_FAILED, primary not written)"),
    ("unjournaled", 32, "RO", "writes forwarded to primary storage while the port was invalid"),
    ("markers", 32, "RO", "PORT_INVALID markers written"),
    ("protocol_errors", 32, "RO", "ingress data beats outside a request, dropped"),
    ("invalid", 1, "RO", "port is invalid (stopped journaling after a full ring); cleared by `reenable`"),
    ("draining", 1, "RO", "flush engine is draining"),
    ("flush_trigger", 3, "RO", "`FlushTrigger` that started the current or last drain"),
]

# The link's own counters: outputs of `hdl.link.LinkController` of the same names.
LINK_COUNTERS = [
    ("rx_frames", 32, "RO", "request frames received intact (CRC, length and type good)"),
    ("rx_cobs_errors", 32, "RO", "frames dropped: bad COBS (delimiter inside a group)"),
    ("rx_crc_errors", 32, "RO", "frames dropped: CRC-32C mismatch"),
    ("rx_length_errors", 32, "RO", "frames dropped: too short, or length field or payload size wrong"),
    ("rx_type_errors", 32, "RO", "frames dropped: unknown frame type"),
    ("rx_port_errors", 32, "RO", "frames dropped: port index out of range"),
    ("naks_sent", 32, "RO", "NAK frames sent (one per dropped frame)"),
    ("tx_frames", 32, "RO", "frames sent (responses, JOURNAL, FLUSH_MARK, NAK)"),
    ("tx_journal_entries", 32, "RO", "entries sent in JOURNAL frames (first sends and resends)"),
    ("rx_lba_errors", 32, "RO", "frames dropped: INJECT_WRITE or READ_BLOCK outside the volume"),
    ("rx_busy", 32, "RO", "frames dropped: INJECT_WRITE or READ_BLOCK while the last is under way"),
    ("injected_writes", 32, "RO", "INJECT_WRITEs done (WRITTEN sent)"),
]

# Counters of events: their sources pulse once per event, the register block counts.
EVENTS = frozenset({"resent", "resend_requests", "stall_cycles", "stall_events", "primary_failures",
                    "journal_failures", "unjournaled", "markers", "protocol_errors",
                    *(name for name, _, _, _ in LINK_COUNTERS)})
EVENT_OFFSETS = range(0x10, 0x20)   # where a block's event counters sit (`firmware.registers`)

# (name, width, access, description): the DPLL's register view, outputs of `hdl.dpll.DigitalPLL`
# of the same names and widths (`phase_error` is signed: two's complement in its register).
DPLL_OUTPUTS = [
    ("locked", 1, "RO", "1 while the loop is locked to the broadcast"),
    ("state", 2, "RO", "loop state: 0 unlocked, 1 acquiring, 2 tracking"),
    ("phase_error", 32, "RO",
     "last accepted phase error T·unit − local time at the marker, signed ns, saturated"),
    ("increment", 40, "RO", "current per-cycle increment, ns with 32 fractional bits"),
    ("frames", 16, "RO", "frames accepted (check passed), wraps"),
    ("rejected", 16, "RO", "frames rejected (bad CRC-32C, bad start/stop bit, gap), wraps"),
    ("lock_count", 8, "RO", "times lock was gained, wraps"),
    ("time", 64, "RO", "local time, integer ns (the Timestamper's input)"),
]
DPLL_OFFSET = 0x30      # first `dpll` register of a port's block

# (name, width, access, description): the port's journal ring in host memory on the DMA link
# (`hdl.dma.DmaRingWriter`; absent on the serial link, read 0). A slot is `firmware.abi.dma.slot_bytes`
# bytes: the entry's bytes, then at the slot's last 8 bytes a word whose bit 0 is the phase.
DMA_REGISTERS = [
    ("dma_ring_base_lo", 32, "RW", "host ring's bus address, bits 31:0 (8-byte aligned)"),
    ("dma_ring_base_hi", 32, "RW", "host ring's bus address, bits 63:32"),
    ("dma_ring_log_size", 5, "RW", "the host ring holds 2**value slots"),
    ("dma_enable", 1, "RW", "1: write entries into the host ring (program base and size first); "
                            "0 to 1 starts the ring at slot 0 with the port's oldest unacknowledged "
                            "entry (go-back-N)"),
    ("dma_doorbell", 32, "RW", "host's consumer index (slots consumed, free-running): frees slots "
                               "and acknowledges the entries in them"),
    ("dma_produced", 32, "RO", "producer index: slots written, free-running"),
    ("dma_full_cycles", 32, "RO", "cycles an entry waited because the host ring was full"),
]
DMA_OFFSET = 0x20       # first `dma` register of a port's block
REGISTER_BITS = 32


def _words(name: str, width: int) -> list[tuple[str, int, int]]:
    """(register name, lsb, width) of the registers holding a `width`-bit value."""
    if width <= REGISTER_BITS:
        return [(name, 0, width)]
    assert width <= 2 * REGISTER_BITS, (name, width)
    return [(f"{name}_lo", 0, REGISTER_BITS), (f"{name}_hi", REGISTER_BITS, width - REGISTER_BITS)]


# (register, DPLL output, lsb, width): register `register` reads bits lsb+width-1..lsb of the
# output. How an image with DPLLs drives its `dpll` registers:
#     for reg, output, lsb, width in DPLL_WORDS:
#         m.d.comb += getattr(regs.port[p], reg).eq(getattr(dpll, output)[lsb:lsb + width])
DPLL_WORDS = [(reg, name, lsb, w) for name, width, _, _ in DPLL_OUTPUTS
              for reg, lsb, w in _words(f"dpll_{name}", width)]


def _dpll_register(offset: int, reg: str, output: str, lsb: int, width: int) -> Register:
    total, access, desc = next((w, a, d) for n, w, a, d in DPLL_OUTPUTS if n == output)
    if width != total:
        desc = f"{desc}: bits {lsb + width - 1}:{lsb}"
    return Register(reg, offset, width, access, desc, group="dpll")


GLOBAL = [
    Register("image_id", 0x00, 32, "RO", "image identifier, `frames.IMAGE_ID` (\"PJRN\")", const=True),
    Register("version", 0x01, 32, "RO", "image version, `frames.IMAGE_VERSION`", const=True),
    Register("ports", 0x02, 8, "RO", "number of journal ports", const=True),
    Register("ring_depth", 0x03, 17, "RO", "entries per port ring", const=True),
    Register("block_bytes", 0x04, 16, "RO", "bytes per block", const=True),
    Register("datapath_bits", 0x05, 8, "RO", "port datapath width in bits", const=True),
    Register("mode", 0x06, 1, "RO", "journal mode the image was built with (0 redo, 1 copy-on-write)",
             const=True),
    Register("max_payload", 0x07, 16, "RO", "largest JOURNAL frame payload the device sends, bytes",
             const=True),
    Register("scratch", 0x08, 32, "RW", "free for the host (link and register-bus check)"),
    Register("rx_framing_errors", 0x09, 32, "RO", "UART bytes with a bad stop bit (0 without a UART)"),
    Register("store_blocks", 0x0A, 32, "RO", "blocks of the standalone image's on-chip volume "
             "(INJECT_WRITE, READ_BLOCK); 0: primary storage is outside the image", const=True),
    *(Register(name, 0x10 + i, width, access, desc, event=True) for i, (name, width, access, desc)
      in enumerate(LINK_COUNTERS)),
]

PORT = [
    Register("watermark", 0x00, 17, "RW", "drain when the ring holds this many entries (0 = off)",
             group="control"),
    Register("timer_period", 0x01, 32, "RW", "drain every this many cycles (0 = off)", group="control"),
    Register("mode", 0x02, 1, "RW", "`Mode` of the next writes: 0 redo, 1 copy-on-write", group="control"),
    Register("policy", 0x03, 1, "RW", "ring full: 0 back-pressure ingress, 1 invalidate with a marker",
             group="control"),
    Register("reenable", 0x04, 1, "W1P", "write 1: an invalid port journals again", group="control"),
    *(Register(name, 0x10 + i, width, access, desc, group="port", event=name in EVENTS)
      for i, (name, width, access, desc) in enumerate(COUNTERS)),
    *(Register(name, DMA_OFFSET + i, width, access, desc, group="dma") for i, (name, width, access, desc)
      in enumerate(DMA_REGISTERS)),
    *(_dpll_register(DPLL_OFFSET + i, *word) for i, word in enumerate(DPLL_WORDS)),
]

# Every register: the global block, then the per-port block (offsets from `port_base(port)`).
REGISTERS = [*GLOBAL, *PORT]

_GLOBAL_BY_NAME = {r.name: r for r in GLOBAL}
_PORT_BY_NAME = {r.name: r for r in PORT}


def port_base(port: int) -> int:
    return PORT_STRIDE * (port + 1)


def register(name: str, port: int | None = None) -> Register:
    """The register called `name`: global, or in a port's block when `port` is given."""
    table = _GLOBAL_BY_NAME if port is None else _PORT_BY_NAME
    try:
        return table[name]
    except KeyError:
        where = "global" if port is None else "per-port"
        raise KeyError(f"no {where} register {name!r}") from None


def address(name: str, port: int | None = None) -> int:
    """Register address of a global register, or of a port's register when `port` is given."""
    reg = register(name, port)
    return reg.offset if port is None else port_base(port) + reg.offset


def decode_address(addr: int) -> tuple[int | None, Register] | None:
    """(port or None, register) at `addr`, or None where nothing is mapped."""
    block, offset = divmod(addr, PORT_STRIDE)
    table = GLOBAL if block == 0 else PORT
    for reg in table:
        if reg.offset == offset:
            return (None if block == 0 else block - 1), reg
    return None


def _check():
    for table in (GLOBAL, PORT):
        offsets = [r.offset for r in table]
        names = [r.name for r in table]
        assert len(set(offsets)) == len(offsets) and len(set(names)) == len(names)
        for r in table:
            assert r.access in ACCESS and 0 < r.width <= 32 and 0 <= r.offset < PORT_STRIDE, r
            assert not r.const or r.access == "RO", r
            assert r.event == (r.name in EVENTS) and (not r.event or r.offset in EVENT_OFFSETS), r
    # A counter's bank slot is its offset's low bits and its block (`firmware.registers`).
    slots = len(EVENT_OFFSETS)
    assert slots & (slots - 1) == 0 and EVENT_OFFSETS.start % slots == 0 and PORT_STRIDE % slots == 0


_check()


def markdown() -> str:
    """The register map as Markdown (the contents of docs/registers.md)."""

    def rows(table):
        out = ["| offset | name | width | access | description |", "|---:|---|---:|---|---|"]
        for r in table:
            access = r.access + (" (const)" if r.const else "")
            init = f" Reset value {r.init}." if r.init else ""
            out.append(f"| `{r.offset:#06x}` | `{r.name}` | {r.width} | {access} | {r.description}.{init} |")
        return out

    dpll = [r.offset for r in PORT if r.group == "dpll"]
    lines = [
        "# Register map",
        "",
        "Generated by `python -m firmware.abi.regmap` from `firmware/abi/regmap.py` (the one table",
        "the gateware decoder and the host read); `tests/controller/test_regmap_abi.py` checks this",
        "file is up to date.",
        "",
        "Registers are 32 bits on the link (REG_READ/REG_WRITE count registers, not bytes); narrower",
        "ones read with their upper bits zero. `RO` read only, `RW` read/write, `W1P` write 1 to pulse",
        "(reads 0); `const` values are fixed when the image is built.",
        "",
        "## Global registers (base `0x0000`)",
        "",
        *rows(GLOBAL),
        "",
        f"## Per-port registers (base `{PORT_STRIDE:#x} * (port + 1)`: port 0 at `{port_base(0):#06x}`, "
        f"port 1 at `{port_base(1):#06x}`, …)",
        "",
        "Offsets `0x10`-`0x1f` are the journal port's counters (`COUNTERS`); "
        f"`{DMA_OFFSET:#04x}`-`{DMA_OFFSET + len(DMA_REGISTERS) - 1:#04x}` its ring in host memory on "
        "the DMA link",
        "(`DMA_REGISTERS`, see `hdl/dma.py`; read 0 on the serial link); "
        f"`{min(dpll):#04x}`-`{max(dpll):#04x}` belong to",
        "the port's DPLL (`DPLL_OUTPUTS`; 0 in an image built without DPLLs). A DPLL output wider than 32",
        "bits is split into `_lo` (bits 31:0) and `_hi` (the bits above) at consecutive offsets; the",
        "two are separate reads, so read `_hi`, `_lo`, `_hi` and retry if `_hi` changed (`dpll_time`",
        "changes every cycle).",
        "",
        *rows(PORT),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(), end="")
