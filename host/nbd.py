"""A read-only NBD server: serve any volume with `size_bytes` and `read(offset, length)`.

Protocol: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md — fixed newstyle
handshake (server flags FIXED_NEWSTYLE | NO_ZEROES, the client's NO_ZEROES honoured), options
NBD_OPT_EXPORT_NAME, ABORT, LIST, INFO and GO; every other option (structured replies, meta
contexts, TLS, extended headers) gets NBD_REP_ERR_UNSUP, so replies are always simple replies.
One export, named `name` ("" is also accepted: the default export).

Transmission: READ is bounds-checked (EINVAL past the end or over MAX_REQUEST, no payload
after an error reply); WRITE and TRIM get EPERM (a WRITE's payload is read and dropped first so
the stream stays in step); FLUSH succeeds; DISC closes the connection. Unknown commands get
EINVAL.

One thread per connection (daemon threads; the listener polls so `shutdown()` returns within
`POLL_S`). Reads of the volume are serialised by a lock, so the volume need not be thread-safe.
"""

import errno
import socket
import struct
import threading
from typing import Protocol

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

FLAG_FIXED_NEWSTYLE = 1 << 0      # handshake flags (server)
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0    # client flags
FLAG_C_NO_ZEROES = 1 << 1

FLAG_HAS_FLAGS = 1 << 0           # transmission flags
FLAG_READ_ONLY = 1 << 1
FLAG_SEND_FLUSH = 1 << 2
FLAG_CAN_MULTI_CONN = 1 << 8
TRANSMISSION_FLAGS = FLAG_HAS_FLAGS | FLAG_READ_ONLY | FLAG_SEND_FLUSH | FLAG_CAN_MULTI_CONN

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_INFO, OPT_GO, OPT_STRUCTURED_REPLY = 1, 2, 3, 6, 7, 8

REP_ACK, REP_SERVER, REP_INFO = 1, 2, 3
REP_ERR_UNSUP = (1 << 31) + 1
REP_ERR_INVALID = (1 << 31) + 3
REP_ERR_UNKNOWN = (1 << 31) + 6

INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM = 0, 1, 2, 3, 4
EPERM, EIO, EINVAL, ENOSPC = 1, 5, 22, 28

MAX_REQUEST = 32 << 20     # largest READ served (the spec's default maximum block size)
MAX_OPTION = 64 << 10      # largest option payload accepted during the handshake
POLL_S = 0.2

_OPT_HEADER = struct.Struct(">QII")        # IHAVEOPT, option, length
_OPT_REPLY = struct.Struct(">QIII")        # magic, option, reply type, length
_REQUEST = struct.Struct(">IHHQQI")        # magic, flags, type, cookie, offset, length
_SIMPLE_REPLY = struct.Struct(">IIQ")      # magic, error, cookie


class Volume(Protocol):
    size_bytes: int

    def read(self, offset: int, length: int) -> bytes: ...


class NBDError(Exception):
    """The server cannot start or run as asked; the message says why."""


class _Closed(Exception):
    """The client went away or broke the protocol: drop the connection quietly."""


def _family(host: str, port: int) -> socket.AddressFamily:
    """The address family to listen with: AF_INET6 for an IPv6 literal ("::1"), else what the
    host name resolves to first ("" stays IPv4's every address)."""
    if not host:
        return socket.AF_INET
    try:
        found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise NBDError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (check the --listen "
                       "host: an address or name of this machine)") from exc
    return found[0][0]


