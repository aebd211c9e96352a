"""SerialTransport: frames of `firmware.abi.frames` over a serial port (a UART or a pseudo-terminal).

The port is opened raw (8N1, no flow control) with pyserial. A background thread reads whatever
bytes arrive, splits them at the 0x00 delimiter and decodes each frame; frames that are not
well formed (bad COBS, too short or wrong length, CRC mismatch, unknown type, longer than any
frame can be) are counted in `counters` and dropped, never raised. Good frames wait in a queue
for `recv`. `send` encodes and writes one frame; reads go on meanwhile, so a pseudo-terminal
whose buffer fills never blocks both ends.
"""

import os
import queue
import stat
import termios
import threading
import time
from dataclasses import dataclass, fields
from typing import NamedTuple

import crc32c
import serial
from cobs import cobs

from firmware.abi.frames import (
    CRC_BYTES,
    HEADER,
    HEADER_BYTES,
    MAX_PAYLOAD,
    FrameError,
    FrameType,
    decode,
    encode,
)

# The longest run of bytes between delimiters that can be a frame: COBS adds one byte per 254.
MAX_WIRE = HEADER_BYTES + MAX_PAYLOAD + CRC_BYTES
MAX_WIRE += MAX_WIRE // 254 + 2


class TransportError(OSError):
    """The serial port cannot be opened or used; the message says why and names the path."""


class Frame(NamedTuple):
    type: FrameType
    port: int
    seq: int
    payload: bytes


@dataclass
class TransportCounters:
    """What went over the wire, and what arrived damaged (each a dropped frame)."""

    tx_frames: int = 0
    tx_bytes: int = 0
    rx_bytes: int = 0
    rx_frames: int = 0
    rx_cobs_errors: int = 0
    rx_length_errors: int = 0
    rx_crc_errors: int = 0
    rx_type_errors: int = 0
    rx_oversized: int = 0         # a run of bytes longer than any frame: garbage, or a lost delimiter

    @property
    def rx_errors(self) -> int:
        return (self.rx_cobs_errors + self.rx_length_errors + self.rx_crc_errors + self.rx_type_errors
                + self.rx_oversized)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def classify(wire: bytes) -> str:
    """Which check a bad frame fails, as the name of its counter (`decode` raised for it)."""
    try:
        body = cobs.decode(wire)
    except cobs.DecodeError:
        return "rx_cobs_errors"
    if len(body) < HEADER_BYTES + CRC_BYTES:
        return "rx_length_errors"
    if crc32c.crc32c(body[:-CRC_BYTES]) != int.from_bytes(body[-CRC_BYTES:], "little"):
        return "rx_crc_errors"
    if HEADER.unpack_from(body)[3] != len(body) - HEADER_BYTES - CRC_BYTES:
        return "rx_length_errors"
    return "rx_type_errors"


PORT_FIX = ("check the --port path: a board's serial device (/dev/ttyUSB0, /dev/ttyACM0) or the "
            "pty a virtual board prints ('portjournal sim' shows 'pty /dev/pts/N')")


