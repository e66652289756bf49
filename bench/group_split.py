"""Throughput and CPU of 1, 2 and 3 instances sharing 30,000 markets in a consumer group.

    .venv/bin/python bench/group_split.py [--markets 30000] [--counts 1,2,3] [--poll 10]
        [--measure 40] [--partitions 12] [--rounds 1] [--quick]

One in-memory Tansu broker, SecantusDB holding one active subscription per market (inserted
in bulk with `insert_many`) and a `FakePolymarketServer` of `--markets` markets in this
process (bench/group_cluster.py). For each instance count N (in `--counts` order, rotated
every round), a fresh consumer group of N real `python -m polymarket_kafka run` processes on
the same machine, on its own state topic of `--partitions` partitions and its own event
topic: KAFKA_GROUP_ID, KAFKA_STATE_TOPIC (exactly once), KAFKA_STANDBY=false,
KAFKA_GROUP_SESSION_TIMEOUT_MS=2000, POLYMARKET_WS_URL="" (REST polling only),
POLL_INTERVAL_SECONDS=`--poll`, the rules of tests/e2e/service_process.py (a 3-point move
fires on the first poll that sees it), STATE_CHECKPOINT_SECONDS=`--checkpoint-seconds` (3600:
no checkpoint inside the measurement; the states of the burst's markets are written with
their events, in the same transactions).

Once the group is stable (every member ready, each partition owned by one member) and every
member ran 2 more poll cycles (the first one loads Gamma metadata), each member is measured
over `--measure` seconds, from a moment between two of its poll cycles to another (its
`snapshots_evaluated_total` unchanged for 0.3 s), by /metrics and /proc/<pid>/stat:

* snapshots judged (`snapshots_evaluated_total`) per second and per poll cycle
  (`poll_cycles_total`), mean poll cycle duration, skipped poll ticks;
* CPU seconds (utime + stime of the process, every thread) and CPU per snapshot.

The sum of the members' snapshots per cycle is the test of the split: the markets (each
market judged by one member), not N times the markets.

Then a burst: every market's price moves `--move` at once (`set_price` on all of them), so
every market fires one event on its owner's next poll. Timed from the moves to the last
acknowledgement (the members' `events_published_total`, sampled every 0.2 s), and from the
first to the last event's `published_at` (the events read back from Kafka: every market
exactly once, no duplicates; events/s = events / that span), with the members' CPU from the
moves to the last acknowledgement per event (the poll cycles meanwhile included). Prints a
table per N and a summary. Nothing asserts on it; `--quick` is a small trial (3,000
markets, 5 s polls, 15 s windows).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from group_cluster import Cluster, Instance, load, open_cluster

from polymarket_kafka.testing.local_broker import create_topic, read_events

EVENT_PARTITIONS = 6


@dataclass
class Member:
    """One instance's figures over its measurement window."""

    name: str
    partitions: int
    seconds: float = 0.0
    snapshots: float = 0.0
    cycles: float = 0.0
    cpu: float = 0.0
    cycle_seconds: float = 0.0
    skipped: float = 0.0
    events: float = 0.0

    @property
    def per_second(self) -> float:
        return self.snapshots / self.seconds

    @property
    def per_cycle(self) -> float:
        return self.snapshots / self.cycles if self.cycles else float("nan")


@dataclass
class Burst:
    events: int = 0
    distinct: int = 0
    duplicates: int = 0
    to_all_acked: float = float("nan")
    first_acked: float = float("nan")
    published_span: float = float("nan")
    cpu: float = 0.0
    per_member: list[float] = field(default_factory=list)


@dataclass
class Run:
    count: int
    members: list[Member]
    burst: Burst
    warnings: Counter[str]


def _idle_sample(instance: Instance) -> tuple[float, dict[str, float], float]:
    """(time, metrics, CPU) at a moment the instance is between poll cycles."""
    deadline = time.monotonic() + 30
    before = instance.metrics()
    while True:
        time.sleep(0.3)
        at, cpu, after = time.monotonic(), instance.cpu_seconds(), instance.metrics()
        if after["snapshots_evaluated_total"] == before["snapshots_evaluated_total"]:
            return at, after, cpu
        if time.monotonic() > deadline:
            return at, after, cpu
        before = after


def wait_stable(members: Sequence[Instance], partitions: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        owned: list[int] = []
        ok = True
        for member in members:
            if not member.alive():
                raise RuntimeError(f"{member.name} exited:\n{member.tail()}")
            member.read_log()
            if member.port is None:
                ok = False
                break
            ready, parts = member.ready()
            ok = ok and ready and bool(parts)
            owned.extend(parts)
        if ok and sorted(owned) == list(range(partitions)):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"group not stable: owned {sorted(owned)}")
        time.sleep(0.2)


def wait_cycles(members: Sequence[Instance], cycles: int, timeout: float) -> None:
    start = {m.name: m.metrics()["poll_cycles_total"] for m in members}
    deadline = time.monotonic() + timeout
    while any(m.metrics()["poll_cycles_total"] < start[m.name] + cycles for m in members):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {cycles} poll cycles within {timeout:g} s")
        time.sleep(0.5)


