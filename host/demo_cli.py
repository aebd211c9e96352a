"""`portjournal demo` (and `make demo`): the main job, end to end on the virtual board."""

import signal
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from firmware.abi.entry import Mode

from . import exitcodes
from .demo import SILENT_PORT
from .timefmt import format_ns

console = Console(soft_wrap=True)


def summary_table(r) -> Table:
    table = Table("", "", title=f"portjournal demo: {r.mode}, seed {r.seed}", show_header=False)
    table.add_row("entries journaled", f"{sum(r.entries)} (per port: {', '.join(map(str, r.entries))})")
    table.add_row("journal bytes", f"{r.journal_bytes / 2**20:.1f} MiB")
    table.add_row("merge windows", f"{r.merge_windows} ({r.merged_entries} entries; the last few, after the "
                                   "last whole window, wait for the next merge)")
    table.add_row("bookmark", f"{format_ns(r.bookmark_ns)}")
    table.add_row("attack", f"{r.damaged_blocks} blocks overwritten with garbage")
    table.add_row("outage", f"port {SILENT_PORT} invalid from {format_ns(r.outage[0])} while the others "
                            f"flushed to {format_ns(r.horizon_during_outage)}; reinstated at "
                            f"{format_ns(r.outage[1])}")
    table.add_row("refused meanwhile", r.refused_past_invalid or "-")
    table.add_row("  at the verdict", r.refused_at_invalid or "allowed (redo: writes up to it are all in)")
    table.add_row("port validity", ", ".join(f"{p}: {v}" for p, v in enumerate(r.port_validity)))
    table.add_row("restore", f"{r.volume_mb} MiB to the bookmark in {r.restore_s:.2f} s")
    model = "the storage model's volume" if r.record_mismatched_blocks < 0 else "the host's record"
    if r.record_mismatched_blocks >= 0:
        table.add_row("board's volume", "as the host's record of its writes" if not r.record_mismatched_blocks
                      else f"[red]{r.record_mismatched_blocks} blocks unlike the host's record[/]")
    verdict = f"[green]identical to {model} at the bookmark[/]" if r.mismatched_blocks == 0 else \
        f"[red]{r.mismatched_blocks} blocks differ from {model} at the bookmark[/]"
    table.add_row("verdict", verdict)
    for name, path in r.paths.items():
        table.add_row(f"  {name}", path)
    return table


@click.command("demo", short_help="The main job end to end on the virtual board.")
@click.option("--mode", type=click.Choice(["redo", "cow"]), default="redo", show_default=True,
              help="Journal new data (redo) or pre-images (copy-on-write).")
@click.option("--link", type=click.Choice(["serial", "dma"]), default="serial", show_default=True,
              help="How the host reaches the board: its pty, or journal rings in host memory (DMA).")
@click.option("--seed", type=int, default=1, show_default=True,
              help="Seed of the volume, traffic and attack.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default="demo-out",
              show_default=True,
              help="Folder for the volume, storage log, journal, pictures and summary (replaced).")
@click.option("--volume-mb", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="Size of the protected volume.")
@click.option("--damage-mb", type=click.FloatRange(0.01), default=8, show_default=True,
              help="How much of the volume the ransomware server overwrites.")
@click.option("--rate", type=click.FloatRange(0.1, 100), default=6, show_default=True,
              help="Writes per simulated ms per server in normal traffic.")
@click.option("--steady-s", type=click.FloatRange(0.5), default=12, show_default=True,
              help="Wall seconds of normal traffic before the bookmark.")
@click.option("--outage-s", type=click.FloatRange(0.5), default=6, show_default=True,
              help="Wall seconds the silenced port stays quiet.")
@click.option("--deadline", type=click.FloatRange(0.2), default=2, show_default=True,
              help="Seconds a port may fail to flush before it is marked invalid.")
@click.option("--quick", is_flag=True,
              help="A short run for tests: 16 MiB volume, 1 MiB damage, 3 s phases, 1 s deadline.")
@click.option("--port", "port", metavar="PATH",
              help="A standalone board on this serial port (a dev board, or a standalone virtual "
                   "board's pty): the host injects the traffic; the volume is the board's.")
