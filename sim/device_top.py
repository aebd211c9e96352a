"""A simulation top for link tests: `DeviceImage` with a clock-derived time and stub storage.

Each port's `time` is a free-running ns counter (8 ns per cycle, a different start per port),
and its primary storage accepts every write and completes it OK one write at a time, so the
test drives only the link bytes and the ports' ingress. Copy-on-write reads are not answered:
use redo mode. The virtual board replaces these stubs with its storage model and time base.
With `link="dma"` the top has the image's `bar` (register bus) and `wr` (memory writes) in
place of the byte streams.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from firmware.image import DeviceImage
from hdl.dma import WriteBeat
from hdl.link import RegisterBus
from hdl.write_path import beat_layout

NS_PER_CYCLE = 8


def time_origin(port: int) -> int:
    return 1_000_000 * (port + 1)


class DeviceTestTop(wiring.Component):
    def __init__(self, **image_args):
        self.image = DeviceImage(time_source="input", **image_args)     # `time` from the counters below
        self.ports = self.image.ports
        self.serial = image_args.get("link", "serial") == "serial"
        if self.serial:
            members = {"rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8))}
        else:
            members = {"bar": In(RegisterBus), "wr": Out(stream.Signature(WriteBeat))}
        super().__init__({
            **members,
            "ingress": In(stream.Signature(beat_layout(self.image.datapath_bits))).array(self.ports),
        })

    def elaborate(self, platform):
        m = Module()
        image = m.submodules.image = self.image
        if self.serial:
            wiring.connect(m, wiring.flipped(self.rx), image.rx)
            wiring.connect(m, image.tx, wiring.flipped(self.tx))
        else:
            wiring.connect(m, wiring.flipped(self.bar), image.bar)
            wiring.connect(m, image.wr, wiring.flipped(self.wr))
        for p in range(self.ports):
            board = image.port[p]
            time = Signal(64, init=time_origin(p), name=f"time{p}")
            m.d.sync += time.eq(time + NS_PER_CYCLE)
            m.d.comb += board.time.eq(time)
            wiring.connect(m, wiring.flipped(self.ingress[p]), board.ingress)
            owed = Signal(8, name=f"owed{p}")
            done = board.pri_write.valid & board.pri_write.payload.last
            answered = board.pri_wresp.valid & board.pri_wresp.ready
            m.d.comb += [board.pri_write.ready.eq(1), board.pri_wresp.valid.eq(owed != 0),
                         board.pri_wresp.payload.ok.eq(1)]
            m.d.sync += owed.eq(owed + done - answered)
        return m
