"""Reading and writing durations and device times (nanoseconds) for people."""

import re
from datetime import UTC, datetime

UNITS_NS = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9,
            "d": 86400 * 10**9}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|ms|s|m|h|d)?\s*$")


def parse_duration(text: str) -> int:
    """'100ms', '1.5s', '2h', '250us' or a bare number of nanoseconds, in ns."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (examples: 250us, 100ms, 30s, 5m, 2h, 1d)")
    value, unit = match.groups()
    return round(float(value) * UNITS_NS[unit or "ns"])


EPOCH_TIMES_FROM = 10**18       # device times past 2001-09-09 are Unix-epoch instants, not durations


def format_ns(ns: int | None) -> str:
    """A device time or duration for people: an instant of the Unix epoch (device time is the
    time base's) in ISO-8601 UTC, anything smaller in the largest unit that keeps it readable."""
    if ns is None:
        return "-"
    if ns >= EPOCH_TIMES_FROM:
        moment = datetime.fromtimestamp(ns // 10**9, UTC)
        return f"{moment:%Y-%m-%dT%H:%M:%S}.{ns % 10**9 // 1000:06d}Z"
    for unit in ("s", "ms", "us"):
        if abs(ns) >= UNITS_NS[unit]:
            return f"{ns / UNITS_NS[unit]:.6g} {unit}"
    return f"{ns} ns"


def time_of_day(ns: int) -> str:
    """A device instant as its UTC time of day (for live displays), anything else as format_ns."""
    text = format_ns(ns)
    return text[11:-1] if ns >= EPOCH_TIMES_FROM else text
