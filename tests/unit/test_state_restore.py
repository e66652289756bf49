"""`app.StateRestore`: the restore of the state topic at start and its readiness component."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime

import anyio
import pytest

from polymarket_kafka import app, detector_state
from polymarket_kafka.config import AppConfig, KafkaConfig
from polymarket_kafka.detection import Detector
from polymarket_kafka.detector_state import ClosedMarket, MarketState, encode
from polymarket_kafka.kafka.state_topic import StateTopicError
from polymarket_kafka.models import MarketSnapshot
from polymarket_kafka.ops.health import ServiceHealth
from tests.factories import FixedRules

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


def v1_record(market_id: str | None, version: int = 1) -> bytes:
    """A record as detection v1 wrote it (`market_id` None: a record that names none)."""
    document: dict[str, object] = {
        "v": version,
        "market_id": market_id,
        "state_key": "k",
        "snapshot": {
            "market_id": market_id,
            "question": "Q?",
            "yes_price": 0.5,
            "taken_at": "2024-11-05T23:00:00Z",
        },
        "t0": 1_730_847_600_000_000,
        "dt": [],
        "p": [0.5],
        "cooldown_until": None,
        "pending": None,
        "last_event": None,
    }
    if market_id is None:
        del document["market_id"]
    return json.dumps(document).encode()


def current_state(market_id: str) -> MarketState:
    detector = Detector()
    taken_at = datetime(2024, 11, 5, 23, tzinfo=UTC)
    snapshot = MarketSnapshot(market_id=market_id, question="Q?", yes_price=0.5, taken_at=taken_at)
    detector.observe(snapshot, FixedRules(), taken_at)
    state = detector.export_state(market_id)
    assert isinstance(state, MarketState)
    return state


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str | None]]:
    """(message, market id if the line names one) of every warning of `app`."""
    return [
        (record.getMessage(), getattr(record, "market_id", None))
        for record in caplog.records
        if record.name == app.logger.name and record.levelno == logging.WARNING
    ]


async def restore_from(
    records: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> list[MarketState | ClosedMarket]:
    monkeypatch.setattr(app, "ensure_state_topic", lambda config: False)
    monkeypatch.setattr(app, "read_state", lambda config: records)
    return await app.restore_states(CONFIG)


async def test_records_of_an_earlier_detector_are_counted_in_one_line(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # An upgrade meets every record of the old format: one line says how many, not one per
    # market; a record that cannot be read for another reason still has its own line.
    caplog.set_level(logging.INFO, logger=app.logger.name)
    states = await restore_from(
        {
            "0xold1": v1_record("0xold1"),
            "0xold2": v1_record("0xold2"),
            "0xbad": b"{not json",
            "0xold3": v1_record("0xold3"),
            "0xnoid": v1_record(None),  # names no market: an ordinary unreadable record
            "0xnew": encode(current_state("0xnew")),
            "0xshut": encode(ClosedMarket("0xshut")),
        },
        monkeypatch,
    )
    assert states == [current_state("0xnew"), ClosedMarket("0xshut")]  # not the old ones
    assert warnings_of(caplog) == [
        (
            "state of market 0xbad in p.state not restored, it starts afresh: not a JSON "
            "state record: Expecting property name enclosed in double quotes: line 1 column 2 "
            "(char 1)",
            "0xbad",
        ),
        (
            "state of market 0xnoid in p.state not restored, it starts afresh: state record "
            "without market_id",
            "0xnoid",
        ),
        (
            "3 markets in p.state have detector state of format version 1 (an earlier "
            "detector); they start afresh",
            None,
        ),
    ]


async def test_each_earlier_format_has_its_own_line(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # As a service two formats on would read a topic both earlier ones wrote to.
    monkeypatch.setattr(detector_state, "OUTDATED_VERSIONS", frozenset({0, 1}))
    caplog.set_level(logging.INFO, logger=app.logger.name)
    records = {f"0xv1-{n}": v1_record(f"0xv1-{n}") for n in range(3)}
    records |= {f"0xv0-{n}": v1_record(f"0xv0-{n}", version=0) for n in range(2)}
    assert await restore_from(records, monkeypatch) == []
    assert [message for message, _ in warnings_of(caplog)] == [
        "2 markets in p.state have detector state of format version 0 (an earlier "
        "detector); they start afresh",
        "3 markets in p.state have detector state of format version 1 (an earlier "
        "detector); they start afresh",
    ]
