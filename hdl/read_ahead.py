"""ReadAhead: a block of consecutive words from a block-RAM read port, fetched ahead into two registers.

A core that streams a block out of its RAM (`boards.storage.BlockStore`'s volume, the
`hdl.inject.Injector`'s buffer) does not address the RAM from its consumer's ready: that would
make the ready, the address, the RAM and the consumer one timing path. Instead `addr` counts
through the block on its own and each word read lands in one of two registers: `head`, which is
`out`, and `spare` behind it. The consumer's ready reaches only the head's enable (one gate) and
the two registers' full flags; the fetch decision looks at registers alone.

The owner wires `addr` into its read port's address (with any high bits of its own: the block)
and the port's data into `data`, then pulses `start` to stream words 0 to `words - 1`; the last
word is marked `last`. `start` only while `idle`: a block's words left in the registers would
come out ahead of the next block's. A word read this cycle lands the next, so a fetch goes out
only while the words held and the word in flight leave a register free for it whatever the
consumer does: about two words every three cycles with the consumer always ready. `idle` is high
once every word fetched has been taken.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out


def word_layout(width: int) -> data.StructLayout:
    """One word out of the block: its data and whether it is the block's last."""
    return data.StructLayout({"data": width, "last": 1})


class ReadAhead(wiring.Component):
    """Streams `words` words of `width` bits read at `addr` through two registers."""

    def __init__(self, *, width: int, words: int):
        self.words = words
        super().__init__({
            "start": In(1),
            "addr": Out(range(words)),
            "data": In(width),
            "out": Out(stream.Signature(word_layout(width))),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        layout = word_layout(len(self.data))
        fetching = Signal()                     # words of the block are left to read
        fetched, fetched_last = Signal(), Signal()   # `data` is the word addressed a cycle ago
        arriving = Signal(layout)
        head_full, spare_full = Signal(), Signal()
        spare = Signal(layout)
        pop = Signal()
        m.d.sync += [fetched.eq(0), fetched_last.eq(self.addr == self.words - 1)]
        m.d.comb += [arriving.data.eq(self.data), arriving.last.eq(fetched_last),
                     self.out.valid.eq(head_full), pop.eq(head_full & self.out.ready),
                     self.idle.eq(~fetching & ~fetched & ~head_full)]

        # The head takes the spare, else the arriving word, whenever it is empty or taken; the
        # spare keeps an arriving word the head has no room for. A word arrives only while the
        # spare is empty (the fetch bound), so the spare takes every arriving word, enabled by
        # `fetched` alone: the consumer's ready reaches only the head's enable.
        with m.If(fetched):
            m.d.sync += spare.eq(arriving)
        with m.If(pop | ~head_full):
            m.d.sync += [self.out.payload.eq(Mux(spare_full, spare, arriving)),
                         head_full.eq(spare_full | fetched), spare_full.eq(0)]
        with m.Elif(fetched):
            m.d.sync += spare_full.eq(1)

        with m.If(self.start):
            m.d.sync += [self.addr.eq(0), fetching.eq(1)]
        with m.Elif(fetching & ~spare_full & ~(head_full & fetched)):
            m.d.sync += [fetched.eq(1), self.addr.eq(self.addr + 1)]
            with m.If(self.addr == self.words - 1):
                m.d.sync += fetching.eq(0)
        return m
