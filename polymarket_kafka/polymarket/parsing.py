"""Pure parsers for Gamma `/markets` items and CLOB `POST /midpoints` responses (no I/O).

Why this file is over 400 lines: every rule about Polymarket's payload shapes (Gamma's ids
by protocol version, JSON-in-strings, outcome prices, resolutions, CLOB midpoints) in one
pure module, so a change of the API is read and tested in one place.

Polymarket's payloads are loose (see shared/polymarket-api.md §2.1 and §5): numbers arrive as
strings or as JSON numbers, `outcomes`/`clobTokenIds`/`outcomePrices` are JSON arrays *inside a
string*, and fields that are zero or not applicable are simply missing. So every field is
optional, every number goes through `Decimal(str(x))`, and a bad item never raises out of a
batch: it becomes a per-id failure reason, and only a whole-payload problem (not a list, not an
object) raises `MalformedPayloadError`.

Which token is "YES": the outcome labelled "Yes" (case-insensitive). Markets whose outcomes
are not Yes/No (`Up`/`Down`, `Long`/`Short`, team names) have no YES side; for those the FIRST
outcome is treated as YES and the second as NO, so a rising price means "the first-listed
outcome is becoming more likely". `MarketMetadata.yes_outcome` keeps the label that was chosen.

Which id trades an outcome (shared/polymarket-api.md §8.1; Polymarket's Protocol V2 migration
guide): Gamma's `version` decides, never the presence of a field.

- `"v1"` (classic CTF markets), or no `version` at all (every response recorded before the
  field existed, and legacy markets): the ids are `clobTokenIds`.
- `"v2"` (Protocol V2): the ids are `positionIds` -- a plain JSON array, also accepted as a
  JSON-encoded string -- *even when `clobTokenIds` is present too*. A v2 market without
  usable position ids has no trading id: falling back to `clobTokenIds` would price it under
  the wrong id. `clobTokenIds` is not even read for it.
- Any other `version`: no trading id is selected (the guide says to reject unsupported
  versions rather than guess). The market keeps its metadata (a closed one still reports its
  final price) and `MarketMetadata.token_problem` says why it cannot be priced.

Ids must be decimal strings (uint256 written in decimal, or a JSON integer); an empty string
is an id not assigned yet (a new market, for a few minutes). The id list must pair with
`outcomes` and `outcomePrices` by index. `yes_token_id`/`no_token_id` hold the selected ids,
whichever field they came from: everything downstream (the `/midpoints` request) uses them.

How a closed market resolved (`MarketMetadata.resolution`), from its `outcomePrices`
(§2.1, §8.3): prices that do not sum to ~1 (legacy markets closed at `["0", "0"]`) resolved
with no winner, `"void"`; otherwise the YES entry at exactly 1 is `"yes"`, at exactly 0 `"no"`
(a resolved market's prices collapse to 1 and 0); anything else (a 50-50 resolution, a
market closed but still settling) is `"unknown"`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from polymarket_kafka.models import Resolution
from polymarket_kafka.polymarket.errors import MalformedPayloadError, excerpt

__all__ = [
    "MalformedItemError",
    "MarketMetadata",
    "ParsedMarkets",
    "ParsedPrices",
    "condition_id_of",
    "load_json",
    "parse_decimal",
    "parse_market",
    "parse_markets",
    "parse_midpoints",
    "parse_probability",
]


#: The field holding the trading ids, by Gamma `version` (a missing version means "v1").
_ID_FIELDS = {"v1": "clobTokenIds", "v2": "positionIds"}
#: Outcome prices further than this from summing to 1 mean "no winner" (void).
_VOID_SUM_TOLERANCE = Decimal("0.02")


class MalformedItemError(ValueError):
    """One item (one market, one price) is unusable; `str()` is the per-id failure reason."""


@dataclass(frozen=True, slots=True)
class MarketMetadata:
    """What the service needs to know about one market, from one Gamma `/markets` item.

    `market_id` is the condition id. Every other field may be unknown (`None`, `()`).
    `yes_token_id`/`no_token_id` are the *trading* ids: CTF token ids for a v1 market,
    position ids for a v2 one (`protocol_version`, the normalised Gamma `version`, or `None`
    when Gamma sent none). When no YES id could be selected, `token_problem` may say why.
    `outcome_prices` follows the order of `outcomes`; `yes_outcome_price` is the entry of the
    YES side (see the module docstring for non Yes/No markets). Gamma gives no freshness
    guarantee for `outcomePrices`: use it only for closed markets, whose price is final.
    `resolution` is how a closed market resolved (`None` while open or unknowable).
    """

    market_id: str
    question: str | None = None
    yes_token_id: str | None = None
    no_token_id: str | None = None
    yes_outcome: str | None = None
    outcomes: tuple[str, ...] = ()
    active: bool | None = None
    closed: bool = False
    volume: float | None = None
    liquidity: float | None = None
    category: str | None = None
    tags: tuple[str, ...] = ()
    end_date: datetime | None = None
    outcome_prices: tuple[float, ...] | None = None
    yes_outcome_price: float | None = None
    spread: float | None = None
    best_bid: float | None = None
    best_ask: float | None = None
    protocol_version: str | None = None
    token_problem: str | None = None
    resolution: Resolution | None = None


@dataclass(frozen=True, slots=True)
class ParsedMarkets:
    """Result of parsing one Gamma `/markets` array.

    `failures` is keyed by condition id when the item has one, else by `#<index>`.
    """

    markets: dict[str, MarketMetadata] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ParsedPrices:
    """Result of parsing one `POST /midpoints` object: prices and failures by token id."""

    prices: dict[str, float] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


# --- scalars -------------------------------------------------------------------------------


def parse_decimal(value: object) -> Decimal:
    """A finite `Decimal` from a JSON string or number; `ValueError` otherwise.

    Going through `str()` keeps "0.1" exact and treats `0.1` and `"0.1"` alike. Booleans are
    rejected even though `bool` is an `int`.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise MalformedItemError(f"not a number: {value!r}")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise MalformedItemError(f"not a number: {excerpt(repr(value), 40)}") from None
    if not number.is_finite():
        raise MalformedItemError(f"not a finite number: {value!r}")
    return number


