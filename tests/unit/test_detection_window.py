"""The bucketed window and the volatility test (`detection.window`, `detection.moves`).

Each streaming operation of `MarketWindow` is checked against a brute-force model written
from the documented rules (module docstrings of `window` and `moves`): every observation is
kept in a plain list, grouped into buckets of `window / WINDOW_BUCKETS` seconds aligned on
epoch multiples (the last observation of each), trimmed when a new bucket opens, and the
buckets that leave the window are folded into the volatility's EWMA from scratch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polymarket_kafka.detection import Detector, required_move
from polymarket_kafka.detection.moves import at_least, per_second
from polymarket_kafka.detection.window import (
    VOLATILITY_CLIP,
    WINDOW_BUCKETS,
    MarketWindow,
    bucket_width,
)
from polymarket_kafka.detector_state import MarketState
from polymarket_kafka.models import MarketSnapshot
from polymarket_kafka.ruleset.params import DetectionParams
from tests.factories import MARKET, FixedRules

PARAMS = DetectionParams(
    window_seconds=3600.0,
    floor=0.02,
    volatility_z=3.0,
    volatility_floor=0.01,
    volatility_prior=0.05,
    volatility_half_life_seconds=3600.0,
    volatility_min_horizon_seconds=900.0,
)
T = 1_700_000_040.0  # a multiple of 60 s: the start of a 1-minute bucket (3600 s window)

# --- brute-force model ---------------------------------------------------------------------


@dataclass
class Model:
    """The window, recomputed from the documented rules over plain lists."""

    params: DetectionParams
    prior: float  # variance per second at the start
    buckets: list[tuple[float, float]] = field(default_factory=list)
    #: Every bucket that left the window, with the parameters in force when it left.
    exits: list[tuple[float, float, DetectionParams]] = field(default_factory=list)
    anchor: float | None = None
    #: After `drop_since`, the next observation opens a bucket whatever its time.
    force_new: bool = False

    @classmethod
    def start(cls, at: float, price: float, params: DetectionParams) -> Model:
        return cls(params, per_second(params.volatility_prior), [(at, price)])

    def index(self, at: float) -> int:
        return math.floor(at / bucket_width(self.params))

    def add(self, at: float, price: float) -> None:
        if (
            not self.force_new
            and self.buckets
            and self.index(at) == self.index(self.buckets[-1][0])
        ):
            self.buckets[-1] = (at, price)
            return
        self.force_new = False
        self.trim(at)
        self.buckets.append((at, price))

    def trim(self, at: float) -> None:
        while len(self.buckets) > 1 and self.buckets[0][0] < at - self.params.window_seconds:
            leaving_at, leaving_price = self.buckets.pop(0)
            self.exits.append((leaving_at, leaving_price, self.params))

    def drop_since(self, at: float) -> None:
        self.buckets = [b for b in self.buckets if b[0] < at]
        self.force_new = True

    def restart(self, at: float, price: float) -> None:
        self.buckets = [(at, price)]
        self.anchor = None
        self.force_new = False

    def reshape(self, last: float, params: DetectionParams) -> None:
        self.params = params
        regrouped: dict[int, tuple[float, float]] = {}
        for at, price in self.buckets:
            regrouped[self.index(at)] = (at, price)  # the last of each new bucket
        self.buckets = [regrouped[k] for k in sorted(regrouped)]
        self.trim(last)
        self.force_new = False

    def variance(self) -> float:
        """The documented EWMA folded over every bucket that left the window, in order."""
        variance = self.prior
        previous: tuple[float, float] | None = None
        for at, price, params in self.exits:
            if previous is not None and at > previous[0]:
                seconds = at - previous[0]
                floor = params.volatility_floor**2 / 3600.0
                change = price - previous[1]
                scale = max(variance, floor)
                if scale > 0:  # no scale yet (prior and floor 0): nothing to clip at
                    limit = VOLATILITY_CLIP * math.sqrt(scale * seconds)
                    change = min(max(change, -limit), limit)
                weight = 1.0 - 2.0 ** (-seconds / params.volatility_half_life_seconds)
                variance = (1.0 - weight) * variance + weight * change * change / seconds
            previous = (at, price)
        return variance

    def candidates(self) -> list[tuple[float, float]]:
        return [b for b in self.buckets[:-1] if self.anchor is None or b[0] >= self.anchor]

    def first(self) -> tuple[float, float]:
        kept = [b for b in self.buckets if self.anchor is None or b[0] >= self.anchor]
        return kept[0] if kept else self.buckets[-1]


def assert_same(window: MarketWindow, model: Model) -> None:
    assert list(zip(window.times, window.prices, strict=True)) == model.buckets
    # The production update is `v += w (x - v)`, the model's `(1 - w) v + w x`: the same
    # EWMA, rounded differently (the absolute tolerance covers a weight of almost 1).
    assert math.isclose(window.variance, model.variance(), rel_tol=1e-9, abs_tol=1e-15)
    assert list(window.candidates()) == model.candidates()
    if model.buckets:
        assert window.first() == model.first()


# --- strategies ----------------------------------------------------------------------------

# Windows whose bucket width (window / 60) is an exact float. With an inexact width such as
# 1000 / 60, `(k + 1) * width` can round above the epoch boundary it stands for, and the
# streaming path then keeps an observation exactly on that boundary (1_747_623_250.0 with a
# 1000 s window) in the bucket before it, where `floor(t / width)` (and `reshape`) put it in
# the next one: a one-ulp disagreement the model would report, left out of these properties.
windows = st.sampled_from([60.0, 90.0, 600.0, 3600.0, 7200.0, 86400.0])
window_params = st.builds(
    DetectionParams,
    window_seconds=windows,
    floor=st.sampled_from([0.0, 0.01, 0.02]),
    volatility_z=st.sampled_from([0.0, 1.0, 3.3]),
    volatility_floor=st.sampled_from([0.0, 0.0065, 0.02]),
    volatility_prior=st.sampled_from([0.0, 0.01, 0.05, 0.2]),
    volatility_half_life_seconds=st.sampled_from([60.0, 3600.0, 43200.0]),
    volatility_min_horizon_seconds=st.sampled_from([0.0, 60.0, 900.0]),
)
prices = st.floats(min_value=0.0, max_value=1.0)
starts = st.one_of(
    st.floats(min_value=1.5e9, max_value=1.8e9),
    st.integers(1_500_000_000 // 3600, 1_800_000_000 // 3600).map(lambda h: h * 3600.0),
)


@st.composite
def observations(draw: st.DrawFn, params: DetectionParams) -> list[tuple[float, float]]:
    """Increasing float times with gaps from 1 s to several windows, random prices."""
    window = params.window_seconds
    width = bucket_width(params)
    gap = st.one_of(
        st.floats(min_value=1.0, max_value=max(1.0, width / 2)),  # several per bucket
        st.floats(min_value=1.0, max_value=3 * width),
        st.floats(min_value=1.0, max_value=4 * window),
        # Whole seconds and whole buckets, so that times land exactly on bucket boundaries
        # and exactly one window apart (the trim's strict `<`).
        st.integers(1, int(4 * window)).map(float),
        st.integers(1, 4 * 60).map(lambda n: n * width),
    )
    at = draw(starts)
    out = [(at, draw(prices))]
    if draw(st.booleans()):  # regular polling: every n buckets, often exactly a window apart
        gap = st.just(draw(st.sampled_from([1, 2, 3, 7, 30, 60])) * width)
    for step in draw(st.lists(gap, min_size=1, max_size=150)):
        at += step
        out.append((at, draw(prices)))
    return out


def replay(obs: Sequence[tuple[float, float]], params: DetectionParams) -> MarketWindow:
    (at, price), *rest = obs
    window = MarketWindow.start(at, price, params)
    for at, price in rest:
        window.add(at, price, params)
    return window


# --- (a) streaming == brute force -----------------------------------------------------------


@settings(max_examples=150)
@given(data=st.data(), params=window_params)
def test_streaming_window_equals_brute_force(data: st.DataObject, params: DetectionParams) -> None:
    obs = data.draw(observations(params))
    (at, price), *rest = obs
    window = MarketWindow.start(at, price, params)
    model = Model.start(at, price, params)
    assert_same(window, model)
    for at, price in rest:
        window.add(at, price, params)
        model.add(at, price)
        assert_same(window, model)


def brute_force_buckets(
    obs: Sequence[tuple[float, float]], params: DetectionParams
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(kept buckets, trimmed buckets) from the full list in one pass, no streaming state:
    the last observation of every `floor(t / width)` group; a group's opening trims the groups
    older than the window before it (the latest always kept)."""
    width = bucket_width(params)
    groups: dict[int, tuple[float, float]] = {}
    for at, price in obs:
        groups[math.floor(at / width)] = (at, price)
    kept: list[tuple[float, float]] = []
    trimmed: list[tuple[float, float]] = []
    for key in sorted(groups):
        opening = next(at for at, _ in obs if math.floor(at / width) == key)
        while len(kept) > 1 and kept[0][0] < opening - params.window_seconds:
            trimmed.append(kept.pop(0))
        kept.append(groups[key])
    return kept, trimmed


