"""The host's end of a device image's link under Verilator, shared by the link and inject tests:
bytes into `rx` and out of `tx` one a cycle each way, frames encoded and decoded with the ABI."""

from collections import deque

import cocotb
from cocotb.triggers import ClockCycles, Event, FallingEdge, ReadOnly, with_timeout

from firmware.abi.frames import decode as decode_frame
from firmware.abi.frames import encode as encode_frame


class LinkBytes:
    """Pumps the link's bytes and matches responses to requests. A subclass that drives more of
    the image in the same cycle extends `drive` (offer) and `taken` (pop what transferred)."""

    def __init__(self, dut):
        self.dut = dut
        self.rx = deque()
        self.tx = bytearray()
        self.frame_seen = Event()
        self.seq = 0

    async def start(self):
        from cocotb.clock import Clock

        dut = self.dut
        cocotb.start_soon(Clock(dut.clk, 8, unit="ns").start())
        dut.rst.value = 1
        dut.tx__ready.value = 1
        self.drive()                    # nothing queued yet: every input idle through reset
        await ClockCycles(dut.clk, 3)
        dut.rst.value = 0
        cocotb.start_soon(self._run())

    async def _run(self):
        dut = self.dut
        while True:
            await FallingEdge(dut.clk)
            if dut.tx__valid.value:
                byte = int(dut.tx__payload.value)
                self.tx.append(byte)
                if byte == 0:
                    self.frame_seen.set()
            # What is driven now is what may transfer: the test may queue more before ReadOnly.
            self.drive()
            await ReadOnly()
            self.taken()

    def drive(self):
        """Offer this cycle's inputs: the next `rx` byte, if any."""
        self._rx_valid = bool(self.rx)
        self.dut.rx__valid.value = self._rx_valid
        if self._rx_valid:
            self.dut.rx__payload.value = self.rx[0]

    def taken(self):
        """After ReadOnly: drop what the image took this cycle."""
        if self._rx_valid and self.dut.rx__ready.value:
            self.rx.popleft()

    def send_raw(self, wire: bytes):
        self.rx.extend(wire)

    def send(self, ftype, payload=b"", port=0, damage=None) -> int:
        """Queue a request; its seq. `damage`: flip a bit of that COBS byte (not a delimiter)."""
        # 1..65535, never 0: unsolicited frames (JOURNAL, FLUSH_MARK, NAK) carry seq 0, so a
        # response to a request with seq 0 could not be told from them (as `host.link.device`).
        self.seq = self.seq % 0xFFFF + 1
        wire = encode_frame(ftype, payload, port=port, seq=self.seq)
        if damage is not None:
            wire = bytearray(wire)
            wire[damage] ^= 0x01 if wire[damage] != 0x01 else 0x02
        self.send_raw(wire)
        return self.seq

    async def frame(self, timeout_us=200):
        """The next frame from the device: (type, port, seq, payload)."""
        while 0 not in self.tx:
            self.frame_seen.clear()
            await with_timeout(self.frame_seen.wait(), timeout_us, "us")
        end = self.tx.index(0)
        wire = bytes(self.tx[:end])
        del self.tx[:end + 1]
        return decode_frame(wire)

    async def expect(self, ftype, seq=None, port=None):
        """The next frame's payload, checked to be `ftype` (and `seq`, `port` where given)."""
        kind, p, s, payload = await self.frame()
        assert kind == ftype, (kind, p, s, payload[:16].hex())
        assert seq is None or s == seq, (s, seq)
        assert port is None or p == port, (p, port)
        return payload
