"""pyuvm environment for JournalPort: agents for ingress, primary storage and the flush sink
(a host that acknowledges late, drops acknowledges, loses entries and asks for resends), a
scoreboard against a Python reference model of the port, and functional coverage whose bins
must all be hit. Run by `test_port.py` under Verilator; geometry comes from PORT_* variables.
"""

import os
import random
from bisect import bisect_left

import cocotb
import pyuvm
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge, SimTimeoutError, with_timeout
from port_bfm import NS_PER_CYCLE, TIME_ORIGIN, FlushedEntry, PortBfm, StorageOp, WriteTxn
from pyuvm import (
    ConfigDB,
    uvm_analysis_port,
    uvm_component,
    uvm_driver,
    uvm_env,
    uvm_monitor,
    uvm_scoreboard,
    uvm_sequence,
    uvm_sequence_item,
    uvm_sequencer,
    uvm_subscriber,
    uvm_test,
    uvm_tlm_analysis_fifo,
)

from firmware.abi.entry import HEADER_BYTES, TRAILER_BYTES, Kind, Mode, Status, pack, unpack
from hdl.flush import FlushTrigger

BLOCK = int(os.environ.get("PORT_BLOCK", "64"))
DEPTH = int(os.environ.get("PORT_DEPTH", "8"))
WRITES = int(os.environ.get("PORT_WRITES", "240"))
PORT = int(os.environ.get("PORT_INDEX", "3"))
LBAS = 24
WORDS = BLOCK // 8
# Simulation-time budgets (cycles): a bug that stalls the port (say a resend that does not
# rewind, so the ring stays full and ingress waits forever) fails the test within seconds with
# the port's state in the message, instead of hanging the run. Generous: a passing run uses
# about a quarter of the scenario budget and a few thousand cycles to settle.
SCENARIO_CYCLES = 8000 + 12 * WRITES * (WORDS + 6)
SETTLE_CYCLES = 40_000
TEST_TIMEOUT_NS = NS_PER_CYCLE * 2 * (SCENARIO_CYCLES + SETTLE_CYCLES)   # backstop for the test


def initial_disk(seed: int) -> dict[int, bytes]:
    rng = random.Random(seed)
    return {lba: rng.randbytes(BLOCK) for lba in range(LBAS)}


def seq_of(raw: bytes) -> int:
    return int.from_bytes(raw[:4], "little")


# --- sequence items and sequences ------------------------------------------------------------

class WriteItem(uvm_sequence_item):
    def __init__(self, name="write", lba=0, data=b"", mode=Mode.REDO):
        super().__init__(name)
        self.lba, self.data, self.mode = lba, data, mode

    def __str__(self):
        return f"write lba={self.lba} mode={Mode(self.mode).name}"


class ReenableItem(uvm_sequence_item):
    """Host re-enables an invalid port once the ingress is quiet."""


class StrayItem(uvm_sequence_item):
    """A data beat outside any request (a protocol error the port must count and drop)."""

    def __init__(self, name="stray", data=0, last=0):
        super().__init__(name)
        self.data, self.last = data, last


class WriteSeq(uvm_sequence):
    """`count` writes of random blocks to random addresses; mode fixed or random per write. With
    probability `stray` a stray data beat goes in before a write."""

    def __init__(self, name="writes", count=10, mode=None, seed=0, stray=0.0):
        super().__init__(name)
        self.count, self.mode, self.rng, self.stray = count, mode, random.Random(seed), stray

    async def body(self):
        for _ in range(self.count):
            if self.rng.random() < self.stray:
                item = StrayItem(data=self.rng.getrandbits(64), last=self.rng.getrandbits(1))
                await self.start_item(item)
                await self.finish_item(item)
            mode = self.mode if self.mode is not None else self.rng.choice(list(Mode))
            item = WriteItem(lba=self.rng.randrange(LBAS), data=self.rng.randbytes(BLOCK), mode=mode)
            await self.start_item(item)
            await self.finish_item(item)


