"""A fake ECP5 behind a JTAG TAP, served over the OpenOCD remote-bitbang protocol on 127.0.0.1.

openFPGALoader's `remote-bitbang` cable is a TCP client that sends one ASCII byte per pin
change: '0'-'7' set TCK (4), TMS (2) and TDI (1); 'R' asks for TDO ('0'/'1'); 'b'/'B' set the
probe's LED, 'r'-'u' its resets, 'Q' ends the session. `FakeECP5` serves one such client and
plays an LFE5U-85F as far as openFPGALoader's SRAM load of an ECP5 needs it:

- the IEEE 1149.1 TAP state machine (16 states, moved on TCK's rising edge by TMS), an 8-bit
  instruction register (captures 0b...01), the IDCODE selected after Test-Logic-Reset, and a
  1-bit BYPASS register for every instruction without its own data register;
- IDCODE_PUB (0xE0, 32 bits), LSC_READ_STATUS (0x3C, 32 bits: ISC_EN after ISC_ENABLE 0xC6 and
  clear after ISC_DISABLE 0x26, never busy or failed), LSC_CHECK_BUSY (0xF0, 8 bits of 0) and
  PRELOAD/SAMPLE, ISC_ERASE, LSC_INIT_ADDRESS, ISC_NOOP, which take their bits and do nothing;
- LSC_BITSTREAM_BURST (0x7A): every TDI bit shifted into the data register is kept, in order;
  `bitstream` packs them into bytes, first bit as the most significant (openFPGALoader sends
  each bitstream byte bit-reversed, LSB first: the byte's MSB goes first).

TDO is the bit the data or instruction register shifts out at the last rising edge (a real TAP
changes TDO on the falling edge after it; the client samples after the rising edge, which
reads the same bit). The burst's bits arrive by the million, so a run of TCK pairs without an
'R' is decoded with numpy and a Shift-DR run of the burst is taken whole.
"""

import socket
import threading

import numpy as np

LFE5U_85F_IDCODE = 0x41113043
IR_BITS = 8
IDCODE_PUB, READ_STATUS, CHECK_BUSY = 0xE0, 0x3C, 0xF0
ISC_ENABLE, ISC_DISABLE, BITSTREAM_BURST = 0xC6, 0x26, 0x7A
STATUS_ISC_EN = 1 << 9

# TAP state -> (next state with TMS=0, next state with TMS=1)
TAP = {
    "RESET": ("IDLE", "RESET"), "IDLE": ("IDLE", "SELECT_DR"),
    "SELECT_DR": ("CAPTURE_DR", "SELECT_IR"), "CAPTURE_DR": ("SHIFT_DR", "EXIT1_DR"),
    "SHIFT_DR": ("SHIFT_DR", "EXIT1_DR"), "EXIT1_DR": ("PAUSE_DR", "UPDATE_DR"),
    "PAUSE_DR": ("PAUSE_DR", "EXIT2_DR"), "EXIT2_DR": ("SHIFT_DR", "UPDATE_DR"),
    "UPDATE_DR": ("IDLE", "SELECT_DR"),
    "SELECT_IR": ("CAPTURE_IR", "RESET"), "CAPTURE_IR": ("SHIFT_IR", "EXIT1_IR"),
    "SHIFT_IR": ("SHIFT_IR", "EXIT1_IR"), "EXIT1_IR": ("PAUSE_IR", "UPDATE_IR"),
    "PAUSE_IR": ("PAUSE_IR", "EXIT2_IR"), "EXIT2_IR": ("SHIFT_IR", "UPDATE_IR"),
    "UPDATE_IR": ("IDLE", "SELECT_DR"),
}