def run_count(cluster: Cluster, count: int, args: argparse.Namespace, base: list[float]) -> Run:
    markets = cluster.fake.markets
    for market, price in zip(markets, base, strict=True):
        cluster.fake.set_price(market.condition_id, price)
    topic = f"bench-split-{uuid.uuid4().hex[:6]}-n{count}"
    create_topic(cluster.bootstrap_servers, topic, partitions=EVENT_PARTITIONS)
    env = cluster.env(
        topic,
        KAFKA_STATE_TOPIC=f"{topic}.state",
        KAFKA_STATE_PARTITIONS=str(args.partitions),
        KAFKA_GROUP_ID=topic,
        KAFKA_GROUP_SESSION_TIMEOUT_MS="2000",
        KAFKA_STANDBY="false",
        POLL_INTERVAL_SECONDS=str(args.poll),
        STATE_CHECKPOINT_SECONDS=str(args.checkpoint_seconds),
    )
    members = [cluster.start(f"n{count}-{k + 1}", env) for k in range(count)]
    try:
        wait_stable(members, args.partitions)
        wait_cycles(members, 2, timeout=args.poll * 6 + 120)
        owned = {m.name: len(m.ready()[1]) for m in members}
        starts = {m.name: _idle_sample(m) for m in members}
        time.sleep(args.measure)
        figures = []
        for member in members:
            t0, m0, c0 = starts[member.name]
            t1, m1, c1 = _idle_sample(member)
            count_ = (
                m1["poll_cycle_duration_seconds_count"] - m0["poll_cycle_duration_seconds_count"]
            )
            figures.append(
                Member(
                    member.name,
                    owned[member.name],
                    seconds=t1 - t0,
                    snapshots=m1["snapshots_evaluated_total"] - m0["snapshots_evaluated_total"],
                    cycles=m1["poll_cycles_total"] - m0["poll_cycles_total"],
                    cpu=c1 - c0,
                    cycle_seconds=(
                        m1["poll_cycle_duration_seconds_sum"]
                        - m0["poll_cycle_duration_seconds_sum"]
                    )
                    / count_
                    if count_
                    else float("nan"),
                    skipped=m1["poll_ticks_skipped_total"] - m0["poll_ticks_skipped_total"],
                )
            )
        burst = run_burst(cluster, members, topic, args, base)
        for member, figure in zip(members, figures, strict=True):
            figure.events = member.metrics()["events_published_total"]
    finally:
        for member in members:
            member.stop()
    warnings: Counter[str] = Counter()
    for member in members:
        for line in member.lines:
            if line.level in ("WARNING", "ERROR", "CRITICAL", "RAW"):
                warnings[f"{line.level} {line.logger}: {line.message[:100]}"] += 1
    return Run(count, figures, burst, warnings)


def run_burst(
    cluster: Cluster,
    members: Sequence[Instance],
    topic: str,
    args: argparse.Namespace,
    base: list[float],
) -> Burst:
    burst = Burst()
    markets = cluster.fake.markets
    before = sum(m.metrics()["events_published_total"] for m in members)
    cpu0 = sum(m.cpu_seconds() for m in members)
    started = time.monotonic()
    for market, price in zip(markets, base, strict=True):
        cluster.fake.set_price(market.condition_id, round(price + args.move, 4))
    total, last_change = before, started
    deadline = started + args.poll * 3 + 120
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = time.monotonic()
        acked = sum(m.metrics()["events_published_total"] for m in members)
        if acked > before and burst.first_acked != burst.first_acked:
            burst.first_acked = now - started
        if acked != total:
            total, last_change = acked, now
        if total - before >= len(markets) or (
            total > before and now - last_change > args.poll * 2 + 5
        ):
            break
    burst.to_all_acked = last_change - started
    burst.cpu = sum(m.cpu_seconds() for m in members) - cpu0
    messages = read_events(
        cluster.bootstrap_servers, topic, expected=len(markets), timeout=120, linger=2
    )
    keys = Counter(m.key for m in messages)
    burst.events = len(messages)
    burst.distinct = len(keys)
    burst.duplicates = sum(c - 1 for c in keys.values() if c > 1)
    stamps = []
    for message in messages:
        value = json.loads(message.value or b"{}")
        stamp = value.get("published_at")
        if isinstance(stamp, str):
            stamps.append(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())
    if len(stamps) > 1:
        burst.published_span = max(stamps) - min(stamps)
    return burst


