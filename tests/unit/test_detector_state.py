"""Detector state as plain data and its record format (`detector_state`, format version 2),
and the detector's `export_state` / `restore_state`: a restored detector cannot tell it
stopped."""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from polymarket_kafka.detection import ConvictionChange, Detector, RuleSource
from polymarket_kafka.detector_state import (
    OUTDATED_VERSIONS,
    STATE_FORMAT_VERSION,
    ClosedMarket,
    MarketState,
    PendingMove,
    StateFormatError,
    StateFormatOutdated,
    decode,
    encode,
)
from polymarket_kafka.events import build_event
from polymarket_kafka.models import MarketSnapshot
from polymarket_kafka.ruleset import DEFAULT_RULES_PATH, load_rules
from polymarket_kafka.ruleset.params import DetectionParams
from tests.factories import FixedRules, make_event

T0 = datetime(2024, 11, 5, 23, 0, 0, 123456, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MARKETS = ("0xaaa", "0xbbb", "0xccc")
#: A short window (10 s buckets), cooldown and hysteresis, so short paths reach every part
#: of the state: buckets leaving the window (volatility, `exit`), anchors, pending moves.
RULES = FixedRules(DetectionParams(window_seconds=600.0, cooldown_seconds=120.0, hysteresis=0.01))
#: The same without the volatility test: a move across a long gap is judged by its size.
THRESHOLDS_ONLY = FixedRules(
    DetectionParams(window_seconds=600.0, cooldown_seconds=120.0, hysteresis=0.01, volatility_z=0)
)


def snapshot(market_id: str, at: datetime, price: float, **fields: Any) -> MarketSnapshot:
    return MarketSnapshot(
        market_id=market_id,
        question=f"Question {market_id}?",
        yes_price=price,
        taken_at=at,
        liquidity=fields.pop("liquidity", 1000.0),
        tags=fields.pop("tags", ("a", "b")),
        **fields,
    )


def series(market_id: str, *steps: tuple[float, float]) -> list[MarketSnapshot]:
    """Snapshots of one market: (seconds after T0, price) each."""
    return [snapshot(market_id, T0 + timedelta(seconds=s), price) for s, price in steps]


def later(snap: MarketSnapshot, seconds: float, **update: Any) -> MarketSnapshot:
    return snap.model_copy(
        update={"taken_at": snap.taken_at + timedelta(seconds=seconds), **update}
    )


def observe(
    detector: Detector, path: Sequence[MarketSnapshot], rules: RuleSource = RULES
) -> list[ConvictionChange]:
    return [change for snap in path for change in detector.observe(snap, rules, snap.taken_at)]


def moved(detector: Detector) -> Detector:
    """A fresh detector given everything `detector` knows, through the wire format."""
    restored = Detector()
    for market_id in sorted(detector.known()):
        state = detector.export_state(market_id)
        assert state is not None
        restored.restore_state(decode(encode(state)))
    return restored


# --- the record format ----------------------------------------------------------------


def full_state() -> MarketState:
    """A state with every optional part set."""
    snap = snapshot("0xaaa", T0, 0.61, spread=0.02, category="politics")
    at = snap.taken_at.timestamp()
    return MarketState(
        market_id="0xaaa",
        state_key="window=600",
        last_snapshot=snap,
        times=(at - 90.0, at - 30.0, at),
        prices=(0.5, 0.55, 0.61),
        bucket_end=at + 9.876544,
        variance=6.944444444444445e-07,
        anchor=at - 90.0,
        exit=(at - 700.25, 0.45),
        previous=(at - 30.0, 0.55),
        cooldown_until=at + 120.0,
        pending=PendingMove(at - 90.0, 0.5, at, 0.11, 1),
        last_event=(at - 3600.0, -1),
    )


def bare_state() -> MarketState:
    """A state with no optional part set (a market seen once)."""
    snap = snapshot("0xaaa", T0, 0.4)
    at = snap.taken_at.timestamp()
    return MarketState("0xaaa", "k", snap, (at,), (0.4,), at + 10.0, 6.944444444444445e-07)


def test_the_record_is_compact_versioned_json_with_exact_times() -> None:
    state = full_state()
    at = T0.timestamp()
    record = encode(state)
    document = json.loads(record)
    assert document["v"] == STATE_FORMAT_VERSION == 2
    assert b" " not in record.replace(b"Question 0xaaa?", b"")
    # Observation times are whole microseconds: written as integers, the first and then the
    # steps between them.
    assert "t" not in document
    assert document["t0"] == round((at - 90.0) * 1e6)
    assert document["dt"] == [60_000_000, 30_000_000]
    assert document["p"] == [0.5, 0.55, 0.61]
    assert document["bucket_end"] == at + 9.876544
    assert document["variance"] == 6.944444444444445e-07
    assert document["anchor"] == at - 90.0
    assert document["exit"] == [at - 700.25, 0.45]
    assert document["previous"] == [at - 30.0, 0.55]
    assert document["cooldown_until"] == at + 120.0
    assert document["pending"] == {
        "baseline_at": at - 90.0,
        "baseline_price": 0.5,
        "first_at": at,
        "first_move": 0.11,
        "polls": 1,
    }
    assert document["last_event"] == [at - 3600.0, -1]
    assert document["snapshot"]["taken_at"] == "2024-11-05T23:00:00.123456Z"
    assert "closed" not in document["snapshot"]  # defaults are left out
    assert decode(record) == state


def test_a_state_without_its_optional_parts_writes_them_as_null() -> None:
    document = json.loads(encode(bare_state()))
    assert {key for key, value in document.items() if value is None} == {
        "anchor",
        "exit",
        "previous",
        "cooldown_until",
        "pending",
        "last_event",
    }
    assert decode(encode(bare_state())) == bare_state()


def test_a_closed_market_is_one_small_record() -> None:
    record = encode(ClosedMarket("0xbbb"))
    assert json.loads(record) == {"v": 2, "market_id": "0xbbb", "closed": True}
    assert decode(record) == ClosedMarket("0xbbb")


def test_integer_numbers_are_read_as_float_seconds() -> None:
    # Another writer may print a whole number without its ".0".
    state = decode(edit(t=[1, 2, 3], bucket_end=4, anchor=1, exit=[0, 1], cooldown_until=9))
    assert isinstance(state, MarketState)
    assert state.times == (1.0, 2.0, 3.0) and all(type(t) is float for t in state.times)
    assert type(state.bucket_end) is float and state.bucket_end == 4.0
    assert state.exit == (0.0, 1.0) and all(type(x) is float for x in state.exit)
    assert type(state.anchor) is float and type(state.cooldown_until) is float


#: Every float JSON can carry: subnormals, the largest, -0.0, integral ones (1e16).
floats = st.floats(allow_nan=False, allow_infinity=False)
pairs = st.tuples(floats, floats)
#: Any non-empty text: JSON escapes what needs it (lone surrogates included).
names = st.text(min_size=1)
non_negative = st.none() | st.floats(min_value=0.0, allow_infinity=False)
optional_floats = st.none() | floats


@st.composite
def market_snapshots(draw: st.DrawFn) -> MarketSnapshot:
    resolution = draw(st.sampled_from([None, None, "yes", "no", "void", "unknown"]))
    return MarketSnapshot(
        market_id=draw(names),
        question=draw(st.text()),
        yes_price=draw(st.floats(0.0, 1.0)),
        taken_at=draw(st.datetimes(timezones=st.just(UTC))),
        closed=resolution is not None or draw(st.booleans()),
        resolution=resolution,
        volume=draw(non_negative),
        liquidity=draw(non_negative),
        category=draw(st.none() | st.text()),
        tags=tuple(draw(st.lists(st.text(), max_size=3))),
        spread=draw(non_negative),
        threshold=draw(optional_floats),
        window_seconds=draw(optional_floats),
        cooldown_seconds=draw(optional_floats),
    )


@st.composite
def market_states(draw: st.DrawFn) -> MarketState:
    buckets = draw(st.lists(pairs, min_size=1, max_size=62))
    return MarketState(
        market_id=draw(names),
        state_key=draw(names),
        last_snapshot=draw(market_snapshots()),
        times=tuple(at for at, _ in buckets),
        prices=tuple(price for _, price in buckets),
        bucket_end=draw(floats),
        variance=draw(floats.map(abs)),
        anchor=draw(optional_floats),
        exit=draw(st.none() | pairs),
        previous=draw(st.none() | pairs),
        cooldown_until=draw(optional_floats),
        pending=draw(
            st.none() | st.builds(PendingMove, floats, floats, floats, floats, st.integers())
        ),
        last_event=draw(st.none() | st.tuples(floats, st.sampled_from([1, -1]))),
    )


def test_times_that_are_not_whole_microseconds_are_written_as_float_seconds() -> None:
    state = replace(full_state(), times=(0.1 + 0.2, 1e-7, 2.5))
    document = json.loads(encode(state))
    assert document["t"] == [0.1 + 0.2, 1e-7, 2.5] and "t0" not in document
    assert decode(encode(state)) == state


@given(state=market_states() | st.builds(ClosedMarket, names))
def test_every_state_round_trips(state: MarketState | ClosedMarket) -> None:
    record = encode(state)
    assert decode(record) == state
    # Byte for byte too: -0.0 keeps its sign, every number its type.
    assert encode(decode(record)) == record


@given(micros=st.integers(0, 2**52 - 1))
def test_snapshot_times_survive_float_seconds_to_the_microsecond(micros: int) -> None:
    # The detector keeps `taken_at.timestamp()`; an event's baseline time is made back from
    # it: below 2**52 us (the year 2112) it is exactly the datetime observed.
    at = EPOCH + timedelta(microseconds=micros)
    assert datetime.fromtimestamp(at.timestamp(), UTC) == at


def changed(document: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`document` with `changes` applied: a value replaces a field, `...` removes it."""
    for key, value in changes.items():
        if value is ...:
            del document[key]
        else:
            document[key] = value
    return document


def edit(**changes: Any) -> bytes:
    """The record of `full_state()` with fields replaced (`...`: removed). Changing `t` turns
    the record's bucket times into float seconds (`t`) first."""
    document = json.loads(encode(full_state()))
    if "t" in changes:
        micros = itertools.accumulate(document.pop("dt"), initial=document.pop("t0"))
        document["t"] = [m / 1e6 for m in micros]
    return json.dumps(changed(document, changes)).encode()


def edit_pending(**changes: Any) -> bytes:
    """The record of `full_state()` with fields of its pending move replaced (`...`: removed)."""
    return edit(pending=changed(json.loads(encode(full_state()))["pending"], changes))


def wrong(field: str, kind: str) -> str:
    return f"state record: {field} must be {kind}"


NUMBER = "a finite number"
NUMBER_OR_NULL = "a finite number or null"
PAIR = "[time, price] (finite) or null"
NUMBERS = "a non-empty list of numbers"
UNSUPPORTED_3 = "state format version 3 is not supported (this service reads version 2)"
LAST_EVENT = "state of 0xaaa: last_event must be [time, 1 | -1] or null"


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (b"\xff\xfe", "not a JSON state record: "),
        (b"\xc3\x28", "not a JSON state record: "),
        (b"", "not a JSON state record: "),
        (b"{not json", "not a JSON state record: "),
        (b"[1, 2]", "a state record must be a JSON object"),
        (b'"0xaaa"', "a state record must be a JSON object"),
        (b"null", "a state record must be a JSON object"),
        (edit(v=3), UNSUPPORTED_3),
        (edit(v=0), "state format version 0 is not supported (this service reads version 2)"),
        (edit(v="2"), "state format version '2' is not supported (this service reads version 2)"),
        (edit(v=True), "state format version True is not supported (this service reads version 2)"),
        (edit(v=2.0), "state format version 2.0 is not supported (this service reads version 2)"),
        (edit(v=...), "state format version None is not supported (this service reads version 2)"),
        (b'{"v":3,"market_id":"0xaaa","closed":true}', UNSUPPORTED_3),
        (edit(market_id=...), "state record without market_id"),
        (edit(market_id=""), wrong("market_id", "a non-empty string")),
        (edit(market_id=7), wrong("market_id", "a non-empty string")),
        (b'{"v":2,"closed":true}', "state record without market_id"),
        (edit(state_key=...), "state record without state_key"),
        (edit(state_key=None), wrong("state_key", "a non-empty string")),
        (edit(snapshot=...), "state record without snapshot"),
        (edit(snapshot=[]), wrong("snapshot", "an object")),
        (edit(snapshot={"market_id": "0xaaa"}), "state of 0xaaa: invalid snapshot: "),
        (edit(t=...), "state record without dt"),  # neither form of the bucket times
        (edit(dt=...), "state record without dt"),
        (edit(t0=...), "state record without t0"),
        (edit(dt=[1.5, 2]), wrong("dt", "a list of integers")),
        (edit(dt=[True, 2]), wrong("dt", "a list of integers")),
        (edit(dt="1,2"), wrong("dt", "a list of integers")),
        (edit(t0=1.5), wrong("t0", "an integer")),
        (edit(t0=10**400), "state of 0xaaa: t0 and dt must give finite times"),
        (edit(variance=-1e-9), "state of 0xaaa: variance must not be negative"),
        (edit(t=[]), wrong("t", NUMBERS)),
        (edit(t=None), wrong("t", NUMBERS)),
        (edit(t="1,2,3"), wrong("t", NUMBERS)),
        (edit(t=[1.0, "2", 3.0]), wrong("t", NUMBERS)),
        (edit(t=[1.0, True, 3.0]), wrong("t", NUMBERS)),
        (edit(t=[1.0, None, 3.0]), wrong("t", NUMBERS)),
        (edit(p=...), "state record without p"),
        (edit(p=[]), wrong("p", NUMBERS)),
        (edit(p=[0.5, "0.6", 0.7]), wrong("p", NUMBERS)),
        (edit(p=[0.5, 0.6]), "state of 0xaaa: 2 prices for 3 bucket times"),
        (edit(t=[1.0]), "state of 0xaaa: 3 prices for 1 bucket times"),
        (edit(bucket_end=...), "state record without bucket_end"),
        (edit(bucket_end=None), wrong("bucket_end", NUMBER)),
        (edit(bucket_end="soon"), wrong("bucket_end", NUMBER)),
        (edit(bucket_end=False), wrong("bucket_end", NUMBER)),
        (edit(variance=...), "state record without variance"),
        (edit(variance=None), wrong("variance", NUMBER)),
        (edit(variance=[1e-7]), wrong("variance", NUMBER)),
        (edit(anchor=...), "state record without anchor"),
        (edit(anchor="x"), wrong("anchor", NUMBER_OR_NULL)),
        (edit(anchor=True), wrong("anchor", NUMBER_OR_NULL)),
        (edit(exit=...), "state record without exit"),
        (edit(exit=[1.0]), wrong("exit", PAIR)),
        (edit(exit=[1.0, 0.5, 2.0]), wrong("exit", PAIR)),
        (edit(exit=[1.0, "0.5"]), wrong("exit", PAIR)),
        (edit(exit={"at": 1.0, "price": 0.5}), wrong("exit", PAIR)),
        (edit(previous=...), "state record without previous"),
        (edit(previous=[None, 0.5]), wrong("previous", PAIR)),
        (edit(previous=0.5), wrong("previous", PAIR)),
        (edit(cooldown_until=...), "state record without cooldown_until"),
        (edit(pending=...), "state record without pending"),
        (edit(last_event=...), "state record without last_event"),
        (edit(cooldown_until="later"), wrong("cooldown_until", NUMBER_OR_NULL)),
        (edit(cooldown_until=[1.0]), wrong("cooldown_until", NUMBER_OR_NULL)),
        (edit(pending=5), "state of 0xaaa: pending must be an object or null"),
        (edit(pending=[]), "state of 0xaaa: pending must be an object or null"),
        (edit_pending(baseline_at=...), "state record without pending.baseline_at"),
        (edit_pending(baseline_price=...), "state record without pending.baseline_price"),
        (edit_pending(first_at=...), "state record without pending.first_at"),
        (edit_pending(first_move=...), "state record without pending.first_move"),
        (edit_pending(polls=...), "state record without pending.polls"),
        (edit_pending(baseline_at="x"), wrong("pending.baseline_at", NUMBER)),
        (edit_pending(baseline_price=None), wrong("pending.baseline_price", NUMBER)),
        (edit_pending(first_at=True), wrong("pending.first_at", NUMBER)),
        (edit_pending(first_move="0.1"), wrong("pending.first_move", NUMBER)),
        (edit_pending(polls=1.5), wrong("pending.polls", "an integer")),
        (edit_pending(polls=1.0), wrong("pending.polls", "an integer")),
        (edit_pending(polls=True), wrong("pending.polls", "an integer")),
        (edit(last_event=[1.0, 0]), LAST_EVENT),
        (edit(last_event=[1.0, 2]), LAST_EVENT),
        (edit(last_event=[1.0, 1.0]), LAST_EVENT),
        (edit(last_event=[1.0, True]), LAST_EVENT),
        (edit(last_event=["x", 1]), LAST_EVENT),
        (edit(last_event=[1.0]), LAST_EVENT),
        (edit(last_event=[1.0, 1, 1]), LAST_EVENT),
        (edit(last_event="x"), LAST_EVENT),
    ],
)
def test_an_unreadable_record_is_a_clear_error(record: bytes, message: str) -> None:
    with pytest.raises(StateFormatError) as caught:
        decode(record)
    text = str(caught.value)
    assert not isinstance(caught.value, StateFormatOutdated)
    assert text.startswith(message) if message.endswith(": ") else text == message
    # One line (a snapshot's validation errors, pydantic's own text, come after the prefix).
    assert "\n" not in text.split(": invalid snapshot")[0]


