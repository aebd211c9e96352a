"""DMA bench: the virtual board on the DMA link, 4 ports busy, collected into a primary journal.

Starts `sim.vboard.VirtualBoard` built with `link="dma"` (servers back to back on every port),
opens it with `host.link.dma.DmaDevice` and runs the real host stack — `Collector` polling every
port in rounds, `LocalJournal` storing each round's batches with one fsync before the round's
acknowledges (doorbells) — until `--entries` entries are durable. Then the same host stack over
the serial link at its best line rate (a byte per clock cycle each way: baud = 10 × clock) until
`--serial-entries` are durable, for the comparison. Both boards have the same `--depth` entries
per port ring (default 64, as the demo's board: a port can have at most its ring's depth of
entries unacknowledged, so the depth bounds a round's batch on either link; one depth for both
keeps the comparison fair). Prints, last:

    dma: entries=N bus_util=U host_entries_per_s=H

`entries` = the entries the journal stored (at least `--entries`: the last round may take more);
`bus_util` = the DMA master's memory-write beats ÷ the cycles it had an entry to write
(`dma_beats` / `dma_busy_cycles` from the harness's exit line: data beats per cycle while
draining); `host_entries_per_s` = entries made durable per wall second, from the first round
that stored an entry to the last entry stored (board start-up and DPLL lock not counted), on
either link. The line before it gives the serial link's rate measured the same way and the
ratio. Both links are bound by the simulated board: the serial link by its byte per cycle, the
DMA link by its memory writes (one 64-bit beat per cycle, ~70 cycles per 512-byte entry), which
the host keeps busy by taking what has arrived in its rings without waiting for entries still
on their way.
"""

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from boards.sim import SIM_BOARD  # noqa: E402
from host.journal.collector import Collector  # noqa: E402
from host.journal.store import LocalJournal  # noqa: E402
from host.link.device import Device  # noqa: E402
from host.link.dma import DmaDevice  # noqa: E402
from sim.vboard import VirtualBoard, build  # noqa: E402

DEPTH = 64                      # entries per port ring on both boards, as the demo's board


def collect(dev, folder: Path, entries: int, timeout: float) -> tuple[int, float]:
    """Poll every port into a new journal until at least `entries` are durable; the entries
    stored (a round can take more than were asked for) and the entries per second."""
    ident = dev.identity
    journal = LocalJournal.create(folder, block_bytes=ident.block_bytes, ports=ident.ports, mode=ident.mode,
                                  window_ns=10**8)
    collector = Collector(journal, dev, deadline_s=timeout)
    started = time.monotonic()
    first = 0
    while not first:                        # the board starts, its DPLLs lock: not counted
        if time.monotonic() - started > timeout:
            raise SystemExit(f"timeout: no entry in {timeout} s")
        first = sum(poll.entries for poll in collector.poll())
    stored, started = first, time.monotonic()
    while stored < entries:                 # from the rounds. results: no join of the index each round
        if time.monotonic() - started > timeout:
            raise SystemExit(f"timeout: {stored} entries in {timeout} s")
        stored += sum(poll.entries for poll in collector.poll())
    rate = (stored - first) / (time.monotonic() - started)
    journal.close()
    return stored, rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=20000, help="entries to collect over DMA")
    parser.add_argument("--serial-entries", type=int, default=2000, help="entries to collect over serial")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--depth", type=int, default=DEPTH,
                        help="entries per port's partial-journal ring, both boards (a new depth builds both)")
    parser.add_argument("--timeout", type=float, default=600, help="wall seconds before giving up")
    args = parser.parse_args()

    serial_board = dataclasses.replace(SIM_BOARD, depth=args.depth)
    dma_board = dataclasses.replace(serial_board, link="dma")
    started = time.monotonic()
    dma_binary, serial_binary = build(dma_board), build(serial_board)
    print(f"harnesses ready in {time.monotonic() - started:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        board = VirtualBoard(tmp / "volume.img", config=dma_board, binary=dma_binary, blocks=4096, rate=-1,
                             seed=args.seed, report_ms=2000, host_mem=tmp / "host-mem.bin")
        with board:
            with DmaDevice.open(board.host_mem) as dev:
                dma_stored, dma_rate = collect(dev, tmp / "dma-journal", args.entries, args.timeout)
                counters = dev.link_counters()
        end = board.exit or board.status
        beats, busy = int(end["dma_beats"]), int(end["dma_busy_cycles"])
        print(f"dma: {beats} memory-write beats in {busy} busy cycles of {end['cycles']}; host {counters}")

        baud = SIM_BOARD.clock_hz * 10
        board = VirtualBoard(tmp / "volume2.img", config=serial_board, binary=serial_binary, blocks=4096,
                             rate=-1, seed=args.seed, baud=baud, report_ms=2000)
        with board:
            dev = Device.open(board.tty, timeout=0.2, flush_timeout=0.5, tries=8)
            try:
                serial_stored, serial_rate = collect(dev, tmp / "serial-journal", args.serial_entries,
                                                     args.timeout)
            finally:
                dev.close()
    print(f"serial: baud={baud:.0f} entries={serial_stored} host_entries_per_s={serial_rate:.0f}; "
          f"dma/serial={dma_rate / serial_rate:.1f}")
    print(f"dma: entries={dma_stored} bus_util={beats / busy:.3f} host_entries_per_s={dma_rate:.0f}")


if __name__ == "__main__":
    main()
