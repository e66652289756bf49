"""Configuration: defaults, every variable, one-line errors naming the variable, no secrets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from polymarket_kafka.config import (
    AppConfig,
    ConfigError,
    KafkaConfig,
    MongoConfig,
    PolymarketConfig,
    check_env_file,
    known_variables,
    load_config,
    requested_log_format,
    unknown_variable_warnings,
)
from polymarket_kafka.logs import LOG_FORMATS
from polymarket_kafka.redact import redact_uri

FULL_ENV = {
    "POLYMARKET_BASE_URL": "https://clob.example.test/",
    "POLYMARKET_GAMMA_URL": "https://gamma.example.test",
    "POLYMARKET_REQUEST_TIMEOUT_SECONDS": "5.5",
    "POLYMARKET_RATE_LIMIT_DELAY_MS": "0",
    "POLYMARKET_MAX_RETRIES": "2",
    "POLYMARKET_METADATA_REFRESH_SECONDS": "60",
    "KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
    "KAFKA_TOPIC": "events",
    "KAFKA_TOPIC_PREFIX": "prod.",
    "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
    "KAFKA_SASL_MECHANISMS": "SCRAM-SHA-512",
    "KAFKA_SASL_USERNAME": "svc",
    "KAFKA_SASL_PASSWORD": "hunter2-secret",
    "KAFKA_CLIENT_ID": "pk-1",
    "MONGODB_URI": "mongodb://admin:m0ngo-secret@db.example.test:27017/?authSource=admin",
    "MONGODB_DATABASE": "signals",
    "MONGODB_COLLECTION": "subs",
    "MONGODB_COLLECTION_PREFIX": "prod_",
    "MONGODB_POLL_INTERVAL_SECONDS": "15",
    "POLL_INTERVAL_SECONDS": "10",
    "ENVIRONMENT": "production",
    "SHUTDOWN_GRACE_SECONDS": "3",
    "RULES_PATH": "rules/default.yaml",
    "LOG_LEVEL": "debug",
    "LOG_FORMAT": "JSON",
    "HTTP_HOST": "0.0.0.0",
    "HTTP_PORT": "9100",
}


def test_defaults_with_empty_environment() -> None:
    config = load_config({}, env_file=None)
    assert config == AppConfig()
    assert config.kafka.full_topic == "polymarket-events"
    assert config.mongodb.full_collection == "polymarket_subscriptions"
    assert config.polymarket.base_url == "https://clob.polymarket.com"
    assert config.polymarket.gamma_url == "https://gamma-api.polymarket.com"
    assert config.poll_interval_seconds == 30.0
    assert (config.log_format, config.http_host, config.http_port) == ("text", "127.0.0.1", 9464)


def test_every_variable_is_read() -> None:
    config = load_config(FULL_ENV, env_file=None)
    assert config.polymarket.base_url == "https://clob.example.test"
    assert config.polymarket.gamma_url == "https://gamma.example.test"
    assert config.polymarket.request_timeout_seconds == 5.5
    assert config.polymarket.rate_limit_delay_ms == 0.0
    assert config.polymarket.max_retries == 2
    assert config.polymarket.metadata_refresh_seconds == 60.0
    assert config.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert config.kafka.full_topic == "prod.events"
    assert config.kafka.security_protocol == "SASL_SSL"
    assert config.kafka.sasl_mechanisms == "SCRAM-SHA-512"
    assert config.kafka.sasl_username == "svc"
    assert config.kafka.sasl_password == "hunter2-secret"
    assert config.kafka.client_id == "pk-1"
    assert config.mongodb.database == "signals"
    assert config.mongodb.full_collection == "prod_subs"
    assert config.mongodb.poll_interval_seconds == 15.0
    assert config.poll_interval_seconds == 10.0
    assert config.environment == "production"
    assert config.shutdown_grace_seconds == 3.0
    assert config.rules_path == Path("rules/default.yaml")
    assert config.log_level == "DEBUG"
    assert config.log_format == "json"
    assert config.http_host == "0.0.0.0"
    assert config.http_port == 9100


def test_secrets_never_in_repr() -> None:
    config = load_config(FULL_ENV, env_file=None)
    text = repr(config)
    assert "hunter2-secret" not in text
    assert "m0ngo-secret" not in text and "admin:" not in text
    assert "sasl_password='***'" in text
    assert "db.example.test:27017" in text


def test_redact_uri() -> None:
    assert redact_uri("mongodb://u:p@h:1/db") == "mongodb://***:***@h:1/db"
    assert redact_uri("mongodb://h:1/db") == "mongodb://h:1/db"
    assert redact_uri("mongodb://u:p@h1:1,h2:2/?x=1") == "mongodb://***:***@h1:1,h2:2/?x=1"
    assert redact_uri("mongodb://u:p@[::1/db") == "<unparseable uri>"  # never echoed


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("POLYMARKET_BASE_URL", "ftp://x", "must be an http(s) URL"),
        ("POLYMARKET_REQUEST_TIMEOUT_SECONDS", "soon", "must be a number"),
        ("POLYMARKET_REQUEST_TIMEOUT_SECONDS", "0", "must be > 0"),
        ("POLYMARKET_RATE_LIMIT_DELAY_MS", "-1", "must be >= 0"),
        ("POLYMARKET_RATE_LIMIT_DELAY_MS", "nan", "finite"),
        ("POLYMARKET_MAX_RETRIES", "1.5", "must be an integer"),
        ("POLYMARKET_MAX_RETRIES", "-1", "must be >= 0"),
        ("KAFKA_SECURITY_PROTOCOL", "TLS", "must be one of"),
        ("KAFKA_SASL_MECHANISMS", "MD5", "must be one of"),
        ("MONGODB_POLL_INTERVAL_SECONDS", "-3", "must be > 0"),
        ("POLL_INTERVAL_SECONDS", "abc", "must be a number"),
        ("LOG_LEVEL", "LOUD", "must be one of"),
        ("LOG_FORMAT", "xml", "must be one of text, json"),
        ("HTTP_PORT", "http", "must be an integer"),
        ("HTTP_PORT", "-1", "must be >= 0"),
        ("HTTP_PORT", "65536", "must be <= 65535"),
    ],
)
def test_malformed_values_name_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({variable: value}, env_file=None)
    text = str(info.value)
    assert text.startswith(f"{variable}: ")
    assert message in text
    assert "\n" not in text
    assert info.value.variable == variable


def test_sasl_requires_credentials() -> None:
    with pytest.raises(ConfigError, match="^KAFKA_SASL_USERNAME: required"):
        load_config({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, env_file=None)
    with pytest.raises(ConfigError, match="^KAFKA_SASL_PASSWORD: required"):
        load_config(
            {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "u"},
            env_file=None,
        )


def test_bad_mongodb_uri_error_does_not_echo_the_value() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"MONGODB_URI": "http://user:topsecret@host"}, env_file=None)
    assert "topsecret" not in str(info.value)
    assert str(info.value).startswith("MONGODB_URI: ")


def test_dotenv_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("KAFKA_TOPIC=from-file\nPOLL_INTERVAL_SECONDS=7\n# comment\n")
    config = load_config({"KAFKA_TOPIC": "from-env"}, env_file=env_file)
    assert config.kafka.topic == "from-env"
    assert config.poll_interval_seconds == 7.0


def test_blank_values_mean_default() -> None:
    assert load_config({"KAFKA_TOPIC": "  "}, env_file=None).kafka.topic == "polymarket-events"


def test_process_environment_is_the_default_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_CLIENT_ID", "from-os-environ")
    assert load_config(env_file=None).kafka.client_id == "from-os-environ"


@pytest.mark.parametrize(
    ("variable", "value", "attribute", "expected"),
    [
        ("LOG_FORMAT", "Json", "log_format", "json"),
        ("LOG_FORMAT", "TEXT", "log_format", "text"),
    ],
)
def test_choices_are_case_insensitive_and_normalised(
    variable: str, value: str, attribute: str, expected: str
) -> None:
    assert getattr(load_config({variable: value}, env_file=None), attribute) == expected


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "text"),
        ({"LOG_FORMAT": " Json "}, "json"),
        ({"LOG_FORMAT": "xml"}, "text"),  # itself invalid: the error is reported as text
        ({"LOG_FORMAT": "json", "HTTP_PORT": "nope"}, "json"),  # whatever else is wrong
    ],
)
def test_requested_log_format(env: dict[str, str], expected: str) -> None:
    assert requested_log_format(env, env_file=None) == expected


@pytest.mark.parametrize("log_format", LOG_FORMATS)
def test_every_format_configure_logging_knows_is_accepted(log_format: str) -> None:
    assert load_config({"LOG_FORMAT": log_format}, env_file=None).log_format == log_format


def test_requested_log_format_reads_the_dotenv_file_and_the_environment_wins(
    tmp_path: Path,
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("LOG_FORMAT=json\nHTTP_PORT=nope\n")
    assert requested_log_format({}, env_file=env_file) == "json"
    assert requested_log_format({"LOG_FORMAT": "text"}, env_file=env_file) == "text"


@pytest.mark.parametrize("port", ["0", "65535"])
def test_http_port_bounds_are_inclusive(port: str) -> None:
    assert load_config({"HTTP_PORT": port}, env_file=None).http_port == int(port)


def test_secret_values_lists_every_password_longest_first() -> None:
    config = load_config(
        {
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_USERNAME": "svc",
            "KAFKA_SASL_PASSWORD": "kafka-pw",
            "MONGODB_URI": "mongodb://alice:hunter2%40x@db.example.test:27017/",
        },
        env_file=None,
    )
    # The MongoDB password as written in the URI and percent-decoded; user names are not secret.
    assert config.secret_values() == ("hunter2%40x", "hunter2@x", "kafka-pw")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ()),
        ({"MONGODB_URI": "mongodb://alice@db.example.test/"}, ()),
        ({"MONGODB_URI": "mongodb://alice:plain@db.example.test/"}, ("plain",)),
        ({"MONGODB_URI": "mongodb://u:p@[::1/"}, ()),  # unparseable: nothing to list
    ],
)
def test_secret_values_without_passwords(env: dict[str, str], expected: tuple[str, ...]) -> None:
    assert load_config(env, env_file=None).secret_values() == expected


# --- the specification's section 9, exactly -------------------------------------------------

#: The environment block of the specification (section 9), character for character.
SPEC_ENV_BLOCK = """\
# Polymarket API
POLYMARKET_BASE_URL=https://clob.polymarket.com
POLYMARKET_REQUEST_TIMEOUT_SECONDS=30
POLYMARKET_RATE_LIMIT_DELAY_MS=200

