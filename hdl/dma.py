"""DmaRingWriter: the ports' flush streams written by DMA into journal rings in host memory.

The DMA link's side of the `FlushEngine`: each port's entries (its `flush` stream, one 64-bit
word per beat, `first`/`last` around each entry) go into the next slot of that port's ring in
host memory, followed by the slot word carrying the phase bit (`firmware.abi.dma`), so the host
sees new entries by polling memory, not device registers. The host's consumer index in the
port's `dma_doorbell` register frees slots and is turned into the port's acknowledge: the entry
in slot `c-1` has sequence number `c-1 + delta`, where `delta` = seq − slot index is the same
for every entry of a ring, because a port's entries reach the ring consecutively (the writer
takes only the entry it expects next, see below) — so the acknowledge frees the partial-journal
ring exactly as far as the host has consumed. A port whose host ring is full is not served: its
flush stream stalls, its partial-journal ring fills and back-pressures its ingress; nothing in
host memory is overwritten.

`wr` is the memory-write interface, a stream a PCIe endpoint's requester interface can carry:
each beat is 8 bytes of `data` for bus address `addr`; a burst runs from `first` to `last` at
consecutive addresses (one memory-write request). An entry and its slot word are one burst when
the entry fills its slot (every write entry), two when it does not (a marker). One entry at a
time, ports served round-robin at entry boundaries; the next port is chosen during the slot
word's beat, so `wr` carries a beat on every cycle while any port has an entry and ring space.

| member | dir | payload | meaning |
|---|---|---|---|
| `flush[p]` | in | {data: 64, first, last} | port p's `FlushEngine` output |
| `ack[p]` | out | {seq: 32} | port p's acknowledge (`FlushEngine.ack`) |
| `resend[p]` | out | 1 | pulse when port p's ring is enabled (`FlushEngine.resend`) |
| `tail[p]` | in | 32 | port p's oldest unacknowledged seq (`FlushEngine.acked`) |
| `ring[p]` | in/out | `RingRegisters` | port p's `dma_*` registers (`firmware.abi.regmap`) |
| `wr` | out | {addr: 64, data: 64, first, last} | memory writes into host memory |
| `busy` | out | 1 | a beat is offered on `wr` or a port has the entry expected next and ring space
(`bus_util` is `wr` transfers per busy cycle) |

Programming a ring: with `dma_enable` 0 the producer index is held at 0 and the port's flush
stream is discarded; write the base, the size and `dma_doorbell` = 0, then `dma_enable` = 1.
Disabling a ring abandons the entry being written: its slot word is never written with the new
phase, so no host sees it; a burst already begun is ended by one beat at its next address
carrying the opposite phase (the slot word, if the entry's bytes are all out, else a word inside
the entry), and nothing more goes into that ring. Enabling it pulses the port's `resend`: the
flush engine goes back to the oldest unacknowledged entry (`tail`), so slot 0 of the new ring
holds that entry and every entry the host has not acknowledged reaches the ring again — a host
that restarts loses nothing the device still holds.

Each port's stream is filtered so a ring gets its entries exactly once and consecutively, as the
doorbell's seq arithmetic needs: an entry is written only if its seq is the one expected next
(`tail` when the ring was enabled, then one more per entry written); any other (what the flush
engine's output FIFO still held when the resend took effect, or the resent copies of entries
already written) is consumed and dropped, as is the rest of an entry abandoned by a disable.
"""

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from firmware.abi.dma import SLOT_WORD_BYTES, slot_bytes
from firmware.abi.regmap import DMA_REGISTERS
from hdl.flush import AckLayout
from hdl.timestamper import SEQ_BITS
from hdl.write_path import beat_layout

DATA_BITS = 64
BEAT_BYTES = DATA_BITS // 8

WriteBeat = data.StructLayout({"addr": 64, "data": DATA_BITS, "first": 1, "last": 1})

# One port's `dma_*` registers, from the ring writer's side: RW registers in, RO ones out.
RingRegisters = wiring.Signature({name: (Out if access == "RO" else In)(width)
                                  for name, width, access, _ in DMA_REGISTERS})