@settings(max_examples=100)
@given(data=st.data(), params=window_params)
def test_window_of_a_whole_series_equals_its_grouping(
    data: st.DataObject, params: DetectionParams
) -> None:
    """The same, stated over the whole series at once (group, then trim at each opening)."""
    obs = data.draw(observations(params))
    window = replay(obs, params)
    kept, trimmed = brute_force_buckets(obs, params)
    assert list(zip(window.times, window.prices, strict=True)) == kept
    model = Model(params, per_second(params.volatility_prior))
    model.exits = [(at, price, params) for at, price in trimmed]
    assert math.isclose(window.variance, model.variance(), rel_tol=1e-9, abs_tol=1e-15)
    assert window.exit == (trimmed[-1] if trimmed else None)


def quiet_is_conservative(window: MarketWindow, price: float, params: DetectionParams) -> None:
    """`quiet(price)` only when no candidate could pass the floor and the volatility test at
    any duration (the bar is lowest at `min_horizon`, i.e. duration 0); and not quiet when
    some candidate is clearly out of the band."""
    candidates = [level for _, level in window.candidates()]
    reach = max(params.floor, required_move(window.variance, 0.0, params))
    quiet = window.quiet(price, params)
    if quiet:
        for level in candidates:
            move = abs(price - level)
            assert move < reach
            assert not (at_least(move, params.floor) and at_least(move, reach))
    elif candidates:
        assert max(abs(price - level) for level in candidates) >= reach - 1e-8
    else:
        pytest.fail("no candidate: every price is quiet")


