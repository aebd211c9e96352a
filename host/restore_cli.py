"""`portjournal restore`, `portjournal undo` and `portjournal bookmark`."""

import time
from pathlib import Path

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from .clihelp import OrderedGroup
from .exitcodes import CheckFailed
from .journal.locate import is_local
from .journal.store import JournalError
from .journal_cli import AT_HELP, console, journal_option, open_journal, os_problem, resolve_at
from .restore import RestoreCheckFailed, RestoreError, commit, restore_to_file, undo
from .storage import StorageError
from .timefmt import format_ns
from .timespec import check_bookmark_name
from .views import open_view


def _bar() -> Progress:
    return Progress("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    console=console, transient=True)


@click.command("restore", short_help="The volume as it was at --at, to a new image or onto storage.")
@journal_option
@click.option("--at", "at_text", required=True, help=AT_HELP)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the volume as it was at --at to this new file or device.")
@click.option("--commit", "commit_to", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Write it back onto this primary storage (only the blocks that differ).")
@click.option("--storage", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Primary storage to read (copy-on-write journals; defaults to --commit's target).")
@click.option("--undo-file/--no-undo-file", default=True, show_default=True,
              help="With --commit, save what is overwritten so 'portjournal undo' can put it back.")
@click.option("--force", is_flag=True, help="Restore even where the journal cannot vouch for the result.")
@click.option("--sync", is_flag=True, help="With -o, fsync the image before reporting (commits always do).")
def restore_cmd(folder, at_text, output, commit_to, storage, undo_file, force, sync):
    """Bring the volume back as it was at --at: to a new image (-o) or onto primary storage (--commit).

    A commit writes only the blocks that differ, saves what it overwrites in an undo file
    under JOURNAL/undo/ first, and reads the volume back afterwards: exit 3 if it does not
    match what was written.

    Examples:

    \b
      portjournal restore -j journal --at before-upgrade -o restored.img
      portjournal restore -j journal --at -5m -o /tmp/five-minutes-ago.img --sync
      portjournal restore -j journal --at 2026-11-27T09:30:00Z --commit vol.img
      portjournal restore -j cow-journal --at -1h -o hour-ago.img --storage vol.img
    """
    if bool(output) == bool(commit_to):
        raise click.UsageError("give exactly one of -o/--output and --commit")
    with open_journal(folder, readonly=True) as journal:
        at = resolve_at(journal, at_text)
        try:
            view = open_view(journal, at, storage=storage or commit_to, force=force)
        except (JournalError, StorageError) as exc:
            raise click.ClickException(str(exc)) from exc
        for warning in view.warnings:
            console.print(f"[yellow]not guaranteed:[/] {warning}")
        try:
            with _bar() as bar:
                task = bar.add_task("restore", total=view.size_bytes)
                report = lambda done, total: bar.update(task, completed=done)  # noqa: E731
                if output:
                    summary = restore_to_file(view, output, report, durable=sync)
                else:
                    undo_path = None
                    if undo_file:
                        kept_in = folder if is_local(folder) else Path.cwd()   # undo files stay local
                        undo_path = kept_in / "undo" / f"{time.strftime('%Y%m%dT%H%M%S')}-{at}.undo"
                    summary = commit(view, commit_to, undo_path, report)
                    if undo_path:
                        console.print(f"undo file: {undo_path} ('portjournal undo {undo_path} "
                                      f"--storage {commit_to}')")
        except RestoreCheckFailed as exc:
            raise CheckFailed(str(exc)) from exc
        except (RestoreError, StorageError) as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:          # the output's folder missing, no space, no permission…
            raise os_problem("cannot restore to", output or commit_to, exc) from exc
        finally:
            view.backing.close()
    console.print(f"restored {format_ns(at)}: {summary}")


@click.command("undo", short_help="Put back what a committed restore overwrote.")
@click.argument("undo_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--storage", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="The primary storage the restore was committed to.")
@click.option("--force", is_flag=True, help="Put the blocks back even if the storage changed since.")
def undo_cmd(undo_file, storage, force):
    """Put back what a committed restore overwrote (UNDO_FILE: the path the restore printed).

    Examples:

    \b
      portjournal undo journal/undo/20261127T093512-1764235800000000000.undo --storage vol.img
    """
    try:
        n = undo(undo_file, storage, force=force)
    except (RestoreError, StorageError) as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise os_problem("cannot undo onto", storage, exc) from exc
    console.print(f"put back {n} blocks on {storage}")


@click.group("bookmark", cls=OrderedGroup, short_help="Named points in time, usable wherever --at is.")
def bookmark_cli():
    """Named points in time (the seed's point-in-time copies), usable wherever --at is.

    Examples:

    \b
      portjournal bookmark add -j journal before-upgrade
      portjournal bookmark list -j journal
    """


@bookmark_cli.command("add", short_help="Remember a point in time under NAME (default: now).")
@journal_option
@click.argument("name")
@click.option("--at", "at_text", help=AT_HELP + " Default: the newest time any port has flushed up to.")
def bookmark_add(folder, name, at_text):
    """Remember a point in time under NAME (default: now, as far as every port has flushed).

    Examples:

    \b
      portjournal bookmark add -j journal before-upgrade
      portjournal bookmark add -j journal nightly --at 2026-11-27T02:00:00Z
      portjournal bookmark add -j journal last-good --at -30s
    """
    try:
        check_bookmark_name(name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from exc
    with open_journal(folder, readonly=True) as journal:
        if name in journal.state.bookmarks:
            held = format_ns(journal.state.bookmarks[name])
            raise click.ClickException(f"bookmark {name!r} exists (at {held}): remove it first "
                                       f"('portjournal bookmark rm -j {folder} {name}') or choose "
                                       "another name")
        at = resolve_at(journal, at_text) if at_text else int(journal.flushed_through.max(initial=0))

        def add(state) -> None:
            state.bookmarks[name] = at

        journal.update_state(add)
    console.print(f"bookmark {name} at {format_ns(at)} ({at} ns)")


@bookmark_cli.command("list")
@journal_option
def bookmark_list(folder):
    """Bookmarks in time order: device ns, time, name.

    Examples:

    \b
      portjournal bookmark list -j journal
    """
    with open_journal(folder, readonly=True) as journal:
        for name, at in sorted(journal.state.bookmarks.items(), key=lambda kv: kv[1]):
            console.print(f"{at:>20}  {format_ns(at):>14}  {name}")


@bookmark_cli.command("rm")
@journal_option
@click.argument("name")
def bookmark_rm(folder, name):
    """Forget bookmark NAME.

    Examples:

    \b
      portjournal bookmark rm -j journal before-upgrade
    """
    with open_journal(folder, readonly=True) as journal:
        if name not in journal.state.bookmarks:
            raise click.ClickException(f"no bookmark {name!r} in {folder}: 'portjournal bookmark list -j "
                                       f"{folder}' shows them")
        journal.update_state(lambda state: state.bookmarks.pop(name, None))
    console.print(f"removed bookmark {name}")