# --- records of an earlier detector ---------------------------------------------------


def v1_record(**changes: Any) -> bytes:
    """A record as detection v1 wrote it (integer microseconds, every observation kept)."""
    document: dict[str, Any] = {
        "v": 1,
        "market_id": "0xaaa",
        "state_key": "k",
        "snapshot": {
            "market_id": "0xaaa",
            "question": "Question 0xaaa?",
            "yes_price": 0.61,
            "taken_at": "2024-11-05T23:00:00.123456Z",
            "liquidity": 1000.0,
        },
        "t0": 1_730_847_510_123_456,
        "dt": [60_000_000, 30_000_000],
        "p": [0.5, 0.55, 0.61],
        "cooldown_until": None,
        "pending": None,
        "last_event": None,
    }
    return json.dumps(changed(document, changes)).encode()


def test_a_record_of_the_earlier_format_is_outdated_not_misread() -> None:
    assert frozenset({1}) == OUTDATED_VERSIONS
    with pytest.raises(StateFormatOutdated) as caught:
        decode(v1_record())
    assert isinstance(caught.value, StateFormatError)  # a reader of either catches it
    assert caught.value.market_id == "0xaaa" and caught.value.version == 1
    assert str(caught.value) == (
        "state of 0xaaa is format version 1 (an earlier detector); this service reads version 2"
    )


