"""The whole application (`run_app`) with real peers, watched through its health endpoint.

Polymarket is the fake HTTP server, Kafka a real Tansu broker, MongoDB a real SecantusDB
server. The peers are started late or stopped mid-test, and the assertions are on what
`/health/ready` answers over HTTP, as a container engine or an orchestrator would see it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from polymarket_kafka.app import run_app
from polymarket_kafka.config import AppConfig, KafkaConfig, MongoConfig
from polymarket_kafka.local_broker import LocalBroker, create_topic, open_tansu_broker
from polymarket_kafka.subscriptions import open_subscription_store
from polymarket_kafka.testing import FakePolymarketServer
from tests.plugins.mongo_server import _start_secantus, _stop

pytestmark = [pytest.mark.anyio, pytest.mark.broker, pytest.mark.mongo_server]

#: librdkafka statistics this often: the "kafka" component notices a lost broker quickly.
STATISTICS_MS = 100
#: Long enough to stop the service between two poll cycles (see `Running.between_polls`).
POLL_SECONDS = 0.5


@pytest.fixture
def server() -> Iterator[FakePolymarketServer]:
    with FakePolymarketServer(n_markets=2, price=lambda i: 0.40) as fake:
        yield fake


def app_config(
    server: FakePolymarketServer, bootstrap: str, topic: str, mongo_uri: str
) -> AppConfig:
    return AppConfig(
        polymarket=server.polymarket_config(max_retries=0, rate_limit_delay_ms=0),
        kafka=KafkaConfig(bootstrap_servers=bootstrap, topic=topic),
        mongo=MongoConfig(
            uri=mongo_uri,
            database="health_e2e",
            collection=f"subs_{uuid.uuid4().hex[:12]}",
            poll_interval_seconds=0.1,
        ),
        poll_interval_seconds=POLL_SECONDS,
        shutdown_grace_seconds=1.0,
        http_host="127.0.0.1",
        http_port=0,
    )


async def subscribe(config: AppConfig, market_id: str) -> None:
    async with open_subscription_store(config.mongo) as store:
        await store.subscribe(market_id)


@dataclass
class Running:
    client: httpx.AsyncClient
    port: int

    async def ready(self) -> httpx.Response:
        return await self.client.get("/health/ready")

    async def wait_ready(self, ok: bool) -> dict[str, Any]:
        """Poll /health/ready until it answers 200 (ok) or 503 (not ok); return the body."""
        while (response := await self.ready()).status_code != (200 if ok else 503):  # noqa: ASYNC110
            await anyio.sleep(0.05)
        body: dict[str, Any] = response.json()
        return body

    async def between_polls(self) -> None:
        """Return just after a poll cycle finished: no Polymarket request is in flight.

        Cancelling the service then cannot interrupt one. (On trio, httpx leaves the body
        iterator of a cancelled request to the garbage collector, which warns -- in whatever
        test happens to run then: encode/httpx#3686.)
        """
        while True:
            polling = (await self.ready()).json()["components"]["polling"]
            if polling.get("age_seconds", POLL_SECONDS) < POLL_SECONDS / 5:
                return
            await anyio.sleep(0.01)


@asynccontextmanager
async def running_app(config: AppConfig) -> AsyncIterator[Running]:
    """`run_app(config)` in a task group; cancelled (and so shut down) on exit."""
    async with anyio.create_task_group() as tg:
        listening = anyio.Event()
        ports: list[int] = []

        def on_listening(port: int) -> None:
            ports.append(port)
            listening.set()

        async def run() -> None:
            await run_app(
                config, on_listening=on_listening, kafka_statistics_interval_ms=STATISTICS_MS
            )

        tg.start_soon(run)
        await listening.wait()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports[0]}") as client:
            app = Running(client, ports[0])
            yield app
            await app.between_polls()
        tg.cancel_scope.cancel()


def failing(body: dict[str, Any]) -> dict[str, str]:
    return {
        name: component["detail"]
        for name, component in body["components"].items()
        if component["status"] != "ok"
    }


async def test_ready_after_the_first_poll_and_metrics_and_healthcheck_cli(
    server: FakePolymarketServer,
    tansu_broker: LocalBroker,
    kafka_topic: str,
    mongo_server_uri: str,
) -> None:
    config = app_config(server, tansu_broker.bootstrap_servers, kafka_topic, mongo_server_uri)
    with anyio.fail_after(60):
        await subscribe(config, server.markets[0].condition_id)
        async with running_app(config) as app:
            assert (await app.client.get("/health/live")).status_code == 200
            body = await app.wait_ready(ok=True)
            components = body["components"]
            assert components["subscriptions"]["detail"] == "1 active market"
            assert components["polling"]["detail"].startswith("last poll cycle finished ")
            assert components["kafka"]["status"] == "ok"
            assert set(components["stages"]["stages"]) == {
                "http_server", "signals", "reloader", "detect", "deliver",
                "refresh_subscriptions", "poll_markets",
            }  # fmt: skip
            assert server.request_count("POST /midpoints") >= 1

            metrics = await app.client.get("/metrics")
            assert metrics.status_code == 200
            assert "polymarket_kafka_poll_cycles_total" in metrics.text

            # The container HEALTHCHECK command, as a real process.
            check = await anyio.run_process(
                [sys.executable, "-m", "polymarket_kafka", "healthcheck", "--url",
                 f"http://127.0.0.1:{app.port}"],
                check=False,
            )  # fmt: skip
            assert check.returncode == 0, check.stderr
            assert check.stdout.decode().startswith('HTTP 200 {"status":"ok"')


async def test_mongodb_down_at_start_then_up(
    server: FakePolymarketServer,
    tansu_broker: LocalBroker,
    kafka_topic: str,
    tmp_path: Path,
) -> None:
    with socket.socket() as probe:  # a free port nobody listens on (yet)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = app_config(
        server, tansu_broker.bootstrap_servers, kafka_topic, f"mongodb://127.0.0.1:{port}/"
    )
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with anyio.fail_after(90):
            async with running_app(config) as app:
                # The service started without MongoDB: alive, and says what it misses.
                assert (await app.client.get("/health/live")).status_code == 200
                body = await app.wait_ready(ok=False)
                assert failing(body)["subscriptions"].startswith("subscriptions not loaded")
                assert failing(body)["polling"] == "no poll cycle finished yet"
                body = await wait_for_refresh_failure(app)
                subscriptions = body["components"]["subscriptions"]
                assert subscriptions["detail"].startswith("subscriptions not loaded; ")
                assert "list active subscriptions failed" in subscriptions["last_error"]

                process, uri = await anyio.to_thread.run_sync(_start_secantus, tmp_path, port)
                processes.append(process)
                assert uri == config.mongo.uri
                await subscribe(config, server.markets[1].condition_id)
                body = await app.wait_ready(ok=True)
                assert body["components"]["subscriptions"]["detail"] == "1 active market"
    finally:
        # After the service: a refresh blocked on a vanished server would hold its shutdown.
        for process in processes:
            _stop(process)


async def wait_for_refresh_failure(app: Running) -> dict[str, Any]:
    while True:
        body: dict[str, Any] = (await app.ready()).json()
        if body["components"]["subscriptions"]["consecutive_failures"] >= 1:
            return body
        await anyio.sleep(0.05)


async def test_broker_stopped_makes_it_unready_on_kafka_then_back(
    server: FakePolymarketServer, mongo_server_uri: str
) -> None:
    with open_tansu_broker() as broker:
        topic = f"health-{uuid.uuid4().hex[:12]}"
        create_topic(broker.bootstrap_servers, topic)
        config = app_config(server, broker.bootstrap_servers, topic, mongo_server_uri)
        host, port = broker.bootstrap_servers.rsplit(":", 1)
        with anyio.fail_after(90):
            await subscribe(config, server.markets[0].condition_id)
            async with running_app(config) as app:
                await app.wait_ready(ok=True)

                broker.process.kill()  # a crash; SIGTERM would make Tansu drain for 5 s
                await anyio.to_thread.run_sync(broker.process.wait)
                body = await app.wait_ready(ok=False)
                assert list(failing(body)) == ["kafka"]  # polling and MongoDB are fine
                assert (await app.client.get("/health/live")).status_code == 200

                with open_tansu_broker(host=host, port=int(port)):
                    body = await app.wait_ready(ok=True)
                    assert body["components"]["kafka"]["status"] == "ok"
