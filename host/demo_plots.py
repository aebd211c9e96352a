"""The demo's pictures: a timeline of the run and each port's DPLL over it (PNG, matplotlib Agg).

Times on both are simulated milliseconds since the board's first clock edge (its time origin):
the board runs slower than the wall clock, and device time is what the journal records.
"""

from pathlib import Path

import numpy as np

PORT_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
                "tab:cyan")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def timeline(path: Path, index: np.ndarray, flushes: list[tuple[int, int]], result, *, ports: int,
             silent_port: int, ransom_port: int) -> None:
    """Per port: writes per simulated ms (from the journal), flush points; the bookmark, the
    attack, the outage and the restore point across all lanes."""
    plt = _pyplot()
    origin = result.time_origin_ns
    ms = lambda ns: (np.asarray(ns, dtype=np.float64) - origin) / 1e6  # noqa: E731
    end = ms(result.events["stop"])
    bins = np.linspace(0, float(end), 200)
    fig, lanes = plt.subplots(ports, 1, sharex=True, figsize=(11, 1.6 * ports + 1.2))
    for port, ax in enumerate(lanes):
        mine = index["timestamp"][index["port"] == port]
        counts, edges = np.histogram(ms(mine), bins=bins)
        ax.stairs(counts / np.diff(edges), edges, fill=True, color=PORT_COLOURS[port % 8], alpha=0.7)
        flushed = [t for t, p in flushes if p == port]
        if flushed:
            top = max(float((counts / np.diff(edges)).max()), 1.0)
            ax.plot(ms(flushed), np.full(len(flushed), top * 1.05), "|", color="black", markersize=5,
                    alpha=0.5, label="flush")
        label = f"port {port}"
        if port == ransom_port:
            label += "\n(ransomware)"
        if port == silent_port:
            label += "\n(silenced)"
            since, back = result.outage
            ax.axvspan(ms(since), ms(back), color="grey", alpha=0.3)
            ax.annotate("invalid\n(silent)", ((ms(since) + ms(back)) / 2, 0.5),
                        xycoords=("data", "axes fraction"), ha="center", va="center", fontsize="small")
        ax.set_ylabel(label, rotation=0, ha="right", va="center")
        ax.axvspan(ms(result.events["attack"]), ms(result.events["attack_done"]), color="red", alpha=0.12)
        ax.axvline(ms(result.bookmark_ns), color="green", linewidth=2)
    top = lanes[0]
    top.annotate("bookmark = restore point", (ms(result.bookmark_ns), 1.02),
                 xycoords=("data", "axes fraction"), color="green", ha="center", va="bottom")
    top.annotate("attack", ((ms(result.events["attack"]) + ms(result.events["attack_done"])) / 2, 1.02),
                 xycoords=("data", "axes fraction"), color="red", ha="center", va="bottom")
    lanes[-1].set_xlabel("simulated time since the board started (ms)")
    fig.suptitle(f"portjournal demo ({result.mode}): writes per ms per port, flush points (|), "
                 f"bookmark, attack, outage", y=0.995)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def dpll(path: Path, samples: list[tuple[int, int, dict[str, int]]], board, origin_ns: int) -> None:
    """Each port's DPLL over the run, from its registers: the phase error at the last broadcast
    and the frequency correction it applies (which settles at minus its oscillator's offset)."""
    plt = _pyplot()
    fig, (err_ax, ppm_ax) = plt.subplots(2, 1, sharex=True, figsize=(11, 6.5))
    for port, ppm in enumerate(board.ppm):
        mine = [(t, r) for t, p, r in samples if p == port and r["dpll_locked"]]
        if not mine:
            continue
        t = (np.array([s[0] for s in mine], dtype=np.float64) - origin_ns) / 1e6
        err = np.array([s[1]["dpll_phase_error"] for s in mine], dtype=np.int64)
        err = np.where(err >= 2**31, err - 2**32, err)
        inc = np.array([s[1]["dpll_increment_hi"] << 32 | s[1]["dpll_increment_lo"] for s in mine],
                       dtype=np.float64)
        nominal = 1e9 / (board.clock_hz / (1 + ppm * 1e-6)) * 2**32
        colour = PORT_COLOURS[port % 8]
        err_ax.plot(t, err, ".-", color=colour, markersize=3, linewidth=0.6, label=f"port {port}")
        ppm_ax.plot(t, (inc / nominal - 1) * 1e6, ".-", color=colour, markersize=3, linewidth=0.6,
                    label=f"port {port} ({ppm:+g} ppm oscillator)")
        ppm_ax.axhline(-ppm, color=colour, linestyle="--", linewidth=0.8)
    err_ax.set_ylabel("phase error at the broadcast (ns)")
    err_ax.legend(loc="upper right", ncol=4, fontsize="small")
    err_ax.grid(alpha=0.3)
    ppm_ax.set_ylabel("frequency correction (ppm)")
    ppm_ax.set_xlabel("simulated time since the board started (ms)")
    ppm_ax.legend(loc="upper right", ncol=2, fontsize="small")
    ppm_ax.grid(alpha=0.3)
    fig.suptitle("each port's DPLL, locked to the time base broadcast "
                 "(dashed: minus its oscillator's offset)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
