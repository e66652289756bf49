"""The health/metrics server: real hypercorn on a loopback port, real HTTP from httpx.

Every test runs on trio and asyncio: hypercorn has a separate implementation for each, and
cancellation must shut both down cleanly (warnings are errors, so a leaked socket or task
fails the test).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from hypercorn.utils import LifespanFailureError
from prometheus_client import CollectorRegistry, Counter

from polymarket_kafka.ops.health import ComponentStatus, ServiceHealth
from polymarket_kafka.ops.http_server import OpsApp, OpsServerError, serve_ops, url_host

pytestmark = pytest.mark.anyio


@pytest.fixture
def health() -> ServiceHealth:
    health = ServiceHealth(poll_interval_seconds=30.0)
    health.add_check("kafka", lambda: ComponentStatus(True, "1/1 brokers up"))
    return health


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("demo_things", "Things counted.", registry=registry).inc(3)
    return registry


@asynccontextmanager
async def serving(
    health: ServiceHealth, registry: CollectorRegistry, host: str = "127.0.0.1"
) -> AsyncIterator[tuple[httpx.AsyncClient, int]]:
    """The server on a free port, and a client for it; the server is cancelled on exit."""
    async with anyio.create_task_group() as tg:
        port: int = await tg.start(_serve, host, health, registry)
        async with httpx.AsyncClient(base_url=f"http://{url_host(host)}:{port}") as client:
            yield client, port
        tg.cancel_scope.cancel()


async def _serve(
    host: str,
    health: ServiceHealth,
    registry: CollectorRegistry,
    *,
    task_status: Any = anyio.TASK_STATUS_IGNORED,
) -> None:
    await serve_ops(host, 0, health=health, registry=registry, task_status=task_status)


async def test_live_and_ready_follow_the_service(
    health: ServiceHealth, registry: CollectorRegistry
) -> None:
    with anyio.fail_after(20):
        async with serving(health, registry) as (client, _):
            with health.stage("poll_markets"):
                live = await client.get("/health/live")
                assert live.status_code == 200
                assert live.headers["content-type"] == "application/json"
                assert live.json()["status"] == "ok"
                assert live.json()["components"]["stages"]["stages"] == {"poll_markets": "running"}

                ready = await client.get("/health/ready")
                assert ready.status_code == 503
                assert ready.headers["content-type"] == "application/json"
                body = ready.json()
                assert body["status"] == "fail"
                assert body["components"]["subscriptions"]["detail"] == "subscriptions not loaded"
                assert body["components"]["kafka"]["status"] == "ok"

                health.record_subscriptions(2)
                # The server asks with the event loop's clock: the one the service stamps.
                health.record_poll(anyio.current_time())
                ready = await client.get("/health/ready")
                assert ready.status_code == 200, ready.text
                assert ready.json()["status"] == "ok"
                assert ready.headers["cache-control"] == "no-store"
                # The specification's health endpoint is the readiness answer, body and all.
                spec = await client.get("/health")
                assert (spec.status_code, spec.headers["content-type"]) == (200, "application/json")
                statuses = {name: c["status"] for name, c in spec.json()["components"].items()}
                assert statuses == {
                    "kafka": "ok",
                    "subscriptions": "ok",
                    "polling": "ok",
                    "stages": "ok",
                }

                health.mark_stopping()
                assert (await client.get("/health/ready")).status_code == 503
                assert (await client.get("/health")).status_code == 503
                assert (await client.get("/health/live")).status_code == 200

            with pytest.raises(RuntimeError), health.stage("detect"):
                raise RuntimeError("boom")
            live = await client.get("/health/live")
            assert live.status_code == 503
            assert live.json()["components"]["stages"]["detail"] == (
                "detect crashed: RuntimeError: boom"
            )


async def test_metrics_in_prometheus_text_and_openmetrics(
    health: ServiceHealth, registry: CollectorRegistry
) -> None:
    with anyio.fail_after(20):
        async with serving(health, registry) as (client, _):
            metrics = await client.get("/metrics")
            assert metrics.status_code == 200
            assert metrics.headers["content-type"].startswith("text/plain; version=")
            assert "demo_things_total 3.0" in metrics.text.splitlines()

            open_metrics = await client.get(
                "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
            )
            assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
            assert open_metrics.text.rstrip().endswith("# EOF")

            # Read at scrape time, not at start-up.
            Counter("late_total", "Registered after start.", registry=registry).inc()
            assert "late_total 1.0" in (await client.get("/metrics")).text.splitlines()


async def test_unknown_path_wrong_method_and_head(
    health: ServiceHealth, registry: CollectorRegistry
) -> None:
    with anyio.fail_after(20):
        async with serving(health, registry) as (client, _):
            missing = await client.get("/healthz")
            assert missing.status_code == 404
            assert missing.headers["content-type"] == "application/json"
            assert missing.json() == {
                "error": "not found",
                "endpoints": ["/health", "/health/live", "/health/ready", "/metrics"],
            }

            for method in ("POST", "PUT", "DELETE"):
                wrong = await client.request(method, "/metrics")
                assert wrong.status_code == 405
                assert wrong.headers["allow"] == "GET, HEAD"
                assert wrong.json() == {"error": "method not allowed", "allow": ["GET", "HEAD"]}
            assert (await client.post("/nowhere")).status_code == 404

            head = await client.head("/health/ready")
            assert head.status_code == 503
            assert head.content == b""
            get = await client.get("/health/ready")
            assert int(head.headers["content-length"]) == len(get.content)
            assert (await client.head("/metrics")).status_code == 200


async def test_cancellation_closes_everything_even_with_open_connections(
    health: ServiceHealth, registry: CollectorRegistry
) -> None:
    with anyio.fail_after(20):
        async with httpx.AsyncClient() as client:  # outlives the server: keeps its connection
            async with anyio.create_task_group() as tg:
                port: int = await tg.start(_serve, "127.0.0.1", health, registry)
                assert (await client.get(f"http://127.0.0.1:{port}/health/live")).status_code == 200
                half_sent = await anyio.connect_tcp("127.0.0.1", port)
                await half_sent.send(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
                tg.cancel_scope.cancel()
            async with half_sent:
                pass
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{port}/health/live")
        # No listener is left: the port can be bound again (SO_REUSEADDR only skips the
        # TIME_WAIT of the connections the server closed; a listening socket would still block).
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
            probe.listen()


async def test_the_port_is_reported_and_logged(
    health: ServiceHealth, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="polymarket_kafka.ops.http_server")
    with anyio.fail_after(20):
        async with serving(health, registry) as (client, port):
            assert (await client.get("/health/live")).status_code == 200
    records = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert (
        "polymarket_kafka.ops.http_server",
        logging.INFO,
        f"health/metrics on http://127.0.0.1:{port}",
    ) in records
    # Hypercorn's own banner is demoted to DEBUG; there is no access log.
    hypercorn = [r for r in records if r[0] == "polymarket_kafka.ops.http_server.hypercorn"]
    assert hypercorn
    assert all(level == logging.DEBUG for _, level, _ in hypercorn)
    assert not any("GET /health/live" in message for _, _, message in records)


async def test_a_taken_port_fails_with_the_address(
    health: ServiceHealth, registry: CollectorRegistry
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OpsServerError) as caught:
            await serve_ops("127.0.0.1", port, health=health, registry=registry)
    assert str(caught.value) == (
        f"cannot serve health/metrics on 127.0.0.1:{port}: {os.strerror(errno.EADDRINUSE)}"
    )
    assert caught.value.errno == errno.EADDRINUSE


async def test_ipv6_loopback(health: ServiceHealth, registry: CollectorRegistry) -> None:
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            pass
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with anyio.fail_after(20):
        async with serving(health, registry, host="::1") as (client, _):
            assert (await client.get("/health/live")).status_code == 200


async def test_a_server_that_stops_by_itself_is_an_error(
    health: ServiceHealth, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def returns_at_once(*args: object, **kwargs: object) -> None:
        return None

    monkeypatch.setattr("hypercorn.trio.serve", returns_at_once)
    monkeypatch.setattr("hypercorn.asyncio.serve", returns_at_once)
    with (
        anyio.fail_after(20),
        pytest.RaisesGroup(
            pytest.RaisesExc(RuntimeError, match="stopped by itself"), flatten_subgroups=True
        ),
    ):
        await serve_ops("127.0.0.1", 0, health=health, registry=registry)


async def test_other_scopes_get_no_answer(
    health: ServiceHealth, registry: CollectorRegistry
) -> None:
    sent: list[object] = []

    async def receive() -> Any:
        raise AssertionError("not read")

    async def send(message: Any) -> None:
        sent.append(message)

    app = OpsApp(health, registry, clock=lambda: 0.0)
    await app({"type": "websocket", "path": "/health/live"}, receive, send)  # type: ignore[arg-type]
    assert sent == []  # the server refuses a websocket the application did not accept


def test_url_host() -> None:
    assert url_host("127.0.0.1") == "127.0.0.1"
    assert url_host("::1") == "[::1]"
    assert url_host("localhost") == "localhost"


# --- the duplicated descriptor handed to hypercorn ---------------------------------------------


def open_fds() -> set[tuple[str, str]]:
    """This process's open descriptors and what they are (Linux /proc).

    With the target: a leaked descriptor may reuse a number that was open before (such as
    the one listing /proc/self/fd itself, already closed when its entries are read).
    """
    found: set[tuple[str, str]] = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own, closed by now
            found.add((name, os.readlink(f"/proc/self/fd/{name}")))
    return found


needs_proc = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd (Linux)"
)


@needs_proc
async def test_a_failed_startup_leaves_no_descriptor(
    health: ServiceHealth, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def failing_lifespan(receive: Any, send: Any) -> None:
        await receive()  # lifespan.startup
        await send({"type": "lifespan.startup.failed", "message": "no"})

    # Real hypercorn, failing at its first step (the lifespan startup). On asyncio that is
    # before it wraps the descriptor in a socket object of its own; on trio the wrapping
    # races ahead of the failure. Either way nothing may stay open.
    monkeypatch.setattr("polymarket_kafka.ops.http_server._lifespan", failing_lifespan)
    before = open_fds()
    with (
        anyio.fail_after(20),
        pytest.RaisesGroup(pytest.RaisesExc(LifespanFailureError), flatten_subgroups=True),
    ):
        await serve_ops("127.0.0.1", 0, health=health, registry=registry)
    assert open_fds() - before == set()


@needs_proc
async def test_a_server_returning_early_leaves_no_descriptor(
    health: ServiceHealth, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def returns_at_once(*args: object, **kwargs: object) -> None:
        return None

    monkeypatch.setattr("hypercorn.trio.serve", returns_at_once)
    monkeypatch.setattr("hypercorn.asyncio.serve", returns_at_once)
    before = open_fds()
    with (
        anyio.fail_after(20),
        pytest.RaisesGroup(
            pytest.RaisesExc(RuntimeError, match="stopped by itself"), flatten_subgroups=True
        ),
    ):
        await serve_ops("127.0.0.1", 0, health=health, registry=registry)
    assert open_fds() - before == set()


@needs_proc
async def test_a_served_and_cancelled_server_leaves_no_descriptor(
    health: ServiceHealth, registry: CollectorRegistry
) -> None:
    before = open_fds()
    with anyio.fail_after(20):
        async with serving(health, registry) as (client, _):
            assert (await client.get("/health/live")).status_code == 200
            assert len(open_fds() - before) >= 2  # our socket and hypercorn's duplicate
    # Hypercorn closed the duplicate it took, and only that one (no double close).
    assert open_fds() - before == set()