@pytest.mark.parametrize(
    "record",
    [
        b'{"v":1,"market_id":"0xaaa","closed":true}',  # a closed market: the same applies
        v1_record(snapshot=None, t0="garbage"),  # nothing past the market id is read
    ],
)
def test_any_record_of_the_earlier_format_is_outdated(record: bytes) -> None:
    with pytest.raises(StateFormatOutdated) as caught:
        decode(record)
    assert (caught.value.market_id, caught.value.version) == ("0xaaa", 1)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (v1_record(market_id=...), "state record without market_id"),
        (v1_record(market_id=""), "state record: market_id must be a non-empty string"),
    ],
)
def test_an_earlier_record_without_its_market_is_only_unreadable(
    record: bytes, message: str
) -> None:
    # Outdated records are counted by market; one that names none is an ordinary error.
    with pytest.raises(StateFormatError) as caught:
        decode(record)
    assert not isinstance(caught.value, StateFormatOutdated)
    assert str(caught.value).startswith(message)


# --- export and restore: a restored detector cannot tell it stopped ----------------------


@functools.cache
def default_rules() -> RuleSource:
    return load_rules(DEFAULT_RULES_PATH)


#: The rules the property runs under: the short window above (buckets leave it, feeding the
#: volatility), and the shipped rules (tiers by liquidity and categories, each with its own
#: window, thresholds and confirmation).
RULE_SOURCES: dict[str, Callable[[], RuleSource]] = {
    "short window": lambda: RULES,
    "rules/default.yaml": default_rules,
}

