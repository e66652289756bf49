"""Judging Kafka connectivity from librdkafka statistics.

The `tests/data/librdkafka-stats-tansu-*.json` documents were captured from an idempotent
confluent-kafka producer against a Tansu broker: while connecting, connected (after producing
one message), and a few seconds after the broker was stopped.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polymarket_kafka.kafka_health import (
    BrokerStatus,
    KafkaStatistics,
    evaluate,
    parse_statistics,
)

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
