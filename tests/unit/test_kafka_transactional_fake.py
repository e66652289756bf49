"""The transactional publisher against a fake transactional producer that the test controls.

The fake (`FakeKafka` builds the producers, `FakeProducer` is one) records what crossed the
boundary -- begin / produce / commit / abort -- and which transactions were committed; the
test scripts its errors (`KafkaException`s as librdkafka raises them), holds a commit open
(an `anyio.Event` the worker thread waits on) and emits statistics and client errors from
`poll`, as librdkafka does. Nothing here asserts on timing: tests wait (bounded) for a
state, never for a duration. A real broker is in tests/component/test_kafka_transactional.py.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import pytest
from confluent_kafka import KafkaError, KafkaException

from polymarket_kafka.config import KafkaConfig
from polymarket_kafka.kafka.statistics import BrokerStatus, DeliveryBacklog
from polymarket_kafka.kafka.transactional import (
    ProducerFencedError,
    TransactionalPublisher,
    open_transactional_publisher,
)
from polymarket_kafka.kafka.value import stamped_value
from polymarket_kafka.models import PolymarketEvent
from tests import factories

pytestmark = pytest.mark.anyio

T0 = datetime(2024, 11, 6, 1, 0, tzinfo=UTC)
PUBLISHED_AT = datetime(2024, 11, 6, 1, 0, 5, tzinfo=UTC)
CONFIG = KafkaConfig(
    bootstrap_servers="fake:9092",
    topic_prefix="t.",
    state_topic="state",
    transactional_id="tx-test",
)
TOPIC = "t.polymarket-events"
STATE_TOPIC = "t.state"
NAMESPACE = uuid.UUID("9f1d3c2b-8e4a-4b6f-a1c7-2d5e8f0a3b64")
MARKETS = [f"0x{n:064x}" for n in range(1, 9)]
DATA = Path(__file__).resolve().parents[1] / "data"
UP = (DATA / "librdkafka-stats-tansu-up.json").read_text()
CONNECTING = (DATA / "librdkafka-stats-tansu-connecting.json").read_text()


def make_event(n: int) -> PolymarketEvent:
    return factories.make_event(
        event_id=str(uuid.uuid5(NAMESPACE, str(n))),
        timestamp=T0 + timedelta(seconds=n),
        market_id=MARKETS[n % len(MARKETS)],
    )


EVENTS = [make_event(n) for n in range(8)]


def ids(events: list[PolymarketEvent]) -> list[str]:
    return [e.event_id for e in events]


def kafka_error(
    code: int, *, fatal: bool = False, retriable: bool = False, abortable: bool = False
) -> KafkaException:
    """What librdkafka raises from a transactional call."""
    return KafkaException(
        KafkaError(code, "reason", fatal=fatal, retriable=retriable, txn_requires_abort=abortable)
    )


@dataclass(frozen=True)
class Record:
    topic: str
    key: bytes
    value: bytes | None
    headers: list[tuple[str, str | bytes | None]] | None

    @property
    def event_id(self) -> str:
        assert self.headers is not None
        value = dict(self.headers)["event_id"]
        assert isinstance(value, bytes)
        return value.decode()


class FakeKafka:
    """The producer factory, and what its producers share: the committed transactions, the
    scripted errors, the records Kafka refuses and an optional hold on commits."""

    def __init__(self) -> None:
        self.producers: list[FakeProducer] = []
        self.transactions: list[list[Record]] = []  # committed, in commit order
        #: Raised once each, in order, by the named method (of whichever producer calls it).
        self.errors: defaultdict[str, deque[BaseException]] = defaultdict(deque)
        #: Raised by every call of the named method.
        self.always: dict[str, BaseException] = {}
        #: (topic, key) of records `produce` refuses as too large.
        self.refused: set[tuple[str, bytes]] = set()
        #: When set, `commit_transaction` waits for it (after announcing `committing`).
        self.hold: anyio.Event | None = None
        self.committing = anyio.Event()

    def __call__(self, conf: dict[str, object]) -> FakeProducer:
        producer = FakeProducer(conf, self)
        self.producers.append(producer)
        return producer

    def fail(self, method: str, *errors: BaseException) -> None:
        self.errors[method].extend(errors)

    def raise_scripted(self, method: str) -> None:
        if self.errors[method]:
            raise self.errors[method].popleft()
        if method in self.always:
            raise self.always[method]

    def committed_ids(self) -> list[str]:
        return [r.event_id for t in self.transactions for r in t if r.topic == TOPIC]

    def committed_states(self) -> dict[str, bytes | None]:
        return {
            r.key.decode(): r.value for t in self.transactions for r in t if r.topic == STATE_TOPIC
        }


class FakeProducer:
    """One transactional producer (`TransactionalProducer`). Called from worker threads and
    (`poll(0)`) from the event loop."""

    def __init__(self, conf: dict[str, object], kafka: FakeKafka) -> None:
        self.conf = conf
        self.kafka = kafka
        self.calls: list[str] = []
        self.produced: list[Record] = []
        self.polls: list[float] = []
        self._open: list[Record] | None = None
        self._lock = threading.Lock()
        self._statistics: list[str] = []
        self._client_errors: list[KafkaError] = []

    def _call(self, method: str) -> None:
        self.calls.append(method)
        self.kafka.raise_scripted(method)

    def init_transactions(self, timeout: float) -> None:
        self._call("init_transactions")

    def begin_transaction(self) -> None:
        self._call("begin_transaction")
        assert self._open is None, "begin_transaction with a transaction open"
        self._open = []

    def produce(
        self,
        topic: str,
        *,
        value: bytes | None,
        key: bytes,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        self._call("produce")
        assert self._open is not None, "produce outside a transaction"
        if (topic, key) in self.kafka.refused:
            raise kafka_error(KafkaError.MSG_SIZE_TOO_LARGE)
        record = Record(topic, key, value, headers)
        self._open.append(record)
        self.produced.append(record)

    def commit_transaction(self, timeout: float) -> None:
        hold = self.kafka.hold
        if hold is not None:  # in a worker thread: wait on the event loop
            anyio.from_thread.run_sync(self.kafka.committing.set)
            anyio.from_thread.run(hold.wait)
        self._call("commit_transaction")
        assert self._open is not None, "commit without a transaction"
        self.kafka.transactions.append(self._open)
        self._open = None

    def abort_transaction(self, timeout: float) -> None:
        self._call("abort_transaction")
        self._open = None

    def poll(self, timeout: float) -> int:
        self.polls.append(timeout)
        with self._lock:
            statistics, self._statistics = self._statistics, []
            errors, self._client_errors = self._client_errors, []
        stats_cb, error_cb = self.conf["stats_cb"], self.conf["error_cb"]
        assert callable(stats_cb) and callable(error_cb)
        for text in statistics:
            stats_cb(text)
        for error in errors:
            error_cb(error)
        return len(statistics) + len(errors)

    def flush(self, timeout: float) -> int:
        return 0

    # --- the test's side ---

    def emit(self, statistics: str = "", error: KafkaError | None = None) -> None:
        """Statistics / a client error for the next `poll` to report."""
        with self._lock:
            if statistics:
                self._statistics.append(statistics)
            if error is not None:
                self._client_errors.append(error)

    def attempts(self) -> list[list[str]]:
        """The calls made, split at each `begin_transaction` (calls before the first are
        the first element)."""
        split: list[list[str]] = [[]]
        for call in self.calls:
            if call == "begin_transaction":
                split.append([])
            split[-1].append(call)
        return split


class FakeMonotonic:
    """The publisher's monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def open_publisher(
    kafka: FakeKafka, config: KafkaConfig = CONFIG, **options: Any
) -> AbstractAsyncContextManager[TransactionalPublisher]:
    defaults: dict[str, Any] = {
        "clock": lambda: PUBLISHED_AT,
        "backoff_seconds": (0.01, 0.02),
        "timeout_seconds": 1.0,
        "grace_seconds": 5.0,
    }
    return open_transactional_publisher(config, producer_factory=kafka, **(defaults | options))


