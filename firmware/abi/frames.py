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
# image id, version, ports, mode, ring depth, block bytes, datapath bits, reserved
IDENTITY = struct.Struct("<IIBBHHBB")
IMAGE_ID = 0x504A524E                   # "PJRN"
IMAGE_VERSION = 0x00020001              # major << 16 | minor: the link and register ABI (2: the
#                                         register map gained the DMA block and moved the dpll block;
#                                         2.1: enabling a DMA ring rewinds the port to its oldest
#                                         unacknowledged entry)
FLUSH_MARK = struct.Struct("<QI")


class FrameType(IntEnum):
    IDENTIFY = 0x01
    REG_READ = 0x02
    REG_WRITE = 0x03
    FLUSH = 0x04
    ACK = 0x05
    RESEND = 0x06
    IDENTITY = 0x81
    REG_VALUES = 0x82
    JOURNAL = 0x83
    FLUSH_MARK = 0x84
    ACKED = 0x85
    NAK = 0x8F


class NakReason(IntEnum):
    BAD_CRC = 1
    BAD_COBS = 2
    BAD_LENGTH = 3
    UNKNOWN_TYPE = 4
    BAD_PORT = 5        # FLUSH, ACK or RESEND for a port the image does not have


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
