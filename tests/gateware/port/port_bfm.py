"""Bus functional model of a JournalPort under Verilator: one coroutine per clock, all interfaces.

One loop wakes twice per cycle: after the rising edge it applies the transfers decided in the
last cycle and drives the inputs of the next one; in the read-only phase it samples which
streams will transfer at the coming edge (valid and ready both high). The pyuvm agents talk to
it through queues (what to drive) and callbacks (what was seen), as in pyuvm's TinyALU BFM.

Back-pressure: each cycle the storage agent decides `pri_write.ready` and `pri_rcmd.ready`
(`storage_ready`) and the flush-sink agent `flush.ready` (`sink_ready`); a transfer is sampled
only when valid and ready are both high. The BFM also keeps what the scoreboard compares the
port's counters with: the pulses it drove, the ring-full stalls it saw at ingress, the stray
data beats it injected, and per cycle the ring fill and the acknowledges it delivered.
"""

from collections import Counter, deque
from dataclasses import dataclass, field

import cocotb
from cocotb.clock import Clock
from cocotb.queue import Queue
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

NS_PER_CYCLE = 8
TIME_ORIGIN = 1_000_000


@dataclass
class WriteTxn:
    """A request as accepted at ingress."""
    lba: int
    data: bytes
    mode: int
    accept_time: int = 0
    kind: str = "write"      # or "reenable" (a control event kept in ingress order)


@dataclass
class StorageOp:
    op: str                  # "read" or "write"
    lba: int
    data: bytes
    ok: bool


@dataclass
class FlushedEntry:
    raw: bytes
    trigger: int
    cycle: int


@dataclass
class Pending:
    due: int
    payload: object = None


@dataclass
class BfmState:
    cycle: int = 0
    ingress: deque = field(default_factory=deque)     # beats (data, first, last, mode); mode None: stray
    wresp: deque = field(default_factory=deque)       # Pending(due, ok)
    rdata: deque = field(default_factory=deque)       # Pending(due, (data, last, ok))
    acks: deque = field(default_factory=deque)        # seq numbers to send


