"""Timestamper: gives each write request of a port its (timestamp, port, sequence) triple.

The triple orders all requests of all ports totally: first by the port's local time (kept in
step across ports by the DPLL), then by port index, then by the per-port sequence number, which
also orders requests of one port that arrive within the same nanosecond.
"""

from amaranth.hdl import Module
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

TIME_BITS = 64
PORT_BITS = 8
SEQ_BITS = 32

StampLayout = data.StructLayout({"timestamp": TIME_BITS, "port": PORT_BITS, "seq": SEQ_BITS})


class Timestamper(wiring.Component):
    """Latches `time` and the next sequence number when `take` (or `note`) is high.

    `stamp` holds the triple of the last take from the following cycle on (registered, so the
    caller samples it one cycle after `take`). Sequence numbers start at 0 and count takes;
    `next_seq` is the one the next take gets (the number of takes so far). `note` stamps a
    request that gets no entry (an invalid port's write) without using up a sequence number:
    `stamp` then reads the request's time and the seq the next take gets.
    """

    time: In(TIME_BITS)
    take: In(1)
    note: In(1)
    stamp: Out(StampLayout)
    next_seq: Out(SEQ_BITS)

    def __init__(self, port: int):
        if not 0 <= port < 2**PORT_BITS:
            self._MustUse__silence = True  # a rejected core is not an unused one
            raise ValueError(f"port index {port} does not fit in {PORT_BITS} bits")
        self.port = port
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.stamp.port.eq(self.port)
        with m.If(self.take | self.note):
            m.d.sync += [self.stamp.timestamp.eq(self.time), self.stamp.seq.eq(self.next_seq)]
        with m.If(self.take):
            m.d.sync += self.next_seq.eq(self.next_seq + 1)
        return m
