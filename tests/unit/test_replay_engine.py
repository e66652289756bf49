"""Replaying a series through the production detector, the summary, and the plot."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from polymarket_kafka.detection import Detector
from polymarket_kafka.events import build_event
from polymarket_kafka.models import ConvictionDirection, PolymarketEvent
from polymarket_kafka.replay.engine import ReplayResult, replay, snapshots
from polymarket_kafka.replay.history import PricePoint, PriceSeries, ReplayMarket
from polymarket_kafka.replay.plot import PlotUnavailableError, plot_replays
from polymarket_kafka.replay.summary import format_duration, format_summary
from polymarket_kafka.ruleset import load_rules_text
from tests.factories import REPLAY_RULES_YAML

T0 = datetime(2024, 11, 6, tzinfo=UTC)
RULES = load_rules_text(REPLAY_RULES_YAML, "engine-rules.yaml")
MARKET = ReplayMarket(
    market_id="0xabc", question="Q?", category="Politics", liquidity=5000.0, source="m.json"
)


def _series(*prices: float, step: timedelta = timedelta(hours=1), name: str = "s") -> PriceSeries:
    points = tuple(PricePoint(T0 + i * step, price) for i, price in enumerate(prices))
    return PriceSeries(name=name, source=f"{name}.history.json", points=points)


def test_replay_emits_what_the_service_detector_emits() -> None:
    series = _series(0.40, 0.41, 0.52, 0.53, 0.53, 0.40, 0.41)
    result = replay(series, MARKET, RULES)
    detector = Detector()
    expected = [
        build_event(change)
        for snapshot in snapshots(series, MARKET)
        for change in detector.observe(snapshot, RULES, now=snapshot.taken_at)
    ]
    assert list(result.events) == expected
    assert [(e.timestamp, e.direction) for e in result.events] == [
        (T0 + timedelta(hours=3), ConvictionDirection.TOWARD_YES),
        (T0 + timedelta(hours=6), ConvictionDirection.TOWARD_NO),
    ]
    first = result.events[0]
    assert (first.baseline_yes_price, first.yes_price, first.severity) == (0.40, 0.53, "major")
    assert (first.market_id, first.question, first.liquidity) == ("0xabc", "Q?", 5000.0)
    assert first.rules_version == RULES.version
    assert first.rule_id is not None


def test_replay_is_deterministic_and_never_closes_the_market() -> None:
    series = _series(0.40, 0.60, 0.60, 0.60)
    first, second = replay(series, MARKET, RULES), replay(series, MARKET, RULES)
    assert [e.event_id for e in first.events] == [e.event_id for e in second.events]
    assert len(first.events) == 1
    assert not any(e.final for e in first.events)


def test_old_points_are_judged_at_their_own_time_not_as_stale() -> None:
    # Two-year-old data with max_data_age 5m: `now` is each snapshot's own time.
    series = _series(0.40, 0.60, 0.60, step=timedelta(days=1))
    assert len(replay(series, MARKET, RULES).events) == 1


def test_the_json_form_is_the_kafka_value() -> None:
    (event,) = replay(_series(0.40, 0.60, 0.60), MARKET, RULES).events
    line = event.to_kafka_value().decode("utf-8")
    assert PolymarketEvent.model_validate(json.loads(line)) == event


def test_detector_counters_are_reported() -> None:
    thin = ReplayMarket(market_id="0xthin", liquidity=10.0)
    result = replay(_series(0.40, 0.60, 0.60), thin, RULES)
    assert result.events == ()
    assert result.detector_stats["unwatched"] == 3
    glitchy = replay(_series(0.40, 0.60, 0.40, 0.40), MARKET, RULES)
    assert glitchy.events == ()
    assert glitchy.detector_stats["glitches"] == 1


# --- summary -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (59.6, "1m"),
        (90, "1m30s"),
        (3600, "1h"),
        (86400 + 61, "1d1m1s"),
        (3 * 86400, "3.0d"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_summary_counts_events_per_rule_severity_direction_and_market_day() -> None:
    series = PriceSeries(
        name="trump",
        source="trump.history.json",
        points=_series(0.40, 0.41, 0.52, 0.53, 0.53, 0.40, 0.41, 0.41, 0.41).points,
        duplicates_dropped=2,
        reordered=True,
    )
    result = replay(series, MARKET, RULES)
    lonely = ReplayMarket(market_id="lonely", defaults=("market_id", "question"))
    quiet = replay(_series(0.5, name="lonely"), lonely, RULES)
    text = format_summary([result, quiet], "rules engine-rules.yaml")
    assert text.splitlines() == [
        "replay: rules engine-rules.yaml",
        "trump: market 0xabc",
        "  points 9 from 2024-11-06 00:00Z to 2024-11-06 08:00Z (8h; step 1h; "
        "2 duplicate timestamps dropped (last kept); points sorted by time)",
        "  events 2 (6.00/market-day): conviction_move 2; severity major 2; "
        "toward_no 1, toward_yes 1",
        "  metadata: m.json",
        "lonely: market lonely",
        "  points 1 from 2024-11-06 00:00Z to 2024-11-06 00:00Z (0s)",
        "  events 0 (n/a per market-day)",
        "  metadata: no market file; not known, defaults used: market_id, question",
        "total: 2 series, 10 points, 2 events over 0.3 market-days (6.00/market-day); "
        "severity major 2",
    ]


def test_summary_reports_what_the_detector_dropped() -> None:
    result = replay(_series(0.40, 0.60, 0.40, 0.40), MARKET, RULES)
    assert "  detector dropped: glitches 1" in format_summary([result], "r").splitlines()


# --- plot ----------------------------------------------------------------------------------


def _two_results() -> list[ReplayResult]:
    return [
        replay(_series(0.40, 0.60, 0.60, 0.30, 0.30, name="a"), MARKET, RULES),
        replay(_series(0.5, 0.5, name="b"), MARKET, RULES),
    ]


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    target = plot_replays(_two_results(), tmp_path / "replay.png")
    assert target.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_plot_without_matplotlib_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(PlotUnavailableError, match=r"install polymarket-kafka\[plot\]"):
        plot_replays(_two_results(), tmp_path / "replay.png")
    assert not (tmp_path / "replay.png").exists()
