"""Durable state and transactions at scale: N markets through the real pipeline, on Tansu.

    .venv/bin/python bench/exactly_once.py [--markets 10000] [--cycles 16] [--interval 5]
        [--speed 2] [--movers 0.01] [--modes none,at_least_once,exactly_once] [--rounds 3]

`service.pipeline.run_service` runs with the default rules, a scripted poller (N markets
per cycle: a small random walk, plus a 10-point jump of `--movers` of them every fourth
cycle, so events fire) and one in-memory Tansu broker on loopback, in each mode in turn:

* `none`: the idempotent publisher, no state topic (the service without durable state);
* `at_least_once`: the idempotent publisher, state checkpoints by the `checkpoint` stage;
* `exactly_once`: the transactional publisher (events with their market's state, and the
  checkpoints, in transactions).

Cycles are `--interval` seconds of market time apart and run `--speed` times faster than
that in real time (the checkpoint interval, 60 s of market time, is scaled alike). For each
mode it prints the process CPU per cycle (all threads, librdkafka's included), the state
bytes written per second of market time, and the latency from the poll to Kafka's
acknowledgement (the commit) of each cycle's events, p50 and p99 over the cycles with
events. Each mode runs `--rounds` times, the order rotated every round (the machine drifts:
the first runs of a process are slower), and the medians are printed last. Nothing asserts
on it; the figures go in bench/README.md.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from polymarket_kafka.config import KafkaConfig
from polymarket_kafka.detector_state import StateRecord
from polymarket_kafka.kafka.publisher import KafkaPublisher, open_kafka_publisher
from polymarket_kafka.kafka.state_topic import StateWriter, ensure_state_topic
from polymarket_kafka.kafka.transactional import (
    TransactionalPublisher,
    open_transactional_publisher,
)
from polymarket_kafka.models import MarketSnapshot, PolymarketEvent, PolymarketSubscription
from polymarket_kafka.polymarket.poller import PollResult
from polymarket_kafka.service.pipeline import DurableState, run_service
from polymarket_kafka.service.stats import ServiceSettings, ServiceStats
from polymarket_kafka.testing.local_broker import create_topic, open_tansu_broker
from polymarket_kafka.testing.memory_store import InMemorySubscriptionStore

T0 = datetime(2026, 12, 1, tzinfo=UTC)


@dataclass
class ScriptedPoller:
    """N markets per cycle; notes when each cycle was polled (monotonic)."""

    markets: list[str]
    movers: int
    interval: float
    seed: int = 7
    polled_at: list[float] = field(default_factory=list)
    prices: dict[str, float] = field(default_factory=dict)

    async def poll_once(
        self, subscriptions: Collection[PolymarketSubscription], now: datetime
    ) -> PollResult:
        cycle = len(self.polled_at)
        rng = random.Random(self.seed + cycle)
        jumpers = set(rng.sample(self.markets, self.movers)) if cycle % 4 == 1 else set()
        taken_at = T0 + timedelta(seconds=self.interval * cycle)
        snapshots = []
        for market_id in self.markets:
            price = self.prices.get(market_id, 0.5)
            price += 0.10 if market_id in jumpers else rng.uniform(-0.002, 0.002)
            price = min(0.95, max(0.05, price))
            if market_id in jumpers and price > 0.8:
                price = 0.4  # keep jumping markets inside the band
            self.prices[market_id] = price
            snapshots.append(
                MarketSnapshot(
                    market_id=market_id,
                    question="Benchmark market?",
                    yes_price=round(price, 4),
                    taken_at=taken_at,
                    liquidity=50_000.0,
                    spread=0.01,
                )
            )
        self.polled_at.append(time.monotonic())
        return PollResult(snapshots, {})


@dataclass
class CountingSink:
    """The at-least-once state sink, counting the bytes it writes."""

    writer: StateWriter
    pending: Collection[str] = ()
    written_bytes: int = 0

    async def write(self, records: Sequence[StateRecord]) -> Collection[str]:
        self.written_bytes += sum(len(value or b"") for _, value in records)
        return await anyio.to_thread.run_sync(self.writer.write, records, 60.0)

    def unacknowledged(self) -> Collection[str]:
        return self.pending


@dataclass
class CountingStager:
    """Wraps the transactional publisher's `stage`, counting the bytes staged."""

    publisher: object
    staged_bytes: int = 0

    def stage(self, records: Sequence[StateRecord]) -> None:
        self.staged_bytes += sum(len(value or b"") for _, value in records)
        self.publisher.stage(records)  # type: ignore[attr-defined]


