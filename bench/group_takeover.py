"""Partition takeover after `kill -9` in a consumer group, with and without standby.

    .venv/bin/python bench/group_takeover.py [--markets 10000] [--history 4] [--kills 10]
        [--instances 3] [--session-ms 2000] [--partitions 12] [--poll 10] [--quick]

Two groups of `--instances` real `python -m polymarket_kafka run` processes run side by side
on one in-memory Tansu broker, SecantusDB and a fake Polymarket (bench/group_cluster.py):
group `plain` (KAFKA_STANDBY=false) and group `standby` (KAFKA_STANDBY=true), each on its own
state topic of `--partitions` partitions, both polling the same `--markets` markets every
`--poll` s (REST only). `KAFKA_GROUP_SESSION_TIMEOUT_MS=--session-ms` (2000 by default: a
short timeout, so a kill is noticed quickly; the service's default is 10000).

The state topics are filled before the instances start, so a restore has something to read:
the service's own poller takes one snapshot of every fake market, the service's `Detector`
(with the rules the instances run) observes a quiet 2-hour history of each market at 2-minute
steps ending now at the fake's current price (a full window: about 1.6 KB per record, the
steady-state size of bench/state_size.py), and `detector_state.encode` of each market's
exported state is written with the service's `StateWriter` `1 + --history` times: the last
copy is the live record, the `--history` earlier ones stand for the superseded checkpoints a
state topic still holds until compaction (Kafka never compacts the active segment; Tansu
never compacts). A restore without standby reads all of them; the standby has read them
already. `STATE_CHECKPOINT_SECONDS=--checkpoint-seconds` (600 by default: longer than the
run, so the topics keep the size written above; the records per topic are counted by a
consumer of this process and printed at every kill).

Then `--kills` times per mode, alternating the modes (plain then standby, then standby then
plain, ...): wait until the group is stable (every member ready, the partitions owned once
each), `--settle` s more, `kill -9` the group's oldest member, and time:

* (a) **kill -> served**: from the kill (wall clock, just before SIGKILL) to the last of the
  survivors' log lines `partitions ... taken over in ...` covering the victim's partitions
  (`polymarket_kafka.service.sharding`, log timestamps in ms; readiness is then checked to
  list them as owned). Dominated by the session timeout: **kill -> assigned** (the first
  survivor's `consumer group ...: partitions ... assigned` line) is shown apart.
* (b) **takeover**: the `taken over in X s` figure of each survivor's line (from the
  assignment to serving: fencing the old owner's producers, `fenced in`, then the
  restore -- reading the partitions' state to a fence and decoding it -- `restore` = X -
  fenced). With standby the read is a catch-up of the tail; the decoding is the same.

After each kill a new instance is started in the group (so it has `--instances` members
again: 2 while a kill is served) and the group waits to be stable; its own takeover (joining:
partitions revoked from the others and handed to it) is timed too, as **join**. Medians and
p99 (linear between ranks: of 10 kills, p99 is almost the max) per mode; WARNING and worse
log lines of every instance are summarised at the end. Nothing asserts on timings; a kill
whose partitions are not served within 60 s is reported as a failure. `--quick` is a small
trial: 1,000 markets, one copy of each record, 3 kills per mode (about 2.5 minutes).
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from group_cluster import (
    Cluster,
    Instance,
    LogLine,
    StateCounter,
    load,
    open_cluster,
    percentile,
)

from polymarket_kafka.config import KafkaConfig
from polymarket_kafka.detection import Detector
from polymarket_kafka.detector_state import MarketState, encode
from polymarket_kafka.kafka.state_topic import StateWriter, ensure_state_topic
from polymarket_kafka.models import MarketSnapshot
from polymarket_kafka.polymarket.client import open_polymarket_client
from polymarket_kafka.polymarket.poller import MarketPoller
from polymarket_kafka.service.reloader import RulesHolder
from polymarket_kafka.testing.fake_polymarket import FakePolymarketServer
from polymarket_kafka.testing.local_broker import create_topic

MODES = ("plain", "standby")
SERVE_TIMEOUT = 60.0
_ASSIGNED = re.compile(r"partitions ([\d,]+) assigned$")
_TAKEN = re.compile(
    r"^partitions ([\d,]+) taken over in ([\d.]+)s \(fenced in ([\d.]+)s, (\d+) markets restored\)"
)


def _partitions(text: str) -> frozenset[int]:
    return frozenset(int(p) for p in text.split(","))


# --- the state topics ------------------------------------------------------------------------


async def _snapshots(fake: FakePolymarketServer) -> list[MarketSnapshot]:
    async with open_polymarket_client(fake.polymarket_config()) as client:
        poller = MarketPoller(client, metadata_refresh_seconds=300.0)
        result = await poller.poll_once(fake.subscriptions(), datetime.now(UTC))
    return result.snapshots


def build_states(fake: FakePolymarketServer, rules_path: Path) -> tuple[list[bytes], int]:
    """Each fake market's record: its exported detector state after a quiet full window of
    history ending now at its current price. Returns the records and the observations fed."""
    snapshots = anyio.run(_snapshots, fake)
    rules = RulesHolder.from_path(rules_path).current
    window = rules.resolve(snapshots[0]).params.window_seconds
    step = window / 60
    detector, rng, fired = Detector(), random.Random(7), 0
    offsets = dict.fromkeys((s.market_id for s in snapshots), 0.0)
    end = datetime.now(UTC)
    steps = 61
    for k in range(steps, 0, -1):  # oldest first; the last one at the current price
        at = end - timedelta(seconds=step * (k - 1))
        for snapshot in snapshots:
            offset = offsets[snapshot.market_id]
            if k > 1:
                offset = min(0.008, max(-0.008, offset + rng.choice((-0.002, 0.0, 0.002))))
            else:
                offset = 0.0
            offsets[snapshot.market_id] = offset
            moved = snapshot.model_copy(
                update={"yes_price": round(snapshot.yes_price + offset, 4), "taken_at": at}
            )
            fired += len(detector.observe(moved, rules, at))
    records = []
    for snapshot in snapshots:
        state = detector.export_state(snapshot.market_id)
        if not isinstance(state, MarketState):
            raise RuntimeError(f"no state for {snapshot.market_id}: {state!r}")
        records.append(encode(state))
    if fired:
        raise RuntimeError(f"the quiet history fired {fired} events")
    return records, steps * len(snapshots)


def fill_state_topic(
    bootstrap_servers: str,
    topic: str,
    partitions: int,
    ids: Sequence[str],
    records: Sequence[bytes],
    copies: int,
) -> float:
    """Write every record `copies` times (the last copy is the live one); seconds."""
    kafka = KafkaConfig(
        bootstrap_servers=bootstrap_servers, state_topic=topic, state_partitions=partitions
    )
    ensure_state_topic(kafka)
    writer = StateWriter(kafka)
    started = time.perf_counter()
    pairs = list(zip(ids, records, strict=True))
    for _ in range(copies):
        failed = writer.write(pairs, timeout=300)
        if failed:
            raise RuntimeError(f"{len(failed)} state records of {topic} not written")
    writer.close()
    return time.perf_counter() - started


# --- the groups ------------------------------------------------------------------------------


@dataclass
class Takeover:
    """One `taken over` line."""

    seconds: float
    fenced: float
    markets: int
    partitions: frozenset[int]

    @property
    def restore(self) -> float:
        return self.seconds - self.fenced


@dataclass
class Kill:
    mode: str
    victim: str
    partitions: frozenset[int]
    records: int
    topic_records: int
    assigned: float = float("nan")
    served: float = float("nan")
    takeovers: list[Takeover] = field(default_factory=list)
    owned_after: bool = False
    join_seconds: float = float("nan")
    joins: list[Takeover] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.served == self.served and self.owned_after


@dataclass
class Group:
    mode: str
    cluster: Cluster
    env: dict[str, str]
    topic: str
    partitions: int
    members: list[Instance] = field(default_factory=list)
    started: int = 0
    notes: list[str] = field(default_factory=list)

    def start_member(self) -> Instance:
        self.started += 1
        member = self.cluster.start(f"{self.mode}-{self.started}", self.env)
        self.members.append(member)
        return member

    def wait_stable(self, timeout: float = 120.0) -> dict[str, frozenset[int]]:
        """Until every member is ready and the partitions are owned once each, by all.
        Notes (in `self.notes`) why, when it took more than 15 s."""
        began = time.monotonic()
        why = ""
        while True:
            owned: dict[str, frozenset[int]] = {}
            ok = True
            for member in self.members:
                if not member.alive():
                    raise RuntimeError(f"{member.name} exited:\n{member.tail()}")
                if member.port is None:
                    member.read_log()
                if member.port is None:
                    ok, why = False, f"{member.name} not listening yet"
                    break
                ready, parts, failing = member.readiness()
                owned[member.name] = parts
                if not (ready and parts):
                    ok, why = False, f"{member.name}: {failing or 'owns nothing'}"
            if ok:
                every = [p for parts in owned.values() for p in parts]
                if sorted(every) == list(range(self.partitions)):
                    waited = time.monotonic() - began
                    if waited > 15:
                        self.notes.append(f"group {self.mode} stable after {waited:.1f} s: {why}")
                    return owned
                why = f"partitions owned: {sorted(every)}"
            if time.monotonic() - began > timeout:
                raise TimeoutError(f"group {self.mode} not stable: {why}")
            time.sleep(0.1)


def _takeovers(lines: Sequence[LogLine]) -> list[tuple[float, Takeover]]:
    found = []
    for line in lines:
        message = line.message
        if (match := _TAKEN.match(message)) is not None:
            found.append(
                (
                    line.at,
                    Takeover(
                        float(match[2]), float(match[3]), int(match[4]), _partitions(match[1])
                    ),
                )
            )
    return found


def kill_one(group: Group, counter: StateCounter, settle: float) -> Kill:
    """Kill the oldest member, time its partitions' takeover, start a new member."""
    group.wait_stable()
    time.sleep(settle)
    victim, survivors = group.members[0], group.members[1:]
    _, owned = victim.ready()
    for member in survivors:
        member.read_log()
    marks = {member.name: len(member.lines) for member in survivors}
    kill = Kill(
        group.mode,
        victim.name,
        owned,
        counter.records(group.topic, owned),
        counter.records(group.topic),
    )
    killed_at = victim.kill()
    group.members.remove(victim)
    served: dict[int, float] = {}
    deadline = time.monotonic() + SERVE_TIMEOUT
    while not owned <= served.keys() and time.monotonic() < deadline:
        time.sleep(0.02)
        for member in survivors:
            for at, takeover in _takeovers(member.read_log()):
                for partition in takeover.partitions:
                    served.setdefault(partition, at)
    assigned: list[float] = []
    for member in survivors:
        new = member.lines[marks[member.name] :]
        for line in new:
            if line.logger.endswith("kafka.group") and _ASSIGNED.search(line.message):
                assigned.append(line.at)
        kill.takeovers.extend(takeover for _, takeover in _takeovers(new))
    if assigned:
        kill.assigned = min(assigned) - killed_at
    if owned <= served.keys():
        kill.served = max(served[p] for p in owned) - killed_at
        now_owned = frozenset(p for member in survivors for p in member.ready()[1])
        kill.owned_after = owned <= now_owned
    # Back to full strength: a new member joins and takes its share.
    newcomer = group.start_member()
    started = time.time()
    group.wait_stable()
    kill.join_seconds = time.time() - started
    newcomer.read_log()
    kill.joins = [takeover for _, takeover in _takeovers(newcomer.lines)]
    return kill


