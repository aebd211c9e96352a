"""`portjournal journal …` and `portjournal ports …`: look after the primary journal."""

import errno
from pathlib import Path

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from firmware.abi.entry import Mode

from . import exitcodes
from .clihelp import OrderedGroup
from .journal import locate
from .journal.base import compact, resync, take_base_copy
from .journal.locate import Location, create_journal, is_local, location
from .journal.primary import NEVER, JournalError, PrimaryJournal
from .journal.store import not_a_journal
from .journal.verify import verify
from .storage import FileStorage, StorageError
from .timefmt import format_ns, parse_duration
from .timespec import MAX_NS, parse_at

console = Console(soft_wrap=True)  # paths and offsets stay on one line, ready to copy



class JournalLocation(click.ParamType):
    """A journal folder, or a JetStream volume's URL nats://HOST:PORT[,HOST:PORT...]/VOLUME."""

    name = "folder|nats://…/VOLUME"

    def convert(self, value, param, ctx):
        return value if isinstance(value, Path) else location(str(value))


journal_option = click.option(
    "-j", "--journal", "folder", type=JournalLocation(), default="journal", show_default=True,
    envvar="PORTJOURNAL_JOURNAL",
    help="Journal folder, or nats://HOST:PORT/VOLUME for a replicated one (or set PORTJOURNAL_JOURNAL).")


def local_only(folder, what: str) -> None:
    """Refuse a command that works on the local store's files for a JetStream journal."""
    if not is_local(folder):
        raise click.ClickException(f"{what} works on a journal folder; a JetStream journal ({folder}) is "
                                   "checked and replicated by the cluster itself")


AT_HELP = ("Point in time: a bookmark name, an ISO-8601 time, a time before the horizon like -5m, "
           "or device nanoseconds.")


def resolve_at(journal: PrimaryJournal, text: str, option: str = "--at") -> int:
    """A point-in-time option's value (`option`: its name, for the error) as device time, or a
    usage error that lists the accepted forms."""
    try:
        return parse_at(text, journal)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from exc


OS_FIXES = {
    errno.ENOENT: "create its folder first, or check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EACCES: "choose a place you may write, or fix its permissions",
    errno.EPERM: "choose a place you may write, or fix its permissions",
    errno.EROFS: "that file system is read-only: choose another place",
    errno.ENOSPC: "free some space, or choose another disk",
    errno.EDQUOT: "free some space (disk quota), or choose another disk",
    errno.EEXIST: "choose another name, or remove what is there",
    errno.EISDIR: "that is a folder: give a file name",
}


def os_problem(what: str, path, exc: OSError) -> click.ClickException:
    """An OSError as a one-line CLI error: `what` `path`, why, the file it hit if another, and
    what to do about it when the error number says."""
    hit = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
    fix = f": {OS_FIXES[exc.errno]}" if exc.errno in OS_FIXES else ""
    return click.ClickException(f"{what} {path}: {exc.strerror or exc}{hit}{fix}")


class Duration(click.ParamType):
    name = "duration"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def open_journal(folder: Location, **kwargs) -> PrimaryJournal:
    try:
        journal = locate.open_journal(folder, **kwargs)
    except JournalError as exc:
        raise click.ClickException(str(exc)) from exc
    for cut in getattr(journal, "recovered", []):
        verb = "would cut" if kwargs.get("readonly") else "cut"
        console.print(f"[yellow]recovery {verb}[/] {cut}")
    return journal


def open_storage(path: Path, block_bytes: int) -> FileStorage:
    try:
        return FileStorage(path, block_bytes)
    except StorageError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group("journal", cls=OrderedGroup,
             short_help="The primary journal: create, info, verify, merge, compact, base.")
def journal_cli():
    """The primary journal: create, inspect, verify, repair, merge, compact, base copy.

    Every subcommand takes the journal folder as -j/--journal (default ./journal, or set
    PORTJOURNAL_JOURNAL).

    Examples:

    \b
      portjournal journal create -j journal --ports 4
      portjournal journal info -j journal
      portjournal journal verify -j journal
    """


@journal_cli.command(short_help="Create an empty journal.")
@journal_option
@click.option("--ports", type=click.IntRange(1, 64), required=True, help="Number of switch ports.")
@click.option("--block-bytes", type=int, default=512, show_default=True, help="Block size of the volume.")
@click.option("--mode", type=click.Choice(["redo", "cow"]), default="redo", show_default=True,
              help="What entries hold: new data (redo) or the pre-image (copy-on-write).")
