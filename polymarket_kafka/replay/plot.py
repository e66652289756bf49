"""`replay --plot`: the replayed prices with the events marked, as a PNG.

matplotlib is an optional extra (`pip install 'polymarket-kafka[plot]'`): the service never
needs it, so it is imported only here, only when a plot is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from polymarket_kafka.models import ConvictionDirection
from polymarket_kafka.replay.engine import ReplayResult

__all__ = ["SEVERITY_COLOURS", "PlotUnavailableError", "plot_replays"]

#: Marker colour per severity band of the default rules; other bands are drawn in grey.
SEVERITY_COLOURS = {"minor": "#f2a900", "major": "#e4572e", "extreme": "#7b2cbf"}
_OTHER_COLOUR = "#6c757d"


class PlotUnavailableError(RuntimeError):
    """matplotlib is not installed."""


def plot_replays(results: Sequence[ReplayResult], path: str | Path) -> Path:
    """Draw one panel per replayed series into `path` (PNG) and return it.

    Events are triangles at the event price: pointing up for `toward_yes`, down for
    `toward_no`, coloured by severity; a dotted line joins each to its baseline.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: never open a window or need a display
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailableError(
            "plotting needs matplotlib: install polymarket-kafka[plot]"
        ) from None

    path = Path(path)
    figure, axes = plt.subplots(
        nrows=max(1, len(results)),
        ncols=1,
        figsize=(12, 2.8 * max(1, len(results))),
        squeeze=False,
    )
    try:
        for row, result in zip(axes[:, 0], results, strict=False):
            points = result.series.points
            row.plot([p.at for p in points], [p.price for p in points], linewidth=0.8)
            for event in result.events:
                up = event.direction is ConvictionDirection.TOWARD_YES
                colour = SEVERITY_COLOURS.get(event.severity or "", _OTHER_COLOUR)
                row.plot(
                    [event.baseline_timestamp, event.timestamp],
                    [event.baseline_yes_price, event.yes_price],
                    linestyle=":",
                    color=colour,
                    linewidth=0.8,
                )
                row.scatter(
                    [event.timestamp],
                    [event.yes_price],
                    marker="^" if up else "v",
                    color=colour,
                    s=40,
                    zorder=3,
                )
            row.set_title(
                f"{result.series.name} — {len(result.events)} events", fontsize=9, loc="left"
            )
            row.set_ylim(0.0, 1.0)
            row.set_ylabel("YES price")
            row.grid(alpha=0.3)
        from matplotlib.lines import Line2D

        # Known bands in their order, then any other band name alphabetically.
        rank = {name: index for index, name in enumerate(SEVERITY_COLOURS)}
        shown = sorted(
            {event.severity or "" for result in results for event in result.events},
            key=lambda name: (rank.get(name, len(rank)), name),
        )
        if shown:
            handles = [
                Line2D(
                    [],
                    [],
                    marker="^",
                    linestyle="",
                    color=SEVERITY_COLOURS.get(name, _OTHER_COLOUR),
                    label=name or "no severity",
                )
                for name in shown
            ]
            axes[0, 0].legend(
                handles=handles,
                loc="upper left",
                fontsize=8,
                title="severity (▲ yes ▼ no)",
                title_fontsize=8,
            )
        figure.autofmt_xdate()
        figure.tight_layout()
        figure.savefig(path, format="png", dpi=110)
    finally:
        plt.close(figure)
    return path
