"""What `replay --plot` draws, decided without matplotlib (pure, unit-tested).

`plot.py` only turns these values into artists. Everything a reader could get wrong is
decided here: which labels a panel shows and how each is styled, which events are ringed,
the title, the fitted y-range, where the label ids go, how big the figure is.

Label marks reuse the outcomes `labels.score` computed (one `LabelScore` per label and
series): this module never re-scores. Styles, per outcome:

* **hit** — a labelled move (`event`) with an event in its scoring window: solid green line,
  the credited events ringed green.
* **miss** — a labelled move with no event in its window: dashed dark red line.
* **false alarm** — an event in the window of a `negative`/`spike_no_news` label: dash-dot
  magenta line, the offending events ringed magenta.
* **quiet** — a `negative`/`spike_no_news` label with no event near it (correct): dotted green.
* **not scored** — `context` and `candidate` rows: thin dotted grey.
* **calm** / **calm with events** — a `calm` window shaded blue when no event fired inside,
  magenta (events ringed) when some did.

Labels outside a series' recorded span are not drawn (the scorecard lists them).

The y-range is fitted to what is drawn (prices, event prices and baselines) with a margin,
because a market that moves between 0.46 and 0.54 is a flat line on a 0-1 axis; the full
0-1 scale stays visible in a narrow strip beside each panel (`scale` of a `Panel`).
"""

from __future__ import annotations

import math
import textwrap
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from polymarket_kafka.replay.engine import ReplayResult
from polymarket_kafka.replay.labels import LabelScore, Scorecard
from polymarket_kafka.replay.summary import format_duration

__all__ = [
    "STYLES",
    "FigureLayout",
    "LabelMark",
    "MarkStyle",
    "Panel",
    "figure_layout",
    "fit_ylim",
    "label_marks",
    "note_lines",
    "panel_title",
    "panels",
    "spread",
    "style_of",
]


LineStyle = Literal["-", "--", "-.", ":"]


@dataclass(frozen=True, slots=True)
class MarkStyle:
    """How one label outcome is drawn, and what the legend says about it."""

    colour: str
    linestyle: LineStyle
    legend: str
    #: True: shade the window (calm); False: a vertical line at the labelled time.
    span: bool = False


#: Every style a label mark can take, in legend order.
STYLES: dict[str, MarkStyle] = {
    "hit": MarkStyle("#1a9850", "-", "hit: labelled move, event in its window (ringed)"),
    "miss": MarkStyle("#b2182b", "--", "miss: labelled move, no event"),
    "false alarm": MarkStyle(
        "#e7298a", "-.", "false alarm: event near news without a move or a glitch (ringed)"
    ),
    "quiet": MarkStyle("#1a9850", ":", "quiet: news without a move or a glitch, no event"),
    "not scored": MarkStyle("#7f7f7f", ":", "context / candidate (not scored)"),
    "calm": MarkStyle("#4c78a8", "-", "calm window, no event", span=True),
    "calm with events": MarkStyle(
        "#e7298a", "-", "calm window with events: false alarms (ringed)", span=True
    ),
}

#: Smallest y-range shown, so a flat market is not magnified into noise.
MIN_YSPAN = 0.04
#: Margin above and below the data, as a fraction of its range.
YMARGIN = 0.1
#: Least distance between two label ids above a chart, as a fraction of its width.
TEXT_GAP = 0.03
#: Characters per title line and lines of the market question kept.
TITLE_WIDTH = 100
TITLE_LINES = 2
NOTE_WIDTH = 64
#: Most label lines in a panel's notes column (it is as tall as the chart).
MAX_NOTES = 18
NOTE_HEADING_COLOUR, NOTE_MORE_COLOUR = "#222222", "#555555"
#: Inches: a chart, the 0-1 strip beside it, the notes column, a panel's height and the
#: room the figure legend takes.
CHART_WIDTH, SCALE_WIDTH, NOTES_WIDTH = 11.0, 0.3, 3.7
PANEL_HEIGHT, LEGEND_HEIGHT = 3.2, 1.2


@dataclass(frozen=True, slots=True)
class LabelMark:
    """One label drawn on one panel."""

    label_id: str
    style: str
    at: datetime
    #: End of a calm window (None for a point label).
    until: datetime | None
    #: The scoring window of a point label (shaded faintly), or the calm window.
    window: tuple[datetime, datetime]
    #: Events to ring in the style's colour (credited for a hit, false alarms otherwise).
    ringed: tuple[datetime, ...]
    #: One line for the notes beside the panel.
    note: str
    #: What the id above the chart points at: the labelled time, or the middle of the
    #: part of a calm window inside the series' span.
    anchor: datetime
    #: Where the id is written (moved aside from `anchor` when ids would collide).
    text_at: datetime


