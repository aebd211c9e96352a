"""cocotb side of `bench/port.py`: back-to-back redo writes, then one drain; counts cycles."""

import json
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

WIDTH = 64


@cocotb.test()
async def measure(dut):
    block, writes = int(os.environ["PORT_BLOCK"]), int(os.environ["PORT_WRITES"])
    words = block * 8 // WIDTH
    rng = random.Random(1)
    cocotb.start_soon(Clock(dut.clk, 8, unit="ns").start())
    for name in ("ingress__valid", "pri_wresp__valid", "pri_rdata__valid", "ack__valid", "flush_cmd",
                 "resend", "reenable", "mode", "policy", "watermark", "timer_period"):
        getattr(dut, name).value = 0
    dut.pri_write__ready.value = dut.pri_rcmd__ready.value = dut.flush__ready.value = 1
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0

    beats = []
    for _ in range(writes):
        beats.append(rng.randrange(1 << 32) | 1 << WIDTH)                       # header: lba
        beats += [rng.getrandbits(WIDTH) | int(i == words - 1) << (WIDTH + 1) for i in range(words)]
    # Ingress: storage always ready, every write completes OK the cycle after its last beat.
    cycle, first_cycle, data_beats, completions, accepted, wresp_taken = 0, None, 0, 0, False, False
    last_cycle = 0
    i = 0
    while i < len(beats) or completions:
        await RisingEdge(dut.clk)
        cycle += 1
        if accepted:
            if beats[i] >> WIDTH & 1 == 0:
                data_beats += 1
                if beats[i] >> (WIDTH + 1) & 1:
                    completions += 1
                    last_cycle = cycle
            first_cycle = cycle if first_cycle is None else first_cycle
            i += 1
        if wresp_taken:
            completions -= 1
        dut.ingress__valid.value = i < len(beats)
        if i < len(beats):
            dut.ingress__payload.value = beats[i]
        dut.pri_wresp__valid.value = completions > 0
        dut.pri_wresp__payload.value = 1
        await ReadOnly()
        accepted = i < len(beats) and bool(dut.ingress__ready.value)
        wresp_taken = completions > 0 and bool(dut.pri_wresp__ready.value)
    ingress_cycles = last_cycle - first_cycle + 1
    # Drain: one flush command, count output beats per cycle from the first beat to the last.
    await RisingEdge(dut.clk)
    dut.flush_cmd.value = 1
    await RisingEdge(dut.clk)
    dut.flush_cmd.value = 0
    entry_words = (32 + block + 8) * 8 // WIDTH
    total, out_beats, start, end = writes * entry_words, 0, None, None
    cycle = 0
    while out_beats < total:
        await RisingEdge(dut.clk)
        cycle += 1
        await ReadOnly()
        if dut.flush__valid.value:
            out_beats += 1
            start = cycle if start is None else start
            end = cycle
    result = {"writes": writes, "data_beats": data_beats, "ingress_cycles": ingress_cycles,
              "flush_beats": out_beats, "flush_cycles": end - start + 1,
              "written": int(dut.entries_written.value)}
    with open(os.environ["PORT_BENCH_OUT"], "w") as f:
        json.dump(result, f)
