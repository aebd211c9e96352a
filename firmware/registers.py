"""RegisterBlock: the gateware side of `firmware.abi.regmap`, built by iterating its table.

Every register of the table becomes either a constant (global `const` registers: the image's
identity and geometry), an input the block reads (`RO`: values and status), an event input
it counts (`RO` registers in `EVENTS`: a one-cycle pulse per event, counted in a
`hdl.counter_bank.CounterBank`, slot 16 × block + offset − 0x10, by reads from two cycles
after it), or an output it drives (`RW`: a control register holding the last value written;
`W1P`: a one-cycle pulse when 1 is written). Global registers are members of the same name;
each port's block is `port[i]`, whose members are named after the per-port registers. The bus
is `RegisterBus` from `hdl.link`: reads take one cycle (`r_data` follows `r_addr` a cycle
later), writes (`w_addr`, `w_data`, `w_en`) take effect at the end of the cycle `w_en` is high,
so a read issued in the next cycle sees the new value. Unmapped addresses read 0 and ignore writes.

The read data is a binary tree of 2:1 multiplexers over the address bits (the register's offset
in its block, then the block), with empty subtrees cut off as zeros: a decoder written as one
case per address becomes an AND-OR of every register (5,000 LUT4s for four ports on an ECP5,
all of them pulled to one spot of the chip); the tree takes a third of that.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from firmware.abi.regmap import EVENT_OFFSETS, GLOBAL, PORT, PORT_STRIDE, address
from hdl.counter_bank import CounterBank
from hdl.link import RegisterBus

_SLOTS = len(EVENT_OFFSETS)     # counter bank slots per block


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

        # Reads: a register's value a cycle later, or its counter's from the bank.
        word, is_event = Signal(32), Signal()
        m.d.sync += [
            word.eq(self._decode([(a, v) for a, reg, v in sources if reg.access != "W1P" and not reg.event])),
            is_event.eq(self._decode([(a, Const(1)) for a, reg, _ in sources if reg.event])),
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
        # long paths of their own): a read sees the events up to two cycles before its own.
        inc = Signal(len(order))
        m.d.sync += inc.eq(Cat(slots[s] for s in order))
        m.d.comb += [bank.inc.eq(inc), bank.r_addr.eq(slot)]
        return bank

    def _decode(self, values) -> Value:
        """The value at `bus.r_addr` among `values` ((address, value) pairs), 0 where none is."""
        slot_bits = max(r.offset for r in (*GLOBAL, *PORT)).bit_length()
        block_bits = (PORT_STRIDE - 1).bit_length()
        blocks = [[0] * (1 << slot_bits) for _ in range(self.ports + 1)]
        for addr, value in values:
            block, offset = divmod(addr, PORT_STRIDE)
            blocks[block][offset] = value
        addr = self.bus.r_addr
        offset, block = addr[:slot_bits], addr[block_bits:]
        words = [_mux_tree(offset, row) for row in blocks]
        mapped = (addr[slot_bits:block_bits] == 0) & (block <= self.ports)
        return Mux(mapped, Value.cast(_mux_tree(block, words)), Const(0, 32))
