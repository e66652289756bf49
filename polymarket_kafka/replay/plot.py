"""`replay --plot`: the replayed prices with the events (and scored labels) marked, as a PNG.

matplotlib is an optional extra (`pip install 'polymarket-kafka[plot]'`): the service never
needs it, so it is imported only here, only when a plot is asked for, and drawn on the Agg
canvas (files only: no window, no display, no pyplot state shared with a caller).

What is drawn where, and how each label outcome is styled, is decided by the pure
`plotdata` module; this one only makes the artists. Each panel is a row of three axes: the
chart (gid `chart`), a narrow strip with the full 0-1 scale (gid `scale`) and the notes
naming each label (gid `notes`). Label artists carry gids (`label <id>`, `window <id>`,
`ring <id>`, `id <id>`) so a test can find them without reading pixels.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polymarket_kafka.models import ConvictionDirection
from polymarket_kafka.replay.engine import ReplayResult
from polymarket_kafka.replay.labels import Scorecard
from polymarket_kafka.replay.plotdata import STYLES, Panel, figure_layout, note_lines, panels

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["SEVERITY_COLOURS", "PlotUnavailableError", "build_figure", "plot_replays"]

#: Marker colour per severity band of the default rules; other bands are drawn in grey.
SEVERITY_COLOURS = {"minor": "#f2a900", "major": "#e4572e", "extreme": "#7b2cbf"}
_OTHER_COLOUR = "#6c757d"
_PRICE_COLOUR = "#1f4e79"
_SCALE_GREY = "#e3e3e3"
#: Points from the top of a chart to its label ids, and the room they take above it.
_ID_RISE = 10.0
_ID_ROOM = 20.0
#: Points between two lines of notes.
_NOTE_LINE = 9.5
_WINDOW_ALPHA = 0.07
#: A false alarm's ring is wider than a hit's: an event can be both, and both must show.
_RING_SIZE = {"hit": 130.0, "false alarm": 260.0, "calm with events": 260.0}
_CALM_ALPHA = {"calm": 0.10, "calm with events": 0.16}


class PlotUnavailableError(RuntimeError):
    """matplotlib is not installed."""


def plot_replays(
    results: Sequence[ReplayResult],
    path: str | Path,
    scorecard: Scorecard | None = None,
    keys: Sequence[str] | None = None,
) -> Path:
    """Draw one panel per replayed series into `path` (PNG) and return it.

    With `scorecard` (and `keys`, the labels' name of each result, see `plotdata.panels`)
    each panel also shows its scored labels.
    """
    figure = build_figure(results, scorecard, keys)  # PlotUnavailableError without matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    FigureCanvasAgg(figure)  # attaches itself: savefig draws with Agg
    figure.savefig(path, format="png")
    return path


def build_figure(
    results: Sequence[ReplayResult],
    scorecard: Scorecard | None = None,
    keys: Sequence[str] | None = None,
) -> Figure:
    """The figure `plot_replays` saves (see the module docstring for its structure).

    Events are triangles at the event price: pointing up for `toward_yes`, down for
    `toward_no`, coloured by severity; a dotted line joins each to its baseline.
    """
    try:
        import matplotlib  # noqa: F401  (fails first, and clearly, when the extra is absent)
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotUnavailableError(
            "plotting needs matplotlib: install polymarket-kafka[plot]"
        ) from None

    specs = panels(results, scorecard, keys)
    notes = any(spec.marks for spec in specs)
    layout = figure_layout(len(results), notes=notes)
    per_panel = len(layout.ratios)
    figure = Figure(figsize=(layout.width, layout.height), dpi=100, layout="constrained")
    grid = figure.add_gridspec(
        layout.rows, per_panel * layout.columns, width_ratios=list(layout.ratios) * layout.columns
    )
    for index, (result, spec) in enumerate(zip(results, specs, strict=True)):
        row, column = divmod(index, layout.columns)
        first = per_panel * column
        _draw_chart(figure, figure.add_subplot(grid[row, first]), result, spec)
        _draw_scale(figure.add_subplot(grid[row, first + 1]), spec)
        if notes:
            _draw_notes(figure.add_subplot(grid[row, first + 2]), spec)
    _legend(figure, results, specs)
    return figure


def _draw_chart(figure: Figure, ax: Axes, result: ReplayResult, spec: Panel) -> None:
    import matplotlib.dates as mdates
    from matplotlib.transforms import offset_copy

    ax.set_gid("chart")
    series = result.series
    ax.plot(
        _nums(p.at for p in series.points),
        [p.price for p in series.points],
        color=_PRICE_COLOUR,
        linewidth=0.9,
        zorder=2,
    )
    for level in (0.0, 0.5, 1.0):  # the bounds and the midpoint, when the fitted range shows them
        ax.axhline(level, color="#9e9e9e", linewidth=0.6, linestyle=(0, (1, 3)), zorder=0)
    prices = {event.timestamp: event.yes_price for event in result.events}
    for event in result.events:
        up = event.direction is ConvictionDirection.TOWARD_YES
        colour = SEVERITY_COLOURS.get(event.severity or "", _OTHER_COLOUR)
        ax.plot(
            _nums([event.baseline_timestamp, event.timestamp]),
            [event.baseline_yes_price, event.yes_price],
            linestyle=":",
            color=colour,
            linewidth=0.8,
        )
        ax.scatter(
            _nums([event.timestamp]),
            [event.yes_price],
            marker="^" if up else "v",
            color=colour,
            s=40,
            zorder=4,
        )
    above = offset_copy(ax.get_xaxis_transform(), fig=figure, y=_ID_RISE, units="points")
    for mark in spec.marks:
        style = STYLES[mark.style]
        if style.span:
            assert mark.until is not None  # a span style is a calm window
            ax.axvspan(
                _num(mark.at),
                _num(mark.until),
                color=style.colour,
                alpha=_CALM_ALPHA[mark.style],
                linewidth=0,
                zorder=0,
                gid=f"label {mark.label_id}",
            )
        else:
            ax.axvspan(
                _num(mark.window[0]),
                _num(mark.window[1]),
                color=style.colour,
                alpha=_WINDOW_ALPHA,
                linewidth=0,
                zorder=0,
                gid=f"window {mark.label_id}",
            )
            ax.axvline(
                _num(mark.at),
                color=style.colour,
                linestyle=style.linestyle,
                linewidth=1.2,
                zorder=1,
                gid=f"label {mark.label_id}",
            )
        ringed = [t for t in mark.ringed if t in prices]
        if ringed:
            ax.scatter(
                _nums(ringed),
                [prices[t] for t in ringed],
                s=_RING_SIZE.get(mark.style, _RING_SIZE["hit"]),
                facecolors="none",
                edgecolors=style.colour,
                linewidths=1.4,
                zorder=5,
                gid=f"ring {mark.label_id}",
            )
        # The id sits above the axes, moved aside when ids crowd; a leader joins it to
        # the mark (a short tick when it did not move).
        ax.annotate(
            mark.label_id,
            xy=(_num(mark.anchor), 1.0),
            xycoords=ax.get_xaxis_transform(),
            xytext=(_num(mark.text_at), 1.0),
            textcoords=above,
            ha="center",
            va="bottom",
            fontsize=7,
            color=style.colour,
            annotation_clip=False,
            arrowprops={
                "arrowstyle": "-",
                "color": style.colour,
                "lw": 0.6,
                "shrinkA": 0,
                "shrinkB": 0,
            },
            gid=f"id {mark.label_id}",
        )
    pad = (series.end - series.start) * 0.01
    ax.set_xlim(_num(series.start - pad), _num(series.end + pad))
    ax.set_ylim(*spec.ylim)
    # matplotlib leaves these constructors unannotated.
    # Default tick counts: a single `maxticks` leaves spans like 4h04m without an interval.
    locator = mdates.AutoDateLocator(tz=UTC)  # type: ignore[no-untyped-call]
    formatter = mdates.ConciseDateFormatter(locator, tz=UTC)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(formatter)
    ax.tick_params(labelsize=7)
    ax.set_xlabel("time (UTC)", fontsize=7)
    ax.set_ylabel("YES price", fontsize=8)
    ax.grid(alpha=0.25)
    ax.xaxis.get_offset_text().set_fontsize(7)
    ax.set_title(spec.title, loc="left", fontsize=8.5, pad=4.0 + (_ID_ROOM if spec.marks else 0))


def _draw_scale(ax: Axes, spec: Panel) -> None:
    """The full 0-1 scale: grey bar, the price range in the line colour, and a box around
    the part the fitted chart shows."""
    from matplotlib.patches import Rectangle

    ax.set_gid("scale")
    low, high = spec.data_range
    ax.bar(0.5, 1.0, width=0.5, bottom=0.0, color=_SCALE_GREY)
    ax.bar(0.5, max(high - low, 0.006), width=0.5, bottom=low, color=_PRICE_COLOUR)
    bottom, top = spec.ylim
    ax.add_patch(
        Rectangle((0.08, bottom), 0.84, top - bottom, fill=False, edgecolor="#333333", lw=0.9)
    )
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xticks([])
    ax.yaxis.tick_right()
    ax.set_yticks([0.0, 0.5, 1.0], ["0", ".5", "1"])
    ax.tick_params(labelsize=6, length=2)
    for side in ("top", "bottom", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title("0-1", fontsize=6)


def _draw_notes(ax: Axes, spec: Panel) -> None:
    ax.set_gid("notes")
    ax.axis("off")
    for number, (text, colour) in enumerate(note_lines(spec.marks)):
        ax.annotate(
            text,
            xy=(0.0, 1.0),
            xycoords="axes fraction",
            xytext=(0.0, -_NOTE_LINE * number),
            textcoords="offset points",
            ha="left",
            va="top",
            fontsize=7,
            fontweight="bold" if number == 0 else "normal",
            color=colour,
        )


def _legend(figure: Figure, results: Sequence[ReplayResult], specs: Sequence[Panel]) -> None:
    """One legend for the figure, a column per group: prices and events, label lines,
    shaded spans and the scale strip (only what the figure shows)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    prices: list[Any] = [Line2D([], [], color=_PRICE_COLOUR, linewidth=0.9, label="YES price")]
    # Known bands in their order, then any other band name alphabetically.
    rank = {name: index for index, name in enumerate(SEVERITY_COLOURS)}
    shown = sorted(
        {event.severity or "" for result in results for event in result.events},
        key=lambda name: (rank.get(name, len(rank)), name),
    )
    if shown:
        prices.append(
            Line2D(
                [],
                [],
                marker="^",
                linestyle="",
                color="#bbbbbb",
                label="event ▲ toward yes, ▼ toward no; dotted from its baseline",
            )
        )
    prices += [
        Line2D(
            [],
            [],
            marker="^",
            linestyle="",
            color=SEVERITY_COLOURS.get(name, _OTHER_COLOUR),
            label=f"{name or 'no'} severity",
        )
        for name in shown
    ]
    used = {mark.style for spec in specs for mark in spec.marks}
    lines: list[Any] = [
        Line2D([], [], color=style.colour, linestyle=style.linestyle, label=style.legend)
        for key, style in STYLES.items()
        if key in used and not style.span
    ]
    spans: list[Any] = [
        Patch(facecolor=style.colour, alpha=_CALM_ALPHA[key] * 2.5, label=style.legend)
        for key, style in STYLES.items()
        if key in used and style.span
    ]
    if lines:
        spans.append(
            Patch(facecolor="#888888", alpha=_WINDOW_ALPHA * 3, label="faint band: scoring window")
        )
    spans.append(
        Patch(
            facecolor=_SCALE_GREY,
            edgecolor="#333333",
            label="right strip: full 0-1 scale, bar = prices, box = the y-range shown",
        )
    )
    groups = [group for group in (prices, lines, spans) if group]
    rows = max(len(group) for group in groups)
    # The legend fills column by column: pad each group to a full column with blanks.
    blank = Line2D([], [], linestyle="", label="")
    handles = [handle for group in groups for handle in group + [blank] * (rows - len(group))]
    figure.legend(
        handles=handles, loc="outside upper center", ncols=len(groups), fontsize=8, frameon=False
    )


def _num(at: datetime) -> float:
    """A time as matplotlib's date number (for APIs that do not convert units)."""
    import matplotlib.dates as mdates

    return float(mdates.date2num(at))  # type: ignore[no-untyped-call]


def _nums(times: Iterable[datetime]) -> list[float]:
    return [_num(at) for at in times]
