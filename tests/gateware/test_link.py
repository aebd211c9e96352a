"""The link end to end under Verilator: a 2-port DeviceImage driven through its byte streams.

The host side is `firmware.abi.frames` (encode/decode) and `firmware.abi.entry.unpack`; the
ports get block writes on their ingress and complete storage (`sim/device_top.py`). Run at
every beat width, 64 to 8 bits (the bench reads the width off the ingress ports): the frames
and entries must be the same bytes.
"""

import os
import random
import struct
from collections import deque

import cocotb
import pytest
from cobs import cobs
from cocotb.triggers import ClockCycles
from link_bench import LinkBytes

from firmware.abi import regmap
from firmware.abi.entry import Kind, Mode, Status, entry_bytes, unpack
from firmware.abi.frames import FLUSH_MARK, IDENTITY, IMAGE_ID, IMAGE_VERSION, FrameType, NakReason
from firmware.abi.frames import encode as encode_frame

PORTS, BLOCK, DEPTH = 2, 64, 8
MAX_PAYLOAD = 3 * entry_bytes(BLOCK)
IMAGE_ARGS = dict(ports=PORTS, block_bytes=BLOCK, depth=DEPTH, max_payload=MAX_PAYLOAD)


class LinkBench(LinkBytes):
    """The link bytes, and block writes on the ports' ingress in the same cycles."""

    def __init__(self, dut):
        super().__init__(dut)
        self.width = len(dut.ingress__0__payload) - 2      # data, first, last
        self.ingress = [deque() for _ in range(PORTS)]
        self._ports = [(getattr(dut, f"ingress__{p}__valid"), getattr(dut, f"ingress__{p}__payload"),
                        getattr(dut, f"ingress__{p}__ready")) for p in range(PORTS)]

    def drive(self):
        super().drive()
        self._driven = [bool(queue) for queue in self.ingress]
        for queue, on, (valid, payload, _) in zip(self.ingress, self._driven, self._ports, strict=True):
            valid.value = on
            if on:
                payload.value = queue[0]

    def taken(self):
        super().taken()
        for queue, on, (_, _, ready) in zip(self.ingress, self._driven, self._ports, strict=True):
            if on and ready.value:
                queue.popleft()

    # --- host side ---------------------------------------------------------------------------
    async def read(self, addr, count=1):
        seq = self.send(FrameType.REG_READ, struct.pack("<HH", addr, count))
        payload = await self.expect(FrameType.REG_VALUES, seq)
        assert struct.unpack_from("<HH", payload) == (addr, count)
        values = struct.unpack_from(f"<{count}I", payload, 4)
        return values if count > 1 else values[0]

    async def write(self, addr, value):
        seq = self.send(FrameType.REG_WRITE, struct.pack("<HI", addr, value))
        payload = await self.expect(FrameType.REG_VALUES, seq)
        return struct.unpack("<HHI", payload)[2]

    def block_write(self, port, lba, data):
        step = self.width // 8
        beats = [lba | 1 << self.width] + [int.from_bytes(data[i:i + step], "little")
                                           for i in range(0, BLOCK, step)]
        beats[-1] |= 1 << (self.width + 1)
        self.ingress[port].extend(beats)

    async def settle(self, cycles=50):
        while any(self.ingress) or self.rx:
            await ClockCycles(self.dut.clk, 10)
        await ClockCycles(self.dut.clk, cycles)

    async def drain(self, port):
        """JOURNAL frames of `port` up to its FLUSH_MARK: ([raw entries], [frame sizes], mark)."""
        entries, sizes = [], []
        while True:
            kind, p, seq, payload = await self.frame()
            assert p == port and seq == 0, (kind, p, seq)
            if kind == FrameType.FLUSH_MARK:
                return entries, sizes, FLUSH_MARK.unpack(payload)
            assert kind == FrameType.JOURNAL, kind
            assert len(payload) <= MAX_PAYLOAD
            sizes.append(len(payload))
            while payload:
                size = entry_bytes(int.from_bytes(payload[24:28], "little"))
                entries.append(payload[:size])
                payload = payload[size:]