@settings(max_examples=150)
@given(data=st.data(), params=window_params)
def test_quiet_band_only_holds_prices_no_candidate_can_pass(
    data: st.DataObject, params: DetectionParams
) -> None:
    obs = data.draw(observations(params))
    window = replay(obs, params)
    if data.draw(st.booleans(), label="anchored"):
        window.anchor_at(data.draw(st.sampled_from([at for at, _ in obs]), label="anchor"))
    levels = list(window.prices)
    probes = [data.draw(prices, label="probe") for _ in range(5)]
    reach = max(params.floor, required_move(window.variance, 0.0, params))
    # Probes right at the band's edges, both sides, and every level itself.
    for level in levels:
        probes += [level, level + reach, level - reach, level + reach * 0.999]
    for probe in probes:
        quiet_is_conservative(window, probe, params)


# --- the other operations, against the model ------------------------------------------------

Op = tuple[str, float, float]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.floats(0.0, 1.0), prices),  # gap as a fraction, price
        st.tuples(st.just("add"), st.floats(0.0, 1.0), prices),
        st.tuples(st.just("add"), st.floats(0.0, 1.0), prices),
        st.tuples(st.just("drop"), st.floats(0.0, 1.0), st.just(0.0)),  # where, in the window
        st.tuples(st.just("anchor"), st.floats(0.0, 1.0), st.just(0.0)),
        st.tuples(st.just("restart"), st.floats(0.0, 1.0), prices),
        st.tuples(st.just("reshape"), windows.map(float), st.just(0.0)),
    ),
    max_size=80,
)


