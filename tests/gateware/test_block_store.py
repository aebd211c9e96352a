"""BlockStore in the Amaranth simulator: every requester at once, random stalls, against a model.

Three ports each write and read back blocks of their own (disjoint lbas) while the link reads
blocks of every port, all at the same time, with random gaps on every valid and ready; with
64-bit words and with 16-bit ones (a small board's). Every word of a written block carries
(port, write number, word index), so a read shows whether it
got one whole write — not words of two (the arbiter must serve a request whole) — and which.
Checked: each port reads back its own last write of a block; every link read is one whole
write of that block (or the zeros it started as); at the end the link reads every block as its
last write; an lba outside the volume completes with ok = 0 and reads zeros with ok = 0.

A second test has one port raise valid for a cycle and withdraw it (against the stream rule,
but the store promises to survive it: its arbiter then gives the grant up) among the others.
"""

import random

import pytest
from amaranth.hdl import Cat
from amaranth.sim import Simulator
from streams import stream_put

from boards.storage import BlockStore

PORTS, BLOCK, BLOCKS = 3, 64, 12
ROUNDS = 25
STUCK = 500                 # cycles without any transfer that mean a hung arbiter
W_BITS, N_BITS = 6, 5       # a word's fields: index in the block, then write number, then port + 1


def word(port, n, w):
    return ((port + 1) << N_BITS | n) << W_BITS | w


async def stall(ctx, rng):
    """0-2 idle cycles."""
    if cycles := rng.randrange(3):
        await ctx.tick().repeat(cycles)


async def stream_get(ctx, stream, rng):
    """Take one payload from `stream`, ready after a random wait."""
    await stall(ctx, rng)
    ctx.set(stream.ready, 1)
    payload, = await ctx.tick().sample(stream.payload).until(stream.valid)
    ctx.set(stream.ready, 0)
    return payload


async def put(ctx, stream, payload, rng):
    await stall(ctx, rng)
    await stream_put(ctx, stream, payload)
    ctx.set(stream.valid, 0)


async def write(ctx, port, lba, words, rng):
    await put(ctx, port.write, {"data": lba, "first": 1, "last": 0}, rng)
    for i, value in enumerate(words):
        await put(ctx, port.write, {"data": value, "first": 0, "last": i == len(words) - 1}, rng)
    return (await stream_get(ctx, port.wresp, rng)).ok


async def read(ctx, cmd, rdata, lba, rng):
    await put(ctx, cmd, {"lba": lba}, rng)
    words = BLOCK * 8 // len(rdata.payload.data)
    beats = [await stream_get(ctx, rdata, rng) for _ in range(words)]
    assert [b.last for b in beats] == [0] * (words - 1) + [1]
    return [b.data for b in beats], all(b.ok for b in beats)


def whole_write(words, lba, written):
    """The (port, n) whose write `words` is, checking it is whole and was written to `lba`."""
    if words == [0] * len(words):
        return None
    tag = words[0] >> W_BITS
    assert words == [tag << W_BITS | w for w in range(len(words))], f"block {lba} mixes writes: {words}"
    port, n = (tag >> N_BITS) - 1, tag & (1 << N_BITS) - 1
    assert (port, n) in written[lba], f"block {lba} holds write {port}.{n}, never written there"
    return port, n


async def write_and_read_back(ctx, dut, p, rng, last, written):
    """Port `p`'s ROUNDS of a write to one of its blocks (lba % PORTS == p) and a read of one,
    the read checked against the model: `last`, each block's last write, and `written`, every
    write each block got, as (port, round)."""
    words_per_block = BLOCK * 8 // dut.width
    mine = [lba for lba in range(BLOCKS) if lba % PORTS == p]
    for n in range(ROUNDS):
        lba = rng.choice(mine)
        written[lba].add((p, n))
        assert await write(ctx, dut.port[p], lba, [word(p, n, w) for w in range(words_per_block)], rng) == 1
        last[lba] = (p, n)
        lba = rng.choice(mine)
        words, ok = await read(ctx, dut.port[p].rcmd, dut.port[p].rdata, lba, rng)
        assert ok and (whole_write(words, lba, written) == last[lba]), (p, lba)


@pytest.mark.parametrize("width", [64, 16])
def test_concurrent_requesters_against_a_model(width):
    dut = BlockStore(ports=PORTS, block_bytes=BLOCK, blocks=BLOCKS, datapath_bits=width)
    words_per_block = BLOCK * 8 // width
    assert words_per_block <= 1 << W_BITS and ROUNDS <= 1 << N_BITS
    last = [None] * BLOCKS                      # the model: (port, n) of each block's last write
    written = [set() for _ in range(BLOCKS)]    # every write each block got
    done = set()

    def port_bench(p):
        async def bench(ctx):
            rng = random.Random(p)
            await write_and_read_back(ctx, dut, p, rng, last, written)
            assert await write(ctx, dut.port[p], BLOCKS + p, [1] * words_per_block, rng) == 0     # outside
            done.add(p)
        return bench

    async def link_bench(ctx):
        rng = random.Random(99)
        reads = 0
        while len(done) < PORTS:
            lba = rng.randrange(BLOCKS)
            words, ok = await read(ctx, dut.link_rcmd, dut.link_rdata, lba, rng)
            assert ok
            whole_write(words, lba, written)
            reads += 1
        for lba in range(BLOCKS):
            words, ok = await read(ctx, dut.link_rcmd, dut.link_rdata, lba, rng)
            assert ok and whole_write(words, lba, written) == last[lba], lba
        words, ok = await read(ctx, dut.link_rcmd, dut.link_rdata, BLOCKS, rng)
        assert not ok and words == [0] * words_per_block
        assert reads > 20

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for p in range(PORTS):
        sim.add_testbench(port_bench(p))
    sim.add_testbench(link_bench)
    sim.run()


