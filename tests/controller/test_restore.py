"""Restore and point-in-time views against an independent shadow of the volume."""

import calendar

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scenario import BLOCK, BLOCKS, WINDOW, build_journal

from firmware.abi.entry import Mode, Status
from host.cli import cli
from host.journal.store import LocalJournal
from host.restore import commit, restore_to_file, undo
from host.views import ViewRefused, open_view
from sim.storage_model import Request, StorageModel, journal_requests


@st.composite
def scenarios(draw):
    ports = draw(st.integers(1, 3))
    outcome = st.sampled_from([Status.OK] * 5 + [Status.PRIMARY_FAILED, Status.JOURNAL_FAILED])
    writes = draw(st.lists(st.tuples(st.integers(0, 2000), st.integers(0, ports - 1),
                                     st.integers(0, BLOCKS - 1), outcome), min_size=1, max_size=60))
    mode = draw(st.sampled_from(Mode))
    silent = draw(st.one_of(st.none(), st.tuples(st.integers(0, ports - 1), st.integers(0, 2000))))
    merge_at = draw(st.one_of(st.none(), st.integers(0, 2200)))
    at = draw(st.integers(0, 2200))
    return ports, writes, mode, silent, merge_at, at


def expected_refusal(journal, mode, silent, at):
    """Why the journal cannot vouch for `at`, by the rules, from the test's own knowledge."""
    if at > journal.horizon():
        return True
    if silent is None:
        return False
    return True if mode == Mode.COPY_ON_WRITE else silent[1] < at


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenarios())
def test_view_and_restore_equal_the_shadow(tmp_path_factory, scenario):
    ports, writes, mode, silent, merge_at, at = scenario
    tmp_path = tmp_path_factory.mktemp("restore")
    journal, model, volume = build_journal(tmp_path, ports, writes, mode, silent, merge_at)
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
    assert summary.blocks_from_journal == len(view.lba)
    assert volume.read_bytes() == present                       # reading and restoring wrote nothing
    if mode == Mode.COPY_ON_WRITE:
        result = commit(view, volume, tmp_path / "undo" / "u.undo")
        assert volume.read_bytes() == shadow
        assert result.bytes_written == BLOCK * sum(
            shadow[i * BLOCK:(i + 1) * BLOCK] != present[i * BLOCK:(i + 1) * BLOCK] for i in range(BLOCKS))
        undo(tmp_path / "undo" / "u.undo", volume)
        assert volume.read_bytes() == present                   # restore-then-undo: the present again
    view.backing.close()
    journal.close()


def test_cow_view_follows_new_entries(tmp_path):
    """A copy-on-write view of Tx stays right as later writes land and their entries arrive."""
    rng = np.random.default_rng(3)
    model = StorageModel(BLOCKS, BLOCK, rng.bytes(BLOCK * BLOCKS))
    requests = [Request(10 * i, 0, (7 * i) % BLOCKS, rng.bytes(BLOCK)) for i in range(1, 40)]
    entries = journal_requests(requests, model, Mode.COPY_ON_WRITE, 1)[0]
    early = sum(r.timestamp < 200 for r in requests)
    volume = tmp_path / "volume.img"
    volume.write_bytes(model.image_at(200))                    # primary storage at 200
    journal = LocalJournal.create(tmp_path / "j", block_bytes=BLOCK, ports=1, mode=Mode.COPY_ON_WRITE,
                                  window_ns=WINDOW)
    journal.append(0, b"".join(entries[:early]), 200)
    view = open_view(journal, 95, storage=volume)
    assert view.read(0, view.size_bytes) == model.image_at(95)
    volume.write_bytes(bytes(model.image))                     # later writes land on primary storage
    journal.append(0, b"".join(entries[early:]), 400)          # and their pre-images arrive
    assert view.read(0, view.size_bytes) != model.image_at(95)  # a stale map shows the new data
    view.refresh()
    assert view.read(0, view.size_bytes) == model.image_at(95)
    view.backing.close()


def test_cli_restore_bookmarks_and_refusals(tmp_path):
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
