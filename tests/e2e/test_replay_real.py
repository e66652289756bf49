"""Replay of the shared, real Polymarket histories under rules/default.yaml.

Structural assertions only (the rules are tuned over time; exact counts are not a contract):
every file loads, events are valid Kafka values in time order, the labelled moves are found
and the detector is not noisy. Skipped when `shared/data/real` is not beside the repository.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polymarket_kafka.cli import main
from polymarket_kafka.models import PolymarketEvent
from polymarket_kafka.replay.engine import ReplayResult, replay
from polymarket_kafka.replay.history import load_history, market_for
from polymarket_kafka.replay.labels import SeriesFacts, read_labels, score, series_key
from polymarket_kafka.ruleset import load_rules

ROOT = Path(__file__).resolve().parents[2]
REAL = Path(__file__).parents[2].parent / "shared" / "data" / "real"

pytestmark = [
    pytest.mark.real_data,
    pytest.mark.skipif(not REAL.is_dir(), reason=f"real histories not found at {REAL}"),
]


@pytest.fixture(scope="module")
def results() -> list[ReplayResult]:
    rules = load_rules(ROOT / "rules" / "default.yaml")
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


def test_labelled_moves_are_found_and_the_detector_is_not_noisy(
    results: list[ReplayResult],
) -> None:
    labels = read_labels(REAL / "labels.csv")
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
    card = score(labels, facts)
    assert card.not_replayed == ()  # every series a label names was replayed
    assert {row.label.kind for row in card.rows} >= {"event", "negative", "calm"}
    hits = card.count("hit")
    assert hits >= 3
    assert hits > card.count("false alarm")
    assert card.total_events / card.market_days < 1.0  # well under one event per market-day


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
