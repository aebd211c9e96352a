"""Link bench: the virtual board with all 4 ports busy, drained over its pty by a minimal host.

Starts `sim.vboard.VirtualBoard` (servers back to back on every port, so the rings stay full and
the link saturated), sets every port's flush watermark to 1 (a drain starts whenever the ring
holds an entry), and runs a bare host loop in Python over the pseudo-terminal: read frames
(`firmware.abi.frames.decode`), ACK each JOURNAL frame's last entry, FLUSH a port again when its
FLUSH_MARK says its drain ended. After `--entries` entries it stops the board and prints, last:

    link: baud=B entries=N payload_bytes_per_s=P efficiency=E sim_cycles_per_s=C

`efficiency` = journal payload bytes received (whole entries in intact JOURNAL frames) per second
of simulated time ÷ the line capacity baud/10 bytes/s, the simulated time being the harness's
whole run (start-up and stop included, so it is a lower bound); `payload_bytes_per_s` is the
same payload per wall second of the harness's run; `sim_cycles_per_s` its simulated cycles per
wall second (from its exit line).
"""

import argparse
import struct
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import serial  # noqa: E402

from boards.sim import SIM_BOARD  # noqa: E402
from firmware.abi import regmap  # noqa: E402
from firmware.abi.entry import entry_bytes  # noqa: E402
from firmware.abi.frames import FrameError, FrameType, decode, encode  # noqa: E402
from sim.vboard import VirtualBoard, build  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=2000, help="entries to receive")
    parser.add_argument("--baud", type=float, default=SIM_BOARD.baud)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600, help="wall seconds before giving up")
    parser.add_argument("--poll-cycles", type=int, default=None, help="harness pty poll interval")
    args = parser.parse_args()

    started = time.monotonic()
    binary = build()
    print(f"harness ready in {time.monotonic() - started:.1f} s: {binary}")
    ports, entry = SIM_BOARD.ports, entry_bytes(SIM_BOARD.block_bytes)
    with tempfile.TemporaryDirectory() as tmp:
        board = VirtualBoard(Path(tmp) / "volume.img", binary=binary, blocks=4096, rate=-1, seed=args.seed,
                             baud=args.baud, report_ms=2000, poll_cycles=args.poll_cycles)
        with board:
            link = serial.Serial(board.tty, timeout=0.05)
            seq = 0

            def send(ftype, payload=b"", port=0):
                nonlocal seq
                seq = seq % 0xFFFF + 1        # 1..65535: seq 0 is what unsolicited device frames carry
                link.write(encode(ftype, payload, port=port, seq=seq))

            for p in range(ports):
                send(FrameType.REG_WRITE, struct.pack("<HI", regmap.address("watermark", p), 1))
                send(FrameType.FLUSH, port=p)
            entries = payload_bytes = bad = 0
            per_port = [0] * ports
            buf = b""
            deadline = time.monotonic() + args.timeout
            while entries < args.entries:
                if time.monotonic() > deadline:
                    raise SystemExit(f"timeout: {entries} entries in {args.timeout} s ({board.status})")
                chunk = link.read(max(1, link.in_waiting))
                if not chunk:
                    continue
                *frames, buf = (buf + chunk).split(b"\0")
                for wire in frames:
                    if not wire:
                        continue
                    try:
                        kind, port, _, payload = decode(wire)
                    except FrameError:
                        bad += 1
                        continue
                    if kind == FrameType.JOURNAL:
                        count = len(payload) // entry
                        last = int.from_bytes(payload[(count - 1) * entry:][:4], "little")
                        send(FrameType.ACK, struct.pack("<I", last), port=port)
                        entries += count
                        per_port[port] += count
                        payload_bytes += len(payload)
                    elif kind == FrameType.FLUSH_MARK:
                        send(FrameType.FLUSH, port=port)
            link.close()
        end = board.exit or board.status
    cycles, wall = int(end["cycles"]), float(end["wall_s"])
    sim_s = cycles / SIM_BOARD.clock_hz
    efficiency = payload_bytes / sim_s / (args.baud / 10)
    line_bytes = sim_s * args.baud / 10
    print(f"entries per port {per_port}, bad frames {bad}; simulated {sim_s * 1e3:.1f} ms in {wall:.1f} s; "
          f"line busy {int(end['tx_bytes']) / line_bytes:.3f} of the time, payload "
          f"{payload_bytes / int(end['tx_bytes']):.3f} of the bytes sent (framing, COBS, marks); "
          f"{end['tx_backpressure_cycles']} cycles the host's pty was full")
    print(f"link: baud={args.baud:.0f} entries={entries} payload_bytes_per_s={payload_bytes / wall:.0f} "
          f"efficiency={efficiency:.3f} sim_cycles_per_s={cycles / wall:.0f}")


if __name__ == "__main__":
    main()
