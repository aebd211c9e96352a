"""FakeBoard: a scripted device on the far end of a pseudo-terminal, for host link tests.

It speaks the link of `firmware.abi.frames` the way `hdl.link.LinkController` does (see
`tests/gateware/test_link.py`): IDENTIFY, registers by the regmap, per-port rings with FLUSH,
ACK (tail moves only forward, within what was sent) and RESEND (go-back-N), JOURNAL frames of
whole entries and a FLUSH_MARK at the end of each drain, a NAK for every damaged request.

Faults: `corrupt`/`drop` rates per byte in each direction (seeded), and scripted hooks:
`tx_filter(frame_type, wire) -> wire` sees every frame the board sends (return b"" to lose it,
other bytes to replace it), `rx_filter(frame) -> bool` may ignore a good request silently.
`mode="silent"` answers nothing; `mode="garbage"` answers every byte run with random bytes;
`mode="echo"` sends back what it receives (a loopback plug, or a modem echoing).
"""

import os
import random
import select
import struct
import threading
import tty

from firmware.abi import regmap
from firmware.abi.entry import Kind, Mode, Status, entry_bytes, pack
from firmware.abi.frames import (
    FLUSH_MARK,
    IDENTITY,
    IMAGE_ID,
    IMAGE_VERSION,
    FrameError,
    FrameType,
    NakReason,
)
from firmware.abi.frames import decode as decode_frame
from firmware.abi.frames import encode as encode_frame
from host.link.serial import classify

NAK_FOR = {"rx_cobs_errors": NakReason.BAD_COBS, "rx_crc_errors": NakReason.BAD_CRC,
           "rx_length_errors": NakReason.BAD_LENGTH, "rx_type_errors": NakReason.UNKNOWN_TYPE}


class FakePort:
    def __init__(self, port, block_bytes):
        self.port, self.block_bytes = port, block_bytes
        self.entries: list[bytes] = []
        self.tail = self.flushed = self.sent_hw = 0
        self.time = 1_000_000 * (port + 1)
        self.regs = {"resend_requests": 0, "resent": 0}

    def write(self, lba, data):
        self.time += 1000
        self.entries.append(pack(seq=len(self.entries), port=self.port, mode=Mode.REDO, status=Status.OK,
                                 kind=Kind.WRITE, timestamp=self.time, lba=lba, data=data))


