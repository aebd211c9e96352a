"""`portjournal sim`: run the virtual board (a separate process) until Ctrl-C.

The one place the host imports `sim`: the board runs as its own process (`sim.vboard`, the C++
Verilator harness), and the host tool talks to it over the printed pseudo-terminal exactly as
to a real board's serial port — or, with `--link dma`, through the printed host-memory file
(journal rings and the BAR's mailbox, `host/link/dma.py`). Lines typed on stdin go to the board
as commands; its answers (`event` lines) are printed.
"""

import signal
import sys
import threading
import time
from pathlib import Path

import click


@click.command("sim", short_help="Run the virtual board until Ctrl-C; prints the pty to connect to.")
@click.option("--volume", type=click.Path(dir_okay=False, path_type=Path), default="volume.img",
              show_default=True, help="Primary storage: a volume image file (created if missing).")
@click.option("--blocks", type=int,
              help="Volume size in blocks (default: the file's, or 2048 for a new one).")
@click.option("--log", "log", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the storage log (every read and write storage answered) here.")
@click.option("--ports", type=int, default=4, show_default=True, help="Journal ports (servers, one each).")
@click.option("--baud", type=float, help="Link line rate (default: the board's, 250 Mbaud).")
@click.option("--link", type=click.Choice(["serial", "dma"]), default="serial", show_default=True,
              help="serial: a pty; dma: journal rings in a host-memory file (--host-mem), the BAR in its "
                   "first page.")
@click.option("--host-mem", type=click.Path(dir_okay=False, path_type=Path), default="host-mem.bin",
              show_default=True, help="With --link dma: the host-memory file (created, zeroed).")
@click.option("--rate", type=float, default=10, show_default=True,
              help="Writes per ms of simulated time per server (negative: back to back; 0: none).")
@click.option("--writes", type=int, default=0, show_default=True,
              help="Writes per server, then stop (0: no limit).")
@click.option("--lba-min", type=int, help="Lowest block the servers write.")
@click.option("--lba-max", type=int, help="Block above the highest the servers write.")
@click.option("--seed", type=int, default=1, show_default=True,
              help="Seed of traffic, failures and link damage.")
@click.option("--write-latency", type=int, help="Primary write latency, cycles (default 200).")
@click.option("--read-latency", type=int, help="Pre-image read latency, cycles (default 200).")
@click.option("--write-fail", type=float, help="Probability that a primary write fails.")
@click.option("--read-fail", type=float, help="Probability that a pre-image read fails.")
@click.option("--corrupt-rx", type=float, help="Per-byte probability of a flipped bit, host to device.")
@click.option("--corrupt-tx", type=float, help="Per-byte probability of a flipped bit, device to host.")
@click.option("--drop-rx", type=float, help="Per-byte probability of a lost byte, host to device.")
@click.option("--drop-tx", type=float, help="Per-byte probability of a lost byte, device to host.")
@click.option("--time-origin", type=int,
              help="The time base's time at start, ns since the Unix epoch, a whole number of 100 us "
                   "(default: now, rounded down).")
@click.option("--wait-lock", type=click.IntRange(0, 1),
              help="1 (default): servers start once their port's DPLL has locked (~1.5 ms simulated).")
@click.option("--status-s", type=float, default=5, show_default=True, help="Print a status line this often.")
@click.option("--standalone", is_flag=True,
              help="The dev boards' image instead: a volume in on-chip RAM and no servers; the host injects "
                   "the writes ('portjournal demo --port PTY'). Volume, server and storage options do not "
                   "apply.")
def sim_cmd(volume, blocks, log, ports, baud, link, host_mem, rate, writes, status_s, standalone, **options):
    """Run the virtual board: print its pseudo-terminal, run until Ctrl-C.

    The board is the device image in Verilator with servers writing into every port and a
    primary storage backed by VOLUME. Connect the host tool to the printed pty. The first run
    builds the board (a minute or two); later runs reuse the build.

    Type commands to the board, one per line; it answers with `event ...` lines:

    \b
      pause              servers start no new write; `event quiet time_ns=T` once every write
                         is answered by storage: the volume at T is application-consistent
      resume             servers go on
      ransom P LBA N     server P overwrites blocks LBA..LBA+N-1 with garbage, back to back
      silence P          the board drops the host's FLUSH, ACK and RESEND for port P
                         (--link dma: port P's doorbell writes)
      speak P            ... until this

    Examples:

    \b
      portjournal sim                       # 4 ports, ./volume.img; prints 'pty /dev/pts/N'
      portjournal sim --volume vol.img --rate 50 --log storage.log
      portjournal sim --ports 2 --writes 1000 --corrupt-tx 1e-4 --seed 7
      portjournal sim --link dma            # prints 'dma host-mem.bin'
      portjournal sim --standalone          # the dev boards' standalone image, for 'demo --port'
    """
    from dataclasses import replace

    from boards.sim import SIM_BOARD, SIM_STANDALONE
    from sim.vboard import VirtualBoard

    if standalone and link != "serial":
        raise click.UsageError("the standalone board has the serial link only")
    config = replace(SIM_STANDALONE if standalone else SIM_BOARD, ports=ports, link=link)
    options = {k: v for k, v in options.items() if v is not None}
    if link == "dma":
        options["host_mem"] = host_mem
    if baud is not None:
        options["baud"] = baud
    click.echo(f"building the virtual board ({ports} ports; cached after the first build)...", err=True)
    board = VirtualBoard(volume, config=config, blocks=blocks, log=log, rate=rate, writes=writes,
                         report_ms=int(status_s * 1000), **options)
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    # Our own handlers, for SIGINT too: a shell starts a background job with SIGINT ignored.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            board.start()
        except RuntimeError as exc:     # the harness refused its options, or did not start
            raise click.ClickException(f"{exc}: check the option it names (e.g. --volume in a folder "
                                       "you may write) and run 'portjournal sim' again") from exc
        click.echo(f"pty {board.tty}" if link == "serial" else f"dma {board.host_mem}")
        click.echo(f"board {' '.join(f'{k}={v}' for k, v in board.board.items())}")
        click.echo("Ctrl-C stops the board; type pause, resume, ransom P LBA N, silence P or speak P",
                   err=True)
        threading.Thread(target=forward_commands, args=(board,), daemon=True).start()
        shown, lines = None, 0
        while board.running() and not stopping:
            time.sleep(0.2)
            for line in board.lines[lines:]:
                if line.startswith("event "):
                    click.echo(line)
                lines += 1
            if board.status and board.status is not shown:
                shown = board.status
                click.echo("status " + " ".join(f"{k}={shown[k]}" for k in
                                                ("sim_ns", "writes", "applied", "tx_bytes", "rx_bytes",
                                                 "dma_beats")),
                           err=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        end = board.stop()
    if end:
        click.echo("exit " + " ".join(f"{k}={v}" for k, v in end.items()))


def forward_commands(board) -> None:
    """Our stdin's lines to the board's command channel, until EOF or the board stops."""
    for line in sys.stdin:
        if line.strip():
            try:
                board.command(line.strip())
            except (RuntimeError, OSError):         # the board has stopped
                return
