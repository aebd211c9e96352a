"""Shared fixtures: simulation images are built once per session (and cached across sessions);
a NATS cluster for the replicated journal's tests, started once per session."""

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
