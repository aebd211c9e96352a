"""Restore and point-in-time views against an independent shadow of the volume."""

import calendar
import re

import crc32c
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scenario import BLOCK, BLOCKS, WINDOW, build_journal

import host.restore
from firmware.abi.entry import Mode, Status
from host.cli import cli
from host.journal.store import LocalJournal
from host.restore import commit, restore_to_file, undo
from host.views import ViewRefused, open_view


def next_to(t: int):
    """t - 1, t or t + 1 (not below 0): where off-by-one mistakes show."""
    return st.integers(max(t - 1, 0), t + 1)


@st.composite
def scenarios(draw):
    ports = draw(st.integers(1, 3))
    outcome = st.sampled_from([Status.OK] * 5 + [Status.PRIMARY_FAILED, Status.JOURNAL_FAILED])
    writes = draw(st.lists(st.tuples(st.integers(0, 2000), st.integers(0, ports - 1),
                                     st.integers(0, BLOCKS - 1), outcome), min_size=1, max_size=60))
    mode = draw(st.sampled_from(Mode))
    # Boundaries: Tx on a write's time or next to it, the silent port's cut next to Tx.
    times = sorted({t for t, *_ in writes})
    near_a_write = st.sampled_from(times).flatmap(next_to)
    at = draw(st.one_of(st.integers(0, 2200), st.sampled_from(times), near_a_write))
    cut = st.one_of(st.just(max(at - 1, 0)), st.just(at), next_to(at), st.integers(0, 2000), near_a_write)
    silent = draw(st.one_of(st.none(), st.tuples(st.integers(0, ports - 1), cut)))
    merge_at = draw(st.one_of(st.none(), st.integers(0, 2200), next_to(at)))
    return ports, writes, mode, silent, merge_at, at


def expected_refusal(journal, mode, silent, at):
    """Why the journal cannot vouch for `at`, by the rules, from the test's own knowledge."""
    if at > journal.horizon():
        return True
    if silent is None:
        return False
    return True if mode == Mode.COPY_ON_WRITE else silent[1] < at


OK = Status.OK
TWO_PORTS = [(50, 0, 1, OK), (99, 1, 2, OK), (100, 0, 3, OK), (100, 1, 5, OK), (150, 1, 4, OK)]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenarios())
# Copy-on-write: a write stamped exactly at Tx is after Tx, so its block reads the pre-image.
@example((1, [(100, 0, 3, OK), (150, 0, 3, OK)], Mode.COPY_ON_WRITE, None, None, 100))
# Redo: a write stamped exactly at Tx is not in; one just before is (merged or not).
@example((1, [(99, 0, 3, OK), (100, 0, 3, OK)], Mode.REDO, None, None, 100))
@example((1, [(99, 0, 3, OK), (100, 0, 3, OK)], Mode.REDO, None, 150, 100))
@example((1, [(199, 0, 3, OK), (200, 0, 4, OK), (250, 0, 5, OK)], Mode.REDO, None, None, 200))
# A port silent from Tx - 1 misses a write Tx needs: refused. Silent from Tx: nothing missing.
@example((2, TWO_PORTS, Mode.REDO, (1, 99), None, 100))
@example((2, TWO_PORTS, Mode.REDO, (1, 100), None, 100))
# Copy-on-write needs every write after Tx: a port silent at any time is refused.
@example((2, [(50, 0, 1, OK), (120, 1, 2, OK), (150, 0, 4, OK)], Mode.COPY_ON_WRITE, (1, 151), None, 100))
def test_view_and_restore_equal_the_shadow(tmp_path_factory, monkeypatch, new_journal, scenario):
    ports, writes, mode, silent, merge_at, at = scenario
    monkeypatch.setattr(host.restore, "CHUNK_BLOCKS", 5)        # several chunks, the last one short
    tmp_path = tmp_path_factory.mktemp("restore")
    journal, model, volume = build_journal(tmp_path, ports, writes, mode, silent, merge_at,
                                           create=new_journal)
    present = volume.read_bytes()
    refuse = expected_refusal(journal, mode, silent, at)
    try:
        view = open_view(journal, at, storage=volume)
    except ViewRefused:
        assert refuse, "refused a time the journal can vouch for"
        return
    assert not refuse, "opened a view the journal cannot vouch for"
    shadow = model.image_at(at)
    assert view.read(0, view.size_bytes) == shadow
    assert view.read(5, 40) == shadow[5:45]                     # unaligned reads
    out = tmp_path / "restored.img"
    summary = restore_to_file(view, out)
    assert out.read_bytes() == shadow
    assert summary.crc32c == crc32c.crc32c(shadow)              # chained across the chunks
    assert summary.blocks_from_journal == len(view.lba)
    assert volume.read_bytes() == present                       # reading and restoring wrote nothing
    # Commit onto primary storage, then undo: both modes (redo reads the base, cow the volume).
    result = commit(view, volume, tmp_path / "undo" / "u.undo")
    assert volume.read_bytes() == shadow
    assert result.crc32c == crc32c.crc32c(shadow)
    assert result.bytes_written == BLOCK * sum(
        shadow[i * BLOCK:(i + 1) * BLOCK] != present[i * BLOCK:(i + 1) * BLOCK] for i in range(BLOCKS))
    undo(tmp_path / "undo" / "u.undo", volume)
    assert volume.read_bytes() == present                   # restore-then-undo: the present again
    view.backing.close()
    journal.close()


