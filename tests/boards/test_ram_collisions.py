"""The board build's `collisions_dont_care`: memories that say `NO_RW_CHECK` cost Yosys no
read-write collision emulation around an iCE40 block RAM; the others keep their behaviour."""

import re
import subprocess
from pathlib import Path

from amaranth.back import rtlil
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from boards.build import collisions_dont_care, toolchain_env
from hdl.ram import NO_RW_CHECK


class TwoMemories(wiring.Component):
    """A memory with `NO_RW_CHECK` (a plain and a transparent read port) and one without."""

    addr: In(8)
    data: In(16)
    we: In(1)
    marked: Out(32)
    plain: Out(16)

    def __init__(self, only_marked: bool = False):
        self.only_marked = only_marked
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        names = ("marked",) if self.only_marked else ("marked", "plain")
        for name in names:
            mem = m.submodules[name] = Memory(shape=16, depth=256, init=[],
                                              attrs=NO_RW_CHECK if name == "marked" else {})
            wp = mem.write_port()
            m.d.comb += [wp.addr.eq(self.addr), wp.data.eq(self.data), wp.en.eq(self.we)]
            ports = [mem.read_port()] + ([mem.read_port(transparent_for=(wp,))] if name == "marked" else [])
            for n, rp in enumerate(ports):
                m.d.comb += [rp.addr.eq(~self.addr), getattr(self, name)[16 * n:16 * n + 16].eq(rp.data)]
        return m


def read_ports(text: str) -> dict[str, list[tuple[str, str]]]:
    """Per memory: each read port's (TRANSPARENCY_MASK, COLLISION_X_MASK)."""
    ports = {}
    for cell in re.findall(r"cell \$memrd_v2 .*?\n\s*end\n", text, re.S):
        memid = re.search(r'MEMID "\\\\([a-z]+)', cell)[1]
        masks = tuple(re.search(rf"{p} (\S+)", cell)[1] for p in ("TRANSPARENCY_MASK", "COLLISION_X_MASK"))
        ports.setdefault(memid, []).append(masks)
    return ports


def test_marked_read_ports_become_collision_dont_care():
    text = rtlil.convert(TwoMemories())
    before, after = read_ports(text), read_ports(collisions_dont_care(text))
    assert sorted(before["marked"]) == [("1'0", "1'0"), ("1'1", "1'0")]
    assert after["marked"] == [("1'0", "1'1"), ("1'0", "1'1")]
    assert after["plain"] == before["plain"] == [("1'0", "1'0")]
    assert collisions_dont_care(rtlil.convert(TwoMemories())) == collisions_dont_care(text)


def ice40_cells(text: str, tmp_path: Path) -> str:
    """Yosys's cells for `text` after mapping memories to iCE40 block RAM."""
    (tmp_path / "design.il").write_text(text)
    env = toolchain_env()           # the board build's YoWASP tools (and their compiled cache)
    script = ("read_rtlil design.il; synth_ice40 -top top -run :map_ffram; opt -fast; "
              "tee -o cells.txt stat -width")
    subprocess.run([env["YOSYS"], "-q", "-p", script], cwd=tmp_path, env=env, capture_output=True, check=True)
    return (tmp_path / "cells.txt").read_text()


def test_no_emulation_around_an_ice40_block_ram(tmp_path):
    """Unmarked, Yosys wraps each read port in registers and a multiplexer of the word's width
    (read-first and transparency emulated); marked, the block RAMs are all there is."""
    text = rtlil.convert(TwoMemories(only_marked=True))
    assert re.search(r"\$(dff|dffe|mux)_16\b", ice40_cells(text, tmp_path))
    cells = ice40_cells(collisions_dont_care(text), tmp_path)
    assert "SB_RAM40_4K" in cells and not re.search(r"\$(s?dffe?|mux|eq)_\d+", cells), cells
