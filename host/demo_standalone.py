"""`portjournal demo --port PATH` / `--standalone`: the demo against a standalone board.

A dev board (or the virtual board's standalone variant, the same image) has no servers and no
storage network: its volume is a few hundred blocks in on-chip RAM, and the host is the write
traffic (`host.standalone.HostTraffic`, INJECT_WRITE). The steps are `host.demo.Demo`'s, done
by the host instead of the virtual board's harness:

1. *volume*: the host fills the board's volume with seeded random blocks (collected like any
   traffic), then takes the base copy by READ_BLOCK;
2. *steady*: seeded random writes through every port, collected between them;
3. *bookmark*: between two writes (every write so far confirmed by WRITTEN, none under way) the
   board's time is read: the bookmark;
4. *attack*: writes of garbage through port `RANSOM_PORT` over a quarter of the volume;
5. *outage*: the host stops collecting port `SILENT_PORT` (`HostSilence`) and keeps writing to it
   until its ring is full; past the deadline it is invalid; then collected again and reinstated;
6. *drain*: no more writes, every ring emptied into the journal;
7. the board's volume is read back (READ_BLOCK) into `volume.img` and must equal the host's
   record of confirmed writes; then merge and restore to the bookmark in place, as `Demo`;
8. *verify*: `volume.img` against the record's volume at the bookmark (the host's account of
   what it wrote, not the journal).

Times are the board's own: a dev board's time base counts from power-up. Like `host.demo`, it
reaches into `sim.vboard` only to start the virtual board (`--standalone`), as its own process.
"""

import contextlib
import shutil
import time
from collections.abc import Callable

from .demo import BOOKMARK, RANSOM_PORT, SILENT_PORT, Demo, DemoConfig
from .journal.base import install_base
from .journal.collector import Collector, LinkFault
from .journal.store import NEVER, LocalJournal
from .link.device import Device
from .standalone import HostSilence, HostTraffic, device_time, wait_locked

WRITES_PER_ROUND = 8          # injected between two collection rounds


