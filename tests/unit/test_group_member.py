"""`GroupMember`'s callbacks against a scripted fake consumer (no broker): what each kind of
rebalance does to the consumer, the hand-over to the loop and the wait for `handled`, the
handling timeout, a stop while waiting, and a failing close. The real group (Tansu) is in
tests/component/test_group_kafka.py."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import anyio
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from polymarket_kafka.config import KafkaConfig
from polymarket_kafka.kafka import group as group_module
from polymarket_kafka.kafka.group import GroupMember, Rebalance, open_group_member
from polymarket_kafka.kafka.state_topic import StateTopicError

CONFIG = KafkaConfig(
    bootstrap_servers="fake:9092",
    topic_prefix="t.",
    state_topic="state",
    state_partitions=3,
    group_id="markets",
    group_session_timeout_ms=1000,
)
TOPIC = "t.state"

Callback = Callable[[Any, list[TopicPartition]], None]


@dataclass
class FakeTopic:
    partitions: dict[int, object]
    error: object = None


@dataclass
class FakeMetadata:
    topics: dict[str, FakeTopic]


class FakeMessage:
    def __init__(self, error: KafkaError) -> None:
        self._error = error

    def error(self) -> KafkaError:
        return self._error


@dataclass
class FakeConsumer:
    """Records every call; `script` is what each `poll` does (one step per poll, then
    nothing), e.g. call the assign callback."""

    conf: dict[str, Any]
    partitions: int = 3
    metadata_missing: int = 0
    close_error: BaseException | None = None
    calls: list[tuple[str, object]] = field(default_factory=list)
    script: list[Callable[[FakeConsumer], object]] = field(default_factory=list)
    callbacks: dict[str, Callback] = field(default_factory=dict)
    polled: threading.Event = field(default_factory=threading.Event)

    def list_topics(self, topic: str, timeout: float) -> FakeMetadata:
        self.calls.append(("list_topics", topic))
        if self.metadata_missing:
            self.metadata_missing -= 1
            return FakeMetadata({})
        return FakeMetadata({topic: FakeTopic(dict.fromkeys(range(self.partitions)))})

    def subscribe(
        self, topics: list[str], *, on_assign: Callback, on_revoke: Callback, on_lost: Callback
    ) -> None:
        self.calls.append(("subscribe", tuple(topics)))
        self.callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}

    def poll(self, timeout: float) -> object:
        self.polled.set()
        if self.script:
            return self.script.pop(0)(self)
        time.sleep(0.005)
        return None

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("incremental_assign", numbers(partitions)))

    def incremental_unassign(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("incremental_unassign", numbers(partitions)))

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("pause", numbers(partitions)))

    def close(self) -> None:
        self.calls.append(("close", None))
        if self.close_error is not None:
            raise self.close_error


def numbers(partitions: list[TopicPartition]) -> tuple[int, ...]:
    return tuple(sorted(p.partition for p in partitions))


def tps(*partitions: int, topic: str = TOPIC) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in partitions]


def fire(kind: str, *partitions: int, topic: str = TOPIC) -> Callable[[FakeConsumer], None]:
    def step(consumer: FakeConsumer) -> None:
        consumer.callbacks[kind](consumer, tps(*partitions, topic=topic))

    return step


@dataclass
class Loop:
    """The event loop's side: takes each rebalance, handles it at once unless `hold`."""

    consumer: FakeConsumer | None = None
    rebalances: list[Rebalance] = field(default_factory=list)
    #: The consumer's calls at the moment each rebalance was handed over.
    calls_then: list[list[tuple[str, object]]] = field(default_factory=list)
    hold: bool = False
    #: Kinds held (not handled) even when `hold` is False.
    hold_kinds: set[str] = field(default_factory=set)
    accept: bool = True

    def hand_over(self, rebalance: Rebalance) -> bool:
        self.rebalances.append(rebalance)
        assert self.consumer is not None
        self.calls_then.append(list(self.consumer.calls))
        if not self.hold and rebalance.kind not in self.hold_kinds:
            rebalance.handled.set()
        return self.accept


@pytest.fixture(autouse=True)
def _state_topic_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(group_module, "ensure_state_topic", lambda config, timeout: False)


def member_with(
    consumer: FakeConsumer, loop: Loop, **options: Any
) -> tuple[GroupMember, threading.Thread]:
    loop.consumer = consumer

    def factory(conf: dict[str, Any]) -> Any:
        consumer.conf = conf
        return consumer

    member = GroupMember(CONFIG, loop.hand_over, instance="i", consumer_factory=factory, **options)
    thread = threading.Thread(target=member.run)
    return member, thread