LIQUIDITY = (None, 5_000.0, 50_000.0, 500_000.0)
CATEGORIES = (None, "Politics", "Sports", "Crypto")

#: Time from one poll to the next: 1 s to 2 h (in microseconds), every scale as likely.
interval = (
    st.integers(1_000_000, 60_000_000)
    | st.integers(60_000_000, 900_000_000)
    | st.integers(900_000_000, 7_200_000_000)
)
#: One poll: the time since the previous one, the price's noise in ticks of 0.001, and now
#: and then a thin book (ignored) or a snapshot that arrives too late (ignored as stale).
poll = st.tuples(interval, st.integers(-6, 6), st.sampled_from([None] * 12 + ["thin", "late"]))
#: A stretch of one market's walk: a jump in ticks at its first poll (or none), whether the
#: jump is only a spike (gone at the next poll: a glitch), its polls, a new liquidity (a
#: change of tier, which reshapes the state) and whether it ends closed.
stretch = st.tuples(
    st.sampled_from(MARKETS),
    st.just(0) | st.integers(-300, 300),
    st.sampled_from([False, False, True]),
    st.lists(poll, min_size=1, max_size=12),
    st.sampled_from([None] * 6 + list(LIQUIDITY)),
    st.sampled_from([None] * 15 + ["yes", "no", "void"]),
)
Stretch = tuple[str, int, bool, list[tuple[int, int, str | None]], float | None, str | None]


