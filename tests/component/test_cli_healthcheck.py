"""`polymarket-kafka healthcheck` (the container HEALTHCHECK) against a real health server,
and `run` when its health server cannot listen.

The command is synchronous (it runs in the container engine's exec, once every few
seconds), so the tests call `main()` in a worker thread while the server runs on the loop.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry

from polymarket_kafka.cli import main
from polymarket_kafka.ops.health import ComponentStatus, ServiceHealth
from polymarket_kafka.ops.http_server import serve_ops
from tests.factories import empty_env_file

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def serving(health: ServiceHealth, host: str = "127.0.0.1") -> AsyncIterator[int]:
    async with anyio.create_task_group() as tg:

        async def serve(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
            await serve_ops(
                host,
                0,
                health=health,
                registry=CollectorRegistry(),
                task_status=task_status,
            )

        yield await tg.start(serve)
        tg.cancel_scope.cancel()


def ready_health() -> ServiceHealth:
    health = ServiceHealth()
    health.add_check("kafka", lambda: ComponentStatus(True, "1/1 brokers up"))
    return health


async def cli(*args: str) -> int:
    return await anyio.to_thread.run_sync(main, list(args))


async def test_exit_0_when_ready_1_when_not(capsys: pytest.CaptureFixture[str]) -> None:
    health = ready_health()
    with anyio.fail_after(30):
        async with serving(health) as port:
            url = f"http://127.0.0.1:{port}"
            assert await cli("healthcheck", "--url", url) == 1
            out = capsys.readouterr().out
            assert out.startswith('HTTP 503 {"status":"fail"')
            assert out.count("\n") == 1  # one line
            assert "subscriptions not loaded" in out

            assert await cli("healthcheck", "--live", "--url", url + "/") == 0
            assert capsys.readouterr().out.startswith('HTTP 200 {"status":"ok"')

            health.record_subscriptions(1)
            health.record_poll(anyio.current_time())
            assert await cli("healthcheck", "--url", url) == 0
            assert capsys.readouterr().out.startswith('HTTP 200 {"status":"ok"')


async def test_default_url_from_the_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with anyio.fail_after(30):
        async with serving(ready_health()) as port:
            # A wildcard bind address is asked on loopback.
            monkeypatch.setenv("HTTP_HOST", "0.0.0.0")
            monkeypatch.setenv("HTTP_PORT", str(port))
            # A proxy from the environment must not relay a loopback request.
            monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
            monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
            env_file = empty_env_file(tmp_path)
            assert await cli("--env-file", str(env_file), "healthcheck", "--live") == 0
    assert capsys.readouterr().out.startswith("HTTP 200 ")


async def test_default_url_brackets_an_ipv6_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            pass
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with anyio.fail_after(30):
        async with serving(ready_health(), "::1") as port:
            monkeypatch.setenv("HTTP_HOST", "::1")
            monkeypatch.setenv("HTTP_PORT", str(port))
            assert (
                await cli("--env-file", str(empty_env_file(tmp_path)), "healthcheck", "--live") == 0
            )
    assert capsys.readouterr().out.startswith("HTTP 200 ")


async def test_closed_port_is_exit_1_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        code = await cli("healthcheck", "--url", f"http://127.0.0.1:{port}", "--timeout", "5")
    assert code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(
        f"polymarket-kafka: http://127.0.0.1:{port}/health/ready: ConnectionRefusedError: "
    )
    assert captured.err.count("\n") == 1


async def test_a_configuration_error_is_exit_1_not_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Container engines reserve status 2: a healthcheck reports failure as 1, whatever failed.
    monkeypatch.setenv("HTTP_PORT", "99999")
    assert await cli("--env-file", str(empty_env_file(tmp_path)), "healthcheck") == 1
    assert capsys.readouterr().err == (
        "polymarket-kafka: configuration error: HTTP_PORT: must be <= 65535, got 99999\n"
    )


async def test_the_address_comes_from_the_env_file_and_nothing_else_is_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The probe reads HTTP_HOST/HTTP_PORT only (it runs every 15 s and must stay cheap): a
    variable the service itself would refuse does not stop it from asking the service, which
    is the one to say whether it runs."""
    monkeypatch.delenv("HTTP_HOST", raising=False)
    monkeypatch.delenv("HTTP_PORT", raising=False)
    monkeypatch.setenv("KAFKA_MAX_IN_FLIGHT", "many")  # `run` would exit 2 on this
    with anyio.fail_after(30):
        async with serving(ready_health()) as port:
            env_file = tmp_path / "ops.env"
            env_file.write_text(f"HTTP_HOST=0.0.0.0\nHTTP_PORT={port}\n")
            assert await cli("--env-file", str(env_file), "healthcheck", "--live") == 0
    assert capsys.readouterr().out.startswith("HTTP 200 ")


@pytest.mark.mongo_server
def test_run_with_the_ops_port_taken_fails_in_one_line(
    anyio_backend: str,
    mongo_server_uri: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`run` cannot start its health server: one record naming the address, exit 1.

    The whole command in process (so not async: `main` runs its own event loop).
    """
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        monkeypatch.setenv("HTTP_PORT", str(port))
        # A reachable MongoDB: a refresh blocked on an unreachable one would delay the exit.
        monkeypatch.setenv("MONGODB_URI", mongo_server_uri)
        monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")  # need not be reachable
        monkeypatch.setenv("SHUTDOWN_GRACE_SECONDS", "1")
        env_file = str(empty_env_file(tmp_path))
        assert main(["--backend", anyio_backend, "--env-file", env_file, "run"]) == 1
    (record,) = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert record.getMessage() == (
        f"cannot serve health/metrics on 127.0.0.1:{port}: "
        f"{os.strerror(errno.EADDRINUSE)} (HTTP_HOST/HTTP_PORT)"
    )
    assert record.exc_info is None  # no traceback through the task groups


HEAVY = ("pydantic", "yaml", "httpx", "confluent_kafka", "pymongo", "anyio", "trio", "hypercorn")
#: What loading the configuration costs (`dataclasses` pulls in `inspect`): not for a probe.
CONFIGURATION = ("polymarket_kafka.config", "polymarket_kafka.logs", "dataclasses", "logging")


@pytest.mark.parametrize(
    "command",
    [["healthcheck", "--url", "http://127.0.0.1:9"], ["healthcheck"], ["--help"]],
    ids=["healthcheck-url", "healthcheck-config", "help"],
)
def test_healthcheck_and_help_import_nothing_heavy(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """They run every 15 s in the container: only the standard library and the light modules
    of the package, not even the configuration (bench/cli_startup.py measures the CPU this
    saves). `healthcheck` reads HTTP_HOST/HTTP_PORT through `env_reader` alone."""
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    monkeypatch.setenv("HTTP_PORT", "9")  # the discard port: refused on loopback
    code = (
        "import sys\n"
        "from polymarket_kafka.cli import main\n"
        "try:\n"
        f"    main({command!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(','.join(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(result.stdout.strip().splitlines()[-1].split(","))
    assert {name.split(".")[0] for name in loaded} & set(HEAVY) == set()
    assert loaded & set(CONFIGURATION) == set()
    assert "polymarket_kafka.cli" in loaded
