"""Score a replay against dated, labelled moments (a labels CSV), like a backtest report.

The windows are the ones the data set's own README states (its December 2026 revision).

The CSV has a header and at least the columns `label_id, kind, utc_time, series` (others,
such as `what` or `sources`, are kept for display or ignored). `series` names history files
relative to the CSV's directory, without `.history.json`, separated by `;`; a segment may
use shell wildcards (`states-hourly/*`). Kinds and how they score, per (label, series):

* `event` — news that moved the market. **hit** when an event of that series fires within
  `[t - max(1 bar, 30m), t + max(3 bars, 60m) + 5s]`, a bar being the series' median step:
  a move shows on the next point of coarse data and a confirmed event may fire one bar later
  still; the 5 seconds absorb bars stamped just past the hour. The latency of the first such
  event is reported. Else **miss**.
* `negative`, `spike_no_news` — news without a conviction change, or a one-bar glitch.
  **false alarm** when an event fires within one bar of `t` (`[t - 1 bar, t + 1 bar]`), else
  **quiet** (correct).
* `calm` — `utc_time` is `START/END`; any event inside is a **false alarm**.
* `candidate` — an unconfirmed time: the events near it are listed, nothing is scored.
* `context` — a dated moment kept for reading the chart (a move too small, too close to
  another label or of unknown cause to score): listed like a candidate, never scored.

A label whose time falls outside a series' recorded span is reported as outside, and one
whose series were not replayed as not replayed; neither is scored. Scoring is a pure
function (`score`) of the labels and, per replayed series, its span, median step and event
times; `read_labels` is the thin CSV reader in front of it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal, cast, get_args

from polymarket_kafka.replay.history import series_name
from polymarket_kafka.replay.summary import format_duration

__all__ = [
    "MIN_LEAD",
    "MIN_TOLERANCE",
    "STAMP_SLACK",
    "Label",
    "LabelScore",
    "LabelsError",
    "Scorecard",
    "SeriesFacts",
    "format_scorecard",
    "parse_labels",
    "read_labels",
    "score",
    "series_key",
]

Kind = Literal["event", "negative", "spike_no_news", "calm", "candidate", "context"]
Outcome = Literal["hit", "miss", "false alarm", "quiet", "candidate", "context", "outside"]

#: Smallest lead before a labelled time (news times are approximate); else one bar.
MIN_LEAD = timedelta(minutes=30)
#: Smallest tolerance after a labelled time; else `TOLERANCE_STEPS` bars.
MIN_TOLERANCE = timedelta(minutes=60)
#: Tolerance in bars (median steps) of the series (coarse data shows a move late).
TOLERANCE_STEPS = 3
#: Slack after the tolerance, for bars stamped a few seconds past the hour.
STAMP_SLACK = timedelta(seconds=5)

_REQUIRED = ("label_id", "kind", "utc_time", "series")


class LabelsError(ValueError):
    """The labels file is unusable; one `FILE:LINE: message` line per problem."""


@dataclass(frozen=True, slots=True)
class Label:
    label_id: str
    kind: Kind
    #: The labelled time (for `calm`: the start of the window).
    at: datetime
    #: End of a `calm` window; None for the other kinds.
    until: datetime | None
    series: tuple[str, ...]
    what: str = ""
    line: int = 0


@dataclass(frozen=True, slots=True)
class SeriesFacts:
    """What scoring needs to know about one replayed series."""

    key: str
    start: datetime
    end: datetime
    median_step_seconds: float | None
    event_times: tuple[datetime, ...]


@dataclass(frozen=True, slots=True)
class LabelScore:
    """The outcome of one label on one series."""

    label: Label
    series: str
    outcome: Outcome
    window: tuple[datetime, datetime]
    events: tuple[datetime, ...] = ()
    #: First event in the window minus the labelled time (hits only).
    latency: timedelta | None = None


@dataclass(frozen=True, slots=True)
class Scorecard:
    rows: tuple[LabelScore, ...]
    #: (label id, series pattern) pairs that matched no replayed series.
    not_replayed: tuple[tuple[str, str], ...]
    total_events: int
    market_days: float

    def count(self, *outcomes: Outcome) -> int:
        return sum(1 for row in self.rows if row.outcome in outcomes)

    @property
    def false_alarm_events(self) -> int:
        return sum(len(row.events) for row in self.rows if row.outcome == "false alarm")


# --- reading -------------------------------------------------------------------------------


def read_labels(path: str | Path) -> tuple[Label, ...]:
    """Read a labels CSV; `LabelsError` lists every bad row."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise LabelsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise LabelsError(f"{path}: not UTF-8 text") from None
    return parse_labels(text, source=str(path))


