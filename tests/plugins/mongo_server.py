"""A real MongoDB wire-protocol server for tests, started once per session.

`mongo_server_uri` is `TEST_MONGODB_URI` when that is set (point the same tests at a real
MongoDB), else the URI of a SecantusDB server (`secantusdb`, a test-only GPL-2.0 dependency)
started on a free loopback port with in-memory storage and stopped at the end of the session.
`mongo_collection` is a fresh, uniquely named collection in the `polymarket_kafka_test`
database, dropped after the test.

SecantusDB runs as a subprocess (`python -m secantus`) rather than in process
(`SecantusDBServer`), which would start faster (0.1 s against 0.3 s) but would share the
pytest process: its threads would compete for the GIL with the concurrency tests, any warning
they raised would meet `filterwarnings = error` inside the server, its log records would land
in `caplog`, and a native WiredTiger crash would end the whole run. The server binds port 0
itself and we read the port from its "listening on" log line, so no port is ever raced for.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.collection import Collection

TEST_DATABASE = "polymarket_kafka_test"
START_TIMEOUT_SECONDS = 30.0

_LISTENING = re.compile(r"listening on ([0-9.]+):(\d+)")


def _start_secantus(workdir: Path, port: int = 0) -> tuple[subprocess.Popen[bytes], str]:
    """Start SecantusDB in `workdir` on `port` (0: a free one it picks); return the process
    and its URI once it listens."""
    # An explicit (empty) config file turns off the server's auto-discovery of
    # ./secantusd.toml, ~/.secantus/... and /etc/secantus/..., so the machine cannot change it.
    config = workdir / "secantusd.toml"
    config.write_text("")
    log_path = workdir / "secantus.log"
    command = [
        sys.executable, "-m", "secantus",
        "--host", "127.0.0.1", "--port", str(port), "--storage-path", ":memory:",
        "--config", str(config), "--log-level", "INFO",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while process.poll() is None and time.monotonic() < deadline:
        match = _LISTENING.search(log_path.read_text(errors="replace"))
        if match:
            return process, f"mongodb://{match[1]}:{match[2]}/"
        time.sleep(0.01)
    _stop(process)
    pytest.fail(f"SecantusDB did not start; its log:\n{log_path.read_text(errors='replace')}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    # Killed: its storage is in memory, nothing to save. Its clean stop (SIGTERM) takes 2 s,
    # all of it waiting for its accept thread (`join(timeout=2.0)`), paid by every worker.
    process.kill()
    process.wait(timeout=10)


@pytest.fixture(scope="session")
def mongo_server_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URI of a MongoDB wire-protocol server for the whole session (see the module notes)."""
    uri = os.environ.get("TEST_MONGODB_URI", "").strip()
    if uri:
        yield uri
        return
    if find_spec("secantus") is None:
        pytest.skip("no MongoDB server: set TEST_MONGODB_URI or install secantusdb")
    process, uri = _start_secantus(tmp_path_factory.mktemp("secantus"))
    try:
        client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=10_000)
        with client:
            client.admin.command("ping")
        yield uri
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def mongo_client(mongo_server_uri: str) -> Iterator[MongoClient[dict[str, Any]]]:
    """A client of `mongo_server_uri` shared by the session (tz-aware, like the service's)."""
    client: MongoClient[dict[str, Any]] = MongoClient(
        mongo_server_uri, serverSelectionTimeoutMS=10_000, tz_aware=True
    )
    with client:
        yield client


@pytest.fixture
def mongo_collection(
    mongo_client: MongoClient[dict[str, Any]],
) -> Iterator[Collection[dict[str, Any]]]:
    """A fresh collection with a unique name in `TEST_DATABASE`, dropped after the test."""
    collection = mongo_client[TEST_DATABASE][f"subscriptions_{uuid.uuid4().hex[:16]}"]
    try:
        yield collection
    finally:
        collection.drop()
