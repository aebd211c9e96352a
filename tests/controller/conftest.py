"""Fixtures of the host tests: the primary-journal stores the same tests run against.

`new_journal` is parametrized over the stores: the local folder and JetStream on a 3-node
cluster that this session starts on free loopback ports (`nats_cluster`, tests/conftest.py),
so a test that takes it checks both stores by the same assertions.
"""

import itertools
from pathlib import Path

import pytest

from host.journal.jetstream import JetStreamJournal
from host.journal.store import LocalJournal


class JetStreamMaker:
    """Creates journals on the cluster, one volume per test: a hypothesis test builds a journal
    per example, each in the volume's stream emptied (making a replicated stream takes most of
    a second here, emptying one a few milliseconds)."""

    names = itertools.count()

    def __init__(self, cluster):
        self.url = cluster.journal_url(f"t{next(self.names)}")
        self.used = False

    def __call__(self, folder: Path, **geometry) -> JetStreamJournal:
        if self.used:
            JetStreamJournal.delete(self.url, keep_stream=True)
        self.used = True
        return JetStreamJournal.create(self.url, cache=folder, **geometry)

    def clean(self) -> None:
        if self.used:
            JetStreamJournal.delete(self.url)


@pytest.fixture(params=["local", "jetstream"])
def new_journal(request):
    """A function `(folder, block_bytes=, ports=, mode=, window_ns=)` creating an empty journal."""
    if request.param == "local":
        yield LocalJournal.create
        return
    maker = JetStreamMaker(request.getfixturevalue("nats_cluster"))
    yield maker
    maker.clean()