@st.composite
def walks(draw: st.DrawFn) -> list[tuple[MarketSnapshot, datetime]]:
    """A random walk of each market with jumps, in stretches interleaved, at irregular
    intervals: the snapshots and when each reaches the detector."""
    price = {m: draw(st.integers(1, 999)) for m in MARKETS}  # in ticks
    liquidity = {m: draw(st.sampled_from(LIQUIDITY)) for m in MARKETS}
    category = {m: draw(st.sampled_from(CATEGORIES)) for m in MARKETS}
    stretches: list[Stretch] = draw(st.lists(stretch, max_size=8))
    out, at = [], T0
    for market_id, jump, spike, polls, new_liquidity, resolution in stretches:
        if new_liquidity is not None:
            liquidity[market_id] = new_liquidity
        for n, (micros, noise, oddity) in enumerate(polls):
            at += timedelta(microseconds=micros)
            level = price[market_id] + noise + (jump if n == 0 else 0)
            price[market_id] = min(999, max(1, level - (jump if spike and n == 0 else 0)))
            ticks = min(999, max(1, level)) if n == 0 else price[market_id]
            closes = resolution is not None and n == len(polls) - 1
            snap = snapshot(
                market_id,
                at,
                ticks / 1000,
                liquidity=liquidity[market_id],
                category=category[market_id],
                tags=(),
                spread=0.2 if oddity == "thin" else None,
                closed=closes,
                resolution=resolution if closes else None,
            )
            out.append((snap, at + timedelta(seconds=400 if oddity == "late" else 2)))
    return out


