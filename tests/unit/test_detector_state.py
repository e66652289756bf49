"""Detector state as plain data and its record format (`detector_state`), and the
detector's `export_state` / `restore_state`: a restored detector cannot tell it stopped."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from polymarket_kafka import detector_state
from polymarket_kafka.detection import ConvictionChange, Detector
from polymarket_kafka.detector_state import (
    STATE_FORMAT_VERSION,
    ClosedMarket,
    MarketState,
    PendingMove,
    StateFormatError,
    decode,
    encode,
)
from polymarket_kafka.events import build_event
from polymarket_kafka.models import MarketSnapshot
from polymarket_kafka.ruleset.params import DetectionParams
from tests.factories import FixedRules, make_event

T0 = datetime(2024, 11, 5, 23, 0, 0, 123456, tzinfo=UTC)
MARKETS = ("0xaaa", "0xbbb")
#: Short window, cooldown and hysteresis, so short paths reach every part of the state.
RULES = FixedRules(DetectionParams(window_seconds=600.0, cooldown_seconds=120.0, hysteresis=0.01))

#: One step of a price path: which market, seconds later (microseconds included), the
#: price, and whether the market closes there (then with a resolution, `void` included).
step = st.tuples(
    st.sampled_from(MARKETS),
    st.integers(1, 400_000_000),  # microseconds after the previous step, up to 400 s
    st.sampled_from([0.05, 0.2, 0.35, 0.4, 0.43, 0.5, 0.52, 0.6, 0.61, 0.7, 0.95, 0.999]),
    st.sampled_from([None] * 12 + ["yes", "void"]),
)


def snapshots(steps: list[tuple[str, int, float, str | None]]) -> list[MarketSnapshot]:
    out, at = [], T0
    for market_id, micros, price, resolution in steps:
        at += timedelta(microseconds=micros)
        out.append(
            MarketSnapshot(
                market_id=market_id,
                question=f"Question {market_id}?",
                yes_price=price,
                taken_at=at,
                closed=resolution is not None,
                resolution=resolution,
                liquidity=1000.0,
                tags=("a", "b"),
            )
        )
    return out


def feed(detector: Detector, path: list[MarketSnapshot]) -> list[tuple[Any, ...]]:
    return [
        view(change) for snap in path for change in detector.observe(snap, RULES, snap.taken_at)
    ]


def view(change: ConvictionChange) -> tuple[Any, ...]:
    return (
        change.market_id,
        change.rule,
        change.price,
        change.observed_at,
        change.baseline_price,
        change.baseline_at,
        change.final,
        change.severity,
    )


def moved(detector: Detector) -> Detector:
    """A fresh detector given everything `detector` knows, through the wire format."""
    restored = Detector()
    for market_id in sorted(detector.known()):
        state = detector.export_state(market_id)
        assert state is not None
        restored.restore_state(decode(encode(state)))
    return restored


@given(path=st.lists(step, max_size=40), cut=st.integers(0, 40))
def test_restore_then_observe_equals_never_stopped(
    path: list[tuple[str, int, float, str | None]], cut: int
) -> None:
    snaps = snapshots(path)
    never_stopped = Detector()
    expected = feed(never_stopped, snaps)

    before = Detector()
    emitted = feed(before, snaps[:cut])
    after = moved(before)
    emitted += feed(after, snaps[cut:])

    assert emitted == expected
    assert after.known() == never_stopped.known()
    for market_id in never_stopped.known():
        assert after.export_state(market_id) == never_stopped.export_state(market_id)


@given(path=st.lists(step, max_size=40))
def test_every_reachable_state_round_trips(path: list[tuple[str, int, float, str | None]]) -> None:
    detector = Detector()
    feed(detector, snapshots(path))
    for market_id in detector.known():
        state = detector.export_state(market_id)
        assert state is not None
        assert decode(encode(state)) == state


def full_state() -> MarketState:
    """A state with every optional part set."""
    (snap,) = snapshots([("0xaaa", 1, 0.61, None)])
    at = snap.taken_at
    return MarketState(
        market_id="0xaaa",
        state_key="window=600",
        history=((at - timedelta(seconds=90), 0.5), (at - timedelta(seconds=30), 0.55), (at, 0.61)),
        last_snapshot=snap.model_copy(update={"spread": 0.02, "category": "politics"}),
        cooldown_until=at + timedelta(seconds=120),
        pending=PendingMove(at - timedelta(seconds=90), 0.5, at, 0.11, 1),
        last_event=(at - timedelta(hours=1), -1),
    )


def test_the_record_is_compact_versioned_json_with_exact_times() -> None:
    state = full_state()
    record = encode(state)
    document = json.loads(record)
    assert document["v"] == STATE_FORMAT_VERSION == 1
    assert b" " not in record.replace(b"Question 0xaaa?", b"")
    assert document["t0"] == int(
        (state.history[0][0] - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1)
    )
    assert document["dt"] == [60_000_000, 30_000_000]
    assert document["p"] == [0.5, 0.55, 0.61]
    assert "closed" not in document["snapshot"]  # defaults are left out
    assert decode(record) == state


def test_a_closed_market_is_one_small_record() -> None:
    record = encode(ClosedMarket("0xbbb"))
    assert json.loads(record) == {"v": 1, "market_id": "0xbbb", "closed": True}
    assert decode(record) == ClosedMarket("0xbbb")


def edit(**changes: Any) -> bytes:
    document = json.loads(encode(full_state()))
    for key, value in changes.items():
        if value is ...:
            del document[key]
        else:
            document[key] = value
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (b"\xff\xfe", "not a JSON state record"),
        (b"{not json", "not a JSON state record"),
        (b"[1, 2]", "a state record must be a JSON object"),
        (edit(v=2), "state format version 2 is not supported (this service reads version 1)"),
        (edit(v=...), "state format version None is not supported"),
        (edit(market_id=...), "state record without market_id"),
        (edit(market_id=""), "state record: market_id must be a non-empty string"),
        (edit(t0="yesterday"), "state record: t0 must be an integer"),
        (edit(t0=True), "state record: t0 must be an integer"),
        (edit(dt=[1, -5]), "state record: dt must be a list of non-negative integers"),
        (edit(dt="1,2"), "state record: dt must be a list"),
        (edit(p=[]), "state record: p must be a non-empty list of numbers"),
        (edit(p=[0.5, "0.6", 0.7]), "state record: p must be a non-empty list of numbers"),
        (edit(p=[0.5, 0.6]), "state of 0xaaa: 2 prices for 3 observation times"),
        (edit(snapshot=[]), "state record: snapshot must be an object"),
        (edit(snapshot={"market_id": "0xaaa"}), "state of 0xaaa: invalid snapshot"),
        (edit(pending=5), "state of 0xaaa: pending must be an object or null"),
        (edit(pending={"baseline_at": 1}), "state record without pending.baseline_price"),
        (edit(last_event=[1, 0]), "state of 0xaaa: last_event must be [time, 1 | -1] or null"),
        (edit(last_event="x"), "state of 0xaaa: last_event must be [time, 1 | -1] or null"),
        (edit(cooldown_until=1.5), "state of 0xaaa: cooldown_until must be an integer or null"),
        (edit(state_key=None), "state record: state_key must be a non-empty string"),
    ],
)
def test_an_unreadable_record_is_a_clear_error(record: bytes, message: str) -> None:
    with pytest.raises(StateFormatError) as caught:
        decode(record)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value).split(": invalid snapshot")[0]


def test_export_of_an_unknown_market_is_none_and_restore_replaces() -> None:
    detector = Detector()
    assert detector.export_state("0xaaa") is None
    feed(detector, snapshots([("0xaaa", 1, 0.4, None), ("0xaaa", 1_000_000, 0.41, None)]))
    state = full_state()
    detector.restore_state(state)
    assert detector.export_state("0xaaa") == state
    assert detector.pending("0xaaa")  # the restored pending move
    detector.restore_state(ClosedMarket("0xaaa"))
    assert detector.is_closed("0xaaa") and detector.tracked() == frozenset()
    assert detector.export_state("0xaaa") == ClosedMarket("0xaaa")


def test_a_restored_closed_market_respects_the_bound_on_closed_markets() -> None:
    detector = Detector(max_closed=2)
    for market_id in ("0x1", "0x2", "0x3"):
        detector.restore_state(ClosedMarket(market_id))
    assert detector.known() == frozenset({"0x2", "0x3"})


def test_an_exported_state_does_not_change_with_later_observations() -> None:
    detector = Detector()
    path = snapshots([("0xaaa", 1, 0.4, None), ("0xaaa", 60_000_000, 0.6, None)])
    feed(detector, path[:1])
    exported = detector.export_state("0xaaa")
    feed(detector, path[1:])
    assert isinstance(exported, MarketState)
    assert len(exported.history) == 1 and exported.pending is None
    assert detector.export_state("0xaaa") != exported


def test_a_move_pending_at_the_stop_is_confirmed_after_the_restore() -> None:
    """The crash the state topic is for: the first crossing was seen, the process stopped
    before the confirming poll; the restarted detector still measures from 0.40."""
    path = snapshots(
        [
            ("0xaaa", 1, 0.4, None),
            ("0xaaa", 30_000_000, 0.6, None),
            ("0xaaa", 30_000_000, 0.61, None),
        ]
    )
    before = Detector()
    assert feed(before, path[:2]) == []
    assert before.pending("0xaaa")
    after = moved(before)
    (change,) = feed(after, path[2:])
    assert change[2] == 0.61 and change[4] == 0.4 and change[5] == path[0].taken_at
    # Without the state, the restarted detector took 0.61 as its baseline: nothing.
    assert feed(Detector(), path[2:]) == []


# --- catch-up marking: the one thing a restored detector does differently ---------------


def gap_of(change: ConvictionChange) -> float | None:
    return change.gap_seconds


def restored_after(path: list[MarketSnapshot]) -> Detector:
    before = Detector()
    feed(before, path)
    return moved(before)


def test_a_move_made_while_down_is_a_catch_up_with_the_gap() -> None:
    path = snapshots([("0xaaa", 1, 0.4, None), ("0xaaa", 30_000_000, 0.4, None)])
    after = restored_after(path)
    later = snapshots([("0xaaa", 1, 0.6, None)])[0].model_copy(
        update={"taken_at": path[-1].taken_at + timedelta(hours=10)}
    )
    assert after.observe(later, RULES, later.taken_at) == []  # opens, from 0.40
    confirm = later.model_copy(update={"taken_at": later.taken_at + timedelta(seconds=30)})
    (change,) = after.observe(confirm, RULES, confirm.taken_at)
    assert change.baseline_price == 0.4 and gap_of(change) == 36_000.0
    event = build_event(change)
    assert event.catch_up is True and event.gap_seconds == 36_000.0
    # The next move is measured from after the gap: an ordinary event.
    up = confirm.model_copy(update={"taken_at": confirm.taken_at + timedelta(hours=1)})
    after.observe(up.model_copy(update={"yes_price": 0.85}), RULES, up.taken_at)
    again = up.model_copy(
        update={"taken_at": up.taken_at + timedelta(seconds=30), "yes_price": 0.85}
    )
    (second,) = after.observe(again, RULES, again.taken_at)
    assert gap_of(second) is None and build_event(second).catch_up is False


REBASELINE = FixedRules(
    DetectionParams(
        window_seconds=600.0, cooldown_seconds=120.0, hysteresis=0.01, catch_up="rebaseline"
    )
)


#: 0xaaa quiet at 0.40, 0xbbb with a move pending (0.40 -> 0.60) when the service stops.
BEFORE_THE_STOP: list[tuple[str, int, float, str | None]] = [
    ("0xaaa", 1, 0.4, None),
    ("0xbbb", 1, 0.4, None),
    ("0xbbb", 30_000_000, 0.6, None),
]


def both_at_075_after_ten_hours(
    after: Detector, path: list[MarketSnapshot], rules: FixedRules, polls: int
) -> list[ConvictionChange]:
    """Both markets at 0.75 for `polls` polls 30 s apart, ten hours after `path` ended."""
    gap = path[-1].taken_at + timedelta(hours=10)
    seen: list[ConvictionChange] = []
    for n in range(polls):
        for market_id in MARKETS:
            snap = path[0].model_copy(
                update={
                    "market_id": market_id,
                    "yes_price": 0.75,
                    "taken_at": gap + timedelta(seconds=30 * n),
                }
            )
            seen += after.observe(snap, rules, snap.taken_at)
    return seen


def test_a_rule_that_rebaselines_reports_no_move_made_while_down() -> None:
    # A move made while down and one pending at the stop: neither fires, the first price
    # after the gap is the baseline; the next move is measured from it, as an ordinary one.
    path = snapshots(BEFORE_THE_STOP)
    after = restored_after(path)
    assert after.pending("0xbbb")
    assert both_at_075_after_ten_hours(after, path, REBASELINE, polls=3) == []
    assert not after.pending("0xbbb")
    gap = path[-1].taken_at + timedelta(hours=10)
    up = path[0].model_copy(update={"yes_price": 0.9, "taken_at": gap + timedelta(minutes=5)})
    after.observe(up, REBASELINE, up.taken_at)
    again = up.model_copy(update={"taken_at": up.taken_at + timedelta(seconds=30)})
    (change,) = after.observe(again, REBASELINE, again.taken_at)
    assert change.baseline_price == 0.75 and gap_of(change) is None


def test_the_same_restore_reports_both_moves_by_default() -> None:
    path = snapshots(BEFORE_THE_STOP)
    seen = both_at_075_after_ten_hours(restored_after(path), path, RULES, polls=2)
    assert sorted(c.market_id for c in seen) == list(MARKETS)
    assert all(gap_of(c) is not None and c.baseline_price == 0.4 for c in seen)


def test_a_pending_move_confirmed_after_the_restore_is_a_catch_up() -> None:
    path = snapshots([("0xaaa", 1, 0.4, None), ("0xaaa", 30_000_000, 0.6, None)])
    after = restored_after(path)
    confirm = path[-1].model_copy(update={"taken_at": path[-1].taken_at + timedelta(minutes=5)})
    (change,) = after.observe(confirm, RULES, confirm.taken_at)
    assert gap_of(change) == 300.0


def test_a_market_that_closed_while_down_closes_as_a_catch_up() -> None:
    path = snapshots([("0xaaa", 1, 0.4, None), ("0xaaa", 30_000_000, 0.45, None)])
    after = restored_after(path)
    closing = path[-1].model_copy(
        update={
            "taken_at": path[-1].taken_at + timedelta(days=2),
            "closed": True,
            "resolution": "yes",
            "yes_price": 1.0,
        }
    )
    (final,) = after.observe(closing, RULES, closing.taken_at)
    assert final.final and gap_of(final) == 2 * 86_400.0


def test_a_glitch_after_the_restore_ends_the_gap() -> None:
    path = snapshots([("0xaaa", 1, 0.4, None), ("0xaaa", 30_000_000, 0.4, None)])
    after = restored_after(path)
    t = path[-1].taken_at + timedelta(hours=1)
    spike = path[-1].model_copy(update={"taken_at": t, "yes_price": 0.6})
    assert after.observe(spike, RULES, t) == []  # opens from 0.40
    back = spike.model_copy(update={"taken_at": t + timedelta(seconds=30), "yes_price": 0.45})
    assert after.observe(back, RULES, back.taken_at) == []  # retraced: a glitch, re-baselined
    assert not after.pending("0xaaa")
    up = back.model_copy(update={"taken_at": t + timedelta(minutes=1), "yes_price": 0.8})
    after.observe(up, RULES, up.taken_at)
    again = up.model_copy(update={"taken_at": t + timedelta(minutes=2)})
    (change,) = after.observe(again, RULES, again.taken_at)
    assert change.baseline_price == 0.45 and gap_of(change) is None


def test_a_never_stopped_detector_marks_nothing() -> None:
    path = snapshots(
        [("0xaaa", 1, 0.4, None), ("0xaaa", 10 * 3_600_000_000, 0.6, None), ("0xaaa", 1, 0.6, None)]
    )
    detector = Detector()
    changes = [c for s in path for c in detector.observe(s, RULES, s.taken_at)]
    assert [gap_of(c) for c in changes] == [None]


def test_gap_seconds_only_on_a_catch_up_event() -> None:
    with pytest.raises(ValidationError, match="gap_seconds is set on a catch-up event"):
        make_event(catch_up=True)
    with pytest.raises(ValidationError, match="gap_seconds is set on a catch-up event"):
        make_event(gap_seconds=5.0)


@given(micros=st.integers(0, 2**52 - 1))
def test_fast_observation_times_are_exact_to_the_microsecond(micros: int) -> None:
    # A restore builds times through float seconds below the bound (faster): exactly the
    # times timedelta arithmetic gives, over the whole range.
    assert detector_state._times(micros, [])[0] == detector_state._time(micros)


def test_observation_times_past_the_fast_range_are_exact_too() -> None:
    edge = 2**52 - 1
    assert detector_state._times(edge, []) == [detector_state._time(edge)]
    far = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999
    assert detector_state._times(far - 5, [2, 3]) == [
        detector_state._time(far - 5),
        detector_state._time(far - 3),
        detector_state._time(far),
    ]
    assert detector_state._times(far, [])[0].isoformat() == "9999-12-31T23:59:59.999999+00:00"
