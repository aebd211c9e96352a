"""Partial-journal ring: the on-chip RAM a port journals into, and its pointers.

The ring holds `depth` entries (a power of two). Entry `seq` lives in slot `seq % depth`; the
pointers are free-running sequence numbers, so they need no wrap flag:

    tail ≤ done ≤ head          (all within `depth` of each other)

- `head`: the next sequence number to allocate: the `Timestamper`'s `next_seq`, which counts the
  same takes as `alloc` (entries written = head).
- `done`: every entry below it has its status recorded (phase 3 finished), in order.
- `tail`: the oldest entry the ring keeps for the host (driven by the flush engine).

Being within `depth` of each other, the three are told apart by their low `slot_bits + 1` bits
(the sequence number modulo 2·depth), and that is all the ring takes or keeps of them.

Storage is split by when it is written and how wide it is. The block data (one `datapath_bits`
word per cycle, from ingress in redo mode or from the pre-image read in copy-on-write mode) and
the two 64-bit header fields known at phase 1 (`META_WORDS`: the timestamp, then the lba, written
in consecutive cycles) go into `lib.memory` RAMs; an entry's seq is not stored: the flush engine
knows the seq of the entry it reads. The few bits per slot, the kind and mode
(known at allocation) and the 2-bit status (known at phase 3, with a valid bit which `done`
follows), go into small register files.

Only 64-bit words in the header RAM keep it narrow: block RAMs are at most 16 (iCE40) or 36
(ECP5) bits wide, so at a small depth a RAM's width, not its depth, sets how many it takes (the
whole 162-bit phase-1 header took 11 of an iCE40's 30 for 8 entries). The flush engine uses
only what it reads of entries that are complete and not yet released, which nothing writes, so
whether a read sees a write in the same cycle makes no difference: both RAMs say so
(`hdl.ram.NO_RW_CHECK`), and Yosys builds no emulation of either behaviour around a block RAM
that leaves it undefined (iCE40, ECP5).

The layouts of the header are built from `firmware.abi.entry.HEADER_DTYPE`, the one definition
of the entry format that the host reads too.
"""

from amaranth.hdl import Array, Cat, Module, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import In, Out

from firmware.abi.entry import HEADER_BYTES, HEADER_DTYPE, TRAILER_BYTES, Kind, Mode, Status
from hdl.ram import NO_RW_CHECK
from hdl.timestamper import TIME_BITS


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

KIND_BITS = max(Kind).bit_length()
MODE_BITS = max(Mode).bit_length()

# The header fields of an entry held in its slot's two words of the header RAM (address
# 2·slot + index), known at phase 1. Port and length follow from the port and the kind.
META_WORDS = ("timestamp", "lba")
META_BITS = 64
assert TIME_BITS == META_BITS == HeaderLayout["lba"].shape.width

StatusWrite = wiring.Signature({
    "en": Out(1),
    "addr": Out(16),
    "status": Out(STATUS_BITS),
})


DATAPATH_WIDTHS = (8, 16, 32, 64)


def _reject(core, why: str):
    core._MustUse__silence = True  # a rejected core is not an unused one
    raise ValueError(why)


def check_datapath_bits(core, datapath_bits: int):
    """Raise ValueError unless `datapath_bits` is a width the port cores take (also for the cores
    around them: the link, the injector, the on-chip volume)."""
    if datapath_bits not in DATAPATH_WIDTHS:
        _reject(core, f"datapath_bits must be 8, 16, 32 or 64 (entries are 64-bit aligned), "
                      f"not {datapath_bits}")


def check_geometry(core, block_bytes: int, datapath_bits: int, depth: int):
    """Raise ValueError unless the sizes make a ring of whole words (shared by every core)."""
    check_datapath_bits(core, datapath_bits)
    if block_bytes <= 0 or (block_bytes * 8) % 64:
        _reject(core, f"block_bytes must be a positive multiple of 8, not {block_bytes}")
    if depth < 2 or depth & (depth - 1) or depth > 2**16:
        _reject(core, f"depth must be a power of two from 2 to 65536, not {depth}")


