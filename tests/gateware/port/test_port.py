"""JournalPort pyuvm bench under Verilator: a 64 B-block, 8-entry ring (quick wrap and full) and
one shorter run at the default 512 B block. Each image is built once and cached. The port's
event counters are counted by `sim.port_top.CountedPort` around it."""

import pytest

from sim.port_top import CountedPort

RUNS = {
    # name: (block_bytes, depth, writes, tests)
    "b64": (64, 8, 240, "TrafficTest,InvalidateTest"),
    "b512": (512, 8, 48, "TrafficTest"),
}


@pytest.mark.parametrize("run", sorted(RUNS))
def test_pyuvm(run, sim_dir):
    from sim.image import build_image

    block, depth, writes, tests = RUNS[run]
    image = build_image(f"journal_port_{run}",
                        lambda: CountedPort(port=3, block_bytes=block, depth=depth))
    image.run("testbench", test_dir=sim_dir / f"port_{run}", seed=20240601, testcase=tests,
              extra_env={"PORT_BLOCK": str(block), "PORT_DEPTH": str(depth),
                         "PORT_WRITES": str(writes), "PORT_INDEX": "3"})
