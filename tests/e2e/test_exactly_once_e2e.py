"""Exactly-once delivery with the real command: SIGKILL with events in flight, and fencing.

The service runs as a subprocess (`polymarket-kafka run`) against a real broker (Tansu) and
MongoDB, with a state topic and `KAFKA_DELIVERY=exactly_once` (the default). In the first
test every connection to the broker goes through a `TcpGate` (the broker advertises the
gate's port), so the test can cut Kafka off while moves are detected, kill the service, and
check what a `read_committed` consumer sees after a restart.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from polymarket_kafka.config import KafkaConfig
from polymarket_kafka.kafka.state_topic import StateTopicError, read_state
from polymarket_kafka.models import PolymarketEvent
from polymarket_kafka.testing.fake_polymarket import FakePolymarketServer
from polymarket_kafka.testing.local_broker import (
    ConsumedMessage,
    LocalBroker,
    create_topic,
    open_tansu_broker,
    read_events,
)
from tests.e2e.service_process import running_service, service_env, wait_until_polled
from tests.plugins.tcp_gate import TcpGate

pytestmark = [pytest.mark.broker, pytest.mark.mongo_server]

MARKETS = 4


@pytest.fixture
def server() -> Iterator[FakePolymarketServer]:
    with FakePolymarketServer(n_markets=MARKETS, price=lambda i: 0.40) as fake:
        yield fake


def subscribe_all(env: dict[str, str], server: FakePolymarketServer) -> None:
    for market in server.markets:
        done = subprocess.run(
            [sys.executable, "-m", "polymarket_kafka", "subscribe", market.condition_id],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr


def wait_for_states(config: KafkaConfig, markets: int, process: subprocess.Popen[str]) -> None:
    """Wait (at most 30 s) until the state topic holds a committed record of every market."""
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the service never committed its state"
        with contextlib.suppress(StateTopicError):  # not created by the service yet
            if len(read_state(config, timeout=10)) >= markets:
                return
        time.sleep(0.1)


def point_gate_at(gate: TcpGate, broker: LocalBroker) -> None:
    host, port = broker.bootstrap_servers.rsplit(":", 1)
    gate.open(host, int(port))


def exactly_once_env(
    server: FakePolymarketServer,
    bootstrap: str,
    topic: str,
    mongo_server_uri: str,
    tmp_path: Path,
    **extra: str,
) -> tuple[dict[str, str], KafkaConfig]:
    """The service's environment (a state topic, checkpoints every 0.2 s, every market
    subscribed), and a config to read its state topic with."""
    env = service_env(
        server,
        bootstrap,
        topic,
        (mongo_server_uri, "e2e", f"subs_{uuid.uuid4().hex[:12]}"),
        tmp_path,
        KAFKA_STATE_TOPIC=f"{topic}.state",
        KAFKA_STATE_PARTITIONS="3",
        STATE_CHECKPOINT_SECONDS="0.2",
        **extra,
    )
    subscribe_all(env, server)
    return env, KafkaConfig(bootstrap_servers=bootstrap, state_topic=f"{topic}.state")


def moves_once_each(messages: list[ConsumedMessage], server: FakePolymarketServer) -> None:
    """Each market's move 0.40 -> 0.75 is on the topic exactly once."""
    events = [PolymarketEvent.model_validate_json(m.value or b"") for m in messages]
    per_market = Counter(event.market_id for event in events)
    assert per_market == {market.condition_id: 1 for market in server.markets}
    assert len({event.event_id for event in events}) == MARKETS
    assert {(event.baseline_yes_price, event.yes_price) for event in events} == {(0.40, 0.75)}


