"""Rule unit tests in YAML, in the spirit of `promtool test rules` (`polymarket-kafka rules test`).

Why this file is over 400 lines: one feature (`rules test`): the YAML test-file format, its
validation with line-precise errors, the run and the report; they change together.

A test file describes synthetic markets as compact price series, the events the rules must
produce on them, and nothing else: the runner feeds the series through the production
`Detector` (as `replay` does, `now = taken_at`) and compares the events it got with the
events expected, by market, time and direction (and severity / rule when given). Every
expected event must appear and no other event may: `expected_events: []` asserts silence.

    rule_files: [../default.yaml]     # optional, relative to this file; --rules wins
    evaluation_interval: 1m           # optional poll interval (default 1m)
    warm_up: 3d                       # optional: each market first trades flat this long
    tests:
      - name: a 0.40 -> 0.65 move fires toward yes
        markets:
          m:                          # market key; used as condition id unless condition_id
            liquidity: 50000          # optional: condition_id, question, category, tags,
            series: 0.40x10 0.65x5    #   liquidity, volume, spread, start, interval
        expected_events:
          - {market: m, at: 12m, direction: toward_yes, severity: extreme}

Series notation (as promtool's): space-separated tokens, one poll each, `interval` apart from
`start` (default 2024-01-01T00:00:00Z): `0.5` one poll; `0.5x3` the value then 3 more polls
(4 polls); `0.4+0.05x4` 0.40 0.45 0.50 0.55 0.60 (4 steps); `0.6-0.1x2` 0.6 0.5 0.4; `_` a
missed poll (time advances, no snapshot); `_x3` three missed polls. `at` is an offset from
the market's `start` (`12m`, `1h30m`) or an absolute ISO time, and must be a poll time of
that market. `warm_up` (file or market) feeds, before `start`, polls every `interval` at the
market's first price for that long: the detector then knows the market as one watched for
that time (its volatility), instead of judging a market never seen before.
rules/tests/README.md documents the format for rule authors.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from polymarket_kafka.detection import Detector, RuleSource
from polymarket_kafka.events import build_event
from polymarket_kafka.models import MarketSnapshot, PolymarketEvent, utc
from polymarket_kafka.ruleset.durations import format_duration, parse_duration

__all__ = [
    "DEFAULT_START",
    "CaseResult",
    "ExpectedEvent",
    "MarketSpec",
    "ObservedEvent",
    "RuleTestCase",
    "RuleTestError",
    "RuleTestFile",
    "format_case",
    "load_rule_tests",
    "parse_rule_tests",
    "parse_series",
    "run_case",
]

DEFAULT_START = datetime(2024, 1, 1, tzinfo=UTC)
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_TOKEN = re.compile(
    rf"(?P<missing>_)(?:x(?P<missing_n>\d+))?"
    rf"|(?P<a>{_NUMBER})(?:(?P<sign>[+-])(?P<b>{_NUMBER}))?(?:x(?P<n>\d+))?"
)


class RuleTestError(ValueError):
    """A test file is invalid; `str()` names the file, the test and the key at fault."""


# --- series notation -----------------------------------------------------------------------


def parse_series(text: str) -> tuple[float | None, ...]:
    """Expand the compact notation (module docstring) into one price (or None) per poll."""
    values: list[float | None] = []
    for position, token in enumerate(text.split(), start=1):
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise ValueError(
                f"token {position} {token!r} is not a value, 'a+bxN', 'a-bxN', 'axN', '_' or '_xN'"
            )
        if match["missing"]:
            values.extend([None] * (int(match["missing_n"]) if match["missing_n"] else 1))
            continue
        if match["sign"] and not match["n"]:
            raise ValueError(f"token {position} {token!r}: a step needs a count, e.g. 0.4+0.05x4")
        start = float(match["a"])
        step = float(match["b"] or 0.0) * (-1.0 if match["sign"] == "-" else 1.0)
        for i in range(int(match["n"] or 0) + 1):
            value = round(start + i * step, 10)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"token {position} {token!r} reaches {value:g}, outside [0, 1]")
            values.append(value)
    if not any(value is not None for value in values):
        raise ValueError("series has no value (at least one poll must have a price)")
    return tuple(values)


def _duration(value: object, *, positive: bool = False) -> float:
    # ValueError, not TypeError, throughout: pydantic reports only the former as a field error.
    if not isinstance(value, str):
        raise ValueError(f"use a duration like 15m, 90s or 1h30m, got {value!r}")  # noqa: TRY004
    seconds = parse_duration(value)
    if positive and seconds <= 0:
        raise ValueError(f"must be longer than 0s, got {value!r}")
    return seconds


# --- file model ----------------------------------------------------------------------------

_STRICT = ConfigDict(extra="forbid", frozen=True)
NonNegative = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


class MarketSpec(BaseModel):
    """One synthetic market of a test."""

    model_config = _STRICT

    condition_id: str | None = Field(default=None, min_length=1)
    question: str | None = None
    category: str | None = None
    tags: tuple[str, ...] = ()
    liquidity: NonNegative | None = None
    volume: NonNegative | None = None
    spread: NonNegative | None = None
    start: datetime = DEFAULT_START
    interval: float | None = None
    #: Seconds of flat trading at the first price before `start` (None: the file's).
    warm_up: float | None = None
    series: tuple[float | None, ...]

    @field_validator("interval", mode="before")
    @classmethod
    def _interval(cls, value: object) -> float | None:
        return None if value is None else _duration(value, positive=True)

    @field_validator("warm_up", mode="before")
    @classmethod
    def _warm_up(cls, value: object) -> float | None:
        return None if value is None else _duration(value)

    @field_validator("series", mode="before")
    @classmethod
    def _series(cls, value: object) -> tuple[float | None, ...]:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ValueError(f"use the compact notation, e.g. '0.40x10 0.65x5', got {value!r}")  # noqa: TRY004
        return parse_series(value)

    @field_validator("start", mode="after")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return utc(value)


class _ExpectedSpec(BaseModel):
    model_config = _STRICT

    market: str
    at: str | datetime
    direction: Literal["toward_yes", "toward_no"]
    severity: str | None = None
    rule: str | None = None


class _CaseSpec(BaseModel):
    model_config = _STRICT

    name: str = Field(min_length=1)
    markets: dict[str, MarketSpec] = Field(min_length=1)
    expected_events: list[_ExpectedSpec]


class _FileSpec(BaseModel):
    model_config = _STRICT

    rule_files: list[str] | None = Field(default=None, min_length=1, max_length=1)
    evaluation_interval: float = 60.0
    warm_up: float = 0.0
    tests: list[dict[str, Any]] = Field(min_length=1)

    @field_validator("warm_up", mode="before")
    @classmethod
    def _warm_up(cls, value: object) -> float:
        return _duration(value)

    @field_validator("rule_files", mode="before")
    @classmethod
    def _one_file(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("evaluation_interval", mode="before")
    @classmethod
    def _interval(cls, value: object) -> float:
        return _duration(value, positive=True)


@dataclass(frozen=True)
class ExpectedEvent:
    market: str
    at: datetime
    offset: timedelta
    direction: str
    severity: str | None = None
    rule: str | None = None

    def describe(self) -> str:
        extra = "".join(
            f" {key}={value}"
            for key, value in (("severity", self.severity), ("rule", self.rule))
            if value is not None
        )
        return f"{self.market} at {_offset(self.offset)} ({_iso(self.at)}) {self.direction}{extra}"


@dataclass(frozen=True)
class ObservedEvent:
    market: str
    offset: timedelta
    event: PolymarketEvent

    def describe(self) -> str:
        e = self.event
        return (
            f"{self.market} at {_offset(self.offset)} ({_iso(e.timestamp)}) "
            f"{e.direction.value} severity={e.severity} rule={e.rule} "
            f"{e.baseline_yes_price:g} -> {e.yes_price:g} (from {_iso(e.baseline_timestamp)})"
        )


@dataclass(frozen=True)
class RuleTestCase:
    name: str
    markets: Mapping[str, MarketSpec]
    interval: float
    expected: tuple[ExpectedEvent, ...]
    #: The file's `warm_up`, in seconds (a market's own wins).
    warm_up: float = 0.0

    def market_interval(self, key: str) -> float:
        return self.markets[key].interval or self.interval

    def market_warm_up(self, key: str) -> float:
        own = self.markets[key].warm_up
        return self.warm_up if own is None else own


@dataclass(frozen=True)
class RuleTestFile:
    path: Path
    #: Resolved `rule_files` entry (None: the file names none).
    rule_file: Path | None
    cases: tuple[RuleTestCase, ...]


@dataclass(frozen=True)
class CaseResult:
    name: str
    missing: tuple[ExpectedEvent, ...]
    unexpected: tuple[ObservedEvent, ...]
    matched: int

    @property
    def passed(self) -> bool:
        return not self.missing and not self.unexpected


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _offset(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    return ("-" if seconds < 0 else "+") + format_duration(abs(seconds))


# --- loading -------------------------------------------------------------------------------


def load_rule_tests(path: str | Path) -> RuleTestFile:
    """Read and validate a test file; `RuleTestError` lists every problem found."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RuleTestError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_rule_tests(text, path)