def addr(name, port=None):
    return regmap.address(name, port)


@cocotb.test()
async def identify_and_registers(dut):
    bench = LinkBench(dut)
    await bench.start()
    seq = bench.send(FrameType.IDENTIFY)
    ident = IDENTITY.unpack(await bench.expect(FrameType.IDENTITY, seq, port=0))
    width = int(os.environ["DATAPATH_BITS"])     # the image built for it, not the width the bench sees
    assert bench.width == width
    assert ident == (IMAGE_ID, IMAGE_VERSION, PORTS, Mode.REDO, DEPTH, BLOCK, width, 0), ident

    assert await bench.write(addr("scratch"), 0xDEADBEEF) == 0xDEADBEEF
    values = await bench.read(0, 9)
    assert values == (IMAGE_ID, IMAGE_VERSION, PORTS, DEPTH, BLOCK, bench.width, Mode.REDO, MAX_PAYLOAD,
                      0xDEADBEEF), values
    assert await bench.write(addr("watermark", 1), 5) == 5
    assert await bench.write(addr("timer_period", 1), 0x12345678) == 0x12345678
    assert await bench.read(addr("watermark", 0)) == 0
    assert await bench.read(addr("watermark", 1), 2) == (5, 0x12345678)
    assert await bench.write(addr("reenable", 0), 1) == 0          # a pulse reads 0
    assert await bench.write(addr("image_id"), 0) == IMAGE_ID       # RO ignores writes
    assert await bench.read(addr("dpll_increment_lo", 1)) == 0
    assert await bench.read(0x7FFF) == 0                            # unmapped
    assert await bench.read(addr("rx_frames")) == 12                # this read is the 12th
    assert await bench.read(addr("naks_sent")) == 0
    assert await bench.read(addr("tx_frames")) == 13                # the responses sent before it


@cocotb.test()
async def journal_flush_ack_resend(dut):
    rng = random.Random(cocotb.RANDOM_SEED)
    bench = LinkBench(dut)
    await bench.start()
    writes = {0: [(100 + i, rng.randbytes(BLOCK)) for i in range(5)],
              1: [(7, rng.randbytes(BLOCK)), (9, bytes(BLOCK))]}
    for port, blocks in writes.items():
        for lba, data in blocks:
            bench.block_write(port, lba, data)
    await bench.settle()
    assert await bench.read(addr("entries_written", 0)) == 5
    assert await bench.read(addr("entries_written", 1)) == 2

    def check(port, raw_entries, first_seq):
        stamps = []
        for i, raw in enumerate(raw_entries):
            fields, data = unpack(raw)
            lba, expected = writes[port][first_seq + i]
            assert (fields["seq"], fields["port"], fields["lba"]) == (first_seq + i, port, lba), fields
            assert (fields["kind"], fields["status"], fields["mode"]) == (Kind.WRITE, Status.OK, Mode.REDO)
            assert data == expected
            stamps.append(fields["timestamp"])
        assert stamps == sorted(stamps)
        return stamps

    bench.send(FrameType.FLUSH, port=0)
    first, sizes, (mark_time, next_seq) = await bench.drain(0)
    stamps = check(0, first, 0)
    assert len(first) == 5 and sizes == [MAX_PAYLOAD, 2 * entry_bytes(BLOCK)], sizes
    assert next_seq == 5 and mark_time > stamps[-1], (mark_time, next_seq)

    seq = bench.send(FrameType.ACK, struct.pack("<I", 2), port=0)
    assert struct.unpack("<I", await bench.expect(FrameType.ACKED, seq, port=0)) == (3,)
    assert await bench.read(addr("acknowledged", 0)) == 3
    assert await bench.read(addr("ring_fill", 0)) == 2

    bench.send(FrameType.RESEND, port=0)
    again, _, (_, next_seq) = await bench.drain(0)
    assert again == first[3:], "resent entries differ"
    assert next_seq == 5
    assert await bench.read(addr("resent", 0)) == 2

    bench.send(FrameType.FLUSH, port=1)
    entries, _, (_, next_seq) = await bench.drain(1)
    check(1, entries, 0)
    assert next_seq == 2

    # Everything acknowledged, then a FLUSH with nothing to send: only a mark, time = now.
    seq = bench.send(FrameType.ACK, struct.pack("<I", 4), port=0)
    assert struct.unpack("<I", await bench.expect(FrameType.ACKED, seq, port=0)) == (5,)
    bench.send(FrameType.FLUSH, port=0)
    entries, _, (later, next_seq) = await bench.drain(0)
    assert entries == [] and next_seq == 5 and later > mark_time
    assert await bench.read(addr("ring_fill", 0)) == 0
    assert await bench.read(addr("tx_journal_entries")) == 9