# --- reporting -------------------------------------------------------------------------------


def _ms(values: Sequence[float]) -> str:
    good = [v for v in values if v == v]
    if not good:
        return "-"
    return f"{statistics.median(good) * 1000:6.0f} / {percentile(good, 99) * 1000:6.0f}"


def report(kills: Sequence[Kill], args: argparse.Namespace) -> None:
    print()
    print(
        f"{'#':>3} {'mode':<8} {'victim':<10} {'parts':>5} {'records':>8} "
        f"{'->assigned':>10} {'->served':>9} {'join':>6}  "
        "taken over in s (fenced + restore, markets restored), per survivor"
    )
    for number, kill in enumerate(kills, 1):
        figures = ", ".join(
            f"{t.seconds:.2f} ({t.fenced:.2f}+{t.restore:.2f}, {t.markets})" for t in kill.takeovers
        )
        print(
            f"{number:>3} {kill.mode:<8} {kill.victim:<10} {len(kill.partitions):>5} "
            f"{kill.records:>8,} {kill.assigned:>9.2f}s {kill.served:>8.2f}s "
            f"{kill.join_seconds:>5.1f}s  {figures}" + ("" if kill.ok else "  FAILED")
        )
    print()
    print(
        "p50 / p99 in ms over the kills (takeover, fenced, restore: over the survivors' "
        "`taken over` lines)"
    )
    print(
        f"{'mode':<8} {'kills':>5} {'lines':>5} {'records/kill':>12} "
        f"{'(a) kill->served':>17} {'kill->assigned':>15} {'(b) takeover':>15} "
        f"{'fenced':>15} {'restore':>15} {'join takeover':>15}"
    )
    for mode in MODES:
        mine = [k for k in kills if k.mode == mode]
        if not mine:
            continue
        lines = [t for k in mine for t in k.takeovers]
        joins = [t for k in mine for t in k.joins]
        print(
            f"{mode:<8} {len(mine):>5} {len(lines):>5} "
            f"{statistics.median(k.records for k in mine):>12,.0f} "
            f"{_ms([k.served for k in mine]):>17} {_ms([k.assigned for k in mine]):>15} "
            f"{_ms([t.seconds for t in lines]):>15} {_ms([t.fenced for t in lines]):>15} "
            f"{_ms([t.restore for t in lines]):>15} {_ms([t.seconds for t in joins]):>15}"
        )
    failed = [k for k in kills if not k.ok]
    if failed:
        print(
            f"FAILED: {len(failed)} kills whose partitions were not served within "
            f"{SERVE_TIMEOUT:g} s or not listed as owned by readiness afterwards"
        )


