"""The DMA link under Verilator behind cocotbext-pcie's root complex: a 4-port DeviceImage with
`link="dma"` (`sim/device_top.py`), its BAR and its memory writes carried as PCIe TLPs.

`JournalFunction` is the device's PCIe function in the model: a `MemoryEndpoint` whose BAR 0
turns memory reads and writes from the root complex into register-bus cycles on the image's
`bar` (register r at byte offset 4·r), and which sends every memory-write burst the image
offers on `wr` upstream as memory-write TLPs (`Function.mem_write`), which land in the root
complex's host memory. This stands where a board's PCIe hard IP and its adapter would be: the
TLPs, enumeration, BAR assignment and bus mastering are cocotbext-pcie's; the UltraScale hard-IP
signal interface (`cocotbext.pcie.xilinx`) is not used.

The host side follows `firmware.abi.dma`: it clears each ring, programs it through the BAR,
reads new slots by their phase bit in its own memory and writes its consumer index to the
doorbell. The scoreboard compares every entry with the writes the ports were given.
"""

import logging
import random
import struct
from collections import deque

import cocotb
from cocotb.clock import Clock
from cocotb.queue import Queue
from cocotb.triggers import ClockCycles, FallingEdge, Lock, ReadOnly
from cocotbext.pcie.core import Device, MemoryEndpoint, RootComplex

from firmware.abi import regmap
from firmware.abi.dma import SLOT_WORD_BYTES, phase, slot_bytes
from firmware.abi.entry import Kind, Mode, Status, entry_bytes, unpack
from firmware.abi.frames import IMAGE_ID, IMAGE_VERSION
from hdl.link import READ_LATENCY

PORTS, BLOCK, DEPTH = 4, 64, 8
IMAGE_ARGS = dict(ports=PORTS, block_bytes=BLOCK, depth=DEPTH, link="dma")
SLOT = slot_bytes(BLOCK)
ENTRY = entry_bytes(BLOCK)
BAR_BYTES = 4 << regmap.ADDRESS_BITS
POSTED_BURSTS = 8           # memory-write bursts the endpoint holds before it stops taking `wr`
ENTRIES_PER_PORT = 2600     # 10,400 entries through 4-slot rings: each wraps 650 times
RING_LOG_SIZE = 2           # fewer slots than DEPTH, so a held doorbell really fills the ring


def reg(name, port=None):
    """BAR byte offset of a register."""
    return 4 * regmap.address(name, port)


class JournalFunction(MemoryEndpoint):
    """The image as a PCIe function: BAR 0 is the register map, `wr` bursts go upstream."""

    def __init__(self, dut):
        super().__init__()
        self.dut = dut
        self.vendor_id, self.device_id = 0x1234, 0x504A     # "PJ"
        self.add_mem_region(BAR_BYTES, read=self.bar_read, write=self.bar_write)
        self.bus_lock = Lock()
        self.bursts = Queue()
        self.bursts_sent = 0

    async def bar_read(self, addr, length):
        out = bytearray()
        async with self.bus_lock:
            for offset in range(addr & ~3, addr + length, 4):
                await FallingEdge(self.dut.clk)
                self.dut.bar__r_addr.value = offset // 4
                await ClockCycles(self.dut.clk, READ_LATENCY, rising=True)
                await ReadOnly()
                out += int(self.dut.bar__r_data.value).to_bytes(4, "little")
        return bytes(out[addr & 3:(addr & 3) + length])

    async def bar_write(self, addr, data):
        assert addr % 4 == 0 and len(data) % 4 == 0, (addr, len(data))
        async with self.bus_lock:
            for k in range(0, len(data), 4):
                await FallingEdge(self.dut.clk)
                self.dut.bar__w_addr.value = (addr + k) // 4
                self.dut.bar__w_data.value = int.from_bytes(data[k:k + 4], "little")
                self.dut.bar__w_en.value = 1
                await FallingEdge(self.dut.clk)
                self.dut.bar__w_en.value = 0

    async def send_bursts(self):
        """Memory-write bursts from `wr`, in order, as TLPs to the root complex."""
        while True:
            addr, data = await self.bursts.get()
            await self.mem_write(addr, data)
            self.bursts_sent += 1


