"""DmaDevice: the host's driver for a portjournal board on the DMA link (journal rings in host memory).

The device writes each port's entries into a ring in host memory with a phase bit per slot
(`firmware.abi.dma`) and takes the host's consumer index through the port's `dma_doorbell`
register as the acknowledge. What the driver needs from the machine is a way to the BAR (the
register map) and memory the device can write to (with the bus addresses to program):

- the virtual board (`sim/vboard`, `link="dma"`): one file both processes map, whose first
  page is a mailbox for register accesses (`BarMailbox`; layout in the harness's header comment)
  and whose offsets are the bus addresses; `DmaDevice.open(path)`;
- real hardware would give a BAR mapping and a DMA-able buffer with its IOVA (Linux VFIO:
  `/dev/vfio/N`, the device bound to `vfio-pci`, an IOMMU group the user may open). That is not
  implemented: `DmaDevice.open` names what is missing for any other path.

On top of that the driver is the Collector's `PortLink`, like the serial `Device`:
`flush(port)` takes the entries that are in the ring (by phase, without a register read) and
returns them, complete up to the newest one's timestamp as `flushed_through`; it does not wait
for entries still on their way (the next flush takes them: waiting would leave the port's
partial journal full of entries the host holds but has not acknowledged, and the device
idle). Only when the ring holds nothing new does it read the device time and the port's
`entries_written`, to return that time when every entry before it is in, or to wait for the
next one when one is on its way; `ack(port, seq)` writes the consumer index of the slot
holding `seq` to the doorbell (the device frees the port's partial-journal ring that far; a
flush left waiting rings it again, in case the device missed it — the doorbell holds an index,
not an increment, so ringing twice is harmless);
`resend(port)` goes back to the oldest slot not yet acknowledged — still in host memory, since
the device never writes a slot the host has not freed.
"""

import fcntl
import mmap
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from firmware.abi import regmap
from firmware.abi.dma import SLOT_WORD_BYTES, phase, slot_bytes
from firmware.abi.entry import Mode, entry_bytes
from firmware.abi.frames import IMAGE_ID, IMAGE_VERSION

from .device import DeviceError, Identity

MAILBOX_BYTES = 4096
MB_REQ, MB_OP, MB_ADDR, MB_WDATA, MB_DONE, MB_RDATA = range(6)
SPINS = 100                     # mailbox polls before the driver starts sleeping between them
RING_LOG_SIZE = 10              # slots per port ring: 1024
RING_AGAIN_S = 0.05             # a flush waiting this long rings the doorbell again


def not_host_memory(path: str, why: str) -> str:
    """The error for a path the DMA link cannot use, saying what it would need instead."""
    return (f"{path}: not a virtual board's host-memory file ({why}). The DMA link needs a BAR "
            "mapping and DMA-able memory: the virtual board gives both in one file "
            "(`portjournal sim --link dma` prints it); real hardware would need VFIO "
            "(/dev/vfio, the device bound to vfio-pci), which this tool does not drive yet")


class BarMailbox:
    """Register reads and writes through the virtual board's mailbox page."""

    def __init__(self, mem: mmap.mmap, path: str, timeout: float):
        self.mem, self.path, self.timeout = mem, path, timeout
        self.req = self._word(MB_DONE)

    def _word(self, i: int) -> int:
        return struct.unpack_from("<I", self.mem, 4 * i)[0]

    def _put(self, i: int, value: int) -> None:
        struct.pack_into("<I", self.mem, 4 * i, value & 0xFFFFFFFF)

    def access(self, addr: int, value: int | None = None) -> int:
        """Read register `addr` (value None) or write `value` to it; returns the value read (0 on write)."""
        self._put(MB_OP, 0 if value is None else 1)
        self._put(MB_ADDR, addr)
        self._put(MB_WDATA, value or 0)
        self.req = (self.req + 1) & 0xFFFFFFFF
        self._put(MB_REQ, self.req)             # last: the harness acts once the number changes
        deadline = time.monotonic() + self.timeout
        spins = 0
        while self._word(MB_DONE) != self.req:
            # The board answers within ~16 cycles of its simulation: spin a little, then sleep, so
            # the host does not take a core from the simulator on a small machine.
            spins += 1
            if spins < SPINS:
                continue
            time.sleep(20e-6)
            if time.monotonic() > deadline:
                raise DeviceError(f"{self.path}: the board did not answer a register access in "
                                  f"{self.timeout:g} s: is the virtual board (link dma) running?")
        return self._word(MB_RDATA) if value is None else 0


