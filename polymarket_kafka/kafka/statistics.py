"""Is the Kafka producer connected? Judged from librdkafka's statistics, without I/O.

librdkafka emits a JSON statistics document every `statistics.interval.ms` from the thread
that polls the producer. Two parts of it answer the question:

* `brokers.<name>.state`: `"UP"` once a broker connection is established and usable. Before
  that a broker is `INIT`, `CONNECT`, `AUTH...`, `APIVERSION_QUERY`; after a disconnect
  `DOWN` or `TRY_CONNECT`. Verified against Tansu: a fresh producer first lists its bootstrap
  broker (`host:port/bootstrap`, `INIT`), which is then replaced by the broker learned from
  the metadata (`host:port/<nodeid>`, `UP`); when the broker goes away, the learned entry is
  dropped and a bootstrap entry in `INIT` is all that is left. Older librdkafka versions also
  list an internal broker (`:0/internal`) and logical ones (`GroupCoordinator`): those say
  nothing about the cluster and are ignored.
* `eos.idemp_state` (idempotent producers only): `"Assigned"` once the broker gave the
  producer its id. Until then nothing can be produced. Verified against Tansu: it moves from
  `WaitTransport` to `Assigned` with the first connection and *stays* `Assigned` while the
  broker is down, so it cannot replace the broker states.

So the producer counts as connected when at least one real broker is `UP` and, where the
document reports it, the producer id is assigned -- and the statistics are fresh: when the
poll thread stops, no statistics arrive any more, and the last ones go stale.

Connected is not enough to be ready: a missing topic, a denied ACL or too few in-sync
replicas leave the broker `UP` while every delivery fails and is retried. So readiness
(`kafka_readiness`) also looks at the publisher's backlog: not ready once the oldest
unacknowledged event has been pending longer than librdkafka's `delivery.timeout.ms` --
by then it failed at least once.

`StatisticsBridge` carries the statistics from the publisher's poll thread to the event loop
and judges them there; every time in this module is on one injected monotonic clock.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from polymarket_kafka.ops.health import ComponentStatus

__all__ = [
    "BrokerStatus",
    "DeliveryBacklog",
    "KafkaStatistics",
    "StatisticsBridge",
    "StatisticsReport",
    "evaluate",
    "kafka_readiness",
    "parse_statistics",
]

_ASSIGNED = "Assigned"
# Brokers that are not cluster members: librdkafka's internal one, and logical brokers.
_NOT_MEMBERS = frozenset({"internal", "logical"})


@dataclass(frozen=True)
class BrokerStatus:
    """Whether the producer can reach Kafka, and a one-line reason a human can read."""

    connected: bool
    detail: str


@dataclass(frozen=True)
class KafkaStatistics:
    """What the publisher keeps of one librdkafka statistics document."""

    brokers_up: int
    brokers_total: int
    #: `eos.idemp_state`; None for a producer without idempotence.
    idempotence_state: str | None = None


def parse_statistics(text: str) -> KafkaStatistics:
    """Parse librdkafka's statistics JSON (`stats_cb`). Raises `ValueError` if malformed."""
    document = json.loads(text)
    if not isinstance(document, dict):
        raise ValueError("librdkafka statistics: expected a JSON object")  # noqa: TRY004
    brokers = document.get("brokers") or {}
    if not isinstance(brokers, dict):
        raise ValueError("librdkafka statistics: 'brokers' is not an object")  # noqa: TRY004
    up = total = 0
    for name, broker in brokers.items():
        if not isinstance(broker, dict) or _is_not_a_member(str(name), broker):
            continue
        total += 1
        up += broker.get("state") == "UP"
    eos = document.get("eos")
    state = eos.get("idemp_state") if isinstance(eos, dict) else None
    return KafkaStatistics(up, total, state if isinstance(state, str) else None)


def _is_not_a_member(name: str, broker: dict[str, object]) -> bool:
    return (
        broker.get("source") in _NOT_MEMBERS
        or name.endswith("/internal")
        or "GroupCoordinator" in name
    )


