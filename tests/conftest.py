"""Shared fixtures: simulation images are built once per session (and cached across sessions);
a NATS cluster for the replicated journal's tests, started once per session; the tests that
wait on the ULX3S bitstream ordered so that only one worker waits for its build."""

import pytest

from sim.nats_cluster import make_cluster


@pytest.fixture(scope="session")
def sim_dir(tmp_path_factory):
    """A folder for cocotb run outputs (results XML, waves) of this session."""
    return tmp_path_factory.mktemp("cocotb")


@pytest.fixture(scope="session")
def nats_cluster(tmp_path_factory):
    """A 3-node NATS cluster with JetStream on free loopback ports, stopped at the session's end."""
    cluster = make_cluster(tmp_path_factory.mktemp("nats")).start()
    yield cluster
    cluster.stop()


def pytest_collection_modifyitems(items):
    """The ULX3S bitstream (`tests/boards`, ~15 min of one core when cold) is built by the first
    test that needs it; the others go last, so the other worker runs the rest of the suite in
    the meantime instead of waiting on the build's lock."""
    waiting = [item for item in items if "ulx3s" in getattr(item, "fixturenames", ())][1:]
    items[:] = [item for item in items if item not in waiting] + waiting