class PortBfm:
    def __init__(self, dut, *, block_bytes: int, width: int = 64):
        self.dut = dut
        self.block_bytes = block_bytes
        self.width = width
        self.words = block_bytes * 8 // width
        self.s = BfmState()
        self.ingress_mon = Queue()
        self.storage_mon = Queue()
        self.flush_mon = Queue()
        self.on_write = None     # (lba, data) -> (ok, latency): the storage responder
        self.on_read = None      # lba -> (data, ok, latency)
        self._trigger = 0
        self.pulses = set()      # names of 1-cycle inputs to raise next cycle
        self.storage_ready = lambda port: True   # port: "write" or "rcmd"; set by the storage agent
        self.sink_ready = lambda: True           # set by the flush-sink agent
        self.ring_depth = 1 << 30   # set by the env: ring_fill at this value means full
        # What the scoreboard checks the port's counters against.
        self.pulses_driven = Counter()   # cycles each pulse input was high
        self.stall_cycles = 0            # a request's header waited, ring full, port valid
        self.stall_events = 0            # runs of such cycles
        self.strays_sent = 0             # data beats outside a request, injected
        self.strays_accepted = 0         # ... and taken by the port
        self.backpressure = Counter()    # cycles an output was valid and its ready low
        self.fill_samples = []           # (time, ring_fill, draining) every cycle
        self.ack_log = []                # (time, seq) of every acknowledge transferred

    # --- driver-side API ---------------------------------------------------------------------
    def send_write(self, lba: int, data: bytes, mode: int):
        step = self.width // 8
        self.s.ingress.append((lba, 1, 0, mode))
        for i in range(0, len(data), step):
            self.s.ingress.append((int.from_bytes(data[i:i + step], "little"), 0,
                                   int(i + step == len(data)), mode))

    def send_stray(self, data: int, last: int):
        """A data beat outside any request: the port must drop it and count a protocol error."""
        self.s.ingress.append((data, 0, last, None))
        self.strays_sent += 1

    async def idle(self, cycles: int = 1):
        await ClockCycles(self.dut.clk, cycles)

    async def ingress_drained(self):
        while self.s.ingress:
            await RisingEdge(self.dut.clk)

    async def completions_taken(self):
        """Every primary write issued so far has had its completion taken by the port, and the
        ring has recorded it (its status writes land a cycle later)."""
        while self.s.wresp:
            await RisingEdge(self.dut.clk)
        await ClockCycles(self.dut.clk, 3)

    async def flush_idle(self):
        """The flush engine is not draining."""
        while int(self.dut.draining.value):
            await RisingEdge(self.dut.clk)

    def pulse(self, name: str):
        self.pulses.add(name)

    def ack(self, seq: int):
        self.s.acks.append(seq)

    def set(self, **regs):
        for name, value in regs.items():
            getattr(self.dut, name).value = value

    # --- the clock loop ----------------------------------------------------------------------
    async def start(self):
        dut = self.dut
        cocotb.start_soon(Clock(dut.clk, NS_PER_CYCLE, unit="ns").start())
        for name in ("ingress__valid", "pri_wresp__valid", "pri_rdata__valid", "ack__valid",
                     "flush_cmd", "resend", "reenable", "mode", "policy", "watermark",
                     "timer_period"):
            getattr(dut, name).value = 0
        dut.pri_write__ready.value = 0
        dut.pri_rcmd__ready.value = 0
        dut.flush__ready.value = 0
        dut.time.value = TIME_ORIGIN
        dut.rst.value = 1
        await ClockCycles(dut.clk, 2)
        dut.rst.value = 0
        cocotb.start_soon(self._loop())

    async def _loop(self):
        dut, s, w = self.dut, self.s, self.width
        mask = (1 << w) - 1
        wr_words, fl_words = [], []
        wr_lba = 0
        ing_header_time = 0
        ing_words, ing_lba, ing_mode = [], 0, 0
        sampled = {}
        prev_stalled, prev_fill, ing_valid = False, 0, False
        while True:
            await RisingEdge(dut.clk)
            s.cycle += 1
            now = TIME_ORIGIN + NS_PER_CYCLE * s.cycle
            # 1. transfers that happened at this edge
            if sampled.get("ing"):
                d, first, last, mode = s.ingress.popleft()
                if mode is None:
                    self.strays_accepted += 1
                elif first:
                    ing_lba, ing_mode, ing_words = d, mode, []
                    ing_header_time = sampled["time"]
                else:
                    ing_words.append(d)
                    if last:
                        data = b"".join(x.to_bytes(w // 8, "little") for x in ing_words)
                        self.ingress_mon.put_nowait(WriteTxn(ing_lba, data, ing_mode, ing_header_time))
            if sampled.get("wr"):
                beat = sampled["wr_beat"]
                if beat >> w & 1:
                    wr_lba, wr_words = beat & mask, []
                else:
                    wr_words.append(beat & mask)
                    if beat >> (w + 1) & 1:
                        data = b"".join(x.to_bytes(w // 8, "little") for x in wr_words)
                        ok, latency = self.on_write(wr_lba, data)
                        self.storage_mon.put_nowait(StorageOp("write", wr_lba, data, ok))
                        due = max(s.cycle + latency, s.wresp[-1].due if s.wresp else 0)
                        s.wresp.append(Pending(due, ok))
            if sampled.get("wresp"):
                s.wresp.popleft()
            if sampled.get("rcmd"):
                lba = sampled["rcmd_lba"]
                data, ok, latency = self.on_read(lba)
                self.storage_mon.put_nowait(StorageOp("read", lba, data, ok))
                due = max(s.cycle + latency, s.rdata[-1].due if s.rdata else 0)
                step = w // 8
                for i in range(0, len(data), step):
                    last = i + step == len(data)
                    s.rdata.append(Pending(due, (int.from_bytes(data[i:i + step], "little"), last,
                                                 ok or not last)))
            if sampled.get("rd"):
                s.rdata.popleft()
            if sampled.get("fl"):
                beat = sampled["fl_beat"]
                if beat >> w & 1:
                    fl_words = []
                    self._trigger = sampled["trigger"]
                fl_words.append(beat & mask)
                if beat >> (w + 1) & 1:
                    raw = b"".join(x.to_bytes(w // 8, "little") for x in fl_words)
                    self.flush_mon.put_nowait(FlushedEntry(raw, self._trigger, s.cycle))
            if sampled.get("ack"):
                self.ack_log.append((sampled["time"], s.acks.popleft()))
            # 2. drive the next cycle
            dut.time.value = now
            ing_valid = bool(s.ingress)     # the driver may queue more before ReadOnly
            if ing_valid:
                d, first, last, mode = s.ingress[0]
                dut.ingress__payload.value = d | first << w | last << (w + 1)
                dut.ingress__valid.value = 1
                if first:
                    dut.mode.value = mode
            else:
                dut.ingress__valid.value = 0
            resp_due = bool(s.wresp) and s.wresp[0].due <= s.cycle
            dut.pri_wresp__valid.value = resp_due
            if resp_due:
                dut.pri_wresp__payload.value = int(s.wresp[0].payload)
            rd_due = bool(s.rdata) and s.rdata[0].due <= s.cycle
            dut.pri_rdata__valid.value = rd_due
            if rd_due:
                d, last, ok = s.rdata[0].payload
                dut.pri_rdata__payload.value = d | int(last) << w | int(ok) << (w + 1)
            dut.ack__valid.value = bool(s.acks)
            if s.acks:
                dut.ack__payload.value = s.acks[0]
            for name in ("flush_cmd", "resend", "reenable"):
                getattr(dut, name).value = int(name in self.pulses)
            self.pulses_driven.update(self.pulses)
            self.pulses.clear()
            wr_ready, rcmd_ready, fl_ready = (self.storage_ready("write"), self.storage_ready("rcmd"),
                                              self.sink_ready())
            dut.pri_write__ready.value = int(wr_ready)
            dut.pri_rcmd__ready.value = int(rcmd_ready)
            dut.flush__ready.value = int(fl_ready)
            # 3. what transfers at the next edge
            await ReadOnly()
            sampled = {"time": now}
            if ing_valid and dut.ingress__ready.value:
                sampled["ing"] = True
            if dut.pri_write__valid.value:
                if wr_ready:
                    sampled["wr"] = True
                    sampled["wr_beat"] = int(dut.pri_write__payload.value)
                else:
                    self.backpressure["pri_write"] += 1
            if resp_due and dut.pri_wresp__ready.value:
                sampled["wresp"] = True
            if dut.pri_rcmd__valid.value:
                if rcmd_ready:
                    sampled["rcmd"] = True
                    sampled["rcmd_lba"] = int(dut.pri_rcmd__payload.value)
                else:
                    self.backpressure["pri_rcmd"] += 1
            if rd_due and dut.pri_rdata__ready.value:
                sampled["rd"] = True
            if dut.flush__valid.value:
                if fl_ready:
                    sampled["fl"] = True
                    sampled["fl_beat"] = int(dut.flush__payload.value)
                    sampled["trigger"] = int(dut.flush_trigger.value)
                else:
                    self.backpressure["flush"] += 1
            if s.acks:
                sampled["ack"] = True
            # Ring-full stall: a header waits, the ring holds `depth` entries, the port is valid
            # (an invalid port forwards), and the fill did not just rise (that is the cycle the
            # port writes a PORT_INVALID marker into its last slot: not a stall).
            fill, draining = int(dut.ring_fill.value), int(dut.draining.value)
            self.fill_samples.append((now, fill, draining))
            stalled = (ing_valid and not sampled.get("ing") and s.ingress[0][1] == 1
                       and s.ingress[0][3] is not None and fill == self.ring_depth
                       and fill <= prev_fill and not int(dut.invalid.value))
            self.stall_cycles += stalled
            self.stall_events += stalled and not prev_stalled
            prev_stalled, prev_fill = stalled, fill
