"""`portjournal serve` (NBD export of a past instant) and `export` / `import` (dm-log-writes)."""

from pathlib import Path

import click

from .journal_cli import console, journal_option, open_journal, open_storage
from .nbd import NBDError, NBDServer


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


def parse_at_option(text: str, journal) -> int:
    """--at / --until: a time spec read by host.timespec.parse_at (bookmark names, times, ns)."""
    from .timespec import parse_at  # the lead's module; imported late so this file stands alone

    try:
        return parse_at(text, journal)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--at") from exc


@click.command()
@journal_option
@click.option("--at", "at", required=True, help="The instant to serve: a bookmark name, a time or ns.")
@click.option("--listen", type=Listen(), default="127.0.0.1:10809", show_default=True,
              help="Address to listen on (port 0 picks a free one).")
@click.option("--storage", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Primary storage (volume image or block device), for copy-on-write journals.")
@click.option("--force", is_flag=True, help="Serve even an instant the journal cannot vouch for.")
@click.option("--name", default="", help="Export name (the default export \"\" is served too).")
def serve(folder, at, listen, storage, force, name):
    """Serve the volume as it was at --at, read-only over NBD, until Ctrl-C."""
    from .views import open_view  # the lead's module; imported late so this file stands alone

    with open_journal(folder, readonly=True) as journal:
        at_ns = parse_at_option(at, journal)
        reader = open_storage(storage, journal.state.block_bytes) if storage else None
        try:
            view = open_view(journal, at_ns, storage=reader, force=force)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        try:
            server = NBDServer(view, *listen, name=name, description=f"{folder} at {at}",
                               block_bytes=getattr(view, "block_bytes", journal.state.block_bytes))
        except NBDError as exc:
            raise click.ClickException(str(exc)) from exc
        console.print(f"serving {folder} at {at} ({at_ns} ns), {view.size_bytes} bytes read-only on "
                      f"[bold]{server.uri}[/]  (Ctrl-C stops)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.shutdown()
            if reader is not None:
                reader.close()
        console.print("stopped")
