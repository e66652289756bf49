"""`polymarket-kafka run` as a real process, for the end-to-end tests that signal it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from polymarket_kafka.testing.fake_polymarket import FakePolymarketServer


def service_env(
    server: FakePolymarketServer,
    bootstrap_servers: str,
    topic: str,
    mongo: tuple[str, str, str],
    workdir: Path,
    **extra: str,
) -> dict[str, str]:
    """The environment of a fast-polling service against the fake Polymarket, a broker's
    `topic` and MongoDB `(uri, database, collection)`, with rules that fire on the first
    qualifying poll (written to `workdir/rules.yaml`)."""
    uri, database, collection = mongo
    rules = workdir / "rules.yaml"
    rules.write_text("version: 1\ndefaults:\n  confirm: {polls: 1}\n  volatility: {z: 0}\n")
    return {
        **os.environ,
        "POLYMARKET_BASE_URL": server.url,
        "POLYMARKET_GAMMA_URL": server.url,
        "POLYMARKET_RATE_LIMIT_DELAY_MS": "0",
        # No market channel unless a test streams from a fake one (never the live one).
        "POLYMARKET_WS_URL": "",
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
        "KAFKA_TOPIC": topic,
        "MONGODB_URI": uri,
        "MONGODB_DATABASE": database,
        "MONGODB_COLLECTION": collection,
        "MONGODB_POLL_INTERVAL_SECONDS": "0.1",
        "POLL_INTERVAL_SECONDS": "0.1",
        "SHUTDOWN_GRACE_SECONDS": "5",
        "RULES_PATH": str(rules),
        "HTTP_PORT": "0",  # any free port: tests run side by side
        **extra,
    }


@contextmanager
def running_service(env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """`python -m polymarket_kafka run` with `env`; killed on the way out if still running."""
    process = subprocess.Popen(
        [sys.executable, "-m", "polymarket_kafka", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def wait_until_polled(
    process: subprocess.Popen[str], server: FakePolymarketServer, requests: int
) -> None:
    """Wait (at most 30 s) until `server` answered `requests` batch price requests in all;
    fail with the service's stderr if it exits first."""
    deadline = time.monotonic() + 30
    while server.request_count("POST /midpoints") < requests:
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the service never polled"
        time.sleep(0.05)
