"""The first detector: pure, time passed in; examples and hypothesis properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polymarket_kafka.detection import CLOSED_RULE, DetectionRules, Detector, log_odds
from polymarket_kafka.models import ConvictionDirection, MarketSnapshot

T0 = datetime(2024, 11, 5, 23, 0, tzinfo=UTC)
MARKET = "0xdd22472e552920b8438158ea7238bfadfa4f736aa4cee91a6b86c39ead110917"
RULES = DetectionRules(threshold=0.05, window_seconds=3600, cooldown_seconds=600)


def snap(
    price: float, minutes: float, *, market: str = MARKET, closed: bool = False, **extra: float
) -> MarketSnapshot:
    return MarketSnapshot(
        market_id=market,
        question="q",
        yes_price=price,
        taken_at=T0 + timedelta(minutes=minutes),
        closed=closed,
        **extra,
    )


def feed(
    prices: list[tuple[float, float]],
    rules: DetectionRules = RULES,
    detector: Detector | None = None,
) -> list[tuple[float, float, float]]:
    """Feed (minute, price) pairs; return (minute, baseline, price) of every change."""
    detector = detector or Detector()
    fired = []
    for minute, price in prices:
        s = snap(price, minute)
        for change in detector.observe(s, rules, s.taken_at):
            fired.append((minute, change.baseline_price, change.price))
    return fired


def test_first_poll_sets_baseline_and_emits_nothing() -> None:
    assert feed([(0, 0.2)]) == []


def test_small_move_does_not_fire() -> None:
    assert feed([(0, 0.50), (1, 0.51)]) == []


def test_large_move_fires_with_direction_and_magnitude() -> None:
    detector = Detector()
    detector.observe(snap(0.50, 0), RULES, T0)
    changes = detector.observe(snap(0.65, 5), RULES, T0 + timedelta(minutes=5))
    assert len(changes) == 1
    change = changes[0]
    assert change.direction is ConvictionDirection.TOWARD_YES
    assert change.baseline_price == 0.50 and change.price == 0.65
    assert change.price_change == pytest.approx(0.15)
    assert change.log_odds_change == pytest.approx(log_odds(0.65) - log_odds(0.50))
    assert change.window_seconds == 300
    assert change.rule == "conviction_move" and not change.final


def test_threshold_is_inclusive_despite_float_noise() -> None:
    # 0.60 - 0.55 is 0.04999999999999993 in floats: still a 5-point move.
    assert feed([(0, 0.55), (1, 0.60)]) == [(1, 0.55, 0.60)]


def test_move_down_is_toward_no() -> None:
    detector = Detector()
    detector.observe(snap(0.625, 0), RULES, T0)
    (change,) = detector.observe(snap(0.38, 30), RULES, T0 + timedelta(minutes=30))
    assert change.direction is ConvictionDirection.TOWARD_NO
    assert change.price_change == pytest.approx(-0.245)


def test_no_repeat_while_price_stays_put() -> None:
    fired = feed([(0, 0.50), (5, 0.60), (20, 0.60), (40, 0.60), (80, 0.60), (200, 0.60)])
    assert fired == [(5, 0.50, 0.60)]


def test_reference_moves_to_emitted_price() -> None:
    # After firing at 0.60 the next event needs 0.65, not another 0.55.
    fired = feed([(0, 0.50), (5, 0.60), (20, 0.63), (30, 0.65)])
    assert fired == [(5, 0.50, 0.60), (30, 0.60, 0.65)]


def test_cooldown_suppresses_oscillation_around_threshold() -> None:
    prices = [(0, 0.50), (1, 0.55), (2, 0.50), (3, 0.55), (4, 0.50), (5, 0.55), (6, 0.50)]
    assert feed(prices) == [(1, 0.50, 0.55)]


def test_move_persisting_past_cooldown_fires_once() -> None:
    prices = [(0, 0.50), (1, 0.60), (2, 0.70), (5, 0.70), (12, 0.70), (13, 0.70)]
    assert feed(prices) == [(1, 0.50, 0.60), (12, 0.60, 0.70)]


def test_slow_drift_within_window_does_not_fire() -> None:
    # +1 point per hour for ten hours: never 5 points within one hour.
    prices = [(60 * i, 0.40 + 0.01 * i) for i in range(11)]
    assert feed(prices) == []


def test_move_within_window_measured_from_farthest_point() -> None:
    prices = [(0, 0.50), (10, 0.47), (20, 0.49), (30, 0.52)]
    assert feed(prices) == [(30, 0.47, 0.52)]


def test_gap_longer_than_window_resets_baseline() -> None:
    assert feed([(0, 0.40), (61 + 60, 0.70)]) == []
    assert feed([(0, 0.40), (61 + 60, 0.70), (125, 0.76)]) == [(125, 0.70, 0.76)]


def test_repeated_or_older_snapshot_is_ignored() -> None:
    detector = Detector()
    detector.observe(snap(0.50, 0), RULES, T0)
    s = snap(0.70, 5)
    assert len(detector.observe(s, RULES, s.taken_at)) == 1
    assert detector.observe(s, RULES, s.taken_at) == []
    assert detector.observe(snap(0.20, 3), RULES, s.taken_at) == []


def test_closed_market_emits_one_final_event_and_is_dropped() -> None:
    detector = Detector()
    detector.observe(snap(0.58, 0), RULES, T0)
    detector.observe(snap(0.60, 60), RULES, T0)
    closed = snap(1.0, 120, closed=True)
    (change,) = detector.observe(closed, RULES, closed.taken_at)
    assert change.final and change.rule == CLOSED_RULE
    assert change.direction is ConvictionDirection.TOWARD_YES
    assert change.baseline_price == 0.58
    assert MARKET not in detector.tracked() and detector.is_closed(MARKET)
    assert detector.observe(snap(1.0, 130, closed=True), RULES, T0) == []
    assert detector.observe(snap(0.3, 140), RULES, T0) == []


def test_market_closed_when_first_seen_emits_nothing() -> None:
    detector = Detector()
    assert detector.observe(snap(0.0, 0, closed=True), RULES, T0) == []
    assert detector.is_closed(MARKET)


def test_final_event_without_move_takes_direction_from_resolution() -> None:
    detector = Detector()
    detector.observe(snap(0.0, 0), RULES, T0)
    (change,) = detector.observe(snap(0.0, 10, closed=True), RULES, T0)
    assert change.direction is ConvictionDirection.TOWARD_NO and change.price_change == 0


def test_forget_starts_afresh() -> None:
    detector = Detector()
    detector.observe(snap(0.5, 0, closed=False), RULES, T0)
    detector.forget(MARKET)
    assert detector.tracked() == frozenset()
    assert detector.observe(snap(0.9, 1), RULES, T0) == []


def test_per_market_overrides_from_snapshot() -> None:
    detector = Detector()
    detector.observe(snap(0.50, 0, threshold=0.2), RULES, T0)
    assert detector.observe(snap(0.65, 1, threshold=0.2), RULES, T0) == []
    assert len(detector.observe(snap(0.71, 2, threshold=0.2), RULES, T0)) == 1
    effective = RULES.for_snapshot(snap(0.5, 0, window_seconds=60, cooldown_seconds=0))
    assert effective.window_seconds == 60 and effective.cooldown_seconds == 0
    assert effective.threshold == RULES.threshold


def test_markets_are_independent() -> None:
    other = "0xc6485bb7ea46d7bb89beb9c91e7572ecfc72a6273789496f78bc5e989e4d1638"
    detector = Detector()
    detector.observe(snap(0.5, 0), RULES, T0)
    detector.observe(snap(0.5, 0, market=other), RULES, T0)
    assert detector.observe(snap(0.9, 1, market=other), RULES, T0)[0].market_id == other
    assert detector.tracked() == {MARKET, other}


@pytest.mark.parametrize(
    "kwargs",
    [{"threshold": 0}, {"threshold": 1.5}, {"window_seconds": 0}, {"cooldown_seconds": -1}],
)
def test_invalid_rules_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        DetectionRules(**kwargs)


def test_log_odds_is_finite_at_the_edges() -> None:
    assert log_odds(0.0) == pytest.approx(log_odds(0.001))
    assert log_odds(1.0) == pytest.approx(-log_odds(0.0))
    assert log_odds(0.5) == 0.0


# --- properties ------------------------------------------------------------------------

ticks = st.integers(min_value=0, max_value=1000).map(lambda t: t / 1000)
steps = st.integers(min_value=1, max_value=30)
series = st.lists(st.tuples(steps, ticks), min_size=1, max_size=60)


def timeline(raw: list[tuple[int, float]]) -> list[tuple[float, float]]:
    minute, out = 0.0, []
    for step, price in raw:
        minute += step
        out.append((minute, price))
    return out


@settings(max_examples=200, deadline=None)
@given(start=ticks, raw=st.lists(st.tuples(steps, st.integers(-49, 49)), max_size=60))
def test_series_that_never_moves_threshold_never_fires(
    start: float, raw: list[tuple[int, int]]
) -> None:
    # Every price lies in the band [low, low + 0.049]: no two prices differ by 5 points.
    low = min(max(start, 0.0), 0.951)
    prices = [(0.0, low)]
    minute = 0.0
    for step, offset in raw:
        minute += step
        prices.append((minute, round(low + abs(offset) / 1000, 3)))
    assert feed(prices) == []


@settings(max_examples=200, deadline=None)
@given(raw=series)
def test_mirroring_prices_mirrors_directions(raw: list[tuple[int, float]]) -> None:
    prices = timeline(raw)
    mirrored = [(m, round(1 - p, 3)) for m, p in prices]
    d1, d2 = Detector(), Detector()
    out1, out2 = [], []
    for (m, p), (_, q) in zip(prices, mirrored, strict=True):
        a, b = snap(p, m), snap(q, m)
        out1 += d1.observe(a, RULES, a.taken_at)
        out2 += d2.observe(b, RULES, b.taken_at)
    assert [c.observed_at for c in out1] == [c.observed_at for c in out2]
    assert [c.direction.mirrored() for c in out1] == [c.direction for c in out2]
    assert [c.price_change for c in out1] == [-c.price_change for c in out2]


@settings(max_examples=200, deadline=None)
@given(raw=series)
def test_repeating_each_snapshot_never_fires_twice(raw: list[tuple[int, float]]) -> None:
    once, twice = Detector(), Detector()
    out_once, out_twice = [], []
    for m, p in timeline(raw):
        s = snap(p, m)
        out_once += once.observe(s, RULES, s.taken_at)
        out_twice += twice.observe(s, RULES, s.taken_at)
        out_twice += twice.observe(s, RULES, s.taken_at)
    assert out_once == out_twice


@settings(max_examples=200, deadline=None)
@given(raw=series)
def test_every_change_meets_threshold_within_window(raw: list[tuple[int, float]]) -> None:
    detector = Detector()
    last_event_at = None
    for m, p in timeline(raw):
        s = snap(p, m)
        for change in detector.observe(s, RULES, s.taken_at):
            assert abs(change.price_change) >= RULES.threshold - 1e-9
            assert change.window_seconds <= RULES.window_seconds
            if last_event_at is not None:
                gap = (change.observed_at - last_event_at).total_seconds()
                assert gap >= RULES.cooldown_seconds
            last_event_at = change.observed_at
