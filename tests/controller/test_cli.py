"""The `portjournal` entry point: help, sections, examples, exit codes and errors that name the fix."""

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from firmware.abi.entry import Mode
from host import __version__, exitcodes
from host.cli import cli
from host.clihelp import SECTIONS, SectionedGroup
from host.journal.store import LocalJournal
from sim.workload import make_streams

BLOCK, BLOCKS, WINDOW = 64, 32, 10**6
README = Path(__file__).resolve().parents[2] / "README.md"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_version():
    result = run("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"portjournal, version {__version__}"


def test_help_names_the_mission():
    result = run("--help")
    assert result.exit_code == 0
    assert "journal" in result.output


def test_unknown_command_is_a_clear_error():
    result = run("no-such-command")
    assert result.exit_code == 2
    assert "No such command" in result.output


# --- the top-level help: sections in task order ---------------------------------------------

def test_every_command_is_in_a_section():
    """A command registered without `section=` would be listed under "Other": refuse it here."""
    assert cli.ungrouped() == [], "give these a section in host/cli.py: cli.add_command(cmd, section=...)"


def test_help_lists_the_sections_in_task_order():
    out = run("--help").output
    headings = [line[:-1] for line in out.splitlines() if line.endswith(":") and not line.startswith(" ")]
    filled = [heading for key, heading in SECTIONS if key in cli.sections.values()]
    assert [h for h in headings if h in dict(SECTIONS).values()] == filled
    for key, heading in SECTIONS:                      # a section with no commands is not printed
        assert (f"\n{heading}:\n" in out) == (key in cli.sections.values()), heading
    assert "Other:" not in out
    for name, key in cli.sections.items():             # each command under its own heading
        section = out.split(dict(SECTIONS)[key] + ":\n")[1].split("\n\n")[0]
        assert re.search(rf"^  {re.escape(name)} ", section, re.M), (name, key)
    assert "Start here: 'make demo'" in out
    for code, _ in exitcodes.TABLE:
        if code is not None:
            assert re.search(rf"^    {code} ", out, re.M), code


def test_sections_register_in_one_line():
    group = SectionedGroup("g")

    @click.command("late")
    def late():
        """A command added later."""

    group.add_command(late, section="simulate")

    @group.command("tool", section="environment")
    def tool():
        """A tool."""

    @group.command("stray")
    def stray():
        """Registered without a section."""

    assert group.sections == {"late": "simulate", "tool": "environment"}
    assert group.ungrouped() == ["stray"]
    out = CliRunner().invoke(group, ["--help"]).output
    assert out.index("Simulate:") < out.index("Environment:") < out.index("Other:") < out.index("stray")
    with pytest.raises(ValueError, match="unknown help section 'flash': use one of simulate, build"):
        group.add_command(late, name="again", section="flash")


# --- every command's help has examples of itself ----------------------------------------------

def command_tree(cmd=cli, path=("portjournal",)):
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from command_tree(sub, (*path, name))


def examples(help_text: str) -> list[str]:
    lines = help_text.splitlines()
    start = lines.index("  Examples:") + 1
    while not lines[start].strip():
        start += 1
    found = []
    for line in lines[start:]:
        if not line.strip():
            break
        found.append(line.strip())
    return found


def test_every_command_has_examples_of_itself():
    paths = []
    for path, _ in command_tree():
        paths.append(" ".join(path))
        result = run(*path[1:], "--help")
        assert result.exit_code == 0, (path, result.output)
        assert "Examples:" in result.output, f"'{' '.join(path)} --help' has no Examples: block"
        found = examples(result.output)
        assert found, path
        for line in found:
            assert line == " ".join(path) or line.startswith(" ".join(path) + " "), (path, line)
    for nested in ("portjournal journal verify", "portjournal ports resync", "portjournal bookmark rm"):
        assert nested in paths                          # the walk reaches the nested commands


# --- exit codes -------------------------------------------------------------------------------

def test_exit_codes_are_documented_in_the_readme():
    text = README.read_text()
    section = text.split("## Exit codes")[1].split("\n## ")[0]
    for code, _ in exitcodes.TABLE:
        if code is not None:
            assert f"| {code} |" in section, code


def test_usage_errors_exit_2(tmp_path):
    assert run("journal", "create", "-j", tmp_path / "j").exit_code == exitcodes.USAGE     # no --ports
    assert run("journal", "info", "--no-such-option").exit_code == exitcodes.USAGE
    bad = run("journal", "create", "-j", tmp_path / "j", "--ports", "2", "--window", "soon")
    assert bad.exit_code == exitcodes.USAGE and "not a duration (examples: 250us" in bad.output


def journal_with_entries(folder: Path, entries: int = 40) -> Path:
    with LocalJournal.create(folder, block_bytes=BLOCK, ports=2, mode=Mode.REDO, window_ns=WINDOW) as j:
        streams = make_streams(ports=2, entries=entries, block_bytes=BLOCK, blocks=BLOCKS,
                               span_ns=10 * WINDOW)
        for s in streams:
            for raw, newest in s.batches(10):
                j.append(s.port, raw, newest + 1)
    return folder


def test_missing_journal_exits_1_and_names_the_fix(tmp_path):
    missing = tmp_path / "nothing"
    for args in (["journal", "info"], ["journal", "verify"], ["ports"], ["bookmark", "list"],
                 ["restore", "--at", "0", "-o", tmp_path / "r.img"]):
        result = run(*args, "-j", missing)
        assert result.exit_code == exitcodes.ERROR, (args, result.output)
        assert f"{missing} is not a journal" in result.output
        assert f"'portjournal journal create -j {missing} --ports N'" in result.output
        assert "Traceback" not in result.output


def test_wrong_port_path_names_the_fix():
    for path in ("/nonexistent/ttyUSB9", "/dev/null", "/tmp"):
        result = run("status", "--port", path, "--timeout", "0.1")
        assert result.exit_code == exitcodes.ERROR, (path, result.output)
        assert "check the --port path" in result.output, result.output
        assert "'portjournal sim' shows 'pty /dev/pts/N'" in result.output


def test_bad_at_time_is_a_usage_error_listing_the_forms(tmp_path):
    folder = journal_with_entries(tmp_path / "j")
    assert run("bookmark", "add", "-j", folder, "start", "--at", "0").exit_code == 0
    result = run("restore", "-j", folder, "--at", "last tuesday", "-o", tmp_path / "r.img")
    assert result.exit_code == exitcodes.USAGE
    assert "'last tuesday' is not a time: give a bookmark name (known: start)" in result.output
    gone = run("bookmark", "rm", "-j", folder, "nope")
    assert gone.exit_code == exitcodes.ERROR and f"'portjournal bookmark list -j {folder}'" in gone.output
    twice = run("bookmark", "add", "-j", folder, "start")
    assert twice.exit_code == exitcodes.ERROR
    assert f"'portjournal bookmark rm -j {folder} start'" in twice.output


def test_damaged_journal_names_repair_and_verify_exits_3(tmp_path):
    folder = journal_with_entries(tmp_path / "j")
    seg = max((folder / "received").glob("*.seg"))
    raw = bytearray(seg.read_bytes())
    raw[-20] ^= 0x01                                # inside the last record: damage at the tail
    seg.write_bytes(bytes(raw))
    merge = run("journal", "merge", "-j", folder)
    assert merge.exit_code == exitcodes.ERROR and "'portjournal journal repair' cuts them" in merge.output
    verify = run("journal", "verify", "-j", folder)
    assert verify.exit_code == exitcodes.CHECK_FAILED, verify.output
    assert f"fix: 'portjournal journal repair -j {folder}'" in verify.output
    repaired = run("journal", "repair", "-j", folder)
    assert repaired.exit_code == 0 and "invalid from" in repaired.output, repaired.output
    assert run("journal", "verify", "-j", folder).exit_code == exitcodes.OK


def test_os_errors_name_the_fix(tmp_path):
    result = run("journal", "create", "-j", "/proc/new", "--ports", "1")
    assert result.exit_code == exitcodes.ERROR and "cannot create a journal in /proc/new" in result.output
    LocalJournal.create(tmp_path / "j", block_bytes=512, ports=1, mode=Mode.REDO, window_ns=WINDOW).close()
    out = run("export", "--format", "dm-log-writes", "-j", tmp_path / "j", tmp_path / "no" / "dir" / "w.log")
    assert out.exit_code == exitcodes.ERROR and "create its folder first, or check the path" in out.output


def test_ctrl_c_in_a_command_exits_130(tmp_path, monkeypatch):
    """Ctrl-C reaches Python as KeyboardInterrupt wherever the command is: raise it from inside
    one (verify's work) and the tool exits 130 with a word on stderr, not click's 'Aborted!' and 1."""
    folder = journal_with_entries(tmp_path / "j")

    def interrupted(folder):
        raise KeyboardInterrupt

    monkeypatch.setattr("host.journal_cli.verify", interrupted)
    result = run("journal", "verify", "-j", folder)
    assert result.exit_code == exitcodes.INTERRUPTED
    assert "interrupted (Ctrl-C)" in result.output and "Aborted" not in result.output
