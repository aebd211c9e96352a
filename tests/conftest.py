"""Shared fixtures: simulation images are built once per session (and cached across sessions)."""

import pytest


@pytest.fixture(scope="session")
def sim_dir(tmp_path_factory):
    """A folder for cocotb run outputs (results XML, waves) of this session."""
    return tmp_path_factory.mktemp("cocotb")
