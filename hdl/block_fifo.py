"""BlockFIFO: `SyncFIFOBuffered` that keeps its entries in block RAM on an iCE40.

An iCE40 has no distributed RAM, so Yosys builds a small memory (a FIFO of a few entries) from
flip-flops, a logic cell a bit, where one block RAM of the 30 would do: on the iCEBreaker the
link's response queue and the flush engine's output FIFO were ~700 of its 5,280 cells. On other
devices the FIFO is Amaranth's own, left to Yosys (an ECP5 puts it in distributed RAM).
"""

from amaranth.lib.fifo import SyncFIFOBuffered


class BlockFIFO(SyncFIFOBuffered):
    """A `SyncFIFOBuffered` (same ports, same latency) asking for block RAM on an iCE40."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        if getattr(platform, "family", None) == "iCE40" and self.depth > 1:
            m.submodules.storage.attrs["ram_style"] = "block"
        return m
