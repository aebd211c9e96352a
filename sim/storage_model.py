"""The storage network's side of a run: primary storage and the ports' journals, modelled.

`StorageModel` is the primary storage with its own record of every write it applied, so a
test or the demo can ask what the volume held at any instant, independently of the journal.
`journal_requests` plays the ports' three-phase write (seed figures 8 and 11) against it and
returns the entries each port would flush.
"""

from dataclasses import dataclass

import numpy as np

from firmware.abi.entry import Kind, Mode, Status, pack


class StorageModel:
    """A volume of `blocks` blocks and the ordered list of writes applied to it."""

    def __init__(self, blocks: int, block_bytes: int, initial: bytes | None = None):
        self.block_bytes = block_bytes
        self.initial = bytes(initial) if initial is not None else bytes(blocks * block_bytes)
        if len(self.initial) != blocks * block_bytes:
            raise ValueError("initial image does not match the volume's size")
        self.image = bytearray(self.initial)
        self.history: list[tuple[int, int, bytes]] = []   # (timestamp, lba, data) in applied order

    def read(self, lba: int) -> bytes:
        return bytes(self.image[lba * self.block_bytes:(lba + 1) * self.block_bytes])

    def write(self, timestamp: int, lba: int, data: bytes) -> None:
        self.image[lba * self.block_bytes:(lba + 1) * self.block_bytes] = data
        self.history.append((timestamp, lba, data))

    def image_at(self, at_ns: int) -> bytes:
        """The volume with every write stamped before `at_ns` applied, from the model's record."""
        image = bytearray(self.initial)
        for timestamp, lba, data in self.history:
            if timestamp < at_ns:
                image[lba * self.block_bytes:(lba + 1) * self.block_bytes] = data
        return bytes(image)


@dataclass(frozen=True)
class Request:
    """One server write as a port receives it, with the outcome storage will give it."""

    timestamp: int
    port: int
    lba: int
    data: bytes
    status: Status = Status.OK


def journal_requests(requests: list[Request], model: StorageModel, mode: Mode,
                     ports: int) -> list[list[bytes]]:
    """Apply `requests` (in timestamp order) to `model` as the ports would; return each port's entries.

    Redo journals the new data; copy-on-write reads the pre-image first and journals it. A
    PRIMARY_FAILED write leaves storage as it was; a JOURNAL_FAILED one (copy-on-write: the
    pre-image read failed) is not written at all.
    """
    entries: list[list[bytes]] = [[] for _ in range(ports)]
    for req in sorted(requests, key=lambda r: (r.timestamp, r.port)):
        old = model.read(req.lba)
        if req.status == Status.OK:
            model.write(req.timestamp, req.lba, req.data)
        journaled = req.data if mode == Mode.REDO else old
        entries[req.port].append(pack(seq=len(entries[req.port]), port=req.port, mode=mode,
                                      status=req.status, kind=Kind.WRITE, timestamp=req.timestamp,
                                      lba=req.lba, data=journaled))
    return entries


def random_requests(rng: np.random.Generator, *, count: int, ports: int, blocks: int, block_bytes: int,
                    span_ns: int, failure_rate: float = 0.0) -> list[Request]:
    """Random writes: distinct timestamps per port, random blocks and data, some failing."""
    out = []
    for _ in range(count):
        status = Status.OK
        if rng.random() < failure_rate:
            status = Status(int(rng.choice([Status.PRIMARY_FAILED, Status.JOURNAL_FAILED])))
        out.append(Request(int(rng.integers(0, span_ns)), int(rng.integers(0, ports)),
                           int(rng.integers(0, blocks)), rng.bytes(block_bytes), status))
    return out
