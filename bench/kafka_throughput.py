"""Kafka publisher throughput against raw confluent-kafka, side by side on one Tansu broker.

    .venv/bin/python bench/kafka_throughput.py [--events 20000] [--rounds 3]

One in-memory Tansu broker on loopback, one topic per measurement. Each round measures, one
after the other (the machine is noisy, so they alternate and the medians are compared):

- `raw`: confluent-kafka `Producer.produce` of pre-serialised values with the service's
  producer configuration (`kafka.settings.producer_config`), waiting on BufferError with
  `poll`, then `flush` -- the ceiling, what the issue calls raw;
- `raw+json`: the same, serialising each event (`to_kafka_value`) in the loop;
- `publisher/trio`, `publisher/asyncio`: `KafkaPublisher.publish` of the same events, then
  `flush` until Kafka acknowledged every one.

Every producer is warmed first (one message acknowledged: connected, producer id assigned,
topic metadata known), as in a running service; cold, the first acknowledgement takes
0.3-0.9 s on Tansu and bounds every contender. Events/s counts from the first produce to the
last acknowledgement. Prints a table and the
ratio of each publisher median to the raw median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import confluent_kafka

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from polymarket_kafka.config import KafkaConfig
from polymarket_kafka.kafka.publisher import open_kafka_publisher
from polymarket_kafka.kafka.settings import producer_config
from polymarket_kafka.models import PolymarketEvent
from polymarket_kafka.testing.local_broker import create_topic, open_tansu_broker
from tests import factories

T0 = datetime(2024, 11, 5, 23, 0, tzinfo=UTC)


def events(n: int) -> list[PolymarketEvent]:
    return [
        factories.make_event(
            event_id=str(uuid.uuid4()),
            timestamp=T0 + timedelta(seconds=i),
            market_id="0x" + f"{i % 500:064x}",
            question=f"Question {i}?",
        )
        for i in range(n)
    ]


def raw(config: KafkaConfig, batch: list[PolymarketEvent], *, serialise: bool) -> float:
    producer = confluent_kafka.Producer(producer_config(config))
    values = None if serialise else [e.to_kafka_value() for e in batch]
    acked = 0

    def on_delivery(error: object, _msg: object) -> None:
        nonlocal acked
        if error is None:
            acked += 1

    # Warm: connected, producer id assigned, topic metadata known (as a running service is).
    producer.produce(config.full_topic, value=b"{}", key=b"warm-up", on_delivery=on_delivery)
    producer.flush(30)
    acked = 0
    started = time.perf_counter()
    for i, event in enumerate(batch):
        value = event.to_kafka_value() if values is None else values[i]
        headers: list[tuple[str, str | bytes | None]] = [
            ("event_id", event.event_id.encode()),
            ("content-type", b"application/json"),
        ]
        while True:
            try:
                producer.produce(
                    config.full_topic,
                    value=value,
                    key=event.kafka_key,
                    headers=headers,
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush(60)
    elapsed = time.perf_counter() - started
    assert acked == len(batch), (acked, len(batch))
    return len(batch) / elapsed


def publisher(config: KafkaConfig, batch: list[PolymarketEvent], backend: str) -> float:
    warm_up = events(1)[0].model_copy(update={"event_id": str(uuid.uuid4())})

    async def main() -> float:
        async with open_kafka_publisher(config, statistics_interval_ms=1000) as pub:
            # Warm: connected, producer id assigned, topic metadata known (as in a running
            # service); its event is not counted.
            await pub.publish(warm_up)
            if await pub.flush(30):
                raise RuntimeError("the warm-up event was not acknowledged")
            pub.stats.delivered = 0
            started = time.perf_counter()
            for event in batch:
                await pub.publish(event)
            left = await pub.flush(60)
            elapsed = time.perf_counter() - started
            assert left == 0, pub.stats
            assert pub.stats.delivered == len(batch), pub.stats
        return len(batch) / elapsed

    return anyio.run(main, backend=backend)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    batch = events(args.events)
    runs: dict[str, Callable[[KafkaConfig], float]] = {
        "raw": lambda c: raw(c, batch, serialise=False),
        "raw+json": lambda c: raw(c, batch, serialise=True),
        "publisher/trio": lambda c: publisher(c, batch, "trio"),
        "publisher/asyncio": lambda c: publisher(c, batch, "asyncio"),
    }
    results: dict[str, list[float]] = {name: [] for name in runs}
    with open_tansu_broker() as broker:
        for round_ in range(args.rounds):
            # Rotated every round, so no variant is always the first (or last) to run.
            names = list(runs)[round_ % len(runs) :] + list(runs)[: round_ % len(runs)]
            for name in names:
                run = runs[name]
                topic = f"bench-{uuid.uuid4().hex[:8]}"
                create_topic(broker.bootstrap_servers, topic, partitions=3)
                config = KafkaConfig(bootstrap_servers=broker.bootstrap_servers, topic=topic)
                results[name].append(run(config))
                print(f"round {round_ + 1} {name:<18} {results[name][-1]:>10,.0f} events/s")
    base = statistics.median(results["raw"])
    print(f"\n{args.events} events x {args.rounds} rounds, median events/s (ratio to raw):")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"  {name:<18} {median:>10,.0f}  {median / base:5.2f}x")


if __name__ == "__main__":
    main()
