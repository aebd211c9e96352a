"""The host as a standalone board's servers: injected write traffic and the host's own record of it.

A standalone board (a dev board, or the virtual board's standalone variant) keeps a small volume
in on-chip RAM and has no servers: the host writes through its ports with INJECT_WRITE
(`host.link.device.Device.inject_write`) and reads the volume with READ_BLOCK. `HostTraffic`
does that and keeps the *storage record*, the counterpart of the virtual board's storage log:
every write the board confirmed (WRITTEN: the block is in its primary storage), with the
entry's timestamp. Writes go one at a time, each after the last one's WRITTEN, so their
timestamps are in the order of the record, across ports too; `volume_at(t)` is then the
volume at device time `t` by the host's own account (the first `read_volume` plus every write
stamped before `t`, as a point-in-time view counts them), independent of the journal.

A port's ring holds `ring_depth` entries: before a write to a port whose ring has no room,
`make_room(port)` is called (the caller collects, so the port's entries are acknowledged); a
port that still has none is skipped by `random_writes` (it is silent, say) and refused by
`write`.
"""

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from firmware.abi import regmap
from firmware.abi.entry import Status

from .journal.collector import LinkFault
from .link.device import Device, DeviceError


@dataclass(frozen=True)
class StoredWrite:
    """One injected write the board confirmed."""

    port: int
    lba: int
    time_ns: int          # the entry's timestamp
    seq: int              # the entry's seq on its port
    data: bytes


def wait_locked(device: Device, timeout: float = 30) -> None:
    """Wait until every port's DPLL is locked to the board's time base (stamps are steady then)."""
    deadline = time.monotonic() + timeout
    while not all(device.read("dpll_locked", p) for p in range(device.identity.ports)):
        if time.monotonic() > deadline:
            raise DeviceError(f"the board's DPLLs did not lock within {timeout:g} s: is its time base "
                              "running?")
        time.sleep(0.05)


def device_time(device: Device, port: int = 0) -> int:
    """The port's local time now, ns (read `_hi`, `_lo`, `_hi` again until `_hi` held still)."""
    hi_addr, lo_addr = regmap.address("dpll_time_hi", port), regmap.address("dpll_time_lo", port)
    while True:
        hi = device.read_registers(hi_addr)[0]
        lo = device.read_registers(lo_addr)[0]
        if device.read_registers(hi_addr)[0] == hi:
            return hi << 32 | lo


class HostTraffic:
    """Seeded random block writes injected into a standalone board, and the record of them."""

    def __init__(self, device: Device, *, seed: int, make_room: Callable[[int], None] = lambda port: None):
        self.device, self.make_room = device, make_room
        self.block = device.identity.block_bytes
        self.blocks = device.store_blocks()
        self.rng = np.random.default_rng([seed, 0x686F7374])       # "host"
        self.record: list[StoredWrite] = []
        self.base: np.ndarray | None = None
        self.failed = 0                 # writes the board answered with a status other than OK

    def read_volume(self) -> np.ndarray:
        """The board's whole volume now, block by block (READ_BLOCK); the first read is the base."""
        volume = np.frombuffer(b"".join(self.device.read_stored_block(lba) for lba in range(self.blocks)),
                               dtype=np.uint8)
        if self.base is None:
            self.base = volume.copy()
        return volume

    def has_room(self, port: int) -> bool:
        if self.device.store_room(port) <= 0:
            self.make_room(port)
        return self.device.store_room(port) > 0

    def write(self, port: int, lba: int, data: bytes) -> StoredWrite | None:
        """Inject one write (after making room in the port's ring); None if the board failed it."""
        if not self.has_room(port):
            raise DeviceError(f"port {port}'s ring is full and nothing was collected from it")
        written = self.device.inject_write(port, lba, data)
        if written.status != Status.OK:
            self.failed += 1
            return None
        stored = StoredWrite(port, lba, written.time, written.seq, bytes(data))
        self.record.append(stored)
        return stored

    def random_writes(self, count: int, ports: range | list[int], lbas: range | None = None) -> int:
        """`count` writes of random blocks to random blocks of `lbas` (default: all), through
        random ports of `ports` that have room; returns how many were written."""
        lbas = lbas or range(self.blocks)
        done = 0
        for _ in range(count):
            open_ports = [p for p in ports if self.has_room(p)]
            if not open_ports:
                break
            port = open_ports[int(self.rng.integers(len(open_ports)))]
            lba = lbas.start + int(self.rng.integers(len(lbas)))
            done += self.write(port, lba, self.rng.bytes(self.block)) is not None
        return done

    def garbage(self, port: int, lbas: range) -> None:
        """Overwrite every block of `lbas` with random bytes through `port` (the ransomware)."""
        for lba in lbas:
            self.write(port, lba, self.rng.bytes(self.block))

    def volume_at(self, at_ns: int) -> np.ndarray:
        """The volume at device time `at_ns` by the host's record: the base with every write
        stamped before it applied, in order."""
        if self.base is None:
            raise ValueError("no base: read_volume() first")
        volume = self.base.copy().reshape(-1, self.block)
        for w in self.record:
            if w.time_ns < at_ns:
                volume[w.lba] = np.frombuffer(w.data, dtype=np.uint8)
        return volume.reshape(-1)

    def save_record(self, path) -> None:
        """The record as a file: per write, u64 time, u64 lba, u32 seq, u8 port, 3 zero bytes, the block."""
        with open(path, "wb") as f:
            for w in self.record:
                f.write(struct.pack("<QQIB3x", w.time_ns, w.lba, w.seq, w.port) + w.data)


class HostSilence:
    """The Collector's `PortLink` with the host's side of chosen ports cut: for a port in
    `silenced`, flush, ack and resend fail at once (LinkFault), as if its link were down, so it
    misses its flush deadline; its ring keeps what it holds. For a standalone board, which has no
    harness to drop frames, this is the demo's port outage."""

    def __init__(self, link):
        self.link = link
        self.silenced: set[int] = set()

    def _check(self, port: int) -> None:
        if port in self.silenced:
            raise LinkFault(f"port {port}: the host's link to it is cut (outage)")

    def flush(self, port: int) -> tuple[bytes, int]:
        self._check(port)
        return self.link.flush(port)

    def ack(self, port: int, seq: int) -> None:
        self._check(port)
        self.link.ack(port, seq)

    def resend(self, port: int) -> None:
        self._check(port)
        self.link.resend(port)
