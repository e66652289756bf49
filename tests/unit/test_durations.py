"""Duration strings of the rules file: parse, format, round-trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from polymarket_kafka.ruleset.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0s", 0.0),
        ("90s", 90.0),
        ("15m", 900.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        ("1d2h3m4s", 93784.0),
        ("90m", 5400.0),
    ],
)
def test_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["15", "0", "1.5", "-3"])
def test_bare_number_is_refused_with_a_hint(text: str) -> None:
    with pytest.raises(ValueError, match=r"use a duration like 15m.*bare number"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["", "m", "1w", "30m1h", "1h1h", "1.5h", "-1h", "1 h", "1H"])
def test_malformed_is_refused_naming_the_syntax(text: str) -> None:
    with pytest.raises(ValueError, match=r"units are d, h, m, s, in that order"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (90, "1m30s"), (3600, "1h"), (5400, "1h30m"), (86400 + 1, "1d1s"), (90.5, "90.5s")],
)
def test_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [-1.0, float("inf"), float("nan")])
def test_format_of_impossible_values_still_shows_them(seconds: float) -> None:
    assert format_duration(seconds) == f"{seconds}s"


@given(st.integers(min_value=0, max_value=10**8))
def test_whole_seconds_round_trip(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds
