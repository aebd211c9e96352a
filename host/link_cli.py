"""`portjournal status` and `portjournal collect`: a board on a serial port (or the virtual board's pty),
or on the DMA link (`--link dma`: journal rings in host memory; the virtual board's host-memory file)."""

import signal
import time
from collections.abc import Callable

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from firmware.abi import regmap
from firmware.abi.dma import slot_bytes
from firmware.abi.entry import Mode

from .journal.collector import Collector
from .journal.locate import Location, create_journal, journal_exists, open_journal
from .journal.primary import NEVER, JournalError, PrimaryJournal
from .journal_cli import Duration, journal_option
from .link.device import Device, DeviceError, Identity
from .link.dma import DmaDevice
from .link.serial import TransportError
from .timefmt import format_ns, time_of_day

console = Console(soft_wrap=True)

port_option = click.option("--port", "path", required=True, envvar="PORTJOURNAL_PORT",
                           help="Serial device of the board, e.g. /dev/ttyUSB0 or the virtual board's pty; "
                                "with --link dma its host-memory file (or set PORTJOURNAL_PORT).")
link_option = click.option("--link", type=click.Choice(["serial", "dma"]), default="serial",
                           show_default=True, envvar="PORTJOURNAL_LINK",
                           help="serial: frames over --port; dma: journal rings in host memory, BAR "
                                "registers ('portjournal sim --link dma' prints its file; or set "
                                "PORTJOURNAL_LINK).")
baud_option = click.option("--baud", type=click.IntRange(300, 12_000_000), default=115200, show_default=True,
                           help="Baud rate (a pseudo-terminal ignores it).")
timeout_option = click.option("--timeout", type=click.FloatRange(0.01, 60), default=0.5, show_default=True,
                              help="Seconds to wait for an answer before asking again (3 tries).")


def open_device(path: str, baud: int, timeout: float, link: str = "serial") -> Device | DmaDevice:
    try:
        if link == "dma":
            return DmaDevice.open(path, timeout=timeout, flush_timeout=max(2.0, 4 * timeout))
        return Device.open(path, baud=baud, timeout=timeout, flush_timeout=max(2.0, 4 * timeout))
    except (TransportError, DeviceError) as exc:
        raise click.ClickException(str(exc)) from exc


def signed32(value: int) -> int:
    return value - (1 << 32) if value & (1 << 31) else value


def dpll_text(ident, locked: int, phase_error: int | None = None) -> str:
    """A port's time source as the status tables show it (with its phase error, if given)."""
    if ident.board_clock:
        return "[green]board clock[/]"
    if not locked:
        return "[yellow]unlocked[/]"
    return "[green]locked[/]" + ("" if phase_error is None else f" {signed32(phase_error):+d} ns")


def port_table(dev: Device, blocks: list[dict[str, int]]) -> Table:
    ident = dev.identity
    table = Table("register", *(f"port {p}" for p in range(ident.ports)), "meaning",
                  title="per-port registers")
    shown = [r for r in regmap.PORT if r.group in ("port", "dpll")]
    for reg in shown:
        cells = []
        for values in blocks:
            v = values[reg.name]
            if reg.name == "dpll_locked":
                cells.append(dpll_text(ident, v))
            elif reg.name == "dpll_phase_error":
                cells.append(f"{signed32(v)} ns")
            elif reg.name == "ring_fill":
                cells.append(f"{v}/{ident.ring_depth}")
            elif reg.name == "invalid":
                cells.append("[red]invalid[/]" if v else "[green]valid[/]")
            else:
                cells.append(str(v))
        table.add_row(reg.name, *cells, reg.description)
    return table


def link_geometry(link: str, ident: Identity, glob: dict[str, int]) -> str:
    """What bounds a transfer on the link: the serial frame's payload, or the DMA ring's slot
    (the DMA image has no frames: its `max_payload` register reads 0)."""
    if link == "dma":
        return f"journal rings in host memory, {slot_bytes(ident.block_bytes)}-byte slots"
    return f"frames up to {glob['max_payload']} bytes"


def link_table(dev: Device, glob: dict[str, int]) -> Table:
    table = Table("counter", "value", "meaning", title="link")
    for name, _, _, desc in regmap.LINK_COUNTERS:
        table.add_row(f"device {name}", str(glob[name]), desc)
    table.add_row("device rx_framing_errors", str(glob["rx_framing_errors"]),
                  regmap.register("rx_framing_errors").description)
    for name, value in dev.link_counters().items():
        table.add_row(f"host {name}", str(value), "")
    return table