def run_script(consumer: FakeConsumer, loop: Loop, **options: Any) -> GroupMember:
    """Run the member until its script is played, then stop it."""
    member, thread = member_with(consumer, loop, **options)
    thread.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        consumer.script or ("subscribe", (TOPIC,)) not in consumer.calls
    ):
        time.sleep(0.005)
    time.sleep(0.05)
    member.stop()
    thread.join(timeout=10)
    assert not thread.is_alive()
    return member


def test_the_consumer_joins_with_the_groups_settings() -> None:
    consumer = FakeConsumer({})
    run_script(consumer, Loop())
    assert consumer.conf["group.id"] == "markets"
    assert consumer.conf["partition.assignment.strategy"] == "cooperative-sticky"
    assert consumer.conf["session.timeout.ms"] == 1000
    assert consumer.conf["heartbeat.interval.ms"] == 200
    assert consumer.conf["client.id"] == "polymarket-kafka-producer.i"
    assert "logger" in consumer.conf
    assert consumer.calls[0] == ("list_topics", TOPIC)
    assert consumer.calls[1] == ("subscribe", (TOPIC,))
    assert consumer.calls[-1] == ("close", None)


def test_an_assignment_is_paused_and_handed_over() -> None:
    consumer = FakeConsumer({}, script=[fire("assign", 0, 2)])
    loop = Loop()
    member = run_script(consumer, loop)
    (rebalance,) = loop.rebalances
    assert (rebalance.kind, rebalance.partitions) == ("assigned", frozenset({0, 2}))
    # Assigned and paused (nothing is ever read) before the loop hears of it.
    assert loop.calls_then[0][-2:] == [("incremental_assign", (0, 2)), ("pause", (0, 2))]
    assert member.assigned == {0, 2}


@pytest.mark.parametrize(("callback", "kind"), [("revoke", "revoked"), ("lost", "lost")])
def test_partitions_going_are_handed_over_before_they_are_unassigned(
    callback: str, kind: str
) -> None:
    consumer = FakeConsumer({}, script=[fire("assign", 0, 1, 2), fire(callback, 1)])
    loop = Loop()
    member = run_script(consumer, loop)
    assert [(r.kind, r.partitions) for r in loop.rebalances] == [
        ("assigned", frozenset({0, 1, 2})),
        (kind, frozenset({1})),
    ]
    # The loop acted on it while the partition was still assigned.
    assert ("incremental_unassign", (1,)) not in loop.calls_then[1]
    assert ("incremental_unassign", (1,)) in consumer.calls
    assert member.assigned == {0, 2}


def test_an_empty_assignment_is_handed_over_as_joining_and_another_topic_ignored() -> None:
    """An empty assignment (more instances than partitions) tells the loop the instance
    joined; partitions of another topic are not this group's business."""
    consumer = FakeConsumer(
        {}, script=[fire("assign"), fire("assign", 1, topic="other"), fire("revoke")]
    )
    loop = Loop()
    member = run_script(consumer, loop)
    assert [(r.kind, r.partitions) for r in loop.rebalances] == [
        ("assigned", frozenset()),
        ("assigned", frozenset()),
    ]
    assert ("incremental_assign", ()) in consumer.calls
    assert ("pause", ()) not in consumer.calls  # nothing to pause
    assert member.assigned == frozenset()