def gap_of(fraction: float, params: DetectionParams) -> float:
    """1 s to several windows, more often short (fraction**3)."""
    return 1.0 + fraction**3 * 4 * params.window_seconds


@settings(max_examples=150)
@given(params=window_params, start=starts, first=prices, script=ops)
def test_every_operation_matches_the_model(
    params: DetectionParams, start: float, first: float, script: list[Op]
) -> None:
    window = MarketWindow.start(start, first, params)
    model = Model.start(start, first, params)
    last = start
    for name, x, price in script:
        if name == "add":
            last += gap_of(x, model.params)
            window.add(last, price, model.params)
            model.add(last, price)
        elif name == "restart":
            last += gap_of(x, model.params)
            window.restart(last, price, model.params)
            model.restart(last, price)
        elif name in ("drop", "anchor"):
            if not model.buckets:
                continue
            # A bucket's time or just after the last one; `drop` keeps the oldest bucket (the
            # detector drops from a pending move's first poll, and adds right after).
            times = [at for at, _ in model.buckets[name == "drop" :]] + [last + 1.0]
            at = times[min(int(x * len(times)), len(times) - 1)]
            if name == "drop":
                window.drop_since(at)
                model.drop_since(at)
            else:
                window.anchor_at(at)
                model.anchor = at
        else:  # reshape (the detector passes the last observation's time)
            if not model.buckets:
                continue
            params = replace(model.params, window_seconds=x)
            window.reshape(model.buckets[-1][0], params)
            model.reshape(model.buckets[-1][0], params)
        assert_same(window, model)
        if model.buckets:
            quiet_is_conservative(window, 0.5, model.params)


def test_a_bucket_exactly_one_window_old_is_kept() -> None:
    window = MarketWindow.start(T, 0.5, PARAMS)
    window.add(T + 60, 0.6, PARAMS)
    window.add(T + 3600, 0.7, PARAMS)  # horizon T: the bucket at T is not older than it
    assert list(window.times) == [T, T + 60, T + 3600]
    window.add(T + 3660, 0.8, PARAMS)  # horizon T + 60
    assert list(window.times) == [T + 60, T + 3600, T + 3660]
    assert window.exit == (T, 0.5)


def test_the_latest_bucket_is_kept_however_old() -> None:
    window = MarketWindow.start(T, 0.5, PARAMS)
    window.add(T + 10 * 3600, 0.6, PARAMS)
    window.add(T + 30 * 3600, 0.7, PARAMS)
    assert list(window.times) == [T + 10 * 3600, T + 30 * 3600]
    # The first bucket to leave only starts the chain of changes: the prior stands.
    assert window.exit == (T, 0.5)
    assert window.variance == per_second(0.05)
    window.add(T + 50 * 3600, 0.7, PARAMS)
    assert list(window.times) == [T + 30 * 3600, T + 50 * 3600]
    # 0.5 at T -> 0.6 ten hours later: weight 1 - 2**-10 with the 1 h half-life, the change
    # well inside the clip (5 sd of 0.05 per sqrt(hour) over 10 h).
    weight = 1 - 2.0**-10
    expected = (1 - weight) * per_second(0.05) + weight * 0.1**2 / 36000
    assert window.variance == pytest.approx(expected, rel=1e-12)


def test_drop_since_forces_a_new_bucket_and_keeps_the_volatility() -> None:
    window = MarketWindow.start(T, 0.5, PARAMS)
    window.add(T + 60, 0.6, PARAMS)
    window.add(T + 70, 0.7, PARAMS)  # same minute: overwrites
    variance = window.variance
    window.drop_since(T + 60)
    assert list(window.times) == [T]
    window.add(T + 61, 0.55, PARAMS)  # the dropped bucket's minute: a new bucket all the same
    window.add(T + 62, 0.56, PARAMS)  # ... whose later observations overwrite it
    assert list(zip(window.times, window.prices, strict=True)) == [(T, 0.5), (T + 62, 0.56)]
    assert window.variance == variance