async def run_mode(mode: str, bootstrap: str, args: argparse.Namespace) -> dict[str, float]:
    prefix = f"b{uuid.uuid4().hex[:8]}."
    kafka = KafkaConfig(
        bootstrap_servers=bootstrap,
        topic_prefix=prefix,
        state_topic="" if mode == "none" else "state",
        delivery=mode if mode != "none" else "exactly_once",
    )
    create_topic(bootstrap, kafka.full_topic)
    if kafka.full_state_topic:
        ensure_state_topic(kafka)
    markets = [f"0x{i:064x}" for i in range(args.markets)]
    poller = ScriptedPoller(markets, int(args.markets * args.movers), args.interval)
    real_interval = args.interval / args.speed
    checkpoint_seconds = 60.0 / args.speed
    settings = ServiceSettings(
        poll_interval_seconds=real_interval,
        max_cycles=args.cycles,
        handle_signals=False,
        snapshot_buffer=args.markets,
        drain_grace_seconds=60.0,
    )
    acknowledged_at: list[tuple[float, int]] = []
    per_cycle = [0] * args.cycles
    state_bytes = 0

    async def on_published(event: PolymarketEvent) -> None:
        per_cycle[round((event.timestamp - T0).total_seconds() / args.interval)] += 1

    async def watch(publisher: KafkaPublisher | TransactionalPublisher) -> None:
        seen = 0
        while True:
            delivered = publisher.stats.delivered
            if delivered != seen:
                seen = delivered
                acknowledged_at.append((time.monotonic(), delivered))
            await anyio.sleep(0.001)

    store = InMemorySubscriptionStore(seed=markets)

    async def serve(
        publisher: KafkaPublisher | TransactionalPublisher, durable: DurableState | None
    ) -> ServiceStats:
        """The service over `publisher` until its cycles are done and everything is flushed,
        its acknowledgements watched meanwhile."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch, publisher)
            stats = await run_service(
                store=store,
                poller=poller,
                publisher=publisher,
                settings=settings,
                clock=lambda: T0,
                on_published=on_published,
                durable=durable,
            )
            await publisher.flush(60)
            tg.cancel_scope.cancel()
        return stats

    started_cpu = time.process_time()
    started = time.monotonic()
    if mode == "exactly_once":
        async with open_transactional_publisher(kafka, grace_seconds=60) as publisher:
            stager = CountingStager(publisher)
            stats = await serve(publisher, DurableState(None, checkpoint_seconds, stager=stager))
            state_bytes = stager.staged_bytes
            delivered = publisher.stats.delivered
    else:
        async with open_kafka_publisher(kafka, grace_seconds=60) as idempotent:
            durable = None
            sink = None
            if mode == "at_least_once":
                sink = CountingSink(await anyio.to_thread.run_sync(StateWriter, kafka))
                durable = DurableState(sink, checkpoint_seconds)
            stats = await serve(idempotent, durable)
            if sink is not None:
                state_bytes = sink.written_bytes
                sink.writer.close()
            delivered = idempotent.stats.delivered
    cpu = time.process_time() - started_cpu
    wall = time.monotonic() - started
    latencies = cycle_latencies(poller.polled_at, acknowledged_at, per_cycle)
    return {
        "cycles": stats.poll_cycles,
        "snapshots": stats.snapshots,
        "events": delivered,
        "cpu_per_cycle": cpu / max(1, stats.poll_cycles),
        "wall": wall,
        "state_bytes_per_market_second": state_bytes / (args.cycles * args.interval),
        "p50": statistics.median(latencies) if latencies else float("nan"),
        "p99": max(latencies, default=float("nan")),
    }


def cycle_latencies(
    polled_at: list[float], acknowledged_at: list[tuple[float, int]], events_by_cycle: list[int]
) -> list[float]:
    """Per cycle with events: from its poll until Kafka had acknowledged as many events as
    were published up to that cycle (the last of them). With a handful of cycles with
    events, "p99" is their maximum."""
    out: list[float] = []
    total = 0
    for cycle, count in enumerate(events_by_cycle):
        if not count:
            continue
        total += count
        done = next((at for at, delivered in acknowledged_at if delivered >= total), None)
        if done is not None:
            out.append(done - polled_at[cycle])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markets", type=int, default=10_000)
    parser.add_argument("--cycles", type=int, default=16)
    parser.add_argument("--interval", type=float, default=5.0, help="market seconds per cycle")
    parser.add_argument("--speed", type=float, default=2.0, help="market time / real time")
    parser.add_argument("--movers", type=float, default=0.01, help="share jumping, every 4th")
    parser.add_argument("--modes", default="none,at_least_once,exactly_once")
    parser.add_argument("--rounds", type=int, default=3, help="each mode, in rotated order")
    args = parser.parse_args()
    modes = args.modes.split(",")
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    with open_tansu_broker() as broker:
        for round_ in range(args.rounds):
            order = modes[round_ % len(modes) :] + modes[: round_ % len(modes)]
            for mode in order:
                result = anyio.run(run_mode, mode, broker.bootstrap_servers, args, backend="trio")
                results[mode].append(result)
                print(f"round {round_ + 1} {mode:>14}: {describe(result, args)}", flush=True)
    for mode in modes:
        median = {key: statistics.median(r[key] for r in results[mode]) for key in results[mode][0]}
        print(f"median {mode:>14}: {describe(median, args)}", flush=True)


def describe(result: dict[str, float], args: argparse.Namespace) -> str:
    return (
        f"{result['cycles']:.0f} cycles of {args.markets} markets, {result['events']:.0f} "
        f"events; CPU {result['cpu_per_cycle'] * 1000:.0f} ms per cycle; state "
        f"{result['state_bytes_per_market_second'] / 1000:.1f} KB per market-time second; "
        f"poll -> acknowledged p50 {result['p50'] * 1000:.0f} ms, p99 {result['p99'] * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