class DmaRingWriter(wiring.Component):
    """Entries of `ports` flush streams into per-port rings in host memory, with doorbells."""

    def __init__(self, *, ports: int, block_bytes: int):
        self.ports = ports
        self.block_bytes = block_bytes
        self.slot_bytes = slot_bytes(block_bytes)
        super().__init__({
            "flush": In(stream.Signature(beat_layout(DATA_BITS))).array(ports),
            "ack": Out(stream.Signature(AckLayout)).array(ports),
            "resend": Out(1).array(ports),
            "tail": In(SEQ_BITS).array(ports),
            "ring": Out(RingRegisters).array(ports),
            "wr": Out(stream.Signature(WriteBeat)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        n = self.ports
        consumed = [Signal(32, name=f"consumed{p}") for p in range(n)]    # doorbell acked so far
        delta = [Signal(32, name=f"delta{p}") for p in range(n)]          # seq - slot index
        produced = [Signal(32, name=f"produced{p}") for p in range(n)]    # after this cycle's word
        expect = [Signal(SEQ_BITS, name=f"expect{p}") for p in range(n)]  # seq of the next entry to write
        committing = Signal(n)          # the slot word of port p's entry is written this cycle
        space = Signal(n)
        head = Signal(n)                # port p's stream offers the first beat of the entry expected
        for p in range(n):
            self._doorbell(m, p, consumed[p], delta[p])
            ring = self.ring[p]
            m.d.comb += produced[p].eq(ring.dma_produced + committing[p])
            m.d.sync += ring.dma_produced.eq(produced[p])
            with m.If(~ring.dma_enable):      # a disabled ring starts again at slot 0
                m.d.sync += [ring.dma_produced.eq(0), consumed[p].eq(0), expect[p].eq(self.tail[p])]
            self._rewind_on_enable(m, p)
            used = (produced[p] - ring.dma_doorbell)[:32]
            m.d.comb += space[p].eq(ring.dma_enable & (used < (Const(1, 33) << ring.dma_ring_log_size)))
            flush = self.flush[p]
            m.d.comb += head[p].eq(flush.valid & ~self._mid(m, p) & ring.dma_enable
                                   & (flush.payload.data[:SEQ_BITS] == expect[p]))
            with m.If(head[p] & ~space[p]):
                m.d.sync += ring.dma_full_cycles.eq(ring.dma_full_cycles + 1)

        # --- choosing the next port: round-robin after the last one served ----------------------
        port = Signal(range(n))         # port of the entry being written
        wants = Signal(n)
        m.d.comb += wants.eq(head & space)
        pick = Signal(range(n))
        found = Signal()
        for step in reversed(range(1, n + 1)):      # the first port after `port` that wants
            cand = (port + step) % n if n > 1 else 0
            for p in range(n):
                with m.If((cand == p) & wants[p]):
                    m.d.comb += [pick.eq(p), found.eq(1)]

        # --- writing: entry beats at the slot's start, then the slot word at its end ----------
        addr = Signal(64)               # address of the next entry beat
        slot_word = Signal(64)          # address of the current slot's word
        phase = Signal()
        in_entry = Signal()
        word_due = Signal()             # the entry is written, its slot word not yet
        contiguous = Signal()           # the entry ended exactly where the slot word goes
        burst_open = Signal()           # a beat of a burst went out, not yet its last

        def start_picked():
            """Begin the picked port's next entry at its producer index."""
            with m.Switch(pick):
                for p in range(n):
                    with m.Case(p):
                        start(p)

        def start(p):
            ring = self.ring[p]
            mask = ((Const(1, 33) << ring.dma_ring_log_size) - 1)[:32]
            base = Cat(ring.dma_ring_base_lo, ring.dma_ring_base_hi)
            index = produced[p]
            slot = base + (index & mask) * self.slot_bytes
            m.d.sync += [port.eq(p), addr.eq(slot), slot_word.eq(slot + self.slot_bytes - SLOT_WORD_BYTES),
                         phase.eq(~(index >> ring.dma_ring_log_size)[0]), in_entry.eq(1)]

        beat = self.wr.payload
        with m.If(self.wr.valid & self.wr.ready):
            m.d.sync += burst_open.eq(~beat.last)
        with m.Switch(port):
            for p in range(n):
                with m.Case(p):
                    flush = self.flush[p]
                    with m.If((in_entry | word_due) & ~self.ring[p].dma_enable):
                        # Abandoned: a burst already begun ends with one beat at its next address
                        # saying "not new" (the slot word if that is next, else inside the entry).
                        m.d.comb += [self.wr.valid.eq(burst_open), beat.addr.eq(addr),
                                     beat.data.eq(~phase), beat.last.eq(1)]
                        with m.If(~burst_open | self.wr.ready):
                            m.d.sync += [in_entry.eq(0), word_due.eq(0)]
                    with m.Elif(in_entry):
                        m.d.comb += [self.wr.valid.eq(flush.valid), flush.ready.eq(self.wr.ready),
                                     beat.addr.eq(addr), beat.data.eq(flush.payload.data),
                                     beat.first.eq(flush.payload.first),
                                     beat.last.eq(flush.payload.last & (addr + BEAT_BYTES != slot_word))]
                        with m.If(flush.valid & self.wr.ready):
                            m.d.sync += addr.eq(addr + BEAT_BYTES)
                            with m.If(flush.payload.first):   # every entry of a ring: same delta
                                m.d.sync += [delta[p].eq(flush.payload.data[:32] - self.ring[p].dma_produced),
                                             expect[p].eq(expect[p] + 1)]
                            with m.If(flush.payload.last):
                                m.d.sync += [in_entry.eq(0), word_due.eq(1),
                                             contiguous.eq(addr + BEAT_BYTES == slot_word)]
                    with m.Elif(word_due):
                        m.d.comb += [self.wr.valid.eq(1), beat.addr.eq(slot_word), beat.data.eq(phase),
                                     beat.first.eq(~contiguous), beat.last.eq(1)]
                        with m.If(self.wr.ready):
                            m.d.comb += committing[p].eq(1)
                            m.d.sync += word_due.eq(0)
                            with m.If(found):
                                start_picked()
        with m.If(~in_entry & ~word_due & found):
            start_picked()

        # --- dropping: every beat of port p's stream the writer does not take ---------------------
        for p in range(n):
            flush = self.flush[p]
            with m.If(flush.valid & ~head[p] & ~(in_entry & (port == p))):
                m.d.comb += flush.ready.eq(1)
        m.d.comb += self.busy.eq(self.wr.valid | wants.any())
        return m

    def _mid(self, m, p):
        """1 while port `p`'s stream is inside an entry (a beat taken, not yet its last)."""
        flush, mid = self.flush[p], Signal(name=f"mid{p}")
        with m.If(flush.valid & flush.ready):
            m.d.sync += mid.eq(~flush.payload.last)
        return mid

    def _rewind_on_enable(self, m, p):
        """Pulse port `p`'s `resend` as its ring is enabled: the flush engine goes back to `tail`."""
        enabled = Signal(name=f"enabled{p}")
        m.d.sync += enabled.eq(self.ring[p].dma_enable)
        m.d.comb += self.resend[p].eq(self.ring[p].dma_enable & ~enabled)

    def _doorbell(self, m, p, consumed, delta):
        """Port `p`'s doorbell: a consumer index past `consumed` acknowledges up to its slot."""
        ring, ack = self.ring[p], self.ack[p]
        door = ring.dma_doorbell
        fresh = (door - consumed)[:32]
        valid = ring.dma_enable & (fresh != 0) & (fresh <= (ring.dma_produced - consumed)[:32])
        m.d.comb += [ack.valid.eq(valid), ack.payload.seq.eq(door - 1 + delta)]
        with m.If(ack.valid & ack.ready):
            m.d.sync += consumed.eq(door)