async def withdraw(ctx, stream, payload, rng):
    """Offer `payload` for one cycle in which `stream` is not ready, then take it back: a request
    the arbiter may choose (it chooses on the cycle's valids) that is gone when it is granted."""
    while True:
        for _ in range(rng.randrange(3)):       # a gap (not `stall`: this bench never finishes)
            await ctx.tick()
        if not ctx.get(stream.ready):           # from the store's registers, not from `valid`
            break
        await ctx.tick()
    ctx.set(stream.payload, payload)
    ctx.set(stream.valid, 1)
    await ctx.tick()
    ctx.set(stream.valid, 0)


@pytest.mark.parametrize("width", [64, 16])
def test_withdrawn_requests_are_given_up(width):
    """Port 2 raises its write's and its read's valid for a cycle and withdraws them, over and
    over, with lbas of the other ports' blocks, while ports 0 and 1 write and read back their
    blocks and the link reads every block: each withdrawn grant is given up (the granted stream
    sees its ready with no valid, never a transfer, a completion or data), the others' requests
    are served whole with the right data (the first test's model), and the store never hangs."""
    dut = BlockStore(ports=PORTS, block_bytes=BLOCK, blocks=BLOCKS, datapath_bits=width)
    last = [None] * BLOCKS                      # the model: (port, n) of each block's last write
    written = [set() for _ in range(BLOCKS)]
    done = set()
    workers, flaky = (0, 1), dut.port[2]
    given_up = {"write": 0, "read": 0}

    def port_bench(p):
        async def bench(ctx):
            rng = random.Random(p)
            await write_and_read_back(ctx, dut, p, rng, last, written)
            done.add(p)
        return bench

    async def link_bench(ctx):
        rng = random.Random(99)
        while len(done) < len(workers):
            lba = rng.randrange(BLOCKS)
            words, ok = await read(ctx, dut.link_rcmd, dut.link_rdata, lba, rng)
            assert ok
            whole_write(words, lba, written)
        for lba in range(BLOCKS):
            words, ok = await read(ctx, dut.link_rcmd, dut.link_rdata, lba, rng)
            assert ok and whole_write(words, lba, written) == last[lba], lba
        done.add("link")

    def flaky_bench(stream, header, seed):
        async def bench(ctx):
            rng = random.Random(seed)
            while True:
                await withdraw(ctx, stream, header(rng.randrange(BLOCKS)), rng)
        return bench

    async def watch(ctx):
        """Count the grants given up (port 2's stream ready, granted in ACCEPT, with no valid);
        port 2 never transfers, so it never gets a completion or a read's data; some stream of
        the others transfers at least every STUCK cycles (the arbiter has not hung)."""
        streams = {"write": flaky.write, "read": flaky.rcmd}
        others = [s for p in workers for s in (dut.port[p].write, dut.port[p].wresp, dut.port[p].rcmd,
                                               dut.port[p].rdata)] + [dut.link_rcmd, dut.link_rdata]
        idle = 0
        while True:
            _, _, *sampled, answer, moved = await ctx.tick().sample(
                *(s for st in streams.values() for s in (st.valid, st.ready)),
                flaky.wresp.valid | flaky.rdata.valid, Cat(s.valid & s.ready for s in others).any())
            assert not answer, "port 2 got a completion or read data for a withdrawn request"
            for i, name in enumerate(streams):
                valid, ready = sampled[2 * i:2 * i + 2]
                assert not (valid and ready), f"port 2's withdrawn {name} was taken"
                given_up[name] += ready
            idle = 0 if moved else idle + 1
            assert idle < STUCK, f"no transfer for {STUCK} cycles: the store hangs ({len(done)} done)"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for p in workers:
        sim.add_testbench(port_bench(p))
    sim.add_testbench(link_bench)
    sim.add_testbench(flaky_bench(flaky.write, lambda lba: {"data": lba, "first": 1, "last": 0}, 7),
                      background=True)
    sim.add_testbench(flaky_bench(flaky.rcmd, lambda lba: {"lba": lba}, 8), background=True)
    sim.add_testbench(watch, background=True)
    sim.run()
    assert given_up["write"] > 20 and given_up["read"] > 20, given_up