@cocotb.test()
async def damage_and_garbage(dut):
    rng = random.Random(cocotb.RANDOM_SEED + 1)
    bench = LinkBench(dut)
    await bench.start()
    assert await bench.write(addr("scratch"), 0x1111) == 0x1111

    wire = encode_frame(FrameType.REG_WRITE, struct.pack("<HI", addr("scratch"), 0x2222), seq=9)
    body = bytearray(cobs.decode(wire[:-1]))
    body[10] ^= 0x40                                        # one payload bit flipped on the wire
    bench.send_raw(cobs.encode(bytes(body)) + b"\0")
    nak = await bench.expect(FrameType.NAK, seq=0)
    assert nak == bytes([NakReason.BAD_CRC]), nak
    assert await bench.read(addr("scratch")) == 0x1111
    assert await bench.read(addr("rx_crc_errors")) == 1

    bench.send(FrameType.ACK, struct.pack("<I", 0), port=PORTS)
    assert await bench.expect(FrameType.NAK) == bytes([NakReason.BAD_PORT])
    bench.send(FrameType.JOURNAL, b"\x01" * 8)
    assert await bench.expect(FrameType.NAK) == bytes([NakReason.UNKNOWN_TYPE])
    for ftype, payload in ((FrameType.INJECT_WRITE, bytes(8 + BLOCK)), (FrameType.READ_BLOCK, bytes(8))):
        bench.send(ftype, payload)                                # a standalone image's requests
        assert await bench.expect(FrameType.NAK) == bytes([NakReason.UNKNOWN_TYPE])
    bench.send(FrameType.REG_READ, b"\x00")
    assert await bench.expect(FrameType.NAK) == bytes([NakReason.BAD_LENGTH])
    bench.send_raw(b"\x05\x11\x22\x00")                           # cut inside a COBS group
    assert await bench.expect(FrameType.NAK) == bytes([NakReason.BAD_COBS])

    # Garbage between frames: runs of non-zero bytes each end in a NAK, zeros are ignored.
    garbage_frames = 0
    for _ in range(5):
        bench.send_raw(bytes(rng.randint(1, 255) for _ in range(rng.randint(1, 40))) + b"\0\0")
        garbage_frames += 1
        bench.send(FrameType.IDENTIFY)
    naks = 0
    identities = 0
    while identities < 5:
        kind, _, _, _ = await bench.frame()
        naks += kind == FrameType.NAK
        identities += kind == FrameType.IDENTITY
    assert naks == garbage_frames
    counts = await bench.read(addr("rx_cobs_errors"), 6)
    assert sum(counts[:5]) == await bench.read(addr("naks_sent")) == 7 + garbage_frames, counts
    assert await bench.read(addr("scratch")) == 0x1111


