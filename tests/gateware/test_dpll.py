"""TimeBase + DigitalPLL + Timestamper: four ports, each on its own clock, locked to one broadcast.

The rig (`sim/dpll_rig.py`) runs under Verilator with cocotb-driven clocks (GPI clocks, so
Python only wakes to sample): the reference at 100 MHz with its first rising edge at time 0
(true time = simulation time), ports at 125 MHz -200/+100/+200 ppm and 100 MHz -50 ppm, each
starting at a random phase. Periods are set in femtoseconds (the image is built with a 1 fs
precision), so the offsets are exact to 0.001 ppm. The broadcast interval is shortened to
100 µs (T in units of 100 µs); the loop works in intervals, so its dynamics are those of the
1 ms bench, which `make bench-dpll` runs at full length.

Error of port i, sampled just after one of its rising edges: its integer-ns `time` (the value
that edge wrote) minus the edge's true time in ns. Skew: spread of the four ports' errors
taken within one sampling round (< 40 ns apart).
"""

import random

import cocotb
import pytest
from amaranth.lib.wiring import In, Out
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge, Timer
from cocotb.utils import get_sim_time

from hdl.dpll import LOCK_NS, TRACK, registers_markdown

INTERVAL_NS = 100_000
HOLDOVER_INTERVALS = 8
REF_PERIOD_FS = 10_000_000
MAX_ABS_ERR_NS = 16      # the goals of issue 3, asserted after lock
MEAN_ABS_ERR_NS = 5
MAX_SKEW_NS = 16
LOCK_BROADCASTS = 20


def _rig():
    from sim.dpll_rig import DpllRig

    return DpllRig(interval_ns=INTERVAL_NS, holdover_intervals=HOLDOVER_INTERVALS)


def test_register_view_is_the_register_map():
    """The register map's DPLL table (`DPLL_OUTPUTS`) is exactly DigitalPLL's outputs, name and
    width; every `dpll` register of a port block carries bits of one of them, and the words of
    each output cover its bits once, 32 at most per register; the docstring shows the table."""
    import hdl.dpll
    from firmware.abi.regmap import DPLL_OUTPUTS, DPLL_WORDS, PORT
    from hdl.dpll import DigitalPLL
    from hdl.timestamper import TIME_BITS

    dut = DigitalPLL(clk_hz=125e6)
    dut._MustUse__silence = True    # inspected, not elaborated
    members = dict(dut.signature.members)
    assert members.pop("wire").flow == In
    outputs = {name: width for name, width, _, _ in DPLL_OUTPUTS}
    assert set(members) == set(outputs)
    for name, width in outputs.items():
        assert members[name].flow == Out and members[name].shape.width == width, name
    assert members["phase_error"].shape.signed and outputs["time"] == TIME_BITS

    regs = {r.name: r for r in PORT if r.group == "dpll"}
    assert set(regs) == {reg for reg, _, _, _ in DPLL_WORDS}
    for name, width in outputs.items():
        words = sorted((lsb, w, reg) for reg, output, lsb, w in DPLL_WORDS if output == name)
        expected = [f"dpll_{name}"] if width <= 32 else [f"dpll_{name}_lo", f"dpll_{name}_hi"]
        assert [reg for _, _, reg in words] == expected
        covered = 0
        for lsb, w, reg in words:
            assert lsb == covered and regs[reg].width == w <= 32 and regs[reg].access == "RO", reg
            covered += w
        assert covered == width, name
    assert registers_markdown() in hdl.dpll.__doc__


