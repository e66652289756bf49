"""Replay of the shared, real Polymarket histories under rules/default.yaml.

Every file loads, events are valid Kafka values in time order, and the defaults meet the
detection targets of issue 12 on the labels (recall >= 90 %, no false alarm, at most 60
events) — also on the minute files resampled to 5 and 15 minutes, a sampling rate they were
not tuned on. A retune that breaks a target fails here. Skipped when `shared/data/real` is
not beside the repository.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from polymarket_kafka.cli import main
from polymarket_kafka.models import PolymarketEvent
from polymarket_kafka.replay.engine import ReplayResult, replay
from polymarket_kafka.replay.history import PricePoint, PriceSeries, load_history, market_for
from polymarket_kafka.replay.labels import SeriesFacts, read_labels, score, series_key
from polymarket_kafka.ruleset import load_rules
from tests.plugins.untraced import untraced

ROOT = Path(__file__).resolve().parents[2]
REAL = Path(__file__).parents[2].parent / "shared" / "data" / "real"

pytestmark = [
    pytest.mark.real_data,
    pytest.mark.skipif(not REAL.is_dir(), reason=f"real histories not found at {REAL}"),
]


@pytest.fixture(scope="module")
def results() -> list[ReplayResult]:
    rules = load_rules(ROOT / "rules" / "default.yaml")
    # Untraced (tests/plugins/untraced.py): every pytest-xdist worker that runs one of these
    # tests replays every history, three times slower under the coverage tracer.
    with untraced():
        return [
            replay(load_history(path), market_for(path), rules)
            for path in sorted(REAL.rglob("*.history.json"))
        ]


def test_every_history_loads_with_its_sidecar(results: list[ReplayResult]) -> None:
    assert len(results) >= 10
    for result in results:
        assert len(result.series.points) > 100, result.series.name
        assert result.market.source is not None  # every file has a sidecar
        assert result.market.question


def test_events_are_valid_kafka_values_in_time_order(results: list[ReplayResult]) -> None:
    rules_version = load_rules(ROOT / "rules" / "default.yaml").version
    assert sum(len(result.events) for result in results) > 0
    for result in results:
        times = [event.timestamp for event in result.events]
        assert times == sorted(times), result.series.name
        for event in result.events:
            value = event.to_kafka_value()
            assert PolymarketEvent.model_validate(json.loads(value)) == event
            assert event.market_id == result.market.market_id
            assert event.rules_version == rules_version
            assert event.severity is not None
            assert result.series.start <= event.baseline_timestamp < event.timestamp


def _facts(results: list[ReplayResult]) -> list[SeriesFacts]:
    facts = []
    for result in results:
        key = series_key(result.series.source, REAL)
        assert key is not None
        series = result.series
        facts.append(
            SeriesFacts(
                key, series.start, series.end, series.median_step_seconds, result.event_times()
            )
        )
    return facts


def test_the_defaults_meet_the_detection_targets(results: list[ReplayResult]) -> None:
    """Issue 12: recall >= 90 % of the scored moves, no false alarm, at most 60 events."""
    card = score(read_labels(REAL / "labels.csv"), _facts(results))
    assert card.not_replayed == ()  # every series a label names was replayed
    assert {row.label.kind for row in card.rows} >= {"event", "negative", "calm"}
    scored = card.count("hit", "miss")
    assert scored >= 19
    assert card.count("hit") >= 0.9 * scored
    assert card.count("false alarm") == 0, [r for r in card.rows if r.outcome == "false alarm"]
    assert card.total_events <= 60


def _resampled(series: PriceSeries, seconds: int) -> PriceSeries:
    """The first point of every `seconds`-long interval: the series as a slower poll saw it."""
    points: list[PricePoint] = []
    for point in series.points:
        if not points or point.at.timestamp() // seconds > points[-1].at.timestamp() // seconds:
            points.append(point)
    return replace(series, points=tuple(points))


@pytest.mark.parametrize("seconds", [300, 900])
def test_minute_files_resampled_to_a_slower_rate_stay_free_of_false_alarms(
    seconds: int,
) -> None:
    """The defaults were tuned on these files at one minute; at 5 and 15 minutes (rates no
    file has) the calm windows and negatives must stay quiet."""
    rules = load_rules(ROOT / "rules" / "default.yaml")
    with untraced():
        results = [
            replay(_resampled(load_history(path), seconds), market_for(path), rules)
            for path in sorted(REAL.rglob("*-minute.history.json"))
        ]
    assert len(results) >= 10
    card = score(read_labels(REAL / "labels.csv"), _facts(results))
    assert card.count("false alarm", "quiet") >= 20  # the calm windows were scored
    assert card.count("false alarm") == 0, [r for r in card.rows if r.outcome == "false alarm"]


def test_the_replay_command_on_the_real_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)  # rules/default.yaml by default
    histories = sorted(str(path) for path in REAL.glob("*.history.json"))
    out = tmp_path / "events"
    args = ["replay", *histories, "--out", str(out), "--labels", str(REAL / "labels.csv")]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.startswith("replay: rules rules/default.yaml (default; version ")
    assert f"labels: {REAL / 'labels.csv'}" in err
    written = sorted(out.glob("*.jsonl"))
    assert len(written) == len(histories)
    for path in written:
        for line in path.read_text("utf-8").splitlines():
            PolymarketEvent.model_validate_json(line)


def test_the_labelled_plot_of_real_histories(results: list[ReplayResult], tmp_path: Path) -> None:
    """A real figure, checked by its artists (not its pixels): titles, a date axis on every
    panel, fitted y-ranges, one mark per drawn label, rings on scored events, the legend."""
    pytest.importorskip("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import ConciseDateFormatter

    from polymarket_kafka.replay.plot import build_figure, plot_replays
    from polymarket_kafka.replay.plotdata import STYLES, style_of

    names = [
        "pres2024-trump-national-hourly",
        "fed-sep2024-cut50-hourly",
        "tiktok-ban-before-may2025-hourly",
    ]
    chosen = [next(r for r in results if r.series.name == name) for name in names]
    keys = [series_key(r.series.source, REAL) or "" for r in chosen]
    facts = [
        SeriesFacts(k, r.series.start, r.series.end, r.series.median_step_seconds, r.event_times())
        for k, r in zip(keys, chosen, strict=True)
    ]
    card = score(read_labels(REAL / "labels.csv"), facts)
    figure = build_figure(chosen, card, keys)
    FigureCanvasAgg(figure).draw()  # type: ignore[no-untyped-call]  # tick labels exist once drawn

    charts = [ax for ax in figure.axes if ax.get_gid() == "chart"]
    assert len(charts) == len(chosen)
    assert sum(ax.get_gid() == "scale" for ax in figure.axes) == len(chosen)
    for ax, result, key in zip(charts, chosen, keys, strict=True):
        question = json.loads((REAL / f"{key}.market.json").read_text("utf-8"))["question"]
        title = ax.get_title(loc="left")
        assert title.startswith(question)
        assert key in title.splitlines()[-1]

        assert isinstance(ax.xaxis.get_major_formatter(), ConciseDateFormatter)
        ticks = [t.get_text() for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
        assert len(ticks) >= 3, (key, ticks)  # every panel has its own date axis

        prices = [p.price for p in result.series.points]
        bottom, top = ax.get_ylim()
        assert 0.0 <= bottom <= min(prices) and max(prices) <= top <= 1.0
        assert top - bottom < 0.9  # fitted to the data, not the whole 0-1 scale

        rows = [row for row in card.rows if row.series == key and row.outcome != "outside"]
        assert rows
        gids = [artist.get_gid() or "" for artist in ax.get_children()]
        assert sorted(g for g in gids if g.startswith("label ")) == sorted(
            f"label {row.label.label_id}" for row in rows
        )
        assert sum(g.startswith("id ") for g in gids) == len(rows)
        ringed = {
            row.label.label_id
            for row in rows
            if row.events and row.outcome in ("hit", "false alarm")
        }
        assert {g.removeprefix("ring ") for g in gids if g.startswith("ring ")} == ringed

    (legend,) = figure.legends
    entries = {text.get_text() for text in legend.get_texts()}
    used = {style_of(row) for row in card.rows if style_of(row) is not None}
    assert "hit" in used  # and no false alarm is left on the real data (detection v2)
    assert {STYLES[style].legend for style in used if style is not None} <= entries
    assert "YES price" in entries

    png = plot_replays(chosen, tmp_path / "labelled.png", card, keys)
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
