"""Which store a journal location names: `nats://…/VOLUME` is a JetStream volume, anything else
a local folder (the default). The CLI's -j/--journal and the collector open journals here."""

from pathlib import Path

from .jetstream import JetStreamJournal, is_journal_url
from .primary import JournalError, PrimaryJournal
from .store import LocalJournal

Location = Path | str     # a folder, or a JetStream URL


def location(text: str) -> Location:
    """The location a command-line value names (a URL stays text: a Path would fold its '//')."""
    return text if is_journal_url(text) else Path(text)


def is_local(where: Location) -> bool:
    return not is_journal_url(where)


def open_journal(where: Location, **kwargs) -> PrimaryJournal:
    """Open the journal at `where`; a local folder takes LocalJournal.open's options, a JetStream
    volume only `readonly`."""
    if is_local(where):
        return LocalJournal.open(Path(where), **kwargs)
    return JetStreamJournal.open(str(where), readonly=kwargs.get("readonly", False))


def create_journal(where: Location, **geometry) -> PrimaryJournal:
    """Create an empty journal at `where` (block_bytes, ports, mode, window_ns)."""
    if is_local(where):
        return LocalJournal.create(Path(where), **geometry)
    return JetStreamJournal.create(str(where), **geometry)


def journal_exists(where: Location) -> bool:
    if is_local(where):
        return (Path(where) / "journal.json").exists()
    try:
        JetStreamJournal.open(str(where)).close()
    except JournalError as exc:
        if "holds no journal" in str(exc):
            return False
        raise
    return True