@cocotb.test()
async def go_back_n_under_loss(dut):
    """Both ports write while the host loses JOURNAL frames and ACKs: every entry arrives once.

    Drains start on the watermark and the timer; the host keeps entries in order per port,
    drops duplicates (checking they are byte-identical), asks for a resend on a gap or when the
    link goes quiet, and checks every FLUSH_MARK against the entries that follow it."""
    rng = random.Random(cocotb.RANDOM_SEED + 2)
    bench = LinkBench(dut)
    await bench.start()
    lbas = 1 << min(40, bench.width)        # a header beat carries the lba
    writes = {p: [(rng.randrange(lbas), rng.randbytes(BLOCK)) for _ in range(30)] for p in range(PORTS)}
    for p in range(PORTS):
        assert await bench.write(addr("watermark", p), 3) == 3
        assert await bench.write(addr("timer_period", p), 1500) == 1500
    for i in range(30):
        for p in range(PORTS):
            bench.block_write(p, *writes[p][i])
    stored = {p: [] for p in range(PORTS)}
    marks = {p: [] for p in range(PORTS)}
    lost = duplicates = 0
    while any(len(stored[p]) < 30 for p in range(PORTS)):
        try:
            kind, port, _, payload = await bench.frame(timeout_us=30)
        except Exception:                       # quiet link: the last frame was lost
            for p in range(PORTS):
                if len(stored[p]) < 30:
                    bench.send(FrameType.RESEND, port=p)
            continue
        if kind == FrameType.FLUSH_MARK:
            marks[port].append((len(stored[port]), *FLUSH_MARK.unpack(payload)))
            continue
        if kind != FrameType.JOURNAL:
            continue                            # ACKED, or a NAK for a damaged ACK
        if rng.random() < 0.25:
            lost += 1
            continue
        gap = False
        while payload:
            size = entry_bytes(int.from_bytes(payload[24:28], "little"))
            raw, payload = payload[:size], payload[size:]
            fields, data = unpack(raw)
            seq = fields["seq"]
            if seq < len(stored[port]):
                assert stored[port][seq] == raw, "a resent entry differs"
                duplicates += 1
            elif seq == len(stored[port]) and not gap:
                assert (fields["lba"], data) == writes[port][seq]
                stored[port].append(raw)
            else:
                gap = True
        if gap:
            bench.send(FrameType.RESEND, port=port)
        elif stored[port]:
            wire = encode_frame(FrameType.ACK, struct.pack("<I", len(stored[port]) - 1), port=port, seq=1)
            if rng.random() < 0.2:              # the ACK is damaged on the wire
                body = bytearray(cobs.decode(wire[:-1]))
                body[-1] ^= 0x10
                wire = cobs.encode(bytes(body)) + b"\0"
            bench.send_raw(wire)
    for p in range(PORTS):
        stamps = [unpack(raw)[0]["timestamp"] for raw in stored[p]]
        for _, mark_time, next_seq in marks[p]:
            assert all(t >= mark_time for t in stamps[next_seq:]), (p, mark_time, next_seq)
        assert marks[p], "no FLUSH_MARK seen"
    assert lost > 0 and duplicates > 0
    cocotb.log.info(f"lost {lost} frames, {duplicates} duplicate entries dropped, "
                    f"marks {[len(marks[p]) for p in range(PORTS)]}")

@pytest.mark.parametrize("width", [64, 32, 16, 8])
def test_verilator(sim_dir, width):
    from sim.device_top import DeviceTestTop
    from sim.image import build_image

    image = build_image("link_device", lambda: DeviceTestTop(**IMAGE_ARGS, datapath_bits=width),
                        build_args=("--output-split", "0"))
    # A fixed seed: the loss pattern (and so that losses and duplicates happen at all) is then
    # the same in every run; other seeds are for exploring by hand (COCOTB_RANDOM_SEED).
    image.run("test_link", test_dir=sim_dir / f"link{width}", seed=1, extra_env={"DATAPATH_BITS": str(width)})
