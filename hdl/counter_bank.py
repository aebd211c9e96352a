"""CounterBank: many 32-bit event counters in one block RAM instead of flip-flops.

A statistics counter in flip-flops costs a flip-flop, a LUT and a carry per bit, and one more
input per bit of the register read multiplexer: the image's counters were a fifth of the iCE40
image. Here a counter keeps only its low `low_bits` in flip-flops and its upper bits in a word of
a RAM:

- each `inc` bit is an event (high for a cycle: count one) of its counter's low bits; when they
  wrap, the counter's `carry` flag is set;
- a sequencer visits one slot a cycle, round robin, and adds the slot's carry to its word. A
  slot is visited every `depth` cycles and its low bits wrap at most every 2**`low_bits` >=
  `depth` cycles, so a carry is always added before the next one comes;
- a read of slot `r_addr` returns, two cycles later on `r_data` (a register), the count of the
  events before the read's cycle: the low bits, and the word plus the carry not yet added, all
  of that cycle — what a flip-flop counter read the same way would give. A read may be issued
  every cycle. Its first stage reads the RAM and picks the slot's low bits and carry within its
  group (the slots sharing the upper bits of `r_addr`), the second picks the group and adds: the
  RAM's output goes through the adder into `r_data` and no further, and no path runs from
  `r_addr` through the whole multiplexer of every slot.

Slots are addresses `0 .. depth-1`; `counters` lists the slots that count, and `inc` has one bit
per listed slot, in that order (the others read 0 and cost only the sequencer's time). After
reset the sequencer's first pass writes every word afresh (the carry alone), so the counters
restart from 0 as flip-flop counters would; until its word is written, a counter reads as its
low bits and carry.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

COUNTER_BITS = 32


class CounterBank(wiring.Component):
    """Counts `inc[i]` in slot `counters[i]`; reads of `r_addr` on `r_data` two cycles later."""

    def __init__(self, *, depth: int, counters: list[int], split: int | None = None):
        if depth < 2 or sorted(set(counters)) != list(counters) or not counters \
                or not 0 <= counters[0] <= counters[-1] < depth:
            self._MustUse__silence = True  # a rejected core is not an unused one
            raise ValueError(f"need a depth of at least 2 and counters at distinct slots in order "
                             f"below it (got {depth}, {counters})")
        self.depth = depth
        self.counters = list(counters)
        self.low_bits = (depth - 1).bit_length()
        # A read's first stage picks among 2**split slots (its group), the second among groups:
        # by default about evenly; `low_bits` (one group) costs the fewest flip-flops.
        self.split = self.low_bits // 2 if split is None else min(split, self.low_bits)
        super().__init__({
            "inc": In(len(counters)),
            "r_addr": In(range(depth)),
            "r_data": Out(COUNTER_BITS),
        })

    def elaborate(self, platform):
        m = Module()
        high_bits = COUNTER_BITS - self.low_bits
        ram = m.submodules.ram = Memory(shape=high_bits, depth=self.depth, init=[],
                                        attrs={"ram_style": "block"})
        wp = ram.write_port()
        # Both reads see this cycle's write (the cheaper read-during-write for Yosys to build on
        # block RAM): the sequencer never reads the slot it writes, and a read of that slot gets
        # the word with its carry already added.
        rp, bus = ram.read_port(transparent_for=(wp,)), ram.read_port(transparent_for=(wp,))
        # Per slot (a constant 0 where nothing counts); read by slot number with `word_select`,
        # a multiplexer tree (an `Array` compares the slot number with every slot).
        low = [Signal(self.low_bits, name=f"low{slot}") if slot in self.counters
               else Const(0, self.low_bits) for slot in range(self.depth)]
        carry = [Signal(name=f"carry{slot}") if slot in self.counters else Const(0)
                 for slot in range(self.depth)]

        # The sequencer: `visit` is written this cycle; its word was read in the last one, at
        # `upcoming`. The carry it adds is registered then too (`add`): the slot's carry, or the
        # one its low bits' wrap sets then (`upcoming` is not `visit`, whose carry is cleared).
        visit = Signal(range(self.depth))
        upcoming = Signal(range(self.depth), init=1)
        fresh = Signal()            # every word has been written since reset
        add = Signal()
        wraps = [Const(0)] * self.depth
        for bit, slot in enumerate(self.counters):
            event = self.inc[bit]
            wraps[slot] = event & (low[slot] == (1 << self.low_bits) - 1)
            m.d.sync += [low[slot].eq(low[slot] + event),
                         carry[slot].eq(wraps[slot] | (carry[slot] & (visit != slot)))]
        m.d.sync += [visit.eq(upcoming), upcoming.eq(Mux(upcoming == self.depth - 1, 0, upcoming + 1)),
                     add.eq((Cat(carry) | Cat(wraps)).bit_select(upcoming, 1))]
        with m.If(visit == self.depth - 1):
            m.d.sync += fresh.eq(1)
        m.d.comb += [rp.addr.eq(upcoming), wp.addr.eq(visit), wp.en.eq(1),
                     wp.data.eq(Mux(fresh, rp.data, 0) + add)]

        # A read: the low bits, the word and the carry of one cycle (the slot being written:
        # the word written, its carry in it), in two stages. First: the RAM takes the address;
        # each group of 2**split slots gives its slot's low bits and carry at `r_addr`'s low
        # bits, registered with the group's number and the slot's place against `visit`.
        # Second: the group's low bits, and the word plus its carry, into `r_data`. The stages'
        # registers are rewritten every cycle: no reset (a read with a cycle in reset reads
        # nothing defined).
        split = self.split
        groups = -(-self.depth // (1 << split))
        pad = (groups << split) - self.depth       # slots past the last, in the last group
        low_at, carry_at = low + [Const(0, self.low_bits)] * pad, carry + [Const(0)] * pad
        at, group = self.r_addr[:split], Signal(len(self.r_addr) - split, reset_less=True)
        group_low = [Signal(self.low_bits, name=f"group_low{g}", reset_less=True) for g in range(groups)]
        group_carry = Signal(groups, reset_less=True)
        current, written = Signal(reset_less=True), Signal(reset_less=True)
        count = Signal(COUNTER_BITS, reset_less=True)
        members = [range(g << split, (g + 1) << split) for g in range(groups)]
        m.d.sync += [group_low[g].eq(Cat(low_at[s] for s in slots).word_select(at, self.low_bits))
                     for g, slots in enumerate(members)]
        m.d.sync += group_carry.eq(Cat(Cat(carry_at[s] for s in slots).bit_select(at, 1)
                                       for slots in members))
        m.d.comb += bus.addr.eq(self.r_addr)
        m.d.sync += [group.eq(self.r_addr[split:]), current.eq(self.r_addr != visit),
                     written.eq(fresh | (self.r_addr <= visit))]
        low_now = Cat(group_low).word_select(group, self.low_bits)
        carry_now = group_carry.bit_select(group, 1) & current
        m.d.sync += count.eq(Cat(low_now, Mux(written, bus.data, 0) + carry_now))
        m.d.comb += self.r_data.eq(count)
        return m