def decisions(
    detector: Detector, rules: RuleSource, walk: Sequence[tuple[MarketSnapshot, datetime]]
) -> list[ConvictionChange]:
    return [change for snap, now in walk for change in detector.observe(snap, rules, now)]


def decided(change: ConvictionChange) -> tuple[Any, ...]:
    """What an event says, catch-up marking (`gap_seconds`) aside."""
    return (
        change.market_id,
        change.observed_at,
        change.baseline_price,
        change.baseline_at,
        change.price,
        change.rule,
        change.severity,
        change.final,
    )


@pytest.mark.parametrize("rules_name", sorted(RULE_SOURCES))
@given(walk=walks(), data=st.data())
def test_restore_equals_never_stopped(
    rules_name: str, walk: list[tuple[MarketSnapshot, datetime]], data: st.DataObject
) -> None:
    """Stopped at random points (up to three), each time every market's state exported,
    encoded, decoded and restored into a fresh detector: the same events as the detector
    that never stopped, and in the end the same state."""
    rules = RULE_SOURCES[rules_name]()
    never_stopped, expected, pending_after = Detector(), [], []
    for n, (snap, now) in enumerate(walk, 1):
        expected += never_stopped.observe(snap, rules, now)
        if never_stopped.pending(snap.market_id):
            pending_after.append(n)
    assert all(change.gap_seconds is None for change in expected)

    # Anywhere, and often where a move waits for its confirming poll (the crash the state
    # topic is for; a pending move rarely lasts more than one poll).
    points = st.integers(0, len(walk))
    if pending_after:
        points |= st.sampled_from(pending_after)
    cuts = data.draw(st.lists(points, max_size=3).map(sorted), label="cuts")
    detector, emitted, done = Detector(), [], 0
    for cut in cuts:
        emitted += decisions(detector, rules, walk[done:cut])
        detector, done = moved(detector), cut
    emitted += decisions(detector, rules, walk[done:])

    assert [decided(change) for change in emitted] == [decided(change) for change in expected]
    assert detector.known() == never_stopped.known()
    for market_id in never_stopped.known():
        assert detector.export_state(market_id) == never_stopped.export_state(market_id)


