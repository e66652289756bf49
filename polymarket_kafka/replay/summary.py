"""The human summary of a replay (stderr): what was replayed and what fired, per market."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime

from polymarket_kafka.replay.engine import ReplayResult

__all__ = ["format_duration", "format_summary", "market_days"]

_DAY = 86400.0


def market_days(results: Sequence[ReplayResult]) -> float:
    """Total span of the replayed series, in days."""
    return sum(result.series.span_seconds for result in results) / _DAY


def format_duration(seconds: float) -> str:
    """`90` -> `1m30s`, `3600` -> `1h`, `4 days` -> `4.0d` (compact, for tables)."""
    if seconds >= 2 * _DAY:
        return f"{seconds / _DAY:.1f}d"
    whole = round(seconds)
    if whole == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _time(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%MZ")


def _rate(events: int, days: float) -> str:
    return f"{events / days:.2f}/market-day" if days > 0 else "n/a per market-day"


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counter.items()))


def format_summary(results: Sequence[ReplayResult], rules_note: str) -> str:
    """Per market: points, span, events by rule/severity/direction, rate, metadata defaults;
    then totals. `rules_note` says which rules ran (file or built-in, version)."""
    lines = [f"replay: {rules_note}"]
    severities: Counter[str] = Counter()
    for result in results:
        series, market = result.series, result.market
        lines.append(f"{series.name}: market {market.market_id}")
        step = series.median_step_seconds
        notes = [f"step {format_duration(step)}"] if step is not None else []
        if series.duplicates_dropped:
            notes.append(f"{series.duplicates_dropped} duplicate timestamps dropped (last kept)")
        if series.reordered:
            notes.append("points sorted by time")
        lines.append(
            f"  points {len(series.points)} from {_time(series.start)} to {_time(series.end)}"
            f" ({format_duration(series.span_seconds)}{'; ' if notes else ''}{'; '.join(notes)})"
        )
        by_rule = Counter(event.rule for event in result.events)
        by_severity = Counter(event.severity or "none" for event in result.events)
        by_direction = Counter(event.direction.value for event in result.events)
        severities.update(by_severity)
        days = series.span_seconds / _DAY
        detail = (
            f": {_counts(by_rule)}; severity {_counts(by_severity)}; {_counts(by_direction)}"
            if result.events
            else ""
        )
        lines.append(f"  events {len(result.events)} ({_rate(len(result.events), days)}){detail}")
        dropped = {k: v for k, v in result.detector_stats.items() if v}
        if dropped:
            lines.append(f"  detector dropped: {_counts(Counter(dropped))}")
        origin = market.source or "no market file"
        if market.defaults:
            lines.append(
                f"  metadata: {origin}; not known, defaults used: {', '.join(market.defaults)}"
            )
        else:
            lines.append(f"  metadata: {origin}")
    total_events = sum(len(result.events) for result in results)
    total_points = sum(len(result.series.points) for result in results)
    days = market_days(results)
    lines.append(
        f"total: {len(results)} series, {total_points} points, {total_events} events over "
        f"{days:.1f} market-days ({_rate(total_events, days)})"
        + (f"; severity {_counts(severities)}" if severities else "")
    )
    return "\n".join(lines)