def test_the_callback_waits_until_the_loop_has_handled_it() -> None:
    consumer = FakeConsumer({}, script=[fire("assign", 0)])
    loop = Loop(hold=True)
    member, thread = member_with(consumer, loop, handling_timeout=30.0)
    thread.start()
    deadline = time.monotonic() + 10
    while not loop.rebalances and time.monotonic() < deadline:
        time.sleep(0.005)
    (rebalance,) = loop.rebalances
    consumer.polled.clear()
    time.sleep(0.3)
    assert not consumer.polled.is_set()  # still inside the callback
    rebalance.handled.set()
    assert consumer.polled.wait(5)  # back to polling
    member.stop()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_a_rebalance_not_handled_in_time_goes_on_with_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = FakeConsumer({}, script=[fire("assign", 0), fire("revoke", 0)])
    loop = Loop(hold=True)
    member, thread = member_with(consumer, loop, handling_timeout=0.3)
    thread.start()

    def errors() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]

    deadline = time.monotonic() + 10
    while len(errors()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    member.stop()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert [r.kind for r in loop.rebalances] == ["assigned", "revoked"]
    assert errors() == [
        "partitions [0] assigned but not handled within 0.3s: the rebalance goes on "
        "(fencing keeps them safe)",
        "partitions [0] revoked but not handled within 0.3s: the rebalance goes on "
        "(fencing keeps them safe)",
    ]
    # It went on: the revoked partition was unassigned after the timeout.
    assert ("incremental_unassign", (0,)) in consumer.calls


@pytest.mark.parametrize(("callback", "kind"), [("assign", "assigned"), ("revoke", "revoked"),
                                                 ("lost", "lost")])  # fmt: skip
def test_a_stop_releases_a_rebalance_waiting_for_the_loop(callback: str, kind: str) -> None:
    """Stopping, the publishers have closed already and nothing handles rebalances: the
    callback does not wait for the handling timeout (60 s here)."""
    script: list[Callable[[FakeConsumer], object]] = [fire("assign", 1)]
    if callback != "assign":
        script.append(fire(callback, 1))
    consumer = FakeConsumer({}, script=script)
    loop = Loop(hold_kinds={kind})
    member, thread = member_with(consumer, loop, handling_timeout=60.0)
    thread.start()
    deadline = time.monotonic() + 10
    while len(loop.rebalances) < len(script) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert [r.kind for r in loop.rebalances][-1] == kind
    started = time.monotonic()
    member.stop()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert time.monotonic() - started < 5
    assert not loop.rebalances[-1].handled.is_set()


def test_a_hand_over_nobody_takes_is_not_waited_for() -> None:
    consumer = FakeConsumer({}, script=[fire("assign", 0), fire("revoke", 0)])
    loop = Loop(hold=True, accept=False)  # the loop is gone
    started = time.monotonic()
    member = run_script(consumer, loop, handling_timeout=60.0)
    assert time.monotonic() - started < 10
    assert len(loop.rebalances) == 2
    assert member.assigned == frozenset()


def test_consumer_errors_are_logged_and_polling_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    error = FakeMessage(KafkaError(KafkaError._TRANSPORT, "coordinator went away"))
    consumer = FakeConsumer({}, script=[lambda c: error, fire("assign", 2)])
    loop = Loop()
    run_script(consumer, loop)
    assert [r.kind for r in loop.rebalances] == ["assigned"]
    assert any(
        r.levelno == logging.WARNING and "Kafka consumer group markets: " in r.getMessage()
        for r in caplog.records
    )


def test_a_failing_close_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    consumer = FakeConsumer({}, close_error=KafkaException(KafkaError(KafkaError._TRANSPORT)))
    run_script(consumer, Loop())
    assert any("leaving the consumer group failed" in r.getMessage() for r in caplog.records)


def test_the_topic_is_looked_up_again_until_its_metadata_comes() -> None:
    consumer = FakeConsumer({}, metadata_missing=1)
    run_script(consumer, Loop())
    assert [c for c in consumer.calls if c[0] == "list_topics"] == [("list_topics", TOPIC)] * 2
    assert ("subscribe", (TOPIC,)) in consumer.calls


def test_another_partition_count_stops_the_member_with_a_clear_error() -> None:
    consumer = FakeConsumer({}, partitions=5)
    member, _ = member_with(consumer, Loop())
    with pytest.raises(StateTopicError, match="has 5 partitions but KAFKA_STATE_PARTITIONS is 3"):
        member.run()
    assert ("subscribe", (TOPIC,)) not in consumer.calls
    assert consumer.calls[-1] == ("close", None)


async def test_no_rebalance_is_dropped_while_the_loop_is_stuck_on_one(
    monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    """The loop is stuck on the first rebalance past the handling timeout while the group
    fires six more: every one still reaches the loop, in order (a dropped one would leave
    partitions served by no one, or by two)."""
    monkeypatch.setattr(group_module, "ensure_state_topic", lambda config, timeout: False)
    script = [fire("assign", 0)] + [fire("revoke", 0), fire("assign", 0)] * 3
    consumer = FakeConsumer({}, script=list(script))
    got: list[tuple[str, list[int]]] = []
    async with open_group_member(
        CONFIG, "i", consumer_factory=lambda conf: cast("Consumer", consumer), handling_timeout=0.05
    ) as (_, rebalances):
        first = await rebalances.receive()
        with anyio.fail_after(10):
            while consumer.script:  # noqa: ASYNC110 (the member's thread works through it)
                await anyio.sleep(0.02)
        first.handled.set()
        got.append((first.kind, sorted(first.partitions)))
        with anyio.fail_after(10):
            while len(got) < len(script):
                rebalance = await rebalances.receive()
                rebalance.handled.set()
                got.append((rebalance.kind, sorted(rebalance.partitions)))
    assert got == [("assigned", [0])] + [("revoked", [0]), ("assigned", [0])] * 3
