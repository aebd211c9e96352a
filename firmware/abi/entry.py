"""Partial-journal entry: the unit a port journals, flushes and the host stores.

On the wire and on disk an entry is little-endian and a whole number of 64-bit words:

| offset | size | field      | meaning |
|-------:|-----:|------------|---------|
| 0      | 4    | seq        | per-port sequence number, +1 per entry (markers included), from 0 |
| 4      | 1    | port       | port index |
| 5      | 1    | mode       | `Mode`: what `data` holds (new data for redo, pre-image for copy-on-write) |
| 6      | 1    | status     | `Status`: outcome of the journal commit and of the primary write |
| 7      | 1    | kind       | `Kind`: a block write, or a marker (no data) |
| 8      | 8    | timestamp  | local time in ns when the request arrived (the DPLL's integer part) |
| 16     | 8    | lba        | block address on the primary storage, in blocks |
| 24     | 4    | length     | bytes of data that follow the header (block size, or 0 for a marker) |
| 28     | 4    | reserved   | zero |
| 32     | len  | data       | one block |
| 32+len | 4    | crc        | CRC-32C of every byte before it (header and data) |
| 36+len | 4    | pad        | zero, keeps entries 64-bit aligned |

(timestamp, port, seq) orders all entries of all ports totally.
"""

from enum import IntEnum

import crc32c
import numpy as np

HEADER_BYTES = 32
TRAILER_BYTES = 8

HEADER_DTYPE = np.dtype([
    ("seq", "<u4"), ("port", "u1"), ("mode", "u1"), ("status", "u1"), ("kind", "u1"),
    ("timestamp", "<u8"), ("lba", "<u8"), ("length", "<u4"), ("reserved", "<u4"),
])
assert HEADER_DTYPE.itemsize == HEADER_BYTES


class Mode(IntEnum):
    REDO = 0            # data is the block as written
    COPY_ON_WRITE = 1   # data is the block as it was before the write


class Status(IntEnum):
    OK = 1              # journaled and written to primary storage
    PRIMARY_FAILED = 2  # journaled, but primary storage reported a failure
    JOURNAL_FAILED = 3  # could not be journaled (e.g. the pre-image read failed); primary not written


class Kind(IntEnum):
    WRITE = 0
    PORT_INVALID = 1    # marker: the ring filled and the port stopped journaling from `timestamp` on


class EntryError(ValueError):
    """Bytes that are not a well-formed entry."""


def entry_bytes(block_bytes: int) -> int:
    """Size of a write entry for a given block size."""
    return HEADER_BYTES + block_bytes + TRAILER_BYTES


def entry_dtype(block_bytes: int) -> np.dtype:
    """A numpy record for whole write entries of one block size (bulk host work)."""
    return np.dtype([("header", HEADER_DTYPE), ("data", "u1", (block_bytes,)),
                     ("crc", "<u4"), ("pad", "<u4")])


def pack(*, seq: int, port: int, mode: Mode, status: Status, kind: Kind, timestamp: int, lba: int,
         data: bytes = b"") -> bytes:
    """Serialise one entry, CRC included."""
    header = np.zeros((), HEADER_DTYPE)
    header["seq"], header["port"], header["mode"] = seq, port, mode
    header["status"], header["kind"], header["timestamp"] = status, kind, timestamp
    header["lba"], header["length"] = lba, len(data)
    body = header.tobytes() + data
    return body + crc32c.crc32c(body).to_bytes(4, "little") + bytes(4)


def unpack(raw: bytes) -> tuple[dict, bytes]:
    """Parse and check one entry: (header fields, data). Raises EntryError on any defect."""
    if len(raw) < HEADER_BYTES + TRAILER_BYTES:
        raise EntryError(f"entry of {len(raw)} bytes is shorter than header and trailer")
    header = np.frombuffer(raw[:HEADER_BYTES], HEADER_DTYPE)[0]
    length = int(header["length"])
    if len(raw) != entry_bytes(length):
        raise EntryError(f"entry is {len(raw)} bytes but its header says {entry_bytes(length)}")
    body, crc = raw[:HEADER_BYTES + length], int.from_bytes(raw[-8:-4], "little")
    if crc32c.crc32c(body) != crc:
        raise EntryError(f"entry CRC {crc:#010x} does not match its contents ({crc32c.crc32c(body):#010x})")
    if raw[-4:] != bytes(4):
        raise EntryError("entry padding is not zero")
    fields = {name: int(header[name]) for name in HEADER_DTYPE.names if name != "reserved"}
    return fields, raw[HEADER_BYTES:HEADER_BYTES + length]