class StraySeq(uvm_sequence):
    def __init__(self, name="strays", count=1, seed=0):
        super().__init__(name)
        self.count, self.rng = count, random.Random(seed)

    async def body(self):
        for _ in range(self.count):
            item = StrayItem(data=self.rng.getrandbits(64), last=self.rng.getrandbits(1))
            await self.start_item(item)
            await self.finish_item(item)


class ReenableSeq(uvm_sequence):
    async def body(self):
        item = ReenableItem("reenable")
        await self.start_item(item)
        await self.finish_item(item)


# --- ingress agent ---------------------------------------------------------------------------

class IngressDriver(uvm_driver):
    def connect_phase(self):
        self.bfm = ConfigDB().get(self, "", "BFM")

    async def run_phase(self):
        bfm = self.bfm
        while True:
            item = await self.seq_item_port.get_next_item()
            if isinstance(item, ReenableItem):
                await bfm.ingress_drained()
                await bfm.idle(20)
                bfm.pulse("reenable")
                await bfm.idle(2)
                bfm.ingress_mon.put_nowait(WriteTxn(0, b"", 0, kind="reenable"))
            elif isinstance(item, StrayItem):
                bfm.send_stray(item.data, item.last)
            else:
                while len(bfm.s.ingress) > 4 * (bfm.words + 1):   # keep the queue short
                    await RisingEdge(bfm.dut.clk)
                bfm.send_write(item.lba, item.data, item.mode)
            self.seq_item_port.item_done()


class QueueMonitor(uvm_monitor):
    """Publishes what one BFM queue reports (ingress requests, storage ops, flushed entries)."""

    def __init__(self, name, parent, queue_name):
        super().__init__(name, parent)
        self.queue_name = queue_name

    def build_phase(self):
        self.ap = uvm_analysis_port("ap", self)

    def connect_phase(self):
        self.queue = getattr(ConfigDB().get(self, "", "BFM"), self.queue_name)

    async def run_phase(self):
        while True:
            self.ap.write(await self.queue.get())


class IngressAgent(uvm_component):
    def build_phase(self):
        self.seqr = uvm_sequencer("seqr", self)
        self.driver = IngressDriver("driver", self)
        self.monitor = QueueMonitor("monitor", self, "ingress_mon")

    def connect_phase(self):
        self.driver.seq_item_port.connect(self.seqr.seq_item_export)


# --- primary storage agent -------------------------------------------------------------------

class StorageResponder(uvm_component):
    """The primary storage: a disk image, completion latency, injected failures and back-pressure.

    A failed pre-image read returns zero blocks with `ok` low on its last beat; a failed write
    leaves the disk unchanged. Both are decided when the command (or its last data beat) is seen.
    Each cycle `pri_write.ready` and `pri_rcmd.ready` are low with probability `busy`.
    """

    def build_phase(self):
        cfg = ConfigDB().get(self, "", "STORAGE")
        self.rng = random.Random(cfg["seed"])
        self.ready_rng = random.Random(cfg["seed"] + 100)
        self.write_fail, self.read_fail = cfg["write_fail"], cfg["read_fail"]
        self.latency, self.busy = cfg["latency"], cfg["busy"]
        self.disk = initial_disk(cfg["disk_seed"])

    def connect_phase(self):
        bfm = ConfigDB().get(self, "", "BFM")
        bfm.on_write, bfm.on_read = self.write, self.read
        bfm.storage_ready = self.ready

    def ready(self, port):
        return self.ready_rng.random() >= self.busy

    def write(self, lba, data):
        ok = self.rng.random() >= self.write_fail
        if ok:
            self.disk[lba] = data
        return ok, self.rng.randint(*self.latency)

    def read(self, lba):
        ok = self.rng.random() >= self.read_fail
        return (self.disk[lba] if ok else bytes(BLOCK)), ok, self.rng.randint(*self.latency)


class StorageAgent(uvm_component):
    def build_phase(self):
        self.responder = StorageResponder("responder", self)
        self.monitor = QueueMonitor("monitor", self, "storage_mon")


# --- flush sink agent: the host side of the link ---------------------------------------------

