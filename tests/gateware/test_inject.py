"""The standalone image under Verilator: host-injected writes and the on-chip volume.

A 2-port `DeviceImage(store_blocks=…)` on a `BlockStore` (`sim/standalone_top.py`), driven only
through its link bytes with `firmware.abi.frames`. A Python model of the volume is the
scoreboard: every INJECT_WRITE's WRITTEN, every READ_BLOCK's BLOCK, every journal entry (redo
on port 0, copy-on-write on port 1: the pre-image is the model's block before the write) and
the link counters are checked against it; bad requests get their NAK and change nothing. Run
with 64-, 16- (a small board's image) and 8-bit beats: the frames must not change.
"""

import os
import random
import struct

import cocotb
import numpy as np
import pytest
from cocotb.triggers import ClockCycles
from link_bench import LinkBytes

from firmware.abi import regmap
from firmware.abi.entry import HEADER_BYTES, HEADER_DTYPE, Kind, Mode, Status, entry_bytes, unpack
from firmware.abi.frames import FEATURE_INJECTION, FLUSH_MARK, IDENTITY, INJECT, WRITTEN, FrameType, NakReason

PORTS, BLOCK, DEPTH, BLOCKS = 2, 64, 8, 32
IMAGE_ARGS = dict(ports=PORTS, block_bytes=BLOCK, depth=DEPTH, max_payload=3 * entry_bytes(BLOCK),
                  store_blocks=BLOCKS)


def addr(name, port=None):
    return regmap.address(name, port)


class Bench(LinkBytes):
    """The standalone image's requests over the link bytes, answers checked with the ABI."""

    async def nak(self, reason):
        assert NakReason((await self.expect(FrameType.NAK, 0))[0]) == reason

    async def read(self, name, port=None):
        a = addr(name, port)
        seq = self.send(FrameType.REG_READ, struct.pack("<HH", a, 1))
        return struct.unpack_from("<I", await self.expect(FrameType.REG_VALUES, seq), 4)[0]

    async def write(self, name, value, port=None):
        seq = self.send(FrameType.REG_WRITE, struct.pack("<HI", addr(name, port), value))
        await self.expect(FrameType.REG_VALUES, seq)

    async def inject(self, port, lba, data):
        seq = self.send(FrameType.INJECT_WRITE, INJECT.pack(lba) + data, port=port)
        return WRITTEN.unpack(await self.expect(FrameType.WRITTEN, seq, port))

    async def read_block(self, lba):
        seq = self.send(FrameType.READ_BLOCK, INJECT.pack(lba))
        payload = await self.expect(FrameType.BLOCK, seq, 0)
        assert INJECT.unpack_from(payload)[0] == lba
        return payload[INJECT.size:]

    async def drain(self, port):
        """Every entry of `port` up to its FLUSH_MARK, as (fields, data)."""
        self.send(FrameType.FLUSH, port=port)
        entries = []
        while True:
            kind, p, _, payload = await self.frame()
            assert p == port, (kind, p)
            if kind == FrameType.FLUSH_MARK:
                return entries, FLUSH_MARK.unpack(payload)
            assert kind == FrameType.JOURNAL, kind
            while payload:          # writes and, on an invalidated port, a marker (no data)
                length = int(np.frombuffer(payload[:HEADER_BYTES], HEADER_DTYPE)[0]["length"])
                entries.append(unpack(payload[:entry_bytes(length)]))
                payload = payload[entry_bytes(length):]


@cocotb.test()
async def injected_writes_against_a_model(dut):
    rng = random.Random(cocotb.RANDOM_SEED)
    bench = Bench(dut)
    await bench.start()
    ident = IDENTITY.unpack(await bench.expect(FrameType.IDENTITY, bench.send(FrameType.IDENTIFY)))
    assert ident[7] == FEATURE_INJECTION and ident[6] == int(os.environ["DATAPATH_BITS"]), ident
    assert await bench.read("store_blocks") == BLOCKS
    await bench.write("mode", Mode.COPY_ON_WRITE, 1)

    volume = [bytes(BLOCK)] * BLOCKS                 # the model: the store starts as zeros
    expected = {p: [] for p in range(PORTS)}         # per port: (lba, journaled data, WRITTEN)
    reads = 0
    for _ in range(3):
        for _ in range(DEPTH - 2):                   # fewer than a ring's worth before the flush
            port, lba, data = rng.randrange(PORTS), rng.randrange(BLOCKS), rng.randbytes(BLOCK)
            time, seq, status = await bench.inject(port, lba, data)
            assert (seq, status) == (len(expected[port]), Status.OK), (seq, status)
            journaled = data if port == 0 else volume[lba]
            expected[port].append((lba, journaled, time))
            volume[lba] = data
            if rng.random() < 0.4:
                lba = rng.randrange(BLOCKS)
                assert await bench.read_block(lba) == volume[lba], lba
                reads += 1
        for port in range(PORTS):
            entries, (mark_time, next_seq) = await bench.drain(port)
            assert next_seq == len(expected[port])
            stored = await bench.read("acknowledged", port)
            for fields, data in entries:
                lba, journaled, time = expected[port][fields["seq"]]
                assert (fields["port"], fields["lba"], fields["timestamp"]) == (port, lba, time), fields
                assert (fields["kind"], fields["status"]) == (Kind.WRITE, Status.OK), fields
                assert fields["mode"] == (Mode.REDO if port == 0 else Mode.COPY_ON_WRITE)
                assert data == journaled, (port, fields["seq"])
            assert [f["seq"] for f, _ in entries] == list(range(stored, next_seq))
            if next_seq:
                bench.send(FrameType.ACK, struct.pack("<I", next_seq - 1), port=port)
                await bench.expect(FrameType.ACKED, port=port)
    for lba in range(BLOCKS):
        assert await bench.read_block(lba) == volume[lba], lba
    injected = sum(map(len, expected.values()))
    assert await bench.read("injected_writes") == injected
    cocotb.log.info(f"{injected} injected writes, {reads + BLOCKS} blocks read back, all as the model")


