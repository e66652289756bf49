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
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["BrokerStatus", "KafkaStatistics", "evaluate", "parse_statistics"]

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