@dataclass
class HostRing:
    """One port's ring in host memory: where it lies, what the host has read and acknowledged."""

    offset: int                 # bus address = offset in the host-memory file
    log_size: int
    consumed: int = 0           # consumer index: slots read
    acked: int = 0              # consumer index last written to the doorbell
    first_seq: int | None = None    # seq of the entry in slot index 0 (entries are consecutive)

    @property
    def size(self) -> int:
        return 1 << self.log_size


@dataclass
class DmaCounters:
    register_reads: int = 0
    register_writes: int = 0
    doorbells: int = 0
    flushes: int = 0
    entries: int = 0
    entry_bytes: int = 0
    resends: int = 0
    timeouts: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class DmaDevice:
    """A portjournal board on the DMA link; the same register and PortLink API as `Device`."""

    def __init__(self, mem: mmap.mmap, path: str, *, timeout: float = 0.5, flush_timeout: float = 2.0,
                 ring_log_size: int = RING_LOG_SIZE, clock: Callable[[], float] = time.monotonic,
                 lock_fd: int | None = None):
        self.mem, self.path, self.lock_fd = mem, path, lock_fd
        self.bar = BarMailbox(mem, path, timeout)
        self.flush_timeout, self.ring_log_size, self.clock = flush_timeout, ring_log_size, clock
        self.counters = DmaCounters()
        self.identity: Identity | None = None
        self.rings: list[HostRing] = []

    @classmethod
    def open(cls, path: str, **kwargs) -> "DmaDevice":
        """Map the virtual board's host-memory file `path` and identify the device. The rings are
        programmed at the first flush, so a look at the registers (`status`) leaves them alone.

        One process at a time, as a serial port is opened exclusively: the mailbox page has one
        request counter and the rings one consumer, so the file is locked (`flock`) while open."""
        if not os.path.exists(path):
            raise DeviceError(f"{path}: no such file: `portjournal sim --link dma` prints the virtual "
                              "board's host-memory file")
        if not os.path.isfile(path):
            raise DeviceError(not_host_memory(path, "not a regular file"))
        if (size := os.path.getsize(path)) < MAILBOX_BYTES:
            # Too small for the mailbox page (an empty file cannot even be mapped).
            raise DeviceError(not_host_memory(path, f"{size} bytes, less than its {MAILBOX_BYTES}-byte "
                                                    "mailbox page"))
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            mem = mmap.mmap(fd, 0)
        except BlockingIOError:
            os.close(fd)
            raise DeviceError(f"{path}: in use by another portjournal process (a collect or a demo?): "
                              "the DMA link serves one at a time") from None
        except BaseException:
            os.close(fd)
            raise
        dev = cls(mem, path, lock_fd=fd, **kwargs)
        try:
            dev.identify()
        except Exception:
            dev.close()
            raise
        return dev

    def close(self) -> None:
        self.mem.close()
        if self.lock_fd is not None:
            os.close(self.lock_fd)      # releases the lock
            self.lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- registers -------------------------------------------------------------------------------
    def read_registers(self, addr: int, count: int = 1) -> list[int]:
        self.counters.register_reads += count
        return [self.bar.access(a) for a in range(addr, addr + count)]

    def read(self, name: str, port: int | None = None) -> int:
        return self.read_registers(regmap.address(name, port))[0]

    def write(self, name: str, value: int, port: int | None = None) -> int:
        """Write a register by name; returns the value read back (0 for a pulse)."""
        addr = regmap.address(name, port)
        self.counters.register_writes += 1
        self.bar.access(addr, value)
        return 0 if regmap.register(name, port).access == "W1P" else self.read_registers(addr)[0]

    def read_block(self, port: int | None = None) -> dict[str, int]:
        """Every register of the global block, or of one port's block, by name."""
        table = regmap.GLOBAL if port is None else regmap.PORT
        base = 0 if port is None else regmap.port_base(port)
        return {r.name: self.read_registers(base + r.offset)[0] for r in table}

    def identify(self) -> Identity:
        g = {name: self.read(name) for name in ("image_id", "version", "ports", "mode", "ring_depth",
                                                "block_bytes", "datapath_bits")}
        if g["image_id"] != IMAGE_ID:
            raise DeviceError(f"{self.path}: image id {g['image_id']:#010x} is not portjournal's "
                              f"{IMAGE_ID:#010x}: is this a portjournal board on the DMA link?")
        if g["version"] >> 16 != IMAGE_VERSION >> 16:
            raise DeviceError(f"{self.path}: image version {g['version'] >> 16}.x does not speak this "
                              f"host's ABI {IMAGE_VERSION >> 16}.x")
        self.identity = Identity(g["image_id"], g["version"], g["ports"], Mode(g["mode"]), g["ring_depth"],
                                 g["block_bytes"], g["datapath_bits"])
        return self.identity

    def setup_rings(self) -> None:
        """Place a ring per port after the mailbox page, clear it and program the port's registers.

        The port's partial journal keeps what it had not had acknowledged: the first entry that
        lands in the new ring is the port's oldest unacknowledged one."""
        slot = slot_bytes(self.identity.block_bytes)
        size = slot << self.ring_log_size
        if MAILBOX_BYTES + self.identity.ports * size > len(self.mem):
            raise DeviceError(f"{self.path}: {len(self.mem)} bytes of host memory hold no "
                              f"{self.identity.ports} rings of {size} bytes")
        self.rings = []
        for port in range(self.identity.ports):
            ring = HostRing(MAILBOX_BYTES + port * size, self.ring_log_size)
            self.write("dma_enable", 0, port)
            self.mem[ring.offset:ring.offset + size] = bytes(size)
            self.write("dma_ring_base_lo", ring.offset & 0xFFFFFFFF, port)
            self.write("dma_ring_base_hi", ring.offset >> 32, port)
            self.write("dma_ring_log_size", ring.log_size, port)
            self.write("dma_doorbell", 0, port)
            self.write("watermark", 1, port)
            self.write("dma_enable", 1, port)
            self.rings.append(ring)

    # --- the journal rings ----------------------------------------------------------------------
    def _entry(self, port: int, index: int) -> bytes:
        """The entry in slot `index` of the port's ring (its length from its header)."""
        ring, slot = self.rings[port], slot_bytes(self.identity.block_bytes)
        at = ring.offset + (index % ring.size) * slot
        length = int.from_bytes(self.mem[at + 24:at + 28], "little")
        return self.mem[at:at + min(entry_bytes(length), slot - SLOT_WORD_BYTES)]

    def _take(self, port: int) -> int:
        """Move the consumer index over the slots whose phase says they are new (no register read)."""
        ring, slot = self.rings[port], slot_bytes(self.identity.block_bytes)
        taken = 0
        while True:
            at = ring.offset + (ring.consumed % ring.size) * slot
            if self.mem[at + slot - SLOT_WORD_BYTES] & 1 != phase(ring.consumed, ring.log_size):
                break
            if ring.first_seq is None:
                ring.first_seq = int.from_bytes(self.mem[at:at + 4], "little") - ring.consumed
            ring.consumed += 1
            taken += 1
            self.counters.entry_bytes += entry_bytes(int.from_bytes(self.mem[at + 24:at + 28], "little"))
        return taken

    def device_time(self, port: int) -> int:
        """The port's local time (its DPLL's), read high-low-high so a carry between the words shows."""
        while True:
            hi = self.read("dpll_time_hi", port)
            lo = self.read("dpll_time_lo", port)
            if self.read("dpll_time_hi", port) == hi:
                return hi << 32 | lo

    def flush(self, port: int) -> tuple[bytes, int]:
        """PortLink: the port's entries not yet acknowledged, and the device time they are complete to."""
        if not self.rings:
            self.setup_rings()
        if not 0 <= port < len(self.rings):
            raise DeviceError(f"port {port} is outside the device's {len(self.rings)} ports")
        self.counters.flushes += 1
        ring = self.rings[port]
        taken = self._take(port)
        if not taken:
            through, taken = self._wait(port)
        else:
            through = self._last_time(port)
        self.counters.entries += taken
        # Every slot read and not yet acknowledged (an earlier flush's too, if it was not acked).
        return b"".join(self._entry(port, index) for index in range(ring.acked, ring.consumed)), through

    def _last_time(self, port: int) -> int:
        """The timestamp of the newest entry taken: what the ring holds is complete up to it (a
        port's entries are in time order, and the ring is read in order)."""
        return int.from_bytes(self._entry(port, self.rings[port].consumed - 1)[8:16], "little")

    def _wait(self, port: int) -> tuple[int, int]:
        """Nothing new in the ring: ask the device whether anything is on its way, and wait for it.

        Returns the device time the port is complete to, and how many entries were taken."""
        through = self.device_time(port)
        written = self.read("entries_written", port)    # every entry stamped before `through`
        ring = self.rings[port]
        started = self.clock()
        rung_again = False
        taken = 0
        while True:
            taken += self._take(port)
            if ring.first_seq is not None and ring.first_seq + ring.consumed >= written:
                return through, taken
            if ring.first_seq is None and written == self.read("acknowledged", port):
                return through, taken       # nothing unacknowledged: nothing comes
            if taken or ring.consumed - ring.acked == ring.size:
                # More is on its way (or cannot come until the full ring is acknowledged).
                return min(through, self._last_time(port)), taken
            waited = self.clock() - started
            if waited > RING_AGAIN_S and not rung_again and ring.acked:
                self._ring(port)            # a doorbell the device missed: its ring is full
                rung_again = True
            if waited > self.flush_timeout:
                self.counters.timeouts += 1
                raise DeviceError(f"{self.path}: none of port {port}'s entries before seq {written} still "
                                  f"to come reached host memory within {self.flush_timeout:g} s")
            time.sleep(50e-6)

    def ack(self, port: int, seq: int) -> None:
        """PortLink: everything of `port` up to `seq` is durable: ring the doorbell past its slot."""
        ring = self.rings[port]
        if ring.first_seq is None:
            return
        index = min(seq - ring.first_seq + 1, ring.consumed)
        if index <= ring.acked:
            return
        ring.acked = index
        self._ring(port)

    def _ring(self, port: int) -> None:
        self.counters.doorbells += 1
        self.bar.access(regmap.address("dma_doorbell", port), self.rings[port].acked)

    def resend(self, port: int) -> None:
        """PortLink: read again from the oldest slot not acknowledged (it is still in host memory)."""
        self.counters.resends += 1
        self.rings[port].consumed = self.rings[port].acked

    def link_counters(self) -> dict[str, int]:
        return self.counters.as_dict()

    def bytes_received(self) -> int:
        """Entry bytes taken from the rings so far (for a rate)."""
        return self.counters.entry_bytes

    def link_summary(self) -> str:
        """One line on the link's health, for a progress display."""
        c = self.counters
        return (f"DMA: {c.entries} entries from host rings, {c.doorbells} doorbells, {c.timeouts} flush "
                f"timeouts, {c.resends} resends, {c.register_reads + c.register_writes} register accesses")


__all__ = ["BarMailbox", "DmaDevice", "HostRing"]
