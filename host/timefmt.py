"""Reading and writing durations and device times (nanoseconds) for people."""

import re

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


def format_ns(ns: int | None) -> str:
    """A device time or duration in the largest unit that keeps it readable."""
    if ns is None:
        return "-"
    for unit in ("s", "ms", "us"):
        if abs(ns) >= UNITS_NS[unit]:
            return f"{ns / UNITS_NS[unit]:.6g} {unit}"
    return f"{ns} ns"