class HostDriver(uvm_component):
    """Receives entries like the host: stores them in seq order, acknowledges late (and drops
    some acknowledges), treats some entries as lost (a corrupted frame) and then asks for a
    resend (go-back-N: later entries are discarded until the gap is refilled). Each cycle
    `flush.ready` is low with probability `busy` (the link is slower than the port)."""

    def build_phase(self):
        cfg = ConfigDB().get(self, "", "HOST")
        self.rng = random.Random(cfg["seed"])
        self.ready_rng = random.Random(cfg["seed"] + 100)
        self.busy = cfg["busy"]
        self.loss, self.ack_drop, self.ack_every = cfg["loss"], cfg["ack_drop"], cfg["ack_every"]
        self.repeat = cfg.get("repeat", 0.0)        # chance a resend request is sent twice
        self.fifo = uvm_tlm_analysis_fifo("fifo", self)
        self.stored: dict[int, bytes] = {}
        self.next_seq = 0
        self.last_seen = -1
        self.resend_issued = False
        self.acks_paused = False
        self.acked = -1

    def connect_phase(self):
        self.bfm = ConfigDB().get(self, "", "BFM")
        self.bfm.sink_ready = lambda: self.ready_rng.random() >= self.busy

    async def run_phase(self):
        cocotb.start_soon(self.acknowledge())
        while True:
            entry: FlushedEntry = await self.fifo.get()
            seq = seq_of(entry.raw)
            if seq <= self.last_seen:
                self.resend_issued = False          # the rewind took effect
            self.last_seen = seq
            if seq == self.next_seq and self.rng.random() >= self.loss:
                self.stored[seq] = entry.raw
                self.next_seq += 1
                self.resend_issued = False
            elif seq >= self.next_seq and not self.resend_issued:
                self.bfm.pulse("resend")            # lost, or a gap after a loss
                self.resend_issued = True
                if self.rng.random() < self.repeat:
                    cocotb.start_soon(self.repeat_resend(self.rng.randint(2, 8)))

    async def repeat_resend(self, cycles):
        """The host asks again before the rewind (its request timer fired): both count."""
        await ClockCycles(self.bfm.dut.clk, cycles)
        self.bfm.pulse("resend")

    async def acknowledge(self):
        while True:
            await ClockCycles(self.bfm.dut.clk, self.rng.randint(*self.ack_every))
            upto = self.next_seq - 1
            if self.acks_paused or upto <= self.acked:
                continue
            if self.rng.random() < self.ack_drop:
                continue                             # an acknowledge lost on the link
            self.bfm.ack(upto)
            self.acked = upto

    def configure(self, *, watermark=0, timer_period=0):
        self.bfm.set(watermark=watermark, timer_period=timer_period)

    def flush_now(self):
        self.bfm.pulse("flush_cmd")


class FlushSinkAgent(uvm_component):
    def build_phase(self):
        self.monitor = QueueMonitor("monitor", self, "flush_mon")
        self.host = HostDriver("host", self)

    def connect_phase(self):
        self.monitor.ap.connect(self.host.fifo.analysis_export)


# --- reference model, scoreboard, coverage ---------------------------------------------------

