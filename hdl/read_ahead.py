"""ReadAhead: a block of consecutive words from a block-RAM read port, fetched ahead into a queue.

A core that streams a block out of its RAM (`boards.storage.BlockStore`'s volume, the
`hdl.inject.Injector`'s buffer) does not address the RAM from its consumer's ready: that would
make the ready, the address, the RAM and the consumer one timing path. Instead `addr` counts
through the block on its own, each word read lands in a short queue (`SyncFIFOBuffered`), and
the consumer takes `out` from the queue's registered head.

The owner wires `addr` into its read port's address (with any high bits of its own: the block)
and the port's data into `data`, then pulses `start` to stream words 0 to `words - 1`; the last
word is marked `last`. `start` only while `idle`: a block's words left in the queue would come
out ahead of the next block's. The bound on fetching lives here alone: a word read this cycle is
written into the queue the next, into its inner slots (the head register takes it a cycle
later), so a fetch goes out only while the queue's level and the word in flight leave one
entry free. `idle` is high once every word fetched has been taken.
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out


def word_layout(width: int) -> data.StructLayout:
    """One word out of the block: its data and whether it is the block's last."""
    return data.StructLayout({"data": width, "last": 1})


class ReadAhead(wiring.Component):
    """Streams `words` words of `width` bits read at `addr`; `depth` (at least 3) queue entries."""

    def __init__(self, *, width: int, words: int, depth: int = 3):
        if depth < 3:
            self._MustUse__silence = True  # a rejected core is not an unused one
            raise ValueError(f"a read-ahead queue needs at least 3 entries (a word in flight and "
                             f"a free slot besides the head), not {depth}")
        self.words = words
        self.depth = depth
        super().__init__({
            "start": In(1),
            "addr": Out(range(words)),
            "data": In(width),
            "out": Out(stream.Signature(word_layout(width))),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        queue = m.submodules.queue = SyncFIFOBuffered(width=self.out.payload.shape().size, depth=self.depth)
        fetching = Signal()                     # words of the block are left to read
        fetched, fetched_last = Signal(), Signal()   # `data` is the word addressed a cycle ago
        m.d.sync += [fetched.eq(0), fetched_last.eq(self.addr == self.words - 1)]
        m.d.comb += [queue.w_en.eq(fetched), queue.w_data.eq(Cat(self.data, fetched_last)),
                     self.out.valid.eq(queue.r_rdy), self.out.payload.eq(queue.r_data),
                     queue.r_en.eq(self.out.ready),
                     self.idle.eq(~fetching & ~fetched & (queue.r_level == 0))]
        with m.If(self.start):
            m.d.sync += [self.addr.eq(0), fetching.eq(1)]
        with m.Elif(fetching & (queue.w_level + fetched < self.depth - 1)):
            m.d.sync += [fetched.eq(1), self.addr.eq(self.addr + 1)]
            with m.If(self.addr == self.words - 1):
                m.d.sync += fetching.eq(0)
        return m
