"""Parsing batches of partial-journal entries into index rows, with every entry checked."""

import struct
from functools import cache

import crc32c
import numpy as np

from firmware.abi.entry import HEADER_BYTES, HEADER_DTYPE, TRAILER_BYTES, EntryError, entry_bytes

# One row per entry in the journal's in-memory index; `seg` and `offset` locate the entry.
INDEX_DTYPE = np.dtype([
    ("timestamp", "<u8"), ("lba", "<u8"), ("seq", "<u4"), ("crc", "<u4"), ("offset", "<u8"),
    ("seg", "<u4"), ("port", "u1"), ("mode", "u1"), ("status", "u1"), ("kind", "u1"),
])
_LENGTH = struct.Struct("<I")


class BadEntry(EntryError):
    """Entry number `index`, starting at byte `offset` of its batch, is not well-formed."""

    def __init__(self, index: int, offset: int, what: str):
        super().__init__(f"entry {index} at byte {offset}: {what}")
        self.index, self.offset = index, offset


def parse(raw, block_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Index rows (seg/offset unset) and the start offset of each entry in `raw`.

    Entries are write entries of `block_bytes` or data-less markers. Every entry's CRC, length
    and padding are checked (a batch of whole write entries in one pass, see _batch_residue);
    the first defect raises BadEntry naming the entry and its offset.
    """
    raw = memoryview(raw).cast("B")
    size = entry_bytes(block_bytes)
    starts = headers = None
    uniform = False
    if len(raw) % size == 0:
        whole = np.frombuffer(raw, np.dtype([("h", HEADER_DTYPE), ("body", "V", block_bytes),
                                             ("crc", "<u4"), ("pad", "<u4")]))
        if np.all(whole["h"]["length"] == block_bytes):
            starts = np.arange(0, len(raw), size, dtype=np.uint64)
            headers, crcs, pads = whole["h"], whole["crc"], whole["pad"]
            uniform = True
    if headers is None:
        starts, headers = _walk(raw, block_bytes)
        ends = starts + HEADER_BYTES + headers["length"]
        crcs = np.array([int.from_bytes(raw[e:e + 4], "little") for e in ends.tolist()], np.uint32)
        pads = np.array([int.from_bytes(raw[e + 4:e + 8], "little") for e in ends.tolist()], np.uint32)
    if not (uniform and crc32c.crc32c(raw) == _batch_residue(len(starts), size) and not pads.any()):
        computed = np.fromiter((crc32c.crc32c(raw[s:s + HEADER_BYTES + n])
                                for s, n in zip(starts.tolist(), headers["length"].tolist(), strict=True)),
                               np.uint32, len(starts))
        bad = np.flatnonzero((computed != crcs) | (pads != 0))
        if len(bad):
            i = int(bad[0])
            what = ("padding is not zero" if pads[i]
                    else f"CRC {int(crcs[i]):#010x} does not match its contents")
            raise BadEntry(i, int(starts[i]), what)
    rows = np.zeros(len(starts), INDEX_DTYPE)
    for name in ("timestamp", "lba", "seq", "port", "mode", "status", "kind"):
        rows[name] = headers[name]
    rows["crc"] = crcs
    return rows, starts


@cache
def _batch_residue(count: int, size: int) -> int:
    """CRC-32C of `count` well-formed entries of `size` bytes laid end to end.

    It does not depend on their contents: a CRC register that has just taken in a message and
    that message's own CRC holds a fixed residue, and everything after is linear in it. So one
    pass over a whole batch checks every entry in it as strongly as a CRC-32C each; only a
    batch that fails is walked entry by entry to name the culprit."""
    body = bytes(size - TRAILER_BYTES)
    one = body + crc32c.crc32c(body).to_bytes(4, "little") + bytes(4)
    return crc32c.crc32c(one * count)


def _walk(raw: memoryview, block_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Entry by entry, for batches that mix writes and markers."""
    starts, offset = [], 0
    while offset < len(raw):
        if offset + HEADER_BYTES + TRAILER_BYTES > len(raw):
            raise BadEntry(len(starts), offset, "truncated header")
        (length,) = _LENGTH.unpack_from(raw, offset + 24)
        if length not in (0, block_bytes):
            raise BadEntry(len(starts), offset, f"length {length}, expected {block_bytes} or 0")
        if offset + entry_bytes(length) > len(raw):
            raise BadEntry(len(starts), offset, "truncated data")
        starts.append(offset)
        offset += entry_bytes(length)
    starts = np.array(starts, dtype=np.uint64)
    headers = np.array([np.frombuffer(raw[s:s + HEADER_BYTES], HEADER_DTYPE)[0] for s in starts.tolist()],
                       dtype=HEADER_DTYPE)
    return starts, headers
