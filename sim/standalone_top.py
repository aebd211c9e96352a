"""A simulation top for the standalone image's tests: `DeviceImage(store_blocks=…)` on a
`BlockStore`, with a clock-derived time per port as in `sim/device_top.py`.

The test drives only the link bytes (`rx`, `tx`): the host's INJECT_WRITE frames are the
ports' only traffic, and READ_BLOCK reads the on-chip volume back.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from boards.storage import BlockStore, connect_store
from firmware.image import DeviceImage
from sim.device_top import NS_PER_CYCLE, time_origin


class StandaloneTestTop(wiring.Component):
    rx: In(stream.Signature(8))
    tx: Out(stream.Signature(8))

    def __init__(self, *, store_blocks: int, **image_args):
        self.image = DeviceImage(time_source="input", store_blocks=store_blocks, **image_args)
        self.store = BlockStore(ports=self.image.ports, block_bytes=self.image.block_bytes,
                                blocks=store_blocks, datapath_bits=self.image.datapath_bits)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        image = m.submodules.image = self.image
        store = m.submodules.store = self.store
        wiring.connect(m, wiring.flipped(self.rx), image.rx)
        wiring.connect(m, image.tx, wiring.flipped(self.tx))
        wiring.connect(m, image.store_rcmd, store.link_rcmd)
        wiring.connect(m, store.link_rdata, image.store_rdata)
        for p in range(self.image.ports):
            board = image.port[p]
            time = Signal(64, init=time_origin(p), name=f"time{p}")
            m.d.sync += time.eq(time + NS_PER_CYCLE)
            m.d.comb += board.time.eq(time)
            connect_store(m, board, store.port[p])
        return m
