"""ButtonWrites: block writes from push buttons, the dev board's stand-in for a server.

A dev board has no storage network, so its ports' ingress comes from the board itself: each
press of port p's button (`buttons[p]`, already synchronised; sampled every `ticks_per_sample`
cycles, which debounces it) writes one block on `ingress[p]`: a header beat (data = lba, the
port's press count from 0) and `block_bytes / 8` data beats carrying the board's cycle counter
at each beat, so every block is different and its data says when it was written.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hdl.link import DATAPATH_BITS
from hdl.write_path import beat_layout


class ButtonWrites(wiring.Component):
    """One block write on `ingress[p]` per press of `buttons[p]`."""

    def __init__(self, *, ports: int, block_bytes: int, ticks_per_sample: int):
        self.ports = ports
        self.block_words = block_bytes * 8 // DATAPATH_BITS
        self.ticks_per_sample = ticks_per_sample
        super().__init__({
            "buttons": In(ports),
            "ingress": Out(stream.Signature(beat_layout(DATAPATH_BITS))).array(ports),
        })

    def elaborate(self, platform):
        m = Module()
        cycles = Signal(DATAPATH_BITS)
        m.d.sync += cycles.eq(cycles + 1)
        tick = Signal(range(self.ticks_per_sample))
        sample = tick == 0
        m.d.sync += tick.eq(tick - 1)
        with m.If(sample):
            m.d.sync += tick.eq(self.ticks_per_sample - 1)
        for p in range(self.ports):
            m.submodules[f"port{p}"] = writer = _BlockWriter(self.block_words)
            pressed = Signal(name=f"pressed{p}")
            with m.If(sample):
                m.d.sync += pressed.eq(self.buttons[p])
            m.d.comb += [writer.press.eq(sample & self.buttons[p] & ~pressed), writer.cycles.eq(cycles)]
            wiring.connect(m, writer.ingress, wiring.flipped(self.ingress[p]))
        return m


class _BlockWriter(wiring.Component):
    """Writes one block per `press` pulse (pulses during a write are ignored)."""

    press: In(1)
    cycles: In(DATAPATH_BITS)
    ingress: Out(stream.Signature(beat_layout(DATAPATH_BITS)))

    def __init__(self, block_words: int):
        self.block_words = block_words
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        lba = Signal(DATAPATH_BITS)
        beat = Signal(range(self.block_words + 1))       # 0: the header beat
        beat_out = self.ingress.payload
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.press):
                    m.d.sync += beat.eq(0)
                    m.next = "WRITE"
            with m.State("WRITE"):
                m.d.comb += [self.ingress.valid.eq(1), beat_out.first.eq(beat == 0),
                             beat_out.last.eq(beat == self.block_words),
                             beat_out.data.eq(self.cycles)]
                with m.If(beat == 0):
                    m.d.comb += beat_out.data.eq(lba)
                with m.If(self.ingress.ready):
                    m.d.sync += beat.eq(beat + 1)
                    with m.If(beat_out.last):
                        m.d.sync += lba.eq(lba + 1)
                        m.next = "IDLE"
        return m
