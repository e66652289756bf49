"""Rule unit tests: the compact series notation, test-file validation, running and diffing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from polymarket_kafka.replay.ruletest import (
    DEFAULT_START,
    RuleTestCase,
    RuleTestError,
    format_case,
    load_rule_tests,
    parse_rule_tests,
    parse_series,
    run_case,
)
from polymarket_kafka.ruleset import RuleSet, load_rules_text

# Fixed parameters, so these tests do not move when rules/default.yaml is retuned.
RULES = load_rules_text(
    """
version: 1
defaults:
  window: 1h
  move: {abs: 0.05, log_odds: 2.0, floor: 0.02}
  cooldown: 10m
  hysteresis: 0
  confirm: {polls: 2, for: 0s, retain: 0.5, ramp: 0}
  volatility: {z: 0}
""",
    "test-rules.yaml",
)


def _parse(text: str) -> list[object]:
    return list(parse_rule_tests(text, Path("/tests/t.yaml")).cases)


# --- series notation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("0.5", (0.5,)),
        ("0.5x3", (0.5, 0.5, 0.5, 0.5)),
        ("0.4+0.05x4", (0.4, 0.45, 0.5, 0.55, 0.6)),
        ("0.6-0.1x2", (0.6, 0.5, 0.4)),
        ("_ 0.5 _x2", (None, 0.5, None, None)),
        (".5 1 0", (0.5, 1.0, 0.0)),
        ("0.5x0", (0.5,)),
        ("  0.1\n0.2\t0.3 ", (0.1, 0.2, 0.3)),
    ],
)
def test_series_notation_expands_like_promtool(text: str, values: tuple[float | None]) -> None:
    assert parse_series(text) == values


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.5 abc", "token 2 'abc' is not a value"),
        ("0.5 1.2", "token 2 '1.2' reaches 1.2, outside [0, 1]"),
        ("0.9+0.05x3", "token 1 '0.9+0.05x3' reaches 1.05, outside [0, 1]"),
        ("0.1-0.05x3", "reaches -0.05"),
        ("0.4+0.1", "a step needs a count"),
        ("_x3 _", "series has no value"),
        ("", "series has no value"),
        ("-0.5", "is not a value"),
    ],
)
def test_series_notation_errors_say_which_token(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("+", r"\+")):
        parse_series(text)


@given(
    start=st.integers(min_value=0, max_value=50),
    step=st.integers(min_value=-5, max_value=5),
    count=st.integers(min_value=0, max_value=10),
)
def test_steps_give_count_plus_one_evenly_spaced_values(start: int, step: int, count: int) -> None:
    first, delta = start / 100, abs(step) / 100
    end = first + count * step / 100
    assume(0 <= end <= 1)
    sign = "-" if step < 0 else "+"
    values = parse_series(f"{first}{sign}{delta}x{count}")
    assert len(values) == count + 1
    assert values[0] == first
    assert values[-1] == pytest.approx(end)


# --- file validation -----------------------------------------------------------------------

VALID = """
rule_files: [../rules.yaml]
evaluation_interval: 5m
tests:
  - name: up
    markets:
      m:
        category: Politics
        tags: [Elections]
        liquidity: 1000
        start: 2024-11-05T20:00:00Z
        series: 0.40x3 0.60x3
      slow:
        interval: 1h
        series: 0.5 _ 0.5
    expected_events:
      - {market: m, at: 25m, direction: toward_yes, severity: minor, rule: conviction_move}
      - {market: m, at: 2024-11-05T20:30:00Z, direction: toward_yes}
      - {market: slow, at: 2h, direction: toward_no}
