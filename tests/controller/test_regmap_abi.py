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
    assert {r.name for r in REGISTERS} >= {"mode", "reenable", "dpll_locked", "rx_crc_errors",
                                             "dpll_time_lo", "dpll_rejected"}


def test_counters_are_the_port_block():
    names = [r.name for r in regmap.PORT if r.group == "port"]
    assert names == [c[0] for c in regmap.COUNTERS]


def test_dpll_block_is_dpll_outputs():
    """Each DPLL output is `dpll_<name>`, or `_lo` and `_hi` words when wider than 32 bits,
    at consecutive offsets; together the words hold every bit of the output once."""
    dpll = [r for r in regmap.PORT if r.group == "dpll"]
    assert [r.name for r in dpll] == [w[0] for w in regmap.DPLL_WORDS]
    assert [r.offset for r in dpll] == list(range(regmap.DPLL_OFFSET, regmap.DPLL_OFFSET + len(dpll)))
    for name, width, access, _ in regmap.DPLL_OUTPUTS:
        regs = [r for r in dpll if r.name == f"dpll_{name}" or r.name.rsplit("_", 1)[0] == f"dpll_{name}"]
        assert [r.name for r in regs] == ([f"dpll_{name}"] if width <= 32 else
                                          [f"dpll_{name}_lo", f"dpll_{name}_hi"])
        assert sum(r.width for r in regs) == width and all(r.access == access for r in regs)
    assert register("dpll_increment_hi", 0).width == 8 and register("dpll_time_hi", 0).width == 32


def test_abi_imports_no_gateware():
    text = Path(regmap.__file__).read_text()
    assert "amaranth" not in text and "import hdl" not in text and "from hdl" not in text
