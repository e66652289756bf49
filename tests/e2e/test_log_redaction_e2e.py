"""The real command line, in a subprocess, logging JSON with credentials configured: every
stderr line is one JSON object and no password appears anywhere in its output.

Kafka (SASL) and MongoDB (a URI with a user and a percent-encoded password) point at closed
loopback ports, so the service logs connection failures for a while; it is stopped with
SIGTERM once its subscription refresh (a task of its task group) has logged a failure.

The service already avoids logging secrets (`redacted_uri`, `sasl.password: ***`), which
alone would make this test unable to fail. So the passwords are also planted where the
service logs a value verbatim: the SASL password inside `KAFKA_CLIENT_ID` (in the producer's
configuration line and in every librdkafka line) and the decoded MongoDB password in the
rules file's path (in the start-up line). Only the formatter's scrubbing keeps them out.

Two more runs crash, at start-up (a MongoDB URI pymongo refuses, after a warning) and in a
stage (patched to raise an error quoting the password's `repr()`): even then every stderr
line is a scrubbed JSON object, the traceback inside the CRITICAL record.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.factories import empty_env_file

SASL_PASSWORD = "kafka-s3cret!"
MONGO_PASSWORD = "hunter2%40x"  # as written in the URI; "hunter2@x" once decoded
# A short server selection from the URI: the refresh fails (and logs) in 1 s, not 5.
MONGO_URI = (
    f"mongodb://alice:{MONGO_PASSWORD}@127.0.0.1:1/"
    "?authSource=admin&serverSelectionTimeoutMS=1000&connectTimeoutMS=1000"
)


def test_json_logs_of_the_cli_never_contain_a_password(tmp_path: Path) -> None:
    rules = tmp_path / "hunter2@x" / "rules.yaml"
    rules.parent.mkdir()
    rules.write_text("version: 1\n", encoding="utf-8")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "DEBUG",  # librdkafka's connection failures are DEBUG lines
        "HTTP_PORT": "0",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_USERNAME": "svc",
        "KAFKA_SASL_PASSWORD": SASL_PASSWORD,
        "KAFKA_CLIENT_ID": f"pk-{SASL_PASSWORD}",
        "MONGODB_URI": MONGO_URI,
        "RULES_PATH": str(rules),
    }
    lines: list[str] = []
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "polymarket_kafka",
            "--env-file",
            str(empty_env_file(tmp_path)),
            "run",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        stderr = process.stderr
        reader = threading.Thread(target=lambda: lines.extend(stderr), daemon=True)
        reader.start()
        try:
            # The subscription refresh runs in the service's task group: once it has logged,
            # the signal handlers are installed (server selection gives up in 1 s: MONGO_URI).
            deadline = time.monotonic() + 60
            while not any("subscription refresh failed" in line for line in list(lines)):
                assert process.poll() is None, "".join(lines)
                assert time.monotonic() < deadline, "".join(lines)
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)  # nothing is written to stdout: its pipe cannot fill
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        reader.join(timeout=10)
        stdout = process.stdout.read()
    assert process.returncode == 0, "".join(lines)

    everything = stdout + "".join(lines)
    for secret in (SASL_PASSWORD, MONGO_PASSWORD, "hunter2@x", "hunter2"):
        assert secret not in everything
    records = [json.loads(line) for line in lines]  # every stderr line is one JSON object
    for record in records:
        assert {"timestamp", "level", "logger", "message"} <= set(record)
    messages = [r["message"] for r in records]
    # The planted passwords were there, and were scrubbed.
    assert any(m.startswith("rules ") and "/***/rules.yaml" in m for m in messages)
    assert any("'client.id': 'pk-***'" in m for m in messages)
    assert any(
        r["logger"] == "polymarket_kafka.kafka.publisher.librdkafka" and "pk-***" in r["message"]
        for r in records
    )
    assert any("mongodb://***:***@127.0.0.1:1/" in m for m in messages)
    assert any("SIGTERM received" in m for m in messages)


# repr() and JSON escape this one (backslash, quotes): scrubbed in those forms too.
AWKWARD_PASSWORD = "s3\\cr'et\"pw"
# Fails in a stage: `run_reloader`, a stage of the service's task group, raises at once.
STAGE_CRASH = """
import os, sys
import polymarket_kafka.service.pipeline
from polymarket_kafka.cli import main