def warnings_summary(instances: Sequence[Instance]) -> None:
    seen: Counter[str] = Counter()
    for instance in instances:
        instance.read_log()
        for line in instance.lines:
            if line.level in ("WARNING", "ERROR", "CRITICAL", "RAW"):
                text = re.sub(r"\d+", "N", line.message)[:110]
                seen[f"{line.level} {line.logger}: {text}"] += 1
    print()
    print(f"WARNING and worse log lines of the {len(instances)} instances (digits as N):")
    if not seen:
        print("  none")
    for text, count in seen.most_common(25):
        print(f"  {count:>5} x {text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markets", type=int, default=10_000)
    parser.add_argument("--history", type=int, default=4, help="superseded copies per record")
    parser.add_argument("--kills", type=int, default=10, help="kills per mode")
    parser.add_argument("--instances", type=int, default=3, help="members per group")
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--session-ms", type=int, default=2000)
    parser.add_argument("--poll", type=float, default=10.0, help="POLL_INTERVAL_SECONDS")
    parser.add_argument("--checkpoint-seconds", type=float, default=600.0)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds stable before a kill")
    parser.add_argument("--logs", type=Path, help="keep the instances' logs in this folder")
    parser.add_argument(
        "--quick", action="store_true", help="a small trial: 1,000 markets, 1 copy, 3 kills"
    )
    args = parser.parse_args()
    if args.quick:
        args.markets, args.history, args.kills = 1000, 0, 3
    began = time.monotonic()
    print(f"group_takeover: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {load()}")
    with open_cluster(args.markets, args.logs) as cluster:
        cluster.subscribe_all()
        rules = cluster.workdir / "rules.yaml"
        cluster.env("unused")  # writes the rules the instances run
        started = time.perf_counter()
        records, observed = build_states(cluster.fake, rules)
        built = time.perf_counter() - started
        ids = [m.condition_id for m in cluster.fake.markets]
        size = sum(len(r) for r in records) / len(records)
        run = uuid.uuid4().hex[:6]
        groups: dict[str, Group] = {}
        wrote = 0.0
        for mode in MODES:
            topic = f"bench-{run}-{mode}"
            create_topic(cluster.bootstrap_servers, topic, partitions=3)
            wrote += fill_state_topic(
                cluster.bootstrap_servers,
                f"{topic}.state",
                args.partitions,
                ids,
                records,
                1 + args.history,
            )
            env = cluster.env(
                topic,
                KAFKA_STATE_TOPIC=f"{topic}.state",
                KAFKA_STATE_PARTITIONS=str(args.partitions),
                KAFKA_GROUP_ID=f"bench-{run}-{mode}",
                KAFKA_GROUP_SESSION_TIMEOUT_MS=str(args.session_ms),
                KAFKA_STANDBY="true" if mode == "standby" else "false",
                POLL_INTERVAL_SECONDS=str(args.poll),
                STATE_CHECKPOINT_SECONDS=str(args.checkpoint_seconds),
            )
            groups[mode] = Group(mode, cluster, env, f"{topic}.state", args.partitions)
        print(
            f"{args.markets:,} markets; {args.partitions} partitions; state records of "
            f"{size:,.0f} bytes built from {observed:,} observations in {built:.1f} s; "
            f"{1 + args.history} copies written to each state topic in {wrote / 2:.1f} s "
            f"({args.markets * (1 + args.history):,} records, "
            f"{args.markets * (1 + args.history) * size / 1e6:.0f} MB per topic)"
        )
        print(
            f"{args.instances} instances per group, session timeout {args.session_ms} ms, "
            f"poll every {args.poll:g} s, checkpoints every {args.checkpoint_seconds:g} s, "
            f"{args.kills} kills per mode, {args.settle:g} s stable before each"
        )
        counter = StateCounter(
            cluster.bootstrap_servers, [g.topic for g in groups.values()], args.partitions
        )
        for group in groups.values():
            for _ in range(args.instances):
                group.start_member()
        for group in groups.values():
            group.wait_stable()
        time.sleep(args.poll)  # a poll cycle of every member
        kills: list[Kill] = []
        for round_ in range(args.kills):
            order = MODES if round_ % 2 == 0 else MODES[::-1]
            for mode in order:
                kill = kill_one(groups[mode], counter, args.settle)
                kills.append(kill)
                print(
                    f"  kill {len(kills):>2} ({mode:<7}): served in {kill.served:.2f} s, "
                    f"takeovers {', '.join(f'{t.seconds:.2f}' for t in kill.takeovers)} s, "
                    f"join {kill.join_seconds:.1f} s",
                    flush=True,
                )
        counter.close()
        report(kills, args)
        for group in groups.values():
            for note in group.notes:
                print(f"note: {note}")
        every = list(cluster.instances)
        for instance in every:
            instance.stop()
        warnings_summary(every)
    print()
    print(f"(benchmark took {time.monotonic() - began:.0f} s; at the end: {load()})")


if __name__ == "__main__":
    main()