@click.command(short_help="A board's identity, DPLL lock, ring fill and counters, per port.")
@port_option
@link_option
@baud_option
@timeout_option
def status(path, link, baud, timeout):
    """Identity, DPLL lock, ring fill and counters per port, and the link's error counters.

    Examples:

    \b
      portjournal status --port /dev/ttyUSB0
      portjournal status --port /dev/pts/3      # the pty 'portjournal sim' printed
      portjournal status --link dma --port host-mem.bin   # 'portjournal sim --link dma'
    """
    with open_device(path, baud, timeout, link) as dev:
        try:
            glob = dev.read_block()
            blocks = [dev.read_block(p) for p in range(dev.identity.ports)]
        except DeviceError as exc:
            raise click.ClickException(str(exc)) from exc
        ident = dev.identity
        console.print(f"{path}: portjournal image {ident.image_id:#010x} version {ident.version_text}, "
                      f"{ident.ports} ports, {ident.mode.name.lower()}, ring of {ident.ring_depth} entries, "
                      f"{ident.block_bytes}-byte blocks, {ident.datapath_bits}-bit datapath, "
                      f"{link_geometry(link, ident, glob)}")
        if ident.standalone:
            console.print(f"standalone: a volume of {glob['store_blocks']} blocks on chip; the host injects "
                          "the writes ('portjournal demo --port')")
        console.print(port_table(dev, blocks))
        console.print(link_table(dev, glob))


def journal_for(folder: Location, dev: Device, window_ns: int,
                first_port: int | None = None) -> PrimaryJournal:
    """Open the journal, or create it with the board's geometry; refuse one of another geometry.

    With `first_port` the board is one of several protecting the volume, its port 0 being the
    volume's `first_port`: the journal must exist (created for all the volume's ports) and hold
    the board's ports from there."""
    ident = dev.identity
    try:
        if first_port is not None and not journal_exists(folder):
            raise JournalError(f"{folder} holds no journal: with --first-port, create it first for all the "
                               "volume's ports ('portjournal journal create -j ... --ports N')")
        if not journal_exists(folder):
            console.print(f"creating journal {folder}: {ident.ports} ports, {ident.block_bytes}-byte blocks, "
                          f"{ident.mode.name.lower()}, window {format_ns(window_ns)}")
            journal = create_journal(folder, block_bytes=ident.block_bytes, ports=ident.ports,
                                     mode=ident.mode, window_ns=window_ns)
            return start_at_ring_tails(journal, dev, lambda: open_journal(folder))
        journal = open_journal(folder)
    except JournalError as exc:
        raise click.ClickException(str(exc)) from exc
    st = journal.state
    fits = st.ports == ident.ports if first_port is None else first_port + ident.ports <= st.ports
    if not fits or (st.block_bytes, Mode(st.mode)) != (ident.block_bytes, ident.mode):
        journal.close()
        raise click.ClickException(
            f"journal {folder} is for {st.ports} ports, {st.block_bytes}-byte blocks, "
            f"{Mode(st.mode).name.lower()}; the board has {ident.ports}, {ident.block_bytes}, "
            f"{ident.mode.name.lower()}: collect into a new folder (-j), or connect the board this journal "
            "is for")
    for cut in getattr(journal, "recovered", []):
        console.print(f"[yellow]recovery cut a torn tail:[/] {cut}")
    return journal


def start_at_ring_tails(journal: PrimaryJournal, dev: Device,
                        reopen: Callable[[], PrimaryJournal]) -> PrimaryJournal:
    """A new journal for a board as it is: a board used before (not reset since) numbers its
    ports' entries on from then, so each port's history in the journal starts at its ring's
    tail (what came before was acknowledged to another journal). Returns the journal, reopened
    by `reopen` if a start had to be set."""
    tails = [dev.read("acknowledged", p) for p in range(dev.identity.ports)]
    if not any(tails):
        return journal

    def start(state) -> None:
        for port, tail in enumerate(tails):
            state.port_state[port].compacted_seq = tail - 1

    journal.update_state(start)
    journal.close()
    return reopen()


