"""A standalone board's primary storage inside the FPGA: `BlockStore`, a small volume in on-chip
RAM, on every port's primary-storage streams and the link's READ_BLOCK (dev boards,
`boards/devboard.py`, and the virtual board's standalone variant, `boards/sim.py`)."""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hdl.journal_ring import check_datapath_bits
from hdl.ram import NO_RW_CHECK
from hdl.read_ahead import ReadAhead
from hdl.write_path import ReadCommand, WriteResponse, beat_layout, lba_in_volume, read_beat_layout

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
    that requester has since withdrawn; the volume's write port takes a registered beat, a cycle
    after its handshake; a read's words are fetched ahead into a queue (`hdl.read_ahead`), so the
    requester's ready reaches neither the RAM nor its address.
    """

    READ_AHEAD = 3      # the read-ahead queue: about a word every other cycle, far above a dev board's
    #                     link; each more entry is a word of flip-flops on an iCE40

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
        # One requester at a time reads or writes it.
        mem = m.submodules.volume = Memory(shape=self.width, depth=self.blocks * words, init=[],
                                           attrs=NO_RW_CHECK)
        wp = mem.write_port()
        rp = mem.read_port()
        ahead = m.submodules.ahead = ReadAhead(width=self.width, words=words, depth=self.READ_AHEAD)

        # Requesters in round-robin order: each port's write then read, the link's read last.
        # (valid, source stream, sink stream, completion owed or None for a read, its ok)
        requests = []
        for p in range(self.ports):
            port = self.port[p]
            owed, ok = Signal(name=f"owed{p}"), Signal(name=f"ok{p}")
            with m.If(port.wresp.ready):
                m.d.sync += owed.eq(0)
            m.d.comb += [port.wresp.valid.eq(owed), port.wresp.payload.ok.eq(ok)]
            requests += [(port.write.valid & ~owed, port.write, port.wresp, owed, ok),
                         (port.rcmd.valid, port.rcmd, port.rdata, None, None)]
        requests.append((self.link_rcmd.valid, self.link_rcmd, self.link_rdata, None, None))
        count = len(requests)
        waiting = Signal(count)             # the requesters' valids, a cycle old
        m.d.sync += waiting.eq(Cat(valid for valid, *_ in requests))

        last = Signal(range(count), init=count - 1)    # the requester served last
        grant = Signal(range(count))
        granted = Signal(count)         # `grant` one-hot, and high while a header or data beat is
        taking = Signal()               # taken (ACCEPT, WRITE) or a read's words sent (READ): each
        sending = Signal()              # ready and valid is then a gate of registers
        lba = Signal(64)
        block = lba[:max(1, (self.blocks - 1).bit_length())]
        in_range = Signal()
        word = Signal(range(words))

        chosen, found = Signal(range(count)), Signal()
        with m.Switch(last):
            for r in range(count):
                with m.Case(r):
                    for i in reversed(range(1, count + 1)):
                        q = (r + i) % count
                        with m.If(waiting[q]):
                            m.d.comb += [chosen.eq(q), found.eq(1)]

        # The volume's write port: a beat taken in WRITE, written the next cycle.
        m.d.sync += wp.en.eq(0)
        # A read's words come out of the read-ahead queue; a block outside the volume reads as zeros.
        m.d.comb += [rp.addr.eq(Cat(ahead.addr, block)), ahead.data.eq(rp.data)]
        head = Signal(read_beat_layout(self.width))
        m.d.comb += [head.data.eq(Mux(in_range, ahead.out.payload.data, 0)),
                     head.last.eq(ahead.out.payload.last), head.ok.eq(in_range)]

        for q, (_, source, _, owed, _) in enumerate(requests):
            # A write's source waits for its completion to be taken (a late `wresp.ready`).
            m.d.comb += source.ready.eq(granted[q] & taking & (~owed if owed is not None else 1))
        for q, (_, _, sink, owed, _) in enumerate(requests):
            if owed is None:
                m.d.comb += [sink.payload.eq(head), sink.valid.eq(granted[q] & sending & ahead.out.valid)]
                with m.If(granted[q] & sending):
                    m.d.comb += ahead.out.ready.eq(sink.ready)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(found):
                    m.d.sync += [grant.eq(chosen), last.eq(chosen), granted.eq(1 << chosen), taking.eq(1)]
                    m.next = "ACCEPT"
            with m.State("ACCEPT"):
                # The header is taken a cycle after the choice, from the granted requester alone:
                # no port's ready depends on another port's valid.
                m.d.sync += taking.eq(0)
                for q, (valid, source, _, owed, _) in enumerate(requests):
                    with m.If(grant == q):
                        header = source.payload.data if owed is not None else source.payload.lba
                        m.d.sync += lba.eq(header)
                        m.next = "DISPATCH" if owed is None else "CHECK"
                        with m.If(~valid):
                            m.next = "IDLE"
                m.d.sync += word.eq(0)
            with m.State("CHECK"):
                # A write's lba against the volume, registered before its first data beat.
                m.d.sync += [in_range.eq(lba_in_volume(lba, self.blocks)), taking.eq(1)]
                m.next = "WRITE"
            with m.State("DISPATCH"):
                m.d.sync += [in_range.eq(lba_in_volume(lba, self.blocks)), sending.eq(1)]
                m.d.comb += ahead.start.eq(1)
                m.next = "READ"
            with m.State("WRITE"):
                for q, (_, source, _, owed, ok) in enumerate(requests):
                    if owed is None:
                        continue
                    with m.If(grant == q):
                        m.d.sync += [wp.data.eq(source.payload.data), wp.en.eq(source.valid & in_range),
                                     wp.addr.eq(Cat(word[:word_bits], block))]
                        with m.If(source.valid):
                            m.d.sync += word.eq(word + 1)
                            with m.If(word == words - 1):
                                m.d.sync += [owed.eq(1), ok.eq(in_range), taking.eq(0)]
                                m.next = "IDLE"
            with m.State("READ"):
                with m.If(ahead.out.valid & ahead.out.ready & ahead.out.payload.last):
                    m.d.sync += sending.eq(0)
                    m.next = "IDLE"
        return m
