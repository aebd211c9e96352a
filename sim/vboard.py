"""The virtual board from Python: build the harness once, run it, talk to it over its pty.

```python
with VirtualBoard(volume="vol.img", blocks=4096, rate=20, seed=1, corrupt_rx=1e-4,
                  corrupt_tx=1e-4, log="storage.log") as board:
    link = serial.Serial(board.tty, timeout=1)      # exactly as to a real board
    ...
    board.command("pause")                          # servers quiesce ...
    quiet = board.wait_event("quiet", timeout=30)   # ... {"kind": "quiet", "time_ns": "...", ...}
    board.command("resume")
records = read_storage_log("storage.log")           # what primary storage applied
```

`VirtualBoard` builds `boards.sim.SimBoard` with the C++ harness `sim/vboard/board.cpp`
(`sim.image.build_harness`, cached under `build/bench/vboard-<hash>/`), starts it as a
subprocess, reads the pseudo-terminal path it prints and keeps its latest `status` line
(simulated cycles, wall time, link bytes, writes...). `stop()` sends SIGINT and waits (SIGKILL
after a timeout): the harness then syncs the volume and flushes the log, so the two agree — every
write in the log with ok=1 is in the volume, and nothing else changed it.

While it runs, `command(line)` writes a command to the harness's stdin (`pause`, `resume`,
`ransom P LBA N`, `silence P`, `speak P`: the harness's header comment says what each does) and
the harness answers with `event` lines, kept in `events` as dicts of their key=value fields (as
strings, like `status`) plus `kind` ("pause", "quiet", "resume", "ransom", "ransom_done",
"silence", "speak", "error" with `what`). `wait_event(kind)` returns the next one of a kind not
yet returned; an `error` event not yet returned is raised as RuntimeError instead, since the
harness answers commands in order and an error is the answer to one sent earlier.

The storage log's format is in the harness's header comment; `read_storage_log` parses it and
`apply_log` replays its writes onto a volume image.
"""

import contextlib
import shlex
import signal
import struct
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from boards.sim import SIM_BOARD, SimBoard, SimBoardConfig
from firmware.abi import regmap
from hdl.link import READ_LATENCY
from sim.image import build_harness

HARNESS_SOURCES = [Path(__file__).resolve().parent / "vboard" / "board.cpp"]
LOG_MAGIC = b"PJVBLOG1"
LOG_HEADER = struct.Struct("<8sIIIIQ")
RECORD_HEADER = struct.Struct("<QQQIBBBx")
KIND_WRITE, KIND_READ = 1, 2
DOORBELL_OFFSET = regmap.register("dma_doorbell", 0).offset     # the harness drops it when silenced


def build(config: SimBoardConfig = SIM_BOARD) -> Path:
    """The harness binary for `config`'s gateware (built once per design, then cached)."""
    return build_harness("vboard", lambda: SimBoard(**config.image_args()), HARNESS_SOURCES,
                         build_args=("-MAKEFLAGS", "OPT_FAST=-O3", "-CFLAGS", "-O2",
                                     "-CFLAGS", "-march=native", "-CFLAGS", f"-DBOARD_PORTS={config.ports}",
                                     "-CFLAGS", f"-DBOARD_BLOCK_BYTES={config.block_bytes}",
                                     "-CFLAGS", f"-DBOARD_DMA={int(config.link == 'dma')}",
                                     "-CFLAGS", f"-DBOARD_STANDALONE={int(config.standalone)}",
                                     "-CFLAGS", f"-DBOARD_PORT_STRIDE={regmap.PORT_STRIDE}",
                                     "-CFLAGS", f"-DBOARD_DOORBELL_OFFSET={DOORBELL_OFFSET}",
                                     "-CFLAGS", f"-DBOARD_READ_LATENCY={READ_LATENCY}"))


def parse_fields(line: str) -> dict[str, str]:
    """key=value pairs of a harness `status`/`exit`/`board` line."""
    return dict(item.split("=", 1) for item in line.split()[1:] if "=" in item)


def parse_event(line: str) -> dict[str, str]:
    """An `event KIND key=value ...` line (values may be double-quoted) as {"kind": KIND, key: value}."""
    _, kind, *items = shlex.split(line)
    return {"kind": kind, **dict(item.split("=", 1) for item in items if "=" in item)}


