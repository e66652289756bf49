"""Pydantic models of the YAML rules file: the single source of its syntax and JSON Schema.

Why this file is over 400 lines: the single source of the rules file's syntax: every model
of the YAML document and its JSON Schema, which must stay one definition.

Every mapping forbids unknown keys and every value is strictly typed and finite (YAML already
gives us numbers, booleans and strings; a quoted `"0.03"` where a number belongs is a mistake
worth reporting, not coercing). An explicit `null` is refused everywhere: an empty `move:` is far
more likely an editing slip than a wish to inherit, and inheriting is what omitting the key
already means.

Checks that involve more than one value (severity bands ascending, tier bands that overlap,
`from < below`, keys equal up to case) run inside the models but report *every* problem they
find at once: they raise one `SEMANTIC_ERROR` whose context carries all `(sub-path, message)`
pairs, and the loader turns each pair into its own issue with its own line. Durations are
stored as seconds, so `60m` and `1h` validate to the same model.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NoReturn

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from polymarket_kafka.ruleset.durations import DURATION_PATTERN, format_duration, parse_duration
from polymarket_kafka.ruleset.params import DetectionParams

__all__ = [
    "SEMANTIC_ERROR",
    "BandThresholds",
    "ConfirmSpec",
    "MoveSpec",
    "Parameters",
    "Problem",
    "RulesDocument",
    "TierBand",
    "Tiers",
    "VolatilitySpec",
    "WatchSpec",
]

#: Pydantic error type of the multi-value checks; ctx["problems"] holds (sub-path, message).
SEMANTIC_ERROR = "rules_semantic"

#: A problem found by a multi-value check: the path below the validated value, and a message.
Problem = tuple[tuple[str, ...], str]

_BUILT_IN = DetectionParams()


def _fail(problems: list[Problem]) -> NoReturn:
    raise PydanticCustomError(
        SEMANTIC_ERROR,
        "{detail}",
        {"detail": "; ".join(message for _, message in problems), "problems": tuple(problems)},
    )


def _seconds(value: object) -> object:
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        # ValueError, not TypeError: pydantic turns only ValueError into a validation issue.
        raise ValueError(f"use a duration like 15m, 90s or 1h30m, not a bare number ({value})")  # noqa: TRY004
    raise ValueError(f"expected a duration like 15m, 90s or 1h30m, got {value!r}")


def _longer_than_zero(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("must be longer than 0s")
    return seconds


#: Seconds, written as a duration string in the file (see `durations`).
Duration = Annotated[
    float,
    BeforeValidator(_seconds),
    WithJsonSchema(
        {"type": "string", "pattern": DURATION_PATTERN, "examples": ["90s", "15m", "1h30m"]}
    ),
]
PositiveDuration = Annotated[Duration, AfterValidator(_longer_than_zero)]


def _default(value: object) -> str:
    return f" Built-in default: {value}."


class _Section(BaseModel):
    """Base of every mapping in the file: unknown keys, coercion and nulls are errors."""

    # allow_inf_nan: `.inf` is a YAML float; a limit of infinity is `enabled: false` in disguise.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("empty value: give a value, or remove the key to inherit it")
        return value


class MoveSpec(_Section):
    """How big a move of the YES price must be to count (any field omitted is inherited)."""

    abs: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Absolute move of the YES price, in probability units (0.03 = 3 points)."
        + _default(_BUILT_IN.abs_move),
    )
    log_odds: float | None = Field(
        default=None,
        gt=0,
        description="Move of logit(YES price), prices clamped to [0.001, 0.999]."
        + _default(_BUILT_IN.log_odds_move),
    )
    combine: Literal["any", "all"] | None = Field(
        default=None,
        description="`any`: either threshold is enough; `all`: both must be reached."
        + _default(_BUILT_IN.combine),
    )
    floor: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="Saturation guard: a move smaller than this never fires, whatever its "
        "log-odds." + _default(_BUILT_IN.floor),
    )


class ConfirmSpec(_Section):
    """Confirmation of a move before it fires (any field omitted is inherited)."""

    polls: int | None = Field(
        default=None,
        ge=1,
        description="Polls the move must be seen on, the first crossing included "
        "(1 = fire on the first crossing)." + _default(_BUILT_IN.confirm_polls),
    )
    for_: Duration | None = Field(
        default=None,
        alias="for",
        description="Minimum time between the first crossing and the confirming poll."
        + _default(format_duration(_BUILT_IN.confirm_seconds)),
    )
    retain: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Fraction of the first crossing's move that must still stand when it is "
        "confirmed." + _default(_BUILT_IN.confirm_retain),
    )
    ramp: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="A crossing reached by a move already under way is a ramp and is confirmed "
        "at once: the previous poll, at least a bucket (window / 60) and `for` earlier, "
        "already showed this fraction of the move, the same way (0 = off). Coarse data then "
        "fires on the crossing bar; polls closer than a bucket confirm poll by poll."
        + _default(_BUILT_IN.confirm_ramp),
    )


class VolatilitySpec(_Section):
    """Moves judged against the market's own volatility (any field omitted is inherited)."""

    z: float | None = Field(
        default=None,
        ge=0,
        description="A move must be at least this many times the market's volatility over the "
        "move's duration: |move| >= z x max(sigma x sqrt(h), floor x sqrt(min(h, window))), "
        "h = the move's duration, at least `min_horizon`. 0 = off (thresholds only)."
        + _default(_BUILT_IN.volatility_z),
    )
    floor: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="Volatility floor, probability points per square root of an hour: a flat "
        "market still needs a move this size per sqrt(hour), up to its window."
        + _default(_BUILT_IN.volatility_floor),
    )
    prior: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="Volatility a market starts with before its own history is known (per "
        "sqrt(hour)); it fades with `half_life` as the market is observed."
        + _default(_BUILT_IN.volatility_prior),
    )
    half_life: PositiveDuration | None = Field(
        default=None,
        description="Half-life of the volatility estimate, an exponentially weighted average "
        "of the changes measured before the window."
        + _default(format_duration(_BUILT_IN.volatility_half_life_seconds)),
    )
    min_horizon: Duration | None = Field(
        default=None,
        description="A move is judged as if it took at least this long, so fine polling does "
        "not turn a few minutes of noise into a significant move."
        + _default(format_duration(_BUILT_IN.volatility_min_horizon_seconds)),
    )


