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

SASL_PASSWORD = "kafka-s3cret!"
MONGO_PASSWORD = "hunter2%40x"  # as written in the URI; "hunter2@x" once decoded
MONGO_URI = f"mongodb://alice:{MONGO_PASSWORD}@127.0.0.1:1/?authSource=admin"


def test_json_logs_of_the_cli_never_contain_a_password(tmp_path: Path) -> None:
    rules = tmp_path / "hunter2@x" / "rules.yaml"
    rules.parent.mkdir()
    rules.write_text("version: 1\n", encoding="utf-8")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
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
        [sys.executable, "-m", "polymarket_kafka", "--env-file", str(tmp_path / "none"), "run"],
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
            # the signal handlers are installed (MongoDB's server selection gives up in 5 s).
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
        r["logger"] == "polymarket_kafka.kafka.librdkafka" and "pk-***" in r["message"]
        for r in records
    )
    assert any("mongodb://***:***@127.0.0.1:1/" in m for m in messages)
    assert any("SIGTERM received" in m for m in messages)
