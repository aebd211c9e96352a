"""AcceptingStorage: a dev board's primary storage stand-in, one per port.

Every primary write (a header beat, then `block_bytes / 8` data beats, the last one marked) is
taken at once and completed as OK after its last beat; every copy-on-write pre-image read is
answered with a block of zeros (all beats OK). Nothing is kept: a dev board has no storage
network, and the journal (what the host collects) is what the board demonstrates.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hdl.link import DATAPATH_BITS
from hdl.write_path import ReadCommand, WriteResponse, beat_layout, read_beat_layout


class AcceptingStorage(wiring.Component):
    """Completes every write OK and reads zeros: the port's primary storage on a dev board."""

    def __init__(self, *, block_bytes: int):
        self.block_words = block_bytes * 8 // DATAPATH_BITS
        super().__init__({
            "write": In(stream.Signature(beat_layout(DATAPATH_BITS))),
            "wresp": Out(stream.Signature(WriteResponse)),
            "rcmd": In(stream.Signature(ReadCommand)),
            "rdata": Out(stream.Signature(read_beat_layout(DATAPATH_BITS))),
        })

    def elaborate(self, platform):
        m = Module()
        # Writes: one completion owed at a time; the next write waits until it is taken.
        m.d.comb += self.write.ready.eq(~self.wresp.valid)
        with m.If(self.wresp.ready):
            m.d.sync += self.wresp.valid.eq(0)
        with m.If(self.write.valid & self.write.ready & self.write.payload.last):
            m.d.sync += [self.wresp.valid.eq(1), self.wresp.payload.ok.eq(1)]

        # Pre-image reads: `block_words` zero beats per command.
        beats_left = Signal(range(self.block_words + 1))
        m.d.comb += [self.rcmd.ready.eq(beats_left == 0),
                     self.rdata.valid.eq(beats_left != 0),
                     self.rdata.payload.ok.eq(1),
                     self.rdata.payload.last.eq(beats_left == 1)]
        with m.If(self.rcmd.valid & self.rcmd.ready):
            m.d.sync += beats_left.eq(self.block_words)
        with m.If(self.rdata.valid & self.rdata.ready):
            m.d.sync += beats_left.eq(beats_left - 1)
        return m
