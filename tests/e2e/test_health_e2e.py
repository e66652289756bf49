"""The whole application (`run_app`) with real peers, watched through its health endpoint.

Polymarket is the fake HTTP server, Kafka a real Tansu broker, MongoDB a real SecantusDB
server. The peers fail, start late or stop mid-test, and the assertions are on what
`/health/ready` answers over HTTP, as a container engine or an orchestrator would see it.
MongoDB is reached through a `TcpGate` where it has to go down and come back at the same
address: the gate keeps its port, so no other process can take it in between.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from polymarket_kafka.app import run_app
from polymarket_kafka.config import AppConfig, KafkaConfig, MongoConfig
from polymarket_kafka.subscriptions import open_subscription_store
from polymarket_kafka.testing.fake_polymarket import FakePolymarketServer
from polymarket_kafka.testing.local_broker import LocalBroker, create_topic, open_tansu_broker
from tests.plugins.tcp_gate import TcpGate

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
        mongodb=MongoConfig(
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
    async with open_subscription_store(config.mongodb) as store:
        await store.subscribe(market_id)


def through_gate(config: AppConfig, gate: TcpGate) -> tuple[AppConfig, tuple[str, int]]:
    """`config` with MongoDB reached through `gate`, and the address the gate should open to."""
    uri = urlsplit(config.mongodb.uri)
    if uri.scheme != "mongodb" or "," in uri.netloc or uri.hostname is None:
        pytest.skip("the gate needs a single-host mongodb:// URI")
    user_info = uri.netloc.rpartition("@")[0]
    netloc = f"{user_info}@127.0.0.1:{gate.port}" if user_info else f"127.0.0.1:{gate.port}"
    # A direct connection: a replica set member would send the driver to its own address.
    # A short server selection: a refresh through a closed gate fails in 1 s, not 5 (the
    # URI's options win over the service's defaults).
    timeouts = "serverSelectionTimeoutMS=1000&connectTimeoutMS=1000"
    query = "&".join(q for q in (uri.query, "directConnection=true", timeouts) if q)
    gated = replace(config.mongodb, uri=uri._replace(netloc=netloc, query=query).geturl())
    return replace(config, mongodb=gated), (uri.hostname, uri.port or 27017)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise AssertionError(f"no sample {name}{labels}")


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

    async def wait_for(self, predicate: Any) -> httpx.Response:
        """Poll /health/ready until `predicate(status_code, body)` holds; return the answer."""
        while not predicate((response := await self.ready()).status_code, response.json()):  # noqa: ASYNC110
            await anyio.sleep(0.05)
        return response

    async def metrics(self) -> str:
        response = await self.client.get("/metrics")
        assert response.status_code == 200
        return response.text

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
            assert components["polling"]["detail"].startswith("last successful poll cycle ")
            assert components["kafka"]["status"] == "ok"
            assert set(components["stages"]["stages"]) == {
                "http_server", "signals", "reloader", "detect", "deliver",
                "refresh_subscriptions", "poll_markets",
            }  # fmt: skip
            assert server.request_count("POST /midpoints") >= 1

            metrics = await app.metrics()
            cycles = "polymarket_kafka_poll_cycles_total"
            assert metric(metrics, cycles, result="ok") >= 1  # ready means one cycle succeeded
            assert metric(metrics, cycles, result="unavailable") == 0
            assert metric(metrics, cycles, result="failed") == 0

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
    mongo_server_uri: str,
) -> None:
    direct = app_config(server, tansu_broker.bootstrap_servers, kafka_topic, mongo_server_uri)
    # The gate outlives the service: a refresh blocked on a vanished server would hold its
    # shutdown.
    with TcpGate() as gate, anyio.fail_after(90):
        config, mongodb = through_gate(direct, gate)
        async with running_app(config) as app:
            # The service started without MongoDB: alive, and says what it misses.
            assert (await app.client.get("/health/live")).status_code == 200
            body = await app.wait_ready(ok=False)
            assert failing(body)["subscriptions"].startswith("subscriptions not loaded")
            assert failing(body)["polling"] == "no successful poll cycle yet"
            body = await wait_for_refresh_failure(app)
            subscriptions = body["components"]["subscriptions"]
            assert subscriptions["detail"].startswith("subscriptions not loaded; ")
            assert "list active subscriptions failed" in subscriptions["last_error"]

            await subscribe(direct, server.markets[1].condition_id)
            gate.open(*mongodb)  # MongoDB is up, at the address the service was given
            body = await app.wait_ready(ok=True)
            assert body["components"]["subscriptions"]["detail"] == "1 active market"


async def test_mongodb_down_after_the_first_load_keeps_it_ready_and_shows_it(
    server: FakePolymarketServer,
    tansu_broker: LocalBroker,
    kafka_topic: str,
    mongo_server_uri: str,
) -> None:
    direct = app_config(server, tansu_broker.bootstrap_servers, kafka_topic, mongo_server_uri)
    with TcpGate() as gate, anyio.fail_after(90):
        config, mongodb = through_gate(direct, gate)
        gate.open(*mongodb)
        await subscribe(direct, server.markets[0].condition_id)
        async with running_app(config) as app:
            await app.wait_ready(ok=True)
            polled = server.request_count("POST /midpoints")

            gate.close()  # MongoDB goes away: connections cut, new ones refused
            # Ready all along: the loaded set stays in force, and the detail says what failed.
            response = await app.wait_for(
                lambda status, body: (
                    status == 200
                    and body["components"]["subscriptions"]["consecutive_failures"] >= 1
                )
            )
            subscriptions = response.json()["components"]["subscriptions"]
            assert subscriptions["status"] == "ok"
            assert subscriptions["detail"].startswith("1 active market; latest refresh failed (")
            assert "list active subscriptions failed" in subscriptions["last_error"]
            assert server.request_count("POST /midpoints") > polled  # still polling
            failed = metric(
                await app.metrics(),
                "polymarket_kafka_subscription_refreshes_total",
                result="failed",
            )
            assert failed >= 1

            gate.open(*mongodb)
            body = (
                await app.wait_for(
                    lambda status, body: (
                        status == 200 and "last_error" not in body["components"]["subscriptions"]
                    )
                )
            ).json()
            assert body["components"]["subscriptions"]["detail"] == "1 active market"


async def test_polymarket_down_makes_it_unready_then_ready_and_bodies_are_scrubbed(
    server: FakePolymarketServer,
    tansu_broker: LocalBroker,
    kafka_topic: str,
    mongo_server_uri: str,
) -> None:
    # Credentials where error texts quote them: the Polymarket URL (user-info) and, in the
    # 503 body, the value of KAFKA_SASL_PASSWORD (scrubbed only if run_app passes it on).
    config = app_config(server, tansu_broker.bootstrap_servers, kafka_topic, mongo_server_uri)
    host_port = server.url.removeprefix("http://")
    config = replace(
        config,
        kafka=replace(config.kafka, sasl_password="hunter2-wire"),
        polymarket=replace(config.polymarket, base_url=f"http://bob:tok3n@{host_port}"),
    )
    assert config.secret_values() == ("hunter2-wire",)
    with anyio.fail_after(90):
        await subscribe(config, server.markets[0].condition_id)
        async with running_app(config) as app:
            await app.wait_ready(ok=True)

            # 3 cycles of 503s (one request per cycle: no retries), then it answers again.
            outage = {"error": "upstream rejected token hunter2-wire"}
            server.fail_next("/midpoints", 503, body=outage, times=3)
            response = await app.wait_for(
                lambda status, body: (
                    status == 503
                    and body["components"]["polling"]["status"] == "fail"
                    and "Polymarket unavailable" in body["components"]["polling"]["detail"]
                )
            )
            body = response.json()
            assert body["components"]["kafka"]["status"] == "ok"
            assert body["components"]["subscriptions"]["status"] == "ok"
            assert body["components"]["polling"]["last_error"] == (
                f"Polymarket unavailable: midpoints unavailable: http://***:***@{host_port}"
                "/midpoints unavailable after 1 attempt(s): HTTP 503: upstream rejected token ***"
            )
            for secret in ("hunter2-wire", "tok3n", "bob"):
                assert secret not in response.text
            cycles = "polymarket_kafka_poll_cycles_total"
            assert metric(await app.metrics(), cycles, result="unavailable") >= 1

            body = await app.wait_ready(ok=True)  # Polymarket answers again
            assert "last_error" not in body["components"]["polling"]


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


@pytest.mark.parametrize("delivery", ["exactly_once", "at_least_once"])
async def test_health_answers_while_the_state_waits_for_kafka(
    server: FakePolymarketServer, mongo_server_uri: str, delivery: str
) -> None:
    # With a state topic and Kafka unreachable at start, the service is up (live, polling)
    # and not ready, saying why in "state"; once Kafka answers, the state is restored and
    # it is ready. (The restore used to come before the ops server: no health at all.)
    with TcpGate() as gate, open_tansu_broker(advertised_port=gate.port) as broker:
        bootstrap = f"127.0.0.1:{gate.port}"
        base = app_config(server, bootstrap, f"t-{uuid.uuid4().hex[:8]}", mongo_server_uri)
        config = replace(
            base,
            kafka=replace(base.kafka, state_topic="state", state_partitions=3, delivery=delivery),
        )
        host, port = broker.bootstrap_servers.rsplit(":", 1)
        with anyio.fail_after(90):
            await subscribe(config, server.markets[0].condition_id)
            async with running_app(config) as app:
                assert (await app.client.get("/health/live")).status_code == 200
                waiting = await app.wait_for(
                    lambda status, body: (
                        status == 503 and body["components"]["polling"]["status"] == "ok"
                    )
                )
                state = waiting.json()["components"]["state"]
                assert state["status"] != "ok"
                assert state["detail"] in (
                    "waiting for the detector state to be restored",
                    "initialising Kafka transactions",
                ) or state["detail"].startswith(
                    (f"restoring detector state from {config.kafka.full_state_topic}",
                     f"cannot restore from {config.kafka.full_state_topic} yet: ")
                )  # fmt: skip
                await anyio.to_thread.run_sync(gate.open, host, int(port))
                await anyio.to_thread.run_sync(create_topic, bootstrap, config.kafka.full_topic)
                body = await app.wait_ready(ok=True)
                assert body["components"]["state"]["detail"] == (
                    f"0 markets restored from {config.kafka.full_state_topic}"
                )