@click.option("--window", type=Duration(), default="100ms", show_default=True, help="Merge window length.")
def create(folder, ports, block_bytes, mode, window):
    """Create an empty journal in the --journal folder ('portjournal collect' also creates one).

    Examples:

    \b
      portjournal journal create -j journal --ports 4
      portjournal journal create -j /srv/pj --ports 8 --block-bytes 4096 --mode cow --window 50ms
    """
    try:
        create_journal(folder, block_bytes=block_bytes, ports=ports, window_ns=window,
                       mode=Mode.REDO if mode == "redo" else Mode.COPY_ON_WRITE).close()
    except (JournalError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise os_problem("cannot create a journal in", folder, exc) from exc
    console.print(f"created journal {folder}: {ports} ports, {block_bytes}-byte blocks, {mode}, "
                  f"window {format_ns(window)}")


@journal_cli.command(short_help="Geometry, entries per port, horizon, merged portion, base copy.")
@journal_option
def info(folder):
    """Geometry, entries per port, horizon, merged portion and base copy.

    Examples:

    \b
      portjournal journal info -j journal
      portjournal journal info -j /srv/pj
    """
    with open_journal(folder, readonly=True) as j:
        st = j.state
        console.print(f"journal {folder}: {st.ports} ports, {st.block_bytes}-byte blocks, "
                      f"{Mode(st.mode).name.lower()}, window {format_ns(st.window_ns)}")
        kept = (f"{len(j.segment_paths())} segments" if is_local(folder)
                else f"stream {j.stream} led by {j.cluster_info().leader}")
        console.print(f"received: {len(j.index)} entries in {kept}; horizon {format_ns(j.horizon())}")
        console.print(f"merged: {len(j.merged)} entries through {format_ns(j.merged_through)}")
        base = st.base
        console.print("base copy: " + (f"{base.blocks} blocks at {format_ns(base.time_ns)} ({base.path})"
                                       if base else "none"))
        console.print(ports_table(j))


def ports_table(j: PrimaryJournal) -> Table:
    table = Table("port", "validity", "entries", "last seq", "flushed through", "invalid since", "reason",
                  "outages ridden out")
    since = j.invalid_since()
    counts = [int((j.index["port"] == p).sum()) for p in range(j.state.ports)]
    for port, st in enumerate(j.state.port_state):
        valid = since[port] == NEVER
        table.add_row(str(port), "[green]valid[/]" if valid else "[red]invalid[/]", str(counts[port]),
                      str(int(j.last_seq[port])), format_ns(int(j.flushed_through[port])),
                      "-" if valid else format_ns(int(since[port])), st.reason or "",
                      "; ".join(f"{format_ns(a)} to {format_ns(b)}" for a, b in st.outages) or "-")
    return table


@journal_cli.command("verify", short_help="Check every CRC, the order and the merged index (exit 3 if bad).")
@journal_option
def verify_cmd(folder):
    """Check every CRC, the ordering and the merged index; exit 3 on any problem.

    Reads only: it changes nothing, and works on a journal that others refuse to open.

    Examples:

    \b
      portjournal journal verify -j journal
      portjournal journal verify -j /srv/pj && echo intact
    """
    local_only(folder, "verify")
    if not (folder / "journal.json").exists():
        raise click.ClickException(str(not_a_journal(folder)))
    report = verify(folder)
    for note in report.notes:
        console.print(f"[yellow]note[/] {note}")
    for problem in report.problems:
        console.print(f"[red]problem[/] {problem}")
    console.print(f"{report.records} records, {report.entries} entries, {report.merged} merged entries: "
                  + ("[green]ok[/]" if report.ok else f"[red]{len(report.problems)} problem(s)[/]"))
    if not report.ok:
        console.print(f"fix: 'portjournal journal repair -j {folder}' cuts damage at the tail of the newest "
                      "segment (keeping its bytes under cuts/) and marks its port invalid; damage anywhere "
                      "else needs that file back from a copy of the journal")
        raise click.exceptions.Exit(exitcodes.CHECK_FAILED)


@journal_cli.command("repair", short_help="Cut damaged records at the tail; mark their port invalid.")
@journal_option
def repair_cmd(folder):
    """Cut damaged records at the tail (their bytes kept under cuts/) and mark their port invalid.

    Damage before the tail is not repaired: 'portjournal journal verify' lists it.

    Examples:

    \b
      portjournal journal repair -j journal
      portjournal journal repair -j journal && portjournal ports -j journal
    """
    local_only(folder, "repair")
    with open_journal(folder, repair=True) as j:
        if not j.recovered:
            console.print("nothing to repair")
        for port, st in enumerate(j.state.port_state):
            if st.invalid_since_ns is not None:
                console.print(f"port {port} invalid from {format_ns(st.invalid_since_ns)}: {st.reason}")


@journal_cli.command("merge")
@journal_option
def merge_cmd(folder):
    """Merge every whole window before the consistency horizon.

    Examples:

    \b
      portjournal journal merge -j journal
    """
    with open_journal(folder) as j:
        rows = j.merge()
        console.print(f"merged {len(rows)} entries; merged portion now through {format_ns(j.merged_through)} "
                      f"(horizon {format_ns(j.horizon())})")


@journal_cli.command("compact", short_help="Fold merged history older than --retention into the base copy.")
@journal_option
@click.option("--retention", type=Duration(), required=True,
              help="Keep merged history this long before the horizon (e.g. 1h); fold older into the base.")
def compact_cmd(folder, retention):
    """Fold merged history older than the retention period into the base copy.

    Examples:

    \b
      portjournal journal compact -j journal --retention 1h
      portjournal journal compact -j /srv/pj --retention 7d
    """
    local_only(folder, "compact")
    with open_journal(folder) as j:
        try:
            summary = compact(j, retention)
        except JournalError as exc:
            raise click.ClickException(str(exc)) from exc
    console.print(f"compacted up to {format_ns(summary['cutoff_ns'])}: {summary['merged_dropped']} merged "
                  f"entries dropped, {summary['blocks_folded']} blocks folded into the base, "
                  f"{summary['segments_removed']} segments removed")


@journal_cli.command("base")
@journal_option
@click.option("--storage", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="The primary storage (volume image file or block device).")
@click.option("--at", "at_ns", type=click.IntRange(min=0, max=MAX_NS), required=True,
              help="Device time (ns) the copy stands for.")
def base_cmd(folder, storage, at_ns):
    """Take a base copy of the volume (redo journals restore from it).

    Take it while nothing writes to the volume, or at a time --at every write before which has
    reached the volume.

    Examples:

    \b
      portjournal journal base -j journal --storage vol.img --at 0
      portjournal journal base -j /srv/pj --storage /dev/sdb --at 1764201600000000000
    """
    with open_journal(folder) as j, open_storage(storage, j.state.block_bytes) as vol:
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("base copy", total=vol.blocks)
            take_base_copy(j, vol, at_ns, lambda done, _: bar.update(task, completed=done))
        console.print(f"base copy of {vol.blocks} blocks at {format_ns(at_ns)}")


@click.group("ports", cls=OrderedGroup, invoke_without_command=True)
@journal_option
@click.pass_context
def ports_cli(ctx, folder):
    """Port validity: which ports count, since when, and why not.

    With no subcommand, the table of ports.

    Examples:

    \b
      portjournal ports -j journal
      portjournal ports -j journal resync 2 --storage vol.img --at 1764201600000000000
    """
    ctx.obj = folder
    if ctx.invoked_subcommand is None:
        with open_journal(folder, readonly=True) as j:
            console.print(ports_table(j))


@ports_cli.command("resync")
@click.argument("port", type=int)
@click.option("--storage", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="The primary storage to take the fresh base copy from.")
@click.option("--at", "at_ns", type=click.IntRange(min=0, max=MAX_NS), required=True,
              help="Device time (ns) the fresh copy stands for.")
@click.option("-j", "--journal", "own_folder", type=JournalLocation(),
              help="Journal folder or nats:// URL (default: the one given to 'ports', else ./journal).")
@click.pass_obj
def resync_cmd(folder, port, storage, at_ns, own_folder):
    """Take a fresh base copy and count PORT again from --at on.

    Examples:

    \b
      portjournal ports resync 2 --storage vol.img --at 1764201600000000000
      portjournal ports resync 0 -j /srv/pj --storage /dev/sdb --at 1764205200000000000
    """
    folder = own_folder or folder
    with open_journal(folder) as j, open_storage(storage, j.state.block_bytes) as vol:
        if not 0 <= port < j.state.ports:
            raise click.BadParameter(f"the journal has ports 0..{j.state.ports - 1}", param_hint="PORT")
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("base copy", total=vol.blocks)
            resync(j, port, vol, at_ns, lambda done, _: bar.update(task, completed=done))
        console.print(f"port {port} valid again from {format_ns(at_ns)}")