"""


def test_a_valid_file_resolves_times_intervals_and_rule_files() -> None:
    parsed = parse_rule_tests(VALID, Path("/suite/tests/t.yaml"))
    assert parsed.rule_file == Path("/suite/rules.yaml")
    (case,) = parsed.cases
    market = case.markets["m"]
    assert market.start == datetime(2024, 11, 5, 20, tzinfo=UTC)
    assert (market.category, market.tags, market.liquidity) == ("Politics", ("Elections",), 1000)
    assert case.market_interval("m") == 300.0
    assert case.market_interval("slow") == 3600.0
    first, second, third = case.expected
    assert (first.at, first.offset, first.severity) == (
        datetime(2024, 11, 5, 20, 25, tzinfo=UTC),
        timedelta(minutes=25),
        "minor",
    )
    assert second.at == datetime(2024, 11, 5, 20, 30, tzinfo=UTC)
    assert third.at == DEFAULT_START + timedelta(hours=2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- 1", "/tests/t.yaml: expected a mapping with a 'tests' list"),
        ("tests: [", "/tests/t.yaml: not valid YAML"),
        ("tests: []", "/tests/t.yaml: tests: "),  # pydantic's words follow each key
        ("tests: [{}]\nextra: 1", "/tests/t.yaml: extra: "),
        (
            "evaluation_interval: 60\ntests: [{}]",
            "/tests/t.yaml: evaluation_interval: use a duration like 15m",
        ),
        (
            "rule_files: [a.yaml, b.yaml]\ntests: [{}]",
            "/tests/t.yaml: rule_files: ",
        ),
    ],
)
def test_file_level_errors(text: str, message: str) -> None:
    with pytest.raises(RuleTestError) as caught:
        _parse(text)
    assert message in str(caught.value)


CASE_ERRORS = [
    (
        "markets: {m: {series: 0.5x3, colour: red}}\n    expected_events: []",
        "test 'bad': markets.m.colour: ",  # pydantic's words follow each key
    ),
    (
        "markets: {m: {series: 0.5 zz}}\n    expected_events: []",
        "test 'bad': markets.m.series: token 2 'zz' is not a value",
    ),
    (
        "markets: {m: {series: 0.5, interval: 0s}}\n    expected_events: []",
        "test 'bad': markets.m.interval: must be longer than 0s",
    ),
    ("markets: {m: {series: 0.5x3}}", "test 'bad': expected_events: "),
    (
        "markets: {}\n    expected_events: []",
        "test 'bad': markets: ",
    ),
    (
        "markets: {m: {series: 0.5x3}}\n    expected_events: [{market: n, at: 1m, "
        "direction: toward_yes}]",
        "test 'bad': expected_events.0.market: unknown market 'n' (markets: m)",
    ),
    (
        "markets: {m: {series: 0.5x3}}\n    expected_events: [{market: m, at: 1x, "
        "direction: toward_yes}]",
        "test 'bad': expected_events.0.at: use a duration like 15m",
    ),
    (
        "markets: {m: {series: 0.5 _ 0.5}}\n    expected_events: [{market: m, at: 1m, "
        "direction: toward_yes}]",
        "expected_events.0.at: +1m (2024-01-01T00:01:00Z) is not a poll of market 'm' "
        "(polls every 1m from 2024-01-01T00:00:00Z",
    ),
    (
        "markets: {m: {series: 0.5x3}}\n    expected_events: [{market: m, at: 90s, "
        "direction: toward_yes}]",
        "is not a poll of market 'm'",
    ),
    (
        "markets: {m: {series: 0.5x3}}\n    expected_events: [{market: m, at: 1m, direction: up}]",
        "test 'bad': expected_events.0.direction: ",
    ),
    (
        "markets: {a: {series: 0.5, condition_id: x}, b: {series: 0.5, condition_id: x}}\n"
        "    expected_events: []",
        "test 'bad': markets: two markets share a condition id",
    ),
]


@pytest.mark.parametrize(("body", "message"), CASE_ERRORS)
def test_case_errors_name_the_file_the_test_and_the_key(body: str, message: str) -> None:
    text = f"tests:\n  - name: bad\n    {body}\n"
    with pytest.raises(RuleTestError) as caught:
        _parse(text)
    assert str(caught.value).startswith("/tests/t.yaml: ")
    assert message in str(caught.value)


def test_every_invalid_test_is_reported_and_unnamed_ones_by_index() -> None:
    text = """
tests:
  - name: ok
    markets: {m: {series: 0.5}}
    expected_events: []
  - markets: {m: {series: 0.5}}
    expected_events: []
  - name: ok
    markets: {m: {series: 0.5}}
    expected_events: []
  - name: broken
    markets: {m: {series: 2}}
    expected_events: []
"""
    with pytest.raises(RuleTestError) as caught:
        _parse(text)
    first, *rest = str(caught.value).splitlines()
    assert first.startswith("/tests/t.yaml: tests[1]: name: ")  # then pydantic's words
    assert rest == [
        "/tests/t.yaml: test 'ok': duplicate test name",
        "/tests/t.yaml: test 'broken': markets.m.series: token 1 '2' reaches 2, outside [0, 1]",
    ]


def test_load_rule_tests_reports_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(RuleTestError, match=r"absent\.yaml: cannot read"):
        load_rule_tests(tmp_path / "absent.yaml")


# --- running -------------------------------------------------------------------------------

RUN = """
tests:
  - name: moves
    markets:
      up: {series: 0.40x5 0.50x10}
      down: {series: 0.60x5 0.50x10, condition_id: "0xdown"}
      calm: {series: 0.50 0.52 0.50x10}
    expected_events:
      - {market: up, at: 7m, direction: toward_yes, severity: major}
      - {market: down, at: 7m, direction: toward_no}