async def wait_until(predicate: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not predicate():  # noqa: ASYNC110 (set by another thread or task)
            await anyio.sleep(0.001)


def without_produce(calls: list[str]) -> list[str]:
    return [call for call in calls if call != "produce"]


def logged(caplog: pytest.LogCaptureFixture, level: int) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno == level)


@pytest.fixture(autouse=True)
def _logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="polymarket_kafka")


# --- committed -------------------------------------------------------------------------


async def test_events_and_staged_states_are_committed_in_one_transaction(
    anyio_backend: str,
) -> None:
    kafka = FakeKafka()
    async with open_publisher(kafka) as publisher:
        for n in range(3):
            await publisher.publish(EVENTS[n], (EVENTS[n].market_id, b"after-%d" % n))
        publisher.stage([(MARKETS[6], b"checkpoint"), (MARKETS[7], None)])
        assert await publisher.flush(5) == 0
        assert publisher.pending_events() == []
        assert publisher.delivery_backlog() == DeliveryBacklog(0)

    [producer] = kafka.producers
    assert producer.conf["transactional.id"] == "tx-test"
    assert producer.calls == [
        "init_transactions",
        "begin_transaction",
        *["produce"] * 8,  # 3 events, 5 state records
        "commit_transaction",
    ]
    [transaction] = kafka.transactions
    events = [r for r in transaction if r.topic == TOPIC]
    assert [r.event_id for r in events] == ids(EVENTS[:3])
    assert [r.key for r in events] == [e.kafka_key for e in EVENTS[:3]]
    assert [r.value for r in events] == [stamped_value(e, PUBLISHED_AT) for e in EVENTS[:3]]
    assert events[0].headers == [
        ("event_id", EVENTS[0].event_id.encode()),
        ("content-type", b"application/json"),
    ]
    assert kafka.committed_states() == {
        MARKETS[0]: b"after-0",
        MARKETS[1]: b"after-1",
        MARKETS[2]: b"after-2",
        MARKETS[6]: b"checkpoint",
        MARKETS[7]: None,
    }
    stats = publisher.stats
    assert (stats.published, stats.delivered, stats.failed, stats.pending) == (3, 3, 0, 0)
    assert stats.delivery_latency.count == 3
    assert stats.state_records_committed == 5
    assert (stats.transactions_committed, stats.transactions_aborted) == (1, 0)
    assert stats.producer_recreated == 0
    assert stats.unacknowledged_at_close == 0