def parse_labels(text: str, source: str = "<labels>") -> tuple[Label, ...]:
    reader = csv.DictReader(io.StringIO(text))
    fields = reader.fieldnames or []
    missing = [name for name in _REQUIRED if name not in fields]
    if missing:
        raise LabelsError(f"{source}:1: missing column(s): {', '.join(missing)}")
    labels: list[Label] = []
    problems: list[str] = []
    seen: set[str] = set()
    for row in reader:
        line = reader.line_num
        try:
            label = _label(row, line)
        except ValueError as exc:
            problems.append(f"{source}:{line}: {exc}")
            continue
        if label.label_id in seen:
            problems.append(f"{source}:{line}: label {label.label_id}: duplicate label_id")
        seen.add(label.label_id)
        labels.append(label)
    if problems:
        raise LabelsError("\n".join(problems))
    return tuple(labels)


def _label(row: Mapping[str, str | None], line: int) -> Label:
    label_id = (row.get("label_id") or "").strip()
    if not label_id:
        raise ValueError("empty label_id")
    where = f"label {label_id}"
    kind = (row.get("kind") or "").strip()
    if kind not in get_args(Kind):
        raise ValueError(
            f"{where}: unknown kind {kind!r} (expected one of {', '.join(get_args(Kind))})"
        )
    series = tuple(part.strip() for part in (row.get("series") or "").split(";") if part.strip())
    if not series:
        raise ValueError(f"{where}: empty series")
    raw_time = (row.get("utc_time") or "").strip()
    until: datetime | None = None
    if kind == "calm":
        start_text, slash, end_text = raw_time.partition("/")
        if not slash:
            raise ValueError(f"{where}: a calm label needs utc_time START/END, got {raw_time!r}")
        at, until = _time(start_text, where), _time(end_text, where)
        if until <= at:
            raise ValueError(f"{where}: calm window ends before it starts: {raw_time!r}")
    else:
        at = _time(raw_time, where)
    return Label(
        label_id=label_id,
        kind=cast(Kind, kind),  # checked against Kind above
        at=at,
        until=until,
        series=series,
        what=(row.get("what") or "").strip(),
        line=line,
    )


