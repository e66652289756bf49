"""The rule-driven detector: pure, time passed in; examples and hypothesis properties."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polymarket_kafka.detection import (
    CLOSED_RULE,
    Detector,
    log_odds,
    qualifies,
    severity_of,
)
from polymarket_kafka.detection.window import MarketWindow
from polymarket_kafka.detector_state import MarketState
from polymarket_kafka.models import ConvictionDirection, MarketSnapshot
from polymarket_kafka.ruleset.params import DetectionParams, ResolvedRule, SeverityBand
from tests.factories import MARKET, FixedRules

T0 = datetime(2024, 11, 5, 23, 0, tzinfo=UTC)
#: Plain threshold semantics: fire on the first qualifying poll, no cooldown, no hysteresis,
#: no volatility test (tests/unit/test_detection_volatility.py covers it).
INSTANT = DetectionParams(
    abs_move=0.05,
    log_odds_move=10.0,
    floor=0.0,
    window_seconds=3600,
    confirm_polls=1,
    confirm_ramp=0.0,
    cooldown_seconds=0,
    hysteresis=0.0,
    volatility_z=0.0,
)


def snap(price: float, minutes: float, *, market: str = MARKET, **extra: Any) -> MarketSnapshot:
    return MarketSnapshot(
        market_id=market,
        question="q",
        yes_price=price,
        taken_at=T0 + timedelta(minutes=minutes),
        **extra,
    )


def feed(
    prices: Sequence[tuple[float, float]],
    params: DetectionParams = INSTANT,
    detector: Detector | None = None,
    **extra: Any,
) -> list[tuple[float, float, float]]:
    """Feed (minute, price) pairs; return (minute, baseline, price) of every change."""
    detector = detector if detector is not None else Detector()
    rules = FixedRules(params)
    fired = []
    for minute, price in prices:
        s = snap(price, minute, **extra)
        for change in detector.observe(s, rules, s.taken_at):
            fired.append((minute, change.baseline_price, change.price))
    return fired


# --- qualifying moves --------------------------------------------------------------------


def test_first_poll_sets_baseline_and_emits_nothing() -> None:
    assert feed([(0, 0.2)]) == []


def test_small_move_does_not_fire() -> None:
    assert feed([(0, 0.50), (1, 0.54)]) == []


def test_large_move_fires_with_direction_magnitude_and_rule_identity() -> None:
    detector = Detector()
    rules = FixedRules(INSTANT, version="v1")
    detector.observe(snap(0.50, 0), rules, T0)
    (change,) = detector.observe(snap(0.65, 5), rules, T0 + timedelta(minutes=5))
    assert change.direction is ConvictionDirection.TOWARD_YES
    assert (change.baseline_price, change.price) == (0.50, 0.65)
    assert change.price_change == pytest.approx(0.15)
    assert change.log_odds_change == pytest.approx(log_odds(0.65) - log_odds(0.50))
    assert change.window_seconds == 300
    assert change.rule == "conviction_move" and not change.final
    assert change.severity == "major"
    assert change.resolved is not None and change.resolved.rules_version == "v1"


def test_threshold_is_inclusive_despite_float_noise() -> None:
    # 0.60 - 0.55 is 0.04999999999999993 in floats: still a 5-point move.
    assert feed([(0, 0.55), (1, 0.60)]) == [(1, 0.55, 0.60)]


def test_move_down_is_toward_no() -> None:
    detector = Detector()
    detector.observe(snap(0.625, 0), FixedRules(INSTANT), T0)
    (change,) = detector.observe(snap(0.38, 30), FixedRules(INSTANT), T0)
    assert change.direction is ConvictionDirection.TOWARD_NO
    assert change.price_change == pytest.approx(-0.245)


@pytest.mark.parametrize(
    ("baseline", "price", "fires"),
    [
        (0.02, 0.06, True),  # 4 points, but odds tripled: strong by log-odds
        (0.50, 0.60, True),  # 10 points at the middle: strong by the absolute threshold
        (0.50, 0.53, False),  # 3 points at the middle: neither
        (0.985, 0.995, False),  # saturation edge: log-odds 1.1, but below the floor
        (0.005, 0.015, False),  # the same at the other edge
        (0.95, 0.99, True),  # 4 points into certainty
    ],
)
def test_log_odds_and_floor_near_zero_and_one(baseline: float, price: float, fires: bool) -> None:
    params = DetectionParams(abs_move=0.05, log_odds_move=0.5, floor=0.02)
    assert qualifies(baseline, price, params) is fires
    assert qualifies(1 - baseline, 1 - price, params) is fires  # symmetric for NO


def test_combine_all_needs_both_thresholds() -> None:
    params = DetectionParams(abs_move=0.05, log_odds_move=0.5, floor=0.0, combine="all")
    assert not qualifies(0.02, 0.06, params)  # log-odds only
    assert not qualifies(0.50, 0.60, params)  # absolute only (logit 0.41)
    assert qualifies(0.30, 0.45, params)  # both (0.15, logit 0.647)


def test_no_move_never_qualifies_even_with_zero_floor() -> None:
    assert not qualifies(0.5, 0.5, replace(INSTANT, abs_move=0.001))


def test_log_odds_is_finite_at_the_edges() -> None:
    assert log_odds(0.0) == pytest.approx(-log_odds(1.0))
    assert abs(log_odds(0.0)) < 7


# --- severity ------------------------------------------------------------------------------


def test_severity_bands_take_the_highest_reached() -> None:
    params = DetectionParams(
        severity=(
            SeverityBand("minor"),
            SeverityBand("major", abs_move=0.10, log_odds_move=0.6),
            SeverityBand("extreme", abs_move=0.20, log_odds_move=1.2),
        )
    )
    assert severity_of(0.50, 0.54, params) == "minor"
    assert severity_of(0.50, 0.60, params) == "major"
    assert severity_of(0.02, 0.06, params) == "major"  # logit 1.14
    assert severity_of(0.02, 0.07, params) == "extreme"  # logit 1.31
    assert severity_of(0.625, 0.38, params) == "extreme"


def test_severity_without_bands_is_empty() -> None:
    assert severity_of(0.5, 0.9, DetectionParams(severity=())) == ""


# --- rolling window, re-anchoring, cooldown, hysteresis ----------------------------------


def test_no_repeat_while_price_stays_put() -> None:
    assert feed([(0, 0.50), (1, 0.60), (2, 0.60), (3, 0.60)]) == [(1, 0.50, 0.60)]


def test_reference_moves_to_emitted_price() -> None:
    fired = feed([(0, 0.50), (1, 0.60), (2, 0.64), (3, 0.66)])
    assert fired == [(1, 0.50, 0.60), (3, 0.60, 0.66)]


def test_slow_drift_within_window_does_not_fire() -> None:
    drift = [(minute * 20, 0.50 + 0.01 * minute) for minute in range(10)]  # 1 point / 20 min
    assert feed(drift) == []


def test_move_within_window_measured_from_farthest_point() -> None:
    fired = feed([(0, 0.50), (10, 0.47), (20, 0.52)])
    assert fired == [(20, 0.47, 0.52)]


def test_previous_observation_counts_even_after_a_gap() -> None:
    # Two hours without data (window 1 h): the move since the last price is still a move.
    fired = feed([(0, 0.50), (120, 0.60)])
    assert fired == [(120, 0.50, 0.60)]


def test_only_the_previous_observation_survives_a_gap() -> None:
    # 0.40 is older than the window and not the previous observation: not a baseline.
    assert feed([(0, 0.40), (100, 0.44), (200, 0.46)]) == []


def test_cooldown_suppresses_oscillation() -> None:
    params = replace(INSTANT, cooldown_seconds=600)
    prices = [(0, 0.50), (1, 0.56), (2, 0.50), (3, 0.56), (4, 0.50)]
    assert feed(prices, params) == [(1, 0.50, 0.56)]


def test_move_persisting_past_cooldown_fires_once() -> None:
    params = replace(INSTANT, cooldown_seconds=600)
    fired = feed([(0, 0.50), (1, 0.56), (5, 0.62), (11, 0.62), (12, 0.62)], params)
    assert fired == [(1, 0.50, 0.56), (11, 0.56, 0.62)]


def test_hysteresis_makes_a_reversal_move_further() -> None:
    params = replace(INSTANT, hysteresis=0.02)
    # Up 0.06, then back down 0.06: a reversal judged as 0.04 < 0.05.
    assert feed([(0, 0.50), (1, 0.56), (2, 0.50)], params) == [(1, 0.50, 0.56)]
    # Back down 0.07 (judged 0.05) fires.
    assert feed([(0, 0.50), (1, 0.56), (2, 0.49)], params)[-1] == (2, 0.56, 0.49)
    # A continuation in the same direction is not handicapped.
    assert feed([(0, 0.50), (1, 0.56), (2, 0.61)], params)[-1] == (2, 0.56, 0.61)


def test_hysteresis_expires_after_one_window() -> None:
    params = replace(INSTANT, hysteresis=0.02)
    fired = feed([(0, 0.50), (1, 0.56), (70, 0.56), (71, 0.51)], params)
    assert fired[-1] == (71, 0.56, 0.51)


def test_hysteresis_never_pulls_past_the_baseline() -> None:
    params = replace(INSTANT, hysteresis=0.5)
    assert feed([(0, 0.50), (1, 0.56), (2, 0.55)], params) == [(1, 0.50, 0.56)]


def test_repeated_or_older_snapshot_is_ignored() -> None:
    detector = Detector()
    rules = FixedRules(INSTANT)
    detector.observe(snap(0.50, 0), rules, T0)
    assert len(detector.observe(snap(0.60, 5), rules, T0)) == 1
    assert detector.observe(snap(0.60, 5), rules, T0) == []
    assert detector.observe(snap(0.30, 4), rules, T0) == []


# --- confirmation and glitches -----------------------------------------------------------

CONFIRM = replace(INSTANT, confirm_polls=2, confirm_retain=0.5, floor=0.02)


def test_confirmed_move_fires_on_the_confirming_poll_from_the_first_baseline() -> None:
    fired = feed([(0, 0.50), (1, 0.60), (2, 0.59)], CONFIRM)
    assert fired == [(2, 0.50, 0.59)]


def test_one_poll_glitch_fires_nothing_and_is_never_a_baseline() -> None:
    # The real NC one-bar dip of 2024-08-10: 0.655 -> 0.405 -> 0.615 -> 0.62.
    detector = Detector()
    fired = feed(
        [(0, 0.655), (60, 0.655), (120, 0.405), (180, 0.615), (240, 0.62)], CONFIRM, detector
    )
    assert fired == []
    assert detector.stats.glitches == 1
    # Measured from after the glitch: the 0.405 print is not anyone's baseline.
    assert feed([(300, 0.60)], CONFIRM, detector) == []


def test_glitch_through_the_baseline_is_a_move_of_its_own() -> None:
    # A dip that is not confirmed because the price shoots through to the other side: the
    # rise is measured from before the dip (the dip is never a baseline).
    prices = [(0, 0.6155), (20, 0.55), (40, 0.706), (60, 0.711)]
    assert feed(prices, CONFIRM) == [(60, 0.6155, 0.711)]


def test_sagging_move_that_keeps_enough_is_confirmed() -> None:
    # Crossed at 0.06, sagged to 0.04 (two thirds kept, above the floor): confirmed.
    assert feed([(0, 0.50), (1, 0.56), (2, 0.54)], CONFIRM) == [(2, 0.50, 0.54)]


def test_retracing_more_than_allowed_is_a_glitch() -> None:
    assert feed([(0, 0.50), (1, 0.56), (2, 0.52), (3, 0.53)], CONFIRM) == []


def test_confirmation_needs_the_configured_polls_and_time() -> None:
    params = replace(CONFIRM, confirm_polls=3, confirm_seconds=300)
    prices = [(0, 0.50), (1, 0.60), (2, 0.60), (3, 0.61), (6, 0.61)]
    assert feed(prices, params) == [(6, 0.50, 0.61)]


def test_pending_move_is_reported() -> None:
    detector = Detector()
    feed([(0, 0.50), (1, 0.60)], CONFIRM, detector)
    assert detector.pending(MARKET)
    feed([(2, 0.60)], CONFIRM, detector)
    assert not detector.pending(MARKET)


# --- guards --------------------------------------------------------------------------------


def test_thin_book_snapshot_is_ignored() -> None:
    detector = Detector()
    fired = feed([(0, 0.50), (1, 0.70)], replace(INSTANT, max_spread=0.05), detector, spread=0.2)
    assert fired == []
    assert detector.stats.thin_book == 2 and not detector.tracked()


def test_stale_snapshot_is_ignored() -> None:
    detector = Detector()
    rules = FixedRules(replace(INSTANT, max_data_age_seconds=60))
    detector.observe(snap(0.50, 0), rules, T0)
    assert detector.observe(snap(0.70, 1), rules, T0 + timedelta(minutes=3)) == []
    assert detector.stats.stale == 1
    assert len(detector.observe(snap(0.70, 2), rules, T0 + timedelta(minutes=2))) == 1


@pytest.mark.parametrize(
    ("params", "extra"),
    [
        (replace(INSTANT, enabled=False), {}),
        (replace(INSTANT, min_liquidity=1000), {"liquidity": 999.0}),
        (replace(INSTANT, min_volume=1000), {"volume": 10.0}),
    ],
)
def test_unwatched_markets_have_no_state(params: DetectionParams, extra: dict[str, Any]) -> None:
    detector = Detector()
    assert feed([(0, 0.5), (1, 0.9)], params, detector, **extra) == []
    assert not detector.tracked() and detector.stats.unwatched == 2


def test_unknown_liquidity_is_watched() -> None:
    assert feed([(0, 0.5), (1, 0.9)], replace(INSTANT, min_liquidity=1000)) != []


# --- closing, forgetting, reloads ----------------------------------------------------------


def test_closed_market_emits_one_final_event_and_is_dropped() -> None:
    detector = Detector()
    rules = FixedRules(INSTANT)
    detector.observe(snap(0.58, 0), rules, T0)
    (final,) = detector.observe(snap(0.99, 5, closed=True), rules, T0)
    assert final.final and final.rule == CLOSED_RULE and final.severity == "extreme"
    assert final.baseline_price == 0.58
    assert detector.is_closed(MARKET) and MARKET not in detector.tracked()
    assert detector.observe(snap(0.2, 10), rules, T0) == []
    detector.forget(MARKET)
    assert not detector.is_closed(MARKET)


def test_a_void_market_closes_at_its_last_observed_price_not_at_no_won() -> None:
    # A legacy market closed with outcomePrices ["0", "0"]: no winner. Its closing snapshot's
    # price is Gamma's 0, which would read "NO won"; the final event keeps the last price.
    detector = Detector()
    rules = FixedRules(INSTANT)
    detector.observe(snap(0.40, 0), rules, T0)
    detector.observe(snap(0.42, 5), rules, T0)
    (final,) = detector.observe(snap(0.0, 10, closed=True, resolution="void"), rules, T0)

    assert final.final and final.rule == CLOSED_RULE
    assert (final.price, final.baseline_price) == (0.42, 0.40)
    assert final.snapshot.resolution == "void"
    assert final.observed_at == T0 + timedelta(minutes=10)
    assert final.direction is ConvictionDirection.TOWARD_YES
    assert final.severity == severity_of(0.40, 0.42, INSTANT)


@pytest.mark.parametrize(("price", "resolution"), [(1.0, "yes"), (0.0, "no"), (0.5, "unknown")])
def test_a_resolved_market_closes_at_its_final_outcome_price(price: float, resolution: str) -> None:
    detector = Detector()
    rules = FixedRules(INSTANT)
    detector.observe(snap(0.40, 0), rules, T0)
    (final,) = detector.observe(snap(price, 5, closed=True, resolution=resolution), rules, T0)

    assert (final.price, final.snapshot.resolution) == (price, resolution)


def test_closed_markets_are_remembered_up_to_the_bound_oldest_forgotten_first() -> None:
    detector = Detector(max_closed=2)
    rules = FixedRules(INSTANT)
    markets = ["0x" + c * 64 for c in "abc"]
    for market in markets:
        detector.observe(snap(0.5, 0, market=market), rules, T0)
    finals = [detector.observe(snap(0.9, 5, closed=True, market=m), rules, T0) for m in markets]
    assert [len(f) for f in finals] == [1, 1, 1]
    # The bound holds: the first market to close is forgotten, the two latest are kept.
    assert [detector.is_closed(m) for m in markets] == [False, True, True]
    assert detector.known() == frozenset(markets[1:])
    # A forgotten closed market polled again re-enters as closed, with no second event.
    assert detector.observe(snap(0.9, 10, closed=True, market=markets[0]), rules, T0) == []
    assert detector.is_closed(markets[0]) and not detector.is_closed(markets[1])


def test_known_markets_include_the_closed_ones_until_forgotten() -> None:
    detector = Detector()
    rules = FixedRules(INSTANT)
    other = "0x" + "f" * 64
    detector.observe(snap(0.5, 0), rules, T0)
    detector.observe(snap(0.5, 0, market=other), rules, T0)
    detector.observe(snap(0.9, 5, closed=True), rules, T0)
    assert detector.tracked() == {other}
    assert detector.known() == {MARKET, other}
    detector.forget(MARKET)
    assert detector.known() == {other}


def test_market_closed_when_first_seen_emits_nothing() -> None:
    detector = Detector()
    assert detector.observe(snap(1.0, 0, closed=True), FixedRules(INSTANT), T0) == []
    assert detector.is_closed(MARKET)


def test_markets_are_independent() -> None:
    detector = Detector()
    rules = FixedRules(INSTANT)
    detector.observe(snap(0.5, 0, market="a"), rules, T0)
    detector.observe(snap(0.5, 0, market="b"), rules, T0)
    assert detector.observe(snap(0.6, 1, market="b"), rules, T0)[0].market_id == "b"
    assert detector.observe(snap(0.5, 2, market="a"), rules, T0) == []


def test_reload_keeps_state_when_detection_parameters_are_unchanged() -> None:
    detector = Detector()
    feed([(0, 0.50), (1, 0.60)], CONFIRM, detector)  # pending
    renamed = replace(CONFIRM, name="renamed", severity=(SeverityBand("only"),))
    assert detector.apply_rules(FixedRules(renamed)) == []
    (change,) = [c for c in detector.observe(snap(0.6, 2), FixedRules(renamed), T0)]
    assert change.rule == "renamed" and change.baseline_price == 0.50


def test_a_reload_that_changes_the_window_keeps_a_pending_move() -> None:
    """Issue 11: a SIGHUP changing `window` lost every move pending in that cycle."""
    detector = Detector()
    feed([(0, 0.50), (1, 0.60)], CONFIRM, detector)  # pending from 0.50
    wider = replace(CONFIRM, window_seconds=7200)  # a state-shaping parameter
    (reset,) = detector.apply_rules(FixedRules(wider))
    assert reset.market_id == MARKET
    assert (reset.old_state_key, reset.new_state_key) == (CONFIRM.state_key, wider.state_key)
    assert not reset.pending_dropped and detector.pending(MARKET)
    (change,) = detector.observe(snap(0.6, 2), FixedRules(wider), T0)
    assert (change.baseline_price, change.price) == (0.50, 0.6)
    assert detector.stats.resets == 1


def test_a_reload_drops_a_pending_move_the_new_thresholds_would_not_open() -> None:
    detector = Detector()
    feed([(0, 0.50), (1, 0.60)], CONFIRM, detector)
    tighter = replace(CONFIRM, abs_move=0.2, log_odds_move=10.0)
    (reset,) = detector.apply_rules(FixedRules(tighter))
    assert reset.pending_dropped and not detector.pending(MARKET)
    assert detector.tracked() == {MARKET}  # its prices are kept
    assert detector.observe(snap(0.6, 2), FixedRules(tighter), T0) == []
    # ... and still measure later moves: 0.50 (kept in the window) -> 0.75 qualifies.
    assert detector.observe(snap(0.75, 3), FixedRules(tighter), T0) == []  # opens
    (change,) = detector.observe(snap(0.75, 4), FixedRules(tighter), T0)
    assert change.baseline_price == 0.50


def test_a_reload_trims_the_window_and_recomputes_the_cooldown() -> None:
    detector = Detector()
    slow = replace(CONFIRM, cooldown_seconds=3600)
    fired = feed([(0, 0.50), (1, 0.60), (2, 0.60)], slow, detector)
    assert fired == [(2, 0.50, 0.60)]
    assert detector.observe(snap(0.80, 3), FixedRules(slow), T0) == []  # in cooldown
    short = replace(slow, cooldown_seconds=60, window_seconds=150)
    assert len(detector.apply_rules(FixedRules(short))) == 1
    state = detector.export_state(MARKET)
    assert isinstance(state, MarketState)
    assert state.prices == (0.60, 0.60, 0.80)  # 150 s back from minute 3
    assert state.anchor == snap(0, 2).taken_at.timestamp()  # measured from the event on
    assert state.cooldown_until == (snap(0, 2).taken_at + timedelta(seconds=60)).timestamp()
    assert detector.observe(snap(0.80, 4), FixedRules(short), T0) == []  # opens now
    (change,) = detector.observe(snap(0.80, 5), FixedRules(short), T0)
    assert (change.baseline_price, change.price) == (0.60, 0.80)


def test_reload_that_disables_a_market_drops_it() -> None:
    detector = Detector()
    feed([(0, 0.50)], CONFIRM, detector)
    (reset,) = detector.apply_rules(FixedRules(replace(CONFIRM, enabled=False)))
    assert reset.new_state_key is None


# --- properties ----------------------------------------------------------------------------

minutes = st.integers(min_value=1, max_value=30)
ticks = st.integers(min_value=1, max_value=999).map(lambda t: t / 1000)
series = st.lists(st.tuples(minutes, ticks), min_size=1, max_size=40).map(
    lambda raw: [(sum(step for step, _ in raw[: i + 1]), price) for i, (_, price) in enumerate(raw)]
)
params_st = st.builds(
    DetectionParams,
    window_seconds=st.sampled_from([600.0, 3600.0, 7200.0]),
    abs_move=st.sampled_from([0.02, 0.04, 0.1]),
    log_odds_move=st.sampled_from([0.2, 0.4, 1.0]),
    floor=st.sampled_from([0.0, 0.02]),
    cooldown_seconds=st.sampled_from([0.0, 600.0]),
    hysteresis=st.sampled_from([0.0, 0.01]),
    confirm_polls=st.integers(1, 3),
    confirm_retain=st.sampled_from([0.0, 0.5, 1.0]),
)


@settings(max_examples=200)
@given(raw=series, params=params_st)
def test_every_change_qualifies_and_points_its_way(
    raw: list[tuple[int, float]], params: DetectionParams
) -> None:
    detector = Detector()
    rules = FixedRules(params)
    for minute, price in raw:
        for change in detector.observe(snap(price, minute), rules, T0 + timedelta(minutes=minute)):
            assert abs(change.price_change) >= params.floor - 1e-9
            assert change.price_change != 0
            expected = (
                ConvictionDirection.TOWARD_YES
                if change.price_change > 0
                else ConvictionDirection.TOWARD_NO
            )
            assert change.direction is expected
            assert change.baseline_at <= change.observed_at


@settings(max_examples=200)
@given(raw=series, params=params_st)
def test_repeating_each_snapshot_changes_nothing(
    raw: list[tuple[int, float]], params: DetectionParams
) -> None:
    once = feed([(m, p) for m, p in raw], params)
    twice = feed([(m, p) for m, p in raw for _ in range(2)], params)
    assert once == twice


@settings(max_examples=200)
@given(raw=series, params=params_st)
def test_mirroring_prices_mirrors_directions(
    raw: list[tuple[int, float]], params: DetectionParams
) -> None:
    def directions(prices: list[tuple[int, float]]) -> list[ConvictionDirection]:
        detector, rules, out = Detector(), FixedRules(params), []
        for minute, price in prices:
            for change in detector.observe(snap(price, minute), rules, T0):
                out.append(change.direction)
        return out

    mirrored = [(m, round(1 - p, 3)) for m, p in raw]
    assert directions(mirrored) == [d.mirrored() for d in directions(raw)]


@settings(max_examples=300)
@given(raw=series, loose=params_st, factor=st.sampled_from([1.0, 1.5, 3.0]))
def test_tightening_thresholds_never_adds_events_under_plain_threshold_semantics(
    raw: list[tuple[int, float]], loose: DetectionParams, factor: float
) -> None:
    """With one-poll confirmation and no cooldown/hysteresis, the tighter rules fire on a
    subset of markets and never earlier (with confirmation, a glitch re-baselines the loose
    rules only, so the exact event count is not monotone: see rules/README.md)."""
    loose = replace(loose, confirm_polls=1, cooldown_seconds=0, hysteresis=0)
    tight = replace(
        loose,
        abs_move=min(1.0, loose.abs_move * factor),
        log_odds_move=loose.log_odds_move * factor,
    )
    loose_fired, tight_fired = feed(raw, loose), feed(raw, tight)
    if not loose_fired:
        assert not tight_fired
    if tight_fired:
        assert loose_fired[0][0] <= tight_fired[0][0]
    assert len(tight_fired) <= len(loose_fired) or factor == 1.0


@settings(max_examples=100)
@given(raw=series, params=params_st, cut=st.integers(0, 40))
def test_reloading_identical_rules_changes_nothing(
    raw: list[tuple[int, float]], params: DetectionParams, cut: int
) -> None:
    """A reload with the same parameters in the middle of a series resets nothing and
    changes no event."""
    straight = feed(raw, params)
    detector = Detector()
    first = feed(raw[:cut], params, detector)
    assert detector.apply_rules(FixedRules(replace(params))) == []
    assert first + feed(raw[cut:], params, detector) == straight


# --- detection v2: paths of the state machine ----------------------------------------------


def test_a_glitch_through_the_baseline_within_a_reloaded_cooldown_fires_nothing() -> None:
    detector = Detector()
    assert feed([(0, 0.40), (1, 0.50), (2, 0.50), (5, 0.62)], CONFIRM, detector) == [
        (2, 0.40, 0.50)
    ]
    assert detector.pending(MARKET)  # 0.50 -> 0.62, no cooldown under CONFIRM
    slow = replace(CONFIRM, cooldown_seconds=3600)
    (reset,) = detector.apply_rules(FixedRules(slow))  # the cooldown now runs to +62m
    assert not reset.pending_dropped
    # The spike falls through 0.50 to 0.30: a move of its own, but inside the cooldown.
    assert feed([(6, 0.30), (7, 0.30)], slow, detector) == []


def test_a_market_that_changes_tier_between_snapshots_is_reshaped() -> None:
    class ByLiquidity:
        version = "t"

        def resolve(self, snapshot: MarketSnapshot) -> ResolvedRule:
            wide = (snapshot.liquidity or 0) > 100
            return ResolvedRule(replace(CONFIRM, window_seconds=7200 if wide else 3600), "t")

    detector = Detector()
    rules = ByLiquidity()
    detector.observe(snap(0.50, 0, liquidity=10.0), rules, T0)
    detector.observe(snap(0.50, 1, liquidity=10.0), rules, T0)
    narrow = detector.export_state(MARKET)
    detector.observe(snap(0.60, 2, liquidity=500.0), rules, T0)  # another tier: 2h window
    state = detector.export_state(MARKET)
    assert isinstance(narrow, MarketState) and isinstance(state, MarketState)
    assert state.state_key != narrow.state_key
    assert state.state_key == replace(CONFIRM, window_seconds=7200).state_key
    (change,) = detector.observe(snap(0.60, 3, liquidity=500.0), rules, T0)
    assert change.baseline_price == 0.50  # the prices seen under the old tier still count


def test_the_gap_of_a_restore_is_forgotten_once_the_window_has_moved_past_it() -> None:
    params = replace(CONFIRM, window_seconds=600)  # 10-second buckets
    first = Detector()
    feed([(0, 0.50), (1, 0.50)], params, first)
    state = first.export_state(MARKET)
    assert isinstance(state, MarketState)
    second = Detector()
    second.restore_state(state)
    assert second.knows(MARKET) and not second.knows("other")
    # Back after an hour: the window moves past the observations before the gap; a later
    # move is measured from after it and is no catch-up.
    fired = feed([(61, 0.50), (72, 0.50), (73, 0.60), (74, 0.60)], params, second)
    assert fired == [(74, 0.50, 0.60)]
    detector = Detector()
    detector.restore_state(state)
    changes = []
    for minute, price in [(61, 0.50), (72, 0.50), (73, 0.60), (74, 0.60)]:
        s = snap(price, minute)
        changes += detector.observe(s, FixedRules(params), s.taken_at)
    assert [c.gap_seconds for c in changes] == [None]


def test_with_neither_prior_nor_floor_the_volatility_is_still_learnt() -> None:
    """Clipping at 5 sigma with sigma 0 would clip every change to nothing, for ever."""
    params = replace(INSTANT, volatility_prior=0.0, volatility_floor=0.0, window_seconds=600)
    window = MarketWindow.start(0.0, 0.50, params)
    for n, price in enumerate([0.52, 0.49, 0.53, 0.50, 0.51] * 4, start=1):
        window.add(60.0 * n, price, params)
    assert window.variance > 0


def test_a_window_far_below_a_second_does_not_break_the_market() -> None:
    """A subscription may ask for any positive window: the buckets stay finite."""
    tiny = replace(INSTANT, window_seconds=1e-300)
    assert feed([(0, 0.50), (1, 0.60), (2, 0.60)], tiny) == [(1, 0.50, 0.60)]