async def test_states_staged_without_events_are_committed(anyio_backend: str) -> None:
    kafka = FakeKafka()
    async with open_publisher(kafka) as publisher:
        publisher.stage([(MARKETS[0], b"a"), (MARKETS[1], b"b")])
        publisher.stage([(MARKETS[0], b"a2")])  # the latest of a market wins
        assert await publisher.flush(5) == 0
    assert kafka.committed_states() == {MARKETS[0]: b"a2", MARKETS[1]: b"b"}
    assert kafka.committed_ids() == []
    assert publisher.stats.state_records_committed == 2
    assert publisher.stats.delivered == 0


async def test_events_published_within_the_linger_window_share_a_transaction(
    anyio_backend: str,
) -> None:
    kafka = FakeKafka()
    config = dataclasses.replace(CONFIG, transaction_linger_ms=200)
    async with open_publisher(kafka, config) as publisher:
        await publisher.publish(EVENTS[0])
        for _ in range(3):
            await anyio.lowlevel.checkpoint()  # the committer wakes up and lingers
        await publisher.publish(EVENTS[1])
        await anyio.lowlevel.checkpoint()
        await publisher.publish(EVENTS[2])
        assert await publisher.flush(5) == 0
    assert [[r.event_id for r in t] for t in kafka.transactions] == [ids(EVENTS[:3])]
    assert publisher.stats.transactions_committed == 1


async def test_events_published_during_a_commit_go_in_the_next_transaction(
    anyio_backend: str,
) -> None:
    kafka = FakeKafka()
    kafka.hold = anyio.Event()
    async with open_publisher(kafka) as publisher:
        await publisher.publish(EVENTS[0])
        await publisher.publish(EVENTS[1])
        await kafka.committing.wait()
        await publisher.publish(EVENTS[2])
        kafka.hold.set()
        assert await publisher.flush(5) == 0
    assert [[r.event_id for r in t] for t in kafka.transactions] == [
        ids(EVENTS[:2]),
        ids(EVENTS[2:3]),
    ]
    assert publisher.stats.transactions_committed == 2


# --- failed transactions ---------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        kafka_error(KafkaError.TRANSACTION_ABORTABLE, abortable=True),
        kafka_error(KafkaError._TRANSPORT),
    ],
    ids=["abortable", "ordinary"],
)
async def test_a_failed_commit_is_aborted_and_the_same_bytes_committed_next(
    anyio_backend: str, error: KafkaException, caplog: pytest.LogCaptureFixture
) -> None:
    kafka = FakeKafka()
    kafka.fail("commit_transaction", error)
    async with open_publisher(kafka) as publisher:
        for n in range(3):
            await publisher.publish(EVENTS[n], (EVENTS[n].market_id, b"s%d" % n))
        assert await publisher.flush(5) == 0

    [producer] = kafka.producers
    assert producer.attempts() == [
        ["init_transactions"],
        ["begin_transaction", *["produce"] * 6, "commit_transaction", "abort_transaction"],
        ["begin_transaction", *["produce"] * 6, "commit_transaction"],
    ]
    assert producer.produced[:6] == producer.produced[6:]  # same topics, keys, bytes, headers
    assert kafka.committed_ids() == ids(EVENTS[:3])
    assert kafka.committed_states() == {EVENTS[n].market_id: b"s%d" % n for n in range(3)}
    stats = publisher.stats
    assert (stats.transactions_aborted, stats.transactions_committed) == (1, 1)
    assert (stats.delivered, stats.failed, stats.producer_recreated) == (3, 0, 0)
    assert stats.delivery_latency.count == 3
    warnings = logged(caplog, logging.WARNING)
    assert "Kafka transaction of 3 event(s) and 3 state record(s) not committed" in warnings


async def test_events_published_during_a_failed_commit_follow_its_events(
    anyio_backend: str,
) -> None:
    kafka = FakeKafka()
    kafka.hold = anyio.Event()
    kafka.fail("commit_transaction", kafka_error(KafkaError._TRANSPORT))
    async with open_publisher(kafka) as publisher:
        await publisher.publish(EVENTS[0])
        await publisher.publish(EVENTS[1])
        await kafka.committing.wait()
        await publisher.publish(EVENTS[2])
        kafka.hold.set()
        assert await publisher.flush(5) == 0
    assert [[r.event_id for r in t] for t in kafka.transactions] == [ids(EVENTS[:3])]