class WatchSpec(_Section):
    """Which markets and snapshots are looked at at all (any field omitted is inherited)."""

    min_liquidity: float | None = Field(
        default=None,
        ge=0,
        description="Markets whose known Gamma liquidity (USDC) is below this are not watched."
        + _default(_BUILT_IN.min_liquidity),
    )
    min_volume: float | None = Field(
        default=None,
        ge=0,
        description="Markets whose known Gamma volume (USDC) is below this are not watched."
        + _default(_BUILT_IN.min_volume),
    )
    max_spread: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Thin-book guard: a snapshot whose known bid-ask spread is wider is "
        "ignored." + _default(_BUILT_IN.max_spread),
    )
    max_data_age: PositiveDuration | None = Field(
        default=None,
        description="Stale guard: a snapshot older than this when it reaches the detector is "
        "ignored." + _default(format_duration(_BUILT_IN.max_data_age_seconds)),
    )


class BandThresholds(_Section):
    """Thresholds of one severity band: reached when |Δp| ≥ abs or |Δlog-odds| ≥ log_odds."""

    abs: float | None = Field(
        default=None, gt=0, le=1, description="Absolute move of the YES price."
    )
    log_odds: float | None = Field(default=None, gt=0, description="Move of logit(YES price).")


class Parameters(_Section):
    """Parameter overrides of one layer. Any key omitted is inherited from the layer before.

    Nested sections (`move`, `confirm`, `watch`) merge field by field; `severity` replaces
    the inherited bands as a whole.
    """

    name: str | None = Field(
        default=None,
        min_length=1,
        description="Rule name put on events (`rule`)." + _default(_BUILT_IN.name),
    )
    enabled: bool | None = Field(
        default=None,
        description="false: the market is not watched at all (no state, no events)."
        + _default("true"),
    )
    window: PositiveDuration | None = Field(
        default=None,
        description="Rolling window the move is measured over (the previous observation "
        "always counts)." + _default(format_duration(_BUILT_IN.window_seconds)),
    )
    move: MoveSpec | None = Field(default=None, description="Move thresholds.")
    cooldown: Duration | None = Field(
        default=None,
        description="After an event nothing fires for this long."
        + _default(format_duration(_BUILT_IN.cooldown_seconds)),
    )
    hysteresis: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="Extra distance a move against the last event needs before it fires "
        "(re-arm)." + _default(_BUILT_IN.hysteresis),
    )
    confirm: ConfirmSpec | None = Field(default=None, description="Confirmation of a move.")
    volatility: VolatilitySpec | None = Field(
        default=None, description="Moves judged against the market's own volatility."
    )
    watch: WatchSpec | None = Field(default=None, description="Market and snapshot guards.")
    catch_up: Literal["report", "rebaseline"] | None = Field(
        default=None,
        description="After a restart that restored the detector state (KAFKA_STATE_TOPIC), a "
        "move measured from before the restart: `report` it (an event marked catch_up with "
        "gap_seconds), or `rebaseline`: the first price after the restart is the new baseline "
        "and nothing measured from before it fires (pending moves, and moves not committed "
        "before a crash, are dropped; a close still gives its final event)."
        + _default(_BUILT_IN.catch_up),
    )
    severity: dict[str, BandThresholds] | None = Field(
        default=None,
        min_length=1,
        description="Severity bands, lowest first: name -> thresholds. The first band is the "
        "base band and has no thresholds; the others are strictly ascending in each threshold "
        "they give. Replaces the inherited bands as a whole. Built-in default: minor {}, "
        "major {abs: 0.1, log_odds: 0.6}, extreme {abs: 0.2, log_odds: 1.2}.",
    )

    @field_validator("severity")
    @classmethod
    def _bands_ascend(
        cls, bands: dict[str, BandThresholds] | None
    ) -> dict[str, BandThresholds] | None:
        if bands is None:  # pragma: no cover - nulls are refused before this runs
            return None
        problems = _severity_problems(bands)
        if problems:
            _fail(problems)
        return bands