class NBDServer:
    """Serve `volume` read-only over NBD on (host, port); port 0 picks a free one (see `.port`)."""

    def __init__(self, volume: Volume, host: str = "127.0.0.1", port: int = 0, *, name: str = "",
                 description: str = "", block_bytes: int | None = None):
        self.volume = volume
        self.name = name
        self.description = description
        self.block_bytes = block_bytes or getattr(volume, "block_bytes", 512)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []     # connections dropped for a protocol error (for logs and tests)
        try:
            self._listener = socket.create_server((host, port), family=_family(host, port), reuse_port=False)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise NBDError(f"cannot listen on {host}:{port}: the address is already in use "
                               "(another server there? pick another --listen port)") from exc
            raise NBDError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (check --listen: an "
                           "address of this machine, a port above 1023 unless root)") from exc
        self._listener.settimeout(POLL_S)
        self.host, self.port = self._listener.getsockname()[:2]

    @property
    def uri(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"nbd://{host}:{self.port}" + (f"/{self.name}" if self.name else "")

    # --- running ------------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Accept clients until `shutdown()` (or KeyboardInterrupt in the caller's thread)."""
        try:
            while not self._stop.is_set():
                try:
                    conn, _ = self._listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    if self._stop.is_set():
                        break
                    raise
                conn.settimeout(None)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with self._lock:
                    self._conns.add(conn)
                thread = threading.Thread(target=self._serve_client, args=(conn,), daemon=True,
                                          name=f"nbd-client-{conn.fileno()}")
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
                thread.start()
        finally:
            self._close_all()

    def start(self) -> "NBDServer":
        """Serve in a background thread; `shutdown()` stops it."""
        self._thread = threading.Thread(target=self.serve_forever, daemon=True, name="nbd-listener")
        self._thread.start()
        return self

    def shutdown(self) -> None:
        self._stop.set()
        thread = getattr(self, "_thread", None)
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._close_all()
        for t in self._threads:
            t.join(timeout=5)

    def _close_all(self) -> None:
        self._stop.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.shutdown()

    # --- one client ---------------------------------------------------------------------------

    def _serve_client(self, conn: socket.socket) -> None:
        try:
            if self._handshake(conn):
                self._transmission(conn)
        except _Closed as exc:
            if str(exc):
                self.errors.append(str(exc))
        except OSError:
            pass    # reset by the peer, or shut down by us
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _handshake(self, conn: socket.socket) -> bool:
        """Option haggling; True when the client moves on to transmission."""
        conn.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        (client_flags,) = struct.unpack(">I", _recv(conn, 4))
        if client_flags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES):
            raise _Closed(f"client flags {client_flags:#x} hold unknown bits")
        no_zeroes = bool(client_flags & FLAG_C_NO_ZEROES)
        while True:
            magic, option, length = _OPT_HEADER.unpack(_recv(conn, _OPT_HEADER.size))
            if magic != IHAVEOPT:
                raise _Closed(f"option magic {magic:#x} is not IHAVEOPT")
            if length > MAX_OPTION:
                raise _Closed(f"option {option} of {length} bytes is too long")
            data = _recv(conn, length)
            if option == OPT_EXPORT_NAME:
                if not self._known(data.decode(errors="replace")):
                    raise _Closed(f"unknown export name {data!r}")
                conn.sendall(struct.pack(">QH", self.volume.size_bytes, TRANSMISSION_FLAGS)
                             + (b"" if no_zeroes else bytes(124)))
                return True
            if option == OPT_ABORT:
                _reply(conn, option, REP_ACK)
                return False
            if option == OPT_LIST:
                if length:
                    _reply(conn, option, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data")
                    continue
                name = self.name.encode()
                _reply(conn, option, REP_SERVER, struct.pack(">I", len(name)) + name)
                _reply(conn, option, REP_ACK)
            elif option in (OPT_INFO, OPT_GO):
                if self._info(conn, option, data) and option == OPT_GO:
                    return True
            else:
                _reply(conn, option, REP_ERR_UNSUP, f"option {option} is not supported".encode())

    def _known(self, name: str) -> bool:
        return name in ("", self.name)

    def _info(self, conn: socket.socket, option: int, data: bytes) -> bool:
        if len(data) < 6:
            _reply(conn, option, REP_ERR_INVALID, b"option data too short")
            return False
        (name_len,) = struct.unpack_from(">I", data)
        if 4 + name_len + 2 > len(data):
            _reply(conn, option, REP_ERR_INVALID, b"export name runs past the option data")
            return False
        name = data[4:4 + name_len].decode(errors="replace")
        (count,) = struct.unpack_from(">H", data, 4 + name_len)
        if 4 + name_len + 2 + 2 * count != len(data):
            _reply(conn, option, REP_ERR_INVALID, b"information request list has the wrong length")
            return False
        if not self._known(name):
            _reply(conn, option, REP_ERR_UNKNOWN, f"no export named {name!r}".encode())
            return False
        wanted = set(struct.unpack_from(f">{count}H", data, 4 + name_len + 2))
        _reply(conn, option, REP_INFO, struct.pack(">HQH", INFO_EXPORT, self.volume.size_bytes,
                                                   TRANSMISSION_FLAGS))
        if INFO_NAME in wanted:
            _reply(conn, option, REP_INFO, struct.pack(">H", INFO_NAME) + self.name.encode())
        if INFO_DESCRIPTION in wanted and self.description:
            _reply(conn, option, REP_INFO, struct.pack(">H", INFO_DESCRIPTION) + self.description.encode())
        # Byte-granular reads: minimum 1, so sending it unasked is allowed.
        _reply(conn, option, REP_INFO, struct.pack(">HIII", INFO_BLOCK_SIZE, 1, self.block_bytes,
                                                   MAX_REQUEST))
        _reply(conn, option, REP_ACK)
        return True

    def _transmission(self, conn: socket.socket) -> None:
        size = self.volume.size_bytes
        while True:
            magic, _flags, kind, cookie, offset, length = _REQUEST.unpack(_recv(conn, _REQUEST.size))
            if magic != REQUEST_MAGIC:
                raise _Closed(f"request magic {magic:#x} is wrong")
            if kind == CMD_READ:
                if length > MAX_REQUEST or offset + length > size:
                    _simple(conn, cookie, EINVAL)
                    continue
                try:
                    with self._lock:
                        data = self.volume.read(offset, length)
                except Exception as exc:   # the volume failed: tell the client, keep serving
                    self.errors.append(f"read {offset}+{length}: {exc}")
                    _simple(conn, cookie, EIO)
                    continue
                if len(data) != length:
                    _simple(conn, cookie, EIO)
                    continue
                conn.sendall(_SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, 0, cookie) + bytes(data))
            elif kind == CMD_WRITE:
                _discard(conn, length)
                _simple(conn, cookie, EPERM)
            elif kind == CMD_TRIM:
                _simple(conn, cookie, EPERM)
            elif kind == CMD_FLUSH:
                _simple(conn, cookie, 0)
            elif kind == CMD_DISC:
                return
            else:
                _simple(conn, cookie, EINVAL)


def _recv(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise _Closed("" if not buf else f"client closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def _discard(conn: socket.socket, n: int) -> None:
    while n:
        n -= len(_recv(conn, min(n, 1 << 20)))


def _reply(conn: socket.socket, option: int, kind: int, data: bytes = b"") -> None:
    conn.sendall(_OPT_REPLY.pack(REPLY_MAGIC, option, kind, len(data)) + data)


def _simple(conn: socket.socket, cookie: int, error: int) -> None:
    conn.sendall(_SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, cookie))


class BytesVolume:
    """A volume held in memory (tests, small images)."""

    def __init__(self, data: bytes, block_bytes: int = 512):
        self.data = bytes(data)
        self.block_bytes = block_bytes
        self.size_bytes = len(self.data)
        self.blocks = self.size_bytes // block_bytes

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size_bytes:
            raise ValueError(f"bytes {offset}..{offset + length} are outside the volume's {self.size_bytes}")
        return self.data[offset:offset + length]
