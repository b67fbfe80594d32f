"""Durations (30d, 2h, 15m, 1h30m) and points in time for --since/--until/--retention, as nanoseconds."""

from __future__ import annotations

import calendar
import re
import time

from unlinkwatch.eventjson import parse_rfc3339_ns

NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000,
      "h": 3_600_000_000_000, "d": 86_400_000_000_000, "w": 7 * 86_400_000_000_000}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h|d|w)")


def parse_duration_ns(s: str) -> int:
    """`30d`, `2h`, `15m`, `90s`, `1h30m`, `1.5h` -> nanoseconds; ValueError with a readable message otherwise."""
    raw = s.strip().lower()
    pos, total = 0, 0.0
    for m in _PART.finditer(raw):
        if m.start() != pos:
            break
        total += float(m[1]) * NS[m[2]]
        pos = m.end()
    if not raw or pos != len(raw):
        raise ValueError(f"not a duration: {s!r} (use e.g. 30d, 2h, 15m, 90s)")
    return int(total)


def parse_time_ns(s: str, now_ns: int | None = None) -> int:
    """A point in time: a duration ago (`2h`), RFC 3339 (`2024-05-01T10:00:00Z`), a date (`2024-05-01`),
    a UTC time of day today (`10:00`, `10:00:30`), or unix seconds (`@1714557600`)."""
    now = time.time_ns() if now_ns is None else now_ns
    raw = s.strip()
    if raw.startswith("@") and re.fullmatch(r"@\d+(\.\d+)?", raw):
        return int(float(raw[1:]) * 1_000_000_000)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
        return calendar.timegm(time.strptime(raw, "%Y-%m-%d")) * 1_000_000_000
    m = re.fullmatch(r"(\d{1,2}):(\d{2})(?::(\d{2}))?", raw)
    if m:
        hh, mm, ss = int(m[1]), int(m[2]), int(m[3] or 0)
        if hh > 23 or mm > 59 or ss > 59:
            raise ValueError(f"not a time of day: {s!r}")
        day = now // 86_400_000_000_000 * 86_400_000_000_000
        return day + (hh * 3600 + mm * 60 + ss) * 1_000_000_000
    if re.match(r"\d{4}-\d{2}-\d{2}[T ]", raw):
        try:
            return parse_rfc3339_ns(raw)
        except ValueError:
            raise ValueError(f"not an RFC 3339 time: {s!r}") from None
    try:
        return now - parse_duration_ns(raw)
    except ValueError:
        raise ValueError(f"not a time or duration: {s!r} (use e.g. 2h, 10:00, 2024-05-01T10:00:00Z)") from None