def _severity_problems(bands: dict[str, BandThresholds]) -> list[Problem]:
    problems: list[Problem] = []
    names = list(bands)
    base = bands[names[0]]
    for kind in ("abs", "log_odds"):
        if getattr(base, kind) is not None:
            problems.append(
                (
                    (names[0], kind),
                    f"the first band ({names[0]!r}) is the base band: it must have no thresholds",
                )
            )
    for name in names[1:]:
        if bands[name].abs is None and bands[name].log_odds is None:
            problems.append(
                ((name,), f"band {name!r} has no thresholds; only the first band may have none")
            )
    for kind in ("abs", "log_odds"):
        previous: tuple[str, float] | None = None
        for name in names[1:]:
            value = getattr(bands[name], kind)
            if value is None:
                continue
            if previous is not None and value <= previous[1]:
                problems.append(
                    (
                        (name, kind),
                        f"bands must be strictly ascending: {name}.{kind} = {value:g} "
                        f"is not above {previous[0]}.{kind} = {previous[1]:g}",
                    )
                )
            previous = (name, value)
    if any(not name.strip() for name in names):
        problems.append(((), "band names must not be empty"))
    return problems


class TierBand(Parameters):
    """One tier: markets whose measure is in [from, below), and the parameters they get."""

    from_: float | None = Field(
        default=None,
        alias="from",
        ge=0,
        description="Lower bound, inclusive (USDC). Omitted: no lower bound.",
    )
    below: float | None = Field(
        default=None, gt=0, description="Upper bound, exclusive (USDC). Omitted: no upper bound."
    )

    @model_validator(mode="after")
    def _bounds(self) -> TierBand:
        if self.from_ is None and self.below is None:
            _fail([((), "a tier band needs `from`, `below` or both")])
        if self.from_ is not None and self.below is not None and self.from_ >= self.below:
            _fail(
                [(("from",), f"`from` ({self.from_:g}) must be less than `below` ({self.below:g})")]
            )
        return self

    @property
    def interval(self) -> tuple[float, float]:
        """[low, high) with the missing bounds as 0 and infinity."""
        return (
            0.0 if self.from_ is None else self.from_,
            float("inf") if self.below is None else self.below,
        )


