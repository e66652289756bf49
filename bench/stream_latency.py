"""Streaming latency: from the market channel SENDING a moving frame to Kafka ACKNOWLEDGING
the event, through the real service, on loopback.

    .venv/bin/python bench/stream_latency.py --markets 1000 --rate 500 --seconds 30
        [--moves 5] [--coalesce-ms 100,0] [--rounds 1] [--warmup 2] [--idle 5] [--json]
        [--linger-ms MS] [--profile PATH]

What runs, per service run (one per `--coalesce-ms` value and round; the order rotates every
round, and the values run side by side against the same broker, since the machine drifts):

* market side, its own process (`bench/stream_latency_driver.py`, so its CPU is not the
  service's): a `FakePolymarketServer` (REST, no added latency) and a `FakeMarketChannel`
  (WebSocket) with the same N markets and midpoints. Once the service streams every market it
  sends `--rate` background `price_change` frames a second spread over all markets (each mid
  stays within 0.005 of its level: never a move) and `--moves` moving frames a second (a jump
  of 0.25 of a random market, or back; the REST fake follows, so REST and the stream agree);
* the service, in a fresh process (so CPU and peak RSS are one run's alone): the assembly of
  `testing.demo.run_demo` with real parts only -- `open_polymarket_client` + `MarketPoller`,
  `open_market_stream` + `StreamCoordinator`, `open_kafka_publisher` on an in-memory Tansu
  broker, `run_service(stream=coordinator)` -- on the trio backend, with the service's
  defaults (poll interval 30 s, `ws_reconcile_seconds` 120 s: no reconciliation falls in the
  window, `ws_assets_per_connection` 200, the producer's `linger.ms` 10) except
  `rate_limit_delay_ms` 0 (start-up only: the first poll fetches every market's metadata) and
  `POLYMARKET_WS_COALESCE_MS`, which is the parameter compared. Rules:
  `bench/stream_latency_rules.yaml` (thresholds only, `confirm.polls` 1: one moving frame
  fires at once, no confirmation time; cooldown 1 s, a market moves again after 3 s at the
  earliest).

Latency of an event = the time Kafka's acknowledgement reached the producer -- the delivery
report, timed with `time.time()` in the callback on the publisher's poll thread -- minus the
moving frame's send time (`time.time()` in the driver just before `FakeMarketChannel.move`,
also its `timestamp_ms`; both processes read the same wall clock). Why the delivery report:
`run_service(on_published=...)` is called after `KafkaPublisher.publish` returns, and
`publish` returns "once librdkafka accepted the message" -- a hand-over to the client's local
queue, before anything reached the broker. The delivery report is what librdkafka emits when
the broker acknowledged the produce request (acks=all). It is caught by wrapping the
producer (`open_kafka_publisher(producer_factory=...)`: a thin wrapper around
`confluent_kafka.Producer` whose `produce` wraps `on_delivery`; the service's own callback
runs unchanged right after). The broker's timestamps cannot replace it: the message
timestamp is the producer's CreateTime (set at `produce`), and reading back costs a consumer.
Each acknowledged event is matched to its move by market and price (the event's YES price is
the move's mid, give or take the 0.005 of background jitter).

Where the time goes, per event, from the event itself: `timestamp` is the snapshot's
`taken_at` (the service's wall clock when the stream built the snapshot: after receive,
decode and coalescing) and `published_at` is stamped by the publisher just before
`produce`. So: stream = taken_at - sent; pipeline = published_at - taken_at (snapshot
channel, detection, event channel, deliver); kafka = ack - published_at (librdkafka's
linger, the broker round trip, the delivery report).

CPU per update = the service process's CPU time (`time.process_time()`: every thread,
librdkafka's included) over the measured window / the market-channel messages it received in
that window (`StreamStats.messages`: a background frame is one message; a move is two, the
`price_change` and the `best_bid_ask`). Coalesced = `Coalescer.coalesced` over the window.
Idle % = the service's CPU share over `--idle` seconds with every market streamed and no
load, 3 s after start-up (the fixed cost: heartbeats, librdkafka, timers). Peak RSS =
`ru_maxrss` of the service process at the end (start-up included: the first poll loads every
market's metadata). The window starts `--warmup` seconds after the load does (the producer is
warm then: connected, topic metadata known); with `--seconds` 30 it holds one poll tick and
one subscription refresh, as any 30 s of the service does. driver/broker % = the CPU shares
of the driver (over the window) and of Tansu (over the run): the three share the machine's
cores; machine % = every core's busy time over the window (`/proc/stat`; 200 = two cores
busy): above the sum of the others, something else was running.

What held the event loop is timed where it costs nothing per update (`Pauses`): the cyclic
GC (`gc.callbacks`), the poll tick's work on the stream (`StreamCoordinator.plan` and
`after_poll`) and the subscription refresh's `store.active()` (wrapped on the instances).
Every event slower than 30 ms is listed with its three stages, how long before the move its
market's previous frame was sent (within the coalescing interval, the move waits for the
trailing edge) and the pauses >= 5 ms that overlapped it.

`--profile PATH` writes a cProfile of the event loop's thread over the window (slows it
down: for where the time goes, not for the figures); `--linger-ms` overrides the producer's
`linger.ms` (an experiment: the service's is 10). `--json` prints every figure of every run.
The per-thread and machine CPU figures read Linux's `/proc`.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TypeVar

import anyio
import confluent_kafka

from polymarket_kafka.clock import now_utc
from polymarket_kafka.config import KafkaConfig, PolymarketConfig
from polymarket_kafka.kafka.publisher import open_kafka_publisher
from polymarket_kafka.models import PolymarketEvent
from polymarket_kafka.polymarket import open_polymarket_client
from polymarket_kafka.polymarket.poller import MarketPoller
from polymarket_kafka.polymarket.stream import MarketStream, open_market_stream
from polymarket_kafka.service.pipeline import run_service
from polymarket_kafka.service.reloader import RulesHolder
from polymarket_kafka.service.stages import Stopper
from polymarket_kafka.service.stats import ServiceSettings
from polymarket_kafka.service.streaming import StreamCoordinator
from polymarket_kafka.testing.fake_polymarket import FakeMarket
from polymarket_kafka.testing.local_broker import create_topic, open_tansu_broker
from polymarket_kafka.testing.memory_store import InMemorySubscriptionStore

T = TypeVar("T")
HERE = Path(__file__).resolve().parent
DRIVER = HERE / "stream_latency_driver.py"
RULES = HERE / "stream_latency_rules.yaml"
BACKEND = "trio"
#: How long the service may take to stream every market after start.
READY_SECONDS = 300.0
#: Once every market is streamed, this long before the idle CPU is measured.
QUIET_SECONDS = 3.0
#: After the load ends, how long the last events may take to be acknowledged.
SETTLE_SECONDS = 5.0
#: Events slower than this are listed with what held the event loop meanwhile.
SLOW_SECONDS = 0.030
SLOW_SHOWN = 6
#: Pauses shorter than this are not named next to a slow event (nor young GCs counted).
PAUSE_SHOWN_SECONDS = 0.005
#: An event's YES price is its move's mid give or take the background jitter (0.005).
PRICE_MATCH = 0.006


# --- the service side (a child process per run) ----------------------------------------------


class TimedProducer:
    """`confluent_kafka.Producer` whose delivery reports are timed (`acks`) before the
    publisher's own callback runs: (value, wall time, acknowledged without error)."""

    def __init__(self, inner: Any, acks: list[tuple[bytes, float, bool]]) -> None:
        self._inner = inner
        self._acks = acks

    def produce(
        self,
        topic: str,
        *,
        value: bytes,
        key: bytes,
        headers: list[tuple[str, str | bytes | None]],
        on_delivery: Callable[[Any, Any], None],
    ) -> None:
        def delivered(error: Any, message: Any) -> None:
            self._acks.append((bytes(value), time.time(), error is None))  # poll thread
            on_delivery(error, message)

        self._inner.produce(topic, value=value, key=key, headers=headers, on_delivery=delivered)

    def poll(self, timeout: float) -> int:
        return int(self._inner.poll(timeout))

    def flush(self, timeout: float) -> int:
        return int(self._inner.flush(timeout))

    def purge(self, in_queue: bool = True, in_flight: bool = True, blocking: bool = True) -> None:
        self._inner.purge(in_queue=in_queue, in_flight=in_flight, blocking=blocking)

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


def thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) of this process's threads, in three groups: the event
    loop (the main thread), librdkafka's threads (`rdk:*`) and the other Python threads
    (the publisher's poll thread, anyio's worker threads). Linux `/proc`; empty elsewhere."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").glob("*"):
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        if task.name == str(os.getpid()):
            name = "event loop"
        elif name.startswith("rdk:"):
            name = "librdkafka"
        else:
            name = "other python threads"  # the publisher's poll thread, worker threads
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return out


class Pauses:
    """Stretches that hold the event loop's thread, timed where it costs nothing per update:
    the cyclic GC (`gc.callbacks`, stops every thread holding the GIL), the poll tick's
    work on the stream (`StreamCoordinator.plan` and `after_poll`, every market each tick)
    and the subscription refresh's read of the store (`active()`: every subscription, every
    30 s; its one checkpoint included). Each is (what, wall start, seconds)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, float, float]] = []
        self._gc_started = 0.0

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            took = time.perf_counter() - self._gc_started
            if info["generation"] > 0 or took > PAUSE_SHOWN_SECONDS:
                self.seen.append((f"gc gen{info['generation']}", time.time() - took, took))

    def wrap(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started, wall = time.perf_counter(), time.time()
            try:
                return method(*args, **kwargs)
            finally:
                self.seen.append((name, wall, time.perf_counter() - started))

        return timed

    def wrap_async(
        self, name: str, method: Callable[[], Awaitable[T]]
    ) -> Callable[[], Awaitable[T]]:
        async def timed() -> T:
            started, wall = time.perf_counter(), time.time()
            try:
                return await method()
            finally:
                self.seen.append((name, wall, time.perf_counter() - started))

        return timed


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy, every core (Linux `/proc/stat`)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass
class Counters:
    """What the service had done at one instant (the window is the difference of two)."""

    cpu: float
    wall: float
    at: float
    messages: int
    frames: int
    coalesced: int
    snapshots: int
    system: float
    threads: dict[str, float]
    machine: float

    @classmethod
    def take(cls, stream: MarketStream) -> Counters:
        return cls(
            cpu=time.process_time(),
            wall=time.monotonic(),
            at=time.time(),
            messages=sum(stream.stats.messages.values()),
            frames=stream.stats.frames,
            coalesced=stream.coalescer.coalesced,
            snapshots=stream.stats.snapshots,
            system=resource.getrusage(resource.RUSAGE_SELF).ru_stime,
            threads=thread_cpu(),
            machine=machine_busy(),
        )


@dataclass
class Window:
    start: Counters | None = None
    end: Counters | None = None
    driver: dict[str, Any] | None = None
    #: CPU seconds per second while streaming every market with no load (before the window).
    idle_cpu_share: float = 0.0
    startup_seconds: float = 0.0
    #: Objects the cyclic GC tracks, at the end of the window (what a full collection walks).
    gc_objects: int = 0
    #: `--profile`: cProfile of the event loop's thread over the window.
    profiler: cProfile.Profile | None = None


async def control(
    driver: subprocess.Popen[str],
    stream: MarketStream,
    markets: int,
    acks: list[tuple[bytes, float, bool]],
    stopper: Stopper,
    window: Window,
    idle_seconds: float,
) -> None:
    """Start the load once every market is streamed, note the window, stop the service."""
    assert driver.stdin is not None
    assert driver.stdout is not None
    stdin, stdout = driver.stdin, driver.stdout
    started = time.monotonic()
    with anyio.fail_after(READY_SECONDS):
        while len(stream.live_markets()) < markets:  # noqa: ASYNC110 (a bench-only wait)
            await anyio.sleep(0.2)
    window.startup_seconds = time.monotonic() - started
    await anyio.sleep(QUIET_SECONDS)  # what start-up left behind (detection, GC) first
    idle = Counters.take(stream)
    await anyio.sleep(idle_seconds)
    window.idle_cpu_share = (time.process_time() - idle.cpu) / (time.monotonic() - idle.wall)
    stdin.write("go\n")
    stdin.flush()
    while window.driver is None:
        line = json.loads(await anyio.to_thread.run_sync(stdout.readline))
        if line.get("phase") == "measure":
            window.start = Counters.take(stream)
            if window.profiler is not None:
                window.profiler.enable()  # the event loop's thread only
        else:
            if window.profiler is not None:
                window.profiler.disable()
            window.end = Counters.take(stream)
            window.driver = line
            window.gc_objects = len(gc.get_objects())
    with anyio.move_on_after(SETTLE_SECONDS):
        while len(acks) < len(window.driver["moves"]):  # noqa: ASYNC110 (filled by a thread)
            await anyio.sleep(0.05)
    stopper.stop()


async def serve(cfg: dict[str, Any], urls: dict[str, str], driver: subprocess.Popen[str]) -> Any:
    markets = [FakeMarket.make(i) for i in range(cfg["markets"])]
    acks: list[tuple[bytes, float, bool]] = []
    kafka = KafkaConfig(
        bootstrap_servers=cfg["bootstrap"],
        topic_prefix=f"sl{uuid.uuid4().hex[:8]}.",
        client_id="stream-latency-bench",
    )
    await anyio.to_thread.run_sync(create_topic, cfg["bootstrap"], kafka.full_topic)
    polymarket = PolymarketConfig(
        base_url=urls["rest"],
        gamma_url=urls["rest"],
        rate_limit_delay_ms=0,
        ws_url=urls["ws"],
        ws_coalesce_ms=cfg["coalesce_ms"],
    )
    store = InMemorySubscriptionStore(seed=[m.condition_id for m in markets])
    stopper = Stopper()
    window = Window(profiler=cProfile.Profile() if cfg.get("profile") else None)
    pauses = Pauses()
    gc.callbacks.append(pauses.on_gc)
    handed_over: list[float] = []

    async def on_published(event: PolymarketEvent) -> None:
        handed_over.append(time.time())

    def producer(conf: dict[str, object]) -> TimedProducer:
        if cfg.get("linger_ms") is not None:  # an experiment: the service's is 10 ms
            conf = {**conf, "linger.ms": cfg["linger_ms"]}
        return TimedProducer(confluent_kafka.Producer(conf), acks)

    async with (
        open_polymarket_client(polymarket) as client,
        open_kafka_publisher(kafka, producer_factory=producer) as publisher,
        open_market_stream(polymarket, clock=now_utc) as stream,
    ):
        poller = MarketPoller(client, metadata_refresh_seconds=polymarket.metadata_refresh_seconds)
        coordinator = StreamCoordinator(
            stream,
            poller,
            reconcile_seconds=polymarket.ws_reconcile_seconds,
            tolerance=polymarket.ws_tolerance,
        )
        # Instrumented on the instances (bench only): timed, otherwise unchanged.
        store.active = pauses.wrap_async("subscription refresh: store.active", store.active)  # type: ignore[method-assign,assignment]
        coordinator.plan = pauses.wrap("poll tick: plan", coordinator.plan)  # type: ignore[method-assign]
        coordinator.after_poll = pauses.wrap("poll tick: after_poll", coordinator.after_poll)  # type: ignore[method-assign]
        async with anyio.create_task_group() as tg:
            tg.start_soon(control, driver, stream, len(markets), acks, stopper, window, cfg["idle"])
            stats = await run_service(
                store=store,
                poller=poller,
                publisher=publisher,
                settings=ServiceSettings(handle_signals=False),
                clock=now_utc,
                rules=RulesHolder.from_path(RULES),
                stopper=stopper,
                on_published=on_published,
                stream=coordinator,
            )
        reconnects = sum(shard.reconnects for shard in stream.connections)
    if window.profiler is not None:
        window.profiler.dump_stats(cfg["profile"] + f".{cfg['coalesce_ms']:g}ms")
    return summarise(
        cfg,
        window,
        acks,
        pauses.seen,
        {
            "events_detected": stats.events_detected,
            "snapshots_streamed_total": stats.snapshots_streamed,
            "disagreements": coordinator.disagreements,
            "reconciliations": coordinator.reconciliations,
            "fallback_polls": coordinator.fallback_polls,
            "reconnects": reconnects,
            "connections": len(stream.connections),
            "malformed": stream.stats.malformed,
            "unpriced": stream.stats.unpriced,
            "detector_dropped": str(stats.detector),
            "handed_over": len(handed_over),
        },
    )


def summarise(
    cfg: dict[str, Any],
    window: Window,
    acks: list[tuple[bytes, float, bool]],
    pauses: list[tuple[str, float, float]],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Match acknowledged events to moves; the figures of one run."""
    assert window.start is not None
    assert window.end is not None
    assert window.driver is not None
    moves = [
        (str(m), float(p), float(t), bool(w), float(b)) for m, p, t, w, b in window.driver["moves"]
    ]
    by_market: dict[str, list[int]] = {}
    for index, (market_id, *_) in enumerate(moves):
        by_market.setdefault(market_id, []).append(index)
    matched: dict[int, tuple[float, float, float]] = {}  # move -> (taken, published, acked)
    unmatched = failed = duplicates = 0
    for value, acked_at, ok in acks:
        if not ok:
            failed += 1
            continue
        event = json.loads(value)
        candidates = [
            i
            for i in by_market.get(event["market_id"], [])
            if moves[i][2] <= acked_at and abs(moves[i][1] - event["yes_price"]) < PRICE_MATCH
        ]
        if not candidates:
            unmatched += 1
            continue
        move = max(candidates, key=lambda i: moves[i][2])
        duplicates += move in matched
        matched[move] = (_wall(event["timestamp"]), _wall(event["published_at"]), acked_at)
    measured = [i for i, m in enumerate(moves) if not m[3]]
    start, end = window.start, window.end
    in_window = [p for p in pauses if start.at <= p[1] <= end.at + SETTLE_SECONDS]
    total, stream_, pipeline, kafka = [], [], [], []
    slow = []
    for i in measured:
        if i in matched:
            taken, published, acked = matched[i]
            sent = moves[i][2]
            total.append(acked - sent)
            stream_.append(taken - sent)
            pipeline.append(published - taken)
            kafka.append(acked - published)
            if acked - sent > SLOW_SECONDS:
                overlapping = [
                    f"{what} {took * 1e3:.0f} ms"
                    for what, at, took in in_window
                    if at < acked and at + took > sent and took >= PAUSE_SHOWN_SECONDS
                ]
                stages = (taken - sent, published - taken, acked - published)
                slow.append((acked - sent, *stages, overlapping, sent - moves[i][4]))
    by_kind: dict[str, list[float]] = {}
    for what, _, took in in_window:
        by_kind.setdefault(what, []).append(took)
    updates = end.messages - start.messages
    cpu = end.cpu - start.cpu
    wall = end.wall - start.wall
    return {
        "coalesce_ms": cfg["coalesce_ms"],
        "markets": cfg["markets"],
        "rate": cfg["rate"],
        "seconds": wall,
        "moves": len(measured),
        "events": len(total),
        "missed": len(measured) - len(total),
        "unmatched_events": unmatched,
        "failed_deliveries": failed,
        "duplicate_events": duplicates,
        "latency": percentiles(total),
        "stream": percentiles(stream_),
        "pipeline": percentiles(pipeline),
        "kafka": percentiles(kafka),
        "slow_events": [
            {
                "ms": round(t * 1e3, 1),
                "stream_ms": round(a * 1e3, 1),
                "pipeline_ms": round(b * 1e3, 1),
                "kafka_ms": round(c * 1e3, 1),
                "during": during,
                "previous_frame_ms": round(gap * 1e3, 1),
            }
            for t, a, b, c, during, gap in sorted(slow, key=lambda row: row[0], reverse=True)
        ],
        "pauses": {
            what: {"count": len(took), "max_ms": max(took) * 1e3, "total_ms": sum(took) * 1e3}
            for what, took in sorted(by_kind.items())
        },
        "startup_seconds": window.startup_seconds,
        "gc_tracked_objects": window.gc_objects,
        "updates": updates,
        "updates_per_second": updates / wall,
        "frames": end.frames - start.frames,
        "coalesced": end.coalesced - start.coalesced,
        "snapshots": end.snapshots - start.snapshots,
        "cpu_seconds": cpu,
        "cpu_share": cpu / wall,
        "cpu_per_update_us": cpu / max(1, updates) * 1e6,
        "cpu_system_seconds": end.system - start.system,
        "cpu_by_thread": {
            name: round(used - start.threads.get(name, 0.0), 2)
            for name, used in end.threads.items()
            if used - start.threads.get(name, 0.0) > 0
        },
        "idle_cpu_share": window.idle_cpu_share,
        "marginal_cpu_per_update_us": (cpu - window.idle_cpu_share * wall) / max(1, updates) * 1e6,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_frames": window.driver["load_measured"],
        "driver_max_lag_ms": window.driver["max_lag_ms"],
        "unsent_frames": window.driver["unsent"],
        "driver_cpu_share": window.driver["cpu_seconds"] / wall,
        "machine_busy_cores": (end.machine - start.machine) / wall,
        **extra,
    }