# Kafka
KAFKA_BOOTSTRAP_SERVERS=localhost:9092
KAFKA_TOPIC=polymarket-events
KAFKA_TOPIC_PREFIX=               # Optional prefix for environments (e.g., "dev.")
KAFKA_SECURITY_PROTOCOL=PLAINTEXT # Use SASL_SSL for production
KAFKA_SASL_MECHANISMS=PLAIN
KAFKA_SASL_USERNAME=
KAFKA_SASL_PASSWORD=
KAFKA_CLIENT_ID=polymarket-kafka-producer

# MongoDB
MONGODB_URI=mongodb://localhost:27017
MONGODB_DATABASE=horizon
MONGODB_COLLECTION=polymarket_subscriptions
MONGODB_POLL_INTERVAL_SECONDS=60
MONGODB_COLLECTION_PREFIX=        # Optional prefix for environment isolation

# Polling
POLL_INTERVAL_SECONDS=30
ENVIRONMENT=dev
"""


def test_the_specification_defaults() -> None:
    config = AppConfig()
    assert [f.name for f in dataclasses.fields(AppConfig)][:5] == [
        "kafka",
        "polymarket",
        "mongodb",
        "environment",
        "poll_interval_seconds",
    ]
    assert (config.environment, config.poll_interval_seconds) == ("dev", 30)
    assert PolymarketConfig() == PolymarketConfig(
        base_url="https://clob.polymarket.com", request_timeout_seconds=30, rate_limit_delay_ms=200
    )
    assert KafkaConfig() == KafkaConfig(
        security_protocol="PLAINTEXT",
        sasl_mechanisms="PLAIN",
        sasl_username="",
        sasl_password="",
        client_id="polymarket-kafka-producer",
    )
    mongo = MongoConfig()
    assert (mongo.database, mongo.collection, mongo.poll_interval_seconds) == (
        "horizon",
        "polymarket_subscriptions",
        60,
    )


def test_the_specification_environment_block_pasted_into_a_dotenv_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(SPEC_ENV_BLOCK)
    config = load_config({}, env_file=env_file)
    assert config == AppConfig()  # the block spells out the defaults, comments and all
    assert config.kafka.topic_prefix == ""
    assert config.mongodb.collection_prefix == ""
    assert unknown_variable_warnings({}, env_file=env_file) == []


@pytest.mark.parametrize("environment", ["dev", "prod-eu-1", "Staging"])
def test_environment_is_free_text(environment: str) -> None:
    assert load_config({"ENVIRONMENT": environment}, env_file=None).environment == environment


def test_an_empty_sasl_username_is_missing() -> None:
    env = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": " "}
    with pytest.raises(ConfigError, match="^KAFKA_SASL_USERNAME: required"):
        load_config(env, env_file=None)


# --- unknown variables and the env file ------------------------------------------------------


def test_known_variables_are_the_ones_documented_in_app_env_example() -> None:
    example = Path(__file__).parents[2] / "app.env.example"
    documented = {
        line.split("=", 1)[0]
        for line in example.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert known_variables() == documented


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "KAFKA_TOPIC_PREFX",
            "unknown variable KAFKA_TOPIC_PREFX is ignored; did you mean KAFKA_TOPIC_PREFIX?",
        ),
        (
            "POLL_INTERVAL",
            "unknown variable POLL_INTERVAL is ignored; did you mean POLL_INTERVAL_SECONDS?",
        ),
        ("MONGODB_URL", "unknown variable MONGODB_URL is ignored; did you mean MONGODB_URI?"),
        (
            "POLYMARKET_RATE_LIMIT_MS",
            "unknown variable POLYMARKET_RATE_LIMIT_MS is ignored; "
            "did you mean POLYMARKET_RATE_LIMIT_DELAY_MS?",
        ),
        ("KAFKA_HEAP_OPTS", "unknown variable KAFKA_HEAP_OPTS is ignored"),
    ],
)
def test_an_unknown_variable_with_our_prefix_is_reported(name: str, expected: str) -> None:
    assert unknown_variable_warnings({name: "secret-value"}, env_file=None) == [expected]


def test_unknown_variables_in_the_dotenv_file_are_reported_too(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("KAFKA_TOPICS=x\n")
    (warning,) = unknown_variable_warnings({"PATH": "/bin", "HOME": "/root"}, env_file=env_file)
    assert warning.startswith("unknown variable KAFKA_TOPICS is ignored")


def test_known_and_foreign_variables_are_not_reported() -> None:
    env = {**FULL_ENV, "PATH": "/usr/bin", "TEST_MONGODB_URI": "x", "POLLING": "x"}
    assert unknown_variable_warnings(env, env_file=None) == []


def test_check_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text("KAFKA_TOPIC=x\n")
    check_env_file(env_file)
    with pytest.raises(ConfigError, match="^--env-file: no such file: .*missing.env$"):
        check_env_file(tmp_path / "missing.env")
    with pytest.raises(ConfigError, match="^--env-file: is a directory"):
        check_env_file(tmp_path)


# --- the market channel (POLYMARKET_WS_*) ----------------------------------------------------


def test_market_channel_defaults() -> None:
    polymarket = load_config({}, env_file=None).polymarket
    assert polymarket.ws_url == "wss://ws-subscriptions-clob.polymarket.com/ws/market"
    assert polymarket.streaming
    assert polymarket.ws_assets_per_connection == 200
    assert polymarket.ws_ping_seconds == 10.0
    assert polymarket.ws_silence_seconds == 30.0
    assert polymarket.ws_coalesce_ms == 100.0
    assert polymarket.ws_reconcile_seconds == 120.0
    assert polymarket.ws_tolerance == 0.02
    assert polymarket.ws_reconnect_max_seconds == 60.0
    assert polymarket == PolymarketConfig()


def test_every_market_channel_variable_is_read() -> None:
    env = {
        "POLYMARKET_WS_URL": " ws://127.0.0.1:8765/ws/market ",
        "POLYMARKET_WS_ASSETS_PER_CONNECTION": "50",
        "POLYMARKET_WS_PING_SECONDS": "5",
        "POLYMARKET_WS_SILENCE_SECONDS": "12.5",
        "POLYMARKET_WS_COALESCE_MS": "0",
        "POLYMARKET_WS_RECONCILE_SECONDS": "600",
        "POLYMARKET_WS_TOLERANCE": "0.05",
        "POLYMARKET_WS_RECONNECT_MAX_SECONDS": "1",
    }
    polymarket = load_config(env, env_file=None).polymarket
    assert polymarket.ws_url == "ws://127.0.0.1:8765/ws/market"
    assert polymarket.streaming
    assert polymarket.ws_assets_per_connection == 50
    assert polymarket.ws_ping_seconds == 5.0
    assert polymarket.ws_silence_seconds == 12.5
    assert polymarket.ws_coalesce_ms == 0.0  # no coalescing: every update
    assert polymarket.ws_reconcile_seconds == 600.0
    assert polymarket.ws_tolerance == 0.05
    assert polymarket.ws_reconnect_max_seconds == 1.0


def test_the_market_channel_variables_are_known() -> None:
    assert {
        "POLYMARKET_WS_URL",
        "POLYMARKET_WS_ASSETS_PER_CONNECTION",
        "POLYMARKET_WS_PING_SECONDS",
        "POLYMARKET_WS_SILENCE_SECONDS",
        "POLYMARKET_WS_COALESCE_MS",
        "POLYMARKET_WS_RECONCILE_SECONDS",
        "POLYMARKET_WS_TOLERANCE",
        "POLYMARKET_WS_RECONNECT_MAX_SECONDS",
    } <= known_variables()


@pytest.mark.parametrize(
    "url", ["wss://example.test/ws/market", "ws://localhost:9000", "WSS://Example.test/x"]
)
def test_a_ws_url_streams(url: str) -> None:
    polymarket = load_config({"POLYMARKET_WS_URL": url}, env_file=None).polymarket
    assert polymarket.ws_url == url
    assert polymarket.streaming


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_ws_url_turns_streaming_off(value: str) -> None:
    """app.env.example: "Empty turns streaming off". The reader takes a blank value for "use
    the default", so the variable cannot be emptied."""
    polymarket = load_config({"POLYMARKET_WS_URL": value}, env_file=None).polymarket
    assert polymarket.ws_url == ""
    assert not polymarket.streaming


