"""`portjournal demo`: protect a volume on the virtual board, damage it, and bring it back.

The whole mission in one run, each step shown live and marked on the timeline picture:

1. *volume*: a volume image of seeded random blocks, its base copy in a new journal;
2. *board*: the virtual board (its own process: the device image in Verilator, the time base,
   one server per port writing random blocks, primary storage on the volume, a storage log),
   reached over its pseudo-terminal exactly as a real board's serial port (`--link dma`:
   through journal rings in a host-memory file and BAR registers, `host/link/dma.py`);
3. *steady*: the collector stores every port's journal durably (a round's fsync before its acks);
4. *bookmark*: the servers pause, the board reports a quiet instant, the bookmark goes there;
5. *attack*: one server overwrites a run of blocks with garbage (a ransomware-like event);
6. *outage*: one port stops answering (on the DMA link: its doorbells are dropped, so its
   small host ring and then the port's ring fill): it misses its flush deadline and is marked invalid, the
   consistency horizon stops at it (a restore past it is refused); when its link is back, its
   backlog arrives with the sequence unbroken and the port is reinstated;
7. *drain*: the servers pause, every ring empties into the journal, the board stops;
8. *merge* and *restore*: the journal is merged and the volume is restored to the bookmark in
   place (committed onto primary storage, with an undo file);
9. *verify*: the volume is compared byte for byte with an independent shadow: the initial
   volume regenerated from the seed plus the storage log's writes up to the bookmark.

The board is started through `sim.vboard` (the one place besides `portjournal sim` where the
host reaches into `sim`): the board runs as its own process either way.
"""

import contextlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from firmware.abi.entry import Mode

from .journal.base import take_base_copy
from .journal.collector import Collector, LinkFault
from .journal.store import NEVER, LocalJournal
from .link.device import Device
from .link.dma import DmaDevice
from .restore import commit
from .storage import FileStorage
from .views import ViewRefused, open_view

RANSOM_PORT = 1           # the server that turns into ransomware
SILENT_PORT = 3           # the port whose link goes quiet
DEMO_RING_LOG_SIZE = 4    # DMA link: 16-slot host rings, filled within the outage
BOOKMARK = "before-attack"


@dataclass
class DemoConfig:
    mode: Mode = Mode.REDO
    seed: int = 1
    out: Path = Path("demo-out")
    volume_mb: int = 64
    damage_mb: float = 8          # overwritten by the ransomware server
    rate: float = 6               # writes per ms of simulated time per server
    steady_s: float = 12          # wall seconds of normal traffic before the bookmark
    outage_s: float = 6           # wall seconds the port stays silent
    deadline_s: float = 2         # a port that has not flushed for this long is invalid
    window_ms: float = 1          # merge window, device time
    sample_s: float = 0.25        # register (DPLL, ring fill) samples
    link: str = "serial"          # or "dma": journal rings in host memory (host/link/dma.py)

    def __post_init__(self):
        self.mode, self.out = Mode(self.mode), Path(self.out)
        if self.volume_mb <= 0 or not 0 < self.damage_mb <= self.volume_mb / 2:
            raise ValueError("need a positive volume and a damage of at most half of it")
        if self.outage_s <= self.deadline_s:
            raise ValueError("the outage must outlast the flush deadline, or nothing is invalidated")


@dataclass
class DemoResult:
    """What the demo did and found (also written to `summary.json`)."""

    mode: str
    seed: int
    volume_mb: float
    time_origin_ns: int = 0
    bookmark_ns: int = 0
    events: dict[str, int] = field(default_factory=dict)        # device times of the steps
    entries: list[int] = field(default_factory=list)            # per port, stored in the journal
    journal_bytes: int = 0
    merge_windows: int = 0
    merged_entries: int = 0
    outage: list[int] = field(default_factory=list)             # [invalid since, reinstated at]
    horizon_during_outage: int = 0          # the valid ports' horizon, past the silent port's verdict
    refused_past_invalid: str = ""          # why a restore between the verdict and that horizon failed
    refused_at_invalid: str = ""            # same at the verdict itself ("" = allowed: redo only)
    port_validity: list[str] = field(default_factory=list)
    damaged_blocks: int = 0
    differing_before_restore: int = 0                           # blocks unlike the bookmark's
    blocks_changed_by_restore: int = 0
    restore_s: float = 0.0
    mismatched_blocks: int = -1
    # A standalone board: blocks of its volume (read back at the end) unlike the host's record of
    # its writes (-1: not a standalone board, the storage log is the record)
    record_mismatched_blocks: int = -1
    paths: dict[str, str] = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        return self.mismatched_blocks == 0 and self.record_mismatched_blocks <= 0