def evaluate(
    statistics: KafkaStatistics | None, age_seconds: float, max_age_seconds: float
) -> BrokerStatus:
    """Judge the latest statistics, received `age_seconds` ago (ignored when None).

    Not connected: no statistics yet, statistics older than `max_age_seconds` (the poll
    thread stopped), no broker `UP`, or an idempotent producer without a producer id.
    """
    if statistics is None:
        return BrokerStatus(False, "no statistics from the Kafka producer yet")
    if age_seconds > max_age_seconds:
        return BrokerStatus(
            False, f"statistics are {age_seconds:.1f}s old (the producer's poll thread stalled?)"
        )
    brokers = f"{statistics.brokers_up}/{statistics.brokers_total} brokers up"
    if statistics.brokers_up == 0:
        return BrokerStatus(False, f"all brokers down ({brokers})")
    state = statistics.idempotence_state
    if state is not None and state != _ASSIGNED:
        return BrokerStatus(False, f"{brokers}, idempotent producer id not assigned ({state})")
    return BrokerStatus(True, brokers)


@dataclass(frozen=True)
class StatisticsReport:
    """The statistics of the producer of `generation`, received at monotonic time `at`."""

    generation: int
    statistics: KafkaStatistics
    at: float


class StatisticsBridge:
    """librdkafka statistics, from the publisher's poll thread to its event loop.

    The poll thread turns a document into a `StatisticsReport` (`receive`) and queues it; the
    event loop thread `accept`s the queued reports of the current producer generation (a
    retired producer's are stale), `reset`s when the producer is replaced (the new one must
    show it is connected), and asks for the `status`. Times come from `monotonic`.
    """

    def __init__(
        self, interval_ms: int, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        if interval_ms < 1:
            raise ValueError("statistics_interval_ms must be >= 1")
        self.interval_ms = interval_ms
        self._monotonic = monotonic
        self._latest: StatisticsReport | None = None

    def receive(self, generation: int, text: str) -> StatisticsReport:
        """Parse one document (poll thread). Raises `ValueError` if it is malformed."""
        return StatisticsReport(generation, parse_statistics(text), self._monotonic())

    def accept(self, report: StatisticsReport, generation: int) -> bool:
        """Keep `report` if it comes from the current producer `generation` (event loop).

        Returns whether it was kept (a retired producer's report is not).
        """
        if report.generation != generation:
            return False
        self._latest = report
        return True

    @property
    def reported(self) -> bool:
        """Whether statistics of the current producer have arrived."""
        return self._latest is not None

    def reset(self) -> None:
        """Forget the statistics: the producer was replaced."""
        self._latest = None

    @property
    def brokers_up(self) -> int:
        """Brokers `UP` in the latest statistics (0 before any)."""
        return 0 if self._latest is None else self._latest.statistics.brokers_up

    def status(self) -> BrokerStatus:
        """Judge the latest statistics; stale after 3 intervals (at least 1 s)."""
        interval = self.interval_ms / 1000
        latest = self._latest
        if latest is None:
            return evaluate(None, 0.0, interval)
        age = self._monotonic() - latest.at
        return evaluate(latest.statistics, age, max(3 * interval, 1.0))


@dataclass(frozen=True)
class DeliveryBacklog:
    """Events handed to the publisher and not acknowledged by Kafka yet."""

    pending: int
    #: How long the oldest of them has been pending; None when nothing is.
    oldest_age_seconds: float | None = None


def kafka_readiness(
    broker: BrokerStatus, backlog: DeliveryBacklog, max_pending_seconds: float
) -> ComponentStatus:
    """The "kafka" component of readiness: connected, and no event pending too long.

    Ok when `broker` is connected and the oldest pending event (if any) has waited at most
    `max_pending_seconds`. The detail leads with what fails; `extra` always carries the
    backlog: `pending_events`, `oldest_pending_seconds` (None when empty) and the limit.
    """
    age = backlog.oldest_age_seconds
    extra: dict[str, object] = {
        "pending_events": backlog.pending,
        "oldest_pending_seconds": None if age is None else round(age, 3),
        "max_pending_seconds": max_pending_seconds,
    }
    if not backlog.pending or age is None:
        return ComponentStatus(broker.connected, broker.detail, extra)
    events = f"{backlog.pending} event{'' if backlog.pending == 1 else 's'} pending"
    if age > max_pending_seconds:
        detail = (
            f"delivery stalled: {events}, the oldest for {age:.1f}s "
            f"(limit {max_pending_seconds:g}s); {broker.detail}"
        )
        return ComponentStatus(False, detail, extra)
    detail = f"{broker.detail}; {events}, the oldest for {age:.1f}s"
    return ComponentStatus(broker.connected, detail, extra)