def test_streaming_follows_the_url() -> None:
    assert PolymarketConfig().streaming
    assert not PolymarketConfig(ws_url="").streaming


@pytest.mark.parametrize(
    "url",
    [
        "https://ws-subscriptions-clob.polymarket.com/ws/market",
        "http://localhost:9000",
        "ws-subscriptions-clob.polymarket.com/ws/market",
        "wss://",
        "wss:///ws/market",
        "ftp://example.test",
    ],
)
def test_a_ws_url_that_is_not_ws_or_wss_is_refused(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"POLYMARKET_WS_URL": url}, env_file=None)
    text = str(info.value)
    assert text == (
        f"POLYMARKET_WS_URL: must be a ws(s):// URL or empty (no streaming), got {url!r}"
    )
    assert info.value.variable == "POLYMARKET_WS_URL"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("POLYMARKET_WS_ASSETS_PER_CONNECTION", "0", "must be >= 1"),
        ("POLYMARKET_WS_ASSETS_PER_CONNECTION", "2.5", "must be an integer"),
        ("POLYMARKET_WS_PING_SECONDS", "0", "must be > 0"),
        ("POLYMARKET_WS_PING_SECONDS", "often", "must be a number"),
        ("POLYMARKET_WS_SILENCE_SECONDS", "-1", "must be > 0"),
        ("POLYMARKET_WS_SILENCE_SECONDS", "inf", "finite"),
        ("POLYMARKET_WS_COALESCE_MS", "-1", "must be >= 0"),
        ("POLYMARKET_WS_COALESCE_MS", "nan", "finite"),
        ("POLYMARKET_WS_RECONCILE_SECONDS", "0", "must be > 0"),
        ("POLYMARKET_WS_TOLERANCE", "0", "must be > 0"),
        ("POLYMARKET_WS_TOLERANCE", "-0.1", "must be > 0"),
        ("POLYMARKET_WS_RECONNECT_MAX_SECONDS", "0.5", "must be >= 1"),
    ],
)
def test_malformed_market_channel_values_name_the_variable(
    variable: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({variable: value}, env_file=None)
    text = str(info.value)
    assert text.startswith(f"{variable}: ")
    assert message in text
    assert info.value.variable == variable


@pytest.mark.parametrize(
    ("variable", "value", "bounds"),
    [
        ("POLYMARKET_WS_ASSETS_PER_CONNECTION", "501", "between 1 and 500"),
        ("POLYMARKET_WS_PING_SECONDS", "0.5", "between 1 and 60"),
        ("POLYMARKET_WS_PING_SECONDS", "61", "between 1 and 60"),
        ("POLYMARKET_WS_SILENCE_SECONDS", "0.001", "between 1 and 3600"),
        ("POLYMARKET_WS_COALESCE_MS", "60001", "between 0 and 60000"),
        ("POLYMARKET_WS_RECONCILE_SECONDS", "86400", "between 1 and 3600"),
        ("POLYMARKET_WS_TOLERANCE", "5", "between 0 and 0.99"),
    ],
)
def test_market_channel_settings_out_of_bounds_are_refused(
    variable: str, value: str, bounds: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({variable: value}, env_file=None)
    assert str(info.value) == f"{variable}: must be {bounds}, got {float(value):g}"


def test_market_channel_settings_at_their_bounds_are_accepted() -> None:
    config = load_config(
        {
            "POLYMARKET_WS_ASSETS_PER_CONNECTION": "500",
            "POLYMARKET_WS_PING_SECONDS": "1",
            "POLYMARKET_WS_SILENCE_SECONDS": "3600",
            "POLYMARKET_WS_RECONCILE_SECONDS": "3600",
            "POLYMARKET_WS_TOLERANCE": "0.99",
            "POLYMARKET_WS_COALESCE_MS": "0",
        },
        env_file=None,
    ).polymarket
    assert (config.ws_assets_per_connection, config.ws_tolerance) == (500, 0.99)
    assert (config.ws_silence_seconds, config.ws_coalesce_ms) == (3600.0, 0.0)
