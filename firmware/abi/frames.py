"""Link frames between host and device: the same bytes over a UART, a pseudo-terminal or a FIFO.

A frame is COBS-encoded (zero byte as delimiter, one 0x00 after every frame) around:

| offset | size | field   | meaning |
|-------:|-----:|---------|---------|
| 0      | 1    | type    | `FrameType` |
| 1      | 1    | port    | port index the frame is about (0 where it does not apply) |
| 2      | 2    | seq     | link sequence number: a request's, echoed in its response |
| 4      | 2    | length  | payload bytes |
| 6      | 2    | reserved| zero |
| 8      | len  | payload | per type, below |
| 8+len  | 4    | crc     | CRC-32C of every byte before it |

Requests (host → device) and their responses (device → host, same `seq`):

| type | payload | response |
|---|---|---|
| IDENTIFY | — | IDENTITY: `IDENTITY` struct |
| REG_READ | addr u16, count u16 | REG_VALUES: addr u16, count u16, count × u32 |
| REG_WRITE | addr u16, value u32 | REG_VALUES with the register read back |
| FLUSH | — (for `port`) | the port drains: JOURNAL frames, then a FLUSH_MARK |
| ACK | seq u32 (entry sequence, for `port`) | ACKED: seq u32 — the ring's tail now |
| RESEND | — (for `port`) | the port rewinds to its oldest unacknowledged entry and drains |
| INJECT_WRITE | lba u64, block (for `port`) | WRITTEN: `WRITTEN` struct, once primary storage answered |
| READ_BLOCK | lba u64 | BLOCK: lba u64, the block as primary storage holds it |

INJECT_WRITE's block enters the port's ingress as a server's write would: stamped, journaled,
written to primary storage. INJECT_WRITE and READ_BLOCK are for a standalone image, one whose
primary storage is a small volume in on-chip RAM (`store_blocks` register > 0, IDENTITY's
`features` bit `FEATURE_INJECTION`); another image refuses them as an unknown type. The device
handles one INJECT_WRITE at a time: one that arrives while the last is still under way (its
port's ring full, say) is refused with NAK BUSY. A repeated INJECT_WRITE (a lost WRITTEN)
writes the block again: the host sends the next one only after its WRITTEN, so the repeat
lands right after the first with the same data.

Device → host without a request (seq 0): JOURNAL (payload: one or more whole entries of
`port`, in sequence order, exactly `firmware.abi.entry` bytes), FLUSH_MARK (time u64, next
entry seq u32: every entry stamped before `time` has been sent — precisely, every entry with
seq < next has been sent, and every entry with seq >= next is stamped at or after `time`; sent
when a port's drain ends, and after a FLUSH that found nothing to drain), and NAK (the device
dropped a frame it could not decode or act on; payload: `NakReason` u8; nothing else happened).
"""

import struct
from enum import IntEnum

import crc32c
from cobs import cobs

HEADER = struct.Struct("<BBHHH")
HEADER_BYTES = HEADER.size
CRC_BYTES = 4
MAX_PAYLOAD = 4096
# image id, version, ports, mode, ring depth, block bytes, datapath bits, features
IDENTITY = struct.Struct("<IIBBHHBB")
FEATURE_INJECTION = 0x01                # IDENTITY features: INJECT_WRITE and READ_BLOCK are served
FEATURE_BOARD_CLOCK = 0x02              # ... ports count time on the board's one clock, no DPLL
#                                         (`hdl.board_clock`): the dpll registers read that time, locked
IMAGE_ID = 0x504A524E                   # "PJRN"
IMAGE_VERSION = 0x00020001              # major << 16 | minor: the link and register ABI (2: the
#                                         register map gained the DMA block and moved the dpll block;
#                                         2.1: INJECT_WRITE/READ_BLOCK, the store_blocks register, and
#                                         enabling a DMA ring rewinds the port to its oldest
#                                         unacknowledged entry)
FLUSH_MARK = struct.Struct("<QI")
INJECT = struct.Struct("<Q")            # INJECT_WRITE's and READ_BLOCK's lba; BLOCK's too
# WRITTEN: the entry's timestamp (the port's time when the write went in), the entry's seq (the
# port's entries_written then), `firmware.abi.entry.Status` of the write, 3 zero bytes
WRITTEN = struct.Struct("<QIB3x")


class FrameType(IntEnum):
    IDENTIFY = 0x01
    REG_READ = 0x02
    REG_WRITE = 0x03
    FLUSH = 0x04
    ACK = 0x05
    RESEND = 0x06
    INJECT_WRITE = 0x07
    READ_BLOCK = 0x08
    IDENTITY = 0x81
    REG_VALUES = 0x82
    JOURNAL = 0x83
    FLUSH_MARK = 0x84
    ACKED = 0x85
    WRITTEN = 0x86
    BLOCK = 0x87
    NAK = 0x8F


class NakReason(IntEnum):
    BAD_CRC = 1
    BAD_COBS = 2
    BAD_LENGTH = 3
    UNKNOWN_TYPE = 4
    BAD_PORT = 5        # FLUSH, ACK, RESEND or INJECT_WRITE for a port the image does not have
    BAD_LBA = 6         # INJECT_WRITE or READ_BLOCK outside the standalone image's volume
    BUSY = 7            # INJECT_WRITE while one is under way, READ_BLOCK while one is pending


class FrameError(ValueError):
    """Bytes between two delimiters that are not a well-formed frame."""


def encode(ftype: FrameType, payload: bytes = b"", *, port: int = 0, seq: int = 0) -> bytes:
    """A whole frame on the wire: COBS of header, payload and CRC, then the 0x00 delimiter."""
    if len(payload) > MAX_PAYLOAD:
        raise FrameError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    body = HEADER.pack(ftype, port, seq, len(payload), 0) + payload
    return cobs.encode(body + crc32c.crc32c(body).to_bytes(4, "little")) + b"\0"


def decode(wire: bytes) -> tuple[FrameType, int, int, bytes]:
    """(type, port, seq, payload) of one frame's bytes between delimiters (delimiter excluded)."""
    try:
        body = cobs.decode(wire)
    except cobs.DecodeError as exc:
        raise FrameError(f"bad COBS: {exc}") from exc
    if len(body) < HEADER_BYTES + CRC_BYTES:
        raise FrameError(f"frame of {len(body)} bytes is shorter than header and CRC")
    crc = int.from_bytes(body[-4:], "little")
    if crc32c.crc32c(body[:-4]) != crc:
        raise FrameError("frame CRC does not match")
    ftype, port, seq, length, _ = HEADER.unpack_from(body)
    if length != len(body) - HEADER_BYTES - CRC_BYTES:
        raise FrameError(f"frame says {length} payload bytes, carries {len(body) - HEADER_BYTES - CRC_BYTES}")
    try:
        kind = FrameType(ftype)
    except ValueError as exc:
        raise FrameError(f"unknown frame type {ftype:#04x}") from exc
    return kind, port, seq, body[HEADER_BYTES:-4]