def parse_rule_tests(text: str, path: Path) -> RuleTestFile:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RuleTestError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise RuleTestError(f"{path}: expected a mapping with a 'tests' list")
    try:
        spec = _FileSpec.model_validate(raw)
    except ValidationError as exc:
        raise RuleTestError(_issues(exc, f"{path}")) from None
    problems: list[str] = []
    cases: list[RuleTestCase] = []
    names: set[str] = set()
    for index, raw_case in enumerate(spec.tests):
        name = raw_case.get("name") if isinstance(raw_case.get("name"), str) else None
        where = f"{path}: test {name!r}" if name else f"{path}: tests[{index}]"
        try:
            case_spec = _CaseSpec.model_validate(raw_case)
            case = _case(case_spec, spec.evaluation_interval, spec.warm_up)
        except ValidationError as exc:
            problems.append(_issues(exc, where))
            continue
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if case.name in names:
            problems.append(f"{where}: duplicate test name")
        names.add(case.name)
        cases.append(case)
    if problems:
        raise RuleTestError("\n".join(problems))
    rule_file = (
        Path(os.path.normpath(path.parent / spec.rule_files[0])) if spec.rule_files else None
    )
    return RuleTestFile(path=path, rule_file=rule_file, cases=tuple(cases))


def _issues(exc: ValidationError, where: str) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: {key}: {message}")
    return "\n".join(lines)