def test_restart_keeps_one_observation_and_the_volatility() -> None:
    window = replay([(T + 60 * i, 0.5 + 0.01 * (i % 3)) for i in range(200)], PARAMS)
    variance, exit = window.variance, window.exit
    window.anchor_at(T + 60 * 150)
    window.restart(T + 60 * 300, 0.9, PARAMS)
    assert list(zip(window.times, window.prices, strict=True)) == [(T + 60 * 300, 0.9)]
    assert (window.variance, window.exit, window.anchor) == (variance, exit, None)
    assert list(window.candidates()) == []
    assert window.first() == (T + 60 * 300, 0.9)


def test_anchor_limits_candidates_and_first() -> None:
    window = replay([(T + 60 * i, 0.5 + 0.001 * i) for i in range(10)], PARAMS)
    window.anchor_at(T + 60 * 4 + 1)  # between two buckets: the next one on
    assert [at for at, _ in window.candidates()] == [T + 60 * i for i in range(5, 9)]
    assert window.first() == (T + 60 * 5, 0.505)
    window.anchor_at(T + 60 * 9)  # the current bucket: no candidate, first is the current
    assert list(window.candidates()) == []
    assert window.first() == (T + 60 * 9, 0.509)
    assert window.quiet(0.0, PARAMS) and window.quiet(1.0, PARAMS)


def test_reshape_rebuckets_to_the_last_observation_of_each_new_bucket_and_trims() -> None:
    window = replay([(T + 60 * i, i / 100) for i in range(61)], PARAMS)  # 1 h, 1-minute buckets
    assert len(window.times) == 61
    half = replace(PARAMS, window_seconds=1800.0)  # 30-second buckets: each minute its own
    quarter = replace(PARAMS, window_seconds=7200.0 * 4)  # 8-minute buckets
    shorter = MarketWindow.start(T, 0.0, PARAMS)
    shorter.times, shorter.prices = window.times.copy(), window.prices.copy()
    shorter.reshape(T + 3600, half)
    assert list(shorter.times) == [T + 60 * i for i in range(30, 61)]
    assert shorter.exit == (T + 60 * 29, 0.29)  # the trimmed buckets fed the volatility
    window.reshape(T + 3600, quarter)
    width = 480.0  # 8-minute buckets, aligned on the epoch
    expected = {}
    for i in range(61):
        expected[math.floor((T + 60 * i) / width)] = (T + 60 * i, i / 100)
    assert list(zip(window.times, window.prices, strict=True)) == [
        expected[k] for k in sorted(expected)
    ]
    assert window.bucket_end == (math.floor((T + 3600) / width) + 1) * width


# --- (b) bounded whatever the polling rate --------------------------------------------------


#: Polling intervals, as a fraction of the bucket width: many polls per bucket to a few
#: buckets per poll.
poll_fractions = st.sampled_from([0.01, 0.1, 0.5, 1.0, 3.0])


@settings(max_examples=60)
@given(
    params=window_params,
    poll=poll_fractions,
    jitter=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=50),
    start=starts,
)
def test_bucket_count_is_bounded_whatever_the_polling_rate(
    params: DetectionParams, poll: float, jitter: list[float], start: float
) -> None:
    window = MarketWindow.start(start, 0.5, params)
    step = poll * bucket_width(params)
    at = start
    for i in range(int(3 * WINDOW_BUCKETS / poll)):  # three windows
        at += step * (0.5 + jitter[i % len(jitter)])
        window.add(at, (i % 7) / 10, params)
        assert len(window.times) <= WINDOW_BUCKETS + 2


def snapshot_at(seconds: float, price: float) -> MarketSnapshot:
    return MarketSnapshot(
        market_id=MARKET,
        question="q",
        yes_price=price,
        taken_at=datetime(2024, 11, 5, tzinfo=UTC) + timedelta(seconds=seconds),
    )


