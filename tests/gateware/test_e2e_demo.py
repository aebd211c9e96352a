"""The main job end to end: `portjournal demo --quick` in both modes, and in redo mode over the DMA
link (`--link dma`), as a user runs it.

The demo checks its own restore against the storage model; this test checks it again with
its own replay of the board's storage log (`sim.vboard.apply_log` onto the initial volume
regenerated from the seed), and checks what the demo reports about the outage against the
journal the demo left behind.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from boards.sim import SIM_STANDALONE
from host.demo import initial_volume
from host.journal.store import NEVER, JournalError, LocalJournal
from sim import vboard

LAST_LINE = re.compile(r"^demo: mode=(redo|cow) entries=(\d+) restored_mb=(\d+) restore_s=([\d.]+) "
                       r"verified=(yes|no)$")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains `text`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:
            pass
    return found


def test_ctrl_c_stops_the_board(tmp_path):
    """Ctrl-C during collection (SIGINT to the whole process group, as a terminal sends it): exit
    130 with a clear message, the board process is gone, the journal is readable."""
    out = tmp_path / "interrupted"
    tool = Path(sys.executable).with_name("portjournal")
    # The quick demo's sizes with a long steady phase: the signal lands in collection however
    # late a loaded machine lets this test see the "steady:" line (a 3 s phase could be over).
    args = ["--volume-mb", "16", "--damage-mb", "1", "--steady-s", "600", "--outage-s", "3",
            "--deadline", "1"]
    # Started with SIGINT ignored, as a shell starts a background job (and as Python would keep
    # it): the demo installs its own handler, so the signal stops it all the same.
    proc = subprocess.Popen([str(tool), "demo", *args, "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        for line in proc.stdout:
            if line.startswith("steady:"):
                break
        volume = str(out / "volume.img")
        assert processes_mentioning(volume), "the board is not running"
        # Interrupt once entries are stored (the first flushes may be time marks alone, and a
        # loaded machine may take seconds to get there).
        deadline = time.monotonic() + 120
        while not stored_entries(out / "journal"):
            assert time.monotonic() < deadline, "no flush stored within 120 s of the steady phase"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        rest = proc.communicate(timeout=60)[0]
    finally:
        proc.kill()
        for pid in processes_mentioning(str(out / "volume.img")):      # a board left behind
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 130, rest
    assert "interrupted" in rest
    assert processes_mentioning(volume) == []
    with LocalJournal.open(out / "journal", readonly=True) as journal:   # what was stored stays
        assert len(journal.index) > 0


def stored_entries(folder: Path) -> int:
    """The entries a journal holds, read-only (a collector may be writing it: a journal not
    created yet, or caught mid-write, counts as none yet)."""
    try:
        with LocalJournal.open(folder, readonly=True) as journal:
            return len(journal.index)
    except JournalError:
        return 0


@pytest.mark.parametrize("mode, link", [("redo", "serial"), ("cow", "serial"), ("redo", "dma")])
def test_quick_demo(tmp_path, mode, link):
    out = tmp_path / "demo"
    tool = Path(sys.executable).with_name("portjournal")
    proc = subprocess.run([str(tool), "demo", "--quick", "--mode", mode, "--link", link, "--seed", "3",
                           "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    match = LAST_LINE.match(last)
    assert match, last
    assert match[1] == mode and match[3] == "16" and match[5] == "yes"
    summary = json.loads((out / "summary.json").read_text())
    assert int(match[2]) == sum(summary["entries"]) > 1000

    # The restored volume is the storage model's volume at the bookmark, by this test's own replay.
    block = vboard.SIM_BOARD.block_bytes
    at = summary["bookmark_ns"]
    shadow = bytearray(initial_volume(3, 16 * 2**20).tobytes())
    log = vboard.read_storage_log(out / "storage.log")
    vboard.apply_log(shadow, (r for r in log if r.time_ns <= at), block)
    restored = (out / "volume.img").read_bytes()
    assert restored == bytes(shadow)
    # ... and the attack really had changed it: the restore rewrote exactly the blocks that were
    # unlike the bookmark's, at least every block the ransomware server overwrote.
    assert summary["damaged_blocks"] == 2048
    assert summary["blocks_changed_by_restore"] == summary["differing_before_restore"] >= 2048

    # The outage: the silenced port was invalid from its last complete flush; while it was,
    # restores were held at that instant though the other ports had flushed well past it. On
    # the serial link that flush came before the silence; on the DMA link only the doorbells are
    # silenced, so entries still reach the host ring, complete, until it fills.
    since, back = summary["outage"]
    events = summary["events"]
    assert summary["bookmark_ns"] < events["invalid"] == since < back
    assert since <= events["silence"] or link == "dma"
    # While it was invalid, the other ports flushed past its verdict, yet a restore between the two
    # was refused for port 3 alone; at the verdict itself redo could restore (every write up to
    # it is in), copy-on-write could not (it needs every write after the restore point).
    assert summary["horizon_during_outage"] > since
    refused = summary["refused_past_invalid"]
    assert "port 3 is invalid" in refused and "horizon" not in refused, refused
    if mode == "redo":
        assert summary["refused_at_invalid"] == ""
    else:
        assert "port 3 is invalid" in summary["refused_at_invalid"]
    with LocalJournal.open(out / "journal", readonly=True) as journal:
        assert list(journal.invalid_since()) == [NEVER] * 4          # reinstated, nothing lost
        assert journal.state.port_state[3].outages == [[since, back]]
        seqs = journal.index["seq"][journal.index["port"] == 3]
        assert list(seqs) == list(range(len(seqs)))
        assert journal.state.bookmarks["before-attack"] == at

    # The pictures hold data: strongly coloured pixels (the ports' bars and lines) cover far more
    # than the axes, labels and marker lines of an empty chart would (~0.2 %).
    import matplotlib.image

    for name, least in (("timeline.png", 0.04), ("dpll.png", 0.007)):
        assert (out / name).read_bytes().startswith(PNG_MAGIC), name
        pixels = (matplotlib.image.imread(out / name)[..., :3] * 255).astype(np.int16)
        assert pixels.shape[0] > 400 and pixels.shape[1] > 800
        coloured = (pixels.max(axis=-1) - pixels.min(axis=-1)) > 60
        assert coloured.mean() > least, (name, coloured.mean())


STANDALONE_LINE = re.compile(r"^demo: mode=(redo|cow) entries=(\d+) restored_mb=0.125 restore_s=([\d.]+) "
                             r"verified=(yes|no)$")


@pytest.mark.parametrize("mode", ["redo", "cow"])
def test_quick_standalone_demo(tmp_path, mode):
    """`portjournal demo --standalone --quick`: the path a dev board's demo takes (`--port`), on the
    virtual board's standalone variant. Checked again here: the restored volume against this
    test's own replay of the host's record (`writes.bin`) onto the journal's base copy."""
    out = tmp_path / "demo"
    tool = Path(sys.executable).with_name("portjournal")
    proc = subprocess.run([str(tool), "demo", "--standalone", "--quick", "--mode", mode, "--seed", "5",
                           "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    match = STANDALONE_LINE.match(last := proc.stdout.strip().splitlines()[-1])
    assert match and match[1] == mode and match[4] == "yes", last
    summary = json.loads((out / "summary.json").read_text())
    assert int(match[2]) == sum(summary["entries"]) > 500
    assert summary["record_mismatched_blocks"] == 0 and summary["mismatched_blocks"] == 0

    block, at = SIM_STANDALONE.block_bytes, summary["bookmark_ns"]
    with LocalJournal.open(out / "journal", readonly=True) as journal:
        shadow = np.fromfile(journal.base_image(), dtype=np.uint8).reshape(-1, block)
        base_ns = journal.state.base.time_ns
        assert list(journal.invalid_since()) == [NEVER] * 4          # reinstated, nothing lost
        since, back = summary["outage"]
        assert journal.state.port_state[3].outages == [[since, back]]
        seqs = journal.index["seq"][journal.index["port"] == 3]
        assert list(seqs) == list(range(len(seqs)))
    raw = (out / "writes.bin").read_bytes()
    size = 24 + block
    assert len(raw) % size == 0 and len(raw) // size > 300
    for off in range(0, len(raw), size):
        time_ns, lba = np.frombuffer(raw[off:off + 16], dtype="<u8")
        assert time_ns > base_ns
        if time_ns < at:
            shadow[lba] = np.frombuffer(raw[off + 24:off + size], dtype=np.uint8)
    assert (out / "volume.img").read_bytes() == shadow.tobytes()
    assert summary["damaged_blocks"] == 64
    assert summary["blocks_changed_by_restore"] == summary["differing_before_restore"] >= 64
    events = summary["events"]
    assert summary["bookmark_ns"] < events["invalid"] == since <= events["silence"] < back
    assert summary["horizon_during_outage"] > since
    assert "port 3 is invalid" in summary["refused_past_invalid"]
    assert (summary["refused_at_invalid"] == "") == (mode == "redo")