@cocotb.test()
async def bad_requests_change_nothing(dut):
    rng = random.Random(cocotb.RANDOM_SEED + 1)
    bench = Bench(dut)
    await bench.start()
    before = {lba: await bench.read_block(lba) for lba in (0, 5, BLOCKS - 1)}
    written = await bench.read("entries_written", 0)
    data = rng.randbytes(BLOCK)

    bench.send(FrameType.INJECT_WRITE, INJECT.pack(5) + data, port=PORTS)
    await bench.nak(NakReason.BAD_PORT)
    bench.send(FrameType.INJECT_WRITE, INJECT.pack(BLOCKS) + data, port=0)
    await bench.nak(NakReason.BAD_LBA)
    bench.send(FrameType.INJECT_WRITE, INJECT.pack(5) + data[:-1], port=0)
    await bench.nak(NakReason.BAD_LENGTH)
    bench.send(FrameType.INJECT_WRITE, INJECT.pack(5) + data, port=0, damage=40)   # in the block
    await bench.nak(NakReason.BAD_CRC)
    bench.send(FrameType.READ_BLOCK, INJECT.pack(BLOCKS + 7))
    await bench.nak(NakReason.BAD_LBA)
    for lba, block in before.items():
        assert await bench.read_block(lba) == block, lba
    assert await bench.read("entries_written", 0) == written
    assert await bench.read("rx_lba_errors") == 2

    # Two INJECT_WRITEs back to back: the second arrives while the first is under way.
    first = bench.send(FrameType.INJECT_WRITE, INJECT.pack(5) + data, port=0)
    bench.send(FrameType.INJECT_WRITE, INJECT.pack(0) + bytes(BLOCK), port=0)
    replies = {kind: (seq, payload) for kind, _, seq, payload in [await bench.frame(), await bench.frame()]}
    assert sorted(replies) == [FrameType.WRITTEN, FrameType.NAK], replies
    assert replies[FrameType.NAK][1] == bytes([NakReason.BUSY])
    assert replies[FrameType.WRITTEN][0] == first
    assert await bench.read("rx_busy") == 1

    # Two READ_BLOCKs one after the other: both answered, in order. The second goes as the first's
    # BLOCK frame starts out (sent at once, it could find the link still reading the first block
    # from the volume and get BUSY).
    first = bench.send(FrameType.READ_BLOCK, INJECT.pack(5))
    for _ in range(10_000):
        if bench.tx:
            break
        await ClockCycles(dut.clk, 1)
    assert bench.tx, "no BLOCK frame for the first READ_BLOCK"
    second = bench.send(FrameType.READ_BLOCK, INJECT.pack(0))
    replies = [await bench.frame(), await bench.frame()]
    assert [(kind, seq, payload) for kind, _, seq, payload in replies] == [
        (FrameType.BLOCK, first, INJECT.pack(5) + data),
        (FrameType.BLOCK, second, INJECT.pack(0) + before[0])]
    assert await bench.read_block(5) == data
    assert await bench.read_block(0) == before[0]       # the refused one changed nothing
    assert await bench.read("entries_written", 0) == written + 1


@cocotb.test()
async def a_full_ring_invalidates_and_the_write_still_lands(dut):
    """Policy INVALIDATE: the write that finds the ring full is preceded by a PORT_INVALID
    marker and goes to the volume unjournaled; its WRITTEN has its own time, after the
    marker's, and the seq after the marker's (the port's stamp of an unjournaled write)."""
    rng = random.Random(cocotb.RANDOM_SEED + 2)
    bench = Bench(dut)
    await bench.start()
    entries, (_, next_seq) = await bench.drain(0)        # an empty ring to start from
    if entries:
        bench.send(FrameType.ACK, struct.pack("<I", next_seq - 1), port=0)
        await bench.expect(FrameType.ACKED, port=0)
    await bench.write("policy", 1, 0)
    writes = []
    for _ in range(DEPTH):      # the last free slot is the marker's: the last write finds no room
        lba, data = rng.randrange(BLOCKS), rng.randbytes(BLOCK)
        writes.append((lba, data, await bench.inject(0, lba, data)))
    (lba, data, (time, seq, status)) = writes[-1]
    assert (seq, status) == (next_seq + DEPTH, Status.OK), (seq, status)
    assert await bench.read_block(lba) == data
    assert (await bench.read("invalid", 0), await bench.read("unjournaled", 0)) == (1, 1)
    entries, _ = await bench.drain(0)
    assert [f["seq"] for f, _ in entries] == list(range(next_seq, next_seq + DEPTH))
    assert [(f["lba"], f["timestamp"]) for f, _ in entries[:-1]] == [(w[0], w[2][0]) for w in writes[:-1]]
    marker = entries[-1][0]
    assert (marker["kind"], marker["lba"], marker["length"]) == (Kind.PORT_INVALID, lba, 0), marker
    assert writes[-2][2][0] <= marker["timestamp"] < time


@pytest.mark.parametrize("width", [64, 16, 8])
def test_verilator(sim_dir, width):
    from sim.image import build_image
    from sim.standalone_top import StandaloneTestTop

    image = build_image("standalone_device", lambda: StandaloneTestTop(**IMAGE_ARGS, datapath_bits=width),
                        build_args=("--output-split", "0"))
    image.run("test_inject", test_dir=sim_dir / f"inject{width}", seed=1,
              extra_env={"DATAPATH_BITS": str(width)})