class DmaBench:
    """Clock, reset, the ports' ingress and the `wr` stream, moved once per cycle."""

    def __init__(self, dut):
        self.dut = dut
        self.ingress = [deque() for _ in range(PORTS)]
        self.wr_beats = 0
        self.rc = RootComplex()
        self.function = JournalFunction(dut)
        self.rc.make_port().connect(Device(self.function))
        self.burst = None
        logging.getLogger("cocotb.pcie").setLevel("ERROR")     # enumeration probes empty slots

    async def start(self):
        dut = self.dut
        cocotb.start_soon(Clock(dut.clk, 8, unit="ns").start())
        dut.rst.value = 1
        dut.wr__ready.value = 0
        dut.bar__w_en.value = 0
        dut.bar__r_addr.value = 0
        for p in range(PORTS):
            getattr(dut, f"ingress__{p}__valid").value = 0
        await ClockCycles(dut.clk, 3)
        dut.rst.value = 0
        cocotb.start_soon(self._run())
        cocotb.start_soon(self.function.send_bursts())
        await self.rc.enumerate()
        self.tree = self.rc.find_device(self.function.pcie_id)
        await self.tree.enable_device()
        await self.tree.set_master()
        self.bar = self.tree.bar_window[0]

    async def _run(self):
        dut = self.dut
        ingress = [(getattr(dut, f"ingress__{p}__valid"), getattr(dut, f"ingress__{p}__payload"),
                    getattr(dut, f"ingress__{p}__ready")) for p in range(PORTS)]
        mask64 = (1 << 64) - 1
        while True:
            await FallingEdge(dut.clk)
            driven = [bool(queue) for queue in self.ingress]
            for queue, on, (valid, payload, _) in zip(self.ingress, driven, ingress, strict=True):
                valid.value = on
                if on:
                    payload.value = queue[0]
            taking = self.function.bursts.qsize() < POSTED_BURSTS
            dut.wr__ready.value = taking
            await ReadOnly()
            for queue, on, (_, _, ready) in zip(self.ingress, driven, ingress, strict=True):
                if on and ready.value:
                    queue.popleft()
            if taking and dut.wr__valid.value:
                beat = int(dut.wr__payload.value)
                addr, word = beat & mask64, (beat >> 64) & mask64
                first, last = beat >> 128 & 1, beat >> 129 & 1
                self.wr_beats += 1
                if first:
                    assert self.burst is None, "burst started inside a burst"
                    self.burst = (addr, bytearray())
                assert self.burst is not None and addr == self.burst[0] + len(self.burst[1]), hex(addr)
                self.burst[1].extend(word.to_bytes(8, "little"))
                if last:
                    self.function.bursts.put_nowait((self.burst[0], bytes(self.burst[1])))
                    self.burst = None

    def block_write(self, port, lba, data):
        beats = [lba | 1 << 64] + [int.from_bytes(data[i:i + 8], "little") for i in range(0, BLOCK, 8)]
        beats[-1] |= 1 << 65
        self.ingress[port].extend(beats)

    async def read(self, name, port=None):
        return await self.bar.read_dword(reg(name, port))

    async def write(self, name, value, port=None):
        await self.bar.write_dword(reg(name, port), value)


