"""Record framing of the primary journal's append-only files.

Every file is a run of records; a record is a 32-byte header, a payload and zero padding to
the next multiple of 8 bytes:

| offset | size | field    | meaning |
|-------:|-----:|----------|---------|
| 0      | 4    | magic    | b"PJR2" |
| 4      | 2    | kind     | `RecordKind` |
| 6      | 2    | port     | port the payload came from (0 where it does not apply) |
| 8      | 4    | length   | payload bytes |
| 12     | 8    | aux      | kind-specific: for ENTRIES, the device time up to which the port has flushed |
| 20     | 4    | hcrc     | CRC-32C of header bytes 0-19 |
| 24     | 4    | crc      | CRC-32C of header bytes 0-23 and the payload |
| 28     | 4    | reserved | zero |

A record is durable once the file has been fsynced after it. A scan stops at the first record
that is short, has a wrong magic or a wrong CRC; whether that is a torn tail (nothing valid
after it) or corruption in the middle (a valid record further on) is for the caller to say.
The header's own CRC tells an unfinished write (a sound header whose record runs past the end
of the file) from damage (a header whose bytes changed, e.g. its length).
"""

import struct
from dataclasses import dataclass
from enum import IntEnum

import crc32c

MAGIC = b"PJR2"
HEADER = struct.Struct("<4sHHIQIII")
HEADER_BYTES = HEADER.size
ALIGN = 8


class RecordKind(IntEnum):
    ENTRIES = 1   # payload: whole partial-journal entries of one port, in sequence order
    MERGED = 2    # payload: a table of merged entries (see host.journal.merge)
    UNDO = 3      # payload: lbas (u64 each) then the blocks a restore overwrote; aux: block size


@dataclass(frozen=True)
class Record:
    offset: int
    kind: int
    port: int
    aux: int
    payload: memoryview

    @property
    def end(self) -> int:
        return self.offset + record_size(len(self.payload))


@dataclass(frozen=True)
class Defect:
    """A place where the record stream stops making sense.

    `torn` when it looks like a write that never finished (the header or the record runs past
    the end of the file, or only zeros follow); otherwise bytes that were written are damaged.
    `port` is the record's port where its header is intact."""

    offset: int
    reason: str
    torn: bool = False
    port: int | None = None


def record_size(payload_bytes: int) -> int:
    return HEADER_BYTES + payload_bytes + (-payload_bytes) % ALIGN


def encode(kind: RecordKind, payload: bytes, *, port: int = 0, aux: int = 0) -> bytes:
    head = HEADER.pack(MAGIC, kind, port, len(payload), aux, 0, 0, 0)[:20]
    head += crc32c.crc32c(head).to_bytes(4, "little")
    crc = crc32c.crc32c(payload, crc32c.crc32c(head))
    return head + crc.to_bytes(4, "little") + bytes(4) + payload + bytes((-len(payload)) % ALIGN)


def sound_header(buf, offset: int) -> tuple[int, int, int, int] | None:
    """(kind, port, length, aux) of the header at `offset` if its magic and own CRC hold."""
    if offset + HEADER_BYTES > len(buf):
        return None
    magic, kind, port, length, aux, hcrc, _, _ = HEADER.unpack_from(buf, offset)
    if magic != MAGIC or crc32c.crc32c(bytes(buf[offset:offset + 20])) != hcrc:
        return None
    return kind, port, length, aux


def read_at(buf, offset: int) -> Record | Defect:
    """Decode the record at `offset` of `buf`, or say why there is none."""
    tail = bytes(buf[offset:offset + HEADER_BYTES])
    if len(tail) < HEADER_BYTES or tail[:4] != MAGIC:
        rest = bytes(buf[offset:])
        if rest.count(0) == len(rest):
            return Defect(offset, "only zeros to the end of the file", torn=True)
        if len(tail) < HEADER_BYTES and MAGIC.startswith(rest[:4]):
            return Defect(offset, f"{len(rest)} bytes left, shorter than a record header", torn=True)
        return Defect(offset, f"bad magic {tail[:4]!r}")
    header = sound_header(buf, offset)
    if header is None:
        return Defect(offset, "record header CRC does not match (header damaged)")
    kind, port, length, aux = header
    crc = HEADER.unpack_from(buf, offset)[6]
    end = offset + HEADER_BYTES + length
    if offset + record_size(length) > len(buf):
        return Defect(offset, f"record of {length} payload bytes runs past the end of the file", torn=True,
                      port=port)
    payload = memoryview(buf)[offset + HEADER_BYTES:end]
    want = crc32c.crc32c(payload, crc32c.crc32c(memoryview(buf)[offset:offset + 24]))
    if want != crc:
        return Defect(offset, f"record CRC {crc:#010x} does not match its contents ({want:#010x})",
                      port=port)
    return Record(offset, kind, port, aux, payload)


def scan(buf, start: int = 0) -> tuple[list[Record], Defect | None]:
    """All records from `start` up to the first defect (if any)."""
    records, offset = [], start
    while offset < len(buf):
        got = read_at(buf, offset)
        if isinstance(got, Defect):
            return records, got
        records.append(got)
        offset = got.end
    return records, None


def next_valid(buf, start: int) -> int | None:
    """Offset of the first well-formed record after `start` (on an 8-byte boundary), if any.

    `buf` is bytes or an mmap (anything with `find`)."""
    offset = start + 1
    while True:
        offset = buf.find(MAGIC, offset)
        if offset < 0:
            return None
        if offset % ALIGN == 0 and isinstance(read_at(buf, offset), Record):
            return offset
        offset += 1
