"""Recorded price histories and their market metadata, as `replay` reads them (no network).

A history file is the exact body of the CLOB endpoint `GET /prices-history`:
`{"history": [{"t": <unix seconds>, "p": <price>}, ...]}`, so a history downloaded live
replays as is. Prices may be JSON numbers or numeric strings (Polymarket sends both);
timestamps are integral unix seconds.

Loading is strict about the *content* of a point (a bad point names the file and its index:
silently skipping it would change what the detector sees) and deterministic about its
*order*: points are sorted by time, and when a timestamp repeats only the last point of the
file for it is kept. The number dropped is reported, never hidden.

Market metadata comes from a Gamma `/markets` item: `--market FILE`, or the sidecar
`NAME.market.json` next to `NAME.history.json`. It is parsed with the service's own
`parse_market` when the item is well formed, else leniently (question, conditionId or its
alias condition, category, tags, liquidity, volume), because a hand-written sidecar need not
carry outcome lists. Whatever is missing falls back to a default that `ReplayMarket.defaults`
lists, so the replay summary can say which figures were guessed.
"""

from __future__ import annotations

import itertools
import json
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from polymarket_kafka.polymarket.parsing import (
    MalformedItemError,
    MarketMetadata,
    condition_id_of,
    parse_decimal,
    parse_market,
    parse_probability,
)

__all__ = [
    "HISTORY_SUFFIX",
    "MARKET_SUFFIX",
    "HistoryError",
    "PricePoint",
    "PriceSeries",
    "ReplayMarket",
    "load_history",
    "load_market",
    "market_for",
    "parse_history",
    "parse_market_item",
    "series_name",
    "sidecar_path",
]

HISTORY_SUFFIX = ".history.json"
#: 1e11 s is the year 5138; a larger `t` is a millisecond timestamp (2001 onwards) by mistake.
_MILLISECONDS = 100_000_000_000
MARKET_SUFFIX = ".market.json"


class HistoryError(ValueError):
    """A history or market file is unusable; `str()` names the file (and point) at fault."""


@dataclass(frozen=True, slots=True)
class PricePoint:
    """One recorded YES price."""

    at: datetime
    price: float


@dataclass(frozen=True, slots=True)
class PriceSeries:
    """A validated, time-sorted history (at least one point, timestamps unique)."""

    name: str
    source: str
    points: tuple[PricePoint, ...]
    #: Points dropped because a later point of the file had the same timestamp.
    duplicates_dropped: int = 0
    #: True when the file was not in time order (it was sorted).
    reordered: bool = False

    @property
    def start(self) -> datetime:
        return self.points[0].at

    @property
    def end(self) -> datetime:
        return self.points[-1].at

    @property
    def span_seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    @property
    def median_step_seconds(self) -> float | None:
        """Median time between consecutive points (None for a single point)."""
        if len(self.points) < 2:
            return None
        steps = [(b.at - a.at).total_seconds() for a, b in itertools.pairwise(self.points)]
        return float(statistics.median(steps))


@dataclass(frozen=True, slots=True)
class ReplayMarket:
    """What a replay puts on each snapshot besides the price.

    `defaults` names the fields that were not known and fell back to a default
    (`market_id` = the history's name, `question` = "", the rest unknown).
    """

    market_id: str
    question: str = ""
    category: str | None = None
    tags: tuple[str, ...] = ()
    liquidity: float | None = None
    volume: float | None = None
    source: str | None = None
    defaults: tuple[str, ...] = ()


# --- histories -----------------------------------------------------------------------------


def series_name(path: str | Path) -> str:
    """`NAME` of `NAME.history.json` (or the stem of any other file name)."""
    name = Path(path).name
    if name.endswith(HISTORY_SUFFIX):
        return name[: -len(HISTORY_SUFFIX)]
    return Path(name).stem


