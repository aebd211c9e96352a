"""Simulation images: an Amaranth design turned into Verilog and then into a Verilator model.

Each image is built once and cached under `build/sim/<name>-<hash>/`, keyed on the generated
Verilog, the build options and the cocotb and Verilator versions, so a test session (or the
next one) reuses it while the design is unchanged. A file lock makes concurrent pytest-xdist
workers share one build.
"""

import fcntl
import hashlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from amaranth.back import verilog

from .toolchain import MAKE_FIXES, make_fixes, use_verilator

BUILD_ROOT = Path(os.environ.get("PORTJOURNAL_BUILD", Path(__file__).resolve().parents[1] / "build"))
TIMESCALE = ("1ns", "1ps")
DEFAULT_BUILD_ARGS = ("-Wno-fatal", "-Wno-lint", "-Wno-style")


@dataclass(frozen=True)
class Image:
    """A built Verilator model, ready to run cocotb test modules against."""

    name: str
    toplevel: str
    build_dir: Path
    verilog: Path
    built_now: bool
    timescale: tuple[str, str] = TIMESCALE

    def run(self, test_module: str, *, test_dir: Path, testcase: str | None = None,
            seed: int | None = None, extra_env: Mapping[str, str] | None = None,
            plusargs: Sequence[str] = (), waves: bool = False) -> Path:
        """Run cocotb tests from `test_module` in this image; fail if any failed or none ran.

        Under pytest, cocotb's runner itself exits with an error on failed tests (the cocotb
        log above says which); the check here also catches a run in which no test ran."""
        from cocotb_tools.runner import get_results, get_runner

        use_verilator()
        test_dir.mkdir(parents=True, exist_ok=True)
        runner = get_runner("verilator")
        results = test_dir / f"{test_module}.results.xml"
        runner.test(test_module=test_module, hdl_toplevel=self.toplevel, hdl_toplevel_lang="verilog",
                    build_dir=self.build_dir,
                    test_dir=test_dir, testcase=testcase, seed=seed, extra_env=dict(extra_env or {}),
                    plusargs=list(plusargs), results_xml=str(results), waves=waves,
                    timescale=self.timescale)
        total, failed = get_results(results)
        if total == 0 or failed:
            raise AssertionError(f"{self.name}: {failed} of {total} cocotb tests failed (log above, "
                                 f"results in {results})")
        return results


def build_image(name: str, design: Callable[[], object], *, build_args: Sequence[str] = (),
                build_root: Path = BUILD_ROOT, timescale: tuple[str, str] = TIMESCALE) -> Image:
    """Elaborate `design()` to Verilog and build it with Verilator, unless already built.

    `timescale` is (unit, precision); a finer precision (e.g. 1 fs) lets clocks be set to
    within a fraction of a ppm.
    """
    use_verilator()
    toplevel = name
    text = verilog.convert(design(), name=toplevel, emit_src=False)
    args = (*DEFAULT_BUILD_ARGS, *build_args)
    scale = () if timescale == TIMESCALE else timescale  # keeps the keys of existing images
    key = hashlib.sha256("\0".join([text, *args, *_tool_versions(), *scale]).encode()).hexdigest()[:16]
    build_dir = build_root / "sim" / f"{name}-{key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    source = build_dir / f"{toplevel}.v"
    binary = build_dir / toplevel
    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.exists():
            return Image(name, toplevel, build_dir, source, built_now=False, timescale=timescale)
        source.write_text(text)
        from cocotb_tools.runner import get_runner

        started = time.monotonic()
        with make_fixes():
            get_runner("verilator").build(sources=[source], hdl_toplevel=toplevel, build_dir=build_dir,
                                          build_args=list(args), timescale=timescale)
        (build_dir / "build-seconds").write_text(f"{time.monotonic() - started:.1f}\n")
        return Image(name, toplevel, build_dir, source, built_now=True, timescale=timescale)


def build_harness(name: str, design: Callable[[], object], sources: Sequence[Path], *,
                  build_args: Sequence[str] = (), build_root: Path = BUILD_ROOT) -> Path:
    """Build `design()` with a C++ harness (`--exe`) into a free-running binary, unless built.

    For benches that must run faster than cocotb can drive clocks: the harness owns `main`,
    the clocks and the measurements. Cached like `build_image`, keyed on the Verilog, the
    harness sources, the options and the Verilator version. Returns the binary's path.
    """
    import subprocess

    use_verilator()
    toplevel = name
    text = verilog.convert(design(), name=toplevel, emit_src=False)
    args = ("-O3", *(arg for fix in MAKE_FIXES for arg in ("-MAKEFLAGS", fix)), "-MAKEFLAGS", "OPT_FAST=-O2",
            *DEFAULT_BUILD_ARGS, *build_args)
    sources = [Path(src).resolve() for src in sources]
    parts = [text, *args, *_tool_versions(), *(src.read_text() for src in sources)]
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    build_dir = build_root / "bench" / f"{name}-{key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    binary = build_dir / toplevel
    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.exists():
            return binary
        source = build_dir / f"{toplevel}.v"
        source.write_text(text)
        started = time.monotonic()
        subprocess.run(["verilator", "--cc", "--exe", "--build", "-j", "2", "--top-module", toplevel,
                        "-Mdir", str(build_dir / "obj"), "-o", str(binary), *args,
                        str(source), *map(str, sources)],
                       check=True, stdout=subprocess.DEVNULL)
        (build_dir / "build-seconds").write_text(f"{time.monotonic() - started:.1f}\n")
        return binary


def _tool_versions() -> tuple[str, ...]:
    """What else a built model depends on: a new cocotb or Verilator means a rebuild."""
    return tuple(f"{name}=={version(name)}" for name in ("cocotb", "verilator"))