def parse_probability(value: object) -> float:
    """A price in [0, 1] as a float; `MalformedItemError` for anything else."""
    number = parse_decimal(value)
    if not Decimal(0) <= number <= Decimal(1):
        raise MalformedItemError(f"price {value!r} outside [0, 1]")
    return float(number)


def _optional_non_negative(item: Mapping[str, object], *keys: str) -> float | None:
    # Decorations (volume, spread...): the first usable key wins and a bad value is treated
    # as unknown rather than failing the market, because nothing downstream depends on it.
    for key in keys:
        raw = item.get(key)
        if raw is None or raw == "":
            continue
        try:
            number = parse_decimal(raw)
        except MalformedItemError:
            continue
        if number >= 0:
            return float(number)
    return None


def _optional_bool(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _optional_str(value: object) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _parse_datetime(value: object) -> datetime | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


# --- JSON-in-a-string lists ----------------------------------------------------------------


def _json_list(item: Mapping[str, object], key: str) -> list[object] | None:
    """`item[key]` as a list, decoding the JSON-in-a-string form; `None` when absent."""
    raw = item.get(key)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise MalformedItemError(f"{key} is not valid JSON: {excerpt(raw, 60)!r}") from None
    if not isinstance(raw, list):
        raise MalformedItemError(f"{key} is not a list: {excerpt(repr(raw), 60)}")
    return raw


def _id_list(item: Mapping[str, object], key: str) -> list[str | None] | None:
    """The trading ids under `key`, decimal strings or `None` for one not assigned yet.

    An empty list is no list: ids not assigned yet, like a missing field (it cannot pair with
    the outcomes, and failing the whole market for it would hide its metadata).
    """
    raw = _json_list(item, key)
    if not raw:
        return None
    ids: list[str | None] = []
    for value in raw:
        if isinstance(value, int) and not isinstance(value, bool):
            text = str(value)
        elif isinstance(value, str):
            text = value.strip()
        else:
            raise MalformedItemError(f"{key} holds a non-string: {value!r}")
        if text and not (text.isascii() and text.isdigit()):
            raise MalformedItemError(f"{key} holds a non-decimal id: {excerpt(text, 40)!r}")
        # Newly created markets can carry empty ids for a few minutes ("hydration").
        ids.append(text or None)
    return ids


def _trading_ids(
    item: Mapping[str, object],
) -> tuple[str | None, str | None, list[str | None] | None, str | None]:
    """(protocol version, id field, ids, problem) of one item; see the module docstring.

    `problem` is set when the market's version leaves it without a usable id list.
    """
    raw = item.get("version")
    if isinstance(raw, str):
        version = raw.strip().lower() or None
    else:
        version = None if raw is None else excerpt(repr(raw), 40)
    key = _ID_FIELDS.get(version or "v1")
    if key is None:
        unsupported = f"unsupported Gamma market version {version!r}: no trading id selected"
        return version, None, None, unsupported
    ids = _id_list(item, key)
    problem = None
    if version == "v2" and not (ids and any(ids)):
        problem = (
            "v2 market without position ids in positionIds "
            "(its clobTokenIds are not its trading ids)"
        )
    return version, key, ids, problem


def _outcomes(item: Mapping[str, object]) -> list[str] | None:
    raw = _json_list(item, "outcomes")
    if raw is None:
        return None
    if not all(isinstance(outcome, str) for outcome in raw):
        raise MalformedItemError(f"outcomes holds a non-string: {excerpt(repr(raw), 60)}")
    return [str(outcome) for outcome in raw]


def _outcome_prices(item: Mapping[str, object]) -> tuple[float, ...] | None:
    raw = _json_list(item, "outcomePrices")
    if raw is None:
        return None
    try:
        return tuple(parse_probability(price) for price in raw)
    except MalformedItemError as exc:
        raise MalformedItemError(f"outcomePrices: {exc}") from None


def _resolution(closed: bool, prices: Sequence[float] | None, yes: int) -> Resolution | None:
    """How a closed market resolved, from its outcome prices (see the module docstring)."""
    if not closed or not prices or yes >= len(prices):
        return None
    total = sum((Decimal(str(price)) for price in prices), Decimal(0))
    if abs(total - 1) > _VOID_SUM_TOLERANCE:
        return "void"
    if prices[yes] == 1.0:
        return "yes"
    if prices[yes] == 0.0:
        return "no"
    return "unknown"


def _sides(outcomes: Sequence[str], count: int) -> tuple[int, int | None]:
    """Indexes of the YES and NO sides among `count` outcomes (see module docstring)."""
    lowered = [outcome.strip().lower() for outcome in outcomes]
    if "yes" in lowered:
        yes = lowered.index("yes")
        no = lowered.index("no") if "no" in lowered else None
        if no is None and count == 2:
            no = 1 - yes
        return yes, no
    return 0, (1 if count >= 2 else None)


# --- tags and category ---------------------------------------------------------------------


def _labels(raw: object) -> list[str]:
    """Tag labels from either `[{"label": ...}]` (Gamma) or `["Politics", ...]` (CLOB)."""
    if not isinstance(raw, list):
        return []
    labels: list[str] = []
    for tag in raw:
        label = _optional_str(tag.get("label")) if isinstance(tag, dict) else _optional_str(tag)
        if label is not None and label not in labels:
            labels.append(label)
    return labels


def _events(item: Mapping[str, object]) -> list[Mapping[str, object]]:
    events = item.get("events")
    if not isinstance(events, list):
        return []
    return [event for event in events if isinstance(event, dict)]


def _tags_and_category(item: Mapping[str, object]) -> tuple[tuple[str, ...], str | None]:
    tags = _labels(item.get("tags"))
    events = _events(item)
    if not tags and events:
        tags = _labels(events[0].get("tags"))
    category = _optional_str(item.get("category"))
    if category is None and tags:
        category = tags[0]
    if category is None and events:
        category = _optional_str(events[0].get("category"))
    return tuple(tags), category


# --- one market, one array -----------------------------------------------------------------


def condition_id_of(item: Mapping[str, object]) -> str | None:
    """The item's condition id: `conditionId`, else its alias `condition` (as the official
    client accepts it); `None` when neither holds a non-empty string."""
    return _optional_str(item.get("conditionId")) or _optional_str(item.get("condition"))


def parse_market(item: object) -> MarketMetadata:
    """Parse one Gamma `/markets` item; `MalformedItemError` says why it is unusable.

    Only the condition id (`conditionId`, or its alias `condition`) is required. The outcome
    lists (`outcomes`, the trading ids the `version` selects, `outcomePrices`) must be
    well-formed and of equal length when present, because a wrong pairing would attach a price
    to the wrong side; numeric decorations that do not parse are treated as unknown.
    """
    if not isinstance(item, dict):
        raise MalformedItemError(f"market item is not an object: {excerpt(repr(item), 60)}")
    market_id = condition_id_of(item)
    if market_id is None:
        raise MalformedItemError("market item has no conditionId (nor condition)")

    version, id_field, tokens, token_problem = _trading_ids(item)
    outcomes = _outcomes(item)
    prices = _outcome_prices(item)
    count = next((len(x) for x in (outcomes, tokens, prices) if x is not None), 0)
    for name, values in (
        ("outcomes", outcomes),
        (id_field or "ids", tokens),
        ("outcomePrices", prices),
    ):
        if values is not None and len(values) != count:
            raise MalformedItemError(
                f"{name} has {len(values)} entries, expected {count} (lists must pair by index)"
            )
    yes, no = _sides(outcomes or [], count)
    tags, category = _tags_and_category(item)
    closed = _optional_bool(item.get("closed")) or False
    return MarketMetadata(
        market_id=market_id,
        question=_optional_str(item.get("question")),
        yes_token_id=tokens[yes] if tokens and yes < len(tokens) else None,
        no_token_id=tokens[no] if tokens and no is not None else None,
        yes_outcome=outcomes[yes] if outcomes else None,
        outcomes=tuple(outcomes or ()),
        active=_optional_bool(item.get("active")),
        closed=closed,
        volume=_optional_non_negative(item, "volumeNum", "volume"),
        liquidity=_optional_non_negative(item, "liquidityNum", "liquidity"),
        category=category,
        tags=tags,
        end_date=_parse_datetime(item.get("endDate")) or _parse_datetime(item.get("endDateIso")),
        outcome_prices=prices,
        yes_outcome_price=prices[yes] if prices else None,
        spread=_optional_non_negative(item, "spread"),
        best_bid=_optional_non_negative(item, "bestBid"),
        best_ask=_optional_non_negative(item, "bestAsk"),
        protocol_version=version,
        token_problem=token_problem,
        resolution=_resolution(closed, prices, yes),
    )


def parse_markets(payload: object) -> ParsedMarkets:
    """Parse a Gamma `/markets` response (a bare JSON array of market objects).

    Raises `MalformedPayloadError` only when the payload is not an array; a bad item becomes
    a failure (keyed by its condition id -- `conditionId` or `condition` -- or `#<index>`
    without one). When an id appears twice the first good item wins.
    """
    if not isinstance(payload, list):
        raise MalformedPayloadError(
            f"Gamma /markets: expected a JSON array, got {type(payload).__name__}"
        )
    result = ParsedMarkets()
    for index, item in enumerate(payload):
        key = f"#{index}"
        if isinstance(item, dict):
            key = condition_id_of(item) or key
        try:
            market = parse_market(item)
        except MalformedItemError as exc:
            if key not in result.markets:
                result.failures.setdefault(key, f"malformed Gamma market: {exc}")
            continue
        if market.market_id not in result.markets:
            result.markets[market.market_id] = market
            result.failures.pop(market.market_id, None)
    return result


def parse_midpoints(payload: object, requested: Sequence[str]) -> ParsedPrices:
    """Parse a `POST /midpoints` response: `{"<token_id>": "0.55", ...}`.

    Every id in `requested` ends up in exactly one of `prices` or `failures`; ids the
    response has but nobody asked for are ignored. Raises `MalformedPayloadError` only when
    the payload is not a JSON object.
    """
    if not isinstance(payload, dict):
        raise MalformedPayloadError(
            f"CLOB /midpoints: expected a JSON object, got {type(payload).__name__}"
        )
    result = ParsedPrices()
    for token_id in requested:
        if token_id not in payload:
            result.failures[token_id] = "no midpoint in the response"
            continue
        try:
            result.prices[token_id] = parse_probability(payload[token_id])
        except MalformedItemError as exc:
            result.failures[token_id] = f"malformed midpoint: {exc}"
    return result


def load_json(body: bytes, what: str) -> object:
    """Decode a response body as JSON, or raise `MalformedPayloadError` naming `what`."""
    try:
        return json.loads(body)
    except ValueError:
        text = body.decode("utf-8", errors="replace")
        raise MalformedPayloadError(f"{what}: body is not JSON: {excerpt(text, 80)!r}") from None
