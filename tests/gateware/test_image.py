"""DeviceImage: identity, argument checks, and it elaborates for any port count."""

import pytest
from amaranth.back import rtlil

from firmware.abi.entry import Mode
from firmware.abi.frames import IDENTITY, IMAGE_ID, IMAGE_VERSION
from firmware.image import DeviceImage


def test_identity_bytes():
    image = DeviceImage(ports=3, block_bytes=64, depth=8, mode=Mode.COPY_ON_WRITE)
    assert IDENTITY.unpack(image.identity()) == (IMAGE_ID, IMAGE_VERSION, 3, 1, 8, 64, 64, 0)
    image._MustUse__silence = image.link._MustUse__silence = True     # not elaborated


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="ports"):
        DeviceImage(ports=0)
    with pytest.raises(ValueError, match="max_payload"):
        DeviceImage(ports=1, block_bytes=64, max_payload=64)


@pytest.mark.parametrize("ports", [1, 3])
def test_elaborates(ports):
    assert "port2" in rtlil.convert(DeviceImage(ports=ports, block_bytes=64, depth=4)) or ports < 3


def test_dpll_or_time_seam():
    """`dpll=True`: a `timebase` wire in, a DPLL per port driving `time` and the `dpll` registers;
    `dpll=False`: the board drives each port's `time` and the `dpll` registers read 0."""
    with_dpll = DeviceImage(ports=2, block_bytes=64, depth=4, clk_hz=125e6, interval_ns=100_000,
                            unit_ns=100_000)
    assert "timebase" in with_dpll.signature.members
    assert "time" not in with_dpll.signature.members["port"].signature.members
    assert "dpll1" in rtlil.convert(with_dpll)
    seam = DeviceImage(ports=2, block_bytes=64, depth=4, dpll=False)
    assert "timebase" not in seam.signature.members
    assert "time" in seam.signature.members["port"].signature.members
    assert "dpll0" not in rtlil.convert(seam)
    with pytest.raises(ValueError, match="cycles per bit"):
        DeviceImage(ports=1, block_bytes=64, clk_hz=20e6)


def test_dma_link_seam():
    """`link="dma"`: the register bus as the BAR and the memory-write stream, no byte streams."""
    dma = DeviceImage(ports=1, block_bytes=64, depth=4, dpll=False, link="dma")
    members = dma.signature.members
    assert {"bar", "wr", "dma_busy"} <= set(members) and not {"rx", "tx"} & set(members)
    assert "dma_produced" in rtlil.convert(dma)
    with pytest.raises(ValueError, match="serial or dma"):
        DeviceImage(ports=1, block_bytes=64, link="pcie")


def test_standalone_seam():
    """`store_blocks`: the injector is every port's ingress (no `ingress` member), the link's
    READ_BLOCK reaches the board's store, IDENTITY says so; only on the serial link."""
    from firmware.abi.frames import FEATURE_INJECTION

    image = DeviceImage(ports=2, block_bytes=64, depth=4, dpll=False, store_blocks=32)
    members = image.signature.members
    assert {"store_rcmd", "store_rdata"} <= set(members)
    assert "ingress" not in members["port"].signature.members
    assert IDENTITY.unpack(image.identity())[7] == FEATURE_INJECTION
    assert "injector" in rtlil.convert(image)
    plain = DeviceImage(ports=2, block_bytes=64, depth=4, dpll=False)
    assert "ingress" in plain.signature.members["port"].signature.members
    assert "store_rcmd" not in plain.signature.members
    plain._MustUse__silence = plain.link._MustUse__silence = True     # not elaborated
    with pytest.raises(ValueError, match="on-chip volume only on the serial link"):
        DeviceImage(ports=1, block_bytes=64, link="dma", store_blocks=8)


@pytest.mark.parametrize("width", [8, 16, 32])
def test_datapath_width(width):
    """`datapath_bits`: every port stream and the store's beats are that wide, IDENTITY says it,
    and the narrow image elaborates (the injector, the link's frame buffers at that width)."""
    image = DeviceImage(ports=2, block_bytes=64, depth=4, dpll=False, store_blocks=32, datapath_bits=width)
    port = image.signature.members["port"].signature.members
    for name in ("pri_write", "pri_rdata"):
        assert port[name].signature.members["payload"].shape.size == width + 2, name
    assert image.signature.members["store_rdata"].signature.members["payload"].shape.size == width + 2
    assert IDENTITY.unpack(image.identity())[6] == width
    assert "injector" in rtlil.convert(image)


def test_rejects_bad_widths():
    from boards.sim import SimBoard
    from boards.storage import BlockStore
    from hdl.inject import Injector
    from hdl.link import LinkController

    with pytest.raises(ValueError, match="datapath_bits must be 8, 16, 32 or 64"):
        DeviceImage(ports=1, block_bytes=64, datapath_bits=24)
    with pytest.raises(ValueError, match="DMA link takes 64-bit beats only"):
        DeviceImage(ports=1, block_bytes=64, link="dma", datapath_bits=16)
    with pytest.raises(ValueError, match=r"at most 2\*\*datapath_bits blocks"):
        DeviceImage(ports=1, block_bytes=64, store_blocks=257, datapath_bits=8)
    for core in (lambda: LinkController(ports=1, block_bytes=64, identity=bytes(16), datapath_bits=128),
                 lambda: Injector(ports=1, block_bytes=64, datapath_bits=128),
                 lambda: BlockStore(ports=1, block_bytes=64, blocks=8, datapath_bits=128)):
        with pytest.raises(ValueError, match="datapath_bits must be"):
            core()
    with pytest.raises(ValueError, match=r"1 to 2\*\*datapath_bits blocks"):
        BlockStore(ports=1, block_bytes=64, blocks=257, datapath_bits=8)
    with pytest.raises(ValueError, match="only in its standalone variant"):
        SimBoard(ports=1, datapath_bits=16)
