"""DPLL bench: four ports (-200, +100, +200 ppm at 125 MHz; -50 ppm at 100 MHz) locked to one
time base broadcasting every 1 ms with ±1 reference-cycle marker jitter, for 200 broadcasts
after lock, then 100 ms of holdover, then re-acquisition with two ports ahead of the broadcast.

Builds `sim/dpll_rig.py` with the C++ harness `bench/dpll/harness.cpp` (cached), runs it,
computes the figures from its per-window CSV, writes `build/bench/dpll.png` and prints, last:

    dpll: ports=4 ppm=-200..200 lock_broadcasts=N max_abs_err_ns=X mean_abs_err_ns=Y
          max_skew_ns=Z holdover_100ms_err_ns=H backward_steps=B          (one line)

Errors are each port's integer-ns time after one of its clock edges minus that edge's true
time, over every port edge from the moment all ports are locked until broadcasts stop;
skew is the spread of the four ports' errors at the same instant (each at its latest edge,
evaluated at every reference edge); lock_broadcasts counts markers sent up to the instant
all ports are locked (the first at 1 ms: the time base sends no frame at
time 0); holdover_100ms_err_ns is the worst port's |error| 100 ms after the
first missing marker; backward_steps counts every port edge at which the port's time did not
increase, over the whole run: acquisition, locked run, holdover and re-acquisition.

Re-acquisition: after the holdover the broadcasts resume with p0's wire delayed by 40
reference cycles and p3's by 25 (`--resume-delays`; the rig's `p{i}_delay`, changed while the
wire is idle), so at re-acquisition their local times are 400 ns and 250 ns (plus the holdover
error) ahead of the broadcast and must slew back; p1 and p2 re-acquire on their holdover
error alone (forward step if behind, slew if ahead). The run ends `--relocked-broadcasts`
after every port is locked again. A line before the last gives the re-lock time, each port's
phase error at re-acquisition and the largest error after re-lock (against true time − 10 ns
per delay cycle). The bench exits non-zero if a port does not lock again.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sim.dpll_rig import PORTS, DpllRig  # noqa: E402
from sim.image import BUILD_ROOT, build_harness  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--interval-ns", type=int, default=1_000_000)
    parser.add_argument("--broadcasts", type=int, default=200, help="broadcasts after lock")
    parser.add_argument("--holdover-ms", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--window-ns", type=int, default=10_000)
    parser.add_argument("--relocked-broadcasts", type=int, default=10,
                        help="broadcasts after every port is locked again")
    parser.add_argument("--resume-delays", default="40:0:0:25",
                        help="per-port wire delays (reference cycles) when broadcasts resume")
    args = parser.parse_args()

    out_dir = BUILD_ROOT / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    binary = build_harness("dpll_rig", lambda: DpllRig(interval_ns=args.interval_ns),
                           [ROOT / "bench" / "dpll" / "harness.cpp"])
    print(f"harness ready in {time.monotonic() - started:.1f} s: {binary}")
    csv = out_dir / f"dpll-seed{args.seed}.csv"
    cmd = [str(binary), str(args.interval_ns), str(args.broadcasts), str(args.holdover_ms), str(args.seed),
           str(args.window_ns), str(csv), str(args.relocked_broadcasts), args.resume_delays]
    for hz, ppm in PORTS:
        cmd += [str(hz), str(ppm)]
    started = time.monotonic()
    subprocess.run(cmd, check=True)
    print(f"simulated in {time.monotonic() - started:.1f} s")

    meta = {}
    with open(csv) as f:
        for line in f:
            if line.startswith("#"):
                meta = dict(item.split("=", 1) for item in line[1:].split())
    rows = np.genfromtxt(csv, delimiter=",", names=True, comments="#")
    n = len(PORTS)
    lock_ns, stop_ns = float(meta["lock_ns"]), float(meta["stop_ns"])
    holdover_err = [float(v) for v in meta["holdover_err"].split(":")]
    resume_ns, relock_ns = float(meta["resume_ns"]), float(meta["relock_ns"])
    t = rows["t_ns"]
    # Windows wholly inside [lock, stop): the locked run with broadcasts.
    window = args.window_ns
    locked_run = (t - window >= lock_ns) & (t <= stop_ns)
    max_abs = max(np.max(np.maximum(np.abs(rows[f"min{i}"][locked_run]), np.abs(rows[f"max{i}"][locked_run])))
                  for i in range(n))
    mean_abs = (sum(rows[f"sumabs{i}"][locked_run].sum() for i in range(n))
                / sum(rows[f"n{i}"][locked_run].sum() for i in range(n)))
    max_skew = rows["skew"][locked_run].max()
    lock_broadcasts = int(lock_ns // args.interval_ns)   # frames sent up to lock: at τ, 2τ, ...
    holdover = max(abs(e) for e in holdover_err)
    backward = int(meta["backward"])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 7))
    for i, (hz, ppm) in enumerate(PORTS):
        label = f"p{i}: {hz / 1e6:g} MHz {ppm:+d} ppm"
        ax.plot(t / 1e6, rows[f"err{i}"], lw=0.6, label=label)
        ax2.plot(t[locked_run] / 1e6, rows[f"err{i}"][locked_run], lw=0.6, label=label)
    for a in (ax, ax2):
        a.axvline(lock_ns / 1e6, color="k", ls=":", lw=0.8)
        a.set_xlabel("true time (ms)")
        a.set_ylabel("time error (ns)")
        a.grid(alpha=0.3)
    ax.axvline(stop_ns / 1e6, color="r", ls=":", lw=0.8)
    ax.axvline(resume_ns / 1e6, color="g", ls=":", lw=0.8)
    ax.axvline(relock_ns / 1e6, color="k", ls=":", lw=0.8)
    ax.set_yscale("symlog", linthresh=20)
    ax.set_title("DPLL error: acquisition, locked run, holdover, re-acquisition (symlog)")
    ax2.set_title(f"locked run with broadcasts: max |err| {max_abs:.1f} ns, mean |err| {mean_abs:.2f} ns")
    ax2.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(out_dir / "dpll.png", dpi=110)
    print(f"plot: {out_dir / 'dpll.png'}")

    acquired = meta["acquired_err"].replace(":", "/")
    print(f"re-acquisition: delays {meta['delays'].replace(':', '/')} cycles, all locked again "
          f"{(relock_ns - resume_ns) / args.interval_ns:.1f} intervals after resuming, phase error at "
          f"re-acquisition {acquired} ns (negative: ahead, slewed), max |err| after re-lock "
          f"{float(meta['relocked_max_abs_err_ns']):.1f} ns, went_back monitors {meta['went_back_ports']}")
    ppms = [p for _, p in PORTS]
    print(f"dpll: ports={n} ppm={min(ppms)}..{max(ppms)} lock_broadcasts={lock_broadcasts} "
          f"max_abs_err_ns={max_abs:.1f} mean_abs_err_ns={mean_abs:.2f} max_skew_ns={max_skew:.1f} "
          f"holdover_100ms_err_ns={holdover:.0f} backward_steps={backward}")


if __name__ == "__main__":
    main()