@dataclass(frozen=True, slots=True)
class Panel:
    """One replayed series: its title, y-range and label marks."""

    title: str
    ylim: tuple[float, float]
    #: (lowest, highest) price drawn, for the 0-1 scale strip.
    data_range: tuple[float, float]
    marks: tuple[LabelMark, ...]


@dataclass(frozen=True, slots=True)
class FigureLayout:
    """Panels on a grid of `rows` x `columns`; `ratios`: the widths (inches) of a panel's
    axes, chart first; `width`, `height`: the figure's size in inches."""

    rows: int
    columns: int
    ratios: tuple[float, ...]
    width: float
    height: float


def style_of(row: LabelScore) -> str | None:
    """The style of a scored label (a key of `STYLES`), None when it is not drawn."""
    if row.outcome == "outside":
        return None
    if row.label.kind == "calm":
        return "calm with events" if row.outcome == "false alarm" else "calm"
    if row.outcome in ("candidate", "context"):
        return "not scored"
    return row.outcome


def _ringed(row: LabelScore, style: str) -> tuple[datetime, ...]:
    return row.events if style in ("hit", "false alarm", "calm with events") else ()


def _short(what: str) -> str:
    """The gist of a label's `what`: the text before an explanatory ` - ` aside."""
    return what.split(" - ", 1)[0].strip()


def _note(row: LabelScore, style: str) -> str:
    label = row.label
    if label.until is not None:
        when = f"{label.at:%b %d %H:%M} → {label.until:%b %d %H:%M}"
    else:
        when = f"{label.at:%b %d %H:%M}"
    if style == "hit" and row.latency is not None:
        outcome = f"hit {'+' if row.latency.total_seconds() >= 0 else '-'}"
        outcome += format_duration(abs(round(row.latency.total_seconds() / 60)) * 60.0)
    elif style in ("false alarm", "calm with events"):
        count = len(row.events)
        outcome = f"false alarm: {count} events" if count > 1 else "false alarm"
    elif style == "calm":
        outcome = "calm, quiet"
    else:
        outcome = style
    head = f"{label.label_id} {when} {outcome}"
    gist = _short(label.what)
    if not gist:
        return head
    room = max(10, NOTE_WIDTH - len(head) - 3)
    return f"{head} · {textwrap.shorten(gist, room, placeholder='…')}"


def label_marks(
    rows: Iterable[LabelScore], start: datetime, end: datetime
) -> tuple[LabelMark, ...]:
    """The marks of one series' scored labels, ordered by where their ids point, with the
    ids spread (`spread`) over the series' span `start`..`end`."""
    drawn: list[tuple[LabelScore, str, datetime]] = []
    for row in rows:
        style = style_of(row)
        if style is not None:
            drawn.append((row, style, _anchor(row, start, end)))
    drawn.sort(key=lambda item: (item[2], item[0].label.label_id))
    span = end - start
    seconds = span.total_seconds() or 1.0
    places = spread([(anchor - start).total_seconds() / seconds for _, _, anchor in drawn])
    return tuple(
        LabelMark(
            label_id=row.label.label_id,
            style=style,
            at=row.label.at,
            until=row.label.until,
            window=row.window,
            ringed=_ringed(row, style),
            note=_note(row, style),
            anchor=anchor,
            text_at=start + span * place,
        )
        for (row, style, anchor), place in zip(drawn, places, strict=True)
    )


def _anchor(row: LabelScore, start: datetime, end: datetime) -> datetime:
    label = row.label
    if label.until is None:
        return label.at
    first, last = max(label.at, start), min(label.until, end)
    return first + (last - first) / 2


def note_lines(marks: Sequence[LabelMark], limit: int = MAX_NOTES) -> list[tuple[str, str]]:
    """The notes column of a panel as (text, colour) lines: a heading, then one line per
    mark; past `limit` lines of marks the last says how many more the scorecard lists.
    Empty when the panel has no marks."""
    if not marks:
        return []
    shown = marks if len(marks) <= limit else marks[: limit - 1]
    lines = [("labels (UTC)", NOTE_HEADING_COLOUR)]
    lines += [(mark.note, STYLES[mark.style].colour) for mark in shown]
    if len(shown) < len(marks):
        lines.append((f"+{len(marks) - len(shown)} more (see the scorecard)", NOTE_MORE_COLOUR))
    return lines