def _time(text: str, where: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{where}: utc_time {text!r} is not an ISO-8601 time") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


# --- scoring -------------------------------------------------------------------------------


def series_key(history: str | Path, labels_dir: str | Path) -> str | None:
    """The name labels use for a history file: its path relative to the labels' directory,
    without `.history.json` (None when it is not under that directory)."""
    history = Path(history).resolve()
    try:
        relative = history.parent.relative_to(Path(labels_dir).resolve())
    except ValueError:
        return None
    return (relative / series_name(history)).as_posix().removeprefix("./")


def _matches(pattern: str, key: str) -> bool:
    pattern_parts, key_parts = pattern.split("/"), key.split("/")
    return len(pattern_parts) == len(key_parts) and all(
        fnmatchcase(part, glob) for part, glob in zip(key_parts, pattern_parts, strict=True)
    )


def _bar(facts: SeriesFacts) -> timedelta:
    return timedelta(seconds=facts.median_step_seconds or 0.0)


def _window(label: Label, facts: SeriesFacts) -> tuple[datetime, datetime]:
    bar = _bar(facts)
    if label.kind == "calm":
        assert label.until is not None
        return label.at, label.until
    if label.kind in ("negative", "spike_no_news"):
        return label.at - bar, label.at + bar
    lead = max(MIN_LEAD, bar)
    tolerance = max(MIN_TOLERANCE, TOLERANCE_STEPS * bar) + STAMP_SLACK
    return label.at - lead, label.at + tolerance


def _score_one(label: Label, facts: SeriesFacts) -> LabelScore:
    window = _window(label, facts)
    if label.kind == "calm":
        in_span = window[0] <= facts.end and window[1] >= facts.start
    else:
        in_span = facts.start <= label.at <= facts.end
    events = tuple(t for t in facts.event_times if window[0] <= t <= window[1])
    if not in_span:
        return LabelScore(label, facts.key, "outside", window)
    if label.kind == "event":
        if events:
            return LabelScore(label, facts.key, "hit", window, events, events[0] - label.at)
        return LabelScore(label, facts.key, "miss", window)
    if label.kind in ("candidate", "context"):
        return LabelScore(label, facts.key, label.kind, window, events)
    return LabelScore(label, facts.key, "false alarm" if events else "quiet", window, events)


def score(labels: Iterable[Label], series: Sequence[SeriesFacts]) -> Scorecard:
    """Score every label on every replayed series it names (see the module docstring).

    The totals (`total_events`, `market_days`) cover every series given, labelled or not.
    """
    rows: list[LabelScore] = []
    not_replayed: list[tuple[str, str]] = []
    for label in labels:
        for pattern in label.series:
            matched = [facts for facts in series if _matches(pattern, facts.key)]
            if not matched:
                not_replayed.append((label.label_id, pattern))
            rows.extend(_score_one(label, facts) for facts in sorted(matched, key=lambda f: f.key))
    return Scorecard(
        rows=tuple(rows),
        not_replayed=tuple(not_replayed),
        total_events=sum(len(facts.event_times) for facts in series),
        market_days=sum((f.end - f.start).total_seconds() for f in series) / 86400.0,
    )


# --- report --------------------------------------------------------------------------------


def _signed(delta: timedelta) -> str:
    """`+2h5m`, `-18m`: latency to the minute (recorded timestamps jitter by seconds)."""
    minutes = round(delta.total_seconds() / 60)
    return ("-" if minutes < 0 else "+") + format_duration(abs(minutes) * 60.0)


def _times(events: Sequence[datetime], limit: int = 3) -> str:
    shown = ", ".join(t.strftime("%Y-%m-%d %H:%MZ") for t in events[:limit])
    more = f" (+{len(events) - limit} more)" if len(events) > limit else ""
    return f"{len(events)} event{'s' if len(events) != 1 else ''}: {shown}{more}" if events else ""


def format_scorecard(card: Scorecard, source: str) -> str:
    """The scoring table: one row per (label, series), then totals."""
    header = ("label", "kind", "series", "result", "latency", "events in window")
    table = [header]
    outside: list[str] = []
    for row in card.rows:
        if row.outcome == "outside":
            outside.append(f"{row.label.label_id} ({row.series})")
            continue
        result = "not scored" if row.outcome in ("candidate", "context") else row.outcome
        latency = _signed(row.latency) if row.latency is not None else "-"
        table.append(
            (row.label.label_id, row.label.kind, row.series, result, latency, _times(row.events))
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header) - 1)]
    lines = [f"labels: {source}"]
    for cells in table:
        padded = [cell.ljust(width) for cell, width in zip(cells, widths, strict=False)]
        lines.append("  ".join([*padded, cells[-1]]).rstrip())
    if card.not_replayed:
        named = ", ".join(f"{label} ({pattern})" for label, pattern in card.not_replayed)
        lines.append(f"not replayed (not scored): {named}")
    if outside:
        lines.append(f"outside the recorded span (not scored): {', '.join(outside)}")
    events_scored = card.count("hit", "miss")
    quiet_scored = card.count("false alarm", "quiet")
    rate = (
        f"{card.total_events / card.market_days:.2f} per market-day"
        if card.market_days > 0
        else "n/a per market-day"
    )
    lines.append(
        f"total: hits {card.count('hit')}/{events_scored} event label-series; "
        f"false alarms {card.count('false alarm')}/{quiet_scored} quiet label-series "
        f"({card.false_alarm_events} events in them); {card.total_events} events over "
        f"{card.market_days:.1f} market-days ({rate})"
    )
    return "\n".join(lines)