def _case(spec: _CaseSpec, default_interval: float, warm_up: float = 0.0) -> RuleTestCase:
    ids = [market.condition_id or key for key, market in spec.markets.items()]
    if len(set(ids)) != len(ids):
        raise ValueError("markets: two markets share a condition id")
    expected: list[ExpectedEvent] = []
    for index, item in enumerate(spec.expected_events):
        key = f"expected_events.{index}"
        market = spec.markets.get(item.market)
        if market is None:
            known = ", ".join(spec.markets)
            raise ValueError(f"{key}.market: unknown market {item.market!r} (markets: {known})")
        if isinstance(item.at, datetime):
            at = utc(item.at)
        else:
            try:
                at = _absolute(item.at, market.start)
            except ValueError as exc:
                raise ValueError(f"{key}.at: {exc}") from None
        interval = market.interval or default_interval
        polls = {t for t, price in _polls(market, interval) if price is not None}
        if at not in polls:
            raise ValueError(
                f"{key}.at: {_offset(at - market.start)} ({_iso(at)}) is not a poll of market "
                f"{item.market!r} (polls every {format_duration(interval)} from "
                f"{_iso(market.start)}, {len(market.series)} polls, '_' excluded)"
            )
        expected.append(
            ExpectedEvent(
                market=item.market,
                at=at,
                offset=at - market.start,
                direction=item.direction,
                severity=item.severity,
                rule=item.rule,
            )
        )
    return RuleTestCase(
        name=spec.name,
        markets=spec.markets,
        interval=default_interval,
        expected=tuple(expected),
        warm_up=warm_up,
    )


