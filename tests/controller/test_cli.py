"""The `portjournal` entry point: help and version."""

from click.testing import CliRunner

from host import __version__
from host.cli import cli


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"portjournal, version {__version__}"


def test_help_names_the_mission():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "journal" in result.output


def test_unknown_command_is_a_clear_error():
    result = CliRunner().invoke(cli, ["no-such-command"])
    assert result.exit_code == 2
    assert "No such command" in result.output
