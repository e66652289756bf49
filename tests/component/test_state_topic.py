"""The state topic on a real broker (Tansu): created compacted, written, read back to a fence."""

from __future__ import annotations

import logging
import uuid

import pytest
from confluent_kafka import KafkaError
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource  # `admin` re-exports it untyped

from polymarket_kafka import app
from polymarket_kafka.app import restore_states
from polymarket_kafka.config import AppConfig, KafkaConfig
from polymarket_kafka.detector_state import ClosedMarket, encode
from polymarket_kafka.kafka import state_topic
from polymarket_kafka.kafka.state_topic import (
    FENCE_PREFIX,
    StateTopicError,
    StateWriter,
    ensure_state_topic,
    read_state,
)
from polymarket_kafka.testing.local_broker import LocalBroker, read_events

pytestmark = pytest.mark.broker


def state_config(broker: LocalBroker, **overrides: object) -> KafkaConfig:
    fields: dict[str, object] = {
        "bootstrap_servers": broker.bootstrap_servers,
        "topic_prefix": f"t{uuid.uuid4().hex[:8]}.",
        "state_topic": "polymarket-kafka-state",
        "state_partitions": 3,
    }
    fields.update(overrides)
    return KafkaConfig(**fields)  # type: ignore[arg-type]


def test_the_topic_is_created_compacted_once(tansu_broker: LocalBroker) -> None:
    config = state_config(tansu_broker)
    assert ensure_state_topic(config) is True
    assert ensure_state_topic(config) is False  # exists: left as it is
    admin = AdminClient({"bootstrap.servers": tansu_broker.bootstrap_servers})
    resource = ConfigResource(ConfigResource.Type.TOPIC, config.full_state_topic)
    described = admin.describe_configs([resource])[resource].result(timeout=10)
    assert described["cleanup.policy"].value == "compact"


def test_latest_record_per_market_is_read_back_and_tombstones_remove(
    tansu_broker: LocalBroker,
) -> None:
    config = state_config(tansu_broker)
    ensure_state_topic(config)
    assert read_state(config) == {}  # empty: the fences alone
    writer = StateWriter(config)
    try:
        markets = [f"0x{i:064x}" for i in range(50)]
        assert writer.write([(m, b"v1:" + m.encode()) for m in markets], timeout=10) == []
        assert writer.write([(markets[0], b"v2"), (markets[1], None)], timeout=10) == []
    finally:
        writer.close()
    states = read_state(config)
    assert states[markets[0]] == b"v2"
    assert markets[1] not in states
    assert {m: states[m] for m in markets[2:]} == {m: b"v1:" + m.encode() for m in markets[2:]}
    assert len(states) == 49
    # A second read sees the same: earlier fences and their tombstones are skipped.
    assert read_state(config) == states


def test_a_missing_topic_is_a_clear_error(tansu_broker: LocalBroker) -> None:
    config = state_config(tansu_broker)
    with pytest.raises(StateTopicError) as caught:
        read_state(config, timeout=10)
    assert str(caught.value).startswith(f"cannot read the state topic {config.full_state_topic}: ")
    assert "UNKNOWN_TOPIC_OR_PART" in str(caught.value)


def test_an_unreachable_broker_is_a_clear_error_within_the_timeout() -> None:
    config = KafkaConfig(bootstrap_servers="127.0.0.1:1", state_topic="s")
    with pytest.raises(StateTopicError, match=r"^cannot read the state topic s"):
        read_state(config, timeout=1)