@dataclass
class HarnessOptions:
    """The harness's run-time options (`sim/vboard/board.cpp`); None = the harness default."""

    volume: Path = Path("volume.img")
    blocks: int | None = None          # volume size in blocks (default: the file's, or 2048 for a new one)
    log: Path | None = None            # storage log
    baud: float | None = None          # default SIM_BOARD.baud
    rate: float | None = None          # writes per ms of simulated time per port; < 0 back to back
    writes: int | None = None          # writes per port, then the server stops (0 = no limit)
    lba_min: int | None = None
    lba_max: int | None = None
    seed: int | None = None
    write_latency: int | None = None   # cycles
    read_latency: int | None = None
    write_fail: float | None = None    # probabilities
    read_fail: float | None = None
    corrupt_rx: float | None = None    # per byte, host -> device
    corrupt_tx: float | None = None    # per byte, device -> host
    drop_rx: float | None = None
    drop_tx: float | None = None
    time_origin: int | None = None     # ns since the Unix epoch at the first clock edge, a whole number
    #                                    of SIM_BOARD.unit_ns (default: now, rounded down to one)
    wait_lock: int | None = None       # 1 (default): servers start once their port's DPLL locked
    poll_cycles: int | None = None
    report_ms: int | None = None
    max_cycles: int | None = None
    host_mem: Path | None = None       # DMA link: the host-memory file (default host-mem.bin)
    host_mem_bytes: int | None = None

    def argv(self, config: SimBoardConfig) -> list[str]:
        args = ["--ports", str(config.ports), "--clock-hz", str(config.clock_hz),
                "--unit-ns", str(config.unit_ns),
                "--baud", str(self.baud if self.baud is not None else config.baud)]
        for name, value in vars(self).items():
            if value is None or name == "baud" or (config.standalone and name == "volume"):
                continue
            args += ["--" + name.replace("_", "-"), str(value)]
        return args