def spread(positions: Sequence[float], gap: float = TEXT_GAP) -> list[float]:
    """Where to write ids wanted at `positions` (sorted fractions of the axis width) so that
    neighbours are at least `gap` apart, as close to their wish as possible, inside [0, 1].

    Ids that would collide form a group centred on the mean of their wishes (groups that
    then collide merge), and a group crossing an edge slides inward; when the ids cannot
    all fit, the gap shrinks to share the width.
    """
    if not positions:
        return []
    gap = min(gap, 1.0 / max(1, len(positions) - 1)) if len(positions) > 1 else gap
    # Each group: (first index, size, start of the group); merged while they overlap.
    groups: list[tuple[int, int, float]] = []
    for index, wish in enumerate(positions):
        groups.append((index, 1, wish))
        while len(groups) > 1:
            (first, size, begin), (_, next_size, next_begin) = groups[-2], groups[-1]
            if begin + size * gap <= next_begin:
                break
            size += next_size
            centre = sum(positions[first : first + size]) / size
            groups[-2:] = [(first, size, centre - (size - 1) * gap / 2)]
    placed = [begin + k * gap for _, size, begin in groups for k in range(size)]
    # Slide into [0, 1] from each edge, pushing neighbours that would come too close.
    placed[-1] = min(placed[-1], 1.0)
    for k in range(len(placed) - 2, -1, -1):
        placed[k] = min(placed[k], placed[k + 1] - gap)
    placed[0] = max(placed[0], 0.0)
    for k in range(1, len(placed)):
        placed[k] = max(placed[k], placed[k - 1] + gap)
    return [min(max(x, 0.0), 1.0) for x in placed]  # rounding must not leave the axis


def fit_ylim(
    values: Iterable[float], margin: float = YMARGIN, min_span: float = MIN_YSPAN
) -> tuple[float, float]:
    """A y-range around `values` with `margin` of their range on each side, at least
    `min_span` wide, inside [0, 1]: slid inward rather than cut when it crosses a bound."""
    values = list(values)
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    span = max(high - low, min_span)
    middle = (low + high) / 2
    half = span / 2 + margin * span
    bottom, top = middle - half, middle + half
    if bottom < 0.0:
        bottom, top = 0.0, top - bottom
    if top > 1.0:
        bottom, top = bottom - (top - 1.0), 1.0
    return max(0.0, bottom), min(1.0, top)


def panel_title(question: str, series: str, facts: str = "", width: int = TITLE_WIDTH) -> str:
    """The market question (wrapped, at most `TITLE_LINES` lines, `…` when cut), then the
    series name and `facts`; only the series line when the question is unknown."""
    lines = textwrap.wrap(" ".join(question.split()), width)
    if len(lines) > TITLE_LINES:
        lines = lines[:TITLE_LINES]
        lines[-1] = lines[-1][: width - 1].rstrip(" ,;:") + "…"
    series_line = f"{series} — {facts}" if facts else series
    return "\n".join([*lines, series_line])


def _facts(result: ReplayResult, marks: Sequence[LabelMark]) -> str:
    series = result.series
    step = series.median_step_seconds
    count = len(result.events)
    parts = [f"{format_duration(step)} steps" if step is not None else "1 point"]
    parts.append(f"{count} event{'' if count == 1 else 's'}")
    outcomes = Counter(mark.style for mark in marks)
    if outcomes:
        named = [f"{outcomes[style]} {style}" for style in STYLES if outcomes[style]]
        parts.append("labels: " + ", ".join(named))
    return "; ".join(parts)


def _values(result: ReplayResult) -> list[float]:
    values = [point.price for point in result.series.points]
    for event in result.events:
        values += [event.yes_price, event.baseline_yes_price]
    return values


def panels(
    results: Sequence[ReplayResult],
    scorecard: Scorecard | None = None,
    keys: Sequence[str] | None = None,
) -> list[Panel]:
    """One panel per result. With a scorecard, `keys[i]` is the name labels use for
    `results[i]` (`labels.series_key`), and the panel shows the rows of that series."""
    if scorecard is not None and (keys is None or len(keys) != len(results)):
        raise ValueError("a scorecard needs one series key per result")
    built = []
    for index, result in enumerate(results):
        series = result.series
        rows: list[LabelScore] = []
        if scorecard is not None and keys is not None:
            rows = [row for row in scorecard.rows if row.series == keys[index]]
        marks = label_marks(rows, series.start, series.end)
        values = _values(result)
        built.append(
            Panel(
                title=panel_title(result.market.question, series.name, _facts(result, marks)),
                ylim=fit_ylim(values),
                data_range=(min(values), max(values)),
                marks=marks,
            )
        )
    return built


def figure_layout(count: int, notes: bool = True) -> FigureLayout:
    """Panels in one column up to 6, else two columns; each panel is a chart, the 0-1
    strip and (when some panel has labels) the notes, at a fixed size in inches, so the
    figure grows with the count instead of squeezing the panels."""
    count = max(1, count)
    columns = 1 if count <= 6 else 2
    rows = math.ceil(count / columns)
    ratios = (CHART_WIDTH, SCALE_WIDTH, NOTES_WIDTH) if notes else (CHART_WIDTH, SCALE_WIDTH)
    return FigureLayout(
        rows=rows,
        columns=columns,
        ratios=ratios,
        width=sum(ratios) * columns,
        height=PANEL_HEIGHT * rows + LEGEND_HEIGHT,
    )
