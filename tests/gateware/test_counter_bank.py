"""CounterBank: every cycle's read, two cycles later, against a Python count of the events before
the read's cycle (0 for a slot that does not count), through wraps of the low bits and mid-run resets."""

import random

import pytest
from amaranth.hdl import ClockDomain, Module
from amaranth.sim import Simulator

from hdl.counter_bank import CounterBank

GEOMETRIES = [
    (2, [0, 1]),
    (2, [1]),
    (5, [1, 3, 4]),
    (32, sorted(random.Random(32).sample(range(32), 21))),
    (80, sorted(random.Random(80).sample(range(80), 48))),
]


def events(rng: random.Random, counters: int, period: int, cycles: int) -> list[int]:
    """`inc` for each cycle, in spells: all events high; one counter's event high every cycle for
    2-4 wraps of its low bits (`period` cycles each) among random others; random at a random
    density."""
    out: list[int] = []
    while len(out) < cycles:
        kind = rng.randrange(3)
        if kind == 0:
            out += [(1 << counters) - 1] * (rng.randint(1, 3) * period + rng.randrange(period))
        elif kind == 1:
            bit = 1 << rng.randrange(counters)
            out += [bit | rng.getrandbits(counters) & rng.getrandbits(counters)
                    for _ in range(rng.randint(2, 4) * period + rng.randrange(period))]
        else:
            p = rng.random()
            out += [sum(1 << i for i in range(counters) if rng.random() < p)
                    for _ in range(rng.randint(1, 2 * period))]
    return out[:cycles]


def run(depth: int, counters: list[int], seed: int, cycles: int, resets: set[int] = frozenset(),
        split: int | None = None):
    """Simulate `cycles` cycles of random events and a random read each cycle, the sync domain's
    reset high in the cycles `resets`, checking each read against the model (but a read with
    either of its two cycles in reset); returns how many reads in the sequencer's first pass
    after a reset were of a slot that had counted at least two wraps of its low bits before it
    (so that its word in RAM was stale)."""
    rng = random.Random(seed)
    dut = CounterBank(depth=depth, counters=counters, split=split)
    m = Module()
    m.domains.sync = cd = ClockDomain()
    m.submodules.dut = dut
    incs = events(rng, len(counters), 2**dut.low_bits, cycles)
    reads = [rng.randrange(depth) if rng.random() < 0.5 else rng.choice(counters) for _ in range(cycles)]
    stale_reads = 0

    async def bench(ctx):
        nonlocal stale_reads
        count = [0] * depth                  # events before this cycle, per slot
        before_reset = [0] * depth
        since_reset = None                   # cycles since the last reset was released
        issued = None                        # the last cycle's read: (slot, its count, whether stale)
        for t in range(cycles):
            ctx.set(cd.rst, t in resets)
            ctx.set(dut.inc, incs[t])
            ctx.set(dut.r_addr, reads[t])
            await ctx.tick()
            if issued is not None and t not in resets:      # the read of cycle t - 1 is on r_data
                slot, expected, stale = issued
                assert ctx.get(dut.r_data) == expected, (t - 1, slot, since_reset)
                stale_reads += stale
            issued = None
            if t in resets:
                if t - 1 not in resets:
                    before_reset = count
                count = [0] * depth
                since_reset = 0
                continue
            slot = reads[t]
            issued = (slot, count[slot], since_reset is not None and since_reset < depth
                      and before_reset[slot] >= 2 * 2**dut.low_bits)
            for bit, s in enumerate(counters):
                count[s] += incs[t] >> bit & 1
            if since_reset is not None:
                since_reset += 1

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return stale_reads


@pytest.mark.parametrize(("depth", "counters"), GEOMETRIES)
def test_reads_match_the_event_count(depth, counters):
    run(depth, counters, seed=depth * 100 + len(counters), cycles=5000)


@pytest.mark.parametrize("split", [0, 2, 7])
def test_reads_match_at_any_split(split):
    """A read's first stage over groups of 2**split slots (7: all 80 in one group)."""
    depth, counters = GEOMETRIES[4]
    run(depth, counters, seed=split, cycles=3000, split=split)


@pytest.mark.parametrize(("depth", "counters"), [(2, [0, 1]), (5, [1, 3, 4]), GEOMETRIES[3]])
def test_counters_restart_from_zero_after_reset(depth, counters):
    rng = random.Random(depth)
    period = 2 ** (depth - 1).bit_length()
    cycles, resets, t = 5000, set(), 4 * period
    while t < cycles:
        resets.update(range(t, t + rng.randint(1, 2)))
        t += rng.randint(3, 8 * period + 40)
    assert run(depth, counters, seed=depth, cycles=cycles, resets=resets) > 20


@pytest.mark.parametrize(("depth", "counters"), [
    (1, [0]), (0, [0]), (4, []), (4, [2, 1]), (4, [1, 1]), (4, [-1, 0]), (4, [0, 4]), (2, [0, 1, 2]),
])
def test_rejects_bad_geometry(depth, counters):
    with pytest.raises(ValueError, match="depth of at least 2"):
        CounterBank(depth=depth, counters=counters)