class HostRing:
    """One port's ring in host memory, read as the host driver does (`firmware.abi.dma`)."""

    def __init__(self, bench, port, log_size):
        self.bench, self.port, self.log_size = bench, port, log_size
        self.size = 1 << log_size
        self.base, self.mem = bench.rc.alloc_region(self.size * SLOT)
        self.consumed = 0           # consumer index: slots read
        self.rung = 0               # consumer index last written to the doorbell

    async def program(self):
        self.mem[:] = bytes(len(self.mem))
        b = self.bench
        await b.write("dma_enable", 0, self.port)
        await b.write("dma_ring_base_lo", self.base & 0xFFFFFFFF, self.port)
        await b.write("dma_ring_base_hi", self.base >> 32, self.port)
        await b.write("dma_ring_log_size", self.log_size, self.port)
        await b.write("dma_doorbell", 0, self.port)
        await b.write("dma_enable", 1, self.port)

    def slot(self, index):
        at = (index % self.size) * SLOT
        return bytes(self.mem[at:at + SLOT])

    def poll(self):
        """Entries that are new by their phase bit, without touching the device."""
        out = []
        while True:
            raw = self.slot(self.consumed)
            word = int.from_bytes(raw[-SLOT_WORD_BYTES:], "little")
            if word & 1 != phase(self.consumed, self.log_size):
                return out
            assert word >> 1 == 0, hex(word)
            length = int.from_bytes(raw[24:28], "little")
            out.append(raw[:entry_bytes(length)])
            self.consumed += 1

    async def ring(self):
        if self.rung != self.consumed:
            self.rung = self.consumed
            await self.bench.write("dma_doorbell", self.rung, self.port)


class Scoreboard:
    """What each port was given, in order; every entry must match the next one, once."""

    def __init__(self):
        self.given = [[] for _ in range(PORTS)]
        self.expected = [deque() for _ in range(PORTS)]
        self.next_seq = [0] * PORTS
        self.last_time = [0] * PORTS

    def give(self, bench, port, rng):
        """A random block into `port`'s ingress, recorded as what the port must journal next."""
        lba, data = rng.getrandbits(40), rng.randbytes(BLOCK)
        self.given[port].append((lba, data))
        self.expected[port].append((lba, data))
        bench.block_write(port, lba, data)

    def rewind(self, port, seq):
        """The host starts over: the next entry must be `seq`, then every later one again."""
        self.expected[port] = deque(self.given[port][seq:])
        self.next_seq[port] = seq
        self.last_time[port] = 0

    def check(self, port, raw):
        fields, data = unpack(raw)          # CRC, length and padding
        lba, want = self.expected[port].popleft()
        assert (fields["seq"], fields["port"], fields["lba"]) == (self.next_seq[port], port, lba), fields
        assert (fields["kind"], fields["mode"], fields["status"]) == (Kind.WRITE, Mode.REDO, Status.OK)
        assert data == want, (port, fields["seq"])
        assert fields["timestamp"] >= self.last_time[port]
        self.next_seq[port] += 1
        self.last_time[port] = fields["timestamp"]


@cocotb.test()
async def enumeration_and_bar_registers(dut):
    """The root complex finds the function, assigns BAR 0; the BAR reads and writes the register map."""
    bench = DmaBench(dut)
    await bench.start()
    assert bench.tree.vendor_id == 0x1234 and bench.tree.device_id == 0x504A
    assert bench.tree.bar[0] is not None and bench.tree.bar_size[0] == BAR_BYTES
    consts = {"image_id": IMAGE_ID, "version": IMAGE_VERSION, "ports": PORTS, "ring_depth": DEPTH,
              "block_bytes": BLOCK, "datapath_bits": 64, "mode": Mode.REDO, "max_payload": 0}
    for name, value in consts.items():
        assert await bench.read(name) == value, name
    for value in (0xDEADBEEF, 0x12345678):
        await bench.write("scratch", value)
        assert await bench.read("scratch") == value
    rng = random.Random(5)
    for p in range(PORTS):
        assert await bench.read("watermark", p) == 1     # the DMA image flushes every entry
        for r in regmap.PORT:
            if r.access == "RW" and r.name != "dma_enable":
                value = rng.getrandbits(r.width)
                await bench.write(r.name, value, p)
                assert await bench.read(r.name, p) == value, (p, r.name)
            elif r.access == "RO":
                assert await bench.read(r.name, p) == 0, (p, r.name)    # an idle port
        await bench.write("reenable", 1, p)
        assert await bench.read("reenable", p) == 0                      # W1P reads 0
    assert await bench.read("ports") == PORTS
    assert await bench.bar.read_dword(4 * 0xFF) == 0                      # unmapped
    # A 2-dword read in one TLP: image_id then version.
    assert struct.unpack("<II", await bench.bar.read(reg("image_id"), 8)) == (IMAGE_ID, IMAGE_VERSION)


