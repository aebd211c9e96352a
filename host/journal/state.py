"""The primary journal's small mutable state, kept beside the append-only files.

Geometry of the protected volume, the base copy, port validity and bookmarks live in one JSON
document that is replaced atomically (write a temporary file, fsync, rename, fsync the
folder), so a crash leaves either the old or the new state, never a mix.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from firmware.abi.entry import Mode

from ..durable import atomic_write

STATE_FILE = "journal.json"
FORMAT = 1


@dataclass
class BaseCopy:
    """A full copy of the volume as it was at device time `time_ns` (see host.storage)."""

    path: str
    time_ns: int
    blocks: int
    crc32c: int | None = None      # of the whole image, checked by verify


@dataclass
class PortState:
    valid_from_ns: int = 0                # device time from which this port's entries count (resync)
    invalid_since_ns: int | None = None   # device time from which this port's entries are ignored
    reason: str = ""                      # why it was marked invalid
    compacted_seq: int = -1               # last sequence of this port in segments removed by compaction
    compacted_flushed_ns: int = 0         # and the flush time they recorded
    outages: list[list[int]] = field(default_factory=list)   # [since, until] ns the port rode out


@dataclass
class JournalState:
    block_bytes: int
    ports: int
    mode: int
    window_ns: int
    base: BaseCopy | None = None
    port_state: list[PortState] = field(default_factory=list)
    bookmarks: dict[str, int] = field(default_factory=dict)
    history_from_ns: int = 0              # compaction removed history before this device time
    cuts: list[dict] = field(default_factory=list)   # tails recovery cut (host.journal.store.Cut)
    format: int = FORMAT

    def __post_init__(self):
        Mode(self.mode)
        if self.block_bytes <= 0 or self.block_bytes % 8:
            raise ValueError(f"block size must be a positive multiple of 8 bytes, not {self.block_bytes}")
        if not 1 <= self.ports <= 64:
            raise ValueError(f"a journal covers 1 to 64 ports, not {self.ports}")
        if self.window_ns <= 0:
            raise ValueError(f"merge window must be positive, not {self.window_ns} ns")
        if not self.port_state:
            self.port_state = [PortState() for _ in range(self.ports)]

    @classmethod
    def load(cls, folder: Path) -> "JournalState":
        """Read the state; ValueError (naming the file) when it is not a readable state."""
        path = folder / STATE_FILE
        try:
            return cls.from_json(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path} is not a readable journal state: {exc}") from exc

    @classmethod
    def from_json(cls, text: bytes) -> "JournalState":
        """The state from its JSON document (ValueError when it is not one)."""
        try:
            raw = json.loads(text)
            if raw.get("format") != FORMAT:
                raise ValueError(f"unknown format {raw.get('format')!r}")
            base = BaseCopy(**raw.pop("base")) if raw.get("base") else None
            ports = [PortState(**p) for p in raw.pop("port_state")]
            raw.pop("base", None)
            return cls(**raw, base=base, port_state=ports)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(str(exc)) from exc

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode()

    def save(self, folder: Path) -> None:
        atomic_write(folder / STATE_FILE, self.to_json())
