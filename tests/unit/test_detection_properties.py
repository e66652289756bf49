"""Properties of the whole detector (detection v2), over random price series (hypothesis).

* A market whose moves stay under the volatility bar never fires; a step well above it,
  after a calm period, does.
* Scaling time (and every duration parameter with it) changes no decision.
* Repeated and out-of-order snapshots change nothing.
* Every event's first crossing passed the thresholds and the volatility test of its
  duration, and what fired kept its direction, the floor and `confirm.retain` of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from polymarket_kafka.detection import ConvictionChange, Detector, qualifies, required_move
from polymarket_kafka.detection.moves import PRECISION, at_least, per_second
from polymarket_kafka.detection.window import bucket_width
from polymarket_kafka.detector_state import MarketState
from polymarket_kafka.models import MarketSnapshot
from polymarket_kafka.ruleset.params import DetectionParams
from tests.factories import MARKET, FixedRules

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = 1_000_000  # microseconds per second

#: (time in whole microseconds since the epoch, YES price)
Series = list[tuple[int, float]]


def snapshot(us: int, price: float) -> MarketSnapshot:
    return MarketSnapshot(
        market_id=MARKET,
        question="q",
        yes_price=price,
        taken_at=EPOCH + timedelta(microseconds=us),
    )


def run(
    series: Sequence[tuple[int, float]], params: DetectionParams, detector: Detector | None = None
) -> list[tuple[int, ConvictionChange]]:
    """Feed the series (each snapshot observed when it was taken); return (index, change)."""
    detector = detector if detector is not None else Detector()
    rules = FixedRules(params)
    fired = []
    for i, (us, price) in enumerate(series):
        s = snapshot(us, price)
        fired += [(i, change) for change in detector.observe(s, rules, s.taken_at)]
    return fired


def state_of(detector: Detector) -> MarketState:
    state = detector.export_state(MARKET)
    assert isinstance(state, MarketState)
    return state


# --- strategies ----------------------------------------------------------------------------

#: Gaps between polls, in whole seconds: polling (seconds to minutes) and outages (hours).
gap_seconds = st.one_of(
    st.integers(1, 60),
    st.integers(1, 300),
    st.integers(60, 900),
    st.integers(900, 4 * 3600),
)
#: Price steps in ticks of 0.001: small, larger, and jumps (news).
steps = st.one_of(
    st.integers(-5, 5),
    st.integers(-30, 30),
    st.integers(-150, 150),
    st.sampled_from([-300, -120, -60, 60, 120, 300]),
)


@st.composite
def series_st(draw: st.DrawFn, max_size: int = 60) -> Series:
    """A random walk on the 0.001 tick at irregular times (whole microseconds, multiples of
    16 so that the time-scaling property can divide them by 16 exactly)."""
    us = draw(st.integers(100_000_000, 200_000_000)) * US
    ticks = draw(st.integers(20, 980))
    out = [(us, ticks / 1000)]
    for gap, step, jitter in draw(
        st.lists(st.tuples(gap_seconds, steps, st.integers(0, US // 16 - 1)), max_size=max_size)
    ):
        us += gap * US + jitter * 16
        ticks = min(1000, max(0, ticks + step))
        out.append((us, ticks / 1000))
    return out


params_st = st.builds(
    DetectionParams,
    window_seconds=st.sampled_from([600.0, 3600.0, 7200.0]),
    abs_move=st.sampled_from([0.02, 0.05]),
    log_odds_move=st.sampled_from([0.2, 0.4]),
    floor=st.sampled_from([0.0, 0.02]),
    cooldown_seconds=st.sampled_from([0.0, 600.0]),
    hysteresis=st.sampled_from([0.0, 0.01]),
    confirm_polls=st.integers(1, 3),
    confirm_seconds=st.sampled_from([0.0, 60.0, 300.0]),
    confirm_retain=st.sampled_from([0.0, 0.5, 1.0]),
    confirm_ramp=st.sampled_from([0.0, 0.35]),
    volatility_z=st.sampled_from([0.0, 1.0, 3.3]),
    volatility_floor=st.sampled_from([0.0065, 0.02]),
    volatility_prior=st.sampled_from([0.01, 0.05]),
    volatility_half_life_seconds=st.sampled_from([3600.0, 43200.0]),
    volatility_min_horizon_seconds=st.sampled_from([0.0, 60.0, 900.0]),
    max_data_age_seconds=st.just(1e9),
)


# --- (a) under the volatility bar, never; well above it, yes --------------------------------

#: Thresholds off: only the volatility test decides (any non-zero move qualifies).
VOLATILITY_ONLY = DetectionParams(abs_move=0.0, log_odds_move=0.0, floor=0.0, max_spread=1.0)

volatility_params = st.builds(
    replace,
    st.just(VOLATILITY_ONLY),
    window_seconds=st.sampled_from([600.0, 3600.0, 7200.0]),
    cooldown_seconds=st.sampled_from([0.0, 600.0]),
    hysteresis=st.sampled_from([0.0, 0.01]),
    confirm_polls=st.integers(1, 3),
    confirm_seconds=st.sampled_from([0.0, 60.0]),
    confirm_retain=st.sampled_from([0.0, 0.5]),
    confirm_ramp=st.sampled_from([0.0, 0.35]),
    volatility_z=st.sampled_from([1.0, 2.0, 3.3]),
    volatility_floor=st.sampled_from([0.0065, 0.01, 0.02]),
    volatility_prior=st.sampled_from([1.0, 2.0, 5.0]),  # times the floor (below)
    volatility_half_life_seconds=st.sampled_from([600.0, 43200.0, 1e9]),
    volatility_min_horizon_seconds=st.sampled_from([60.0, 900.0, 3600.0]),
    max_data_age_seconds=st.just(1e9),
).map(lambda p: replace(p, volatility_prior=p.volatility_prior * p.volatility_floor))


def lowest_bar(params: DetectionParams, span: float) -> float:
    """A lower bound of `required_move` for any move of any market observed over `span`
    seconds: at least `min_horizon` (the bar grows with the duration), the floor's term at
    `min(min_horizon, window)`, and the variance, which starts at the prior and loses at most
    a factor `2 ** (-span / half_life)` however calm the market (each EWMA step keeps
    `(1 - weight)` of it, and the weights' half-lives add up to at most the span)."""
    horizon = params.volatility_min_horizon_seconds
    by_floor = params.volatility_floor * math.sqrt(min(horizon, params.window_seconds) / 3600)
    variance = per_second(params.volatility_prior) * 2.0 ** (
        -span / params.volatility_half_life_seconds
    )
    return params.volatility_z * max(by_floor, math.sqrt(variance * horizon))


@settings(max_examples=150)
@given(
    params=volatility_params,
    gaps=st.lists(gap_seconds, min_size=1, max_size=80),
    data=st.data(),
)
def test_moves_under_the_volatility_bar_never_fire(
    params: DetectionParams, gaps: list[int], data: st.DataObject
) -> None:
    """Every price of the series stays within a band 10 % narrower than the lowest bar any of
    its moves is judged against, so no move, from any reference, over any span, passes."""
    span = float(sum(gaps))
    band = min(1.0, 0.9 * lowest_bar(params, span))
    low = data.draw(st.floats(0.0, 1.0 - band), label="low")
    at = data.draw(st.integers(100_000_000, 200_000_000), label="start") * US
    series = [(at, low + band * data.draw(st.floats(0.0, 1.0), label="u"))]
    for gap in gaps:
        at += gap * US
        series.append((at, low + band * data.draw(st.floats(0.0, 1.0), label="u")))
    assert run(series, params) == []


@settings(max_examples=150)
@given(
    params=volatility_params,
    calm=st.lists(st.tuples(st.floats(0.25, 2.0), st.floats(0.0, 1.0)), min_size=12, max_size=60),
    level=st.floats(0.3, 0.7),
    up=st.booleans(),
)
def test_a_step_well_above_the_bar_after_a_calm_period_fires(
    params: DetectionParams, calm: list[tuple[float, float]], level: float, up: bool
) -> None:
    """A calm market (polled every 1/4 to 2 buckets, over at least 3 buckets), then a step
    half as large again as the highest bar it can be judged against from the bucket before
    it, held for the confirmation: no event before the step, an event its way after it.

    The calm noise stays within `amplitude` <= floor * sqrt(shortest gap / 1 h), so every
    squared change per second the volatility learns is at most the floor's: the variance
    never exceeds max(prior, floor)."""
    width = bucket_width(params)
    shortest = 0.25 * width
    # ... and under half the floor's bar, so that no calm move can pass (however low the
    # variance falls).
    floor_bar = lowest_bar(replace(params, volatility_prior=0.0), 0.0)
    amplitude = min(params.volatility_floor * math.sqrt(shortest / 3600), 0.4 * floor_bar)
    variance = per_second(max(params.volatility_prior, params.volatility_floor))
    # The bucket before the step's bucket ends at most (a bucket + the longest gap) before it.
    horizon = max(3 * width, params.volatility_min_horizon_seconds)
    highest_bar = params.volatility_z * max(
        math.sqrt(variance * horizon),
        params.volatility_floor * math.sqrt(min(horizon, params.window_seconds) / 3600),
    )
    step = 1.5 * highest_bar + 2 * amplitude
    assume(step <= 0.29)
    at = 150_000_000.0
    series: Series = []
    for gap, noise in calm:
        at += gap * width
        series.append((round(at * US), level + amplitude * noise))
    target = series[-1][1] + (step if up else -step)
    first_step = len(series)
    hold = params.confirm_polls + math.ceil(params.confirm_seconds / shortest) + 1
    for _ in range(hold):
        at += shortest
        series.append((round(at * US), target))
    fired = run(series, params)
    assert fired, "the step never fired"
    index, change = fired[0]
    assert index >= first_step, "a calm move fired"
    assert (change.price_change > 0) is up
    event(f"fired {index - first_step} polls after the step")
    assert change.price == target


# --- (b) scaling time changes no decision ---------------------------------------------------


def scaled(params: DetectionParams, c: float) -> DetectionParams:
    """Every duration times `c`, the volatilities (per square root of time) divided by
    sqrt(c): `floor * sqrt(h)` and `variance * h` are then unchanged."""
    root = math.sqrt(c)
    return replace(
        params,
        window_seconds=params.window_seconds * c,
        cooldown_seconds=params.cooldown_seconds * c,
        confirm_seconds=params.confirm_seconds * c,
        volatility_half_life_seconds=params.volatility_half_life_seconds * c,
        volatility_min_horizon_seconds=params.volatility_min_horizon_seconds * c,
        volatility_floor=params.volatility_floor / root,
        volatility_prior=params.volatility_prior / root,
        max_data_age_seconds=params.max_data_age_seconds * c,
    )


def decisions(
    fired: list[tuple[int, ConvictionChange]],
) -> list[tuple[int, float, float, float, str | None]]:
    return [(i, c.baseline_at.timestamp(), c.baseline_price, c.price, c.severity) for i, c in fired]


# Exact invariance, not approximate: `c` is an even power of two, so sqrt(c) is a power of two
# as well, and multiplying a float by a power of two is exact (no overflow or underflow here).
# Every time the detector computes with (snapshot times: whole microseconds, multiples of 16,
# converted by correctly rounded division; bucket bounds `floor(t / width)`, `(k + 1) * width`;
# differences `at - since`; sums `at + cooldown`) and every volatility quantity (`floor**2 /
# 3600`, the EWMA weight `expm1(-dt ln2 / half_life)`, `variance * h`, the clip) is then the
# unscaled one times a power of two, with the same rounding. With c = 2, `prior / sqrt(2)` is
# rounded, and the prior variance already differs in its last bit (per_second(0.01 / sqrt(2))
# * 2 = 2.777777777777777e-08, per_second(0.01) = 2.777777777777778e-08): a move right at the
# bar could then be decided differently, so odd powers of two are left out.
@settings(max_examples=120)
@given(series=series_st(), params=params_st, c=st.sampled_from([1 / 16, 1 / 4, 4.0, 16.0]))
def test_scaling_time_changes_no_decision(
    series: Series, params: DetectionParams, c: float
) -> None:
    slow = [(int(us * c), price) for us, price in series]
    for (us, _), (scaled_us, _) in zip(series, slow, strict=True):
        assert scaled_us == us * c  # whole microseconds both ways
    detector, scaled_detector = Detector(), Detector()
    fired = run(series, params, detector)
    scaled_fired = run(slow, scaled(params, c), scaled_detector)
    event(f"events: {min(len(fired), 3)}{'+' if len(fired) >= 3 else ''}")
    expected = [(i, at * c, base, price, sev) for i, at, base, price, sev in decisions(fired)]
    assert decisions(scaled_fired) == expected
    state, scaled_state = state_of(detector), state_of(scaled_detector)
    assert scaled_state.times == tuple(t * c for t in state.times)
    assert scaled_state.prices == state.prices
    assert scaled_state.variance == state.variance / c


# --- (c) repeats and out-of-order snapshots -------------------------------------------------


@settings(max_examples=120)
@given(series=series_st(max_size=40), params=params_st, data=st.data())
def test_repeated_and_out_of_order_snapshots_change_nothing(
    series: Series, params: DetectionParams, data: st.DataObject
) -> None:
    """After each snapshot, feed it again (the same, or at the same time with another price)
    and some older ones: no event, no change of state, no counter moved."""
    straight, noisy = Detector(), Detector()
    rules = FixedRules(params)
    for i, (us, price) in enumerate(series):
        s = snapshot(us, price)
        assert straight.observe(s, rules, s.taken_at) == noisy.observe(s, rules, s.taken_at)
        extras = data.draw(
            st.lists(
                st.tuples(
                    st.sampled_from([us, *[t for t, _ in series[: i + 1]]]),
                    st.one_of(st.just(price), st.integers(0, 1000).map(lambda t: t / 1000)),
                ),
                max_size=3,
            ),
            label="extras",
        )
        for old_us, old_price in extras:
            late = snapshot(old_us, old_price)
            assert noisy.observe(late, rules, s.taken_at) == []
        assert noisy.export_state(MARKET) == straight.export_state(MARKET)
        assert noisy.pending(MARKET) == straight.pending(MARKET)
    assert noisy.stats == straight.stats


# --- (d) what fires passed the tests ---------------------------------------------------------


@dataclass(frozen=True)
class Opening:
    """A pending move as it opened: what the tests judged."""

    at: float
    price: float
    variance: float


def sign(x: float) -> int:
    return 1 if x > 0 else -1


@settings(max_examples=200)
@given(series=series_st(), params=params_st)
def test_every_event_passed_the_thresholds_and_the_volatility_test(
    series: Series, params: DetectionParams
) -> None:
    """The first crossing of every event qualified (`floor`, `abs`/`log_odds`) from the
    baseline and reached `required_move` for its duration, at the volatility of the moment it
    was judged (the volatility after that observation: it is judged last). A move against the
    previous event within one window was judged `hysteresis` smaller. What fired then kept
    the direction, the floor and `confirm.retain` of the first crossing."""
    detector, rules = Detector(), FixedRules(params)
    openings: dict[float, Opening] = {}
    last_event: tuple[float, int] | None = None
    for us, price in series:
        s = snapshot(us, price)
        at = s.taken_at.timestamp()
        before = detector.export_state(MARKET)
        pending = before.pending if isinstance(before, MarketState) else None
        changes = detector.observe(s, rules, s.taken_at)
        after = state_of(detector)
        if after.pending is not None and after.pending.first_at == at:
            openings[at] = Opening(at, price, after.variance)
        for change in changes:
            baseline, baseline_at = change.baseline_price, change.baseline_at.timestamp()
            direction = sign(change.price - baseline)
            if (
                pending is not None
                and (pending.baseline_at, pending.baseline_price) == (baseline_at, baseline)
                and sign(pending.first_move) == direction
            ):
                first = openings[pending.first_at]  # confirmed now
                event("an event confirmed a pending move")
            else:
                first = Opening(at, price, after.variance)  # opened and fired at once
                event("an event fired on its first crossing")
            assert baseline_at < first.at <= at
            move = abs(first.price - baseline)
            if (
                last_event is not None
                and params.hysteresis > 0
                and first.at - last_event[0] <= params.window_seconds
                and direction != last_event[1]
            ):
                move -= params.hysteresis  # a reversal: judged as if that much smaller
                event("a reversal fired despite the hysteresis")
            assert move > 0
            assert qualifies(baseline, baseline + direction * move, params)
            bar = required_move(first.variance, first.at - baseline_at, params)
            assert at_least(round(move, PRECISION), bar)
            if params.volatility_z > 0 and bar > max(params.floor, params.abs_move):
                event("the volatility bar was the binding test")
            # ... and what fired still stands: its way, the floor, `retain` of the crossing.
            assert sign(first.price - baseline) == direction
            assert at_least(abs(change.price - baseline), params.floor)
            assert at_least(
                abs(change.price - baseline), params.confirm_retain * abs(first.price - baseline)
            )
            last_event = (at, direction)