async def test_a_commit_that_may_still_complete_is_retried_without_abort(
    anyio_backend: str,
) -> None:
    kafka = FakeKafka()
    kafka.fail(
        "commit_transaction",
        kafka_error(KafkaError._TIMED_OUT, retriable=True),
        kafka_error(KafkaError._TIMED_OUT, retriable=True),
    )
    async with open_publisher(kafka) as publisher:
        await publisher.publish(EVENTS[0], (EVENTS[0].market_id, b"s"))
        await publisher.publish(EVENTS[1])
        assert await publisher.flush(5) == 0

    [producer] = kafka.producers
    assert producer.calls == [
        "init_transactions",
        "begin_transaction",
        *["produce"] * 3,
        *["commit_transaction"] * 3,  # the same transaction, committed again
    ]
    assert kafka.committed_ids() == ids(EVENTS[:2])
    stats = publisher.stats
    assert (stats.transactions_aborted, stats.transactions_committed) == (0, 1)
    assert (stats.delivered, stats.state_records_committed) == (2, 1)


async def test_a_pending_commit_that_then_fails_is_aborted_and_produced_again(
    anyio_backend: str,
) -> None:
    kafka = FakeKafka()
    kafka.fail(
        "commit_transaction",
        kafka_error(KafkaError._TIMED_OUT, retriable=True),
        kafka_error(KafkaError._TRANSPORT),
    )
    async with open_publisher(kafka) as publisher:
        await publisher.publish(EVENTS[0])
        assert await publisher.flush(5) == 0
    [producer] = kafka.producers
    assert producer.attempts()[1:] == [
        [
            "begin_transaction",
            "produce",
            "commit_transaction",
            "commit_transaction",  # timed out: the same commit again ...
            "abort_transaction",  # ... which failed: aborted, produced again
        ],
        ["begin_transaction", "produce", "commit_transaction"],
    ]
    assert kafka.committed_ids() == ids(EVENTS[:1])
    assert publisher.stats.transactions_aborted == 1


@pytest.mark.parametrize("method", ["begin_transaction", "produce"])
async def test_an_error_before_the_commit_aborts_the_transaction(
    anyio_backend: str, method: str
) -> None:
    kafka = FakeKafka()
    kafka.fail(method, kafka_error(KafkaError._STATE))
    async with open_publisher(kafka) as publisher:
        await publisher.publish(EVENTS[0])
        assert await publisher.flush(5) == 0
    [producer] = kafka.producers
    assert producer.calls.count("abort_transaction") == 1
    assert kafka.committed_ids() == ids(EVENTS[:1])
    assert publisher.stats.transactions_aborted == 1


