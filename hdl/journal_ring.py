"""Partial-journal ring: the on-chip RAM a port journals into, and its pointers.

The ring holds `depth` entries (a power of two). Entry `seq` lives in slot `seq % depth`; the
pointers are free-running 32-bit sequence numbers, so they need no wrap flag:

    tail ≤ done ≤ head          (modulo 2**32, all within `depth` of each other)

- `head`: the next sequence number to allocate (entries written = head).
- `done`: every entry below it has its status recorded (phase 3 finished), in order.
- `tail`: the oldest entry the host has not acknowledged (driven by the flush engine).

Storage is split by when it is written: the block data (one `datapath_bits` word per cycle,
from ingress in redo mode or from the pre-image read in copy-on-write mode) and the header
fields known at phase 1 (`MetaLayout`) go into `lib.memory` RAMs; the 2-bit status known at
phase 3 goes into a small register file with a valid bit per slot, which `done` follows.

The layouts of the header are built from `firmware.abi.entry.HEADER_DTYPE`, the one definition
of the entry format that the host reads too.
"""

from amaranth.hdl import Array, Module, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import In, Out

from firmware.abi.entry import HEADER_BYTES, HEADER_DTYPE, TRAILER_BYTES, Kind, Mode, Status
from hdl.timestamper import SEQ_BITS, TIME_BITS


def _header_layout() -> data.StructLayout:
    """The 32-byte entry header as an Amaranth layout: field i at bit 8*offset, little-endian."""
    fields, position = {}, 0
    for name in HEADER_DTYPE.names:
        dtype, offset = HEADER_DTYPE.fields[name][:2]
        assert offset * 8 == position, f"{name} is not packed in order"
        fields[name] = unsigned(dtype.itemsize * 8)
        position += dtype.itemsize * 8
    assert position == HEADER_BYTES * 8
    return data.StructLayout(fields)


HeaderLayout = _header_layout()
HEADER_BITS = HEADER_BYTES * 8
TRAILER_BITS = TRAILER_BYTES * 8
STATUS_BITS = max(Status).bit_length()

# What is known of an entry at phase 1 (port and length follow from the port and the kind).
MetaLayout = data.StructLayout({
    "seq": SEQ_BITS,
    "timestamp": TIME_BITS,
    "lba": 64,
    "mode": max(Mode).bit_length(),
    "kind": max(Kind).bit_length(),
})

StatusWrite = wiring.Signature({
    "en": Out(1),
    "addr": Out(16),
    "status": Out(STATUS_BITS),
})


DATAPATH_WIDTHS = (8, 16, 32, 64)


def check_geometry(core, block_bytes: int, datapath_bits: int, depth: int):
    """Raise ValueError unless the sizes make a ring of whole words (shared by every core)."""
    try:
        _check_geometry(block_bytes, datapath_bits, depth)
    except ValueError:
        core._MustUse__silence = True  # a rejected core is not an unused one
        raise


def check_datapath_bits(core, datapath_bits: int):
    """Raise ValueError unless `datapath_bits` is a width the port cores take (for the cores
    around them: the link, the injector, the on-chip volume)."""
    try:
        _check_datapath_bits(datapath_bits)
    except ValueError:
        core._MustUse__silence = True
        raise


def _check_datapath_bits(datapath_bits: int):
    if datapath_bits not in DATAPATH_WIDTHS:
        raise ValueError(f"datapath_bits must be 8, 16, 32 or 64 (entries are 64-bit aligned), "
                         f"not {datapath_bits}")


def _check_geometry(block_bytes: int, datapath_bits: int, depth: int):
    _check_datapath_bits(datapath_bits)
    if block_bytes <= 0 or (block_bytes * 8) % 64:
        raise ValueError(f"block_bytes must be a positive multiple of 8, not {block_bytes}")
    if depth < 2 or depth & (depth - 1) or depth > 2**16:
        raise ValueError(f"depth must be a power of two from 2 to 65536, not {depth}")


class JournalRing(wiring.Component):
    """Ring storage of one port: data RAM, header RAM, status registers and the `done` pointer.

    Write side (the write path): `alloc` clears the status of slot `head % depth` and advances
    `head`; `meta_w` and `data_w` are RAM write ports; two status writes per cycle (a primary
    completion and the phase-1 outcome of a newer entry can land together).
    Read side (the flush engine): `meta_r`, `data_r` are synchronous RAM read ports;
    `status_addr`/`status` a combinational read of the status registers.
    """

    def __init__(self, *, block_bytes: int = 512, datapath_bits: int = 64, depth: int = 16):
        check_geometry(self, block_bytes, datapath_bits, depth)
        self.depth = depth
        self.block_words = block_bytes * 8 // datapath_bits
        self.slot_bits = (depth - 1).bit_length()
        data_addr = (depth * self.block_words - 1).bit_length()
        super().__init__({
            "alloc": In(1),
            "head": Out(SEQ_BITS),
            "tail": In(SEQ_BITS),
            "done": Out(SEQ_BITS),
            "fill": Out(range(depth + 1)),
            "meta_w": Out(WritePort.Signature(addr_width=self.slot_bits, shape=MetaLayout)),
            "data_w": Out(WritePort.Signature(addr_width=data_addr, shape=datapath_bits)),
            "status_w0": In(StatusWrite),
            "status_w1": In(StatusWrite),
            "meta_r": Out(ReadPort.Signature(addr_width=self.slot_bits, shape=MetaLayout)),
            "data_r": Out(ReadPort.Signature(addr_width=data_addr, shape=datapath_bits)),
            "status_addr": In(self.slot_bits),
            "status": Out(STATUS_BITS),
        })
        self.data_mem = Memory(shape=datapath_bits, depth=depth * self.block_words, init=[])
        self.meta_mem = Memory(shape=MetaLayout, depth=depth, init=[])

    def elaborate(self, platform):
        m = Module()
        m.submodules.data_mem = self.data_mem
        m.submodules.meta_mem = self.meta_mem
        for ours, theirs in ((self.meta_w, self.meta_mem.write_port()),
                             (self.data_w, self.data_mem.write_port()),
                             (self.meta_r, self.meta_mem.read_port()),
                             (self.data_r, self.data_mem.read_port())):
            wiring.connect(m, wiring.flipped(ours), theirs)

        status = Array(Signal(STATUS_BITS, name=f"status{i}") for i in range(self.depth))
        known = Signal(self.depth)
        head_slot = self.head[:self.slot_bits]
        done_slot = self.done[:self.slot_bits]

        with m.If(self.alloc):
            m.d.sync += [self.head.eq(self.head + 1), known.bit_select(head_slot, 1).eq(0)]
        for port in (self.status_w0, self.status_w1):
            slot = port.addr[:self.slot_bits]
            with m.If(port.en):
                m.d.sync += [status[slot].eq(port.status), known.bit_select(slot, 1).eq(1)]
        with m.If((self.done != self.head) & known.bit_select(done_slot, 1)):
            m.d.sync += self.done.eq(self.done + 1)

        m.d.comb += [
            self.fill.eq((self.head - self.tail)[:self.slot_bits + 1]),
            self.status.eq(status[self.status_addr]),
        ]
        return m
