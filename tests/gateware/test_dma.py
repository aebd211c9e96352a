"""DmaRingWriter in the Amaranth simulator: entries from two ports' flush streams land in their host
rings slot by slot with the phase rule of `firmware.abi.dma`, doorbells become acknowledges, a
full ring holds its port, and `wr` is busy every cycle while entries and space are there."""

import functools
import random

from amaranth.sim import Simulator

from firmware.abi.dma import SLOT_WORD_BYTES, phase, slot_bytes
from hdl.dma import DmaRingWriter

BLOCK = 32
SLOT = slot_bytes(BLOCK)
ENTRY_WORDS = (SLOT - SLOT_WORD_BYTES) // 8
MARKER_WORDS = 5
BASES = [0x1000, 0x8000]
LOG_SIZE = 2


def fake_entry(seq, words):
    """An entry as the flush stream carries it: seq in the first word, then numbered words."""
    return [seq | 0xAB << 32] + [seq << 16 | k for k in range(1, words)]


class HostMemory:
    """The memory-write sink: applies bursts to a dict of 8-byte words, checking burst shape."""

    def __init__(self):
        self.words = {}
        self.beats = 0
        self.next_addr = None

    def take(self, addr, word, first, last):
        assert first == (self.next_addr is None), (hex(addr), first)
        if not first:
            assert addr == self.next_addr, (hex(addr), hex(self.next_addr))
        self.words[addr] = word
        self.beats += 1
        self.next_addr = None if last else addr + 8

    def slot(self, port, index):
        base = BASES[port] + (index % (1 << LOG_SIZE)) * SLOT
        return [self.words.get(base + 8 * k) for k in range(SLOT // 8)]


def test_rings_doorbells_and_full_ring():
    dut = DmaRingWriter(ports=2, block_bytes=BLOCK)
    rng = random.Random(3)
    counts = [14, 11]
    entries = [[fake_entry(100 * p + s, MARKER_WORDS if rng.random() < 0.2 else ENTRY_WORDS)
                for s in range(counts[p])] for p in range(2)]
    mem = HostMemory()
    acks = [[], []]
    seen = [0, 0]           # host consumer index per port

    async def feed(ctx, *, p):
        await ctx.tick().until(dut.resend[p])   # a flush engine starts over as the ring is enabled
        for entry in entries[p]:
            for k, word in enumerate(entry):
                ctx.set(dut.flush[p].payload, {"data": word, "first": k == 0, "last": k == len(entry) - 1})
                ctx.set(dut.flush[p].valid, 1)
                await ctx.tick().until(dut.flush[p].ready)
            ctx.set(dut.flush[p].valid, 0)
            for _ in range(rng.choice([0, 0, 3])):
                await ctx.tick()

    async def host(ctx):
        for p in range(2):
            ctx.set(dut.tail[p], entries[p][0][0] & 0xFFFFFFFF)     # the port's oldest unacknowledged
            ctx.set(dut.ring[p].dma_ring_base_lo, BASES[p])
            ctx.set(dut.ring[p].dma_ring_log_size, LOG_SIZE)
        await ctx.tick()
        for p in range(2):
            ctx.set(dut.ring[p].dma_enable, 1)
        ctx.set(dut.wr.ready, 1)
        for p in range(2):
            ctx.set(dut.ack[p].ready, 1)
        idle = 0
        for _ in range(3000):
            _, _, valid, b, *ack = await ctx.tick().sample(
                dut.wr.valid, dut.wr.payload, *(x for p in range(2) for x in (dut.ack[p].valid,
                                                                              dut.ack[p].payload.seq)))
            if valid:
                mem.take(b.addr, b.data, b.first, b.last)
            for p in range(2):
                if ack[2 * p]:
                    acks[p].append(ack[2 * p + 1])
            # The host consumes what it sees by the phase, but port 1's doorbell lags: it holds
            # off until its ring has been full for a while.
            for p in range(2):
                c = seen[p]
                slot = mem.slot(p, c)
                if slot[-1] is not None and slot[-1] & 1 == phase(c, LOG_SIZE) and c < counts[p]:
                    entry = entries[p][c]
                    assert slot[:len(entry)] == entry, (p, c)
                    seen[p] += 1
            assert seen[1] - ctx.get(dut.ring[1].dma_doorbell) <= 1 << LOG_SIZE
            ctx.set(dut.ring[0].dma_doorbell, seen[0])
            if ctx.get(dut.ring[1].dma_full_cycles) > 40 or seen[1] == counts[1]:
                ctx.set(dut.ring[1].dma_doorbell, seen[1])
            idle = idle + 1 if seen == counts else 0
            if idle > 5:
                break
        assert seen == counts
        assert ctx.get(dut.ring[0].dma_produced) == counts[0]
        assert ctx.get(dut.ring[1].dma_full_cycles) > 40       # port 1 did wait on a full ring

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(host)
    for p in range(2):
        sim.add_testbench(functools.partial(feed, p=p), background=True)
    sim.run()
    for p in range(2):
        # Every doorbell acknowledged the seq of its last consumed slot, in increasing order.
        assert acks[p] and acks[p] == sorted(set(acks[p]))
        assert acks[p][-1] == 100 * p + counts[p] - 1


def test_bus_busy_every_cycle_while_draining():
    """Two ports with entries waiting back to back: a `wr` beat on every busy cycle."""
    dut = DmaRingWriter(ports=2, block_bytes=BLOCK)
    result = {}

    async def feed(ctx, *, p):
        for s in range(6):
            entry = fake_entry(s, ENTRY_WORDS)
            for k, word in enumerate(entry):
                ctx.set(dut.flush[p].payload, {"data": word, "first": k == 0, "last": k == len(entry) - 1})
                ctx.set(dut.flush[p].valid, 1)
                await ctx.tick().until(dut.flush[p].ready)
        ctx.set(dut.flush[p].valid, 0)

    async def sink(ctx):
        for p in range(2):
            ctx.set(dut.ring[p].dma_ring_base_lo, BASES[p])
            ctx.set(dut.ring[p].dma_ring_log_size, 4)
            ctx.set(dut.ring[p].dma_enable, 1)
        ctx.set(dut.wr.ready, 1)
        beats = busy = 0
        for _ in range(400):
            _, _, is_busy, valid = await ctx.tick().sample(dut.busy, dut.wr.valid)
            busy += is_busy
            beats += valid
        result.update(beats=beats, busy=busy)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(sink)
    for p in range(2):
        sim.add_testbench(functools.partial(feed, p=p), background=True)
    sim.run()
    assert result["beats"] == 12 * SLOT // 8
    assert result["beats"] / result["busy"] >= 0.98, result


def test_reenabled_ring_starts_at_the_oldest_unacknowledged_entry():
    """A host that programs its ring again — once while the ring is full, once in the middle of
    an entry's burst — gets, from slot 0 on, the port's oldest unacknowledged entry and then each
    later one once, in order; an abandoned entry never gets its slot word. The flush engine is
    modelled: it goes back to `tail` on `resend`, but only after two more entries, as the real
    one's output FIFO still holds some."""
    dut = DmaRingWriter(ports=1, block_bytes=BLOCK)
    entries = [fake_entry(s, ENTRY_WORDS) for s in range(40)]
    state = {"tail": 0, "done": False}

    async def engine(ctx):
        send, rewind_in = 0, None
        while not state["done"]:
            if send == len(entries):
                await ctx.tick()
                continue
            entry, k = entries[send], 0
            while k < len(entry):
                last = k == len(entry) - 1
                ctx.set(dut.flush[0].payload, {"data": entry[k], "first": k == 0, "last": last})
                ctx.set(dut.flush[0].valid, 1)
                _, _, ready, resend = await ctx.tick().sample(dut.flush[0].ready, dut.resend[0])
                rewind_in = 2 if resend else rewind_in
                k += ready
            ctx.set(dut.flush[0].valid, 0)
            send += 1
            if rewind_in is not None:
                send, rewind_in = (state["tail"], None) if rewind_in == 0 else (send, rewind_in - 1)

    async def host(ctx):
        mem, read = HostMemory(), []        # read: the entries the host has taken, in order
        first = 0                           # seq of the entry in slot 0 of the current ring
        ctx.set(dut.ring[0].dma_ring_base_lo, BASES[0])
        ctx.set(dut.ring[0].dma_ring_log_size, LOG_SIZE)
        ctx.set(dut.wr.ready, 1)
        ctx.set(dut.ack[0].ready, 1)
        ctx.set(dut.ring[0].dma_enable, 1)

        async def cycle():
            """One clock: apply the write beat, take the acknowledge, read new slots by phase."""
            _, _, valid, beat, ack, seq = await ctx.tick().sample(
                dut.wr.valid, dut.wr.payload, dut.ack[0].valid, dut.ack[0].payload.seq)
            if valid:
                mem.take(beat.addr, beat.data, beat.first, beat.last)
            if ack:
                assert seq + 1 > state["tail"]
                state["tail"] = seq + 1
                ctx.set(dut.tail[0], state["tail"])
            c = len(read) - first
            slot = mem.slot(0, c)
            if slot[-1] is not None and slot[-1] & 1 == phase(c, LOG_SIZE):
                entry = entries[first + c]
                assert slot[:len(entry)] == entry, (first, c, hex(slot[0]))
                read.append(first + c)
            return valid, beat

        async def restart():
            """Disable the ring, check that at most a burst's closing beat follows, clear the ring,
            enable it again. The host goes on reading meanwhile, so a slot word written with the
            new phase over a half-written entry would fail its content check."""
            nonlocal first
            ctx.set(dut.ring[0].dma_enable, 0)
            after = [await cycle() for _ in range(30)]
            assert [beat.last for valid, beat in after if valid] in ([], [1]), "written after disable"
            assert mem.next_addr is None, "a burst left open"
            mem.words.clear()
            del read[state["tail"]:]            # read but not acknowledged: not kept
            first = state["tail"]
            ctx.set(dut.ring[0].dma_doorbell, 0)
            ctx.set(dut.ring[0].dma_enable, 1)

        # The ring fills; the host acknowledges two entries (four more slots read, never freed).
        while ctx.get(dut.ring[0].dma_full_cycles) < 20:
            await cycle()
        ctx.set(dut.ring[0].dma_doorbell, 2)
        for _ in range(100):
            await cycle()
        assert read == list(range(6)) and state["tail"] == 2
        await restart()
        # Consume and free everything, then restart in the middle of an entry's burst.
        while len(read) < 15:
            await cycle()
            ctx.set(dut.ring[0].dma_doorbell, len(read) - first)
        while True:
            valid, beat = await cycle()
            if valid and beat.first and not beat.last:
                break
        await restart()
        for _ in range(3000):
            await cycle()
            ctx.set(dut.ring[0].dma_doorbell, len(read) - first)
            if len(read) == len(entries) and state["tail"] == len(entries):
                break
        state["done"] = True
        assert read == list(range(len(entries))), read
        assert state["tail"] == len(entries)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(host)
    sim.add_testbench(engine, background=True)
    sim.run()
