"""Parsing batches of partial-journal entries into index rows, with every entry checked."""

import struct

import crc32c
import numpy as np

from firmware.abi.entry import HEADER_BYTES, HEADER_DTYPE, TRAILER_BYTES, EntryError, entry_bytes

# One row per entry in the journal's in-memory index; `seg` and `offset` locate the entry.
INDEX_DTYPE = np.dtype([
    ("timestamp", "<u8"), ("lba", "<u8"), ("seq", "<u4"), ("crc", "<u4"), ("offset", "<u8"),
    ("seg", "<u4"), ("port", "u1"), ("mode", "u1"), ("status", "u1"), ("kind", "u1"),
])
_LENGTH = struct.Struct("<I")


def parse(raw, block_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Index rows (seg/offset unset) and the start offset of each entry in `raw`.

    Entries are write entries of `block_bytes` or data-less markers. Every entry's CRC, length
    and padding are checked; the first defect raises EntryError naming the entry and offset.
    """
    raw = memoryview(raw).cast("B")
    size = entry_bytes(block_bytes)
    if len(raw) % size == 0:
        starts = np.arange(0, len(raw), size, dtype=np.uint64)
        headers = np.frombuffer(raw, np.dtype([("h", HEADER_DTYPE), ("rest", "V", size - HEADER_BYTES)]))["h"]
        if not np.all(headers["length"] == block_bytes):
            starts, headers = _walk(raw, block_bytes)
    else:
        starts, headers = _walk(raw, block_bytes)
    rows = np.zeros(len(starts), INDEX_DTYPE)
    for name in ("timestamp", "lba", "seq", "port", "mode", "status", "kind"):
        rows[name] = headers[name]
    lengths = headers["length"].astype(np.int64)
    for i, (start, length) in enumerate(zip(starts.tolist(), lengths.tolist(), strict=True)):
        body_end = start + HEADER_BYTES + length
        crc = int.from_bytes(raw[body_end:body_end + 4], "little")
        if crc32c.crc32c(raw[start:body_end]) != crc:
            raise EntryError(f"entry {i} at byte {start}: CRC {crc:#010x} does not match its contents")
        if raw[body_end + 4:body_end + 8] != b"\0\0\0\0":
            raise EntryError(f"entry {i} at byte {start}: padding is not zero")
        rows["crc"][i] = crc
    return rows, starts


def _walk(raw: memoryview, block_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Entry by entry, for batches that mix writes and markers."""
    starts, offset = [], 0
    while offset < len(raw):
        if offset + HEADER_BYTES + TRAILER_BYTES > len(raw):
            raise EntryError(f"entry {len(starts)} at byte {offset}: truncated header")
        (length,) = _LENGTH.unpack_from(raw, offset + 24)
        if length not in (0, block_bytes):
            raise EntryError(f"entry {len(starts)} at byte {offset}: length {length}, expected "
                             f"{block_bytes} or 0")
        if offset + entry_bytes(length) > len(raw):
            raise EntryError(f"entry {len(starts)} at byte {offset}: truncated data")
        starts.append(offset)
        offset += entry_bytes(length)
    starts = np.array(starts, dtype=np.uint64)
    headers = np.array([np.frombuffer(raw[s:s + HEADER_BYTES], HEADER_DTYPE)[0] for s in starts.tolist()],
                       dtype=HEADER_DTYPE)
    return starts, headers