@given(walk=walks())
def test_every_reachable_state_round_trips(walk: list[tuple[MarketSnapshot, datetime]]) -> None:
    detector = Detector()
    decisions(detector, default_rules(), walk)
    for market_id in detector.known():
        state = detector.export_state(market_id)
        assert state is not None
        assert decode(encode(state)) == state


def test_export_of_an_unknown_market_is_none_and_restore_replaces() -> None:
    detector = Detector()
    assert detector.export_state("0xaaa") is None
    observe(detector, series("0xaaa", (0, 0.4), (1, 0.41)))
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
    path = series("0xaaa", (0, 0.4), (60, 0.6))
    observe(detector, path[:1])
    exported = detector.export_state("0xaaa")
    observe(detector, path[1:])
    assert isinstance(exported, MarketState)
    assert exported.times == (T0.timestamp(),) and exported.pending is None
    assert detector.export_state("0xaaa") != exported


def test_a_move_pending_at_the_stop_is_confirmed_after_the_restore() -> None:
    """The crash the state topic is for: the first crossing was seen, the process stopped
    before the confirming poll; the restarted detector still measures from 0.40."""
    path = series("0xaaa", (0, 0.4), (30, 0.6), (60, 0.61))
    before = Detector()
    assert observe(before, path[:2]) == []
    assert before.pending("0xaaa")
    after = moved(before)
    (change,) = observe(after, path[2:])
    assert change.price == 0.61 and change.baseline_price == 0.4
    assert change.baseline_at == path[0].taken_at  # the very datetime observed
    # Without the state, the restarted detector took 0.61 as its baseline: nothing.
    assert observe(Detector(), path[2:]) == []


# --- catch-up marking: the one thing a restored detector does differently ---------------


def restored_after(path: list[MarketSnapshot], rules: RuleSource = THRESHOLDS_ONLY) -> Detector:
    before = Detector()
    observe(before, path, rules)
    return moved(before)


def test_a_move_made_while_down_is_a_catch_up_with_the_gap() -> None:
    path = series("0xaaa", (0, 0.4), (30, 0.4))
    after = restored_after(path)
    back = later(path[-1], 10 * 3600, yes_price=0.6)
    assert observe(after, [back], THRESHOLDS_ONLY) == []  # opens, from 0.40
    (change,) = observe(after, [later(back, 30)], THRESHOLDS_ONLY)
    assert change.baseline_price == 0.4 and change.gap_seconds == 36_000.0
    event = build_event(change)
    assert event.catch_up is True and event.gap_seconds == 36_000.0
    # The next move is measured from after the gap: an ordinary event.
    up = later(back, 3600, yes_price=0.85)
    (second,) = observe(after, [up, later(up, 30)], THRESHOLDS_ONLY)
    assert second.gap_seconds is None and build_event(second).catch_up is False


REBASELINE = FixedRules(
    DetectionParams(
        window_seconds=600.0,
        cooldown_seconds=120.0,
        hysteresis=0.01,
        volatility_z=0,
        catch_up="rebaseline",
    )
)


#: 0xaaa quiet at 0.40, 0xbbb with a move pending (0.40 -> 0.60) when the service stops.
def before_the_stop() -> list[MarketSnapshot]:
    return [*series("0xaaa", (0, 0.4)), *series("0xbbb", (0, 0.4), (30, 0.6))]


def both_at_075_after_ten_hours(
    after: Detector, path: list[MarketSnapshot], rules: RuleSource, polls: int
) -> list[ConvictionChange]:
    """Both markets at 0.75 for `polls` polls 30 s apart, ten hours after `path` ended."""
    gap = path[-1].taken_at + timedelta(hours=10)
    return observe(
        after,
        [
            snapshot(market_id, gap + timedelta(seconds=30 * n), 0.75)
            for n in range(polls)
            for market_id in MARKETS[:2]
        ],
        rules,
    )


