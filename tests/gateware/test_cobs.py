"""COBS encoder and decoder in the Amaranth simulator, against the `cobs` package."""

import random

import pytest
from amaranth.sim import Simulator
from cobs import cobs
from streams import stream_put

from hdl.cobs import COBSDecoder, COBSEncoder


def beat(frame: bytes, i: int) -> dict:
    """Byte i of an unencoded frame as the encoder takes it, with the frame's boundaries."""
    return {"data": frame[i], "first": i == 0, "last": i == len(frame) - 1}


def _frames(rng: random.Random) -> list[bytes]:
    """Random frames and the edge cases of the coding: group limits, zeros at either end."""
    ones = bytes(rng.randint(1, 255) for _ in range(600))
    frames = [ones[:253], ones[:254], ones[:255], ones[:508], bytes(1), bytes(3), bytes(300),
              b"\x01", b"\x00\x01", b"\x01\x00", ones[:254] + b"\x00", b"\x00" + ones[:254],
              ones[:253] + b"\x00" + ones[:3]]
    for _ in range(12):
        frames.append(bytes(rng.choice((0, rng.randint(1, 255), rng.randint(1, 255)))
                            for _ in range(rng.randint(1, 400))))
    return frames


def _run(dut, *benches):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for bench in benches:
        sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("stall", [0.0, 0.3])
def test_encoder_matches_package(stall):
    rng = random.Random(int(stall * 10))
    frames = _frames(rng)
    expected = b"".join(cobs.encode(f) + b"\0" for f in frames)
    dut = COBSEncoder()
    out = bytearray()

    async def feed(ctx):
        for frame in frames:
            for i in range(len(frame)):
                await stream_put(ctx, dut.i_stream, beat(frame, i))
                if rng.random() < stall:
                    ctx.set(dut.i_stream.valid, 0)
                    await ctx.tick()
        ctx.set(dut.i_stream.valid, 0)

    async def drain(ctx):
        while len(out) < len(expected):
            ready = rng.random() >= stall
            ctx.set(dut.o_stream.ready, ready)
            _, _, valid, byte = await ctx.tick().sample(dut.o_stream.valid, dut.o_stream.payload)
            if valid and ready:
                out.append(byte)
        assert bytes(out) == expected

    _run(dut, feed, drain)


def test_encoder_keeps_output_busy():
    """A long frame with no zero: one output byte every cycle once the first group is in."""
    rng = random.Random(7)
    frame = bytes(rng.randint(1, 255) for _ in range(4000))
    expected = cobs.encode(frame) + b"\0"
    dut = COBSEncoder()
    cycles = []

    async def feed(ctx):
        for i in range(len(frame)):
            await stream_put(ctx, dut.i_stream, beat(frame, i))
        ctx.set(dut.i_stream.valid, 0)

    async def drain(ctx):
        ctx.set(dut.o_stream.ready, 1)
        out = bytearray()
        cycle = 0
        while len(out) < len(expected):
            _, _, valid, byte = await ctx.tick().sample(dut.o_stream.valid, dut.o_stream.payload)
            cycle += 1
            if valid:
                out.append(byte)
                cycles.append(cycle)
        assert bytes(out) == expected
        rate = len(out) / (cycles[-1] - cycles[0] + 1)
        assert rate >= 0.99, rate

    _run(dut, feed, drain)


@pytest.mark.parametrize("stall", [0.0, 0.3])
def test_decoder_matches_package(stall):
    rng = random.Random(100 + int(stall * 10))
    frames = _frames(rng)
    wire = bytearray(b"\0\0")                     # leading delimiters: empty frames, ignored
    for frame in frames:
        wire += cobs.encode(frame) + b"\0"
    wire += b"\x05\x11\x22\0"                       # malformed: delimiter inside a group
    wire += b"\x04\0"                               # malformed, decodes to nothing
    wire += b"\x01\0"                               # decodes to an empty frame: ignored
    wire += cobs.encode(b"after") + b"\0"
    expected = [(f, False) for f in frames] + [(b"\x11\x22", True), (b"\x00", True), (b"after", False)]
    dut = COBSDecoder()
    got = []

    async def feed(ctx):
        for byte in wire:
            await stream_put(ctx, dut.i_stream, byte)
            if rng.random() < stall:
                ctx.set(dut.i_stream.valid, 0)
                await ctx.tick()
        ctx.set(dut.i_stream.valid, 0)

    async def drain(ctx):
        frame, first_seen = bytearray(), False
        while len(got) < len(expected):
            ready = rng.random() >= stall
            ctx.set(dut.o_stream.ready, ready)
            _, _, valid, beat = await ctx.tick().sample(dut.o_stream.valid, dut.o_stream.payload)
            if not (valid and ready):
                continue
            assert bool(beat.first) == (not first_seen), f"first flag at byte {len(frame)}"
            first_seen = True
            frame.append(beat.data)
            if beat.last:
                got.append((bytes(frame), bool(beat.error)))
                frame, first_seen = bytearray(), False
        for (g, e), (x, xe) in zip(got, expected, strict=True):
            assert e == xe and (e or g == x), (g[:16].hex(), x[:16].hex())

    _run(dut, feed, drain)
