"""A compiled rule set: validated layers folded into one `ResolvedRule` per market.

A `RuleSet` is built once from a validated `RulesDocument` and never changes; a reload builds
a new one and swaps it in whole. Each layer is flattened at compile time into dotted keys
holding `DetectionParams` values (durations in seconds, severity as `SeverityBand`s), so
resolving a market is only a few dict updates in layer order:

    built-in → defaults → tier → category → market → subscription

Resolutions are cached. The key is everything a resolution depends on — market id (for the
market layer), tier, matched category and the subscription overrides — so a market that moves
to another liquidity tier or category, or whose subscription changes, is resolved afresh,
while an unchanged market gets the very same `ResolvedRule` object back.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from polymarket_kafka.models import MarketSnapshot
from polymarket_kafka.ruleset.params import (
    BUILT_IN,
    PARAMETER_NAMES,
    DetectionParams,
    ResolvedRule,
    SeverityBand,
)
from polymarket_kafka.ruleset.schema import BandThresholds, Parameters, RulesDocument

__all__ = ["SUBSCRIPTION", "Layer", "RuleSet", "layer_settings"]

#: Layer label of the per-market overrides carried on the subscription document.
SUBSCRIPTION = "subscription"

#: Resolutions kept per rule set: one per combination of market layer, tier, category and
#: subscription overrides in use (markets without a layer of their own share theirs).
CACHE_SIZE = 4096

_BUILT_IN_VALUES: Mapping[str, Any] = MappingProxyType(
    {dotted: getattr(DetectionParams(), attr) for dotted, attr in PARAMETER_NAMES.items()}
)
_BOUNDS = ("from", "below")


@dataclass(frozen=True)
class Layer:
    """One compiled layer: its label (`defaults`, `tier:thin`, `category:crypto`,
    `market:<id>`), what it matches, and the parameters it sets (dotted key → value)."""

    label: str
    matcher: str
    settings: Mapping[str, Any]

    @property
    def name(self) -> str:
        """The layer's key in the file (`thin`, `crypto`, a condition id; `defaults`)."""
        return self.label.split(":", 1)[-1]


def layer_settings(parameters: Parameters) -> dict[str, Any]:
    """The dotted parameters a layer sets, with `DetectionParams` values, in display order."""
    raw = parameters.model_dump(by_alias=True, exclude_none=True, exclude=set(_BOUNDS))
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "severity":
            flat[key] = _bands(parameters.severity or {})
        elif isinstance(value, dict):
            flat.update({f"{key}.{field}": inner for field, inner in value.items()})
        else:
            flat[key] = value
    return {dotted: flat[dotted] for dotted in PARAMETER_NAMES if dotted in flat}


def _bands(bands: Mapping[str, BandThresholds]) -> tuple[SeverityBand, ...]:
    return tuple(
        SeverityBand(name, abs_move=band.abs, log_odds_move=band.log_odds)
        for name, band in bands.items()
    )


