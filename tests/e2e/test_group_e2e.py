"""Several instances sharing the markets through a consumer group (`KAFKA_GROUP_ID`).

Each test runs real `polymarket-kafka run` processes against a fresh Tansu broker, the
session's MongoDB server and a fake Polymarket, with a compacted state topic of
`PARTITIONS` partitions and exactly-once delivery (the default). Every instance serves its
own ops port (`HTTP_PORT=0`: the port it bound is read from its log line, so parallel tests
never race for one); the tests read who owns what from `/health/ready` (component "group",
extra `owned`) and which markets each watches from `/api/markets`, and check on the events
topic, with a `read_committed` consumer, that every move 0.40 -> 0.75 is there exactly once.

Timings: the group session timeout is `SESSION_TIMEOUT_MS` (Tansu holds a first assignment
for half of it). A partition of a killed instance moves once the broker expires the
session, the survivors' rebalance completes, and each survivor fences the partition's
producer and restores its state. Measured on a 2-core machine: plain librdkafka consumers on
Tansu are reassigned a killed member's partitions 3.1-3.6 s after the kill (the broker
expires a session 1-1.5 s after its timeout); the service's survivors have fenced and
restored them (component "group" ok, `owned` covering) 3.2-4.9 s after it, 0.3-0.8 s of
that fencing and restoring. `TAKEOVER_MARGIN_SECONDS` (10 s over the session timeout) is
more than twice that, for a machine shared with other test workers. The takeover is judged
on the component "group".

Tansu quirk that decides how the kill is timed: a transactional producer killed while its
commit is under way can leave that transaction half visible to `read_committed` consumers
(some partitions' records shown, others not: a probe killing a producer around its commits
found 1 such transaction in 30 kills), where Kafka's coordinator completes the commit on
its own. So the instance killed mid-burst holds its transactions open
(`KAFKA_TRANSACTION_LINGER_MS` of 10 min, no checkpoints): it is killed with moves detected
and uncommitted -- the case that matters -- and never inside a commit.
"""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import pytest

from polymarket_kafka.clock import now_utc
from polymarket_kafka.config import KafkaConfig, MongoConfig
from polymarket_kafka.kafka.partition import partition_for
from polymarket_kafka.kafka.state_topic import StateTopicError, read_state
from polymarket_kafka.models import PolymarketEvent
from polymarket_kafka.subscriptions import open_subscription_store
from polymarket_kafka.testing.fake_polymarket import FakePolymarketServer
from polymarket_kafka.testing.local_broker import (
    ConsumedMessage,
    create_topic,
    open_tansu_broker,
    read_events,
)
from tests.e2e.service_process import service_env

pytestmark = [pytest.mark.broker, pytest.mark.mongo_server]

T = TypeVar("T")
logger = logging.getLogger(__name__)

SESSION_TIMEOUT_MS = 2000
SESSION_SECONDS = SESSION_TIMEOUT_MS / 1000
PARTITIONS = 12
ALL_PARTITIONS = frozenset(range(PARTITIONS))
#: Beyond the session timeout, what a takeover may take on a busy machine (see the notes).
TAKEOVER_MARGIN_SECONDS = 10.0
#: Starting instances, joining, restoring, first polls: generous, a shared 2-core machine.
START_SECONDS = 60.0
BEFORE, AFTER = 0.40, 0.75

_LISTENING = re.compile(r"health/metrics on http://127\.0\.0\.1:(\d+)")
#: How an instance says it stepped down from partitions another instance owns now.
_STEPPED_DOWN = re.compile(r"partitions [\d,]+ lost: |fenced: partition \d+ of ")


# --- one instance ---------------------------------------------------------------------------