@pytest.mark.anyio
async def test_restore_creates_the_topic_and_skips_an_unreadable_record(
    tansu_broker: LocalBroker, caplog: pytest.LogCaptureFixture
) -> None:
    config = AppConfig(kafka=state_config(tansu_broker))
    assert await restore_states(config) == []  # created, empty
    good = encode(ClosedMarket("0xgood"))
    writer = StateWriter(config.kafka)
    try:
        old = b'{"v": 1, "market_id": "0xold"}'  # an earlier detector's record
        records = [("0xgood", good), ("0xbad", b'{"v": 99}'), ("0xold", old)]
        assert writer.write(records, timeout=10) == []
    finally:
        writer.close()
    with caplog.at_level(logging.WARNING, logger="polymarket_kafka.app"):
        assert await restore_states(config) == [ClosedMarket("0xgood")]
    bad, outdated = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    topic = config.kafka.full_state_topic
    assert bad == (
        f"state of market 0xbad in {topic} not restored, it starts "
        "afresh: state format version 99 is not supported (this service reads version 2)"
    )
    assert outdated == (
        f"1 markets in {topic} have detector state of format version 1 (an earlier detector); "
        "they start afresh"
    )


@pytest.mark.anyio
async def test_restore_retries_until_kafka_answers(
    tansu_broker: LocalBroker,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = AppConfig(kafka=state_config(tansu_broker))
    failures = iter([StateTopicError("broker down"), None])

    def flaky(kafka: KafkaConfig) -> bool:
        failure = next(failures)
        if failure is not None:
            raise failure
        return ensure_state_topic(kafka)

    monkeypatch.setattr(app, "ensure_state_topic", flaky)
    monkeypatch.setattr(app, "RESTORE_RETRY_SECONDS", (0.01, 0.02))
    with caplog.at_level(logging.WARNING, logger="polymarket_kafka.app"):
        assert await restore_states(config) == []
    assert [r.getMessage() for r in caplog.records] == [
        "cannot restore detector state (broker down); retrying in 0s"
    ]


def test_creating_on_an_unreachable_broker_is_a_clear_error() -> None:
    config = KafkaConfig(bootstrap_servers="127.0.0.1:1", state_topic="s")
    with pytest.raises(StateTopicError, match=r"^cannot create the state topic s: "):
        ensure_state_topic(config, timeout=1)


def test_a_record_the_producer_refuses_is_returned_as_not_written(
    tansu_broker: LocalBroker, caplog: pytest.LogCaptureFixture
) -> None:
    config = state_config(tansu_broker)
    ensure_state_topic(config)
    writer = StateWriter(config)
    try:
        too_large = b"x" * 6_000_000  # over message.max.bytes (5 MB)
        with caplog.at_level(logging.WARNING, logger="polymarket_kafka.kafka.state_topic"):
            assert writer.write([("0xbig", too_large), ("0xok", b"{}")], timeout=10) == ["0xbig"]
    finally:
        writer.close()
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "state record of 0xbig refused"
    ]
    assert read_state(config) == {"0xok": b"{}"}


class FakeMessage:
    def __init__(self, error: KafkaError | None) -> None:
        self._error = error

    def error(self) -> KafkaError | None:
        return self._error


def test_a_read_error_is_raised_and_a_partition_end_ignored() -> None:
    states: dict[str, bytes] = {}
    eof = FakeMessage(KafkaError(KafkaError._PARTITION_EOF))
    state_topic._take(eof, states, {0: 5})  # type: ignore[arg-type]
    with pytest.raises(StateTopicError, match=r"^reading the state topic failed: "):
        state_topic._take(FakeMessage(KafkaError(KafkaError._TRANSPORT)), states, {})  # type: ignore[arg-type]
    assert states == {}


def test_every_fence_marker_is_deleted_by_a_tombstone_of_its_own_key(
    tansu_broker: LocalBroker,
) -> None:
    """Markers have keys unique to one read: without their own tombstones, compaction would
    keep every restore's markers forever."""
    config = state_config(tansu_broker)
    ensure_state_topic(config)
    read_state(config)
    read_state(config)
    messages = read_events(
        tansu_broker.bootstrap_servers,
        config.full_state_topic,
        expected=4 * config.state_partitions,  # 2 reads x (marker + tombstone) per partition
        timeout=20,
    )
    markers = {m.key for m in messages if m.value is not None}
    tombstones = {m.key for m in messages if m.value is None}
    assert len(markers) == 2 * config.state_partitions
    assert all(key is not None and key.startswith(FENCE_PREFIX) for key in markers)
    assert tombstones == markers