class FakeECP5:
    """Serves one remote-bitbang client on `127.0.0.1:port` in a thread (`with` starts it)."""

    def __init__(self, idcode: int = LFE5U_85F_IDCODE):
        self.idcode = idcode
        self.state = "RESET"
        self.ir = IDCODE_PUB
        self.ir_shift = 0
        self.dr = 0                 # the selected data register, shifted LSB out
        self.dr_bits = 1
        self.tdo = 0
        self.tck = 0
        self.isc_enabled = False
        self.instructions: list[int] = []      # every instruction loaded, in order
        self._burst: list[np.ndarray] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.error: BaseException | None = None

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._listener.close()
        self._thread.join(timeout=10)

    @property
    def bitstream(self) -> bytes:
        """The bytes shifted in under LSC_BITSTREAM_BURST."""
        bits = np.concatenate(self._burst) if self._burst else np.zeros(0, np.uint8)
        return np.packbits(bits[:len(bits) // 8 * 8], bitorder="big").tobytes()

    # --- the connection -------------------------------------------------------------------
    def _serve(self):
        try:
            self._listener.settimeout(30)
            conn, _ = self._listener.accept()
            with conn:
                conn.settimeout(30)
                while (chunk := conn.recv(1 << 16)) and self._feed(chunk, conn):
                    pass
        except BaseException as exc:    # reported by the test, which runs in another thread
            self.error = exc

    def _feed(self, chunk: bytes, conn) -> bool:
        """Handle one received chunk; False once the client said 'Q'."""
        data = np.frombuffer(chunk, np.uint8)
        pins = (data >= ord("0")) & (data <= ord("7"))
        start = 0
        for cmd_at in np.flatnonzero(~pins):
            self._pins(data[start:cmd_at] - ord("0"))
            cmd = chunk[cmd_at]
            if cmd == ord("R"):
                conn.sendall(b"1" if self.tdo else b"0")
            elif cmd == ord("Q"):
                return False
            start = cmd_at + 1          # LED ('b'/'B') and reset ('r'-'u') requests: nothing to do
        self._pins(data[start:] - ord("0"))
        return True

    def _pins(self, values: np.ndarray):
        """Apply pin writes: act on every TCK rising edge with that write's TMS and TDI."""
        if not len(values):
            return
        tck = (values >> 2) & 1
        before = np.concatenate(([self.tck], tck[:-1]))
        rising = np.flatnonzero((tck == 1) & (before == 0))
        self.tck = int(tck[-1])
        tms, tdi = (values[rising] >> 1) & 1, values[rising] & 1
        i = 0
        while i < len(rising):
            if self.state == "SHIFT_DR" and self.ir == BITSTREAM_BURST and not tms[i]:
                run_end = i + int(np.argmax(tms[i:])) if tms[i:].any() else len(rising)
                self._burst.append(tdi[i:run_end].astype(np.uint8))
                i = run_end
                continue
            self._edge(int(tms[i]), int(tdi[i]))
            i += 1

    # --- the TAP --------------------------------------------------------------------------
    def _edge(self, tms: int, tdi: int):
        state = self.state
        if state == "SHIFT_DR":
            if self.ir == BITSTREAM_BURST:
                self._burst.append(np.array([tdi], np.uint8))
            self.tdo = self.dr & 1
            self.dr = (self.dr >> 1) | (tdi << (self.dr_bits - 1))
        elif state == "SHIFT_IR":
            self.tdo = self.ir_shift & 1
            self.ir_shift = (self.ir_shift >> 1) | (tdi << (IR_BITS - 1))
        self.state = TAP[state][tms]
        if self.state == "RESET":
            self.ir = IDCODE_PUB
        elif self.state == "CAPTURE_IR":
            self.ir_shift = 0b01
        elif self.state == "UPDATE_IR":
            self._load_instruction(self.ir_shift)
        elif self.state == "CAPTURE_DR":
            self.dr, self.dr_bits = self._capture()

    def _load_instruction(self, ir: int):
        self.ir = ir
        self.instructions.append(ir)
        if ir == ISC_ENABLE:
            self.isc_enabled = True
        elif ir == ISC_DISABLE:
            self.isc_enabled = False

    def _capture(self) -> tuple[int, int]:
        """The selected data register's value and length at Capture-DR."""
        if self.ir == IDCODE_PUB:
            return self.idcode, 32
        if self.ir == READ_STATUS:
            return (STATUS_ISC_EN if self.isc_enabled else 0), 32
        if self.ir == CHECK_BUSY:
            return 0, 8
        return 0, 1     # BYPASS-like: instructions whose data openFPGALoader only writes
