"""`app.StateRestore`: the restore of the state topic at start and its readiness component."""

from __future__ import annotations

import threading

import anyio
import pytest

from polymarket_kafka import app
from polymarket_kafka.config import AppConfig, KafkaConfig
from polymarket_kafka.detector_state import ClosedMarket, encode
from polymarket_kafka.kafka.state_topic import StateTopicError
from polymarket_kafka.ops.health import ServiceHealth

pytestmark = pytest.mark.anyio

CONFIG = AppConfig(kafka=KafkaConfig(topic_prefix="p.", state_topic="state"))


def state_of(health: ServiceHealth) -> tuple[str, str]:
    component = health.ready(0.0).to_json()["components"]["state"]
    return component["status"], component["detail"]


async def test_readiness_tells_how_the_restore_goes(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    health = ServiceHealth()
    seen: list[tuple[str, str]] = []
    attempts: list[str] = []

    def flaky_read(config: KafkaConfig) -> dict[str, bytes]:
        attempts.append(config.full_state_topic)
        seen.append(state_of(health))
        if len(attempts) == 1:
            raise StateTopicError("no broker answered")
        return {"0xa": encode(ClosedMarket("0xa"))}

    async def first() -> None:
        seen.append(state_of(health))

    # Exactly once: the producer's transactions come first.
    restore = app.StateRestore(CONFIG, health, first=first)
    seen.append(state_of(health))

    monkeypatch.setattr(app, "ensure_state_topic", lambda config: False)
    monkeypatch.setattr(app, "read_state", flaky_read)
    monkeypatch.setattr(app, "RESTORE_RETRY_SECONDS", (0.0, 0.0))
    states = await restore.run()
    assert states == [ClosedMarket("0xa")]
    assert attempts == ["p.state", "p.state"]
    assert seen == [
        ("fail", "waiting for the detector state to be restored"),
        ("fail", "initialising Kafka transactions"),
        ("fail", "restoring detector state from p.state"),
        ("fail", "cannot restore from p.state yet: no broker answered"),
    ]
    assert state_of(health) == ("ok", "1 markets restored from p.state")


async def test_a_stop_during_a_blocked_read_ends_the_restore_at_once(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # librdkafka's read cannot be interrupted; the restore does not wait for it to time out.
    reading, release, returned = threading.Event(), threading.Event(), threading.Event()

    def blocked_read(config: KafkaConfig) -> dict[str, bytes]:
        reading.set()
        release.wait(10)
        returned.set()
        return {}

    monkeypatch.setattr(app, "ensure_state_topic", lambda config: False)
    monkeypatch.setattr(app, "read_state", blocked_read)
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(app.restore_states, CONFIG)
            await anyio.to_thread.run_sync(reading.wait)
            scope.cancel()
    assert scope.cancelled_caught
    assert not returned.is_set()  # the read was still blocked when the restore ended
    release.set()
