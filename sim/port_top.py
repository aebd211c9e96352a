"""CountedPort: a JournalPort whose event outputs are counted, for benches that read counters.

A `JournalPort` pulses its statistics (`firmware.abi.regmap.EVENTS`) once per event and leaves
the counting to the image's register block (`hdl.counter_bank`). A bench of the port alone
reads whole counters off the top instead: this top counts each pulse in a 32-bit output of the
pulse's name, the way that register reads; every other member is the port's own.
"""

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from firmware.abi.regmap import EVENTS
from hdl.counter_bank import COUNTER_BITS
from hdl.journal_port import JournalPort


class CountedPort(wiring.Component):
    """`JournalPort(**geometry)` with its event outputs replaced by their counts."""

    def __init__(self, **geometry):
        self.journal_port = JournalPort(**geometry)
        members = dict(self.journal_port.signature.members.items())
        members.update({name: Out(COUNTER_BITS) for name in members if name in EVENTS})
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        port = m.submodules.port = self.journal_port
        for name, member in port.signature.members.items():
            inner, outer = getattr(port, name), getattr(self, name)
            if name in EVENTS:
                m.d.sync += outer.eq(outer + inner)
            elif member.is_signature:
                if member.flow == Out:
                    wiring.connect(m, inner, wiring.flipped(outer))
                else:
                    wiring.connect(m, wiring.flipped(outer), inner)
            elif member.flow == Out:
                m.d.comb += outer.eq(inner)
            else:
                m.d.comb += inner.eq(outer)
        return m