class PortModel:
    """What the port must have journaled, from the requests and the storage outcomes.

    Walks the ingress requests in order and the storage operations in order: redo journals the
    new block, copy-on-write the pre-image from its own copy of the disk (a failed read gives
    JOURNAL_FAILED and no primary write); the write's outcome gives OK/PRIMARY_FAILED. A marker
    may appear only under the invalidate policy, just before the first write it did not
    journal; writes are then not journaled until a re-enable.
    """

    def __init__(self, *, port, policy, disk):
        self.port, self.policy, self.disk = port, policy, dict(disk)
        self.counts = {"primary_failures": 0, "journal_failures": 0, "unjournaled": 0, "markers": 0}

    def expected(self, requests: list[WriteTxn], ops: list[StorageOp], got: dict[int, bytes]):
        ops = list(ops)
        out, invalid, prev_ts = [], False, 0

        def take(op, lba):
            assert ops, f"no storage {op} for lba {lba}"
            o = ops.pop(0)
            assert (o.op, o.lba) == (op, lba), f"expected a {op} of lba {lba}, storage saw {o}"
            return o

        for req in requests:
            if req.kind == "reenable":
                invalid = False
                continue
            seq = len(out)
            raw = got.get(seq)
            if not invalid and raw is not None and unpack(raw)[0]["kind"] == Kind.PORT_INVALID:
                assert self.policy == 1, "a marker under the back-pressure policy"
                fields = unpack(raw)[0]
                assert fields["lba"] == req.lba, "marker does not name the first unjournaled write"
                assert prev_ts <= fields["timestamp"] <= req.accept_time, "marker time out of order"
                out.append(pack(seq=seq, port=self.port, mode=fields["mode"], status=Status.OK,
                                kind=Kind.PORT_INVALID, timestamp=fields["timestamp"], lba=req.lba))
                self.counts["markers"] += 1
                invalid = True
            if invalid:
                o = take("write", req.lba)
                assert o.data == req.data
                self.counts["unjournaled"] += 1
                self.counts["primary_failures"] += not o.ok
                if o.ok:
                    self.disk[req.lba] = req.data
                continue
            status = Status.OK
            if req.mode == Mode.COPY_ON_WRITE:
                r = take("read", req.lba)
                data = self.disk[req.lba] if r.ok else bytes(BLOCK)
                if not r.ok:
                    status = Status.JOURNAL_FAILED
                    self.counts["journal_failures"] += 1
            else:
                data = req.data
            if status != Status.JOURNAL_FAILED:
                o = take("write", req.lba)
                assert o.data == req.data, f"primary write of lba {req.lba} carries other data"
                if o.ok:
                    self.disk[req.lba] = req.data
                else:
                    status = Status.PRIMARY_FAILED
                    self.counts["primary_failures"] += 1
            out.append(pack(seq=seq, port=self.port, mode=req.mode, status=status, kind=Kind.WRITE,
                            timestamp=req.accept_time, lba=req.lba, data=data))
            prev_ts = req.accept_time
        assert not ops, f"{len(ops)} storage operations not explained by any request: {ops[:3]}"
        return out


class Scoreboard(uvm_scoreboard):
    def build_phase(self):
        self.ingress = uvm_tlm_analysis_fifo("ingress", self)
        self.storage = uvm_tlm_analysis_fifo("storage", self)
        self.wire = uvm_tlm_analysis_fifo("wire", self)
        self.policy = ConfigDB().get(self, "", "POLICY")
        self.disk_seed = ConfigDB().get(self, "", "STORAGE")["disk_seed"]

    def check_phase(self):
        requests = self._drain(self.ingress)
        ops = self._drain(self.storage)
        received: dict[int, bytes] = {}
        highest = -1
        wire = self._drain(self.wire)
        for entry in wire:
            seq = seq_of(entry.raw)
            unpack(entry.raw)                             # CRC, length, pad
            if seq in received:
                assert received[seq] == entry.raw, f"entry {seq} resent with other bytes"
            else:
                assert seq == highest + 1, f"entry {seq} arrived first after {highest}: lost or reordered"
                received[seq] = entry.raw
                highest = seq
        model = PortModel(port=PORT, policy=self.policy, disk=initial_disk(self.disk_seed))
        expected = model.expected(requests, ops, received)
        assert len(received) == len(expected), f"host has {len(received)} entries, model {len(expected)}"
        for seq, raw in enumerate(expected):
            if received[seq] != raw:
                got, want = unpack(received[seq]), unpack(raw)
                raise AssertionError(f"entry {seq}: got {got[0]} != expected {want[0]} "
                                     f"(data equal: {got[1] == want[1]})")
        bfm = ConfigDB().get(self, "", "BFM")
        dut = bfm.dut
        # Every counter against what the model and the agents saw.
        assert bfm.strays_accepted == bfm.strays_sent, "a stray data beat was not taken"
        want = {**model.counts,
                "entries_written": len(expected),
                "acknowledged": len(expected),
                "flushed": len(received),                      # first sends, in seq order
                "resent": len(wire) - len(received),           # entries the sink saw again
                "resend_requests": bfm.pulses_driven["resend"],
                "stall_cycles": bfm.stall_cycles,
                "stall_events": bfm.stall_events,
                "protocol_errors": bfm.strays_sent,
                "ring_fill": 0}
        counters = {name: int(getattr(dut, name).value) for name in want}
        wrong = {n: (counters[n], want[n]) for n in want if counters[n] != want[n]}
        assert not wrong, f"DUT counters differ (DUT, expected): {wrong}"
        exact = self.check_fill(bfm, expected)
        self.logger.info(f"{len(expected)} entries checked byte for byte; {len(requests)} requests; "
                         f"{len(wire)} entries on the wire; ring_fill matched the model in {exact} "
                         f"idle cycles; counters {counters}")

    @staticmethod
    def check_fill(bfm, entries):
        """`ring_fill` each cycle against the model: the ring's fill register holds the last
        cycle's pointers, so entries stamped before the last cycle (an entry's timestamp is its
        allocation cycle) minus those acknowledged before the cycle before that (the ring's
        tail follows the flush engine's a cycle later). Exact while the flush engine is idle;
        while it drains, and the cycle after (the register still holds the draining cycle's
        pointers), the entry being read is held as well, so the fill may be higher (up to
        `depth`) but never lower."""
        alloc = [unpack(raw)[0]["timestamp"] for raw in entries]
        assert alloc == sorted(alloc), "entry timestamps out of order"
        acks, ai, acked, exact, was_draining = bfm.ack_log, 0, 0, 0, 0
        for now, fill, draining in bfm.fill_samples:
            while ai < len(acks) and acks[ai][0] + 2 * NS_PER_CYCLE < now:
                acked = max(acked, acks[ai][1] + 1)
                ai += 1
            want = bisect_left(alloc, now - NS_PER_CYCLE) - acked
            assert 0 <= want <= DEPTH, f"model fill {want} out of range at {now} ns"
            if draining or was_draining:
                assert want <= fill <= DEPTH, f"ring_fill {fill} at {now} ns, model at least {want}"
            else:
                assert fill == want, f"ring_fill {fill} at {now} ns (flush idle), model {want}"
                exact += 1
            was_draining = draining
        return exact

    @staticmethod
    def _drain(fifo):
        items = []
        while True:
            ok, item = fifo.try_get()
            if not ok:
                return items
            items.append(item)


