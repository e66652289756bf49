"""`StateTail` against a scripted fake consumer and fake fences (no broker): what it keeps
of each record (latest per market, tombstones delete, fences skipped), read errors, the
metadata retry, and `catch_up` waiting for the fence. The real tail (Tansu) is in
tests/component/test_group_kafka.py."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from polymarket_kafka.config import KafkaConfig
from polymarket_kafka.kafka import state_tail as tail_module
from polymarket_kafka.kafka.state_tail import StateTail
from polymarket_kafka.kafka.state_topic import FENCE_PREFIX, StateTopicError

CONFIG = KafkaConfig(
    bootstrap_servers="fake:9092", topic_prefix="t.", state_topic="state", state_partitions=2
)
TOPIC = "t.state"


@dataclass
class Msg:
    partition_: int
    offset_: int
    key_: bytes | None
    value_: bytes | None
    error_: KafkaError | None = None

    def error(self) -> KafkaError | None:
        return self.error_

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def key(self) -> bytes | None:
        return self.key_

    def value(self) -> bytes | None:
        return self.value_


@dataclass
class FakeTopic:
    partitions: dict[int, object]
    error: object = None


@dataclass
class FakeMetadata:
    topics: dict[str, FakeTopic]


@dataclass
class FakeConsumer:
    conf: dict[str, Any]
    #: Each `list_topics` call takes the next: an exception to raise, or a partition count
    #: (0: the topic is missing).
    metadata: list[BaseException | int] = field(default_factory=lambda: [2])
    batches: list[list[Msg]] = field(default_factory=list)
    assigned: list[tuple[str, int, int]] = field(default_factory=list)
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def list_topics(self, topic: str, timeout: float) -> FakeMetadata:
        answer = self.metadata.pop(0) if len(self.metadata) > 1 else self.metadata[0]
        if isinstance(answer, BaseException):
            raise answer
        if not answer:
            return FakeMetadata({})
        return FakeMetadata({topic: FakeTopic(dict.fromkeys(range(answer)))})

    def assign(self, partitions: Sequence[Any]) -> None:
        self.assigned = [(p.topic, p.partition, p.offset) for p in partitions]

    def consume(self, num_messages: int, timeout: float) -> list[Msg]:
        with self.lock:
            if self.batches:
                return self.batches.pop(0)
        time.sleep(0.005)
        return []

    def feed(self, *messages: Msg) -> None:
        with self.lock:
            self.batches.append(list(messages))

    def close(self) -> None:
        self.closed = True


class Tail:
    """A `StateTail` on a fake consumer, run in a thread until `stop`."""

    def __init__(self, consumer: FakeConsumer) -> None:
        self.consumer = consumer

        def factory(conf: dict[str, Any]) -> Any:
            consumer.conf = conf
            return consumer

        self.tail = StateTail(CONFIG, consumer_factory=factory)
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        try:
            self.tail.run()
        except BaseException as exc:  # reported to the test
            self.errors.append(exc)

    def __enter__(self) -> StateTail:
        self.thread.start()
        return self.tail

    def __exit__(self, *exc_info: object) -> None:
        self.tail.stop()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()
        assert not self.errors


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


@dataclass
class Fences:
    """Fake `write_fences` / `delete_fences`: each fence at the next offset of its partition
    (`ends`), recorded."""

    ends: dict[int, int] = field(default_factory=dict)
    written: list[dict[int, int]] = field(default_factory=list)
    deleted: list[dict[int, int]] = field(default_factory=list)

    def write(
        self, producer: object, topic: str, partitions: Sequence[int], run: str, deadline: float
    ) -> dict[int, int]:
        assert topic == TOPIC
        fences = {p: self.ends.get(p, 0) for p in partitions}
        self.written.append(fences)
        return fences

    def delete(self, producer: object, topic: str, fences: dict[int, int], run: str) -> None:
        self.deleted.append(dict(fences))


@pytest.fixture
def fences(monkeypatch: pytest.MonkeyPatch) -> Fences:
    fake = Fences()
    monkeypatch.setattr(tail_module, "fence_producer", lambda config: object())
    monkeypatch.setattr(tail_module, "write_fences", fake.write)
    monkeypatch.setattr(tail_module, "delete_fences", fake.delete)
    return fake


def test_the_tail_keeps_the_latest_record_of_each_market(fences: Fences) -> None:
    consumer = FakeConsumer({})
    with Tail(consumer) as tail:
        wait_for(lambda: consumer.assigned)
        assert consumer.assigned == [(TOPIC, 0, -2), (TOPIC, 1, -2)]  # from the beginning
        assert consumer.conf["isolation.level"] == "read_committed"
        assert consumer.conf["group.id"].startswith("polymarket-kafka-standby-")
        consumer.feed(
            Msg(0, 0, b"0xa", b"a1"),
            Msg(0, 1, b"0xb", b"b1"),
            Msg(1, 0, b"0xc", b"c1"),
            Msg(0, 2, b"0xa", b"a2"),
            Msg(1, 1, FENCE_PREFIX + b"run:1", b""),  # a fence: read, not kept
            Msg(0, 3, b"0xb", None),  # tombstone
            Msg(1, 2, None, b"keyless"),  # no key: skipped
        )
        wait_for(lambda: tail.records_read == 7)
        assert tail.markets() == 2
        fences.ends = {0: 3, 1: 2}  # everything above is before the fences
        assert tail.catch_up([0, 1], timeout=1) == {"0xa": b"a2", "0xc": b"c1"}
        assert tail.catch_up([1], timeout=1) == {"0xc": b"c1"}
        assert fences.deleted == fences.written == [{0: 3, 1: 2}, {1: 2}]
    assert consumer.closed


def test_catch_up_waits_for_the_tail_to_read_past_its_fence(fences: Fences) -> None:
    consumer = FakeConsumer({})
    with Tail(consumer) as tail:
        wait_for(lambda: consumer.assigned)
        fences.ends = {0: 1}
        result: list[dict[str, bytes]] = []
        catching = threading.Thread(target=lambda: result.append(tail.catch_up([0], 5)))
        catching.start()
        time.sleep(0.1)
        assert result == []  # the fence (offset 1) is not read yet
        consumer.feed(Msg(0, 0, b"0xa", b"a1"))
        time.sleep(0.1)
        assert result == []  # offset 0 read: the fence at 1 still ahead
        consumer.feed(Msg(0, 1, FENCE_PREFIX + b"x:0", b""))
        catching.join(timeout=5)
        assert result == [{"0xa": b"a1"}]


def test_catch_up_of_nothing_writes_no_fence(fences: Fences) -> None:
    tail = StateTail(CONFIG, consumer_factory=lambda conf: FakeConsumer(conf))  # type: ignore[arg-type,return-value]
    assert tail.catch_up([], timeout=0.1) == {}
    assert fences.written == []


def test_a_read_error_is_named_when_the_catch_up_times_out(
    fences: Fences, caplog: pytest.LogCaptureFixture
) -> None:
    consumer = FakeConsumer({})
    with Tail(consumer) as tail:
        wait_for(lambda: consumer.assigned)
        consumer.feed(
            Msg(0, 0, None, None, KafkaError(KafkaError._PARTITION_EOF)),  # ignored
            Msg(0, 0, None, None, KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "denied")),
        )
        wait_for(lambda: "standby: reading the state topic" in caplog.text)
        fences.ends = {0: 0}
        with pytest.raises(StateTopicError) as caught:
            tail.catch_up([0], timeout=0.2)
    message = str(caught.value)
    assert message.startswith(
        f"the standby did not read partitions [0] of {TOPIC} to their end within 0.2s ("
    )
    assert "denied" in message
    assert fences.deleted == []  # given up: the fence stays (skipped by every reader)


def test_the_topic_metadata_is_retried_until_it_comes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "polymarket_kafka")
    consumer = FakeConsumer({}, metadata=[KafkaException(KafkaError(KafkaError._TRANSPORT)), 0, 2])
    with Tail(consumer):
        wait_for(lambda: consumer.assigned, timeout=10)  # after 0.5 s + 1 s of backoff
    assert "standby: cannot read the state topic yet" in caplog.text


def test_a_tail_stopped_before_the_topic_exists_returns(fences: Fences) -> None:
    consumer = FakeConsumer({}, metadata=[0])
    with Tail(consumer) as tail:
        time.sleep(0.05)
    assert consumer.assigned == []
    assert consumer.closed
    assert tail.markets() == 0
