from __future__ import annotations

import pytest

from unlinkwatch.timeparse import parse_duration_ns, parse_time_ns

NOW = 1_714_557_600 * 10**9 + 123  # 2024-05-01T10:00:00Z


@pytest.mark.parametrize(("text", "ns"), [("30d", 30 * 86400 * 10**9), ("2h", 7200 * 10**9), ("15m", 900 * 10**9),
                                           ("90s", 90 * 10**9), ("1h30m", 5400 * 10**9), ("1.5h", 5400 * 10**9),
                                           ("250ms", 250 * 10**6), ("1w", 7 * 86400 * 10**9)])
def test_durations_parse_to_nanoseconds(text: str, ns: int) -> None:
    assert parse_duration_ns(text) == ns


@pytest.mark.parametrize("text", ["", "30", "d", "2x", "2h junk", "-5m"])
def test_malformed_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration_ns(text)


def test_a_duration_as_time_means_that_long_ago() -> None:
    assert parse_time_ns("2h", NOW) == NOW - 7200 * 10**9


def test_rfc3339_times_with_zone_offsets_parse_to_utc() -> None:
    assert parse_time_ns("2024-05-01T10:00:00Z", NOW) == 1_714_557_600 * 10**9
    assert parse_time_ns("2024-05-01T12:00:00+02:00", NOW) == 1_714_557_600 * 10**9
    assert parse_time_ns("2024-05-01T10:00:00.5Z", NOW) == 1_714_557_600 * 10**9 + 500_000_000


def test_a_time_of_day_means_today_in_utc() -> None:
    assert parse_time_ns("09:30", NOW) == 1_714_557_600 * 10**9 - 1800 * 10**9
    assert parse_time_ns("2024-05-01", NOW) == 1_714_521_600 * 10**9
    assert parse_time_ns("@1714557600", NOW) == 1_714_557_600 * 10**9


@pytest.mark.parametrize("text", ["yesterday", "25:00", "2024-13-01T00:00:00Z", "10:00pm"])
def test_unparseable_times_are_refused_with_a_readable_message(text: str) -> None:
    with pytest.raises(ValueError, match="not a"):
        parse_time_ns(text, NOW)
