"""DPLL bench: four ports (-200, +100, +200 ppm at 125 MHz; -50 ppm at 100 MHz) locked to one
time base broadcasting every 1 ms with ±1 reference-cycle marker jitter, for 200 broadcasts
after lock, then 100 ms of holdover.

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
first missing marker; backward_steps counts any decrease of a port's time between two of
its edges, over the whole run.
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
    args = parser.parse_args()

    out_dir = BUILD_ROOT / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    binary = build_harness("dpll_rig", lambda: DpllRig(interval_ns=args.interval_ns),
                           [ROOT / "bench" / "dpll" / "harness.cpp"])
    print(f"harness ready in {time.monotonic() - started:.1f} s: {binary}")
    csv = out_dir / f"dpll-seed{args.seed}.csv"
    cmd = [str(binary), str(args.interval_ns), str(args.broadcasts), str(args.holdover_ms), str(args.seed),
           str(args.window_ns), str(csv)]
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
    final_err = [float(v) for v in meta["final_err"].split(":")]
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
    holdover = max(abs(e) for e in final_err)
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
    ax.set_yscale("symlog", linthresh=20)
    ax.set_title("DPLL error: acquisition, locked run, holdover (symlog)")
    ax2.set_title(f"locked run with broadcasts: max |err| {max_abs:.1f} ns, mean |err| {mean_abs:.2f} ns")
    ax2.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(out_dir / "dpll.png", dpi=110)
    print(f"plot: {out_dir / 'dpll.png'}")

    ppms = [p for _, p in PORTS]
    print(f"dpll: ports={n} ppm={min(ppms)}..{max(ppms)} lock_broadcasts={lock_broadcasts} "
          f"max_abs_err_ns={max_abs:.1f} mean_abs_err_ns={mean_abs:.2f} max_skew_ns={max_skew:.1f} "
          f"holdover_100ms_err_ns={holdover:.0f} backward_steps={backward}")


if __name__ == "__main__":
    main()