"""


def test_a_passing_case_matches_every_event_exactly() -> None:
    (case,) = parse_rule_tests(RUN, Path("t.yaml")).cases
    result = run_case(case, RULES)
    assert result.passed
    assert result.matched == 2
    assert format_case(result) == ["  PASS moves"]


def test_a_failing_case_shows_missing_and_unexpected_events() -> None:
    text = RUN.replace(
        "at: 7m, direction: toward_yes, severity: major", "at: 8m, direction: toward_yes"
    )
    text = text.replace("direction: toward_no}", "direction: toward_no, severity: extreme}")
    (case,) = parse_rule_tests(text, Path("t.yaml")).cases
    result = run_case(case, RULES)
    assert not result.passed
    assert [(e.market, e.offset) for e in result.missing] == [
        ("up", timedelta(minutes=8)),
        ("down", timedelta(minutes=7)),
    ]
    assert sorted(o.market for o in result.unexpected) == ["down", "up"]
    lines = format_case(result)
    assert lines[0] == "  FAIL moves"
    assert "    missing:    up at +8m (2024-01-01T00:08:00Z) toward_yes" in lines
    assert "    missing:    down at +7m (2024-01-01T00:07:00Z) toward_no severity=extreme" in lines
    assert (
        "    unexpected: up at +7m (2024-01-01T00:07:00Z) toward_yes severity=major "
        "rule=conviction_move 0.4 -> 0.5 (from 2024-01-01T00:00:00Z)"
    ) in lines


def test_silence_is_asserted_by_an_empty_expectation() -> None:
    text = """
tests:
  - name: glitch
    markets: {m: {series: 0.50x5 0.80 0.50x5}}
    expected_events: []
  - name: not a glitch
    markets: {m: {series: 0.50x5 0.80x5}}
    expected_events: []
"""
    glitch, move = parse_rule_tests(text, Path("t.yaml")).cases
    assert run_case(glitch, RULES).passed
    result = run_case(move, RULES)
    assert not result.passed
    assert [o.offset for o in result.unexpected] == [timedelta(minutes=7)]


def test_market_attributes_reach_the_rules() -> None:
    rules = load_rules_text(
        """
version: 1
defaults: {move: {abs: 0.05, log_odds: 2.0}}
tiers:
  by: liquidity
  bands: {thin: {below: 10000, enabled: false}}
categories:
  crypto: {move: {abs: 0.30}}
markets:
  "0xmuted": {enabled: false}
""",
        "layers.yaml",
    )
    text = """
tests:
  - name: layers
    markets:
      plain: {series: 0.40x3 0.50x3}
      thin: {series: 0.40x3 0.50x3, liquidity: 500}
      crypto: {series: 0.40x3 0.50x3, tags: [Crypto]}
      muted: {series: 0.40x3 0.50x3, condition_id: "0xmuted"}
      wide: {series: 0.40x3 0.50x3, spread: 0.5}
    expected_events:
      - {market: plain, at: 5m, direction: toward_yes}
"""
    (case,) = parse_rule_tests(text, Path("t.yaml")).cases
    result = run_case(case, rules)
    assert result.passed, format_case(result)


def test_builtin_rules_run_too() -> None:
    (case,) = parse_rule_tests(
        "tests: [{name: x, markets: {m: {series: 0.5x30}}, expected_events: []}]", Path("t.yaml")
    ).cases
    assert run_case(case, RuleSet.builtin()).passed


# --- warm-up -------------------------------------------------------------------------------

WARM_UP = """
warm_up: 3d
tests:
  - name: w
    markets:
      known:
        series: 0.50x10 0.56x10
      new:
        warm_up: 0s
        series: 0.50x10 0.56x10
    expected_events:
      - {market: known, at: 12m, direction: toward_yes}
"""


def test_warm_up_is_read_at_file_and_market_level() -> None:
    (case,) = parse_rule_tests(WARM_UP, Path("t.yaml")).cases
    assert case.warm_up == 3 * 86400.0
    assert case.market_warm_up("known") == 3 * 86400.0
    assert case.market_warm_up("new") == 0.0
    (plain,) = _parse("tests: [{name: x, markets: {m: {series: 0.5}}, expected_events: []}]")
    assert isinstance(plain, RuleTestCase) and plain.market_warm_up("m") == 0.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("warm_up: 3\ntests: [{}]", "/tests/t.yaml: warm_up: use a duration like 15m"),
        (
            "tests: [{name: x, markets: {m: {warm_up: 1, series: 0.5}}, expected_events: []}]",
            "markets.m.warm_up: use a duration like 15m",
        ),
    ],
)
def test_warm_up_must_be_a_duration(text: str, message: str) -> None:
    with pytest.raises(RuleTestError) as caught:
        _parse(text)
    assert message in str(caught.value)


def test_a_warmed_up_market_is_judged_as_a_known_one() -> None:
    """Under the built-in volatility test, 6 points in a minute fire on a market that traded
    flat for 3 days, and not on one seen for the first time (its prior volatility)."""
    (case,) = parse_rule_tests(WARM_UP, Path("t.yaml")).cases
    result = run_case(case, RuleSet.builtin())
    assert result.passed, format_case(result)
    without = parse_rule_tests(WARM_UP.replace("warm_up: 3d", "warm_up: 0s"), Path("t.yaml"))
    failed = run_case(without.cases[0], RuleSet.builtin())
    assert [m.market for m in failed.missing] == ["known"] and not failed.unexpected
