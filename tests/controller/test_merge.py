"""Merge: the vectorised merge equals a straightforward per-entry computation."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware.abi.entry import Kind, Mode, Status, pack
from host.journal.merge import MERGED_DTYPE, merge, merge_reference
from host.journal.store import NEVER, LocalJournal

BLOCK = 8
WINDOW = 100


@st.composite
def workloads(draw):
    """Per port: a list of (time step, lba, status); flush batch cut points; port failures."""
    ports = draw(st.integers(1, 4))
    streams = []
    for _ in range(ports):
        writes = draw(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 5),
                                         st.sampled_from([Status.OK] * 4 + [Status.PRIMARY_FAILED,
                                                                          Status.JOURNAL_FAILED])),
                               max_size=30))
        streams.append(writes)
    batch = draw(st.integers(1, 8))
    order = draw(st.permutations(range(ports)))
    # A failing port fails at the time of one of its writes (the boundary case) or after all.
    failed = draw(st.dictionaries(st.integers(0, ports - 1), st.integers(0, 30), max_size=2))
    marker_port = draw(st.one_of(st.none(), st.integers(0, ports - 1)))
    mode = draw(st.sampled_from(Mode))
    return ports, streams, batch, order, failed, marker_port, mode


def build_entries(ports, streams, marker_port, mode):
    """Packed entries per port, and their headers, as a port would produce them."""
    out = []
    for port, writes in enumerate(streams):
        t, entries = 0, []
        for seq, (dt, lba, status) in enumerate(writes):
            t += dt
            entries.append(dict(seq=seq, port=port, mode=mode, status=status, kind=Kind.WRITE,
                                timestamp=t, lba=lba, data=bytes([seq % 256]) * BLOCK))
        if port == marker_port:
            entries.append(dict(seq=len(entries), port=port, mode=mode, status=Status.OK,
                                kind=Kind.PORT_INVALID, timestamp=t + 1, lba=0, data=b""))
        out.append(entries)
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(workloads())
def test_merged_portion_equals_reference(tmp_path_factory, new_journal, work):
    ports, streams, batch, order, failed, marker_port, mode = work
    per_port = build_entries(ports, streams, marker_port, mode)
    failed = {port: per_port[port][k]["timestamp"] if k < len(per_port[port]) else 10**6
              for port, k in failed.items()}
    folder = tmp_path_factory.mktemp("merge")
    journal = new_journal(folder / "j", block_bytes=BLOCK, ports=ports, mode=mode, window_ns=WINDOW)
    flushed = [0] * ports
    cursors = [0] * ports
    # Flush in rounds, ports in the drawn order; a failed port stops flushing at its failure time.
    while True:
        progressed = False
        for port in order:
            entries = per_port[port]
            chunk = entries[cursors[port]:cursors[port] + batch]
            if port in failed:
                chunk = [e for e in chunk if e["timestamp"] <= failed[port]]
            if not chunk:
                continue
            cursors[port] += len(chunk)
            flushed[port] = chunk[-1]["timestamp"] + 1
            journal.append(port, b"".join(pack(**e) for e in chunk), flushed[port])
            progressed = True
        if not progressed:
            break
    for port, at in failed.items():
        journal.invalidate(port, at, "missed flush deadline")
    got = journal.merge()

    # The reference: computed from the generated entries, not from the store.
    invalid_since = [NEVER] * ports
    for port, at in failed.items():
        invalid_since[port] = at
    if marker_port is not None and per_port[marker_port]:
        invalid_since[marker_port] = min(invalid_since[marker_port], per_port[marker_port][-1]["timestamp"])
    valid = [p for p in range(ports) if invalid_since[p] == NEVER]
    horizon = min(flushed[p] for p in valid) if valid else max(flushed)
    end = horizon // WINDOW * WINDOW
    stored = [e for port in range(ports) for e in per_port[port][:cursors[port]]]
    expect = merge_reference(stored, mode=mode, window_ns=WINDOW, start_ns=0, end_ns=end,
                             valid_from=[0] * ports, invalid_since=invalid_since)
    want = [(w, lba, mask, (stored[eid]["port"], stored[eid]["seq"])) for w, lba, mask, eid in expect]
    located = {(int(r["seg"]), int(r["offset"])): (int(r["port"]), int(r["seq"])) for r in journal.index}
    have = [(int(r["window_end"]), int(r["lba"]), int(r["port_mask"]),
             located[(int(r["seg"]), int(r["offset"]))]) for r in got]
    assert sorted(have) == want
    assert journal.merged_through == end
    journal.close()


def test_merge_is_incremental_and_durable(tmp_path):
    journal = LocalJournal.create(tmp_path / "j", block_bytes=BLOCK, ports=1, mode=Mode.REDO,
                                  window_ns=WINDOW)
    e = [pack(seq=i, port=0, mode=Mode.REDO, status=Status.OK, kind=Kind.WRITE, timestamp=50 * i, lba=i % 2,
              data=bytes(BLOCK)) for i in range(10)]
    journal.append(0, b"".join(e[:4]), 210)
    first = journal.merge()
    assert [(int(r["window_end"]), int(r["lba"])) for r in first] == [(100, 0), (100, 1), (200, 0), (200, 1)]
    journal.append(0, b"".join(e[4:]), 460)
    second = journal.merge()
    assert [int(r["window_end"]) for r in second] == [300, 300, 400, 400]
    journal.close()
    again = LocalJournal.open(tmp_path / "j")
    assert len(again.merged) == 8 and again.merged_through == 400
    assert len(again.merge()) == 0


@pytest.mark.parametrize("mode", list(Mode))
def test_bulk_merge_matches_reference(mode):
    """A million-entry-shaped merge on a smaller random index, with ties in time."""
    from host.journal.entries import INDEX_DTYPE

    rng = np.random.default_rng(5)
    n = 20000
    index = np.zeros(n, INDEX_DTYPE)
    index["port"] = rng.integers(0, 4, n)
    index["timestamp"] = rng.integers(0, 5000, n)
    index["lba"] = rng.integers(0, 50, n)
    index["status"] = rng.choice([Status.OK, Status.OK, Status.PRIMARY_FAILED], n)
    for p in range(4):
        mine = index["port"] == p
        index["timestamp"][mine] = np.sort(index["timestamp"][mine])
        index["seq"][mine] = np.arange(mine.sum())
    index["offset"] = np.arange(n)    # so a merged row's offset is the reference's position
    valid_from = np.array([0, 0, 700, 0], np.uint64)
    invalid = np.array([NEVER, 3000, NEVER, NEVER], np.uint64)
    got = merge(index, mode=mode, window_ns=WINDOW, start_ns=0, end_ns=5000, valid_from=valid_from,
                invalid_since=invalid)
    headers = [{k: int(index[k][i]) for k in ("timestamp", "port", "seq", "lba", "status", "kind")}
               for i in range(n)]
    want = merge_reference(headers, mode=mode, window_ns=WINDOW, start_ns=0, end_ns=5000,
                           valid_from=valid_from.tolist(), invalid_since=invalid.tolist())
    assert got.dtype == MERGED_DTYPE
    assert [(int(r["window_end"]), int(r["lba"]), int(r["port_mask"]), int(r["offset"])) for r in got] == want
