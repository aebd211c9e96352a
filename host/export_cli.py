"""`portjournal serve` (NBD export of a past instant) and `export` / `import` (dm-log-writes)."""

from pathlib import Path

import click
from rich.progress import Progress

from firmware.abi.entry import Mode

from .journal.store import JournalError
from .journal_cli import AT_HELP, console, journal_option, open_journal, os_problem, resolve_at
from .nbd import NBDError, NBDServer
from .storage import StorageError
from .views import open_view


class Listen(click.ParamType):
    """HOST:PORT (an IPv6 host in brackets: [::1]:10809)."""

    name = "host:port"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        host, sep, port = value.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            self.fail(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:10809; port 0 picks a free one)",
                      param, ctx)
        return host, int(port)


@click.command(short_help="Serve the volume as it was at --at, read-only over NBD.")
@journal_option
@click.option("--at", "at", required=True, help=AT_HELP)
@click.option("--listen", type=Listen(), default="127.0.0.1:10809", show_default=True,
              help="Address to listen on (port 0 picks a free one).")
@click.option("--storage", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Primary storage (volume image or block device), for copy-on-write journals.")
@click.option("--force", is_flag=True, help="Serve even an instant the journal cannot vouch for.")
@click.option("--name", default="", help="Export name (the default export \"\" is served too).")
def serve(folder, at, listen, storage, force, name):
    """Serve the volume as it was at --at, read-only over NBD, until Ctrl-C.

    Any NBD client reads it: nbdcopy, nbdinfo, qemu-img or the kernel's nbd-client, e.g.
    'nbdcopy nbd://127.0.0.1:10809 out.img' copies it out.

    Examples:

    \b
      portjournal serve -j journal --at before-upgrade
      portjournal serve -j journal --at -1h --listen [::1]:10810 --name hour-ago
      portjournal serve -j cow-journal --at -5m --storage vol.img
    """
    with open_journal(folder, readonly=True) as journal:
        at_ns = resolve_at(journal, at)
        try:
            view = open_view(journal, at_ns, storage=storage, force=force)
        except (JournalError, StorageError) as exc:
            raise click.ClickException(str(exc)) from exc
        for warning in view.warnings:
            console.print(f"[yellow]not guaranteed:[/] {warning}")
        try:
            server = NBDServer(view, *listen, name=name, description=f"{folder} at {at}",
                               block_bytes=getattr(view, "block_bytes", journal.state.block_bytes))
        except NBDError as exc:
            raise click.ClickException(str(exc)) from exc
        console.print(f"serving {folder} at {at} ({at_ns} ns), {view.size_bytes} bytes read-only on "
                      f"[bold]{server.uri}[/]  (Ctrl-C stops)")
        # A copy-on-write view reads the live primary storage: keep its map current as the
        # collector appends the pre-images of new writes.
        following = view.follow() if view.mode == Mode.COPY_ON_WRITE else None
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            if following is not None:
                following.set()
            server.shutdown()
            view.backing.close()
        console.print("stopped")


FORMATS = click.Choice(["dm-log-writes"])


def progress_to(bar: Progress, task):
    return lambda done, total: bar.update(task, completed=done, total=total)


@click.command("export", short_help="Write the journal as a dm-log-writes log (bookmarks as marks).")
@journal_option
@click.option("--format", "fmt", type=FORMATS, required=True, help="Log format to write.")
@click.option("--until", help="Only writes before this instant (bookmark name, time or ns; default: all).")
@click.option("--sector-bytes", type=int, default=512, show_default=True,
              help="The log's sector size (a power of two dividing the block size).")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
def export_cmd(folder, fmt, until, sector_bytes, out):
    """Write the journal's writes and bookmarks to OUT as a dm-log-writes log.

    Bookmarks become MARK entries; a redo journal only (copy-on-write entries hold old data).

    Examples:

    \b
      portjournal export -j journal --format dm-log-writes writes.log
      portjournal export -j journal --format dm-log-writes --until before-upgrade upto.log
    """
    from . import dmlog

    with open_journal(folder, readonly=True) as journal:
        until_ns = resolve_at(journal, until, "--until") if until is not None else None
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("export", total=None)
            try:
                summary = dmlog.export(journal, out, until_ns=until_ns, sectorsize=sector_bytes,
                                       progress=progress_to(bar, task))
            except dmlog.DmLogError as exc:
                raise click.ClickException(str(exc)) from exc
            except OSError as exc:
                raise os_problem("cannot write", out, exc) from exc
    console.print(f"exported {summary.writes} writes and {summary.marks} marks to {out} "
                  f"({summary.log_bytes} bytes, {summary.sectorsize}-byte sectors)")


@click.command("import", short_help="Make a journal from a dm-log-writes log (marks as bookmarks).")
@click.option("--format", "fmt", type=FORMATS, required=True, help="Log format to read.")
@click.option("-j", "--journal", "folder", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="New journal folder to create.")
@click.option("--block-bytes", type=click.IntRange(min=1), required=True,
              help="Block size of the new journal.")
@click.option("--volume-bytes", type=click.IntRange(min=0),
              help="Volume size (default: the --base image's, else up to the highest block written).")
@click.option("--base", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Image the log's writes apply to: the new journal's base copy (default: zeros).")
@click.option("--discard", type=click.Choice(["zero", "reject"]), default="zero", show_default=True,
              help="What a logged DISCARD becomes: writes of zero blocks, or an error.")
@click.argument("log", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def import_cmd(fmt, folder, block_bytes, volume_bytes, base, discard, log):
    """Create a journal in --journal that replays the dm-log-writes log LOG (1 us per entry).

    MARK entries become bookmarks, so 'portjournal restore --at MARK' restores to them.

    Examples:

    \b
      portjournal import --format dm-log-writes -j imported --block-bytes 4096 writes.log
      portjournal import --format dm-log-writes -j imported --block-bytes 512 --base t0.img w.log
    """
    from . import dmlog

    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("import", total=None)
        try:
            s = dmlog.import_log(log, folder, block_bytes=block_bytes, volume_bytes=volume_bytes,
                                 base=base, discard=discard, progress=progress_to(bar, task))
        except (dmlog.DmLogError, JournalError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:
            raise os_problem("cannot import into", folder, exc) from exc
    console.print(f"imported {s.log_entries} log entries into {folder}: {s.writes} writes "
                  f"({s.blocks} blocks), "
                  f"{s.discards} discards ({s.zero_blocks} zero blocks), {s.flushes} flushes skipped, "
                  f"{len(s.marks)} marks as bookmarks; volume {s.volume_blocks} blocks "
                  f"({'base ' + str(base) if base else 'zero base'}), "
                  f"device time 0..{s.last_ns} ns")