class FakeBoard:
    def __init__(self, *, ports=2, block_bytes=64, depth=64, per_frame=3, seed=1, mode="normal",
                 corrupt=(0.0, 0.0), drop=(0.0, 0.0), features=0):
        self.ports = [FakePort(p, block_bytes) for p in range(ports)]
        self.features = features                        # IDENTITY's features byte
        self.block_bytes, self.depth, self.per_frame, self.mode = block_bytes, depth, per_frame, mode
        self.rng = random.Random(seed)
        self.corrupt_rx, self.corrupt_tx = corrupt      # rx: host → board, tx: board → host
        self.drop_rx, self.drop_tx = drop
        self.tx_filter = None
        self.rx_filter = None
        self.requests: list[tuple] = []                 # every good request: (type, port, seq, payload)
        self.naks = 0
        self.regs = {"scratch": 0}
        self.port_regs = [{"watermark": 0, "timer_period": 0, "mode": 0, "policy": 0} for _ in self.ports]
        self.pulses: list[tuple[str, int]] = []
        self.lock = threading.Lock()
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=2)
        os.close(self.master)
        os.close(self.slave)

    def write_blocks(self, port, blocks):
        with self.lock:
            for lba, data in blocks:
                self.ports[port].write(lba, data)

    # --- the wire ------------------------------------------------------------------------------

    def _damage(self, wire: bytes, corrupt: float, drop: float) -> bytes:
        if not corrupt and not drop:
            return wire
        out = bytearray()
        for b in wire:
            r = self.rng.random()
            if r < drop:
                continue
            if r < drop + corrupt:
                b ^= 1 << self.rng.randrange(8)
            out.append(b)
        return bytes(out)

    def _send(self, ftype, payload=b"", port=0, seq=0):
        wire = encode_frame(ftype, payload, port=port, seq=seq)
        if self.tx_filter is not None:
            wire = self.tx_filter(ftype, wire)
        self._write(self._damage(wire, self.corrupt_tx, self.drop_tx))

    def _write(self, data: bytes):
        view = memoryview(data)
        while view and not self._stop.is_set():
            _, ready, _ = select.select([], [self.master], [], 0.05)
            if ready:
                view = view[os.write(self.master, view):]

    def _run(self):
        pending = bytearray()
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                continue                       # the host closed its end; wait for stop
            chunk = self._damage(chunk, self.corrupt_rx, self.drop_rx)
            if self.mode == "silent":
                continue
            if self.mode == "echo":
                self._write(chunk)
                continue
            if self.mode == "garbage":
                self._write(bytes(self.rng.randrange(1, 256) for _ in range(64)) + b"\0")
                continue
            pending += chunk
            while (end := pending.find(0)) >= 0:
                wire, pending[:] = bytes(pending[:end]), pending[end + 1:]
                if wire:
                    self._request(wire)

    def _request(self, wire):
        try:
            frame = decode_frame(wire)
        except FrameError:
            self.naks += 1
            self._send(FrameType.NAK, bytes([NAK_FOR[classify(wire)]]))
            return
        ftype, port, seq, payload = frame
        if ftype in (FrameType.FLUSH, FrameType.ACK, FrameType.RESEND) and port >= len(self.ports):
            self.naks += 1
            self._send(FrameType.NAK, bytes([NakReason.BAD_PORT]))
            return
        self.requests.append(frame)
        if self.rx_filter is not None and not self.rx_filter(frame):
            return
        with self.lock:
            if ftype == FrameType.IDENTIFY:
                self._send(FrameType.IDENTITY, IDENTITY.pack(IMAGE_ID, IMAGE_VERSION, len(self.ports), 0,
                                                             self.depth, self.block_bytes, 64, self.features),
                           seq=seq)
            elif ftype == FrameType.REG_READ:
                addr, count = struct.unpack("<HH", payload)
                values = [self.reg(a) for a in range(addr, addr + count)]
                self._send(FrameType.REG_VALUES, struct.pack(f"<HH{count}I", addr, count, *values), seq=seq)
            elif ftype == FrameType.REG_WRITE:
                addr, value = struct.unpack("<HI", payload)
                self.reg_write(addr, value)
                self._send(FrameType.REG_VALUES, struct.pack("<HHI", addr, 1, self.reg(addr)), seq=seq)
            elif ftype == FrameType.FLUSH:
                self._drain(self.ports[port])
            elif ftype == FrameType.RESEND:
                p = self.ports[port]
                p.regs["resend_requests"] += 1
                p.regs["resent"] += p.flushed - p.tail
                p.flushed = p.tail
                self._drain(p)
            elif ftype == FrameType.ACK:
                p = self.ports[port]
                (ack,) = struct.unpack("<I", payload)
                if p.tail <= ack < p.sent_hw:
                    p.tail = ack + 1
                self._send(FrameType.ACKED, struct.pack("<I", p.tail), port=port, seq=seq)
            else:
                self.naks += 1
                self._send(FrameType.NAK, bytes([NakReason.UNKNOWN_TYPE]))

    def _drain(self, p: FakePort):
        while p.flushed < len(p.entries):
            batch = p.entries[p.flushed:p.flushed + self.per_frame]
            self._send(FrameType.JOURNAL, b"".join(batch), port=p.port)
            p.flushed += len(batch)
            p.sent_hw = max(p.sent_hw, p.flushed)
        p.time += 10
        self._send(FrameType.FLUSH_MARK, FLUSH_MARK.pack(p.time, p.flushed), port=p.port)

    # --- registers -----------------------------------------------------------------------------

    def reg(self, addr):
        found = regmap.decode_address(addr)
        if found is None:
            return 0
        port, reg = found
        if port is None:
            consts = {"image_id": IMAGE_ID, "version": IMAGE_VERSION, "ports": len(self.ports),
                      "ring_depth": self.depth, "block_bytes": self.block_bytes, "datapath_bits": 64,
                      "max_payload": self.per_frame * entry_bytes(self.block_bytes),
                      "naks_sent": self.naks, "rx_frames": len(self.requests)}
            return consts.get(reg.name, self.regs.get(reg.name, 0))
        if port >= len(self.ports):
            return 0
        p = self.ports[port]
        live = {"entries_written": len(p.entries), "flushed": p.sent_hw, "acknowledged": p.tail,
                "ring_fill": len(p.entries) - p.tail, **p.regs, **self.port_regs[port]}
        return live.get(reg.name, 0)

    def reg_write(self, addr, value):
        found = regmap.decode_address(addr)
        if found is None:
            return
        port, reg = found
        if reg.access == "W1P":
            if value & 1:
                self.pulses.append((reg.name, port))
        elif reg.access == "RW":
            table = self.regs if port is None else self.port_regs[port]
            table[reg.name] = value & ((1 << reg.width) - 1)