def test_timebase_frame_in_amaranth_sim():
    """One frame, bit by bit, against the documented format (Amaranth simulator, 10 µs interval)."""
    import crc32c
    from amaranth.sim import Simulator

    from hdl.timebase import FRAME_BITS, TimeBase, frame_bits

    dut = TimeBase(interval_ns=10_000, unit_ns=10_000)
    bit = dut.bit_cycles

    async def bench(ctx):
        levels = []
        for _ in range(3 * dut.interval_cycles):
            levels.append(ctx.get(dut.wire))
            await ctx.tick()
        assert all(levels[:dut.interval_cycles + 1]), "no frame before the first boundary"
        for frame in (1, 2):
            # the marker: the first low level of the interval, at its first cycle (+1: registered)
            start = frame * dut.interval_cycles + 1
            assert levels[start - 1] == 1 and levels[start] == 0, f"marker of frame {frame} misplaced"
            got = [levels[start + i * bit + bit // 2] for i in range(FRAME_BITS)]
            t = frame * dut.t_step
            assert got == frame_bits(t, crc32c.crc32c(t.to_bytes(6, "little"))), f"frame {frame}"
            assert all(levels[start + FRAME_BITS * bit:(frame + 1) * dut.interval_cycles + 1]), "idle after"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def test_dpll_at_four_cycles_per_bit():
    """The fewest cycles per bit (the ULX3S's time base: 12.5 Mbit/s at 50 MHz), where a byte's
    first tick comes in the cycle after its start edge: every frame is received, the loop
    locks, and time increases at every cycle (Amaranth simulator, one clock, 20 µs interval)."""
    from amaranth.hdl import Module
    from amaranth.sim import Simulator

    from hdl.dpll import DigitalPLL
    from hdl.timebase import TimeBase

    clk_hz, bit_rate, interval_ns, intervals = 50_000_000, 12_500_000, 20_000, 30
    m = Module()
    tb = m.submodules.tb = TimeBase(ref_hz=clk_hz, interval_ns=interval_ns, unit_ns=interval_ns,
                                    bit_rate=bit_rate)
    dut = m.submodules.dut = DigitalPLL(clk_hz=clk_hz, interval_ns=interval_ns, unit_ns=interval_ns,
                                        bit_rate=bit_rate)
    m.d.comb += dut.wire.eq(tb.wire)
    assert dut.bit_cycles == 4

    async def bench(ctx):
        last = -1
        for _ in range(intervals * tb.interval_cycles):
            await ctx.tick()
            now = ctx.get(dut.time)
            assert now > last, f"time {now} after {last}"
            last = now
        assert ctx.get(dut.rejected) == 0 and ctx.get(dut.frames) == intervals - 1
        assert ctx.get(dut.state) == TRACK and ctx.get(dut.locked)
        assert abs(ctx.get(dut.phase_error)) < LOCK_NS

    sim = Simulator(m)
    sim.add_clock(1 / clk_hz)
    sim.add_testbench(bench)
    sim.run()


def test_dpll_rejects_bad_parameters():
    from hdl.dpll import DigitalPLL

    with pytest.raises(ValueError, match="cycles per bit"):
        DigitalPLL(clk_hz=30e6)


# --- cocotb under Verilator ----------------------------------------------------------------


def _ports(dut):
    from sim.dpll_rig import PORTS

    return PORTS


def _now_ns() -> float:
    return get_sim_time("fs") / 1e6


async def _until_ns(t_ns: float):
    """Wait until true time `t_ns` (rounded to 1 fs)."""
    await Timer(max(round(t_ns * 1e6) - get_sim_time("fs"), 1), unit="fs")


async def _start(dut, seed: int, delays=(0, 0, 0, 0)):
    """Clocks (reference at 0, ports at random phases), resets, jitter, wire delays (reference
    cycles per port); returns the marker log."""
    rng = random.Random(seed)
    dut.tb_enable.value = 1
    dut.tb_corrupt.value = 0
    dut.tb_jitter.value = 0
    for i in range(4):
        getattr(dut, f"rst_p{i}").value = 1
        getattr(dut, f"p{i}_take").value = 0
        getattr(dut, f"p{i}_delay").value = delays[i]
    Clock(dut.clk_ref, REF_PERIOD_FS, unit="fs", impl="gpi").start()

    async def port_clock(i, hz, ppm, phase_fs):
        period = round(1e15 / (hz * (1 + ppm * 1e-6)))
        period -= period % 2
        await Timer(phase_fs, unit="fs")
        Clock(getattr(dut, f"clk_p{i}"), period, unit="fs", impl="gpi").start()

    for i, (hz, ppm) in enumerate(_ports(dut)):
        cocotb.start_soon(port_clock(i, hz, ppm, rng.randrange(1, 8_000_000)))
    markers = []   # (true time of the marker, jitter chosen for it)
    cocotb.start_soon(_jitter_and_markers(dut, rng, markers))
    await Timer(100, unit="ns")
    for i in range(4):
        getattr(dut, f"rst_p{i}").value = 0
    return markers


async def _jitter_and_markers(dut, rng, markers):
    """Chooses each marker's ±1 reference-cycle jitter mid-interval and logs when markers leave."""
    chosen = {0: 0}

    async def choose():
        k = 0
        while True:
            await _until_ns(INTERVAL_NS // 2 + k * INTERVAL_NS)
            k += 1
            chosen[k] = rng.choice((-1, 0, 1))
            dut.tb_jitter.value = chosen[k]

    cocotb.start_soon(choose())
    last_fall = -1e9
    while True:
        await FallingEdge(dut.wire)
        now = _now_ns()
        if now - last_fall > 20_000:   # the first fall after idle is a marker
            k = round(now / INTERVAL_NS)
            markers.append((now, k, chosen.get(k, 0)))
        last_fall = now


async def _sample(dut, delays=(0, 0, 0, 0)) -> tuple[list[float], list[int]]:
    """Each port's error (ns) and time just after its next rising edge. A port whose wire is
    delayed by d reference cycles locks to true time − 10·d ns: its error is taken against that."""
    errs, times = [], []
    for i in range(4):
        await RisingEdge(getattr(dut, f"clk_p{i}"))
        await ReadOnly()
        t = int(getattr(dut, f"p{i}_time").value)
        errs.append(t - _now_ns() + 10 * delays[i])
        times.append(t)
    return errs, times


def _assert_never_back(dut):
    """The rig's per-port monitors: `time` increased at every port clock edge since reset."""
    back = [i for i in range(4) if int(getattr(dut, f"p{i}_went_back").value)]
    assert not back, f"time did not increase at some clock edge of port(s) {back}"


async def _until_locked(dut, limit_broadcasts: int = 40, acquired: list | None = None) -> float:
    """Polls until every port is locked. `acquired`, if given, gets each port's phase error of
    the frame that ended its acquisition (read when its state is first seen in TRACK)."""
    while _now_ns() < limit_broadcasts * INTERVAL_NS:
        await Timer(5, unit="us")
        await ReadOnly()
        for i in range(4 if acquired is not None else 0):
            if acquired[i] is None and int(getattr(dut, f"p{i}_state").value) == TRACK:
                acquired[i] = getattr(dut, f"p{i}_phase_error").value.to_signed()
        if all(int(getattr(dut, f"p{i}_locked").value) for i in range(4)):
            return _now_ns()
    raise AssertionError(f"not all ports locked within {limit_broadcasts} broadcasts: " + ", ".join(
        f"p{i} state {int(getattr(dut, f'p{i}_state').value)}" for i in range(4)))


def _check_markers(markers):
    assert len(markers) >= 5
    for t, k, j in markers:
        assert abs(t - (k * INTERVAL_NS + j * 10)) < 1e-6, f"marker {k} at {t} ns, jitter {j}"
    assert {j for _, _, j in markers} == {-1, 0, 1}, "jitter did not take all three values"


@cocotb.test()
async def dpll_locks_and_tracks(dut):
    """Lock within 20 broadcasts; then error, mean error and skew within the goals; never backward;
    timestamps (timestamp, port, seq) strictly increase per port and order writes across ports."""
    markers = await _start(dut, cocotb.RANDOM_SEED)
    t_lock = await _until_locked(dut)
    broadcasts = int(t_lock // INTERVAL_NS)   # frames sent so far: at τ, 2τ, ... (none at 0)
    dut._log.info("all ports locked at %.1f us (%d broadcasts)", t_lock / 1e3, broadcasts)
    assert broadcasts <= LOCK_BROADCASTS

    errs, skews = [], []
    stamps = []   # (true time of the take edge, (timestamp, port, seq))
    rng = random.Random(cocotb.RANDOM_SEED + 1)
    end = _now_ns() + 15 * INTERVAL_NS
    while _now_ns() < end:
        await Timer(rng.randrange(2_000, 6_000), unit="ns")
        e, _ = await _sample(dut)
        errs += e
        skews.append(max(e) - min(e))
        if rng.random() < 0.5:   # a write request on a random port
            i = rng.randrange(4)
            await RisingEdge(getattr(dut, f"clk_p{i}"))   # leave ReadOnly, then drive
            getattr(dut, f"p{i}_take").value = 1
            await RisingEdge(getattr(dut, f"clk_p{i}"))
            t_take = _now_ns()
            getattr(dut, f"p{i}_take").value = 0
            await ReadOnly()
            stamps.append((t_take, (int(getattr(dut, f"p{i}_stamp_time").value), i,
                                    int(getattr(dut, f"p{i}_stamp_seq").value))))
        assert all(int(getattr(dut, f"p{i}_locked").value) for i in range(4)), "lost lock while tracking"
    max_abs = max(abs(x) for x in errs)
    mean_abs = sum(abs(x) for x in errs) / len(errs)
    dut._log.info("after lock: %d samples, max |err| %.1f ns, mean |err| %.2f ns, max skew %.1f ns, "
                  "%d stamps", len(errs), max_abs, mean_abs, max(skews), len(stamps))
    assert max_abs <= MAX_ABS_ERR_NS
    assert mean_abs <= MEAN_ABS_ERR_NS
    assert max(skews) <= MAX_SKEW_NS
    _assert_never_back(dut)
    _check_markers(markers)

    # Timestamps: per port strictly increasing triples, seq counting takes; across ports the
    # triple order agrees with true order whenever the takes are further apart than the error.
    assert len(stamps) >= 20 and len({s[1][1] for s in stamps}) == 4
    for port in range(4):
        mine = [s for _, s in stamps if s[1] == port]
        assert all(a < b for a, b in zip(mine, mine[1:], strict=False)), f"port {port} not increasing"
        assert [s[2] for s in mine] == list(range(len(mine)))
    for t, s in stamps:   # the stamp is the time the take edge wrote, one cycle before it latched
        assert abs(s[0] - t) <= MAX_ABS_ERR_NS + 10.1, (t, s)
    for ta, sa in stamps:
        for tb, sb in stamps:
            if tb - ta > 2 * (MAX_ABS_ERR_NS + 10.1):
                assert sa < sb, f"{sa} at {ta} ns orders after {sb} at {tb} ns"


@cocotb.test()
async def dpll_rejects_bad_crc(dut):
    """A frame with a bad CRC is counted as rejected and changes nothing: no step, no update.
    Lost at the end of the acquisition, it restarts the acquisition rather than stretching
    the frequency estimate over one more interval."""
    from hdl.dpll import ACQUIRE, ACQUIRE_FRAMES

    await _start(dut, cocotb.RANDOM_SEED + 2)
    # Frame 1 (100 µs) is every port's first; frame 1 + ACQUIRE_FRAMES would end the acquisition.
    last = 1 + ACQUIRE_FRAMES
    await _until_ns((last - 0.5) * INTERVAL_NS)
    dut.tb_corrupt.value = 1
    await _until_ns(last * INTERVAL_NS + 2_000)
    dut.tb_corrupt.value = 0
    await _until_ns((last + 1) * INTERVAL_NS + 20_000)
    for i in range(4):
        assert int(getattr(dut, f"p{i}_rejected").value) == 1
        assert int(getattr(dut, f"p{i}_state").value) == ACQUIRE, f"p{i} did not restart its acquisition"
    await _until_locked(dut, limit_broadcasts=LOCK_BROADCASTS + ACQUIRE_FRAMES + 2)
    # Go to the middle of an interval, arm the corruption for the next frame.
    k = int(_now_ns() // INTERVAL_NS) + 1
    await _until_ns(k * INTERVAL_NS + INTERVAL_NS // 2)

    def regs():
        return [{n: int(getattr(dut, f"p{i}_{n}").value) for n in
                 ("rejected", "frames", "phase_error", "state", "locked", "lock_count")} for i in range(4)]

    before = regs()
    dut.tb_corrupt.value = 1
    await Timer(INTERVAL_NS // 2 + 2_000, unit="ns")   # the bad frame has started
    dut.tb_corrupt.value = 0
    err_before, _ = await _sample(dut)
    await Timer(15_000, unit="ns")                      # it has been received and rejected
    after = regs()
    err_after, _ = await _sample(dut)
    for i in range(4):
        assert after[i]["rejected"] == before[i]["rejected"] + 1, f"p{i}: {before[i]} -> {after[i]}"
        for name in ("frames", "phase_error", "state", "locked", "lock_count"):
            assert after[i][name] == before[i][name], f"p{i} {name}: {before[i]} -> {after[i]}"
        assert after[i]["state"] == TRACK and after[i]["locked"] == 1
        # no step: the error moves by less than a few ns over the ~15 µs around the frame
        assert abs(err_after[i] - err_before[i]) < 4, f"p{i}: {err_before[i]:.1f} -> {err_after[i]:.1f}"
    # the next frame is good again and is used
    await Timer(INTERVAL_NS, unit="ns")
    for i in range(4):
        assert int(getattr(dut, f"p{i}_frames").value) == before[i]["frames"] + 1
        assert int(getattr(dut, f"p{i}_rejected").value) == before[i]["rejected"] + 1
    _assert_never_back(dut)


# Wire delays (reference cycles) of the holdover test. From the start every wire is 400 ns late:
# a port's local time starts at 0 when it leaves reset (100 ns) and drifts by up to ±180 ns
# (±200 ppm) before its first acquisition ends, so every port is AHEAD of the broadcast then
# and must slew. While the broadcasts are stopped p0's and p3's markers become 400 ns and
# 250 ns later (ahead again at re-acquisition) and p1's 100 ns earlier (behind: it steps
# forward once); p2's stays (it re-acquires on its holdover error alone).
HOLDOVER_DELAYS = (40, 40, 40, 40)
RELOCK_DELAYS = (80, 30, 40, 65)


@cocotb.test()
async def dpll_holdover(dut):
    """Broadcasts stop: time runs on the last frequency, `locked` drops after the timeout (not
    before). When broadcasts come back, ports found ahead of the broadcast slew back and ports
    behind step forward once; all lock again; time increases at every clock edge throughout
    (the rig's monitors check each edge of acquisition, holdover and re-acquisition)."""
    delays = HOLDOVER_DELAYS
    await _start(dut, cocotb.RANDOM_SEED + 3, delays)
    acquired = [None] * 4
    await _until_locked(dut, acquired=acquired)
    # Every port is ahead at its first acquisition (HOLDOVER_DELAYS): it slews, never steps back.
    dut._log.info("first acquisition: errors %s ns", acquired)
    assert all(e < 0 for e in acquired), acquired
    k = int(_now_ns() // INTERVAL_NS) + 1
    await _until_ns(k * INTERVAL_NS + INTERVAL_NS // 2)
    dut.tb_enable.value = 0
    first_missing = (k + 1) * INTERVAL_NS
    timeout = (k + HOLDOVER_INTERVALS) * INTERVAL_NS   # ~ last good frame + holdover
    worst = 0.0
    while _now_ns() < timeout - 5_000:
        await Timer(5, unit="us")
        e, _ = await _sample(dut, delays)
        worst = max(worst, *map(abs, e))
        assert all(int(getattr(dut, f"p{i}_locked").value) for i in range(4)), "lock dropped too early"
    dut._log.info("holdover: worst |err| %.1f ns over %.0f us without broadcasts", worst,
                  (_now_ns() - first_missing) / 1e3)
    assert worst <= 2 * LOCK_NS
    await _until_ns(timeout + 20_000)
    e, _ = await _sample(dut, delays)
    assert not any(int(getattr(dut, f"p{i}_locked").value) for i in range(4)), "lock kept after timeout"
    assert max(map(abs, e)) <= 2 * LOCK_NS
    _assert_never_back(dut)

    # Re-acquisition with the wire delays changed while the wire is idle.
    await Timer(1, unit="ns")   # out of the read-only phase before driving
    delays = RELOCK_DELAYS
    for i in range(4):
        getattr(dut, f"p{i}_delay").value = delays[i]
    dut.tb_enable.value = 1
    resumed = _now_ns()
    acquired = [None] * 4
    await _until_locked(dut, int(resumed // INTERVAL_NS) + LOCK_BROADCASTS + 5, acquired)
    dut._log.info("re-acquired: errors at acquisition %s ns, all locked %.0f us after resuming",
                  acquired, (_now_ns() - resumed) / 1e3)
    # e > 0: behind (one forward step); e < 0: ahead (slewed). Each is the delay change plus
    # the port's holdover error (up to 2·LOCK_NS).
    assert acquired[0] < -300 and acquired[3] < -150 and acquired[1] > 0, acquired
    assert all(int(getattr(dut, f"p{i}_lock_count").value) == 2 for i in range(4))
    errs = []
    end = _now_ns() + 5 * INTERVAL_NS
    while _now_ns() < end:
        await Timer(5, unit="us")
        e, _ = await _sample(dut, delays)
        errs += e
    dut._log.info("after re-lock: max |err| %.1f ns", max(map(abs, errs)))
    # Right after a 400 ns slew the loop is still settling: the lock criterion, not the
    # steady-state bound (which dpll_locks_and_tracks asserts), holds here.
    assert max(map(abs, errs)) <= LOCK_NS
    _assert_never_back(dut)


@pytest.mark.parametrize("case", ["dpll_locks_and_tracks", "dpll_rejects_bad_crc", "dpll_holdover"])
def test_verilator(case, sim_dir):
    from sim.image import build_image

    image = build_image("dpll_rig_100us", _rig, timescale=("1ns", "1fs"))
    image.run("test_dpll", test_dir=sim_dir / f"dpll_{case}", testcase=case, seed=1)