@cocotb.test(timeout_time=20, timeout_unit="ms")     # ~2 ms of simulated time: a hang fails
async def ten_thousand_entries_lagging_doorbells(dut):
    """≥ 10,000 entries over 4 ports through 4-slot rings that wrap hundreds of times; each host
    consumer rings its doorbell late (every 1-3 entries, after a random delay), and every 40-80
    entries holds it back until its ring is full and then a while longer, so each port waits on a
    full host ring many times (the device's `dma_full_cycles` rises each time). The rings are
    smaller than the port's partial journal (`DEPTH`): a port holds at most `DEPTH` entries not
    acknowledged, so a ring of `DEPTH` slots or more could never fill with an entry waiting."""
    bench = DmaBench(dut)
    await bench.start()
    rings = [HostRing(bench, p, log_size=RING_LOG_SIZE) for p in range(PORTS)]
    for ring in rings:
        await ring.program()
    board = Scoreboard()
    rng = random.Random(11)
    for _ in range(ENTRIES_PER_PORT):
        for p in range(PORTS):
            board.give(bench, p, rng)
    started = cocotb.utils.get_sim_time("ns")
    full_episodes = [0] * PORTS

    async def consume(ring):
        lag = random.Random(ring.port)
        hold_at = lag.randint(40, 80)           # entries read before the next held doorbell
        while board.next_seq[ring.port] < ENTRIES_PER_PORT:
            await ClockCycles(dut.clk, 16)
            for raw in ring.poll():
                board.check(ring.port, raw)
            last = board.next_seq[ring.port] == ENTRIES_PER_PORT
            if ring.consumed >= hold_at and not last:
                if ring.consumed - ring.rung < ring.size:
                    continue                    # held: the ring is not full yet
                before = await bench.read("dma_full_cycles", ring.port)
                await ClockCycles(dut.clk, lag.randint(200, 600))   # full: the port waits
                assert ring.poll() == [], "the device wrote into a full ring"
                full_episodes[ring.port] += await bench.read("dma_full_cycles", ring.port) > before
                hold_at = ring.consumed + lag.randint(40, 80)
                await ring.ring()
            elif ring.consumed - ring.rung >= lag.randint(1, ring.size - 1) or last:
                await ClockCycles(dut.clk, lag.randint(0, 200))     # the doorbell lags
                await ring.ring()

    tasks = [cocotb.start_soon(consume(ring)) for ring in rings]
    for task in tasks:
        await task
    cycles = (cocotb.utils.get_sim_time("ns") - started) / 8
    full = []
    for p, ring in enumerate(rings):
        assert board.next_seq[p] == ENTRIES_PER_PORT and not board.expected[p]
        assert await bench.read("dma_produced", p) == ENTRIES_PER_PORT
        assert await bench.read("acknowledged", p) == ENTRIES_PER_PORT    # the partial journal is freed
        assert await bench.read("ring_fill", p) == 0
        assert ring.poll() == []                                    # nothing after the last
        full.append(await bench.read("dma_full_cycles", p))
    wraps = ENTRIES_PER_PORT // rings[0].size
    cocotb.log.info(f"{PORTS * ENTRIES_PER_PORT} entries, each ring wrapped {wraps} times, {cycles:.0f} "
                    f"cycles, {bench.function.bursts_sent} memory-write bursts, {bench.wr_beats} beats; "
                    f"full-ring episodes {full_episodes}, dma_full_cycles {full}")
    assert PORTS * ENTRIES_PER_PORT >= 10_000 and wraps >= 100
    assert all(n >= 20 for n in full_episodes), full_episodes
    assert all(n > 0 for n in full), full