class Tiers(_Section):
    """Tiers of markets by Gamma liquidity or volume; a market gets at most one tier."""

    by: Literal["liquidity", "volume"] = Field(
        default="liquidity",
        description="The market measure the bands are over (USDC). A market whose measure is "
        "unknown, or falls in a gap between bands, gets no tier.",
    )
    bands: dict[str, TierBand] = Field(
        min_length=1,
        description="Tier name -> {from?, below?} and the parameters the tier overrides. "
        "`from` is inclusive, `below` exclusive; bands must not overlap; gaps are allowed.",
    )

    @field_validator("bands")
    @classmethod
    def _no_overlap(cls, bands: dict[str, TierBand]) -> dict[str, TierBand]:
        problems: list[Problem] = []
        seen: list[tuple[str, tuple[float, float]]] = []
        for name, band in bands.items():
            low, high = band.interval
            for other, (other_low, other_high) in seen:
                if low < other_high and other_low < high:
                    problems.append(
                        (
                            (name,),
                            f"band {name!r} {_span(low, high)} overlaps band {other!r} "
                            f"{_span(other_low, other_high)}",
                        )
                    )
            seen.append((name, (low, high)))
        if problems:
            _fail(problems)
        return bands


def _span(low: float, high: float) -> str:
    return f"[{low:g}, {high:g})"


def _unique_casefolded(keys: dict[str, Any], what: str) -> dict[str, Any]:
    problems: list[Problem] = []
    first: dict[str, str] = {}
    for key in keys:
        folded = key.strip().casefold()
        if not key.strip():
            problems.append(((key,), f"{what} keys must not be empty"))
        elif folded in first:
            problems.append(
                ((key,), f"{what} {key!r} repeats {first[folded]!r} (keys are case-insensitive)")
            )
        else:
            first[folded] = key
    if problems:
        _fail(problems)
    return keys


class RulesDocument(_Section):
    """A rules file. Resolution order, later wins: built-in → defaults → tier → category →
    market → subscription."""

    model_config = ConfigDict(title="polymarket-kafka detection rules")

    version: Literal[1] = Field(description="Format version of the rules file; must be 1.")
    defaults: Parameters = Field(
        default_factory=Parameters,
        description="Parameters of every market. Any key omitted keeps its built-in default.",
    )
    tiers: Tiers | None = Field(default=None, description="Optional tiers by liquidity or volume.")
    categories: dict[str, Parameters] = Field(
        default_factory=dict,
        description="Overrides by category: each key is matched, case-insensitively, against "
        "the market's Gamma category and tags. The first matching key in file order wins.",
    )
    markets: dict[str, Parameters] = Field(
        default_factory=dict,
        description="Overrides for single markets, keyed by condition id (case-insensitive).",
    )

    @field_validator("categories")
    @classmethod
    def _unique_categories(cls, value: dict[str, Parameters]) -> dict[str, Parameters]:
        return _unique_casefolded(value, "category")

    @field_validator("markets")
    @classmethod
    def _unique_markets(cls, value: dict[str, Parameters]) -> dict[str, Parameters]:
        return _unique_casefolded(value, "market")
