"""RegisterBlock: the gateware side of `firmware.abi.regmap`, built by iterating its table.

Every register of the table becomes either a constant (global `const` registers: the image's
identity and geometry), an input the block reads (`RO`: values and status), an event input
it counts (`RO` registers in `EVENTS`: a one-cycle pulse per event, counted in a
`hdl.counter_bank.CounterBank`, slot 16 × block + offset − 0x10, by reads issued from two
cycles after it), or an output it drives (`RW`: a control register holding the last value
written; `W1P`: a one-cycle pulse when 1 is written). Global registers are members of the same
name; each port's block is `port[i]`, whose members are named after the per-port registers. The
bus is `RegisterBus` from `hdl.link`: a read issued in cycle t (`r_addr`) returns on `r_data` in
cycle t + `READ_LATENCY` (2) the register's value in cycle t (an event register: its count of the
pulses up to cycle t − 2); a read may be issued every cycle. Writes (`w_addr`, `w_data`, `w_en`)
take effect at the end of the cycle `w_en` is high: a read issued in that cycle returns the old
value, one issued in the next cycle (or later) the new one. Unmapped addresses read 0 and ignore
writes.

A read's first stage is, per group of 8 offsets of a block, a binary tree of 2:1 multiplexers
over the offset's low bits, with empty subtrees cut off as zeros (a decoder written as one case
per address becomes an AND-OR of every register: 5,000 LUT4s for four ports on an ECP5, all of
them pulled to one spot of the chip; the trees take a third of that), into a register per
group, and the group the address is in, one-hot. The second is an AND-OR of the groups' words
by that one-hot into a register. The counter bank reads in two stages too, its count (its RAM's
word plus a carry) registered. So a read's paths run from register to register through a few
levels of logic (the first stage's after `r_addr`'s fanout to every register's multiplexer),
and `r_data` is a 2:1 multiplexer of two registers.
"""

import operator
from functools import reduce

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from firmware.abi.regmap import EVENT_OFFSETS, GLOBAL, PORT, PORT_STRIDE, address
from hdl.counter_bank import CounterBank
from hdl.link import READ_LATENCY, RegisterBus

_SLOTS = len(EVENT_OFFSETS)     # counter bank slots per block
# The offset bits a read's first stage decodes (its groups: runs of 2**_FIRST_BITS offsets), the
# rest of the address is the second's. 3 keeps the first stage's multiplexers small (8 inputs:
# its paths start with `r_addr`'s fanout to all of them), the second an AND-OR of 26 groups'
# words with four ports; 4 left the first stage the longest path of the two.
_FIRST_BITS = 3


def _member(reg, init: dict):
    if reg.access == "RO":
        return In(1 if reg.event else reg.width)
    return Out(reg.width, init=init.get(reg.name, reg.init) if reg.access == "RW" else 0)


def _mux_tree(select: Value, options: list) -> Value | int:
    """`options[select]` as a tree of 2:1 multiplexers, low select bit first; a subtree whose
    options are all 0 is the constant 0. A `select` beyond the options is the caller's to rule out."""
    if not any(isinstance(o, Value) or o for o in options):
        return 0
    if len(options) == 1:
        return options[0]
    bit = (len(options) - 1).bit_length() - 1
    low, high = options[:1 << bit], options[1 << bit:]
    return Mux(select[bit], _mux_tree(select, high), _mux_tree(select, low))


def port_signature(init: dict | None = None, absent: frozenset = frozenset()) -> wiring.Signature:
    """One port's registers, from the register block's side (RO in, RW/W1P out), but for the
    `absent` groups."""
    return wiring.Signature({r.name: _member(r, init or {}) for r in PORT if r.group not in absent})