@cocotb.test()
async def full_host_ring_back_pressures_the_port(dut):
    """A 4-slot ring nobody frees: the device writes 4 slots and stops; nothing is overwritten;
    the port's own ring fills and stalls its ingress; doorbells then let every entry through."""
    bench = DmaBench(dut)
    await bench.start()
    ring = HostRing(bench, 0, log_size=2)
    await ring.program()
    board = Scoreboard()
    rng = random.Random(2)
    count = 3 * (ring.size + DEPTH)
    for _ in range(count):
        board.give(bench, 0, rng)
    await ClockCycles(dut.clk, 2000)
    held = bytes(ring.mem)
    assert await bench.read("dma_produced", 0) == ring.size
    await ClockCycles(dut.clk, 3000)
    assert bytes(ring.mem) == held, "a full host ring was written"
    assert await bench.read("dma_produced", 0) == ring.size
    assert await bench.read("dma_full_cycles", 0) > 3000
    assert await bench.read("ring_fill", 0) == DEPTH                  # the partial journal is full
    assert await bench.read("stall_cycles", 0) > 0                    # and holds the ingress
    assert bench.ingress[0], "ingress was not back-pressured"
    while board.next_seq[0] < count:
        await ClockCycles(dut.clk, 50)
        for raw in ring.poll():
            board.check(0, raw)
        await ring.ring()
    assert not board.expected[0] and await bench.read("acknowledged", 0) == count


@cocotb.test(timeout_time=5, timeout_unit="ms")
async def reprogrammed_ring_starts_at_oldest_unacknowledged(dut):
    """A host that restarts: it had read entries without acknowledging them, then disables and
    programs its ring again — once with the ring full and the port idle (a collector stopped and
    started again), once while the device is writing. Each time slot 0 of the new ring holds
    the port's oldest unacknowledged entry and every later entry arrives once, in order."""
    bench = DmaBench(dut)
    await bench.start()
    port = 1
    ring = HostRing(bench, port, log_size=2)
    ring.first = 0                              # seq of the entry in slot 0
    await ring.program()
    board = Scoreboard()
    rng = random.Random(7)
    count = 6 * (ring.size + DEPTH)
    for _ in range(count):
        board.give(bench, port, rng)

    async def take(until_seq, ring_every):
        """Read and check entries until `until_seq`, ringing the doorbell every `ring_every` cycles."""
        while board.next_seq[port] < until_seq:
            await ClockCycles(dut.clk, ring_every)
            for raw in ring.poll():
                board.check(port, raw)
            await ring.ring()

    async def restart(new_ring):
        """Disable, let writes in flight land, then program `new_ring` from the acknowledged point."""
        acked = ring.first + ring.rung
        await bench.write("dma_enable", 0, port)
        while bench.function.bursts.qsize():
            await ClockCycles(dut.clk, 10)
        await ClockCycles(dut.clk, 200)
        assert await bench.read("acknowledged", port) == acked
        new_ring.first = acked
        await new_ring.program()
        board.rewind(port, acked)
        return new_ring

    # The ring fills; two of its four entries are acknowledged, the other two only read.
    await ClockCycles(dut.clk, 1500)
    assert await bench.read("dma_produced", port) == ring.size
    for raw in ring.poll():
        board.check(port, raw)
    ring.rung = 2
    await bench.write("dma_doorbell", ring.rung, port)
    await ClockCycles(dut.clk, 1500)            # two more slots written, read, never acknowledged
    for raw in ring.poll():
        board.check(port, raw)
    assert board.next_seq[port] == ring.size + 2
    ring = await restart(HostRing(bench, port, log_size=2))
    await take(count // 2, ring_every=37)
    ring = await restart(HostRing(bench, port, log_size=3))    # the device is busy writing now
    await take(count, ring_every=23)
    assert not board.expected[port] and ring.poll() == []
    assert await bench.read("acknowledged", port) == count
    await ClockCycles(bench.dut.clk, 2)             # the ring's tail, then its fill register
    assert await bench.read("ring_fill", port) == 0
    assert await bench.read("resend_requests", port) == 3      # one per enable


def test_root_complex(sim_dir):
    from sim.device_top import DeviceTestTop
    from sim.image import build_image

    image = build_image("dma_device", lambda: DeviceTestTop(**IMAGE_ARGS),
                        build_args=("--output-split", "0"))
    image.run("test_dma_rc", test_dir=sim_dir / "dma_rc", seed=1)