def initial_volume(seed: int, size: int) -> np.ndarray:
    """The volume's contents before the board starts: seeded random bytes."""
    return np.frombuffer(np.random.default_rng([seed, 0x766F6C]).bytes(size), dtype=np.uint8)


def shadow_at(initial: np.ndarray, log_path: Path, at_ns: int, block_bytes: int) -> np.ndarray:
    """The volume at `at_ns` by the storage model's own record: `initial` with every write storage
    applied (ok) at or before `at_ns`, in the order it applied them."""
    from sim.vboard import KIND_WRITE, read_storage_log

    vol = initial.copy().reshape(-1, block_bytes)
    for r in read_storage_log(log_path):
        if r.time_ns > at_ns:
            break
        if r.kind == KIND_WRITE and r.ok:
            vol[r.lba] = np.frombuffer(r.data, dtype=np.uint8)
    return vol.reshape(-1)


class Demo:
    """One run; `run()` does every step, `say` reports progress (the CLI shows it live)."""

    def __init__(self, config: DemoConfig, say: Callable[[str], None] = print, live=None):
        from boards.sim import SIM_BOARD

        self.cfg = config
        self.board_config = replace(SIM_BOARD, mode=config.mode, depth=64, link=config.link)
        self.say, self.live = say, live
        out = config.out
        self.paths = {"volume": out / "volume.img", "log": out / "storage.log", "journal": out / "journal",
                      "timeline": out / "timeline.png", "dpll": out / "dpll.png",
                      "summary": out / "summary.json", "undo": out / "restore.undo"}
        self.block = self.board_config.block_bytes
        self.blocks = config.volume_mb * 2**20 // self.block
        self.result = DemoResult(mode="redo" if config.mode == Mode.REDO else "cow", seed=config.seed,
                                 volume_mb=config.volume_mb, paths={k: str(v) for k, v in self.paths.items()})
        self.samples: list[tuple[int, int, dict[str, int]]] = []     # (device ns, port, registers)
        self.flushes: list[tuple[int, int]] = []                     # (device ns flushed through, port)
        self.board = self.device = self.journal = self.collector = self.progress = None

    # --- steps -------------------------------------------------------------------------------
    def run(self) -> DemoResult:
        from sim.vboard import build

        self.prepare()
        self.say(f"building the virtual board ({self.result.mode}; cached after the first build)...")
        binary = build(self.board_config)
        with self.start_board(binary):
            self.steady()
            self.take_bookmark()
            self.attack()
            self.outage()
            self.drain()
        self.result.events["stop"] = int(self.board.exit["time_ns"])
        self.finish_journal()
        shadow = shadow_at(initial_volume(self.cfg.seed, self.blocks * self.block), self.paths["log"],
                           self.result.bookmark_ns, self.block)
        return self.restore_and_verify(shadow, "the storage model's record")

    def restore_and_verify(self, shadow: np.ndarray, source: str) -> DemoResult:
        """Restore to the bookmark, compare the volume with `shadow` (what `source` says it held
        then), draw the pictures and write the summary."""
        self.result.differing_before_restore = self.differing(shadow)
        self.restore()
        self.step("verify", f"comparing the volume with {source} at the bookmark")
        self.result.mismatched_blocks = self.differing(shadow)
        self.draw()
        self.write_summary()
        return self.result

    def write_summary(self) -> None:
        self.paths["summary"].write_text(json.dumps(asdict(self.result), indent=2))

    def prepare(self) -> None:
        """A fresh output folder: the initial volume and a journal with its base copy."""
        out = self.cfg.out
        out.mkdir(parents=True, exist_ok=True)
        for name in ("volume", "log", "timeline", "dpll", "summary", "undo"):
            self.paths[name].unlink(missing_ok=True)
        if self.paths["journal"].exists():
            shutil.rmtree(self.paths["journal"])
        self.say(f"writing a {self.cfg.volume_mb} MiB volume of seeded random blocks: {self.paths['volume']}")
        initial_volume(self.cfg.seed, self.blocks * self.block).tofile(self.paths["volume"])
        origin = time.time_ns()
        self.origin = origin - origin % self.board_config.unit_ns
        self.result.time_origin_ns = self.origin
        self.journal = LocalJournal.create(self.paths["journal"], block_bytes=self.block,
                                           ports=self.board_config.ports, mode=self.cfg.mode,
                                           window_ns=round(self.cfg.window_ms * 1e6))
        with FileStorage(self.paths["volume"], self.block) as vol:
            take_base_copy(self.journal, vol, self.origin)

    @contextlib.contextmanager
    def start_board(self, binary: Path):
        from sim.vboard import VirtualBoard

        from .link_cli import Progress

        self.board = VirtualBoard(self.paths["volume"], config=self.board_config, binary=binary,
                                  blocks=self.blocks, log=self.paths["log"], rate=self.cfg.rate,
                                  seed=self.cfg.seed, baud=self.board_config.clock_hz * 10,
                                  time_origin=self.origin, report_ms=200, **self.link_options())
        with self.board:
            self.say(f"virtual board on {self.board.tty or self.board.host_mem}: {self.board_config.ports} "
                     f"ports, {self.blocks} blocks of {self.block} bytes")
            if self.cfg.link == "dma":
                # A small host ring: a silenced doorbell fills it (and the port) within the outage.
                self.device = DmaDevice.open(self.board.host_mem, timeout=0.2, flush_timeout=0.3,
                                             ring_log_size=DEMO_RING_LOG_SIZE)
            else:
                self.device = Device.open(self.board.tty, timeout=0.2, flush_timeout=0.3, tries=3)
            try:
                self.collector = Collector(self.journal, self.device, deadline_s=self.cfg.deadline_s)
                self.progress = Progress(self.device, self.journal, sample_s=self.cfg.sample_s,
                                         on_sample=self._sample)
                yield
            finally:
                self.device.close()

    def link_options(self) -> dict:
        """The board's options for the link: the DMA link's host-memory file beside the journal."""
        return {"host_mem": self.cfg.out / "host-mem.bin"} if self.cfg.link == "dma" else {}

    def steady(self) -> None:
        self.step("steady", f"collecting: {self.board_config.ports} servers writing, "
                            f"{self.cfg.rate:g} writes per simulated ms each")
        self.collect_for(self.cfg.steady_s)

    def take_bookmark(self) -> None:
        """Pause the servers, bookmark the quiet instant the board reports, go on."""
        self.step("bookmark", "pausing the servers for an application-consistent bookmark")
        self.board.command("pause")
        quiet = self.collect_until_event("quiet")
        at = int(quiet["time_ns"])
        self.journal.update_state(lambda state: state.bookmarks.__setitem__(BOOKMARK, at))
        self.result.bookmark_ns = self.result.events["bookmark"] = at
        self.board.command("resume")
        self.collect_until_event("resume")

    def attack(self) -> None:
        count = round(self.cfg.damage_mb * 2**20) // self.block
        first = self.blocks // 4
        self.step("attack", f"server {RANSOM_PORT} overwrites {count} blocks from block {first} with garbage")
        self.board.command(f"ransom {RANSOM_PORT} {first} {count}")
        self.result.events["attack"] = int(self.collect_until_event("ransom")["time_ns"])
        self.result.events["attack_done"] = int(self.collect_until_event("ransom_done")["time_ns"])
        self.result.damaged_blocks = count

    def outage(self) -> None:
        """Silence a port's link: invalid after the deadline, horizon held; then reinstate it."""
        self.step("outage", f"port {SILENT_PORT}'s link goes quiet for {self.cfg.outage_s:g} s")
        self.board.command(f"silence {SILENT_PORT}")
        self.result.events["silence"] = int(self.collect_until_event("silence")["time_ns"])
        self.collect_for(self.cfg.outage_s)
        give_up = time.monotonic() + 60         # a loaded machine may take a few rounds longer
        while (since := int(self.journal.invalid_since()[SILENT_PORT])) == NEVER:
            if time.monotonic() > give_up:
                raise RuntimeError(f"port {SILENT_PORT} stayed valid through its outage")
            self.poll()
        self.result.events["invalid"] = since
        others = self.result.horizon_during_outage = self.journal.horizon()
        self.result.refused_past_invalid = self.refusal((since + others) // 2)
        self.result.refused_at_invalid = self.refusal(since)
        self.board.command(f"speak {SILENT_PORT}")
        self.result.events["speak"] = int(self.collect_until_event("speak")["time_ns"])
        for _ in range(50):
            try:
                self.result.outage = list(self.collector.reinstate(SILENT_PORT))
                break
            except LinkFault:
                self.collect_for(0.2)
        else:
            raise RuntimeError(f"port {SILENT_PORT} did not answer after its link came back")
        self.step("outage", f"port {SILENT_PORT} answers again, backlog stored: reinstated")
        self.collect_for(2)

    def drain(self) -> None:
        """Pause the servers and empty every ring into the journal, then stop the board."""
        self.step("drain", "pausing the servers and draining every ring")
        self.board.command("pause")
        self.result.events["drain"] = int(self.collect_until_event("quiet")["time_ns"])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            self.poll()
            fills = [self.device.read("ring_fill", p) for p in range(self.board_config.ports)]
            if not any(fills):
                break
        else:
            raise RuntimeError(f"the rings did not drain: fill {fills}")
        self.poll()

    def finish_journal(self) -> None:
        j = self.journal
        self.result.entries = [int((j.index["port"] == p).sum()) for p in range(j.state.ports)]
        self.result.journal_bytes = sum(p.stat().st_size for p in j.segment_paths())
        rows = j.merge()
        self.result.merged_entries = len(j.merged)
        self.result.merge_windows = len(np.unique(j.merged["window_end"]))
        since = j.invalid_since()
        self.result.port_validity = ["valid" if s == NEVER else "invalid" for s in since]
        self.say(f"merged {len(rows)} entries into {self.result.merge_windows} windows")

    def restore(self) -> None:
        """Bring the volume back to the bookmark, in place (undo file kept)."""
        self.step("restore", f"restoring the volume to bookmark {BOOKMARK!r}")
        t0 = time.perf_counter()
        view = open_view(self.journal, self.result.bookmark_ns, storage=self.paths["volume"])
        try:
            summary = commit(view, self.paths["volume"], self.paths["undo"])
        finally:
            view.backing.close()
        self.result.restore_s = time.perf_counter() - t0
        self.result.blocks_changed_by_restore = summary.bytes_written // self.block
        self.say(f"restored: {summary}")

    def refusal(self, at_ns: int) -> str:
        """Why a restore to `at_ns` is refused now ("" if it is not)."""
        try:
            open_view(self.journal, at_ns, storage=self.paths["volume"]).backing.close()
        except ViewRefused as exc:
            return str(exc)
        return ""

    def differing(self, shadow: np.ndarray) -> int:
        """Blocks of the volume file unlike `shadow`'s (all of them if the sizes differ)."""
        volume = np.fromfile(self.paths["volume"], dtype=np.uint8)
        if volume.size != shadow.size:
            return self.blocks
        return int((volume.reshape(-1, self.block) != shadow.reshape(-1, self.block)).any(axis=1).sum())

    def draw(self) -> None:
        from . import demo_plots

        demo_plots.timeline(self.paths["timeline"], self.journal.index, self.flushes, self.result,
                            ports=self.journal.state.ports, silent_port=SILENT_PORT, ransom_port=RANSOM_PORT)
        if self.board_config is not None:       # a real board's oscillators are not known
            demo_plots.dpll(self.paths["dpll"], self.samples, self.board_config, self.result.time_origin_ns)

    # --- the collection loop -----------------------------------------------------------------
    def step(self, name: str, text: str) -> None:
        self.progress.headline = f"[bold]{name}[/]: {text}" if self.progress else text
        self.say(f"{name}: {text}")

    def poll(self) -> None:
        polls = self.collector.poll()
        for p in polls:
            if p.entries and not p.error:
                self.flushes.append((int(self.journal.flushed_through[p.port]), p.port))
        self.progress.update(polls)
        if self.live is not None:
            self.live.update(self.progress.render())
        if self.board is not None and not self.board.running():
            raise RuntimeError(f"the virtual board stopped: {self.board.status}")
        if not any(p.entries for p in polls):
            time.sleep(0.02)

    def collect_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.poll()

    def collect_until_event(self, kind: str, stall_s: float = 60) -> dict[str, str]:
        """Collect until the board reports `kind`; give up only when `stall_s` pass with neither
        the event nor a single new entry stored (a loaded machine is slow, not stuck)."""
        stored, last_progress = len(self.journal.index), time.monotonic()
        while True:
            try:
                return self.board.wait_event(kind, timeout=0)
            except TimeoutError:
                if len(self.journal.index) != stored:
                    stored, last_progress = len(self.journal.index), time.monotonic()
                elif time.monotonic() - last_progress > stall_s:
                    raise TimeoutError(f"the board did not report {kind!r}, and nothing was collected, "
                                       f"for {stall_s:g} s") from None
            self.poll()

    def _sample(self, _wall: float, port: int, regs: dict[str, int]) -> None:
        now = regs["dpll_time_hi"] << 32 | regs["dpll_time_lo"]
        self.samples.append((now, port, regs))