class Coverage(uvm_subscriber):
    """Bins over flushed entries; ring-full back-pressure from the BFM. Empty bins fail."""

    def build_phase(self):
        self.required = set(ConfigDB().get(self, "", "BINS"))
        self.hit: dict[str, int] = {}
        self.seen: set[int] = set()

    def bump(self, name):
        self.hit[name] = self.hit.get(name, 0) + 1

    def write(self, entry: FlushedEntry):
        fields, _ = unpack(entry.raw)
        if fields["seq"] in self.seen:
            self.bump("resend")
        self.seen.add(fields["seq"])
        if fields["kind"] == Kind.PORT_INVALID:
            self.bump("marker")
            return
        self.bump(f"mode.{Mode(fields['mode']).name}")
        self.bump(f"status.{Status(fields['status']).name}")
        if fields["seq"] >= DEPTH:
            self.bump("ring_wrap")
        if entry.trigger:
            self.bump(f"trigger.{FlushTrigger(entry.trigger).name}")

    def report_phase(self):
        bfm = ConfigDB().get(self, "", "BFM")
        if bfm.stall_cycles:
            self.hit["ring_full_backpressure"] = bfm.stall_cycles
        for port, cycles in bfm.backpressure.items():
            self.hit[f"backpressure.{port}"] = cycles
        if bfm.strays_sent:
            self.hit["protocol_error"] = bfm.strays_sent
        self.logger.info("coverage: " + ", ".join(f"{k}={v}" for k, v in sorted(self.hit.items())))
        missing = sorted(self.required - set(self.hit))
        assert not missing, f"coverage bins not hit: {missing}"


class PortEnv(uvm_env):
    def build_phase(self):
        self.ingress = IngressAgent("ingress", self)
        self.storage = StorageAgent("storage", self)
        self.sink = FlushSinkAgent("sink", self)
        self.scoreboard = Scoreboard("scoreboard", self)
        self.coverage = Coverage("coverage", self)

    def connect_phase(self):
        self.ingress.monitor.ap.connect(self.scoreboard.ingress.analysis_export)
        self.storage.monitor.ap.connect(self.scoreboard.storage.analysis_export)
        self.sink.monitor.ap.connect(self.scoreboard.wire.analysis_export)
        self.sink.monitor.ap.connect(self.coverage.analysis_export)


