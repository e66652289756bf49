"""Judging Kafka connectivity from librdkafka statistics.

The `tests/data/librdkafka-stats-tansu-*.json` documents were captured from an idempotent
confluent-kafka producer against a Tansu broker: while connecting, connected (after producing
one message), and a few seconds after the broker was stopped.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polymarket_kafka.kafka.statistics import (
    BrokerStatus,
    DeliveryBacklog,
    KafkaStatistics,
    StatisticsBridge,
    evaluate,
    kafka_readiness,
    parse_statistics,
)
from polymarket_kafka.ops.health import ComponentStatus

DATA = Path(__file__).resolve().parents[1] / "data"


def captured(name: str) -> str:
    return (DATA / f"librdkafka-stats-tansu-{name}.json").read_text()


def test_tansu_connected_producer() -> None:
    assert parse_statistics(captured("up")) == KafkaStatistics(1, 1, "Assigned")


def test_tansu_producer_still_connecting() -> None:
    assert parse_statistics(captured("connecting")) == KafkaStatistics(0, 1, "WaitTransport")


def test_tansu_broker_gone() -> None:
    # Only the bootstrap entry is left, and the producer id stays "Assigned".
    assert parse_statistics(captured("down")) == KafkaStatistics(0, 1, "Assigned")


def test_internal_and_logical_brokers_are_not_counted() -> None:
    document = {
        "brokers": {
            ":0/internal": {"state": "UP", "source": "internal", "nodeid": -1},
            "GroupCoordinator": {"state": "UP", "source": "logical", "nodeid": 1},
            "kafka-1:9092/1": {"state": "UP", "source": "learned", "nodeid": 1},
            "kafka-2:9092/2": {"state": "DOWN", "source": "learned", "nodeid": 2},
            "old:9092/internal": {"state": "UP"},
            "GroupCoordinator/7": {"state": "UP"},
        }
    }

    assert parse_statistics(json.dumps(document)) == KafkaStatistics(1, 2, None)


def test_a_producer_without_idempotence_reports_no_eos_state() -> None:
    document = {"brokers": {"k:9092/1": {"state": "UP"}}, "eos": {"txn_state": "Init"}}

    assert parse_statistics(json.dumps(document)) == KafkaStatistics(1, 1, None)


def test_no_brokers_at_all() -> None:
    assert parse_statistics('{"name": "rdkafka#producer-1"}') == KafkaStatistics(0, 0, None)


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"brokers": [1]}'])
def test_malformed_statistics_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_statistics(text)


def test_connected_with_a_broker_up_and_a_producer_id() -> None:
    status = evaluate(parse_statistics(captured("up")), age_seconds=0.2, max_age_seconds=15)

    assert status == BrokerStatus(True, "1/1 brokers up")


def test_not_connected_before_any_statistics() -> None:
    status = evaluate(None, age_seconds=0.0, max_age_seconds=15)

    assert not status.connected and "no statistics" in status.detail


def test_not_connected_when_every_broker_is_down() -> None:
    status = evaluate(parse_statistics(captured("down")), age_seconds=0.0, max_age_seconds=15)

    assert status == BrokerStatus(False, "all brokers down (0/1 brokers up)")


def test_not_connected_until_the_producer_id_is_assigned() -> None:
    status = evaluate(KafkaStatistics(1, 1, "WaitPID"), age_seconds=0.0, max_age_seconds=15)

    assert status == BrokerStatus(
        False, "1/1 brokers up, idempotent producer id not assigned (WaitPID)"
    )


def test_not_connected_when_the_statistics_went_stale() -> None:
    fresh = KafkaStatistics(1, 1, "Assigned")

    assert evaluate(fresh, age_seconds=15.0, max_age_seconds=15).connected
    stale = evaluate(fresh, age_seconds=15.5, max_age_seconds=15)
    assert not stale.connected and "15.5s old" in stale.detail


# --- the bridge: statistics of the current producer, on an injected clock ---------------------


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def test_the_bridge_keeps_the_current_producers_statistics_and_ages_them() -> None:
    clock = Clock()
    bridge = StatisticsBridge(2000, monotonic=clock)
    assert bridge.status() == BrokerStatus(False, "no statistics from the Kafka producer yet")
    assert bridge.brokers_up == 0

    report = bridge.receive(0, captured("up"))
    assert (report.generation, report.at) == (0, 500.0)
    bridge.accept(report, generation=0)
    assert bridge.status() == BrokerStatus(True, "1/1 brokers up")
    assert bridge.brokers_up == 1

    clock.now += 6.0  # 3 intervals of 2 s: still fresh
    assert bridge.status().connected
    clock.now += 0.1
    assert bridge.status() == BrokerStatus(
        False, "statistics are 6.1s old (the producer's poll thread stalled?)"
    )


def test_the_bridge_ignores_a_retired_producers_statistics_and_resets() -> None:
    bridge = StatisticsBridge(100, monotonic=Clock())
    # From the old producer: not kept, and the caller is told (it must not judge them either).
    assert not bridge.accept(bridge.receive(0, captured("up")), generation=1)
    assert bridge.status().detail == "no statistics from the Kafka producer yet"
    assert bridge.accept(bridge.receive(1, captured("down")), generation=1)
    assert bridge.status().detail == "all brokers down (0/1 brokers up)"
    bridge.reset()
    assert bridge.status().detail == "no statistics from the Kafka producer yet"


def test_a_short_interval_goes_stale_after_one_second_at_the_earliest() -> None:
    clock = Clock()
    bridge = StatisticsBridge(1, monotonic=clock)
    bridge.accept(bridge.receive(0, captured("up")), generation=0)
    clock.now += 1.0
    assert bridge.status().connected
    clock.now += 0.01
    assert not bridge.status().connected


def test_the_bridge_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="statistics_interval_ms"):
        StatisticsBridge(0)
    with pytest.raises(ValueError, match="statistics"):
        StatisticsBridge(100).receive(0, "[]")


# --- readiness: connected, and nothing pending for too long -----------------------------------

UP = BrokerStatus(True, "1/1 brokers up")
DOWN = BrokerStatus(False, "all brokers down (0/1 brokers up)")


def test_ready_with_nothing_pending() -> None:
    assert kafka_readiness(UP, DeliveryBacklog(0), 30.0) == ComponentStatus(
        True,
        "1/1 brokers up",
        {"pending_events": 0, "oldest_pending_seconds": None, "max_pending_seconds": 30.0},
    )


@pytest.mark.parametrize(
    ("backlog", "ok", "detail"),
    [
        (DeliveryBacklog(1, 0.25), True, "1/1 brokers up; 1 event pending, the oldest for 0.2s"),
        (DeliveryBacklog(3, 30.0), True, "1/1 brokers up; 3 events pending, the oldest for 30.0s"),
        (
            DeliveryBacklog(3, 30.01),
            False,
            "delivery stalled: 3 events pending, the oldest for 30.0s (limit 30s); 1/1 brokers up",
        ),
        (
            DeliveryBacklog(1, 3600.0),
            False,
            "delivery stalled: 1 event pending, the oldest for 3600.0s (limit 30s); 1/1 brokers up",
        ),
    ],
)
def test_a_connected_producer_is_not_ready_once_an_event_pends_too_long(
    backlog: DeliveryBacklog, ok: bool, detail: str
) -> None:
    status = kafka_readiness(UP, backlog, 30.0)
    assert (status.ok, status.detail) == (ok, detail)
    assert status.extra["pending_events"] == backlog.pending
    assert status.extra["oldest_pending_seconds"] == round(backlog.oldest_age_seconds or 0, 3)


def test_a_disconnected_producer_is_not_ready_whatever_its_backlog() -> None:
    assert not kafka_readiness(DOWN, DeliveryBacklog(0), 30.0).ok
    status = kafka_readiness(DOWN, DeliveryBacklog(2, 1.5), 30.0)
    assert (status.ok, status.detail) == (
        False,
        "all brokers down (0/1 brokers up); 2 events pending, the oldest for 1.5s",
    )
