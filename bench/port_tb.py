"""cocotb side of `bench/port.py`: back-to-back redo writes while the flush engine drains them
(watermark 1) and the host acknowledges each entry as its last beat arrives; counts cycles."""

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
    entry_words = (32 + block + 8) * 8 // WIDTH
    rng = random.Random(1)
    cocotb.start_soon(Clock(dut.clk, 8, unit="ns").start())
    for name in ("ingress__valid", "pri_wresp__valid", "pri_rdata__valid", "ack__valid", "flush_cmd",
                 "resend", "reenable", "mode", "policy", "timer_period"):
        getattr(dut, name).value = 0
    dut.watermark.value = 1                 # drain as soon as an entry is in the ring
    dut.pri_write__ready.value = dut.pri_rcmd__ready.value = dut.flush__ready.value = 1
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0

    beats = []
    for _ in range(writes):
        beats.append(rng.randrange(1 << 32) | 1 << WIDTH)                       # header: lba
        beats += [rng.getrandbits(WIDTH) | int(i == words - 1) << (WIDTH + 1) for i in range(words)]
    # Storage always ready, every write completes OK the cycle after its last beat; the sink is
    # always ready and acknowledges every entry the cycle after its last beat.
    total = writes * entry_words
    cycle, i, completions, data_beats, out_beats, acks = 0, 0, 0, 0, 0, []
    ing_first = ing_last = fl_first = fl_last = None
    accepted = wresp_taken = fl_beat = ack_taken = False
    stalls = 0
    while i < len(beats) or completions or out_beats < total:
        await RisingEdge(dut.clk)
        cycle += 1
        if accepted:
            if beats[i] >> WIDTH & 1 == 0:
                data_beats += 1
                ing_first = cycle if ing_first is None else ing_first
                ing_last = cycle
                if beats[i] >> (WIDTH + 1) & 1:
                    completions += 1
            i += 1
        if wresp_taken:
            completions -= 1
        if fl_beat:
            out_beats += 1
            fl_first = cycle if fl_first is None else fl_first
            fl_last = cycle
            if out_beats % entry_words == 0:
                acks.append(out_beats // entry_words - 1)
        if ack_taken:
            acks.pop(0)
        dut.ingress__valid.value = i < len(beats)
        if i < len(beats):
            dut.ingress__payload.value = beats[i]
        dut.pri_wresp__valid.value = completions > 0
        dut.pri_wresp__payload.value = 1
        dut.ack__valid.value = bool(acks)
        if acks:
            dut.ack__payload.value = acks[0]
        await ReadOnly()
        accepted = i < len(beats) and bool(dut.ingress__ready.value)
        stalls += i < len(beats) and not accepted and beats[i] >> WIDTH & 1
        wresp_taken = completions > 0 and bool(dut.pri_wresp__ready.value)
        fl_beat = bool(dut.flush__valid.value)
        ack_taken = bool(acks) and bool(dut.ack__ready.value)
        if cycle > 100 * total:
            raise AssertionError(f"no progress: {data_beats} data beats in, {out_beats} flush beats out")
    result = {"writes": writes, "data_beats": data_beats, "ingress_cycles": ing_last - ing_first + 1,
              "flush_beats": out_beats, "flush_cycles": fl_last - fl_first + 1,
              "written": int(dut.entries_written.value), "stall_cycles": int(dut.stall_cycles.value),
              "header_waits": stalls}
    with open(os.environ["PORT_BENCH_OUT"], "w") as f:
        json.dump(result, f)