def _absolute(text: str, start: datetime) -> datetime:
    try:
        return start + timedelta(seconds=parse_duration(text))
    except ValueError as duration_error:
        try:
            return utc(datetime.fromisoformat(text))
        except ValueError:
            raise duration_error from None


def _polls(market: MarketSpec, interval: float) -> list[tuple[datetime, float | None]]:
    return [
        (market.start + timedelta(seconds=i * interval), price)
        for i, price in enumerate(market.series)
    ]


def _warm_up_polls(market: MarketSpec, interval: float, seconds: float) -> list[datetime]:
    """The flat polls before `start` that `warm_up` asks for (oldest first)."""
    count = int(seconds // interval)
    return [market.start - timedelta(seconds=i * interval) for i in range(count, 0, -1)]


# --- running -------------------------------------------------------------------------------


def run_case(case: RuleTestCase, rules: RuleSource) -> CaseResult:
    """Replay every market of `case` through one fresh `Detector`, in time order, and diff
    the events against the expected ones."""
    feed: list[tuple[datetime, int, MarketSnapshot]] = []
    ids: dict[str, str] = {}
    for rank, (key, market) in enumerate(case.markets.items()):
        market_id = market.condition_id or key
        ids[market_id] = key
        interval = case.market_interval(key)
        first = next(price for price in market.series if price is not None)
        warm_up = _warm_up_polls(market, interval, case.market_warm_up(key))
        for at, price in [*((at, first) for at in warm_up), *_polls(market, interval)]:
            if price is None:
                continue
            snapshot = MarketSnapshot(
                market_id=market_id,
                question=market.question or key,
                yes_price=price,
                taken_at=at,
                volume=market.volume,
                liquidity=market.liquidity,
                category=market.category,
                tags=market.tags,
                spread=market.spread,
            )
            feed.append((at, rank, snapshot))
    feed.sort(key=lambda item: (item[0], item[1]))
    detector = Detector()
    observed: list[ObservedEvent] = []
    for _, _, snapshot in feed:
        for change in detector.observe(snapshot, rules, now=snapshot.taken_at):
            event = build_event(change)
            key = ids[event.market_id]
            observed.append(ObservedEvent(key, event.timestamp - case.markets[key].start, event))
    missing: list[ExpectedEvent] = []
    unmatched = list(observed)
    for expected in case.expected:
        found = next((o for o in unmatched if _matches(expected, o)), None)
        if found is None:
            missing.append(expected)
        else:
            unmatched.remove(found)
    return CaseResult(
        name=case.name,
        missing=tuple(missing),
        unexpected=tuple(unmatched),
        matched=len(case.expected) - len(missing),
    )


def _matches(expected: ExpectedEvent, observed: ObservedEvent) -> bool:
    event = observed.event
    return (
        expected.market == observed.market
        and expected.at == event.timestamp
        and expected.direction == event.direction.value
        and (expected.severity is None or expected.severity == event.severity)
        and (expected.rule is None or expected.rule == event.rule)
    )


def format_case(result: CaseResult) -> list[str]:
    """`PASS name` or `FAIL name` followed by the diff lines."""
    if result.passed:
        return [f"  PASS {result.name}"]
    lines = [f"  FAIL {result.name}"]
    lines += [f"    missing:    {expected.describe()}" for expected in result.missing]
    lines += [f"    unexpected: {observed.describe()}" for observed in result.unexpected]
    return lines