def test_a_rule_that_rebaselines_reports_no_move_made_while_down() -> None:
    # A move made while down and one pending at the stop: neither fires, the first price
    # after the gap is the baseline; the next move is measured from it, as an ordinary one.
    path = before_the_stop()
    after = restored_after(path, REBASELINE)
    assert after.pending("0xbbb")
    assert both_at_075_after_ten_hours(after, path, REBASELINE, polls=3) == []
    assert not after.pending("0xbbb")
    up = snapshot("0xaaa", path[-1].taken_at + timedelta(hours=10, minutes=5), 0.9)
    (change,) = observe(after, [up, later(up, 30)], REBASELINE)
    assert change.baseline_price == 0.75 and change.gap_seconds is None


def test_the_same_restore_reports_both_moves_by_default() -> None:
    path = before_the_stop()
    seen = both_at_075_after_ten_hours(restored_after(path), path, THRESHOLDS_ONLY, polls=2)
    assert sorted(c.market_id for c in seen) == list(MARKETS[:2])
    assert all(c.gap_seconds is not None and c.baseline_price == 0.4 for c in seen)


def test_a_pending_move_confirmed_after_the_restore_is_a_catch_up() -> None:
    path = series("0xaaa", (0, 0.4), (30, 0.6))
    after = restored_after(path)
    (change,) = observe(after, [later(path[-1], 300)], THRESHOLDS_ONLY)
    assert change.gap_seconds == 300.0


def test_a_market_that_closed_while_down_closes_as_a_catch_up() -> None:
    path = series("0xaaa", (0, 0.4), (30, 0.45))
    after = restored_after(path)
    closing = later(path[-1], 2 * 86_400, closed=True, resolution="yes", yes_price=1.0)
    (final,) = observe(after, [closing], THRESHOLDS_ONLY)
    assert final.final and final.gap_seconds == 2 * 86_400.0


def test_a_glitch_after_the_restore_ends_the_gap() -> None:
    path = series("0xaaa", (0, 0.4), (30, 0.4))
    after = restored_after(path)
    spike = later(path[-1], 3600, yes_price=0.6)
    assert observe(after, [spike], THRESHOLDS_ONLY) == []  # opens from 0.40
    back = later(spike, 30, yes_price=0.45)
    assert observe(after, [back], THRESHOLDS_ONLY) == []  # retraced: a glitch, re-anchored
    assert not after.pending("0xaaa")
    up = later(spike, 60, yes_price=0.8)
    (change,) = observe(after, [up, later(up, 60)], THRESHOLDS_ONLY)
    assert change.baseline_price == 0.45 and change.gap_seconds is None


def test_a_never_stopped_detector_marks_nothing() -> None:
    path = series("0xaaa", (0, 0.4), (10 * 3600, 0.6), (10 * 3600 + 1e-6, 0.6))
    changes = observe(Detector(), path, THRESHOLDS_ONLY)
    assert [c.gap_seconds for c in changes] == [None]


def test_gap_seconds_only_on_a_catch_up_event() -> None:
    with pytest.raises(ValidationError, match="gap_seconds is set on a catch-up event"):
        make_event(catch_up=True)
    with pytest.raises(ValidationError, match="gap_seconds is set on a catch-up event"):
        make_event(gap_seconds=5.0)


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("variance", wrong("variance", NUMBER)),
        ("anchor", wrong("anchor", NUMBER_OR_NULL)),
        ("cooldown_until", wrong("cooldown_until", NUMBER_OR_NULL)),
        ("exit", wrong("exit", PAIR)),
        ("t", wrong("t", "a list of finite numbers")),
        ("last_event", LAST_EVENT),
    ],
)
def test_numbers_too_large_for_a_float_are_refused(field: str, message: str) -> None:
    """JSON's 1e999 reads as infinity: a time or volatility that would stop the market."""
    value = {"t": [1.0, "BIG", 3.0], "exit": ["BIG", 0.5], "last_event": ["BIG", 1]}.get(
        field, "BIG"
    )
    record = edit(**{field: value}).replace(b'"BIG"', b"1e999")
    with pytest.raises(StateFormatError) as caught:
        decode(record)
    assert str(caught.value) == message


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_json_constants_are_refused(constant: str) -> None:
    record = edit().replace(
        b'"variance": 6.944444444444445e-07', b'"variance": ' + constant.encode()
    )
    assert constant.encode() in record
    with pytest.raises(StateFormatError, match=f"{constant} is not a number"):
        decode(record)