class Progress:
    """The live display: per port entries stored, ring fill, DPLL lock and errors; the link's rate.

    Every `sample_s` it reads each port's register block (one transaction per port): ring fill
    and DPLL state for the table, kept in `blocks` (and passed to `on_sample`) for whoever
    wants a record of them over the run."""

    def __init__(self, dev: Device, journal: PrimaryJournal, *, sample_s: float = 1.0,
                 on_sample: Callable[[float, int, dict[str, int]], None] | None = None, first_port: int = 0):
        self.dev, self.journal, self.sample_s, self.on_sample = dev, journal, sample_s, on_sample
        self.first_port = first_port         # the volume's number of the board's port 0
        self.start = time.monotonic()
        ports = dev.identity.ports
        self.blocks: list[dict[str, int] | None] = [None] * ports
        self.errors = [""] * ports
        self.stored = [0] * ports
        self.last_rate = (self.start, 0)
        self.rate = 0.0
        self.headline = ""

    def update(self, polls) -> None:
        for poll in polls:
            self.stored[poll.port - self.first_port] += poll.entries
            self.errors[poll.port - self.first_port] = poll.error.split(": ")[-1][:40]
        now, rx = time.monotonic(), self.dev.bytes_received()
        if now - self.last_rate[0] >= self.sample_s:
            self.rate = (rx - self.last_rate[1]) / (now - self.last_rate[0])
            self.last_rate = (now, rx)
            for p in range(len(self.blocks)):
                try:
                    self.blocks[p] = self.dev.read_block(p)
                except DeviceError:
                    self.blocks[p] = None
                    continue
                if self.on_sample:
                    self.on_sample(now, p, self.blocks[p])

    def render(self) -> Group:
        table = Table("port", "validity", "entries", "last seq", "ring", "DPLL", "flushed through (UTC)",
                      "last error")
        since = self.journal.invalid_since()
        depth = self.dev.identity.ring_depth
        for p, regs in enumerate(self.blocks):
            v = p + self.first_port
            valid = since[v] == NEVER
            fill = "?" if regs is None else f"{regs['ring_fill']}/{depth}"
            if regs is None:
                dpll = "?"
            else:
                dpll = dpll_text(self.dev.identity, regs["dpll_locked"], regs["dpll_phase_error"])
            table.add_row(str(v), "[green]valid[/]" if valid else "[red]invalid[/]", str(self.stored[p]),
                          str(int(self.journal.last_seq[v])), fill, dpll,
                          time_of_day(int(self.journal.flushed_through[v])), self.errors[p])
        link = (f"link: {self.rate / 1e3:.1f} kB/s in, {self.dev.link_summary()}; "
                f"{time.monotonic() - self.start:.0f} s")
        return Group(*([self.headline] if self.headline else []), table, link)


@click.command(short_help="Collect the ports' journals into the journal until Ctrl-C.")
@port_option
@link_option
@baud_option
@timeout_option
@journal_option
@click.option("--duration", type=click.FloatRange(0), default=None, help="Stop after this many seconds.")
@click.option("--deadline", type=click.FloatRange(0.1), default=10.0, show_default=True,
              help="Seconds a port may fail to flush before it is marked invalid.")
@click.option("--interval", type=click.FloatRange(0), default=0.05, show_default=True,
              help="Seconds to wait between rounds that brought nothing.")
@click.option("--window", type=Duration(), default="100ms", show_default=True,
              help="Merge window, for a journal created here.")
@click.option("--first-port", type=click.IntRange(0, 63), default=None,
              help="The volume's port number of this board's port 0, when several boards protect one "
                   "volume (each with its own collector, into one journal made for all their ports).")
def collect(path, link, baud, timeout, folder, duration, deadline, interval, window, first_port):
    """Collect the ports' journals into the primary journal until Ctrl-C (or --duration).

    Each round asks every valid port to flush, stores what arrives with one fsync (or one wait
    for the cluster's acknowledgements), then acknowledges each port: the board frees only what
    the journal holds. Ctrl-C ends the round under way first
    (exit 0). The journal is created with the board's geometry if the folder has none.

    Examples:

    \b
      portjournal collect --port /dev/pts/3 -j journal      # until Ctrl-C
      portjournal collect --port /dev/ttyUSB0 -j /srv/pj --duration 60
      portjournal collect --port /dev/ttyUSB0 --baud 921600 --deadline 30 -j /srv/pj
      portjournal collect --port /dev/ttyUSB1 -j nats://127.0.0.1:4222/vol1 --first-port 4
      portjournal collect --link dma --port host-mem.bin -j journal
    """
    stop = {"now": False}

    def interrupted(signum, frame):
        stop["now"] = True

    with (open_device(path, baud, timeout, link) as dev,
          journal_for(folder, dev, window, first_port) as journal):
        collector = Collector(journal, dev, deadline_s=deadline, first_port=first_port or 0,
                              ports=dev.identity.ports)
        progress = Progress(dev, journal, first_port=first_port or 0)
        end = None if duration is None else time.monotonic() + duration
        previous = signal.signal(signal.SIGINT, interrupted)
        try:
            with Live(progress.render(), console=console, refresh_per_second=4, transient=False) as live:
                while not stop["now"] and (end is None or time.monotonic() < end):
                    polls = collector.poll()
                    progress.update(polls)
                    live.update(progress.render())
                    if not any(p.entries for p in polls):
                        time.sleep(interval)
        except TransportError as exc:
            raise click.ClickException(
                f"{exc}; the {sum(progress.stored)} entries acknowledged so far are stored in {folder}: "
                "check the board and its cable, then run the same 'portjournal collect' again to go on"
            ) from exc
        finally:
            signal.signal(signal.SIGINT, previous)
        total = sum(progress.stored)
        how = " (interrupted)" if stop["now"] else ""
        if not console.is_terminal:         # Live leaves its last frame without a line end there
            console.line()
        console.print(f"stopped{how}: {total} entries stored in {folder}; everything acknowledged is durable")