def check_path(path: str) -> None:
    """Raise TransportError with a clear reason when `path` cannot be a serial port."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise TransportError(f"{path}: no such device (is the board connected, or the virtual "
                             f"board running?); {PORT_FIX}") from None
    except PermissionError:
        raise TransportError(f"{path}: permission denied (add yourself to the 'dialout' group?)") from None
    if not stat.S_ISCHR(st.st_mode):
        raise TransportError(f"{path}: not a serial device (not a character device); {PORT_FIX}")
    if not os.access(path, os.R_OK | os.W_OK):
        raise TransportError(f"{path}: permission denied: need read and write access "
                             "(add yourself to the 'dialout' group?)")


def terminal_mode(path: str) -> list | None:
    """The terminal settings of `path` before we change them (None if it has none to read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        return termios.tcgetattr(fd)
    except termios.error:
        return None
    finally:
        os.close(fd)


class SerialTransport:
    """One serial port carrying link frames: `send` frames, `recv` good ones, count bad ones."""

    def __init__(self, path: str, *, baud: int = 115200, read_chunk: int = 65536):
        check_path(path)
        self._saved_mode = terminal_mode(path)
        try:
            self._serial = serial.Serial(path, baudrate=baud, bytesize=8, parity="N", stopbits=1,
                                         timeout=0.05, write_timeout=5, xonxoff=False, rtscts=False,
                                         dsrdtr=False, exclusive=True)
        except serial.SerialException as exc:
            raise TransportError(f"{path}: cannot open as a serial port: {exc}; {PORT_FIX}") from exc
        except (ValueError, OSError) as exc:
            raise TransportError(f"{path}: cannot open as a serial port: {exc}; {PORT_FIX}") from exc
        if not os.isatty(self._serial.fileno()):
            self._serial.close()
            raise TransportError(f"{path}: not a terminal device, so not a serial port; {PORT_FIX}")
        self.path, self.baud = path, baud
        self.counters = TransportCounters()
        self._frames: queue.SimpleQueue[Frame] = queue.SimpleQueue()
        self._write_lock = threading.Lock()
        self._read_chunk = read_chunk
        self._stop = threading.Event()
        self.error: Exception | None = None      # what stopped the reader, if anything did
        self._reader = threading.Thread(target=self._read_loop, name=f"serial-rx {path}", daemon=True)
        self._reader.start()

    # --- sending ---------------------------------------------------------------------------

    def send(self, ftype: FrameType, payload: bytes = b"", *, port: int = 0, seq: int = 0) -> None:
        self.send_raw(encode(ftype, payload, port=port, seq=seq))
        self.counters.tx_frames += 1

    def send_raw(self, wire: bytes) -> None:
        """Bytes as they are (tests use it to put damage on the wire)."""
        self._check_alive()
        with self._write_lock:
            try:
                self._serial.write(wire)
            except (serial.SerialException, OSError) as exc:
                raise TransportError(f"{self.path}: write failed: {exc}") from exc
        self.counters.tx_bytes += len(wire)

    # --- receiving ---------------------------------------------------------------------------

    def recv(self, timeout: float | None) -> Frame | None:
        """The next good frame, or None when none arrived within `timeout` seconds."""
        try:
            return self._frames.get(timeout=timeout) if timeout is None or timeout > 0 \
                else self._frames.get_nowait()
        except queue.Empty:
            self._check_alive()
            return None

    def drain(self) -> int:
        """Drop every frame received so far (before talking to a device afresh); how many."""
        n = 0
        while True:
            try:
                self._frames.get_nowait()
            except queue.Empty:
                return n
            n += 1

    def _check_alive(self) -> None:
        if self.error is not None:
            raise TransportError(f"{self.path}: link lost: {self.error}")

    def _read_loop(self) -> None:
        pending = bytearray()
        ser = self._serial
        while not self._stop.is_set():
            try:
                chunk = ser.read(max(1, min(ser.in_waiting, self._read_chunk)))
            except (serial.SerialException, OSError, TypeError) as exc:
                if not self._stop.is_set():
                    self.error = exc
                return
            if not chunk:
                continue
            self.counters.rx_bytes += len(chunk)
            pending += chunk
            start = 0
            while (end := pending.find(0, start)) >= 0:
                self._frame(bytes(pending[start:end]))
                start = end + 1
            del pending[:start]
            if len(pending) > MAX_WIRE:       # no delimiter where one must have been: resynchronise
                self.counters.rx_oversized += 1
                pending.clear()

    def _frame(self, wire: bytes) -> None:
        if not wire:
            return                              # back-to-back delimiters: nothing, not an error
        if len(wire) > MAX_WIRE:
            self.counters.rx_oversized += 1
            return
        try:
            frame = Frame(*decode(wire))
        except FrameError:
            counter = classify(wire)
            setattr(self.counters, counter, getattr(self.counters, counter) + 1)
            return
        self.counters.rx_frames += 1
        self._frames.put(frame)

    # --- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        self._stop.set()
        self._reader.join(timeout=1)
        try:
            if self._saved_mode is not None:       # e.g. a terminal given by mistake: leave it usable
                termios.tcsetattr(self._serial.fileno(), termios.TCSANOW, self._saved_mode)
            self._serial.close()
        except (serial.SerialException, OSError, termios.error):
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def wait_quiet(self, seconds: float) -> None:
        """Return once no byte has arrived for `seconds` (or after 10 × `seconds` in all)."""
        end = time.monotonic() + 10 * seconds
        last = self.counters.rx_bytes
        while time.monotonic() < end:
            time.sleep(seconds)
            if self.counters.rx_bytes == last:
                return
            last = self.counters.rx_bytes