def load_history(path: str | Path) -> PriceSeries:
    """Read and validate one history file; `HistoryError` says what is wrong and where."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise HistoryError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise HistoryError(f"{path}: not UTF-8 text") from None
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise HistoryError(f"{path}: not JSON: {exc}") from None
    return parse_history(payload, source=str(path), name=series_name(path))


def parse_history(payload: object, source: str, name: str | None = None) -> PriceSeries:
    """Validate a decoded `/prices-history` body (see the module docstring)."""
    if not isinstance(payload, dict) or "history" not in payload:
        raise HistoryError(
            f'{source}: expected a CLOB /prices-history body {{"history": [...]}}, '
            f"got {_kind(payload)}"
        )
    raw = payload["history"]
    if not isinstance(raw, list):
        raise HistoryError(f"{source}: history: expected a list, got {_kind(raw)}")
    if not raw:
        raise HistoryError(f"{source}: history is empty (no price points)")
    points = [_point(item, f"{source}: history[{index}]") for index, item in enumerate(raw)]
    reordered = any(b.at < a.at for a, b in itertools.pairwise(points))
    # A stable sort keeps the file order among equal timestamps, so "last wins" is the last
    # in the file, whatever the order around it.
    by_time: dict[datetime, PricePoint] = {}
    for point in sorted(points, key=lambda p: p.at):
        by_time[point.at] = point
    unique = tuple(by_time.values())
    return PriceSeries(
        name=name if name is not None else series_name(source),
        source=source,
        points=unique,
        duplicates_dropped=len(points) - len(unique),
        reordered=reordered,
    )


def _point(item: object, where: str) -> PricePoint:
    if not isinstance(item, dict):
        raise HistoryError(f'{where}: expected an object {{"t": ..., "p": ...}}, got {_kind(item)}')
    missing = [key for key in ("t", "p") if key not in item]
    if missing:
        raise HistoryError(f"{where}: missing key {' and '.join(repr(k) for k in missing)}")
    t, p = item["t"], item["p"]
    if isinstance(t, bool) or not isinstance(t, int | float) or t != t or t < 0:
        raise HistoryError(f"{where}: t must be unix seconds (a non-negative integer), got {t!r}")
    if isinstance(t, float) and not t.is_integer():
        raise HistoryError(f"{where}: t must be whole unix seconds, got {t!r}")
    if t >= _MILLISECONDS:
        raise HistoryError(f"{where}: t={t!r} looks like milliseconds; use unix seconds")
    try:
        price = parse_probability(p)
    except MalformedItemError as exc:
        raise HistoryError(f"{where}: p: {exc}") from None
    return PricePoint(at=datetime.fromtimestamp(int(t), tz=UTC), price=price)


def _kind(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return f"{type(value).__name__} {value!r}"[:80]


# --- market metadata -----------------------------------------------------------------------


def sidecar_path(history: str | Path) -> Path:
    """`NAME.market.json` next to `NAME.history.json`."""
    history = Path(history)
    return history.with_name(series_name(history) + MARKET_SUFFIX)


def market_for(history: str | Path, market_file: str | Path | None = None) -> ReplayMarket:
    """The metadata of a history: `market_file` if given, else its sidecar, else defaults.

    An explicit `market_file` must exist and be usable; a sidecar is optional, but one that
    exists and is unusable is an error too (a silently ignored typo would change the rules a
    market gets).
    """
    if market_file is not None:
        return load_market(market_file, default_id=series_name(history))
    sidecar = sidecar_path(history)
    if sidecar.is_file():
        return load_market(sidecar, default_id=series_name(history))
    return ReplayMarket(
        market_id=series_name(history),
        defaults=("market_id", "question", "category", "liquidity", "volume"),
    )


def load_market(path: str | Path, default_id: str) -> ReplayMarket:
    """Read a Gamma `/markets` item (or a one-item `/markets` array) from `path`."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise HistoryError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise HistoryError(f"{path}: not JSON: {exc}") from None
    if isinstance(payload, list):
        if len(payload) != 1:
            raise HistoryError(
                f"{path}: expected one Gamma market object, got a list of {len(payload)}"
            )
        payload = payload[0]
    if not isinstance(payload, dict):
        raise HistoryError(f"{path}: expected a Gamma market object, got {_kind(payload)}")
    return parse_market_item(payload, source=str(path), default_id=default_id)


def parse_market_item(item: Mapping[str, object], source: str, default_id: str) -> ReplayMarket:
    """Metadata from a decoded Gamma item, strictly when possible, else leniently."""
    try:
        metadata = parse_market(dict(item))
    except MalformedItemError:
        metadata = _lenient(item, default_id)
    defaults = tuple(
        name
        for name, missing in (
            ("market_id", metadata.market_id == default_id and not _has_id(item)),
            ("question", metadata.question is None),
            ("category", metadata.category is None),
            ("liquidity", metadata.liquidity is None),
            ("volume", metadata.volume is None),
        )
        if missing
    )
    return ReplayMarket(
        market_id=metadata.market_id,
        question=metadata.question or "",
        category=metadata.category,
        tags=metadata.tags,
        liquidity=metadata.liquidity,
        volume=metadata.volume,
        source=source,
        defaults=defaults,
    )


def _has_id(item: Mapping[str, object]) -> bool:
    return condition_id_of(item) is not None


def _lenient(item: Mapping[str, object], default_id: str) -> MarketMetadata:
    def text(key: str) -> str | None:
        value = item.get(key)
        return value.strip() if isinstance(value, str) and value.strip() else None

    def number(*keys: str) -> float | None:
        for key in keys:
            try:
                value = parse_decimal(item.get(key))
            except MalformedItemError:
                continue
            if value >= 0:
                return float(value)
        return None

    raw_tags = item.get("tags")
    tags: list[str] = []
    if isinstance(raw_tags, list):
        for tag in raw_tags:
            label = tag.get("label") if isinstance(tag, dict) else tag
            if isinstance(label, str) and label.strip() and label.strip() not in tags:
                tags.append(label.strip())
    return MarketMetadata(
        market_id=condition_id_of(item) or default_id,
        question=text("question"),
        category=text("category") or (tags[0] if tags else None),
        tags=tuple(tags),
        liquidity=number("liquidityNum", "liquidity"),
        volume=number("volumeNum", "volume"),
    )