@click.option("--baud", type=click.IntRange(300, 12_000_000), default=115200, show_default=True,
              help="With --port: the serial line rate (the ULX3S image: 2000000).")
@click.option("--standalone", is_flag=True,
              help="Start the virtual board's standalone variant (the dev boards' image) and run the "
                   "--port demo against it.")
def demo_cmd(mode, link, seed, out, volume_mb, damage_mb, rate, steady_s, outage_s, deadline, quick, port,
             baud, standalone):
    """Protect a volume on the virtual board, damage it, and bring it back.

    Starts the virtual board (4 ports, time base, 4 servers writing to a volume of seeded random
    blocks), collects the journals over its pseudo-terminal (or --link dma: from journal rings
    in host memory), bookmarks a quiet instant, lets one
    server overwrite part of the volume with garbage, silences one port's link until it is
    marked invalid and then reinstated, restores the volume to the bookmark in place and
    compares it byte for byte with the storage model's own record. Writes the pictures
    timeline.png and dpll.png, summary.json and everything it used to --out. Ctrl-C stops the
    board and leaves what was written so far. 'make demo DEMO_ARGS="--mode cow"' passes options.

    With --port (a dev board running a standalone image) or --standalone (the virtual board's
    standalone variant) the host is the traffic: it fills the board's on-chip volume, injects
    random writes through every port, attacks a quarter of the volume through port 1, stops
    collecting port 3 for the outage, reads the volume back and restores it into volume.img,
    checked against its own record of the writes (--volume-mb, --damage-mb, --rate and --link
    do not apply).

    Examples:

    \b
      portjournal demo
      portjournal demo --mode cow --seed 7
      portjournal demo --link dma                  # journal rings in host memory, not the pty
      portjournal demo --quick --out /tmp/demo     # the short run the tests use
      portjournal demo --port /dev/ttyUSB0 --baud 2000000      # a ULX3S with its standalone image
      portjournal demo --standalone --quick        # the same on the virtual board
    """
    from .demo import Demo, DemoConfig
    from .demo_standalone import StandaloneDemo

    if (port or standalone) and link != "serial":
        raise click.UsageError("--port and --standalone run over the serial link")
    if port and standalone:
        raise click.UsageError("--port names a board, --standalone starts one: give one of them")

    if quick:
        volume_mb, damage_mb, steady_s, outage_s, deadline = 16, 1, 3, 3, 1
    if damage_mb > volume_mb / 2:
        raise click.BadParameter(f"at most half of --volume-mb ({volume_mb / 2:g} MiB)",
                                 param_hint="--damage-mb")
    if outage_s <= deadline:
        raise click.BadParameter(f"must outlast --deadline ({deadline:g} s), or the port is never found "
                                 "invalid", param_hint="--outage-s")
    try:
        config = DemoConfig(mode=Mode.REDO if mode == "redo" else Mode.COPY_ON_WRITE, seed=seed, out=out,
                            volume_mb=volume_mb, damage_mb=damage_mb, rate=rate, steady_s=steady_s,
                            outage_s=outage_s, deadline_s=deadline, link=link)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    live = Live(console=console, refresh_per_second=4, transient=True)
    say = lambda text: console.print(text, highlight=False)  # noqa: E731
    if port or standalone:
        demo = StandaloneDemo(config, port=port, baud=baud, say=say, live=live)
    else:
        demo = Demo(config, say=say, live=live)
    # Ctrl-C raises KeyboardInterrupt even if SIGINT came in ignored (a shell's background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with live:
            result = demo.run()
    except KeyboardInterrupt:
        console.print(f"interrupted: the board is stopped; what was written so far is in {out}")
        sys.exit(exitcodes.INTERRUPTED)
    except (RuntimeError, TimeoutError, OSError) as exc:
        raise click.ClickException(f"the demo failed: {exc}; its files are in {out}") from exc
    console.print(summary_table(result))
    click.echo(f"demo: mode={result.mode} entries={sum(result.entries)} restored_mb={result.volume_mb} "
               f"restore_s={result.restore_s:.2f} verified={'yes' if result.verified else 'no'}")
    if not result.verified:
        sys.exit(exitcodes.CHECK_FAILED)
