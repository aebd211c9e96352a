"""JournalPort in the Amaranth simulator: small directed checks (the pyuvm bench is in port/)."""

import random

import pytest
from amaranth.sim import Simulator

from firmware.abi.entry import Kind, Mode, Status, entry_bytes, unpack
from firmware.abi.regmap import EVENTS
from hdl.journal_port import COUNTERS, JournalPort, counters_markdown

BLOCK = 64
WORDS = BLOCK // 8


def _run(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(8e-9)
    sim.add_testbench(bench)
    sim.run()


def test_counters_table():
    names = [c[0] for c in COUNTERS]
    assert len(names) == len(set(names))
    assert "| `entries_written` | 32 | RO |" in counters_markdown()


def test_every_counter_is_an_output():
    """The register map's counter table (firmware.abi.regmap) names outputs of JournalPort: a
    one-bit event pulse for the counted ones (`EVENTS`), the value itself for the rest."""
    from amaranth.hdl import Shape
    from amaranth.lib.wiring import Out

    port = JournalPort(block_bytes=BLOCK, depth=8)
    port._MustUse__silence = True    # inspected, not elaborated
    members = port.signature.members
    for name, width, _, _ in COUNTERS:
        assert name in members and members[name].flow == Out
        assert Shape.cast(members[name].shape).width == (1 if name in EVENTS else width)


def test_rejects_bad_geometry():
    with pytest.raises(ValueError, match="power of two"):
        JournalPort(depth=12)
    with pytest.raises(ValueError, match="datapath_bits"):
        JournalPort(datapath_bits=128)


@pytest.mark.parametrize("mode", [Mode.REDO, Mode.COPY_ON_WRITE])
def test_writes_are_journaled_and_flushed(mode):
    """A few writes, storage always ready and OK, a flush command: entries are byte-exact."""
    rng = random.Random(mode)
    dut = JournalPort(port=5, block_bytes=BLOCK, depth=8)
    old = {lba: rng.randbytes(BLOCK) for lba in range(4)}
    writes = [(lba, rng.randbytes(BLOCK)) for lba in (2, 0, 3)]
    out = []

    async def bench(ctx):
        ctx.set(dut.mode, mode)
        ctx.set(dut.flush.ready, 1)
        ctx.set(dut.pri_write.ready, 1)
        for cycle in range(2000):
            ctx.set(dut.time, 1000 + 8 * cycle)
            # ingress: one request at a time, from a queue of beats
            if not hasattr(bench, "beats"):
                bench.beats = []
                for lba, data in writes:
                    bench.beats.append((lba, 1, 0))
                    bench.beats += [(int.from_bytes(data[i:i + 8], "little"), 0, i == BLOCK - 8)
                                    for i in range(0, BLOCK, 8)]
                bench.pending = []       # write completions owed
                bench.reads = []         # pre-image beats owed
                bench.words = []
            if bench.beats:
                d, f, last = bench.beats[0]
                ctx.set(dut.ingress.valid, 1)
                ctx.set(dut.ingress.payload, {"data": d, "first": f, "last": last})
            else:
                ctx.set(dut.ingress.valid, 0)
            ctx.set(dut.pri_wresp.valid, bool(bench.pending))
            ctx.set(dut.pri_rcmd.ready, 1)
            if bench.reads:
                ctx.set(dut.pri_rdata.valid, 1)
                ctx.set(dut.pri_rdata.payload, {"data": bench.reads[0], "last": len(bench.reads) == 1,
                                                "ok": 1})
            else:
                ctx.set(dut.pri_rdata.valid, 0)
            ctx.set(dut.pri_wresp.payload.ok, 1)
            ctx.set(dut.flush_cmd, cycle == 1500)
            ing = ctx.get(dut.ingress.valid) and ctx.get(dut.ingress.ready)
            wr = ctx.get(dut.pri_write.valid) and ctx.get(dut.pri_write.ready)
            wr_last = ctx.get(dut.pri_write.payload.last)
            resp = ctx.get(dut.pri_wresp.valid) and ctx.get(dut.pri_wresp.ready)
            rcmd = ctx.get(dut.pri_rcmd.valid) and ctx.get(dut.pri_rcmd.ready)
            rcmd_lba = ctx.get(dut.pri_rcmd.payload.lba)
            rd = ctx.get(dut.pri_rdata.valid) and ctx.get(dut.pri_rdata.ready)
            fl = ctx.get(dut.flush.valid) and ctx.get(dut.flush.ready)
            fl_beat = ctx.get(dut.flush.payload)
            await ctx.tick()
            if ing:
                bench.beats.pop(0)
            if wr and wr_last:
                bench.pending.append(1)
            if resp:
                bench.pending.pop(0)
            if rcmd:
                blk = old[rcmd_lba]
                bench.reads += [int.from_bytes(blk[i:i + 8], "little") for i in range(0, BLOCK, 8)]
            if rd:
                bench.reads.pop(0)
            if fl:
                bench.words.append(fl_beat.data)
                if fl_beat.last:
                    out.append(b"".join(w.to_bytes(8, "little") for w in bench.words))
                    bench.words = []
        assert ctx.get(dut.entries_written) == 3
        assert ctx.get(dut.flushed) == 3

    _run(dut, bench)
    assert len(out) == 3
    for seq, (raw, (lba, data)) in enumerate(zip(out, writes, strict=True)):
        assert len(raw) == entry_bytes(BLOCK)
        fields, got = unpack(raw)
        assert fields["seq"] == seq and fields["port"] == 5 and fields["lba"] == lba
        assert fields["mode"] == mode and fields["status"] == Status.OK
        assert fields["kind"] == Kind.WRITE
        assert got == (data if mode == Mode.REDO else old[lba])