def _version(document: RulesDocument) -> str:
    """12 hex of sha256 over the canonical JSON of the validated content.

    Comments, layout, key order within a section and duration spelling (`60m` vs `1h`) do not
    change it. Order that means something is kept: categories (first match wins) and severity
    bands (lowest first); markets and tier bands are sorted, their order means nothing.
    """
    canonical = document.model_dump(mode="json", by_alias=True, exclude_none=True)
    canonical["markets"] = dict(sorted(canonical["markets"].items()))
    if "tiers" in canonical:
        canonical["tiers"]["bands"] = dict(sorted(canonical["tiers"]["bands"].items()))
    text = json.dumps(canonical, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class RuleSet:
    """Immutable, compiled detection rules. Resolve a market with `resolve(snapshot)`.

    Built by `load_rules` / `load_rules_text` (or directly from a validated document).
    `version` identifies the content (see `_version`); `source` is the file it was loaded
    from, or `<built-in>`. Safe to share between threads.
    """

    __slots__ = (
        "_cache",
        "_categories",
        "_document",
        "_layers",
        "_lock",
        "_markets",
        "_source",
        "_tiers",
        "_version",
    )

    def __init__(self, document: RulesDocument, source: str) -> None:
        self._document = document
        self._source = source
        self._version = _version(document)
        defaults = Layer("defaults", "every market", _frozen(document.defaults))
        self._tiers: tuple[tuple[float, float, Layer], ...] = ()
        if document.tiers is not None:
            by = document.tiers.by
            self._tiers = tuple(
                (
                    *band.interval,
                    Layer(f"tier:{name}", f"{by} {_span(*band.interval)}", _frozen(band)),
                )
                for name, band in document.tiers.bands.items()
            )
        self._categories = tuple(
            (
                key.strip().casefold(),
                Layer(f"category:{key}", f"category or tag {key!r}", _frozen(p)),
            )
            for key, p in document.categories.items()
        )
        self._markets = {
            key.strip().casefold(): Layer(f"market:{key}", "condition id", _frozen(p))
            for key, p in document.markets.items()
        }
        self._layers = (
            defaults,
            *(layer for *_, layer in self._tiers),
            *(layer for _, layer in self._categories),
            *self._markets.values(),
        )
        self._cache: OrderedDict[tuple[Any, ...], ResolvedRule] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def builtin(cls) -> RuleSet:
        """Rules without a file: every parameter is its `DetectionParams()` default."""
        return cls(RulesDocument(version=1), "<built-in>")

    @property
    def version(self) -> str:
        """12 hex identifying the content: the `rules_version` events carry."""
        return self._version

    @property
    def source(self) -> str:
        """The file the rules were loaded from, `<built-in>`, or the name given to the text."""
        return self._source

    @property
    def document(self) -> RulesDocument:
        """The validated rules file this set was compiled from."""
        return self._document

    @property
    def layers(self) -> tuple[Layer, ...]:
        """Every layer of the file in resolution order: defaults, tiers, categories, markets
        (within a kind, in file order)."""
        return self._layers

    @property
    def tiers_by(self) -> str | None:
        """The measure tiers are over (`liquidity` or `volume`), or None without tiers."""
        return None if self._document.tiers is None else self._document.tiers.by

    def tier_of(self, snapshot: MarketSnapshot) -> str | None:
        """The tier a market falls in: None without tiers, an unknown measure, or in a gap."""
        layer = self._tier_layer(snapshot)
        return None if layer is None else layer.name

    def category_of(self, snapshot: MarketSnapshot) -> str | None:
        """The category key (as written in the file) that applies to a market, if any."""
        layer = self._category_layer(snapshot)
        return None if layer is None else layer.name

    def resolve(self, snapshot: MarketSnapshot) -> ResolvedRule:
        """The parameters in force for the snapshot's market, and the layer of each one.

        Deterministic: the same snapshot (or one differing only in price, time, spread or
        question) resolves to an equal result — the identical object while it is cached.
        """
        tier = self._tier_layer(snapshot)
        category = self._category_layer(snapshot)
        market = self._markets.get(snapshot.market_id.strip().casefold())
        overrides = (snapshot.threshold, snapshot.window_seconds, snapshot.cooldown_seconds)
        # Keyed by the layers that apply, not by market: every market without a layer of its
        # own shares one entry per (tier, category, overrides), so the cache keeps hitting
        # with any number of markets (it thrashed above CACHE_SIZE markets when keyed by id).
        key = (
            None if market is None else market.name,
            None if tier is None else tier.name,
            None if category is None else category.name,
            overrides,
        )
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        layers = [self._layers[0], tier, category, market]
        params, sources = self._fold([layer for layer in layers if layer is not None], overrides)
        resolved = ResolvedRule(
            params=params,
            rules_version=self._version,
            sources=sources,
            tier=key[1],
            category=key[2],
        )
        with self._lock:
            self._cache[key] = resolved
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return resolved

    def _fold(
        self, layers: list[Layer], overrides: tuple[float | None, float | None, float | None]
    ) -> tuple[DetectionParams, Mapping[str, str]]:
        values = dict(_BUILT_IN_VALUES)
        sources = dict.fromkeys(values, BUILT_IN)
        for layer in layers:
            values.update(layer.settings)
            sources.update(dict.fromkeys(layer.settings, layer.label))
        for dotted, override in zip(("move.abs", "window", "cooldown"), overrides, strict=True):
            if override is not None:
                values[dotted] = float(override)
                sources[dotted] = SUBSCRIPTION
        params = DetectionParams(**{PARAMETER_NAMES[k]: v for k, v in values.items()})
        return params, MappingProxyType(sources)

    def _tier_layer(self, snapshot: MarketSnapshot) -> Layer | None:
        if self._document.tiers is None:
            return None
        measure = snapshot.liquidity if self._document.tiers.by == "liquidity" else snapshot.volume
        if measure is None:
            return None
        for low, high, layer in self._tiers:
            if low <= measure < high:
                return layer
        return None

    def _category_layer(self, snapshot: MarketSnapshot) -> Layer | None:
        labels = {label.strip().casefold() for label in (snapshot.category or "", *snapshot.tags)}
        for key, layer in self._categories:
            if key in labels:
                return layer
        return None

    def __repr__(self) -> str:
        return f"RuleSet(source={self._source!r}, version={self._version!r})"


def _frozen(parameters: Parameters) -> Mapping[str, Any]:
    return MappingProxyType(layer_settings(parameters))


def _span(low: float, high: float) -> str:
    upper = "inf" if high == float("inf") else _number(high)
    return f"[{_number(low)}, {upper})"
