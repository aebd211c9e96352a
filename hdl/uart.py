"""UART: 8N1 serial transmitter and receiver with byte streams, in the Glasgow component style.

`divisor` is the number of clock cycles per bit (clock / baud rate), fixed at elaboration.

- Transmit: a byte accepted on `i_stream` goes out on `tx` as a start bit (0), eight data bits
  LSB first and a stop bit (1); `tx` idles high. The stream is ready while the shifter is idle.
- Receive: `rx` passes a two-flip-flop synchroniser; a falling edge starts a frame, the start
  bit is checked again at its middle, and every data bit and the stop bit are sampled at their
  middle. A byte with a good stop bit goes out on `o_stream`; a low stop bit counts in
  `framing_errors` and the byte is dropped. The receiver cannot be back-pressured (a UART has no
  flow control here): a byte that arrives while the previous one has not been taken counts in
  `overruns` and is dropped (the stream's payload holds until its transfer).
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out


class UART(wiring.Component):
    """8N1 UART with `divisor` clock cycles per bit."""

    tx: Out(1, init=1)
    rx: In(1, init=1)
    i_stream: In(stream.Signature(8))
    o_stream: Out(stream.Signature(8))
    framing_errors: Out(32)
    overruns: Out(32)

    def __init__(self, divisor: int):
        if divisor < 4:
            self._MustUse__silence = True  # a rejected core is not an unused one
            raise ValueError(f"divisor must be at least 4 cycles per bit, not {divisor}")
        self.divisor = divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        div = self.divisor

        # --- transmitter: 10-bit shift register, one bit per `divisor` cycles -----------------
        tx_shift = Signal(10, init=0x3FF)
        tx_bits = Signal(range(11))
        tx_timer = Signal(range(div))
        m.d.comb += [self.tx.eq(tx_shift[0]), self.i_stream.ready.eq(tx_bits == 0)]
        with m.If(tx_bits == 0):
            with m.If(self.i_stream.valid):
                m.d.sync += [tx_shift.eq(Cat(0, self.i_stream.payload, 1)), tx_bits.eq(10),
                             tx_timer.eq(div - 1)]
        with m.Elif(tx_timer == 0):
            m.d.sync += [tx_shift.eq(Cat(tx_shift[1:], 1)), tx_bits.eq(tx_bits - 1),
                         tx_timer.eq(div - 1)]
        with m.Else():
            m.d.sync += tx_timer.eq(tx_timer - 1)

        # --- receiver: synchronise, find the start edge, sample mid-bit ------------------------
        rx = Signal(init=1)
        m.submodules.rx_sync = FFSynchronizer(self.rx, rx, init=1)
        rx_shift = Signal(8)
        rx_bits = Signal(range(10))
        rx_timer = Signal(range(div))
        with m.If(self.o_stream.ready):
            m.d.sync += self.o_stream.valid.eq(0)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    m.d.sync += rx_timer.eq(div // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(rx_timer == 0):
                    with m.If(rx):            # a glitch, not a start bit
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += [rx_timer.eq(div - 1), rx_bits.eq(0)]
                        m.next = "DATA"
                with m.Else():
                    m.d.sync += rx_timer.eq(rx_timer - 1)
            with m.State("DATA"):
                with m.If(rx_timer == 0):
                    m.d.sync += [rx_timer.eq(div - 1), rx_bits.eq(rx_bits + 1)]
                    with m.If(rx_bits == 8):      # the stop bit
                        with m.If(rx):
                            with m.If(self.o_stream.valid & ~self.o_stream.ready):
                                m.d.sync += self.overruns.eq(self.overruns + 1)
                            with m.Else():
                                m.d.sync += [self.o_stream.payload.eq(rx_shift),
                                             self.o_stream.valid.eq(1)]
                            m.next = "IDLE"
                        with m.Else():
                            m.d.sync += self.framing_errors.eq(self.framing_errors + 1)
                            m.next = "BREAK"
                    with m.Else():
                        m.d.sync += rx_shift.eq(Cat(rx_shift[1:], rx))
                with m.Else():
                    m.d.sync += rx_timer.eq(rx_timer - 1)
            with m.State("BREAK"):            # wait for the line to go idle again
                with m.If(rx):
                    m.next = "IDLE"
        return m