async def broken_reloader(rules):
    config = {"password": os.environ["KAFKA_SASL_PASSWORD"]}
    raise RuntimeError(f"reloader broke, config {config!r}")

polymarket_kafka.service.pipeline.run_reloader = broken_reloader
sys.exit(main(sys.argv[1:]))
"""


def crash_env(tmp_path: Path, mongodb_uri: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "LOG_FORMAT": "json",
        "HTTP_PORT": "0",
        "SHUTDOWN_GRACE_SECONDS": "1",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_USERNAME": "svc",
        "KAFKA_SASL_PASSWORD": AWKWARD_PASSWORD,
        "MONGODB_URI": mongodb_uri,
    }


def run_to_the_end(command: list[str], env: dict[str, str], cwd: Path) -> list[dict[str, Any]]:
    """Run `command` until it exits by itself: it must exit 1 and write only JSON lines on
    stderr, with no password in any form, one of them the CRITICAL record of the crash."""
    done = subprocess.run(
        [*command, "--env-file", str(empty_env_file(cwd)), "run"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    for secret in (AWKWARD_PASSWORD, repr(AWKWARD_PASSWORD), "hunter2", "cr'et", "cr\\'et"):
        assert secret not in done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines()]  # every line is JSON
    assert records, done.stderr
    for record in records:
        assert {"timestamp", "level", "logger", "message"} <= set(record)
    return records


def test_a_crash_at_start_up_is_logged_as_json(tmp_path: Path) -> None:
    # pymongo refuses this URI when the client is made (start-up), after warning about the
    # unknown option: both reach stderr through the JSON formatter. What pymongo says in them
    # is its own business (its wording changes between releases): checked here are the
    # records' shape, our message and the types.
    uri = "mongodb://alice:hunter2@127.0.0.1:1,127.0.0.1:2/?directConnection=true&bogusOpt=1"
    records = run_to_the_end(
        [sys.executable, "-m", "polymarket_kafka"], crash_env(tmp_path, uri), tmp_path
    )
    # The warning, captured from the `warnings` module (`logging.captureWarnings`).
    (warning,) = (r for r in records if r["logger"] == "py.warnings")
    assert warning["level"] == "WARNING"
    assert ": UserWarning: " in warning["message"]  # warnings.formatwarning: path:line: Category:
    (crash,) = (r for r in records if r["level"] == "CRITICAL")
    assert crash["logger"] == "polymarket_kafka"
    assert crash["message"].startswith(
        "stopped by an unexpected error: SubscriptionStoreError: cannot create a MongoDB client "
        "for mongodb://***:***@127.0.0.1:1,127.0.0.1:2/"
    )
    # The traceback, ending with our error (pymongo's reason follows it on that line).
    assert crash["exc_info"].startswith("Traceback (most recent call last):")
    assert (
        crash["exc_info"]
        .splitlines()[-1]
        .startswith(
            "polymarket_kafka.subscriptions.SubscriptionStoreError: cannot create a MongoDB client "
            "for mongodb://***:***@127.0.0.1:1,127.0.0.1:2/"
        )
    )


def test_a_crash_of_a_stage_is_logged_as_json(tmp_path: Path) -> None:
    uri = "mongodb://alice:hunter2@127.0.0.1:1/?serverSelectionTimeoutMS=200"
    records = run_to_the_end(
        [sys.executable, "-c", STAGE_CRASH], crash_env(tmp_path, uri), tmp_path
    )
    (crash,) = (r for r in records if r["level"] == "CRITICAL")
    assert crash["message"] == (
        "stopped by an unexpected error: RuntimeError: reloader broke, config {'password': '***'}"
    )
    # The traceback of the task group's exception group, down to the stage's own frame.
    assert crash["exc_info"].startswith("  + Exception Group Traceback (most recent call last):")
    assert "in broken_reloader" in crash["exc_info"]
    assert "RuntimeError: reloader broke, config {'password': '***'}" in crash["exc_info"]
