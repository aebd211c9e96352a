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
over the offset's low bits into a register, and whether the address is one of the group's
registers into another; the second, an AND-OR of the groups' words by those. An empty offset
needs no zero in the tree (the one-hot hit says 0): no multiplexer of a constant, which Yosys
turns into a flip-flop's reset from the address decode (on the iCE40, flip-flops of different
resets cannot share a logic block). The counter bank reads in two stages too, its count (its
RAM's word plus a carry) registered. So a read's paths run from register to register through
a few levels of logic (the first stage's after `r_addr`'s fanout to every register's
multiplexer), and `r_data` is a 2:1 multiplexer of two registers.
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
# its paths start with `r_addr`'s fanout to all of them), the second an AND-OR of the groups'
# words (26 with four ports); 4 left the first stage the longest path of the two.
_FIRST_BITS = 3


def _member(reg, init: dict):
    if reg.access == "RO":
        return In(1 if reg.event else reg.width)
    return Out(reg.width, init=init.get(reg.name, reg.init) if reg.access == "RW" else 0)


def _any_tree(select: Value, options: list) -> Value:
    """`options[select]` as a tree of 2:1 multiplexers, low select bit first, where an option of
    None is any value (the caller ignores it): a subtree of Nones leaves its sibling alone."""
    if len(options) == 1:
        return Value.cast(options[0])
    bit = (len(options) - 1).bit_length() - 1
    low, high = options[:1 << bit], options[1 << bit:]
    if all(o is None for o in high):
        return _any_tree(select, low)
    if all(o is None for o in low):
        return _any_tree(select, high)
    return Mux(select[bit], _any_tree(select, high), _any_tree(select, low))


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
        # A one-port image is small and slow (the iCEBreaker's, nearly full): its reads' first
        # stages take whole blocks and the counter bank's whole range, the fewest flip-flops.
        self.small = ports < 2
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
        # (2**_FIRST_BITS offsets of a block) the one at the address's low bits and whether the
        # address is the group's, whether it is an event register's; the counter bank reads its
        # slot (its read takes two cycles too). Second: the group's word into a register;
        # `r_data` is that or the bank's count, whichever the address is. The stages' registers
        # are rewritten every cycle and have no reset (Yosys merged the reset into their logic).
        assert READ_LATENCY == 2, "a read's stages are the two below, and the bank's"
        values = [(a, v) for a, reg, v in sources if reg.access != "W1P" and not reg.event]
        events = [a for a, reg, _ in sources if reg.event]
        word = Signal(32, reset_less=True)
        is_event, event_at = Signal(reset_less=True), Signal(reset_less=True)
        m.d.sync += [word.eq(self._select(m, values)),
                     event_at.eq(self._holds(events)), is_event.eq(event_at)]
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
        depth = _SLOTS * (self.ports + 1)
        bank = m.submodules.counters = CounterBank(depth=depth, counters=order,
                                                   split=(depth - 1).bit_length() if self.small else None)
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

    def _holds(self, addresses) -> Value:
        """`bus.r_addr` is one of `addresses`."""
        return Cat(self.bus.r_addr == a for a in addresses).any() if addresses else Const(0)

    def _select(self, m, values) -> Value:
        """The value at `bus.r_addr` a cycle ago among `values` ((address, value) pairs), 0 where
        none is. Groups are the blocks' runs of 2**_FIRST_BITS offsets: each group's value at
        the address's low bits (a multiplexer tree that takes any of its values where the group
        has none: no zeros to select, no logic for them), registered, and whether the address
        is one of the group's, registered; then the AND-OR of the two."""
        slot_bits = max(r.offset for r in (*GLOBAL, *PORT)).bit_length()
        first_bits = slot_bits if self.small else _FIRST_BITS
        size = 1 << first_bits
        groups = {}
        for addr, value in values:
            block, offset = divmod(addr, PORT_STRIDE)
            groups.setdefault(block << (slot_bits - first_bits) | offset >> first_bits, {})[addr] = value
        picked = []
        for index, members in sorted(groups.items()):
            word = Signal(max(len(Value.cast(v)) for v in members.values()), name=f"word_group{index}",
                          reset_less=True)
            hit = Signal(name=f"hit_group{index}", reset_less=True)
            options = [None] * size
            for addr, value in members.items():
                options[addr % size] = value
            m.d.sync += [word.eq(_any_tree(self.bus.r_addr[:first_bits], options)),
                         hit.eq(self._holds(list(members)))]
            picked.append(Mux(hit, word, 0))
        return reduce(operator.or_, picked, Const(0))