@settings(max_examples=40)
@given(
    params=window_params,
    poll=st.sampled_from([0.05, 0.5, 1.0, 3.0]),
    moves=st.lists(st.integers(-60, 60), min_size=10, max_size=100),
    confirm=st.integers(1, 3),
)
def test_a_detectors_window_is_bounded_through_glitches_and_events(
    params: DetectionParams, poll: float, moves: list[int], confirm: int
) -> None:
    """The same through the detector, whose glitches drop buckets and force new ones: a
    random walk of up to 6 points a poll (moves, retraces, events) over two windows."""
    params = replace(
        params,
        confirm_polls=confirm,
        abs_move=0.02,
        log_odds_move=0.2,
        cooldown_seconds=0.0,
        max_data_age_seconds=1e9,
    )
    detector, rules = Detector(), FixedRules(params)
    step = round(poll * bucket_width(params), 6)
    price = 0.5
    for i in range(int(2 * WINDOW_BUCKETS / poll)):
        price = min(1.0, max(0.0, round(price + moves[i % len(moves)] / 1000, 3)))
        snapshot = snapshot_at(step * (i + 1), price)
        detector.observe(snapshot, rules, snapshot.taken_at)
        state = detector.export_state(MARKET)
        assert isinstance(state, MarketState)
        assert 1 <= len(state.times) <= WINDOW_BUCKETS + 2


# --- (c) required_move ----------------------------------------------------------------------

move_params = st.builds(
    DetectionParams,
    window_seconds=st.floats(1.0, 30 * 86400.0),
    volatility_z=st.floats(0.0, 10.0),
    volatility_floor=st.floats(0.0, 1.0),
    volatility_min_horizon_seconds=st.floats(0.0, 86400.0),
)
variances = st.floats(0.0, 1e-2)
durations = st.floats(0.0, 1e7)


@settings(max_examples=200)
@given(params=move_params, variance=variances, a=durations, b=durations)
def test_required_move_is_monotone_in_duration(
    params: DetectionParams, variance: float, a: float, b: float
) -> None:
    shorter, longer = sorted((a, b))
    assert required_move(variance, shorter, params) <= required_move(variance, longer, params)


@settings(max_examples=100)
@given(params=move_params, variance=variances, seconds=durations)
def test_required_move_is_zero_when_the_test_is_off(
    params: DetectionParams, variance: float, seconds: float
) -> None:
    assert required_move(variance, seconds, replace(params, volatility_z=0.0)) == 0.0


@settings(max_examples=200)
@given(params=move_params, variance=variances, seconds=durations)
def test_required_move_is_the_documented_formula(
    params: DetectionParams, variance: float, seconds: float
) -> None:
    h = max(seconds, params.volatility_min_horizon_seconds)
    expected = params.volatility_z * max(
        math.sqrt(variance * h),
        params.volatility_floor * math.sqrt(min(h, params.window_seconds) / 3600),
    )
    assert math.isclose(required_move(variance, seconds, params), expected, rel_tol=1e-12)


@pytest.mark.parametrize(
    ("variance_per_sqrt_hour", "seconds", "expected"),
    [
        (0.0, 0.0, 3.0 * 0.01 * 0.5),  # floor at min_horizon (900 s = 1/4 h)
        (0.0, 3600.0, 3.0 * 0.01),  # floor at 1 h
        (0.0, 86400.0, 3.0 * 0.01),  # floor capped at the window (1 h)
        (0.05, 3600.0, 3.0 * 0.05),  # own volatility over 1 h
        (0.05, 4 * 3600.0, 3.0 * 0.05 * 2),  # ... over 4 h: not capped
        (0.05, 60.0, 3.0 * 0.05 * 0.5),  # short moves judged over min_horizon
    ],
)
def test_required_move_examples(
    variance_per_sqrt_hour: float, seconds: float, expected: float
) -> None:
    variance = per_second(variance_per_sqrt_hour)
    assert required_move(variance, seconds, PARAMS) == pytest.approx(expected, rel=1e-12)