@dataclass
class Instance:
    """One `polymarket-kafka run` process, its log file and (once it listens) its ops port."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    port: int = 0
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=2.0))

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def alive(self) -> bool:
        return self.process.poll() is None

    def get(self, path: str) -> dict[str, Any] | None:
        """The JSON body of `path` (whatever the status: /health/ready answers 503 with
        one), or None when the instance does not answer (frozen, stopping)."""
        try:
            body: dict[str, Any] = self.http.get(f"http://127.0.0.1:{self.port}{path}").json()
        except (httpx.HTTPError, ValueError):
            return None
        return body

    def ready(self) -> bool:
        body = self.get("/health/ready")
        return body is not None and body.get("status") == "ok"

    def owned(self) -> frozenset[int] | None:
        """The partitions the instance owns, from its readiness component "group" when that
        is ok (joined, nothing being restored), else None."""
        body = self.get("/health/ready")
        group = None if body is None else body.get("components", {}).get("group")
        if group is None or group.get("status") != "ok":
            return None
        return frozenset(group["owned"])

    def markets(self) -> frozenset[str] | None:
        body = self.get("/api/markets")
        return None if body is None else frozenset(m["market_id"] for m in body["markets"])


class Group:
    """The instances of one test: started with the same environment, each its own log."""

    def __init__(
        self, env: dict[str, str], workdir: Path, markets: frozenset[str], stack: ExitStack
    ) -> None:
        self.env = env
        self.workdir = workdir
        #: Every market subscribed.
        self.markets = markets
        self.instances: list[Instance] = []
        stack.callback(self.kill_all)

    def start(self, **env: str) -> Instance:
        """Start one more instance (`env`: variables of its own over the group's)."""
        name = f"i{len(self.instances)}"
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:  # a file, never a pipe: a full pipe would block it
            process = subprocess.Popen(
                [sys.executable, "-m", "polymarket_kafka", "run"],
                env={**self.env, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        instance = Instance(name, process, log)
        self.instances.append(instance)
        return instance

    def listening(self, instance: Instance) -> None:
        """Wait until `instance` logs the port its ops server bound."""

        def port() -> int | None:
            assert instance.alive(), f"{instance.name} exited:\n{instance.tail()}"
            match = _LISTENING.search(instance.log_text())
            return None if match is None else int(match[1])

        instance.port = wait_for(port, 30, f"{instance.name} never listened", self)

    def describe(self) -> str:
        """Who owns what and the end of every log, for a failure's message."""
        parts = []
        for instance in self.instances:
            state = "alive" if instance.alive() else f"exited {instance.process.returncode}"
            owned = instance.owned() if instance.alive() else None
            parts.append(f"--- {instance.name} ({state}, owns {owned}):\n{instance.tail(25)}")
        return "\n".join(parts)

    def stop(self, instances: Iterable[Instance]) -> None:
        """SIGTERM, then each must stop cleanly: exit 0, every event acknowledged."""
        stopping = list(instances)
        for instance in stopping:
            instance.process.send_signal(signal.SIGTERM)
        for instance in stopping:
            try:
                instance.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{instance.name} did not stop\n{self.describe()}")
            assert instance.process.returncode == 0, instance.tail()

    def kill_all(self) -> None:
        for instance in self.instances:
            instance.http.close()
            if instance.alive():
                instance.process.send_signal(signal.SIGCONT)  # a frozen one dies too
                instance.process.kill()
            instance.process.wait(timeout=30)


def wait_for(
    condition: Callable[[], T | None], seconds: float, failure: str, group: Group | None = None
) -> T:
    """Poll `condition` every 0.1 s until it returns something true (not None, False or
    empty); fail with `failure` (and who owns what, and the logs) after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{failure} within {seconds:g}s\n{group.describe() if group else ''}")
        time.sleep(0.1)


# --- what the group looks like --------------------------------------------------------------


def split(owned: Sequence[frozenset[int] | None]) -> bool:
    """Every partition owned by exactly one of the instances (None: an instance whose
    component "group" is not ok, e.g. still restoring)."""
    if any(o is None for o in owned):
        return False
    sets = [o for o in owned if o is not None]
    return sum(len(o) for o in sets) == PARTITIONS and frozenset().union(*sets) == ALL_PARTITIONS


def settled(instances: Sequence[Instance], *, ready: bool = True) -> list[frozenset[int]] | None:
    """The partitions each of `instances` owns, once they split them all (each with its
    partitions restored) and, with `ready`, every one of them is ready; else None."""
    owned = [i.owned() for i in instances]
    if not split(owned) or (ready and not all(i.ready() for i in instances)):
        return None
    return [o for o in owned if o is not None]


def markets_split(instances: Sequence[Instance], markets: frozenset[str]) -> bool:
    """Each market watched (on the dashboard) by exactly one of `instances`."""
    watched = [i.markets() for i in instances]
    if any(w is None for w in watched):
        return False
    sets = [w for w in watched if w is not None]
    return sum(len(w) for w in sets) == len(markets) and frozenset().union(*sets) == markets


def markets_of(partitions: Iterable[int], server: FakePolymarketServer) -> list[str]:
    """The markets whose state-topic partition (murmur2 of the id) is one of `partitions`."""
    wanted = set(partitions)
    return [
        m.condition_id
        for m in server.markets
        if partition_for(m.condition_id.encode(), PARTITIONS) in wanted
    ]


def wait_until_settled(
    group: Group, instances: Sequence[Instance], *, ready: bool = True
) -> list[frozenset[int]]:
    """Wait until `instances` split the partitions (and, with `ready`, are ready), then until
    each market is watched by exactly one of them; the partitions each owns."""
    owned = wait_for(
        lambda: settled(instances, ready=ready),
        START_SECONDS,
        "the instances never split the partitions",
        group,
    )
    wait_for(
        lambda: markets_split(instances, group.markets),
        30,
        "the markets were never watched by exactly one instance each",
        group,
    )
    return owned


# --- the setting of one test ----------------------------------------------------------------


@dataclass
class Setting:
    """A broker, an events topic, the fake Polymarket with every market subscribed, and the
    group of instances on them."""

    server: FakePolymarketServer
    bootstrap: str
    topic: str
    state: KafkaConfig
    group: Group

    def wait_for_states(self) -> None:
        """Wait until the state topic holds a committed record of every market (a move is
        judged against it, whoever owns the market when it moves)."""
        wanted = len(self.server.markets)

        def stored() -> bool:
            try:
                return len(read_state(self.state, timeout=10)) >= wanted
            except StateTopicError:
                return False

        wait_for(stored, 30, "the state of every market was never committed", self.group)

    def move(self, market_ids: Iterable[str]) -> None:
        for market_id in market_ids:
            self.server.set_price(market_id, AFTER)

    def events(self, expected: int) -> list[ConsumedMessage]:
        """The events topic as a read_committed consumer sees it: once `expected` are
        there, 1.5 s more to catch a duplicate."""
        return read_events(self.bootstrap, self.topic, expected=expected, timeout=60, linger=1.5)


@pytest.fixture
def setting_factory(
    mongo_server_uri: str, tmp_path: Path
) -> Iterator[Callable[[int, dict[str, str]], Setting]]:
    with ExitStack() as stack:

        def make(n_markets: int, extra: dict[str, str]) -> Setting:
            server = stack.enter_context(
                FakePolymarketServer(n_markets=n_markets, price=lambda i: BEFORE)
            )
            broker = stack.enter_context(open_tansu_broker())
            topic = f"group-{uuid.uuid4().hex[:8]}"
            create_topic(broker.bootstrap_servers, topic)
            collection = f"subs_{uuid.uuid4().hex[:12]}"
            subscribe(mongo_server_uri, collection, server)
            settings = {
                "KAFKA_STATE_TOPIC": f"{topic}.state",
                "KAFKA_STATE_PARTITIONS": str(PARTITIONS),
                "KAFKA_GROUP_ID": f"g-{topic}",
                "KAFKA_GROUP_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
                "STATE_CHECKPOINT_SECONDS": "0.2",
                "POLL_INTERVAL_SECONDS": "0.2",
                "LOG_FORMAT": "text",
                "LOG_LEVEL": "INFO",
                **extra,
            }
            mongo = (mongo_server_uri, "e2e", collection)
            env = service_env(server, broker.bootstrap_servers, topic, mongo, tmp_path, **settings)
            markets = frozenset(m.condition_id for m in server.markets)
            group = Group(env, tmp_path, markets, stack)
            state = KafkaConfig(
                bootstrap_servers=broker.bootstrap_servers,
                state_topic=f"{topic}.state",
                state_partitions=int(settings["KAFKA_STATE_PARTITIONS"]),
            )
            return Setting(server, broker.bootstrap_servers, topic, state, group)

        yield make


def subscribe(uri: str, collection: str, server: FakePolymarketServer) -> None:
    async def run() -> None:
        config = MongoConfig(uri=uri, database="e2e", collection=collection)
        async with open_subscription_store(config, clock=now_utc) as store:
            for market in server.markets:
                await store.subscribe(market.condition_id)

    anyio.run(run)


def start(group: Group, count: int) -> list[Instance]:
    instances = [group.start() for _ in range(count)]
    for instance in instances:
        group.listening(instance)
    return instances


def each_move_once(messages: list[ConsumedMessage], market_ids: Iterable[str]) -> None:
    """Every market's move 0.40 -> 0.75 is on the topic exactly once: one event per market
    (no second id for the same move), no event_id twice, each from 0.40 to 0.75."""
    events = [PolymarketEvent.model_validate_json(m.value or b"") for m in messages]
    per_market = Counter(event.market_id for event in events)
    twice = {m: n for m, n in per_market.items() if n != 1}
    wanted = set(market_ids)
    assert not twice, f"moves seen more than once: {twice}"
    assert set(per_market) == wanted, (
        f"{len(wanted - set(per_market))} moves missing, "
        f"{len(set(per_market) - wanted)} unexpected markets"
    )
    ids = Counter(event.event_id for event in events)
    assert all(n == 1 for n in ids.values()), "an event_id is on the topic twice"
    assert {(e.baseline_yes_price, e.yes_price) for e in events} == {(BEFORE, AFTER)}
    assert all(m.key == e.market_id.encode() for m, e in zip(messages, events, strict=True))


# --- the tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("standby", [False, True], ids=["restore", "standby"])
def test_three_instances_share_the_markets_and_survive_a_kill_mid_burst(
    setting_factory: Callable[[int, dict[str, str]], Setting],
    standby: bool,
) -> None:
    """300 markets, three instances: the partitions and the markets are split between them
    (disjoint, covering). A burst of moves in two halves, one instance killed (SIGKILL)
    once it has detected some of the first half, uncommitted: its partitions move to the
    two others within the session timeout (+ margin), which detect those moves again from
    the committed state, and every move is on the topic exactly once. With `KAFKA_STANDBY`
    the survivors take over from the state they tailed."""
    setting = setting_factory(300, {"KAFKA_STANDBY": str(standby).lower()})
    group = setting.group
    first = start(group, 3)
    wait_until_settled(group, first)
    setting.wait_for_states()
    # The instance to kill replaces one that stops: it commits nothing from now on (see the
    # module docstring), so its detected moves are uncommitted when it dies.
    group.stop(first[:1])
    victim = group.start(KAFKA_TRANSACTION_LINGER_MS="600000", STATE_CHECKPOINT_SECONDS="600")
    group.listening(victim)
    survivors = first[1:]
    instances = [victim, *survivors]
    owned = wait_until_settled(group, instances)
    assert all(owned), f"an instance owns no partition: {owned}"

    market_ids = [m.condition_id for m in setting.server.markets]
    setting.move(market_ids[:150])
    wait_for(
        lambda: (victim.get("/api/events") or {}).get("events"),
        30,
        "the victim never detected a move",
        group,
    )
    killed_at = time.monotonic()
    victim.process.kill()
    setting.move(market_ids[150:])

    # Taken over: the two split every partition, each restored (component "group" ok).
    after = wait_for(
        lambda: settled(survivors, ready=False),
        SESSION_SECONDS + TAKEOVER_MARGIN_SECONDS + 30,
        "the survivors never took the partitions over",
        group,
    )
    took = time.monotonic() - killed_at
    logger.info("takeover seen %.2fs after the kill (standby=%s)", took, standby)
    assert took < SESSION_SECONDS + TAKEOVER_MARGIN_SECONDS, f"takeover took {took:.1f}s"
    # The victim's partitions are the ones the survivors gained (however the assignor
    # spreads them: both, or one of them).
    gained = frozenset().union(*(now - was for was, now in zip(owned[1:], after, strict=True)))
    assert owned[0] and owned[0] <= gained, (owned, after)

    each_move_once(setting.events(len(market_ids)), market_ids)
    wait_for(lambda: settled(survivors), 30, "the survivors were never ready again", group)
    wait_for(
        lambda: markets_split(survivors, group.markets),
        30,
        "the survivors never watched every market, each once",
        group,
    )
    assert victim.process.wait(timeout=10) == -signal.SIGKILL
    for survivor in survivors:
        assert "taken over in" in survivor.log_text()
    group.stop(survivors)


def test_an_instance_joining_takes_partitions_and_moves_around_it_are_seen_once(
    setting_factory: Callable[[int, dict[str, str]], Setting],
) -> None:
    """Two instances, then a third joins: partitions move to it (the others keep a part of
    theirs, all still disjoint and covering), and moves made before the join, while
    partitions are handed over, and after it are each on the topic exactly once."""
    setting = setting_factory(120, {})
    group = setting.group
    first = start(group, 2)
    before = wait_until_settled(group, first, ready=False)
    setting.wait_for_states()

    market_ids = [m.condition_id for m in setting.server.markets]
    setting.move(market_ids[:40])
    joining = group.start()
    group.listening(joining)
    # While partitions are on their way (revoked by one of the first two, cooperatively).
    wait_for(
        lambda: any("revoked:" in i.log_text() for i in first),
        30,
        "no partition was revoked for the new instance",
        group,
    )
    setting.move(market_ids[40:80])
    everyone = [*first, joining]
    after = wait_until_settled(group, everyone, ready=False)
    setting.move(market_ids[80:])

    assert all(after), f"an instance owns no partition: {after}"
    assert all(now < was for was, now in zip(before, after[:2], strict=True)), (before, after)
    each_move_once(setting.events(len(market_ids)), market_ids)
    assert "taken over in" in joining.log_text()
    group.stop(everyone)


def test_a_frozen_owner_is_fenced_and_publishes_nothing_when_it_wakes(
    setting_factory: Callable[[int, dict[str, str]], Setting],
) -> None:
    """One of three instances frozen (SIGSTOP) for three session timeouts: the others take
    its partitions over and publish the moves of its markets. Woken (SIGCONT), it publishes
    none of them (each move still once on the topic), steps down with a clear line, keeps
    running and rejoins: the three split the partitions again, it with some of them."""
    setting = setting_factory(120, {})
    group = setting.group
    instances = start(group, 3)
    owned = wait_until_settled(group, instances, ready=False)
    setting.wait_for_states()

    frozen, others = instances[0], instances[1:]
    its_markets = markets_of(owned[0], setting.server)
    assert its_markets, "the frozen instance owns no market"
    frozen.process.send_signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    wait_for(
        lambda: settled(others, ready=False), 60, "the others never took its partitions", group
    )
    setting.move(its_markets)
    each_move_once(setting.events(len(its_markets)), its_markets)  # published by the others
    # Frozen for three session timeouts at least (the scenario, not an assertion).
    time.sleep(max(0.0, frozen_at + 3 * SESSION_SECONDS - time.monotonic()))
    frozen.process.send_signal(signal.SIGCONT)

    wait_for(
        lambda: _STEPPED_DOWN.search(frozen.log_text()),
        30,
        "the woken instance never stepped down",
        group,
    )
    wait_for(
        lambda: frozen.owned() and settled(instances, ready=False),
        60,
        "the three never split the partitions again",
        group,
    )
    assert frozen.alive()
    each_move_once(setting.events(len(its_markets)), its_markets)
    assert "Traceback" not in frozen.log_text()
    group.stop(instances)


def test_an_instance_with_no_partition_is_ready_and_lists_no_market(
    setting_factory: Callable[[int, dict[str, str]], Setting],
) -> None:
    """A state topic of one partition, two instances: the one given nothing is a spare,
    ready and saying it owns nothing (component "group" ok, owned []). The owner frozen
    until the spare has taken the partition over, then woken: it has lost everything, so
    it lists no market on its dashboard any more, and is the ready spare now."""
    setting = setting_factory(10, {"KAFKA_STATE_PARTITIONS": "1"})
    group = setting.group
    instances = start(group, 2)

    def owner() -> Instance | None:
        return next((i for i in instances if i.owned() == frozenset({0})), None)

    owning = wait_for(owner, START_SECONDS, "nobody took the partition", group)
    spare = next(i for i in instances if i is not owning)
    # Both were assigned in the same rebalance or, had the spare joined later, in one
    # within a session timeout of its join: its (empty) assignment is long made.
    wait_for(
        lambda: spare.owned() == frozenset() and spare.ready(),
        2 * SESSION_SECONDS + 3,
        "the spare never said it owns no partition",
        group,
    )
    wait_for(lambda: owning.markets() == group.markets, 30, "the owner lists no market", group)

    owning.process.send_signal(signal.SIGSTOP)
    wait_for(lambda: spare.owned(), 60, "the spare never took the partition over", group)
    owning.process.send_signal(signal.SIGCONT)
    wait_for(
        lambda: _STEPPED_DOWN.search(owning.log_text()),
        30,
        "the woken owner never stepped down",
        group,
    )
    # The dashboard's list is rebuilt at most once a second.
    wait_for(
        lambda: owning.markets() == frozenset() and owning.owned() == frozenset(),
        3,
        "the woken owner still lists the markets it lost",
        group,
    )
    wait_for(lambda: markets_split(instances, group.markets), 30, "the markets never moved", group)
    wait_for(owning.ready, 30, "the woken owner is not the ready spare", group)
    group.stop(instances)
