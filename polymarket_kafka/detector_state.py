"""One market's detector state as plain data, and its versioned wire format (pure).

The durable-state work (issue 11) keeps each market's detector state in a compacted Kafka
topic, keyed by market id, so a restarted service carries on where it stopped instead of
taking the current price as a new baseline. This module is the part without I/O: what the
state is (`MarketState`, `ClosedMarket`) and how it is written (`encode`) and read back
(`decode`). `Detector.export_state` / `Detector.restore_state` convert to and from it.

Format, version 2 (`STATE_FORMAT_VERSION`, detection v2): one compact JSON object, UTF-8.
Times are float seconds since the Unix epoch (UTC).

```
{"v": 2, "market_id": "0x..", "state_key": "<DetectionParams.state_key>",
 "snapshot": {<MarketSnapshot, JSON mode, defaults left out>},
 "t0": <time of the oldest window bucket's last observation, integer microseconds>,
 "dt": [<microseconds from the previous bucket's to the next one's>, ...],
 "p": [<price of each bucket's last observation, oldest first>, ...],
 "bucket_end": <end of the current bucket>, "variance": <volatility, per second>,
 "anchor": <time> | null, "exit": [<time>, <price>] | null, "previous": [<time>, <price>] | null,
 "cooldown_until": <time> | null,
 "pending": {"baseline_at": t, "baseline_price": x, "first_at": t, "first_move": x,
             "polls": n} | null,
 "last_event": [<time>, 1 | -1] | null}
```

Bucket times are observation times, whole microseconds, so they are written as integers (a
third the size of float seconds); a window holding any other time (only possible for a state
built by hand) is written `"t": [<float seconds>, ...]` instead, and both forms are read.
A market remembered as closed is `{"v": 2, "market_id": "0x..", "closed": true}`. Numbers are
written with Python's shortest round-tripping `repr`, so `decode(encode(s)) == s` for every
state (a property test checks it) and a restored detector decides exactly as the one that
never stopped. Snapshot times are whole microseconds, and below 2**52 us (the year 2112) a
float of seconds holds them exactly, so the detector's float times convert back to the very
datetimes observed.

Older versions: a version-1 record (detection v1 kept every observation of its window, in
integer microseconds) raises `StateFormatOutdated`; the restore counts such markets and logs
one line, and they start afresh (a v1 window holds no volatility, and replaying it into v2
buckets would need its rule's window, which the record does not carry). Any other version
raises `StateFormatError` naming it: a newer service may add fields; an older one must not
guess.

Size: at most 62 buckets whatever the polling rate (`detection.window.WINDOW_BUCKETS`),
about 16 bytes each plus the snapshot: 1.6 KB for a full window (bench/state_size.py).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from typing import Any, TypeGuard, cast

from pydantic import ValidationError

from polymarket_kafka.models import MarketSnapshot

__all__ = [
    "OUTDATED_VERSIONS",
    "STATE_FORMAT_VERSION",
    "ClosedMarket",
    "MarketState",
    "PendingMove",
    "StateFormatError",
    "StateFormatOutdated",
    "StateRecord",
    "decode",
    "encode",
]

STATE_FORMAT_VERSION = 2
#: Versions written by earlier detectors: read as `StateFormatOutdated` (start afresh).
OUTDATED_VERSIONS = frozenset({1})

#: One record of the state topic: (market id, `encode`d state, or None for a tombstone).
StateRecord = tuple[str, bytes | None]


class StateFormatError(ValueError):
    """A state record that cannot be read: not JSON, another version, a field missing or of
    the wrong type. `str()` says which, in one line."""


class StateFormatOutdated(StateFormatError):
    """A record of an earlier detector's format (see the module docstring): its market
    starts afresh."""

    def __init__(self, market_id: str, version: int) -> None:
        super().__init__(
            f"state of {market_id} is format version {version} (an earlier detector); "
            f"this service reads version {STATE_FORMAT_VERSION}"
        )
        self.market_id = market_id
        self.version = version


@dataclass(frozen=True)
class PendingMove:
    """A move seen once and waiting for confirmation (times: seconds since the epoch)."""

    baseline_at: float
    baseline_price: float
    first_at: float
    first_move: float
    polls: int


@dataclass(frozen=True)
class MarketState:
    """Everything the detector holds about one tracked market (times: float seconds since
    the epoch; see `detection.window.MarketWindow` for the window's fields)."""

    market_id: str
    state_key: str
    last_snapshot: MarketSnapshot
    #: Time of each window bucket's last observation, oldest first (never empty).
    times: tuple[float, ...]
    #: The price of each bucket's last observation.
    prices: tuple[float, ...]
    bucket_end: float
    #: Volatility of the price, variance per second.
    variance: float
    anchor: float | None = None
    exit: tuple[float, float] | None = None
    #: The observation before the last one (time, price).
    previous: tuple[float, float] | None = None
    cooldown_until: float | None = None
    pending: PendingMove | None = None
    #: (time, +1 or -1) of the last event, for hysteresis.
    last_event: tuple[float, int] | None = None


@dataclass(frozen=True)
class ClosedMarket:
    """A market whose final event was emitted: it is not tracked again."""

    market_id: str


def encode(state: MarketState | ClosedMarket) -> bytes:
    """The record of `state` in the current format (compact JSON, UTF-8)."""
    if isinstance(state, ClosedMarket):
        document: dict[str, Any] = {
            "v": STATE_FORMAT_VERSION,
            "market_id": state.market_id,
            "closed": True,
        }
    else:
        pending = state.pending
        document = {
            "v": STATE_FORMAT_VERSION,
            "market_id": state.market_id,
            "state_key": state.state_key,
            "snapshot": state.last_snapshot.model_dump(mode="json", exclude_defaults=True),
            **_times(state.times),
            "p": list(state.prices),
            "bucket_end": state.bucket_end,
            "variance": state.variance,
            "anchor": state.anchor,
            "exit": None if state.exit is None else list(state.exit),
            "previous": None if state.previous is None else list(state.previous),
            "cooldown_until": state.cooldown_until,
            "pending": None
            if pending is None
            else {
                "baseline_at": pending.baseline_at,
                "baseline_price": pending.baseline_price,
                "first_at": pending.first_at,
                "first_move": pending.first_move,
                "polls": pending.polls,
            },
            "last_event": None if state.last_event is None else list(state.last_event),
        }
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()


def decode(record: bytes) -> MarketState | ClosedMarket:
    """Read a record written by `encode`; `StateFormatOutdated` for an earlier detector's
    format, `StateFormatError` for anything else unreadable."""
    try:
        document = json.loads(record, parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateFormatError(f"not a JSON state record: {exc}") from None
    if not isinstance(document, dict):
        raise StateFormatError("a state record must be a JSON object")
    version = document.get("v")
    reader = _Reader(document)
    if _is_int(version) and version in OUTDATED_VERSIONS:
        raise StateFormatOutdated(reader.text("market_id"), version)
    if not _is_int(version) or version != STATE_FORMAT_VERSION:
        raise StateFormatError(
            f"state format version {version!r} is not supported (this service reads "
            f"version {STATE_FORMAT_VERSION})"
        )
    market_id = reader.text("market_id")
    if document.get("closed") is True:
        return ClosedMarket(market_id)
    times = _read_times(reader, market_id)
    prices = reader.numbers("p")
    if len(prices) != len(times):
        raise StateFormatError(
            f"state of {market_id}: {len(prices)} prices for {len(times)} bucket times"
        )
    try:
        snapshot = MarketSnapshot.model_validate(reader.mapping("snapshot"))
    except ValidationError as exc:
        raise StateFormatError(f"state of {market_id}: invalid snapshot: {exc}") from None
    pending_document = reader.raw("pending")
    pending = None
    if pending_document is not None:
        if not isinstance(pending_document, dict):
            raise StateFormatError(f"state of {market_id}: pending must be an object or null")
        inner = _Reader(pending_document, "pending.")
        pending = PendingMove(
            baseline_at=inner.number("baseline_at"),
            baseline_price=inner.number("baseline_price"),
            first_at=inner.number("first_at"),
            first_move=inner.number("first_move"),
            polls=inner.integer("polls"),
        )
    last_event = reader.raw("last_event")
    if last_event is not None and not (
        isinstance(last_event, list)
        and len(last_event) == 2
        and _is_number(last_event[0])
        and math.isfinite(last_event[0])
        and _is_int(last_event[1])
        and last_event[1] in (1, -1)
    ):
        raise StateFormatError(f"state of {market_id}: last_event must be [time, 1 | -1] or null")
    return MarketState(
        market_id=market_id,
        state_key=reader.text("state_key"),
        last_snapshot=snapshot,
        times=tuple(times),
        prices=tuple(prices),
        bucket_end=reader.number("bucket_end"),
        variance=_variance(reader.number("variance"), market_id),
        anchor=reader.optional_number("anchor"),
        exit=reader.optional_pair("exit"),
        previous=reader.optional_pair("previous"),
        cooldown_until=reader.optional_number("cooldown_until"),
        pending=pending,
        last_event=None if last_event is None else (float(last_event[0]), last_event[1]),
    )


#: Seconds below which a time in whole microseconds is exact as a float (2**52 us: 2112).
_MICROS_EXACT_BELOW = 2**52 / 1e6


def _times(times: tuple[float, ...]) -> dict[str, Any]:
    """The bucket times as integer microseconds (`t0`, `dt`) when they are exactly that, as
    every observation time is; else as float seconds (`t`)."""
    if not all(-_MICROS_EXACT_BELOW < at < _MICROS_EXACT_BELOW for at in times):
        return {"t": list(times)}
    micros = [round(at * 1e6) for at in times]
    if any(m / 1e6 != at for m, at in zip(micros, times, strict=True)):
        return {"t": list(times)}
    return {"t0": micros[0], "dt": [b - a for a, b in itertools.pairwise(micros)]}


def _read_times(reader: _Reader, market_id: str) -> list[float]:
    if reader.has("t"):
        return reader.numbers("t")
    deltas = reader.integers("dt")
    micros = itertools.accumulate(deltas, initial=reader.integer("t0"))
    try:
        times = [m / 1e6 for m in micros]
    except OverflowError:
        times = [math.inf]
    if not all(map(math.isfinite, times)):
        raise StateFormatError(f"state of {market_id}: t0 and dt must give finite times")
    return times


def _no_constant(name: str) -> float:
    # `json.loads` reads NaN and Infinity by default; `encode` never writes them, and a
    # non-finite time, price or volatility would stop the market (or the checkpoint).
    raise StateFormatError(f"not a JSON state record: {name} is not a number")


def _variance(value: float, market_id: str) -> float:
    if value < 0:
        raise StateFormatError(f"state of {market_id}: variance must not be negative")
    return value


def _is_int(value: object) -> TypeGuard[int]:
    """A JSON integer (`type(...) is int`: a boolean is not one here)."""
    return type(value) is int


_NUMBER: frozenset[type] = frozenset({int, float})
_FLOAT: frozenset[type] = frozenset({float})


def _is_number(value: object) -> TypeGuard[int | float]:
    """A JSON number (booleans excluded)."""
    return type(value) in _NUMBER


class _Reader:
    """Typed access to a decoded record's fields, with errors naming the field."""

    def __init__(self, document: dict[str, Any], prefix: str = "") -> None:
        self._document = document
        self._prefix = prefix

    def _get(self, name: str) -> object:
        if name not in self._document:
            raise StateFormatError(f"state record without {self._prefix}{name}")
        return self._document[name]

    def _wrong(self, name: str, kind: str) -> StateFormatError:
        return StateFormatError(f"state record: {self._prefix}{name} must be {kind}")

    def has(self, name: str) -> bool:
        return name in self._document

    def integers(self, name: str) -> list[int]:
        raw = self._get(name)
        # Types compared as a set (C speed): a restore checks every bucket's.
        if not isinstance(raw, list) or not set(map(type, raw)) <= {int}:
            raise self._wrong(name, "a list of integers")
        return raw

    def raw(self, name: str) -> object:
        """The field as decoded (it must be present, null included)."""
        return self._get(name)

    def text(self, name: str) -> str:
        value = self._get(name)
        if not isinstance(value, str) or not value:
            raise self._wrong(name, "a non-empty string")
        return value

    def integer(self, name: str) -> int:
        value = self._get(name)
        if not _is_int(value):
            raise self._wrong(name, "an integer")
        return value

    def number(self, name: str) -> float:
        value = self._get(name)
        if not _is_number(value) or not math.isfinite(value):
            raise self._wrong(name, "a finite number")
        return float(value)

    def optional_number(self, name: str) -> float | None:
        value = self._get(name)
        if value is None:
            return None
        if not _is_number(value) or not math.isfinite(value):
            raise self._wrong(name, "a finite number or null")
        return float(value)

    def optional_pair(self, name: str) -> tuple[float, float] | None:
        value = self._get(name)
        if value is None:
            return None
        if not (
            isinstance(value, list)
            and len(value) == 2
            and all(map(_is_number, value))
            and all(map(math.isfinite, value))
        ):
            raise self._wrong(name, "[time, price] (finite) or null")
        return float(value[0]), float(value[1])

    def numbers(self, name: str) -> list[float]:
        raw = self._get(name)
        # Types compared as a set (C speed): a restore checks every bucket's.
        kinds = set(map(type, raw)) if isinstance(raw, list) else None
        if not raw or kinds is None or not kinds <= _NUMBER:
            raise self._wrong(name, "a non-empty list of numbers")
        if not all(map(math.isfinite, cast("list[float]", raw))):
            raise self._wrong(name, "a list of finite numbers")
        assert isinstance(raw, list)
        return [float(v) for v in raw] if kinds != _FLOAT else raw

    def mapping(self, name: str) -> dict[str, Any]:
        value = self._get(name)
        if not isinstance(value, dict):
            raise self._wrong(name, "an object")
        return value