class StandaloneDemo(Demo):
    """One run against the board on `port` (a serial port or a pty), or, with `port` None, the
    virtual board's standalone variant started for it."""

    def __init__(self, config: DemoConfig, *, port: str | None = None, baud: int = 115200,
                 say: Callable[[str], None] = print, live=None):
        super().__init__(config, say, live)
        self.port, self.baud = port, baud
        if port is None:
            from boards.sim import SIM_STANDALONE

            self.board_config = SIM_STANDALONE
        else:
            self.board_config = None        # a real board: its clock and oscillators are its own
            self.paths.pop("dpll")
        self.paths.pop("log")
        self.paths["record"] = config.out / "writes.bin"
        self.result.paths = {k: str(v) for k, v in self.paths.items()}
        self.silence = self.traffic = None

    # --- steps -------------------------------------------------------------------------------
    def run(self):
        self.clean_out()
        with self.open_board():
            self.fill_volume()
            self.steady()
            self.take_bookmark()
            self.attack()
            self.outage()
            self.drain()
            self.result.events["stop"] = device_time(self.device)
            self.step("volume", "reading the board's volume back (READ_BLOCK)")
            volume = self.traffic.read_volume()
        volume.tofile(self.paths["volume"])
        self.traffic.save_record(self.paths["record"])
        self.result.record_mismatched_blocks = self.differing(
            self.traffic.volume_at(self.result.events["stop"] + 1))
        self.finish_journal()
        return self.restore_and_verify(self.traffic.volume_at(self.result.bookmark_ns),
                                       "the host's record of its writes")

    def clean_out(self) -> None:
        out = self.cfg.out
        out.mkdir(parents=True, exist_ok=True)
        for name in ("volume", "record", "timeline", "dpll", "summary", "undo"):
            if name in self.paths:
                self.paths[name].unlink(missing_ok=True)
        if self.paths["journal"].exists():
            shutil.rmtree(self.paths["journal"])

    @contextlib.contextmanager
    def open_board(self):
        """The board (started here if it is the virtual one), the driver, journal and collector."""
        with contextlib.ExitStack() as stack:
            path = self.port
            if path is None:
                from sim.vboard import VirtualBoard, build

                self.say("building the standalone virtual board (cached after the first build)...")
                self.board = stack.enter_context(VirtualBoard(
                    config=self.board_config, binary=build(self.board_config),
                    baud=self.board_config.clock_hz * 10, report_ms=200))
                path = self.board.tty
            self.device = stack.enter_context(Device.open(path, baud=self.baud, timeout=0.3,
                                                          flush_timeout=0.5, tries=4))
            ident = self.device.identity
            blocks = self.device.store_blocks()
            self.block, self.blocks = ident.block_bytes, blocks
            self.result.volume_mb = blocks * ident.block_bytes / 2**20
            self.say(f"standalone board on {path}: {ident.ports} ports, {blocks} blocks of "
                     f"{ident.block_bytes} bytes in on-chip RAM, rings of {ident.ring_depth}")
            wait_locked(self.device)
            for p in range(ident.ports):
                self.device.write("mode", self.cfg.mode, p)
            self.origin = device_time(self.device)
            self.result.time_origin_ns = self.origin
            self.journal = self.new_journal()
            self.silence = HostSilence(self.device)
            self.collector = Collector(self.journal, self.silence, deadline_s=self.cfg.deadline_s)
            self.traffic = HostTraffic(self.device, seed=self.cfg.seed, make_room=self._make_room)
            from .link_cli import Progress

            self.progress = Progress(self.device, self.journal, sample_s=self.cfg.sample_s,
                                     on_sample=self._sample)
            yield

    def new_journal(self) -> LocalJournal:
        """A journal for the board as it is (`start_at_ring_tails`: a board used before numbers its
        entries on from the last run)."""
        from .link_cli import start_at_ring_tails

        ident, folder = self.device.identity, self.paths["journal"]
        journal = LocalJournal.create(folder, block_bytes=ident.block_bytes, ports=ident.ports,
                                      mode=self.cfg.mode, window_ns=round(self.cfg.window_ms * 1e6))
        return start_at_ring_tails(journal, self.device, lambda: LocalJournal.open(folder))

    def fill_volume(self) -> None:
        """Seeded random blocks everywhere, then the base copy (READ_BLOCK) at the board's time."""
        self.step("volume", f"writing seeded random blocks over the board's {self.blocks} blocks")
        for lba in range(self.blocks):
            self.traffic.write(lba % self.device.identity.ports, lba, self.traffic.rng.bytes(self.block))
        self.step("volume", "taking the base copy (READ_BLOCK of every block)")
        at = device_time(self.device)
        base = self.traffic.read_volume()           # also the record's starting volume
        base.tofile(self.cfg.out / "base.tmp")
        install_base(self.journal, self.cfg.out / "base.tmp", at, self.blocks)
        base.tofile(self.paths["volume"])           # the host's copy of the volume, read again at the end
        self.traffic.record.clear()

    def steady(self) -> None:
        self.step("steady", f"injecting random writes through {self.device.identity.ports} ports, "
                            "collecting between them")
        self.write_for(self.cfg.steady_s)

    def take_bookmark(self) -> None:
        """Between two writes, every one so far confirmed: the board's time is the bookmark."""
        self.step("bookmark", "no write under way: bookmarking the board's time now")
        at = device_time(self.device)
        self.journal.update_state(lambda state: state.bookmarks.__setitem__(BOOKMARK, at))
        self.result.bookmark_ns = self.result.events["bookmark"] = at

    def attack(self) -> None:
        count = self.blocks // 4
        first = self.blocks // 4
        self.step("attack", f"port {RANSOM_PORT} overwrites {count} blocks from block {first} with garbage")
        start = len(self.traffic.record)
        self.traffic.garbage(RANSOM_PORT, range(first, first + count))
        garbage = self.traffic.record[start:]
        self.result.events.update(attack=garbage[0].time_ns, attack_done=garbage[-1].time_ns)
        self.result.damaged_blocks = count

    def outage(self) -> None:
        """Stop collecting a port (its ring fills) until it is invalid; then reinstate it."""
        self.step("outage", f"the host stops collecting port {SILENT_PORT} for {self.cfg.outage_s:g} s")
        self.silence.silenced.add(SILENT_PORT)
        self.result.events["silence"] = device_time(self.device)
        self.write_for(self.cfg.outage_s)
        give_up = time.monotonic() + 60
        while (since := int(self.journal.invalid_since()[SILENT_PORT])) == NEVER:
            if time.monotonic() > give_up:
                raise RuntimeError(f"port {SILENT_PORT} stayed valid through its outage")
            self.write_round()
        self.result.events["invalid"] = since
        others = self.result.horizon_during_outage = self.journal.horizon()
        self.result.refused_past_invalid = self.refusal((since + others) // 2)
        self.result.refused_at_invalid = self.refusal(since)
        self.silence.silenced.clear()
        self.result.events["speak"] = device_time(self.device)
        for _ in range(50):
            try:
                self.result.outage = list(self.collector.reinstate(SILENT_PORT))
                break
            except LinkFault:
                self.write_round()
        else:
            raise RuntimeError(f"port {SILENT_PORT} did not answer after its link came back")
        self.step("outage", f"port {SILENT_PORT} collected again, backlog stored: reinstated")
        self.write_for(min(2, self.cfg.steady_s))

    def drain(self) -> None:
        """No more writes; every ring emptied into the journal."""
        self.step("drain", "no more writes: draining every ring")
        self.result.events["drain"] = device_time(self.device)
        ports = range(self.device.identity.ports)
        deadline = time.monotonic() + 60
        while any(self.device.read("ring_fill", p) for p in ports):
            if time.monotonic() > deadline:
                raise RuntimeError("the rings did not drain")
            self.poll()
        self.poll()

    # --- traffic between collection rounds ---------------------------------------------------
    def _make_room(self, port: int) -> None:
        if port not in self.silence.silenced:
            self.poll()

    def write_round(self) -> None:
        self.traffic.random_writes(WRITES_PER_ROUND, range(self.device.identity.ports))
        self.poll()

    def write_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.write_round()