class VirtualBoard:
    """A running virtual board (a context manager): `tty` is the pseudo-terminal to open, or with
    a `config` of `link="dma"`, `host_mem` the host-memory file (`host.link.dma.DmaDevice.open`).

    `options` are `HarnessOptions` fields (rate, seed, writes, log, corrupt_rx, ...)."""

    def __init__(self, volume: Path | str = "volume.img", *, config: SimBoardConfig = SIM_BOARD,
                 binary: Path | None = None, **options):
        self.config = config
        self.opts = HarnessOptions(volume=Path(volume), **options)
        self.binary = binary
        self.proc: subprocess.Popen | None = None
        self.tty: str | None = None         # the serial link's pty
        self.host_mem: str | None = None    # the DMA link's host-memory file (host/link/dma.py)
        self.board: dict[str, str] = {}
        self.status: dict[str, str] = {}    # the latest status (or exit) line's fields
        self.exit: dict[str, str] | None = None
        self.events: list[dict[str, str]] = []
        self._returned: set[int] = set()    # indices into events that wait_event returned or raised
        self.lines: list[str] = []
        self._eof = False
        self._changed = threading.Condition()

    # --- life cycle ----------------------------------------------------------------------------
    def start(self, timeout: float = 600) -> "VirtualBoard":
        binary = self.binary or build(self.config)
        # Its own session: a terminal's Ctrl-C reaches the launcher, which stops the board in
        # order (the board dies with the launcher anyway: PR_SET_PDEATHSIG).
        self.proc = subprocess.Popen([str(binary), *self.opts.argv(self.config)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                                     start_new_session=True)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        with self._changed:
            if not self._changed.wait_for(lambda: self.tty or self.host_mem or self._eof, timeout):
                self.stop()
                raise RuntimeError("the virtual board did not print its pty or host memory")
        if self.tty is None and self.host_mem is None:
            self.proc.wait()
            raise RuntimeError(f"the virtual board failed: {self.proc.stderr.read().strip()}")
        return self

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            line = line.strip()
            with self._changed:
                self.lines.append(line)
                if line.startswith("pty "):
                    self.tty = line.split(None, 1)[1]
                elif line.startswith("dma "):
                    self.host_mem = line.split(None, 1)[1]
                elif line.startswith("board "):
                    self.board = parse_fields(line)
                elif line.startswith("status "):
                    self.status = parse_fields(line)
                elif line.startswith("exit "):
                    self.status = self.exit = parse_fields(line)
                elif line.startswith("event "):
                    self.events.append(parse_event(line))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def wait_status(self, predicate, timeout: float = 60) -> dict[str, str]:
        """Wait for a status line whose fields satisfy `predicate` (a status comes every report_ms)."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._eof or (self.status and predicate(self.status)),
                                          timeout) or not (self.status and predicate(self.status)):
                raise TimeoutError(f"no matching status in {timeout} s (last: {self.status})")
            return dict(self.status)

    def command(self, line: str) -> None:
        """Send one command line to the running harness (answered by `event` lines: `wait_event`)."""
        if "\n" in line:
            raise ValueError(f"one command per call, not {line!r}")
        if not self.running():
            raise RuntimeError("the virtual board is not running")
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait_event(self, kind: str, timeout: float = 60) -> dict[str, str]:
        """The next event of `kind` not yet returned (RuntimeError for an `error` event not yet
        returned, or if the board exits first; TimeoutError after `timeout` seconds)."""
        def pending() -> int | None:
            return next((i for i, e in enumerate(self.events)
                         if i not in self._returned and e["kind"] in (kind, "error")), None)

        with self._changed:
            if not self._changed.wait_for(lambda: pending() is not None or self._eof, timeout):
                raise TimeoutError(f"no {kind} event in {timeout} s (last status: {self.status})")
            if (i := pending()) is None:
                raise RuntimeError(f"the virtual board exited before a {kind} event ({self.exit})")
            self._returned.add(i)
            event = dict(self.events[i])
        if event["kind"] != kind:
            raise RuntimeError(f"the virtual board refused a command: {event.get('what')}")
        return event

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10) -> dict[str, str] | None:
        """SIGINT, wait for the clean exit (volume synced, log flushed), SIGKILL after `timeout`."""
        if self.proc is None:
            return self.exit
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with self._changed:        # let the reader thread take the exit line
            self._changed.wait_for(lambda: self._eof, 5)
        with contextlib.suppress(OSError):     # a command left in a broken pipe
            self.proc.stdin.close()
        return self.exit

    def __enter__(self) -> "VirtualBoard":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- results -------------------------------------------------------------------------------
    def storage_log(self) -> list["LogRecord"]:
        if self.opts.log is None:
            raise ValueError("the board was started without a storage log (log=...)")
        return list(read_storage_log(self.opts.log))


@dataclass(frozen=True)
class LogRecord:
    time_ns: int
    cycle: int
    lba: int
    index: int
    port: int
    kind: int          # KIND_WRITE or KIND_READ
    ok: bool
    data: bytes


def read_storage_log(path: Path | str) -> Iterator[LogRecord]:
    """The records of a harness storage log, in the order storage answered them."""
    with open(path, "rb") as f:
        head = f.read(LOG_HEADER.size)
        magic, version, block_bytes, _, record_bytes, _ = LOG_HEADER.unpack(head)
        if magic != LOG_MAGIC or version != 1 or record_bytes != RECORD_HEADER.size + block_bytes:
            raise ValueError(f"{path} is not a version-1 virtual-board storage log")
        while len(raw := f.read(record_bytes)) == record_bytes:
            time_ns, cycle, lba, index, port, kind, ok = RECORD_HEADER.unpack_from(raw)
            yield LogRecord(time_ns, cycle, lba, index, port, kind, bool(ok), raw[RECORD_HEADER.size:])


def log_origin(path: Path | str) -> int:
    """The run's time origin (ns at the first clock edge: the time base's) from a storage log's header."""
    with open(path, "rb") as f:
        return LOG_HEADER.unpack(f.read(LOG_HEADER.size))[5]


def apply_log(image: bytearray, records, block_bytes: int) -> bytearray:
    """`image` with every successful write of `records` applied, in order."""
    for r in records:
        if r.kind == KIND_WRITE and r.ok:
            image[r.lba * block_bytes:(r.lba + 1) * block_bytes] = r.data
    return image


def server_block(seed: int, port: int, n: int, block_bytes: int = SIM_BOARD.block_bytes) -> bytes:
    """The data of server `port`'s write number `n` (as the harness generates it)."""
    mask = (1 << 64) - 1

    def splitmix(x):
        x = (x + 0x9E3779B97F4A7C15) & mask
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    key = splitmix((seed ^ (port << 56)) & mask)
    return b"".join(splitmix(key ^ ((n << 12) & mask) ^ w).to_bytes(8, "little")
                    for w in range(block_bytes // 8))
