"""Journal port throughput: ingress and flush utilisation at the default 512 B block, 64-bit path.

One run of 256 back-to-back redo writes into a 64-entry ring while the flush engine drains them
(watermark 1) and the host acknowledges each entry as it arrives: ingress and flush work at the
same time, as in service. Primary storage and the sink are always ready; each write completes
the cycle after its last beat. `ingress_util` is accepted data beats per cycle from the first
data beat to the last; `flush_util` is flush beats per cycle from the first to the last. Cocotb
drives the Verilator model; Python only watches valid/ready, so the figures are cycle counts of
the gateware.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim.image import build_image  # noqa: E402
from sim.port_top import CountedPort  # noqa: E402

BLOCK, WIDTH, WRITES, DEPTH = 512, 64, 256, 64


def main():
    image = build_image("journal_port_bench", lambda: CountedPort(block_bytes=BLOCK, datapath_bits=WIDTH,
                                                                  depth=DEPTH))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        image.run("port_tb", test_dir=Path(tmp), extra_env={
            "PORT_BLOCK": str(BLOCK), "PORT_WRITES": str(WRITES), "PORT_BENCH_OUT": str(out)})
        r = json.loads(out.read_text())
    assert r["written"] == WRITES and r["flush_beats"] == WRITES * (32 + BLOCK + 8) * 8 // WIDTH, r
    ingress = r["data_beats"] / r["ingress_cycles"]
    flush = r["flush_beats"] / r["flush_cycles"]
    print(f"ingress: {r['data_beats']} data beats in {r['ingress_cycles']} cycles "
          f"({r['stall_cycles']} ring-full stall cycles); "
          f"flush: {r['flush_beats']} beats in {r['flush_cycles']} cycles, concurrently")
    print(f"port: block_bytes={BLOCK} datapath_bits={WIDTH} writes={WRITES} "
          f"ingress_util={ingress:.3f} flush_util={flush:.3f}")


if __name__ == "__main__":
    os.environ.setdefault("COCOTB_LOG_LEVEL", "WARNING")
    main()