def test_sigkill_with_events_in_flight_then_restart_gives_each_move_once(
    server: FakePolymarketServer, mongo_server_uri: str, tmp_path: Path
) -> None:
    """The issue's first case: moves detected while Kafka is unreachable, the service
    killed (SIGKILL) before it could commit them. After a restart every move is on the
    topic exactly once for a read_committed consumer, measured from the price before."""
    topic = f"eo-{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:
        gate = stack.enter_context(TcpGate())
        broker = stack.enter_context(open_tansu_broker(advertised_port=gate.port))
        point_gate_at(gate, broker)
        bootstrap = f"127.0.0.1:{gate.port}"
        create_topic(bootstrap, topic)
        env, state = exactly_once_env(
            server, bootstrap, topic, mongo_server_uri, tmp_path, SHUTDOWN_GRACE_SECONDS="2"
        )

        with running_service(env) as first:
            wait_for_states(state, MARKETS, first)
            gate.close()  # Kafka unreachable from now on
            for market in server.markets:
                server.set_price(market.condition_id, 0.75)
            polled = server.request_count("POST /midpoints")
            wait_until_polled(first, server, polled + 5)  # the moves are detected
            first.kill()  # SIGKILL: nothing committed, nothing flushed
            first.communicate()
        point_gate_at(gate, broker)

        with running_service(env) as second:
            messages = read_events(bootstrap, topic, expected=MARKETS, timeout=60, linger=1.5)
            second.send_signal(signal.SIGTERM)
            _, stderr = second.communicate(timeout=30)
        assert second.returncode == 0, stderr
        assert f"detector state restored for {MARKETS} markets" in stderr

    moves_once_each(messages, server)
    for message in messages:
        event = PolymarketEvent.model_validate_json(message.value or b"")
        assert event.catch_up  # the move spans the gap between the two processes


def test_a_second_instance_fences_the_first_which_exits_non_zero(
    server: FakePolymarketServer, mongo_server_uri: str, tmp_path: Path
) -> None:
    """Two instances with the same transactional id (a botched deploy): the newer fences the
    older, which stops with one CRITICAL line naming the id and exit status 1. The newer
    carries on and stops cleanly."""
    topic = f"fence-{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:
        broker = stack.enter_context(open_tansu_broker())
        create_topic(broker.bootstrap_servers, topic)
        env, _ = exactly_once_env(
            server,
            broker.bootstrap_servers,
            topic,
            mongo_server_uri,
            tmp_path,
            KAFKA_TRANSACTIONAL_ID="fence-e2e",
        )
        with running_service(env) as older:
            wait_until_polled(older, server, server.request_count("POST /midpoints") + 3)
            with running_service(env) as newer:
                _, older_stderr = older.communicate(timeout=60)
                wait_until_polled(newer, server, server.request_count("POST /midpoints") + 3)
                newer.send_signal(signal.SIGTERM)
                _, newer_stderr = newer.communicate(timeout=30)
    assert older.returncode == 1, older_stderr
    critical = [line for line in older_stderr.splitlines() if "CRITICAL" in line]
    assert len(critical) == 1, older_stderr
    assert "fenced" in critical[0] and "'fence-e2e'" in critical[0]
    assert "KAFKA_TRANSACTIONAL_ID" in critical[0]
    assert "Traceback" not in older_stderr
    assert newer.returncode == 0, newer_stderr


def test_a_broker_that_restarts_empty_loses_none_of_the_moves(
    server: FakePolymarketServer, mongo_server_uri: str, tmp_path: Path
) -> None:
    """The broker dies and an empty one takes its place (in-memory storage): the service's
    transactional producer is replaced, its transactions initialised again, and the moves
    detected meanwhile are committed to the new broker, each once."""
    topic = f"eo-{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:
        gate = stack.enter_context(TcpGate())
        old = ExitStack()
        first = old.enter_context(open_tansu_broker(advertised_port=gate.port))
        point_gate_at(gate, first)
        bootstrap = f"127.0.0.1:{gate.port}"
        create_topic(bootstrap, topic)
        env, state = exactly_once_env(server, bootstrap, topic, mongo_server_uri, tmp_path)
        with running_service(env) as service:
            wait_for_states(state, MARKETS, service)
            gate.close()
            old.close()  # the broker is gone, with everything it held
            for market in server.markets:
                server.set_price(market.condition_id, 0.75)
            wait_until_polled(service, server, server.request_count("POST /midpoints") + 5)
            second = stack.enter_context(open_tansu_broker(advertised_port=gate.port))
            point_gate_at(gate, second)
            create_topic(bootstrap, topic)
            messages = read_events(bootstrap, topic, expected=MARKETS, timeout=90, linger=1.5)
            service.send_signal(signal.SIGTERM)
            _, stderr = service.communicate(timeout=30)
        assert service.returncode == 0, stderr
        assert "replacing it" in stderr  # the producer was replaced, not retried forever

    moves_once_each(messages, server)