# --- tests -----------------------------------------------------------------------------------

ALL_BINS = ["mode.REDO", "mode.COPY_ON_WRITE", "status.OK", "status.PRIMARY_FAILED",
            "status.JOURNAL_FAILED", "ring_wrap", "ring_full_backpressure", "trigger.WATERMARK",
            "trigger.TIMER", "trigger.COMMAND", "resend", "backpressure.pri_write",
            "backpressure.pri_rcmd", "backpressure.flush", "protocol_error"]


class BaseTest(uvm_test):
    policy = 0
    bins = ALL_BINS
    # busy: the probability that a ready (pri_write/pri_rcmd; flush) is low in a cycle.
    storage = {"write_fail": 0.08, "read_fail": 0.08, "latency": (1, 40), "busy": 0.2}
    host = {"loss": 0.03, "ack_drop": 0.2, "ack_every": (20, 200), "busy": 0.2, "repeat": 0.3}
    stray = 0.04       # chance of a stray data beat before each write

    def build_phase(self):
        seed = cocotb.RANDOM_SEED
        self.rng = random.Random(seed)
        self.bfm = PortBfm(cocotb.top, block_bytes=BLOCK)
        self.bfm.ring_depth = DEPTH
        ConfigDB().set(None, "*", "BFM", self.bfm)
        ConfigDB().set(None, "*", "POLICY", self.policy)
        ConfigDB().set(None, "*", "BINS", self.bins)
        ConfigDB().set(None, "*", "STORAGE", {**self.storage, "seed": seed + 1, "disk_seed": seed + 2})
        ConfigDB().set(None, "*", "HOST", {**self.host, "seed": seed + 3})
        self.env = PortEnv("env", self)

    async def writes(self, count, mode=None):
        await WriteSeq(count=count, mode=mode, seed=self.rng.getrandbits(32),
                       stray=self.stray).start(self.env.ingress.seqr)
        await self.bfm.ingress_drained()

    async def settle(self):
        """Flush and acknowledge until the host holds every entry and the port is empty."""
        dut, host = self.bfm.dut, self.env.sink.host
        host.acks_paused = False
        for _ in range(SETTLE_CYCLES // 100):
            await ClockCycles(dut.clk, 100)
            written = int(dut.entries_written.value)
            if host.next_seq == written and int(dut.acknowledged.value) == written:
                return
            if not int(dut.draining.value):
                if self.rng.random() < 0.5:
                    host.flush_now()
                else:
                    self.bfm.pulse("resend")     # e.g. the host timed out waiting
        raise AssertionError("the port did not drain: host has "
                             f"{host.next_seq}, port wrote {int(dut.entries_written.value)}")

    async def bounded(self, what, coro, cycles):
        """Run `coro`; fail with the port's state if it takes more than `cycles` clock cycles."""
        try:
            await with_timeout(coro, cycles * NS_PER_CYCLE, "ns")
        except SimTimeoutError:
            dut, s = self.bfm.dut, self.bfm.s
            raise AssertionError(
                f"{what} did not finish within {cycles} cycles: {len(s.ingress)} ingress beats "
                f"queued, ring_fill={int(dut.ring_fill.value)}, "
                f"entries_written={int(dut.entries_written.value)}, "
                f"acknowledged={int(dut.acknowledged.value)}, draining={int(dut.draining.value)}, "
                f"host holds {self.env.sink.host.next_seq}") from None

    async def run_phase(self):
        self.raise_objection()
        await self.bfm.start()
        self.bfm.set(policy=self.policy)
        await self.bounded("scenario", self.scenario(), SCENARIO_CYCLES)
        await self.bounded("settle", self.settle(), SETTLE_CYCLES + 1000)
        await self.bounded("quiesce", self.quiesce(), 5000)
        self.drop_objection()

    async def quiesce(self):
        """Let the flush engine finish what it started (a resent entry the host already holds)."""
        dut = self.bfm.dut
        while int(dut.draining.value) or int(dut.flush__valid.value):
            await ClockCycles(dut.clk, 20)
        await ClockCycles(dut.clk, 5)


@pyuvm.test(timeout_time=TEST_TIMEOUT_NS, timeout_unit="ns")
class TrafficTest(BaseTest):
    """Redo, copy-on-write and mixed traffic under each flush trigger, with failures, late and
    dropped acknowledges, losses and resends, and a burst that fills the ring."""

    async def scenario(self):
        host, quarter = self.env.sink.host, max(WRITES // 4, DEPTH + 2)
        host.configure(watermark=DEPTH // 2)
        await StraySeq(count=2, seed=self.rng.getrandbits(32)).start(self.env.ingress.seqr)
        await self.writes(quarter, Mode.REDO)
        host.configure(timer_period=300)
        await self.writes(quarter, Mode.COPY_ON_WRITE)
        # Flush commands alone: each once the last writes have completed and the engine is idle,
        # so it drains them (a command with nothing complete drains nothing).
        host.configure()
        for _ in range(quarter // 4):
            await self.writes(4)
            await self.bfm.completions_taken()
            await self.bfm.flush_idle()
            host.flush_now()
        # No acknowledges for a while: the ring fills and ingress waits.
        host.acks_paused = True
        host.flush_now()
        seq = WriteSeq(count=DEPTH + 4, mode=Mode.REDO, seed=self.rng.getrandbits(32))
        cocotb.start_soon(seq.start(self.env.ingress.seqr))
        await ClockCycles(self.bfm.dut.clk, 2000)
        host.acks_paused = False
        host.configure(watermark=DEPTH // 2, timer_period=500)
        await self.bfm.ingress_drained()
        await self.writes(quarter)


@pyuvm.test(timeout_time=TEST_TIMEOUT_NS, timeout_unit="ns")
class InvalidateTest(BaseTest):
    """Ring full under the invalidate policy: a marker, unjournaled writes, then a re-enable."""

    policy = 1
    bins = ["marker", "mode.REDO", "status.OK", "backpressure.pri_write", "backpressure.flush",
            "protocol_error"]
    storage = {"write_fail": 0.05, "read_fail": 0.0, "latency": (1, 10), "busy": 0.1}
    host = {"loss": 0.0, "ack_drop": 0.0, "ack_every": (20, 50), "busy": 0.1}
    stray = 0.25

    async def scenario(self):
        host = self.env.sink.host
        host.acks_paused = True
        host.configure(watermark=2)
        await self.writes(DEPTH + 5, Mode.REDO)      # overfills: marker, then unjournaled writes
        assert int(self.bfm.dut.invalid.value) == 1, "the port did not go invalid"
        host.acks_paused = False
        await ClockCycles(self.bfm.dut.clk, 1000)
        await ReenableSeq().start(self.env.ingress.seqr)
        assert int(self.bfm.dut.invalid.value) == 0
        await self.writes(DEPTH)


@pyuvm.test(timeout_time=TEST_TIMEOUT_NS, timeout_unit="ns")
class AckBoundaryTest(BaseTest):
    """An acknowledge passing the next seq while the engine resends, delivered at every cycle of
    two entry periods after a resend request: at every offset against the resend's start and the
    next two entry boundaries (a start is decided a cycle ahead on work flags registered a cycle
    before that; none may use an `acked` that moved meanwhile). Each offset twice: acknowledging
    every complete entry, and only those sent while two complete ones wait.

    Checked against a model of the host's acknowledges: each start as it happens (read off the
    engine's registers: `in_entry` rises the cycle after a start, `cur` then holds its seq) is of
    a complete entry that no acknowledge delivered in an earlier cycle covers; each entry is
    counted as flushed once; the ring's tail never moves back (`ring_fill` never rises while
    nothing is written)."""

    bins = ["mode.REDO", "status.OK", "resend"]
    storage = {"write_fail": 0.0, "read_fail": 0.0, "latency": (1, 4), "busy": 0.0}
    host = {"loss": 0.0, "ack_drop": 0.0, "ack_every": (20, 50), "busy": 0.0}
    stray = 0.0
    SENT, WAITING = 3, 2        # entries sent before the resend; complete entries not yet sent

    async def scenario(self):
        host = self.env.sink.host
        host.acks_paused = True                 # the test delivers every acknowledge itself
        self.starts, self.where = 0, "before the sweep"
        cocotb.start_soon(self.watch_starts())
        # Cycles per entry while the output is ready: one word per cycle, back to back.
        self.period = (HEADER_BYTES + BLOCK + TRAILER_BYTES) * 8 // self.bfm.width
        offsets = range(2 * self.period + 3)
        for offset in offsets:
            for waiting in (0, self.WAITING):
                await self.race(offset, waiting)
        self.logger.info(f"{self.starts} starts checked, acknowledges 0..{offsets[-1]} cycles after "
                         "the resend request")

    async def watch_starts(self):
        """Check each start as it happens, before its entry reaches the wire: the entry is
        complete, and no acknowledge delivered before (in an earlier cycle) covers it."""
        bfm = self.bfm
        flush, was_in = bfm.dut.port.flush, 0
        while True:
            await RisingEdge(bfm.dut.clk)
            await ReadOnly()
            in_entry = int(flush.in_entry.value)
            if in_entry and not was_in:
                started = TIME_ORIGIN + NS_PER_CYCLE * (bfm.s.cycle - 1)
                seq, written = int(flush.cur.value), int(bfm.dut.entries_written.value)
                acked = max((a for t, a in bfm.ack_log if t < started), default=-1)
                assert seq < written, f"{self.where}: entry {seq} started, only {written} complete"
                assert seq > acked, f"{self.where}: entry {seq} started after the host's acknowledge " \
                                    f"up to {acked} was delivered"
                self.starts += 1
            was_in = in_entry

    async def race(self, offset, waiting):
        """Resend the last SENT entries; `offset` cycles after the request, acknowledge them."""
        host, bfm, dut = self.env.sink.host, self.bfm, self.bfm.dut
        await self.writes(self.SENT, Mode.REDO)
        await bfm.completions_taken()
        host.flush_now()
        await self.until(lambda: host.next_seq == int(dut.entries_written.value)
                         and not int(dut.draining.value))
        upto = host.next_seq - 1
        if waiting:
            await self.writes(waiting, Mode.REDO)
            await bfm.completions_taken()
        written = int(dut.entries_written.value)
        self.where = f"acknowledge {offset} cycles after the resend request, {waiting} entries waiting"
        await RisingEdge(dut.clk)
        begin = TIME_ORIGIN + NS_PER_CYCLE * bfm.s.cycle
        bfm.pulse("resend")
        await ClockCycles(dut.clk, offset)
        bfm.ack(upto)
        host.acked = upto
        await self.until(lambda: host.next_seq == written and int(dut.acknowledged.value) == upto + 1)
        await self.quiet(2 * self.period)
        where = self.where
        fills = [fill for now, fill, _ in bfm.fill_samples if now >= begin]
        rises = [(a, b) for a, b in zip(fills, fills[1:], strict=False) if b > a]
        assert not rises, f"{where}: ring_fill rose {rises} with nothing written (the tail moved back)"
        assert int(dut.flushed.value) == written, \
            f"{where}: {int(dut.flushed.value)} entries counted as flushed, {written} sent"
        if host.next_seq - 1 > upto:            # the waiting entries, now sent: free the ring
            bfm.ack(host.next_seq - 1)
            host.acked = host.next_seq - 1
            await self.until(lambda: int(dut.acknowledged.value) == written)

    async def quiet(self, cycles):
        """Wait until the engine has been idle (not draining, no word out) for `cycles` cycles."""
        dut = self.bfm.dut
        idle = 0
        while idle < cycles:
            await RisingEdge(dut.clk)
            idle = 0 if int(dut.draining.value) or int(dut.flush__valid.value) else idle + 1

    async def until(self, condition, cycles=4000):
        """Wait for `condition`, at most `cycles` clock cycles."""
        for _ in range(cycles):
            if condition():
                return
            await RisingEdge(self.bfm.dut.clk)
        raise AssertionError(f"{self.where}: condition not met within {cycles} cycles")
