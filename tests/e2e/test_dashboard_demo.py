"""The demo serves the operator's dashboard: real broker, recorded Polymarket session, real
HTTP to the ops server while the cycles run and (`serve_until`, `demo --serve`) after them."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import ByteReceiveStream

from polymarket_kafka.ops.board import MAX_POINTS
from polymarket_kafka.service.stats import ServiceStats
from polymarket_kafka.testing.demo import run_demo
from tests.e2e.test_demo import FED, HARRIS, LEAD_IN, TRUMP

pytestmark = pytest.mark.broker

QUESTIONS = {
    TRUMP: "Will Donald Trump win the 2024 US Presidential Election?",
    HARRIS: "Will Kamala Harris win the 2024 US Presidential Election?",
    FED: "Fed rate hike in 2025?",
}
#: Generous: the broker, the demo and the server share a busy two-core machine.
TIMEOUT = 60


async def eventually(ask: Callable[[], Awaitable[Any]], done: Callable[[Any], bool]) -> Any:
    """Ask again until `done` says the answer is the one awaited (bounded by the caller's
    `fail_after`)."""
    while True:
        answer = await ask()
        if done(answer):
            return answer
        await anyio.sleep(0.05)  # not an assertion: only the pace of asking


@pytest.mark.anyio
async def test_the_demo_serves_the_dashboard_while_it_runs_and_until_told_to_stop() -> None:
    ports: list[int] = []
    listening, cycles_over, serve_until = anyio.Event(), anyio.Event(), anyio.Event()
    out = io.StringIO()
    result: list[tuple[ServiceStats, int]] = []

    def on_listening(port: int) -> None:
        ports.append(port)
        listening.set()

    async def demo() -> None:
        result.append(
            await run_demo(
                interval_seconds=0.1,
                out=out,
                handle_signals=False,
                http_port=0,
                on_listening=on_listening,
                serve_until=serve_until,
                after_service=cycles_over.set,
            )
        )

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(demo)
            await listening.wait()
            (port,) = ports
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", timeout=httpx.Timeout(TIMEOUT)
            ) as client:
                # Served from the start, while the recorded cycles run.
                health = await client.get("/api/health")
                assert health.status_code == 200
                assert not cycles_over.is_set()
                components = health.json()["components"]
                assert set(components) == {"kafka", "stream", "subscriptions", "polling", "stages"}
                assert all("since" in component for component in components.values())

                async def events() -> list[dict[str, Any]]:
                    response = await client.get("/api/events")
                    assert response.status_code == 200
                    return list(response.json()["events"])

                # The election night's four events, newest first.
                published = await eventually(events, lambda e: len(e) >= 4)
                assert len(published) == 4
                assert {e["market_id"] for e in published} == {TRUMP, HARRIS}
                stamps = [e["timestamp"] for e in published]
                assert stamps == sorted(stamps, reverse=True)
                assert set(stamps) == {"2024-11-06T03:00:00+00:00", "2024-11-06T05:00:00+00:00"}
                assert {e["severity"] for e in published if e["market_id"] == TRUMP} == {
                    "major",
                    "extreme",
                }
                assert (await client.get("/api/events?limit=2")).json()["events"] == published[:2]

                markets = (await client.get("/api/markets")).json()["markets"]
                rows = {m["market_id"]: m for m in markets}
                assert {m: r["question"] for m, r in rows.items()} == QUESTIONS
                for market_id, row in rows.items():
                    assert 2 <= len(row["spark"]) <= MAX_POINTS, market_id
                    assert row["spark"][-1][1] == row["yes_price"]
                    assert row["rules"]["rules_version"] == published[0]["rules_version"]
                    assert not row["closed"]
                counts = {m: (r["events"], r["last_event_id"] is not None) for m, r in rows.items()}
                assert counts == {TRUMP: (2, True), HARRIS: (2, True), FED: (0, False)}
                ids = {e["event_id"] for e in published}
                assert rows[TRUMP]["last_event_id"] in ids
                assert rows[TRUMP]["move"] > 0 > rows[HARRIS]["move"]

                # The cycles end; the server keeps answering until told to stop.
                await cycles_over.wait()
                assert not result  # run_demo waits for `serve_until`
                after = await client.get("/api/markets")
                assert after.status_code == 200
                assert {m["market_id"] for m in after.json()["markets"]} == set(QUESTIONS)
                feed = (await client.get("/api/health")).json()["feed"]
                assert feed["events_published"] == 4
                assert feed["markets"] == 3
                assert feed["stream"]["streamed_markets"] >= 0
                assert feed["last_poll_at"] is not None
                page = await client.head("/")
                assert page.status_code == 200
                assert page.headers["content-type"].startswith("text/html")
                assert not result
                serve_until.set()
        # `run_demo` returned (the task group waited for it), its events read back.
        ((stats, read_back),) = result
        assert read_back == stats.events_acknowledged == 4
        assert stats.poll_cycles == LEAD_IN + 10
        assert len(out.getvalue().splitlines()) == 4
        assert not await accepts(port)  # and the server is gone


@pytest.mark.anyio
async def test_without_serve_until_the_server_ends_with_the_demo() -> None:
    ports: list[int] = []
    with anyio.fail_after(TIMEOUT):
        stats, read_back = await run_demo(
            interval_seconds=0.01,
            out=io.StringIO(),
            handle_signals=False,
            http_port=0,
            on_listening=ports.append,
        )
        assert read_back == stats.events_acknowledged == 4
        (port,) = ports
        assert not await accepts(port)


async def accepts(port: int) -> bool:
    """Whether anything accepts connections on the loopback `port`."""
    try:
        stream = await anyio.connect_tcp("127.0.0.1", port)
    except OSError:
        return False
    await stream.aclose()
    return True


# --- the command ----------------------------------------------------------------------------


def demo_env(http_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HTTP_", "LOG_"))}
    return {**env, "HTTP_PORT": str(http_port), "HTTP_HOST": "127.0.0.1", "LOG_LEVEL": "INFO"}


async def read_until(stream: ByteReceiveStream, seen: bytearray, pattern: bytes) -> re.Match[bytes]:
    """Read `stream` into `seen` until `pattern` matches there."""
    while (match := re.search(pattern, seen)) is None:
        seen += await stream.receive()
    return match


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio", "asyncio"])
async def test_demo_serve_command_serves_until_interrupted(anyio_backend: str) -> None:
    command = [
        sys.executable,
        "-m",
        "polymarket_kafka",
        "--backend",
        anyio_backend,
        "demo",
        "--serve",
        "--interval",
        "0.01",
    ]
    async with await anyio.open_process(command, env=demo_env(0)) as process:
        assert process.stderr is not None and process.stdout is not None
        stderr = bytearray()
        try:
            with anyio.fail_after(TIMEOUT):
                found = await read_until(
                    process.stderr, stderr, rb"demo: dashboard on http://127\.0\.0\.1:(\d+)/\n"
                )
                port = int(found.group(1))
                await read_until(process.stderr, stderr, rb"serving the dashboard until stopped")
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                    events = (await client.get("/api/events")).json()["events"]
                    assert len(events) == 4
                    markets = (await client.get("/api/markets")).json()["markets"]
                    assert {m["question"] for m in markets} == set(QUESTIONS.values())
                    # Still serving a moment later (the cycles are long over).
                    assert (await client.get("/api/health")).status_code == 200
                assert process.returncode is None
                process.send_signal(signal.SIGINT)
                out = b""
                async for chunk in process.stdout:
                    out += chunk
                async for chunk in process.stderr:
                    stderr += chunk
                assert await process.wait() == 0, stderr.decode()
        finally:
            if process.returncode is None:
                process.kill()
    lines = out.decode().splitlines()
    assert len(lines) == 4
    assert all(json.loads(line)["source"] == "polymarket-kafka" for line in lines)
    assert b"4 events detected, 4 acknowledged by Kafka, 4 read back" in stderr
    assert b"Traceback" not in stderr


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio", "asyncio"])
async def test_demo_serve_stopped_during_the_cycles_ends_the_whole_demo(anyio_backend: str) -> None:
    """One SIGTERM while the recorded cycles run: the service drains and the demo ends,
    without serving on (a container stop or `timeout` must not need a second signal)."""
    command = [
        *(sys.executable, "-m", "polymarket_kafka", "--backend", anyio_backend),
        *("demo", "--serve", "--interval", "0.5"),
    ]
    async with await anyio.open_process(command, env=demo_env(0)) as process:
        assert process.stderr is not None and process.stdout is not None
        stderr = bytearray()
        try:
            with anyio.fail_after(TIMEOUT):
                await read_until(process.stderr, stderr, rb"demo: dashboard on http://")
                process.send_signal(signal.SIGTERM)
                async for _chunk in process.stdout:
                    pass
                async for chunk in process.stderr:
                    stderr += chunk
                assert await process.wait() == 0, stderr.decode()
        finally:
            if process.returncode is None:
                process.kill()
    assert b"serving the dashboard until stopped" not in stderr
    assert b"Traceback" not in stderr
    assert b"read back from the broker" in stderr  # the demo's summary: it ended normally


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_demo_with_its_ops_port_taken_says_so_in_one_line(anyio_backend: str) -> None:
    """One line naming the address (a usage error, exit 2), not a traceback through task
    groups: the demo binds HTTP_PORT (9464 by default), which a running service may hold."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with anyio.fail_after(TIMEOUT):
            result = await anyio.run_process(
                [sys.executable, "-m", "polymarket_kafka", "demo", "--interval", "0.01"],
                env=demo_env(port),
                check=False,
            )
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert "Traceback" not in stderr
    # After the demo's INFO lines, one line says what is wrong.
    (line,) = [line for line in stderr.splitlines() if line.startswith("polymarket-kafka: ")]
    assert line == stderr.splitlines()[-1]
    assert line.startswith("polymarket-kafka: cannot serve health/metrics on ")
    assert f"127.0.0.1:{port}" in line
    assert result.stdout == b""
