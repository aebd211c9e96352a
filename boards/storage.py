"""A standalone board's primary storage inside the FPGA: `BlockStore`, a small volume in on-chip
RAM, on every port's primary-storage streams and the link's READ_BLOCK (dev boards,
`boards/devboard.py`, and the virtual board's standalone variant, `boards/sim.py`)."""

import operator
from functools import reduce

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hdl.journal_ring import check_datapath_bits
from hdl.ram import NO_RW_CHECK
from hdl.read_ahead import ReadAhead
from hdl.write_path import ReadCommand, WriteResponse, beat_layout, read_beat_layout

STANDALONE_BLOCKS = 256        # the standalone boards' volume: 128 KiB of 512 B blocks, 64 DP16KD on
#                                 the ULX3S's LFE5U-85F (of 208; its 4 x 16-entry rings take 16 more)


def connect_store(m, port, store_port) -> None:
    """A `DeviceImage` port's primary-storage streams to its `BlockStore.port[i]`."""
    wiring.connect(m, port.pri_write, store_port.write)
    wiring.connect(m, store_port.wresp, port.pri_wresp)
    wiring.connect(m, port.pri_rcmd, store_port.rcmd)
    wiring.connect(m, store_port.rdata, port.pri_rdata)


class BlockStore(wiring.Component):
    """A standalone board's primary storage: a volume of `blocks` blocks in on-chip RAM.

    Every port's primary writes and copy-on-write pre-image reads (`port[i]`: a `DeviceImage`
    port's `pri_*` streams) and the link's READ_BLOCK reads (`link_rcmd`/`link_rdata`) share one
    `amaranth.lib.memory.Memory` of `datapath_bits` words with one write and one synchronous read
    port, so it maps to block RAM. One request is served at a time, whole: an arbiter takes the next
    requester in round-robin order — port 0's write, port 0's read, port 1's write, …, the
    link's read — after the one it served last. A write takes its header beat (lba: a beat's
    width holds every lba of the volume, at most 2**`datapath_bits` blocks) and its data beats,
    one a cycle, into the block, then owes its port a completion (`ok`); a port's next write
    waits until that completion is taken. A read streams the block's words out, the last one
    marked. A block outside the volume is neither written nor read: the write completes with
    `ok` = 0, the read returns zero beats with `ok` = 0. The volume starts as zeros.

    Every decision is a register away from the requesters and the RAM (the volume's RAMs span
    the chip, and the requesters' handshakes are logic of their own): the arbiter chooses among
    the valids of the cycle before (a stream's valid holds until its transfer) and takes the
    header a cycle after the choice, from the granted requester alone, or gives the grant up if
    that requester has since withdrawn; the grant is one-hot and selects each requester's header,
    beats and ready by AND-OR, and whether a header's lba has any bit above the volume's is
    registered per requester every cycle, so no wide reduce sits behind that selection; the
    volume's write port takes a registered beat, a cycle after its handshake; a read's words are
    fetched ahead into two registers (`hdl.read_ahead`), so the requester's ready reaches neither the
    RAM nor its address.
    """

    def __init__(self, *, ports: int, block_bytes: int, blocks: int, datapath_bits: int = 64):
        check_datapath_bits(self, datapath_bits)
        self.ports = ports
        self.blocks = blocks
        self.width = datapath_bits
        self.block_words = block_bytes * 8 // datapath_bits
        if not 1 <= blocks <= 2**datapath_bits or self.block_words & (self.block_words - 1):
            self._MustUse__silence = True  # a rejected core is not an unused one
            raise ValueError(f"need 1 to 2**datapath_bits blocks of a power-of-two number of words (got "
                             f"{blocks}, {self.block_words})")
        port = wiring.Signature({
            "write": In(stream.Signature(beat_layout(datapath_bits))),
            "wresp": Out(stream.Signature(WriteResponse)),
            "rcmd": In(stream.Signature(ReadCommand)),
            "rdata": Out(stream.Signature(read_beat_layout(datapath_bits))),
        })
        super().__init__({
            "port": Out(port).array(ports),
            "link_rcmd": In(stream.Signature(ReadCommand)),
            "link_rdata": Out(stream.Signature(read_beat_layout(datapath_bits))),
        })

    def elaborate(self, platform):
        m = Module()
        words = self.block_words
        word_bits = (words - 1).bit_length()
        top = self.blocks.bit_length()      # as `lba_in_volume`: bits from `top` up zero, the rest < blocks
        # One requester at a time reads or writes it.
        mem = m.submodules.volume = Memory(shape=self.width, depth=self.blocks * words, init=[],
                                           attrs=NO_RW_CHECK)
        wp = mem.write_port()
        rp = mem.read_port()
        ahead = m.submodules.ahead = ReadAhead(width=self.width, words=words)

        # Requesters in round-robin order: each port's write then read, the link's read last.
        # Per requester: its valid, source stream, header lba, sink stream; for a write, its
        # completion owed and its ok (by requester number, `writes` and `reads` the numbers of each).
        valids, sources, lbas, sinks, owes, oks = {}, {}, {}, {}, {}, {}
        for p in range(self.ports):
            port = self.port[p]
            owed, ok = Signal(name=f"owed{p}"), Signal(name=f"ok{p}")
            with m.If(port.wresp.ready):
                m.d.sync += owed.eq(0)
            m.d.comb += [port.wresp.valid.eq(owed), port.wresp.payload.ok.eq(ok)]
            w, r = 2 * p, 2 * p + 1
            valids[w], sources[w], lbas[w], sinks[w] = port.write.valid & ~owed, port.write, \
                port.write.payload.data, port.wresp
            owes[w], oks[w] = owed, ok
            valids[r], sources[r], lbas[r], sinks[r] = port.rcmd.valid, port.rcmd, port.rcmd.payload.lba, \
                port.rdata
        link = 2 * self.ports
        valids[link], sources[link], lbas[link], sinks[link] = self.link_rcmd.valid, self.link_rcmd, \
            self.link_rcmd.payload.lba, self.link_rdata
        count = len(valids)
        writes, reads = list(owes), [q for q in range(count) if q not in owes]
        waiting = Signal(count)             # the requesters' valids, a cycle old
        fits = Signal(count)                # each header's lba bits from `top` up all zero, a cycle old
        m.d.sync += [waiting.eq(Cat(valids[q] for q in range(count))),
                     fits.eq(Cat(~lbas[q][top:].any() for q in range(count)))]

        after = Signal(count)           # the requesters after the one served last (none at first)
        granted = Signal(count)         # the requester served, one-hot; `taking` is high while a header
        taking = Signal()               # or data beat is taken (ACCEPT, WRITE); `sending`, the read
        sending = Signal(len(reads))    # requester (of `reads`, one-hot) whose words are sent (READ):
        #                                 each ready and valid is a gate of registers
        low = Signal(top)               # the header's lba below `top`
        block = low[:max(1, (self.blocks - 1).bit_length())]
        in_range = Signal()
        word = Signal(range(words))

        def pick(values):
            """The granted requester's value of `values` ({requester: value}, zero for the others): an
            AND-OR of one-hot terms, a shallow mux however many requesters there are."""
            return reduce(operator.or_, (granted[q].replicate(len(v)) & v for q, v in values.items()))

        def first(bits):
            """The lowest set bit of `bits`, one-hot."""
            return Cat(bits[i] & ~bits[:i].any() for i in range(count))

        # Round robin: the first waiting requester after the one served last, else the first waiting one.
        # Those after it, and whether there are any, are registered with `waiting` (against the mask
        # of that cycle: a cycle old once ACCEPT moves it, harmless), so the choice is three levels.
        later, any_later = Signal(count), Signal()
        m.d.sync += [later.eq(Cat(valids[q] for q in range(count)) & after),
                     any_later.eq((Cat(valids[q] for q in range(count)) & after).any())]
        chosen = Mux(any_later, first(later), first(waiting))

        # The volume's write port: a beat taken in WRITE, written the next cycle.
        m.d.sync += wp.en.eq(0)
        # A read's words come out of the read-ahead registers; a block outside the volume reads as zeros.
        m.d.comb += [rp.addr.eq(Cat(ahead.addr, block)), ahead.data.eq(rp.data)]
        head = Signal(read_beat_layout(self.width))
        m.d.comb += [head.data.eq(Mux(in_range, ahead.out.payload.data, 0)),
                     head.last.eq(ahead.out.payload.last), head.ok.eq(in_range)]

        for q, source in sources.items():
            # A write's source waits for its completion to be taken (a late `wresp.ready`).
            m.d.comb += source.ready.eq(granted[q] & taking & (~owes[q] if q in owes else 1))
        for i, q in enumerate(reads):
            m.d.comb += [sinks[q].payload.eq(head), sinks[q].valid.eq(sending[i] & ahead.out.valid)]
        # The consumer's ready reaches the read-ahead through an AND-OR of two levels at most.
        m.d.comb += ahead.out.ready.eq(Cat(sending[i] & sinks[q].ready for i, q in enumerate(reads)).any())
        with m.FSM():
            with m.State("IDLE"):
                with m.If(waiting.any()):
                    m.d.sync += [granted.eq(chosen), taking.eq(1)]
                    m.next = "ACCEPT"
            with m.State("ACCEPT"):
                # The header is taken a cycle after the choice, from the granted requester alone:
                # no port's ready depends on another port's valid.
                m.d.sync += [taking.eq(0), word.eq(0), low.eq(pick({q: v[:top] for q, v in lbas.items()})),
                             after.eq(-(granted << 1))]     # the bits above the one-hot grant: a carry chain
                with m.If(~pick(valids)):
                    m.next = "IDLE"
                with m.Elif(Cat(granted[q] for q in writes).any()):
                    m.next = "CHECK"
                with m.Else():
                    m.next = "DISPATCH"
            with m.State("CHECK"):
                # A write's lba against the volume, registered before its first data beat.
                m.d.sync += [in_range.eq(pick(dict(enumerate(fits))) & (low < self.blocks)), taking.eq(1)]
                m.next = "WRITE"
            with m.State("DISPATCH"):
                m.d.sync += [in_range.eq(pick(dict(enumerate(fits))) & (low < self.blocks)),
                             sending.eq(Cat(granted[q] for q in reads))]
                m.d.comb += ahead.start.eq(1)
                m.next = "READ"
            with m.State("WRITE"):
                beat = pick({q: sources[q].valid for q in writes})
                m.d.sync += [wp.data.eq(pick({q: sources[q].payload.data for q in writes})),
                             wp.en.eq(beat & in_range), wp.addr.eq(Cat(word[:word_bits], block))]
                with m.If(beat):
                    m.d.sync += word.eq(word + 1)
                    with m.If(word == words - 1):
                        m.d.sync += taking.eq(0)
                        for q in writes:
                            with m.If(granted[q]):
                                m.d.sync += [owes[q].eq(1), oks[q].eq(in_range)]
                        m.next = "IDLE"
            with m.State("READ"):
                with m.If(ahead.out.valid & ahead.out.ready & ahead.out.payload.last):
                    m.d.sync += sending.eq(0)
                    m.next = "IDLE"
        return m