def test_cli_restore_bookmarks_and_refusals(tmp_path, monkeypatch):
    monkeypatch.setattr(host.restore, "CHUNK_BLOCKS", 4)
    writes = [(t, t % 2, t % BLOCKS, Status.OK) for t in range(0, 1000, 7)]
    journal, model, volume = build_journal(tmp_path, 2, writes, Mode.REDO, None, None)
    folder = str(journal.folder)
    journal.close()
    runner = CliRunner()
    added = runner.invoke(cli, ["bookmark", "add", "-j", folder, "before", "--at", "500"])
    assert added.exit_code == 0, added.output
    listed = runner.invoke(cli, ["bookmark", "list", "-j", folder])
    assert "before" in listed.output and "500" in listed.output
    out = tmp_path / "r.img"
    done = runner.invoke(cli, ["restore", "-j", folder, "--at", "before", "-o", str(out)])
    assert done.exit_code == 0, done.output
    assert out.read_bytes() == model.image_at(500)
    assert "blocks from the journal" in done.output and "CRC-32C" in done.output
    crc = re.search(r"CRC-32C (0x[0-9a-f]{8})", done.output).group(1)
    assert int(crc, 16) == crc32c.crc32c(out.read_bytes())      # of the whole image, over 3 chunks
    relative = runner.invoke(cli, ["restore", "-j", folder, "--at", "-100ns", "-o", str(out)])
    assert relative.exit_code == 0, relative.output
    with LocalJournal.open(journal.folder) as j:
        horizon = j.horizon()
    assert out.read_bytes() == model.image_at(horizon - 100)
    late = runner.invoke(cli, ["restore", "-j", folder, "--at", str(horizon + 1000), "-o", str(out)])
    assert late.exit_code == 1 and "past the consistency horizon" in late.output
    forced = runner.invoke(cli, ["restore", "-j", folder, "--at", str(horizon + 1000), "-o", str(out),
                                 "--force"])
    assert forced.exit_code == 0 and "not guaranteed" in forced.output
    bad = runner.invoke(cli, ["restore", "-j", folder, "--at", "yesterday-ish", "-o", str(out)])
    assert bad.exit_code == 2 and "is not a time" in bad.output
    both = runner.invoke(cli, ["restore", "-j", folder, "--at", "before"])
    assert both.exit_code == 2 and "exactly one" in both.output
    clash = runner.invoke(cli, ["bookmark", "add", "-j", folder, "2026-01-01"])
    assert clash.exit_code == 2 and "cannot be a bookmark name" in clash.output
    gone = runner.invoke(cli, ["bookmark", "rm", "-j", folder, "before"])
    assert gone.exit_code == 0
    assert runner.invoke(cli, ["bookmark", "rm", "-j", folder, "before"]).exit_code == 1


def test_cli_errors_are_one_line(tmp_path):
    """Unwritable paths and times outside the 64-bit device time: one-line errors, no traceback,
    nothing stored."""
    writes = [(t, 0, t % BLOCKS, Status.OK) for t in range(0, 500, 7)]
    journal, model, volume = build_journal(tmp_path, 1, writes, Mode.REDO, None, None, block=512)
    folder = str(journal.folder)
    journal.close()
    huge = "99999999999999999999999"
    cases = [
        (["restore", "-j", folder, "--at", "100", "-o", "/nonexistent/dir/x.img"], 1,
         "cannot restore to /nonexistent/dir/x.img"),
        (["journal", "create", "-j", "/proc/new", "--ports", "1"], 1, "cannot create a journal in /proc/new"),
        (["bookmark", "add", "-j", folder, "x1", "--at", huge], 2, "outside device time"),
        (["bookmark", "add", "-j", folder, "x2", "--at", str(2**64)], 2, "outside device time"),
        (["bookmark", "add", "-j", folder, "x3", "--at", "2600-01-01T00:00:00Z"], 2, "outside device time"),
        (["bookmark", "add", "-j", folder, "x4", "--at", "1969-12-31T23:59:59Z"], 2, "outside device time"),
        (["restore", "-j", folder, "--at", huge, "-o", str(tmp_path / "r.img")], 2, "outside device time"),
        (["journal", "base", "-j", folder, "--storage", str(volume), "--at", str(2**64)], 2, "--at"),
    ]
    runner = CliRunner()
    for args, code, message in cases:
        result = runner.invoke(cli, args)
        assert result.exit_code == code and message in result.output, (args, result.output)
        assert not isinstance(result.exception, (OSError, ArithmeticError)), result.exception
    with LocalJournal.open(journal.folder) as j:
        assert j.state.bookmarks == {}
    edge = runner.invoke(cli, ["bookmark", "add", "-j", folder, "last", "--at", str(2**64 - 1)])
    assert edge.exit_code == 0, edge.output
    exported = runner.invoke(cli, ["export", "--format", "dm-log-writes", "-j", folder, str(tmp_path / "l")])
    assert exported.exit_code == 0 and "1 marks" in exported.output, exported.output


MIDNIGHT = calendar.timegm((2026, 11, 27, 0, 0, 0)) * 10**9


@pytest.mark.parametrize("text,expect", [
    ("1500", 1500),
    ("2026-11-27T00:00:00Z", MIDNIGHT),
    ("2026-11-27 01:00:00.25+01:00", MIDNIGHT + 250_000_000),
])
def test_at_forms(tmp_path, text, expect):
    from host.timespec import parse_at

    journal = LocalJournal.create(tmp_path / "j", block_bytes=BLOCK, ports=1, mode=Mode.REDO,
                                  window_ns=WINDOW)
    assert parse_at(text, journal) == expect