class RegisterBlock(wiring.Component):
    """Decodes register-bus reads and writes for `ports` port blocks and the global block.

    `constants` gives the value of every global `const` register; `port_init` overrides the
    reset value of per-port `RW` registers (e.g. `mode`), `global_init` of global ones. The
    per-port register groups in `absent` are not built (an image without them: the serial link's
    has no `dma` ring): they read 0 and ignore writes, and `port[i]` has no members for them.
    """

    def __init__(self, *, ports: int, constants: dict[str, int], port_init: dict | None = None,
                 global_init: dict | None = None, absent: frozenset = frozenset()):
        missing = {r.name for r in GLOBAL if r.const} - set(constants)
        if missing:
            self._MustUse__silence = True  # a rejected core is not an unused one
            raise ValueError(f"no value for the constant registers {sorted(missing)}")
        self.ports = ports
        self.constants = dict(constants)
        self.absent = frozenset(absent)
        members = {"bus": In(RegisterBus)}
        members.update({r.name: _member(r, global_init or {}) for r in GLOBAL if not r.const})
        members["port"] = Out(port_signature(port_init, self.absent)).array(ports)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        sources = []        # (address, register, signal or constant)
        for reg in GLOBAL:
            value = self.constants[reg.name] if reg.const else getattr(self, reg.name)
            sources.append((address(reg.name), reg, value))
        for p in range(self.ports):
            for reg in PORT:
                if reg.group not in self.absent:
                    sources.append((address(reg.name, p), reg, getattr(self.port[p], reg.name)))

        # Reads, in two stages (`READ_LATENCY`). First, at `r_addr`: in each group of registers
        # (2**_FIRST_BITS offsets of a block) the one at the address's low bits, and the group
        # the address is in, one-hot; the counter bank reads its slot (its read takes two cycles
        # too). Second: the group's word into a register; `r_data` is that or the bank's count,
        # whichever the address is. The stages' registers are rewritten every cycle and have no
        # reset (Yosys would merge the reset into the sync-reset logic of the address decode).
        assert READ_LATENCY == 2, "a read's stages are the two below, and the bank's"
        at, at_group = self._address(m)
        word, is_event = Signal(32, reset_less=True), Signal(reset_less=True)
        m.d.sync += [
            word.eq(self._select(m, "word", at, at_group,
                                 [(a, v) for a, reg, v in sources if reg.access != "W1P" and not reg.event])),
            is_event.eq(self._select(m, "event", at, at_group,
                                     [(a, Const(1)) for a, reg, _ in sources if reg.event])),
        ]
        bank = self._counters(m, [(a, v) for a, reg, v in sources if reg.event])
        m.d.comb += bus.r_data.eq(Mux(is_event, bank.r_data, word))

        for _, reg, value in sources:
            if reg.access == "W1P":
                m.d.sync += value.eq(0)
        with m.If(bus.w_en):
            with m.Switch(bus.w_addr):
                for addr, reg, value in sources:
                    if reg.access in ("RW", "W1P"):
                        with m.Case(addr):
                            m.d.sync += value.eq(bus.w_data[:reg.width])
        return m

    def _counters(self, m, events) -> CounterBank:
        """The event registers' counter bank, read at `bus.r_addr`'s slot."""
        slots = {}
        for addr, pulse in events:
            block, offset = divmod(addr, PORT_STRIDE)
            slots[_SLOTS * block + offset - EVENT_OFFSETS.start] = pulse
        order = sorted(slots)
        bank = m.submodules.counters = CounterBank(depth=_SLOTS * (self.ports + 1), counters=order)
        addr = self.bus.r_addr
        slot = Cat(addr[:(_SLOTS - 1).bit_length()], addr[(PORT_STRIDE - 1).bit_length():])
        # The pulses are registered on their way in (the cores' decisions that raise them are
        # long paths of their own): a read issued in cycle t sees the events up to cycle t − 2.
        # (The bank's second stage adds no lag to the events counted, only to when their count
        # is on `r_data`.)
        inc = Signal(len(order))
        m.d.sync += inc.eq(Cat(slots[s] for s in order))
        m.d.comb += [bank.inc.eq(inc), bank.r_addr.eq(slot)]
        return bank

    def _address(self, m) -> tuple[Value, Value]:
        """`bus.r_addr` as a read's stages see it: the register's place in its group (now), and
        registered for the second stage, its group one-hot (`_select`'s order; none where the
        address is not mapped: its block does not exist or its offset is past the block's
        registers). One-hot, the second stage is an AND-OR of registers through a few levels,
        its selects each driving a word's bits only."""
        slot_bits = max(r.offset for r in (*GLOBAL, *PORT)).bit_length()
        block_bits = (PORT_STRIDE - 1).bit_length()
        addr = self.bus.r_addr
        group = Cat(addr[_FIRST_BITS:slot_bits], addr[block_bits:])
        mapped = (addr[slot_bits:block_bits] == 0) & (addr[block_bits:] <= self.ports)
        at_group = Signal((self.ports + 1) << (slot_bits - _FIRST_BITS), reset_less=True)
        m.d.sync += at_group.eq(Cat(mapped & (group == g) for g in range(len(at_group))))
        return addr[:_FIRST_BITS], at_group

    def _select(self, m, name, at, at_group, values) -> Value:
        """The value at `bus.r_addr` a cycle ago among `values` ((address, value) pairs), 0 where
        none is: each group's value at `at` (`_address`), registered now, picked by the
        registered one-hot `at_group`. Groups are the blocks' runs of 2**_FIRST_BITS offsets, in
        address order."""
        slot_bits = max(r.offset for r in (*GLOBAL, *PORT)).bit_length()
        table = [0] * ((self.ports + 1) << slot_bits)
        for addr, value in values:
            block, offset = divmod(addr, PORT_STRIDE)
            table[block << slot_bits | offset] = value
        size = 1 << _FIRST_BITS
        picked = []
        for index in range(len(table) // size):
            tree = _mux_tree(at, table[index * size:(index + 1) * size])
            if isinstance(tree, Value):
                word = Signal(len(tree), name=f"{name}_group{index}", reset_less=True)
                m.d.sync += word.eq(tree)
                picked.append(Mux(at_group[index], word, 0))
        return reduce(operator.or_, picked, Const(0))
