"""`--at`: the forms a user may name a point in time with, turned into device time (ns).

Device time is the time base's: nanoseconds since the Unix epoch (the time base broadcasts
Unix time in ms), so wall-clock times convert directly.

| form | example | meaning |
|---|---|---|
| bookmark name | `before-upgrade` | the time stored under that name (`portjournal bookmark`) |
| ISO-8601 | `2026-11-27T18:00:00Z`, `2026-11-27 18:00:00.25+01:00` | that instant (no zone: local) |
| relative | `-5m`, `-90s`, `-1.5h` | that long before the consistency horizon (newest final instant) |
| raw | `1764266400000000000` | device time in ns |

Every form must land in [0, 2**64) ns (1970-01-01 to 2554-07-21 UTC), the range of the
journal's 64-bit timestamps; `parse_at` refuses anything else, so every command shares the bound.
"""

import re
from datetime import UTC, datetime, timedelta

from .journal.primary import PrimaryJournal
from .timefmt import parse_duration

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]*$")
MAX_NS = 2**64 - 1          # the latest device time a journal timestamp can hold
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_at(text: str, journal: PrimaryJournal) -> int:
    """`text` as device time in [0, 2**64) ns; ValueError (saying why) for anything else."""
    at = _parse(text.strip(), journal)
    if not 0 <= at <= MAX_NS:
        raise ValueError(f"{text.strip()!r} is outside device time, which runs from 0 to {MAX_NS} ns "
                         "(1970-01-01 to 2554-07-21 UTC)")
    return at


def _parse(text: str, journal: PrimaryJournal) -> int:
    if text in journal.state.bookmarks:
        return journal.state.bookmarks[text]
    if text.isdigit():
        return int(text)
    if text.startswith("-"):
        try:
            return max(journal.horizon() - parse_duration(text[1:]), 0)
        except ValueError:
            pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        pass
    else:
        try:
            if moment.tzinfo is None:
                moment = moment.astimezone()
            return (moment - _EPOCH) // timedelta(microseconds=1) * 1000     # exact, also before 1970
        except (OverflowError, OSError, ValueError) as exc:
            raise ValueError(f"{text!r} is outside device time (1970-01-01 to 2554-07-21 UTC)") from exc
    known = ", ".join(sorted(journal.state.bookmarks)) or "none yet"
    raise ValueError(f"{text!r} is not a time: give a bookmark name (known: {known}), an ISO-8601 time, "
                     "a time before the horizon like -5m, or device nanoseconds")


def check_bookmark_name(name: str) -> str:
    """Bookmark names must not read as one of the other forms."""
    if not _NAME.match(name) or _looks_like_time(name):
        raise ValueError(f"{name!r} cannot be a bookmark name: use letters, digits and _.:- , "
                         "starting with a letter, and not an ISO-8601 time")
    return name


def _looks_like_time(name: str) -> bool:
    try:
        datetime.fromisoformat(name)
    except ValueError:
        return False
    return True