async def test_a_fatal_error_replaces_the_producer(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    kafka = FakeKafka()
    # The broker lost the producer's state (e.g. it restarted empty).
    kafka.fail("commit_transaction", kafka_error(KafkaError.UNKNOWN_PRODUCER_ID, fatal=True))
    async with open_publisher(kafka) as publisher:
        await publisher.publish(EVENTS[0], (EVENTS[0].market_id, b"s"))
        await publisher.publish(EVENTS[1])
        assert await publisher.flush(5) == 0

    first, second = kafka.producers
    assert without_produce(first.calls) == [
        "init_transactions",
        "begin_transaction",
        "commit_transaction",  # no abort: a fatal error leaves nothing to abort with
    ]
    assert without_produce(second.calls) == [
        "init_transactions",  # fences the old producer, aborts what it left open
        "begin_transaction",
        "commit_transaction",
    ]
    assert second.produced == first.produced
    assert second.conf["transactional.id"] == first.conf["transactional.id"] == "tx-test"
    assert kafka.committed_ids() == ids(EVENTS[:2])
    stats = publisher.stats
    assert (stats.producer_recreated, stats.transactions_aborted) == (1, 1)
    assert (stats.delivered, stats.transactions_committed) == (2, 1)
    warnings = logged(caplog, logging.WARNING)
    assert "producer unusable (KafkaError{FATAL,code=UNKNOWN_PRODUCER_ID" in warnings


async def test_a_failing_abort_replaces_the_producer(anyio_backend: str) -> None:
    kafka = FakeKafka()
    kafka.fail("commit_transaction", kafka_error(KafkaError._TRANSPORT))
    kafka.fail("abort_transaction", kafka_error(KafkaError._TIMED_OUT, retriable=True))
    async with open_publisher(kafka) as publisher:
        await publisher.publish(EVENTS[0])
        assert await publisher.flush(5) == 0

    first, second = kafka.producers
    assert without_produce(first.calls)[-2:] == ["commit_transaction", "abort_transaction"]
    assert without_produce(second.calls) == [
        "init_transactions",
        "begin_transaction",
        "commit_transaction",
    ]
    assert kafka.committed_ids() == ids(EVENTS[:1])
    assert publisher.stats.producer_recreated == 1


async def test_a_transaction_refused_for_good_is_an_error_and_retried_until_fixed(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    kafka = FakeKafka()
    denied = kafka_error(KafkaError.TOPIC_AUTHORIZATION_FAILED)
    kafka.fail("commit_transaction", denied)
    kafka.fail("commit_transaction", denied)  # the ACL is fixed after two attempts
    async with open_publisher(kafka) as publisher:
        await publisher.publish(EVENTS[0])
        assert await publisher.flush(5) == 0
    assert kafka.committed_ids() == ids(EVENTS[:1])
    errors = logged(caplog, logging.ERROR)
    assert errors.count("Kafka refuses the transaction for good until fixed") == 1  # a minute
    assert publisher.stats.transactions_aborted == 2


async def test_fenced_while_aborting_stops_without_initialising_again(anyio_backend: str) -> None:
    # Initialising again would fence the newer instance in turn: the old one must stop.
    kafka = FakeKafka()
    kafka.fail("commit_transaction", kafka_error(KafkaError._TRANSPORT))
    kafka.fail("abort_transaction", kafka_error(KafkaError._FENCED, fatal=True))

    async def run() -> None:
        async with open_publisher(kafka) as publisher:
            await publisher.publish(EVENTS[0])
            await anyio.sleep_forever()

    with anyio.fail_after(5), pytest.raises(ProducerFencedError):
        await run()
    [producer] = kafka.producers  # never replaced
    assert without_produce(producer.calls)[-2:] == ["commit_transaction", "abort_transaction"]
    assert kafka.transactions == []


async def test_init_transactions_is_retried_until_kafka_answers(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    kafka = FakeKafka()
    kafka.fail("init_transactions", *[kafka_error(KafkaError._TIMED_OUT, retriable=True)] * 3)
    async with open_publisher(kafka) as publisher:
        # A producer whose initialisation failed is dropped: each attempt with a new one.
        assert [p.calls for p in kafka.producers] == [["init_transactions"]] * 4
        await publisher.publish(EVENTS[0])
        assert await publisher.flush(5) == 0
    assert kafka.producers[-1].calls[1:] == ["begin_transaction", "produce", "commit_transaction"]
    assert len({p.conf["transactional.id"] for p in kafka.producers}) == 1
    assert kafka.committed_ids() == ids(EVENTS[:1])
    assert publisher.stats.producer_recreated == 0  # not a replacement: never initialised
    assert "cannot initialise Kafka transactions (KafkaError{" in logged(caplog, logging.WARNING)


async def test_a_replaced_producer_that_cannot_initialise_is_retried(anyio_backend: str) -> None:
    kafka = FakeKafka()
    kafka.fail("commit_transaction", kafka_error(KafkaError._FATAL, fatal=True))
    async with open_publisher(kafka) as publisher:
        kafka.fail("init_transactions", kafka_error(KafkaError._TRANSPORT))
        await publisher.publish(EVENTS[0])
        assert await publisher.flush(5) == 0
    assert [p.calls.count("init_transactions") for p in kafka.producers] == [1, 1, 1]
    assert kafka.producers[2].calls[1:] == ["begin_transaction", "produce", "commit_transaction"]
    assert publisher.stats.producer_recreated == 1
    assert kafka.committed_ids() == ids(EVENTS[:1])


# --- fenced ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code", [KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH]
)
async def test_a_fenced_producer_stops_the_publisher(
    anyio_backend: str, code: int, caplog: pytest.LogCaptureFixture
) -> None:
    kafka = FakeKafka()
    kafka.fail("commit_transaction", kafka_error(code, fatal=True))
    opened: list[TransactionalPublisher] = []

    async def run() -> None:
        async with open_publisher(kafka) as publisher:
            opened.append(publisher)
            await publisher.publish(EVENTS[0])
            await publisher.publish(EVENTS[1])
            await anyio.sleep_forever()  # the fencing error ends the block

    with anyio.fail_after(5), pytest.raises(ProducerFencedError, match="'tx-test'"):
        await run()

    [publisher] = opened
    [producer] = kafka.producers
    assert without_produce(producer.calls) == [
        "init_transactions",
        "begin_transaction",
        "commit_transaction",  # no abort, no retry: never two writers
    ]
    assert kafka.transactions == []
    status = publisher.broker_status()
    assert not status.connected
    assert status.detail == "fenced: another instance uses tx-test"
    assert publisher.stats.unacknowledged_at_close == 2
    assert publisher.stats.delivered == 0
    errors = logged(caplog, logging.ERROR)
    assert f"event_id={EVENTS[0].event_id}" in errors
    assert "the instance that fenced this one detects it again" in errors
    with pytest.raises(RuntimeError, match="closed"):
        await publisher.publish(EVENTS[2])
    assert len(producer.produced) == 2


async def test_fenced_while_initialising_stops_at_once(anyio_backend: str) -> None:
    kafka = FakeKafka()
    kafka.fail("init_transactions", kafka_error(KafkaError._FENCED, fatal=True))
    entered = False
    with pytest.raises(ProducerFencedError, match="never two writers"):
        async with open_publisher(kafka):
            entered = True
    assert not entered
    assert kafka.producers[0].calls == ["init_transactions"]


# --- produce ------------------------------------------------------------------------------


async def test_a_full_queue_is_polled_and_the_produce_retried(anyio_backend: str) -> None:
    kafka = FakeKafka()
    kafka.fail("produce", BufferError("Local: Queue full"))
    async with open_publisher(kafka) as publisher:
        await publisher.publish(EVENTS[0])
        assert await publisher.flush(5) == 0
    [producer] = kafka.producers
    assert producer.calls.count("produce") == 2
    assert 0.05 in producer.polls  # served the delivery reports before retrying
    assert [r.event_id for r in producer.produced] == ids(EVENTS[:1])
    assert kafka.committed_ids() == ids(EVENTS[:1])
    assert publisher.stats.transactions_aborted == 0


async def test_an_event_kafka_refuses_is_given_up_and_the_others_committed(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    kafka = FakeKafka()
    kafka.refused.add((TOPIC, EVENTS[1].kafka_key))
    async with open_publisher(kafka) as publisher:
        for n in range(3):
            await publisher.publish(EVENTS[n], (EVENTS[n].market_id, b"s%d" % n))
        assert await publisher.flush(5) == 0

    assert kafka.committed_ids() == [EVENTS[0].event_id, EVENTS[2].event_id]
    # Its market's state is committed all the same: the event cannot be delivered by anyone.
    assert kafka.committed_states()[EVENTS[1].market_id] == b"s1"
    stats = publisher.stats
    assert (stats.published, stats.delivered, stats.failed) == (3, 2, 1)
    assert stats.delivery_latency.count == 2
    assert stats.transactions_aborted == 0
    [failed] = publisher.failed
    assert failed.event == EVENTS[1]
    assert "refused by Kafka" in failed.reason
    errors = logged(caplog, logging.ERROR)
    assert f"event NOT delivered to {TOPIC}" in errors
    assert f"event_id={EVENTS[1].event_id}" in errors


async def test_a_refused_state_record_is_logged_at_error(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    kafka = FakeKafka()
    kafka.refused.add((STATE_TOPIC, MARKETS[5].encode()))
    async with open_publisher(kafka) as publisher:
        await publisher.publish(EVENTS[0], (EVENTS[0].market_id, b"s"))
        publisher.stage([(MARKETS[5], b"huge")])
        assert await publisher.flush(5) == 0
    assert kafka.committed_ids() == ids(EVENTS[:1])
    assert kafka.committed_states() == {EVENTS[0].market_id: b"s"}
    assert f"state record of market {MARKETS[5]} refused by Kafka" in logged(caplog, logging.ERROR)
    assert publisher.stats.failed == 0
    assert publisher.stats.state_records_committed == 1  # the refused one is not counted


async def test_an_event_refused_in_a_transaction_whose_commit_is_retried_is_given_up(
    anyio_backend: str,
) -> None:
    kafka = FakeKafka()
    kafka.refused.add((TOPIC, EVENTS[1].kafka_key))
    kafka.fail("commit_transaction", kafka_error(KafkaError._TIMED_OUT, retriable=True))
    async with open_publisher(kafka) as publisher:
        await publisher.publish(EVENTS[0])
        await publisher.publish(EVENTS[1])
        assert await publisher.flush(5) == 0
    assert kafka.committed_ids() == ids(EVENTS[:1])
    assert (publisher.stats.delivered, publisher.stats.failed) == (1, 1)


# --- backpressure, backlog, flush ---------------------------------------------------------


async def test_publish_waits_for_room_at_max_in_flight(anyio_backend: str) -> None:
    kafka = FakeKafka()
    kafka.hold = anyio.Event()
    config = dataclasses.replace(CONFIG, max_in_flight=2)
    returned: list[int] = []

    async def publish(n: int) -> None:
        await publisher.publish(EVENTS[n])
        returned.append(n)

    async with open_publisher(kafka, config) as publisher, anyio.create_task_group() as tg:
        await publisher.publish(EVENTS[0])
        await publisher.publish(EVENTS[1])
        await kafka.committing.wait()
        tg.start_soon(publish, 2)
        await wait_until(lambda: publisher.stats.in_flight_waits == 1)
        assert returned == []
        assert publisher.pending_events() == EVENTS[:2]
        kafka.hold.set()
        await wait_until(lambda: returned == [2])
        assert await publisher.flush(5) == 0

    assert [[r.event_id for r in t] for t in kafka.transactions] == [
        ids(EVENTS[:2]),
        ids(EVENTS[2:3]),
    ]
    assert (publisher.stats.published, publisher.stats.delivered) == (3, 3)


async def test_a_publish_cancelled_while_waiting_for_room_is_counted_failed(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    kafka = FakeKafka()
    kafka.hold = anyio.Event()
    config = dataclasses.replace(CONFIG, max_in_flight=1)
    async with open_publisher(kafka, config) as publisher:
        await publisher.publish(EVENTS[0])
        await kafka.committing.wait()
        async with anyio.create_task_group() as tg:
            tg.start_soon(publisher.publish, EVENTS[1])
            await wait_until(lambda: publisher.stats.in_flight_waits == 1)
            tg.cancel_scope.cancel()
        kafka.hold.set()
        assert await publisher.flush(5) == 0

    assert kafka.committed_ids() == ids(EVENTS[:1])
    stats = publisher.stats
    assert (stats.published, stats.delivered, stats.failed) == (2, 1, 1)
    [failed] = publisher.failed
    assert failed.event == EVENTS[1]
    assert "cancelled while waiting for room" in failed.reason
    assert f"event_id={EVENTS[1].event_id}" in logged(caplog, logging.ERROR)


async def test_pending_events_backlog_and_flush_while_a_commit_is_held(
    anyio_backend: str,
) -> None:
    kafka = FakeKafka()
    kafka.hold = anyio.Event()
    clock = FakeMonotonic()
    async with open_publisher(kafka, monotonic=clock) as publisher:
        await publisher.publish(EVENTS[0])
        clock.now += 2.0
        await publisher.publish(EVENTS[1])
        await kafka.committing.wait()
        clock.now += 3.0
        await publisher.publish(EVENTS[2])  # waits for the next transaction
        assert publisher.pending_events() == EVENTS[:3]  # committing, then waiting
        assert publisher.delivery_backlog() == DeliveryBacklog(3, 5.0)
        assert publisher.stats.pending == 3

        assert await publisher.flush(0.05) == 3  # the budget ran out: 3 uncommitted

        kafka.hold.set()
        assert await publisher.flush(5) == 0
        assert publisher.pending_events() == []
        assert publisher.delivery_backlog() == DeliveryBacklog(0)
        assert publisher.stats.pending == 0
    assert publisher.delivery_timeout_seconds == 60.0


async def test_publish_after_close_is_refused(anyio_backend: str) -> None:
    kafka = FakeKafka()
    async with open_publisher(kafka) as publisher:
        pass
    with pytest.raises(RuntimeError, match="the Kafka publisher is closed"):
        await publisher.publish(EVENTS[0])
    assert publisher.stats.published == 0


# --- close ---------------------------------------------------------------------------------


async def test_what_is_left_at_close_is_committed_within_the_grace(anyio_backend: str) -> None:
    kafka = FakeKafka()
    async with open_publisher(kafka) as publisher:
        await publisher.publish(EVENTS[0])
        await publisher.publish(EVENTS[1])
    assert kafka.committed_ids() == ids(EVENTS[:2])
    assert publisher.stats.unacknowledged_at_close == 0


async def test_an_error_in_the_callers_block_is_raised_after_the_leftovers_commit(
    anyio_backend: str,
) -> None:
    kafka = FakeKafka()
    opened: list[TransactionalPublisher] = []

    async def run() -> None:
        async with open_publisher(kafka) as publisher:
            opened.append(publisher)
            await publisher.publish(EVENTS[0])
            raise ValueError("the caller's")

    with pytest.raises(ValueError, match="the caller's"):
        await run()
    assert kafka.committed_ids() == ids(EVENTS[:1])
    assert opened[0].stats.unacknowledged_at_close == 0


async def test_a_callers_error_and_a_fencing_at_close_are_raised_together(
    anyio_backend: str,
) -> None:
    kafka = FakeKafka()
    kafka.fail("commit_transaction", kafka_error(KafkaError._FENCED, fatal=True))

    async def run() -> None:
        async with open_publisher(kafka) as publisher:
            await publisher.publish(EVENTS[0])
            raise ValueError("the caller's")  # the leftovers' commit at close is fenced

    with pytest.RaisesGroup(ValueError, ProducerFencedError):
        await run()
    assert kafka.transactions == []


async def test_leftovers_are_committed_when_the_callers_scope_is_cancelled(
    anyio_backend: str,
) -> None:
    kafka = FakeKafka()
    with anyio.CancelScope() as scope:
        async with open_publisher(kafka, grace_seconds=0.3) as publisher:
            await publisher.publish(EVENTS[0])
            scope.cancel()
            await anyio.sleep_forever()
    assert kafka.committed_ids() == ids(EVENTS[:1])
    assert publisher.stats.unacknowledged_at_close == 0


async def test_leftovers_of_a_commit_that_never_succeeds_are_logged_at_close(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    kafka = FakeKafka()
    kafka.always["commit_transaction"] = kafka_error(KafkaError._TRANSPORT)
    async with open_publisher(kafka, grace_seconds=0.2) as publisher:
        await publisher.publish(EVENTS[0], (EVENTS[0].market_id, b"s"))
        await publisher.publish(EVENTS[1])
        await wait_until(lambda: publisher.stats.transactions_aborted >= 1)

    assert kafka.transactions == []
    stats = publisher.stats
    assert stats.unacknowledged_at_close == 2
    assert stats.unacknowledged == 2
    assert stats.delivered == 0
    assert stats.transactions_aborted >= 1
    errors = logged(caplog, logging.ERROR)
    for event in EVENTS[:2]:
        assert f"event NOT committed to Kafka at shutdown: event_id={event.event_id}" in errors
    assert "a restart detects it again" in errors
    assert "2 event(s) NOT committed at shutdown" in errors
    assert publisher.broker_status() == BrokerStatus(False, "the Kafka publisher is closed")


async def test_a_commit_under_way_when_the_grace_runs_out_is_booked_not_reported_lost(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The close stops the committer after the grace, but a commit already in its worker
    # thread completes: its events are delivered, and not named as NOT committed.
    kafka = FakeKafka()
    kafka.hold = anyio.Event()

    async def release_later() -> None:
        await kafka.committing.wait()
        await anyio.sleep(0.3)  # after the grace
        assert kafka.hold is not None
        kafka.hold.set()

    async with (
        anyio.create_task_group() as tg,
        open_publisher(kafka, grace_seconds=0.1) as publisher,
    ):
        tg.start_soon(release_later)
        await publisher.publish(EVENTS[0], (EVENTS[0].market_id, b"s"))
    assert kafka.committed_ids() == ids(EVENTS[:1])
    assert (publisher.stats.delivered, publisher.stats.unacknowledged_at_close) == (1, 0)
    assert "NOT committed" not in logged(caplog, logging.ERROR)


# --- statistics and client errors ---------------------------------------------------------


async def test_broker_status_follows_the_producers_statistics(anyio_backend: str) -> None:
    kafka = FakeKafka()
    async with open_publisher(kafka, statistics_interval_ms=20) as publisher:
        [producer] = kafka.producers
        assert producer.conf["statistics.interval.ms"] == 20
        assert publisher.broker_status() == BrokerStatus(
            False, "no statistics from the Kafka producer yet"
        )
        assert publisher.stats.brokers_up == 0

        producer.emit(UP)  # reported by the committer's idle poll(0)
        await wait_until(lambda: publisher.broker_status().connected)
        assert publisher.broker_status() == BrokerStatus(True, "1/1 brokers up")
        assert publisher.stats.brokers_up == 1
        assert 0 in producer.polls

        producer.emit(CONNECTING)
        await wait_until(lambda: not publisher.broker_status().connected)
        assert publisher.stats.brokers_up == 0
    assert publisher.broker_status() == BrokerStatus(False, "the Kafka publisher is closed")


async def test_a_replaced_producer_starts_unconnected_and_its_predecessor_is_ignored(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    kafka = FakeKafka()
    async with open_publisher(kafka, statistics_interval_ms=20) as publisher:
        first = kafka.producers[0]
        first.emit(UP)
        await wait_until(lambda: publisher.broker_status().connected)

        kafka.fail("commit_transaction", kafka_error(KafkaError._FATAL, fatal=True))
        await publisher.publish(EVENTS[0])
        assert await publisher.flush(5) == 0
        first_stats_cb, first_error_cb = first.conf["stats_cb"], first.conf["error_cb"]
        assert callable(first_stats_cb) and callable(first_error_cb)

        # The replacement must show it is connected; the retired producer has no say.
        assert publisher.broker_status().detail == "no statistics from the Kafka producer yet"
        assert publisher.stats.brokers_up == 0
        first_stats_cb(UP)
        first_error_cb(KafkaError(KafkaError._TRANSPORT, "old producer's error"))
        assert not publisher.broker_status().connected

        second = kafka.producers[1]
        second.emit(UP)
        await wait_until(lambda: publisher.broker_status().connected)
    assert "old producer's error" not in caplog.text


async def test_client_errors_and_unreadable_statistics_are_logged(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    kafka = FakeKafka()
    async with open_publisher(kafka, statistics_interval_ms=20) as publisher:
        [producer] = kafka.producers
        producer.emit(error=KafkaError(KafkaError._TRANSPORT, "broker went away"))
        producer.emit("{not json")
        await wait_until(lambda: "broker went away" in caplog.text)
        await wait_until(lambda: "unreadable librdkafka statistics" in caplog.text)
        assert not publisher.broker_status().connected
    debug = logged(caplog, logging.DEBUG)
    assert "Kafka client error" in debug
    assert "broker went away" in debug
    assert "unreadable librdkafka statistics ignored" in logged(caplog, logging.WARNING)
