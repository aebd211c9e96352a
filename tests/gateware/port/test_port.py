"""JournalPort pyuvm bench under Verilator: a 64 B-block, 8-entry ring (quick wrap and full),
one shorter run at the default 512 B block, and on the first a directed sweep of an
acknowledge's cycle against the flush engine's entry boundaries. Each image is built once and
cached. The port's event counters are counted by `sim.port_top.CountedPort` around it."""

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


def test_ack_boundary(sim_dir):
    """The flush engine's start against an acknowledge moving `acked` next to an entry boundary
    (`AckBoundaryTest`), on the b64 image; PORT_WRITES sizes its cycle budget (it writes 232)."""
    from sim.image import build_image

    image = build_image("journal_port_b64", lambda: CountedPort(port=3, block_bytes=64, depth=8))
    image.run("testbench", test_dir=sim_dir / "port_ack", seed=20240601, testcase="AckBoundaryTest",
              extra_env={"PORT_BLOCK": "64", "PORT_DEPTH": "8", "PORT_WRITES": "240", "PORT_INDEX": "3"})
