"""Register map: the table is consistent, lookups work, docs/registers.md is generated from it."""

from pathlib import Path

import pytest

from firmware.abi import regmap
from firmware.abi.regmap import PORT_STRIDE, REGISTERS, address, decode_address, markdown, register

DOC = Path(__file__).resolve().parents[2] / "docs" / "registers.md"


def test_docs_are_up_to_date():
    assert DOC.read_text() == markdown(), "run: python -m firmware.abi.regmap > docs/registers.md"


def test_lookups():
    assert address("image_id") == 0
    assert address("watermark", 0) == PORT_STRIDE
    assert address("acknowledged", 3) == 4 * PORT_STRIDE + register("acknowledged", 3).offset
    assert decode_address(address("acknowledged", 3)) == (3, register("acknowledged", 0))
    assert decode_address(address("scratch")) == (None, register("scratch"))
    assert decode_address(0xFF) is None
    with pytest.raises(KeyError, match="per-port"):
        register("scratch", 0)
    assert {r.name for r in REGISTERS} >= {"mode", "reenable", "dpll_locked", "rx_crc_errors"}


def test_counters_are_the_port_block():
    names = [r.name for r in regmap.PORT if r.group == "port"]
    assert names == [c[0] for c in regmap.COUNTERS]


def test_abi_imports_no_gateware():
    text = Path(regmap.__file__).read_text()
    assert "amaranth" not in text and "import hdl" not in text and "from hdl" not in text