def report(runs: Sequence[Run], markets: int, args: argparse.Namespace) -> None:
    for run in runs:
        print()
        print(f"N = {run.count} instance{'s' if run.count > 1 else ''}:")
        print(
            f"  {'instance':<9} {'parts':>5} {'window':>7} {'cycles':>6} {'snap/cycle':>10} "
            f"{'snap/s':>8} {'cycle s':>7} {'skipped':>7} {'CPU s':>6} {'CPU %':>6} "
            f"{'us/snap':>7} {'events':>7}"
        )
        for m in run.members:
            print(
                f"  {m.name:<9} {m.partitions:>5} {m.seconds:>6.1f}s {m.cycles:>6.0f} "
                f"{m.per_cycle:>10,.0f} {m.per_second:>8,.0f} {m.cycle_seconds:>7.2f} "
                f"{m.skipped:>7.0f} {m.cpu:>6.2f} {100 * m.cpu / m.seconds:>5.1f}% "
                f"{1e6 * m.cpu / m.snapshots if m.snapshots else float('nan'):>7.0f} "
                f"{m.events:>7,.0f}"
            )
        b = run.burst
        print(
            f"  burst: {b.events:,} events read back ({b.distinct:,} markets, "
            f"{b.duplicates} duplicates); first acknowledged {b.first_acked:.1f} s and all "
            f"{b.to_all_acked:.1f} s after the moves; published_at span {b.published_span:.2f} s; "
            f"CPU of the members meanwhile {b.cpu:.1f} s"
        )
        for text, count in run.warnings.most_common(8):
            print(f"  log: {count} x {text}")
    print()
    print(
        f"summary ({markets:,} markets, poll every {args.poll:g} s; snapshots/s and CPU over "
        "each member's window; events/s = events / published_at span of the burst; burst "
        "CPU/event = all members' CPU from the moves to the last acknowledgement / events)"
    )
    print(
        f"{'N':>2} {'snap/s per instance':<26} {'sum snap/s':>10} {'sum snap/cycle':>14} "
        f"{'x markets':>9} {'CPU %':>6} {'CPU us/snap':>11} {'burst events':>12} "
        f"{'events/s':>9} {'moves->all acked':>16} {'burst CPU/event':>15}"
    )
    for run in runs:
        members = run.members
        per = " + ".join(f"{m.per_second:,.0f}" for m in members)
        total_rate = sum(m.per_second for m in members)
        per_cycle = sum(m.per_cycle for m in members)
        cpu_share = sum(m.cpu / m.seconds for m in members)
        snaps = sum(m.snapshots for m in members)
        cpu = sum(m.cpu for m in members)
        b = run.burst
        rate = b.events / b.published_span if b.published_span > 0 else float("nan")
        print(
            f"{run.count:>2} {per:<26} {total_rate:>10,.0f} {per_cycle:>14,.0f} "
            f"{per_cycle / markets:>8.2f}x {100 * cpu_share:>5.0f}% "
            f"{1e6 * cpu / snaps if snaps else float('nan'):>11.0f} "
            f"{b.events:>12,} {rate:>9,.0f} {b.to_all_acked:>15.1f}s "
            f"{1000 * b.cpu / b.events if b.events else float('nan'):>12.2f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markets", type=int, default=30_000)
    parser.add_argument("--counts", default="1,2,3", help="instance counts, in order")
    parser.add_argument("--poll", type=float, default=10.0, help="POLL_INTERVAL_SECONDS")
    parser.add_argument("--measure", type=float, default=40.0, help="seconds per member")
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--checkpoint-seconds", type=float, default=3600.0)
    parser.add_argument("--move", type=float, default=0.10, help="the burst's price move")
    parser.add_argument("--rounds", type=int, default=1, help="passes over --counts, rotated")
    parser.add_argument("--logs", type=Path, help="keep the instances' logs in this folder")
    parser.add_argument(
        "--quick", action="store_true", help="a small trial: 3,000 markets, 5 s polls, 15 s"
    )
    args = parser.parse_args()
    if args.quick:
        args.markets, args.poll, args.measure = 3000, 5.0, 15.0
    counts = [int(c) for c in args.counts.split(",")]
    began = time.monotonic()
    print(f"group_split: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {load()}")
    runs: list[Run] = []
    with open_cluster(args.markets, args.logs) as cluster:
        inserted = cluster.subscribe_all()
        base = [float(cluster.fake.price(m.condition_id)) for m in cluster.fake.markets]
        print(
            f"{args.markets:,} subscriptions inserted in {inserted:.1f} s; poll every "
            f"{args.poll:g} s, {args.measure:g} s measured per member, {args.partitions} "
            f"partitions, burst move {args.move:+g}"
        )
        for round_ in range(args.rounds):
            shift = round_ % len(counts)
            for count in counts[shift:] + counts[:shift]:
                run = run_count(cluster, count, args, base)
                runs.append(run)
                print(
                    f"  N={count}: {sum(m.per_second for m in run.members):,.0f} snapshots/s, "
                    f"{sum(m.per_cycle for m in run.members):,.0f} per cycle, burst "
                    f"{run.burst.events:,} events; {load()}",
                    flush=True,
                )
    report(sorted(runs, key=lambda r: r.count), args.markets, args)
    if args.rounds > 1:
        print()
        for count in counts:
            mine = [r for r in runs if r.count == count]
            cpu = [
                sum(m.cpu for m in r.members) / sum(m.snapshots for m in r.members) for r in mine
            ]
            print(f"N={count}: median CPU per snapshot {statistics.median(cpu) * 1e6:.0f} us")
    print()
    print(f"(benchmark took {time.monotonic() - began:.0f} s; at the end: {load()})")


if __name__ == "__main__":
    main()