class JournalRing(wiring.Component):
    """Ring storage of one port: data RAM, header RAM, per-slot registers and the `done` pointer.

    Write side (the write path): `alloc` records `alloc_kind` and `alloc_mode` of the entry in
    slot `head % depth` and clears its status (`head` advances with it); `meta_w` and `data_w`
    are RAM write ports; two status writes per cycle (a primary completion and the phase-1
    outcome of a newer entry can land together), each registered and applied a cycle later (a
    slot is allocated, and its status cleared, long before its outcome is known; `done` then
    passes it a cycle later).
    Read side (the flush engine): `meta_r`, `data_r` are synchronous RAM read ports;
    `slot_addr` selects the slot whose `status`, `entry_kind` and `entry_mode` are read
    combinationally from the registers.
    `fill` (head - tail) is registered, a cycle behind the pointers: the write path allocates
    at most every other cycle, so its room check always sees its last allocation (the check
    and the subtraction together were the ECP5 build's longest path); a late tail only frees
    room late.
    """

    def __init__(self, *, block_bytes: int = 512, datapath_bits: int = 64, depth: int = 16):
        check_geometry(self, block_bytes, datapath_bits, depth)
        self.depth = depth
        self.block_words = block_bytes * 8 // datapath_bits
        self.slot_bits = (depth - 1).bit_length()
        data_addr = (depth * self.block_words - 1).bit_length()
        super().__init__({
            "alloc": In(1),
            "alloc_kind": In(KIND_BITS),
            "alloc_mode": In(MODE_BITS),
            "head": In(self.slot_bits + 1),
            "tail": In(self.slot_bits + 1),
            "done": Out(self.slot_bits + 1),
            "fill": Out(range(depth + 1)),
            "meta_w": Out(WritePort.Signature(addr_width=self.slot_bits + 1, shape=META_BITS)),
            "data_w": Out(WritePort.Signature(addr_width=data_addr, shape=datapath_bits)),
            "status_w0": In(StatusWrite),
            "status_w1": In(StatusWrite),
            "meta_r": Out(ReadPort.Signature(addr_width=self.slot_bits + 1, shape=META_BITS)),
            "data_r": Out(ReadPort.Signature(addr_width=data_addr, shape=datapath_bits)),
            "slot_addr": In(self.slot_bits),
            "status": Out(STATUS_BITS),
            "entry_kind": Out(KIND_BITS),
            "entry_mode": Out(MODE_BITS),
        })
        self.data_mem = Memory(shape=datapath_bits, depth=depth * self.block_words, init=[],
                               attrs=NO_RW_CHECK)
        self.meta_mem = Memory(shape=META_BITS, depth=depth * len(META_WORDS), init=[], attrs=NO_RW_CHECK)

    def elaborate(self, platform):
        m = Module()
        for name, mem, write, read in (("meta_mem", self.meta_mem, self.meta_w, self.meta_r),
                                       ("data_mem", self.data_mem, self.data_w, self.data_r)):
            m.submodules[name] = mem
            write_port = mem.write_port()
            wiring.connect(m, wiring.flipped(write), write_port)
            wiring.connect(m, wiring.flipped(read), mem.read_port())

        status = Array(Signal(STATUS_BITS, name=f"status{i}") for i in range(self.depth))
        kind = Array(Signal(KIND_BITS, name=f"kind{i}") for i in range(self.depth))
        mode = Array(Signal(MODE_BITS, name=f"mode{i}") for i in range(self.depth))
        known = Signal(self.depth)
        head_slot = self.head[:self.slot_bits]
        done_slot = self.done[:self.slot_bits]

        with m.If(self.alloc):
            m.d.sync += [known.bit_select(head_slot, 1).eq(0),
                         kind[head_slot].eq(self.alloc_kind), mode[head_slot].eq(self.alloc_mode)]
        for i, write in enumerate((self.status_w0, self.status_w1)):
            en, slot = Signal(name=f"status_en{i}"), Signal(self.slot_bits, name=f"status_slot{i}")
            outcome = Signal(STATUS_BITS, name=f"status{i}_value")
            m.d.sync += [en.eq(write.en), slot.eq(write.addr), outcome.eq(write.status)]
            with m.If(en):
                m.d.sync += [status[slot].eq(outcome), known.bit_select(slot, 1).eq(1)]
        with m.If((self.done != self.head) & known.bit_select(done_slot, 1)):
            m.d.sync += self.done.eq(self.done + 1)

        m.d.sync += self.fill.eq((self.head - self.tail)[:self.slot_bits + 1])
        m.d.comb += [
            # Read with `word_select`, a multiplexer tree (an `Array` compares with every slot).
            self.status.eq(Cat(*status).word_select(self.slot_addr, STATUS_BITS)),
            self.entry_kind.eq(Cat(*kind).word_select(self.slot_addr, KIND_BITS)),
            self.entry_mode.eq(Cat(*mode).word_select(self.slot_addr, MODE_BITS)),
        ]
        return m
