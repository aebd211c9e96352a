"""Synthetic port output: the journal entries a set of ports would flush for a write workload.

Host-side tests and benchmarks use it where the virtual board would be too slow or beside the
point: it makes well-formed entries (firmware.abi.entry) with per-port consecutive sequence
numbers and non-decreasing timestamps, in bulk with numpy.
"""

from dataclasses import dataclass

import crc32c
import numpy as np

from firmware.abi.entry import HEADER_BYTES, Kind, Mode, Status, entry_dtype


@dataclass
class PortStream:
    """One port's entries, as a numpy record array of whole write entries."""

    port: int
    entries: np.ndarray

    def batches(self, size: int):
        """The stream cut into flush batches of `size` entries: (raw bytes, newest timestamp)."""
        for start in range(0, len(self.entries), size):
            chunk = self.entries[start:start + size]
            yield chunk.tobytes(), int(chunk["header"]["timestamp"][-1])


def seal(entries: np.ndarray) -> None:
    """Fill in each entry's CRC-32C (header and data) in place."""
    raw = entries.view(np.uint8).reshape(len(entries), -1)
    body = HEADER_BYTES + entries.dtype["data"].shape[0]
    crcs = [crc32c.crc32c(row[:body]) for row in raw]
    entries["crc"] = np.array(crcs, dtype=np.uint32)


def make_streams(*, ports: int, entries: int, block_bytes: int, blocks: int, span_ns: int,
                 mode: Mode = Mode.REDO, failure_rate: float = 0.0, seed: int = 0) -> list[PortStream]:
    """`entries` writes spread over `ports`, random blocks, times in [0, span_ns)."""
    rng = np.random.default_rng(seed)
    owner = rng.integers(0, ports, entries)
    streams = []
    for port in range(ports):
        n = int((owner == port).sum())
        e = np.zeros(n, entry_dtype(block_bytes))
        h = e["header"]
        h["seq"] = np.arange(n)
        h["port"], h["mode"], h["kind"] = port, mode, Kind.WRITE
        h["timestamp"] = np.sort(rng.integers(0, span_ns, n, dtype=np.uint64))
        h["lba"] = rng.integers(0, blocks, n)
        h["length"] = block_bytes
        h["status"] = np.where(rng.random(n) < failure_rate,
                               rng.choice([Status.PRIMARY_FAILED, Status.JOURNAL_FAILED], n), Status.OK)
        e["data"] = rng.integers(0, 256, (n, block_bytes), dtype=np.uint8)
        seal(e)
        streams.append(PortStream(port, e))
    return streams


def rounds(streams: list[PortStream], size: int, ports=None):
    """Lists of (port, raw, newest) flush batches of `ports` (all by default), one per port that
    still has entries, as a collector's rounds take them."""
    cursors = {s.port: s.batches(size) for s in streams if ports is None or s.port in ports}
    while cursors:
        batches = []
        for port, it in list(cursors.items()):
            try:
                raw, newest = next(it)
            except StopIteration:
                del cursors[port]
                continue
            batches.append((port, raw, newest))
        if batches:
            yield batches


def round_robin(streams: list[PortStream], size: int, ports=None):
    """(port, raw, newest) flush batches of `ports` (all by default), round-robin as a collector
    polls them."""
    for batches in rounds(streams, size, ports):
        yield from batches