def _wall(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50, p99 and max in milliseconds (p99 by linear interpolation between samples)."""
    if not values:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    ordered = sorted(values)
    if len(ordered) == 1:
        p99 = ordered[0]
    else:
        p99 = statistics.quantiles(ordered, n=100, method="inclusive")[98]
    return {"p50": statistics.median(ordered) * 1e3, "p99": p99 * 1e3, "max": ordered[-1] * 1e3}


def serve_main(cfg: dict[str, Any]) -> None:
    """The service process: start the driver, run the service, print one JSON line."""
    logging.basicConfig(level=logging.WARNING, format="service: %(levelname)s %(message)s")
    driver = subprocess.Popen(
        [sys.executable, str(DRIVER), *driver_args(cfg)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert driver.stdout is not None
    assert driver.stdin is not None
    try:
        urls = json.loads(driver.stdout.readline())
        result = anyio.run(serve, cfg, urls, driver, backend=BACKEND)
    finally:
        driver.stdin.close()
        driver.wait(timeout=10)
    print(json.dumps(result), flush=True)


def driver_args(cfg: dict[str, Any]) -> list[str]:
    return [
        f"--markets={cfg['markets']}",
        f"--rate={cfg['rate']}",
        f"--moves={cfg['moves']}",
        f"--seconds={cfg['seconds']}",
        f"--warmup={cfg['warmup']}",
        f"--seed={cfg['seed']}",
    ]


# --- the orchestrator ------------------------------------------------------------------------


def process_cpu(pid: int) -> float:
    """CPU seconds of a process (Linux `/proc`; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_once(cfg: dict[str, Any], broker_pid: int) -> dict[str, Any]:
    broker_cpu, started = process_cpu(broker_pid), time.monotonic()
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--serve", json.dumps(cfg)],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    # Over the whole run (start-up included): the broker's share of the machine.
    result["broker_cpu_share"] = (process_cpu(broker_pid) - broker_cpu) / (
        time.monotonic() - started
    )
    return result


def describe(r: dict[str, Any]) -> str:
    lat = r["latency"]
    return (
        f"coalesce {r['coalesce_ms']:>5g} ms: {r['events']}/{r['moves']} events, latency p50 "
        f"{lat['p50']:.1f} p99 {lat['p99']:.1f} max {lat['max']:.1f} ms; "
        f"{r['updates']} updates ({r['updates_per_second']:.0f}/s), {r['coalesced']} coalesced; "
        f"CPU {r['cpu_per_update_us']:.0f} us/update ({r['cpu_share'] * 100:.0f}% of a core); "
        f"peak RSS {r['peak_rss_mib']:.0f} MiB"
    )


COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("coalesce", lambda r: f"{r['coalesce_ms']:g} ms"),
    ("events", lambda r: f"{r['events']}/{r['moves']}"),
    ("p50 ms", lambda r: f"{r['latency']['p50']:.1f}"),
    ("p99 ms", lambda r: f"{r['latency']['p99']:.1f}"),
    ("max ms", lambda r: f"{r['latency']['max']:.1f}"),
    ("updates", lambda r: f"{r['updates']:.0f}"),
    ("upd/s", lambda r: f"{r['updates_per_second']:.0f}"),
    ("coalesced", lambda r: f"{r['coalesced']:.0f}"),
    ("CPU us/upd", lambda r: f"{r['cpu_per_update_us']:.0f}"),
    ("CPU %", lambda r: f"{r['cpu_share'] * 100:.0f}"),
    ("idle %", lambda r: f"{r['idle_cpu_share'] * 100:.0f}"),
    ("RSS MiB", lambda r: f"{r['peak_rss_mib']:.0f}"),
    (
        "driver/broker %",
        lambda r: f"{r['driver_cpu_share'] * 100:.0f}/{r['broker_cpu_share'] * 100:.0f}",
    ),
    ("machine %", lambda r: f"{r['machine_busy_cores'] * 100:.0f}"),
    ("stream p50/p99", lambda r: _pair(r["stream"])),
    ("pipeline p50/p99", lambda r: _pair(r["pipeline"])),
    ("kafka p50/p99", lambda r: _pair(r["kafka"])),
)


def _pair(p: dict[str, float]) -> str:
    return f"{p['p50']:.1f}/{p['p99']:.1f}"


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each number the table shows, the median over `runs` (nested figures too)."""

    def merge(values: list[Any]) -> Any:
        first = values[0]
        if isinstance(first, dict):
            keys = [key for key in first if all(key in v for v in values)]
            return {key: merge([v[key] for v in values]) for key in keys}
        if isinstance(first, int | float) and not isinstance(first, bool):
            return statistics.median(values)
        return first

    merged: dict[str, Any] = merge(runs)
    merged["events"] = round(merged["events"])
    merged["moves"] = round(merged["moves"])
    return merged


def table(rows: list[dict[str, Any]], out: IO[str]) -> None:
    cells = [[name for name, _ in COLUMNS]] + [[cell(r) for _, cell in COLUMNS] for r in rows]
    widths = [max(len(row[c]) for row in cells) for c in range(len(COLUMNS))]
    for n, row in enumerate(cells):
        print("  ".join(text.rjust(w) for text, w in zip(row, widths, strict=True)), file=out)
        if n == 0:
            print("  ".join("-" * width for width in widths), file=out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markets", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=500.0, help="background updates/s")
    parser.add_argument("--moves", type=float, default=5.0, help="moving frames/s")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=2.0, help="load before the window")
    parser.add_argument("--idle", type=float, default=5.0, help="idle CPU measured first")
    parser.add_argument("--coalesce-ms", default="100,0", help="values compared, in turn")
    parser.add_argument("--rounds", type=int, default=1, help="each value, order rotated")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--linger-ms",
        type=float,
        help="experiment: override the producer's linger.ms (the service's: 10)",
    )
    parser.add_argument(
        "--profile",
        metavar="PATH",
        help="cProfile the event loop over the window into PATH.<coalesce>ms (slows it)",
    )
    parser.add_argument("--json", action="store_true", help="every run's figures as JSON")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_main(json.loads(args.serve))
        return
    if args.idle + QUIET_SECONDS > 20:
        # No frame is sent meanwhile: the stream's silence watchdog (30 s) would trip.
        parser.error("--idle must be at most 17 s")
    if args.markets < 4 * args.moves * 3:
        parser.error("--markets must be at least 12 x --moves (a market moves every 3 s at most)")
    values = [float(v) for v in args.coalesce_ms.split(",")]
    command = " ".join([".venv/bin/python", "bench/stream_latency.py", *sys.argv[1:]])
    print(f"# {command}", flush=True)
    rows: list[dict[str, Any]] = []
    with open_tansu_broker() as broker:
        for round_ in range(args.rounds):
            order = values[round_ % len(values) :] + values[: round_ % len(values)]
            for coalesce in order:
                cfg = {
                    "bootstrap": broker.bootstrap_servers,
                    "markets": args.markets,
                    "rate": args.rate,
                    "moves": args.moves,
                    "seconds": args.seconds,
                    "warmup": args.warmup,
                    "idle": args.idle,
                    "seed": args.seed + round_,
                    "coalesce_ms": coalesce,
                    "profile": args.profile,
                    "linger_ms": args.linger_ms,
                }
                result = run_once(cfg, broker.process.pid)
                rows.append(result)
                print(f"round {round_ + 1} {describe(result)}", flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
    print(
        f"\n{args.markets} markets, {args.rate:g} background updates/s + {args.moves:g} "
        f"moves/s, {args.seconds:g} s measured; latency = moving frame sent -> Kafka "
        "delivery report (ms)"
    )
    table(rows, sys.stdout)
    if args.rounds > 1:
        print(f"\nmedians of {args.rounds} rounds per value:")
        table([median_row([r for r in rows if r["coalesce_ms"] == v]) for v in values], sys.stdout)
    print(
        f"\nslow events (> {SLOW_SECONDS * 1e3:.0f} ms) and what held the event loop meanwhile "
        "(GC, the poll tick's plan/after_poll, the subscription refresh; those >= 5 ms named):"
    )
    for r in rows:
        pauses = ", ".join(
            f"{what} x{p['count']} (max {p['max_ms']:.0f} ms)" for what, p in r["pauses"].items()
        )
        print(
            f"  coalesce {r['coalesce_ms']:g} ms: start-up {r['startup_seconds']:.1f} s; "
            f"{len(r['slow_events'])} slow; in the window: {pauses or 'nothing'}"
        )
        for event in r["slow_events"][:SLOW_SHOWN]:
            during = "; ".join(event["during"]) or "-"
            gap = event["previous_frame_ms"]
            previous = f"{gap:.0f} ms" if gap < 1e6 else "never"
            print(
                f"    {event['ms']:6.1f} ms = stream {event['stream_ms']:.1f} + pipeline "
                f"{event['pipeline_ms']:.1f} + kafka {event['kafka_ms']:.1f}; the market's "
                f"previous frame {previous} before; during: {during}"
            )
    print(f"\ncommand: {command}")


if __name__ == "__main__":
    main()
