"""Configuration from environment variables and an optional `.env` file.

Why this file is over 400 lines: every setting of the service is declared, defaulted and
read here, in one place, so `known_variables` can list them and app.env.example can be
checked against them; splitting the dataclasses from their readers would separate each
variable's default from its validation.

Read once at start-up. Every variable, its default and its meaning is listed in
`app.env.example`. A missing or malformed value raises `ConfigError`, whose message is one
line naming the variable; the CLI writes it on stderr (a JSON log line when `LOG_FORMAT=json`)
and exits with status 2. Secrets (the SASL password, credentials inside `MONGODB_URI`) never
appear in a `repr`, a log line or an error.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from polymarket_kafka.env_reader import (
    DEFAULT_HTTP_HOST,
    DEFAULT_HTTP_PORT,
    ConfigError,
    EnvReader,
    http_address,
)
from polymarket_kafka.environment import check_env_file, merged_env
from polymarket_kafka.logs import LOG_FORMATS
from polymarket_kafka.paths import DEFAULT_ENV_FILE, DEFAULT_RULES_PATH
from polymarket_kafka.redact import redact_uri

__all__ = [
    "DEFAULT_RULES_PATH",
    "VARIABLE_PREFIXES",
    "AppConfig",
    "ConfigError",
    "KafkaConfig",
    "MongoConfig",
    "PolymarketConfig",
    "check_env_file",
    "known_variables",
    "load_config",
    "requested_log_format",
    "require_sasl_credentials",
    "unknown_variable_warnings",
]


_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI")
_DELIVERY_MODES = ("exactly_once", "at_least_once")


@dataclass(frozen=True)
class PolymarketConfig:
    """Polymarket CLOB and Gamma API access.

    The timeout and the request spacing keep the specification's defaults (30 s, 200 ms);
    README "Defaults and the specification" says which values we recommend and why.
    """

    base_url: str = "https://clob.polymarket.com"
    gamma_url: str = "https://gamma-api.polymarket.com"
    request_timeout_seconds: float = 30.0
    rate_limit_delay_ms: float = 200.0
    max_retries: int = 4
    metadata_refresh_seconds: float = 300.0
    #: Added: the market channel (WebSocket) prices are streamed from; empty turns streaming
    #: off (every price then comes from REST polls, as before).
    ws_url: str = "wss://ws-subscriptions-clob.polymarket.com/ws/market"
    #: Assets per connection (connections stall silently above ~250 live, §8.5).
    ws_assets_per_connection: int = 200
    #: The text `PING` every this often; a connection whose `PING` got no `PONG` by the next
    #: one is dead.
    ws_ping_seconds: float = 10.0
    #: A connection that delivers no data frame for this long is dead (sockets freeze).
    ws_silence_seconds: float = 30.0
    #: At most one snapshot per market per this many milliseconds (the latest wins).
    ws_coalesce_ms: float = 100.0
    #: While streamed, a market is still polled over REST this often (reconciliation); a
    #: market the stream does not serve is polled every `POLL_INTERVAL_SECONDS`.
    ws_reconcile_seconds: float = 120.0
    #: A REST price further than this from the streamed one is a disagreement: counted,
    #: REST is trusted and the market's book is asked for again.
    ws_tolerance: float = 0.02
    #: The reconnect backoff doubles from 1 s up to this cap (each wait jittered).
    ws_reconnect_max_seconds: float = 60.0

    @property
    def streaming(self) -> bool:
        """Prices are streamed from the market channel (`POLYMARKET_WS_URL` is set)."""
        return bool(self.ws_url)


@dataclass(frozen=True)
class KafkaConfig:
    """Kafka producer settings. The SASL password is kept out of `repr`."""

    bootstrap_servers: str = "localhost:9092"
    topic: str = "polymarket-events"
    topic_prefix: str = ""
    security_protocol: str = "PLAINTEXT"
    sasl_mechanisms: str = "PLAIN"
    #: Empty means unset, as in the specification (required for the SASL_* protocols).
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    client_id: str = "polymarket-kafka-producer"
    #: Added to the specification: the bound on events handed to Kafka and not yet
    #: acknowledged (`publish` waits at it) and the topic of events that cannot be delivered.
    max_in_flight: int = 10_000
    dead_letter_topic: str = "polymarket-events.dlq"
    #: Added: the compacted topic holding each market's detector state (restored at start).
    #: Empty (the default in this version) keeps no state: a restart starts afresh.
    state_topic: str = ""
    #: Partitions the state topic is created with (when the service creates it).
    state_partitions: int = 12
    #: Added: with a state topic, `exactly_once` commits events and the state they imply in
    #: Kafka transactions; `at_least_once` (for clusters without transactions) writes state
    #: by checkpoints only, and a crash may repeat an event (consumers dedupe by event_id).
    delivery: str = "exactly_once"
    #: Added: the producer's `transactional.id` (exactly_once); empty derives it from the
    #: client id and the state topic (`full_transactional_id`). One writer per id: a second
    #: instance with the same id fences the first.
    transactional_id: str = ""
    #: Added: how long events gather before their transaction is committed (exactly_once).
    transaction_linger_ms: int = 20
    #: Added: the consumer group several instances share the markets through (empty: one
    #: instance does everything, as before). Needs a state topic and exactly_once: markets
    #: are owned by state-topic partition, each with its own transactional id.
    group_id: str = ""
    #: Added (with a group): the group session timeout, so how long a crashed instance's
    #: partitions wait before they move (Kafka's default is 45000; takeover time follows it).
    group_session_timeout_ms: int = 10_000
    #: Added (with a group): tail the whole state topic, so a partition taken over needs
    #: only the records written since (no full restore). Costs the memory of every
    #: market's state in every instance.
    standby: bool = False

    @property
    def full_topic(self) -> str:
        """The topic events are published to: `{KAFKA_TOPIC_PREFIX}{KAFKA_TOPIC}`."""
        return f"{self.topic_prefix}{self.topic}"

    @property
    def full_dead_letter_topic(self) -> str:
        """`{KAFKA_TOPIC_PREFIX}{KAFKA_DEAD_LETTER_TOPIC}`; empty when there is none."""
        return f"{self.topic_prefix}{self.dead_letter_topic}" if self.dead_letter_topic else ""

    @property
    def full_state_topic(self) -> str:
        """`{KAFKA_TOPIC_PREFIX}{KAFKA_STATE_TOPIC}`; empty when state is not kept."""
        return f"{self.topic_prefix}{self.state_topic}" if self.state_topic else ""

    @property
    def exactly_once(self) -> bool:
        """Events and detector state are committed together in transactions: a state topic
        is kept and `delivery` is `exactly_once`."""
        return bool(self.state_topic) and self.delivery == "exactly_once"

    @property
    def full_transactional_id(self) -> str:
        """`KAFKA_TRANSACTIONAL_ID`, else `{KAFKA_CLIENT_ID}.{full_state_topic}`: instances
        sharing a state topic share the id, so a newer one fences an older one."""
        return self.transactional_id or f"{self.client_id}.{self.full_state_topic}"

    @property
    def grouped(self) -> bool:
        """Several instances share the markets (`KAFKA_GROUP_ID` is set)."""
        return bool(self.group_id)

    def partition_transactional_id(self, partition: int) -> str:
        """With a group: the transactional id of one state-topic partition's producer. The
        same in every instance of the group (never the client id, which may differ), so
        the instance taking a partition over fences its previous owner."""
        base = self.transactional_id or f"{self.group_id}.{self.full_state_topic}"
        return f"{base}.{partition}"

    def __repr__(self) -> str:
        password = "''" if not self.sasl_password else "'***'"
        return (
            f"KafkaConfig(bootstrap_servers={self.bootstrap_servers!r}, topic={self.topic!r}, "
            f"topic_prefix={self.topic_prefix!r}, security_protocol={self.security_protocol!r}, "
            f"sasl_mechanisms={self.sasl_mechanisms!r}, sasl_username={self.sasl_username!r}, "
            f"sasl_password={password}, client_id={self.client_id!r}, "
            f"max_in_flight={self.max_in_flight!r}, dead_letter_topic={self.dead_letter_topic!r}, "
            f"state_topic={self.state_topic!r}, state_partitions={self.state_partitions!r}, "
            f"delivery={self.delivery!r}, transactional_id={self.transactional_id!r}, "
            f"transaction_linger_ms={self.transaction_linger_ms!r}, group_id={self.group_id!r}, "
            f"group_session_timeout_ms={self.group_session_timeout_ms!r}, "
            f"standby={self.standby!r})"
        )


@dataclass(frozen=True)
class MongoConfig:
    """MongoDB subscription store. Credentials in the URI are kept out of `repr`."""

    uri: str = field(default="mongodb://localhost:27017", repr=False)
    database: str = "horizon"
    collection: str = "polymarket_subscriptions"
    collection_prefix: str = ""
    poll_interval_seconds: float = 60.0

    @property
    def full_collection(self) -> str:
        """`{MONGODB_COLLECTION_PREFIX}{MONGODB_COLLECTION}`."""
        return f"{self.collection_prefix}{self.collection}"

    @property
    def redacted_uri(self) -> str:
        """The URI with credentials replaced, safe to log."""
        return redact_uri(self.uri)

    def __repr__(self) -> str:
        return (
            f"MongoConfig(uri={self.redacted_uri!r}, database={self.database!r}, "
            f"collection={self.collection!r}, collection_prefix={self.collection_prefix!r}, "
            f"poll_interval_seconds={self.poll_interval_seconds!r})"
        )


@dataclass(frozen=True)
class AppConfig:
    """Everything the service reads at start-up.

    `kafka`, `polymarket`, `mongodb`, `environment` and `poll_interval_seconds` are the
    specification's fields, in its order; the rest are this service's additions.
    """

    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    polymarket: PolymarketConfig = field(default_factory=PolymarketConfig)
    mongodb: MongoConfig = field(default_factory=MongoConfig)
    #: Free text naming the deployment (`dev` in the specification); logged at start-up.
    environment: str = "dev"
    poll_interval_seconds: float = 30.0
    shutdown_grace_seconds: float = 10.0
    rules_path: Path | None = None
    log_level: str = "INFO"
    #: `text` (readable, for terminals) or `json` (one object per line, for log pipelines).
    log_format: str = "text"
    #: Bind address and port of the health/metrics HTTP server (port 0: any free port).
    http_host: str = DEFAULT_HTTP_HOST
    http_port: int = DEFAULT_HTTP_PORT
    #: Added: how often the detector state of changed markets is written to the state topic.
    state_checkpoint_seconds: float = 60.0

    def secret_values(self) -> tuple[str, ...]:
        """Every configured password, verbatim: the SASL one and the MongoDB URI's (as written
        and percent-decoded), longest first.

        Log redaction scrubs these strings from every line, whatever logged them. User names
        are not listed (scrubbing a short name everywhere would mangle messages); a URI's
        `user:password@` part is redacted by pattern instead.
        """
        values = [self.kafka.sasl_password]
        try:
            password = urlsplit(self.mongodb.uri).password
        except ValueError:
            password = None
        if password:
            values += [password, unquote(password)]
        return tuple(sorted({v for v in values if v}, key=len, reverse=True))


def require_sasl_credentials(config: KafkaConfig) -> None:
    """Raise `ConfigError` if a SASL protocol is chosen without a username and password."""
    for variable, value in (
        ("KAFKA_SASL_USERNAME", config.sasl_username),
        ("KAFKA_SASL_PASSWORD", config.sasl_password),
    ):
        if config.security_protocol.startswith("SASL_") and not value:
            raise ConfigError(variable, f"required when protocol is {config.security_protocol}")


#: KAFKA_GROUP_SESSION_TIMEOUT_MS at most (brokers cap it at group.max.session.timeout.ms,
#: 30 min by default; past 5 min a crashed instance's markets would wait too long).
MAX_GROUP_SESSION_TIMEOUT_MS = 300_000


def require_group_prerequisites(config: KafkaConfig) -> None:
    """Raise `ConfigError` if `KAFKA_GROUP_ID` is set without what sharding builds on (a
    state topic and exactly-once delivery), or a group setting is out of bounds."""
    if not config.grouped:
        return
    if not config.state_topic:
        raise ConfigError(
            "KAFKA_GROUP_ID", "needs KAFKA_STATE_TOPIC (markets are owned by its partitions)"
        )
    if not config.exactly_once:
        raise ConfigError(
            "KAFKA_GROUP_ID",
            "needs KAFKA_DELIVERY=exactly_once (a partition's new owner fences the old one "
            "by its transactional id)",
        )
    if config.group_session_timeout_ms > MAX_GROUP_SESSION_TIMEOUT_MS:
        raise ConfigError(
            "KAFKA_GROUP_SESSION_TIMEOUT_MS",
            f"must be between 1000 and {MAX_GROUP_SESSION_TIMEOUT_MS}, "
            f"got {config.group_session_timeout_ms}",
        )


def requested_log_format(
    environ: Mapping[str, str] | None = None, *, env_file: Path | None = DEFAULT_ENV_FILE
) -> str:
    """The `LOG_FORMAT` that `environ` (default: `os.environ`) over an optional `.env` asks
    for, `text` when it is unset or invalid.

    For reporting a `ConfigError`: it is raised before logging is configured, yet a log
    pipeline expecting JSON should get its line as JSON.
    """
    try:
        return EnvReader(merged_env(environ, env_file)).choice(
            "LOG_FORMAT", AppConfig.log_format, LOG_FORMATS
        )
    except ConfigError:
        return AppConfig.log_format


def load_config(
    environ: Mapping[str, str] | None = None, *, env_file: Path | None = DEFAULT_ENV_FILE
) -> AppConfig:
    """Build an `AppConfig` from `environ` (default: `os.environ`) over an optional `.env`.

    A missing `env_file` is skipped (the CLI refuses one named explicitly, see
    `check_env_file`).
    """
    return _build(EnvReader(merged_env(environ, env_file)))


#: Prefixes of this service's variables: an unknown name with one of them is likely a typo.
VARIABLE_PREFIXES = ("POLYMARKET_", "KAFKA_", "MONGODB_", "POLL_")


@functools.cache
def known_variables() -> frozenset[str]:
    """Every variable `load_config` reads (recorded from a run on an empty environment)."""
    reader = EnvReader({})
    _build(reader)
    return frozenset(reader.names)


def unknown_variable_warnings(
    environ: Mapping[str, str] | None = None, *, env_file: Path | None = DEFAULT_ENV_FILE
) -> list[str]:
    """One line per variable that carries one of our prefixes but that nothing reads.

    `KAFKA_TOPIC_PREFX=dev.` would otherwise be ignored in silence; the line names the
    closest known variable when there is one. Sorted by name. Values are never echoed.
    """
    known = known_variables()
    warnings = []
    for name in sorted(merged_env(environ, env_file)):
        if not name.startswith(VARIABLE_PREFIXES) or name in known:
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]}?" if close else ""
        warnings.append(f"unknown variable {name} is ignored{hint}")
    return warnings


#: Bounds of the market channel's settings: (variable, field, lowest, highest).
_STREAM_LIMITS = (
    # Updates stop arriving past ~500 assets on one connection (shared/polymarket-api.md §4).
    ("POLYMARKET_WS_ASSETS_PER_CONNECTION", "ws_assets_per_connection", 1, 500),
    ("POLYMARKET_WS_PING_SECONDS", "ws_ping_seconds", 1.0, 60.0),
    ("POLYMARKET_WS_SILENCE_SECONDS", "ws_silence_seconds", 1.0, 3600.0),
    ("POLYMARKET_WS_COALESCE_MS", "ws_coalesce_ms", 0.0, 60_000.0),
    # REST is the stream's watchdog: a reconciliation at least once an hour.
    ("POLYMARKET_WS_RECONCILE_SECONDS", "ws_reconcile_seconds", 1.0, 3600.0),
    # Prices are probabilities: a tolerance of 1 or more would compare nothing.
    ("POLYMARKET_WS_TOLERANCE", "ws_tolerance", 0.0, 0.99),
)


def check_stream_limits(config: PolymarketConfig) -> None:
    """Raise `ConfigError` for a market-channel setting outside its bounds."""
    for variable, name, lowest, highest in _STREAM_LIMITS:
        value = getattr(config, name)
        if not lowest <= value <= highest:
            raise ConfigError(
                variable, f"must be between {lowest:g} and {highest:g}, got {value:g}"
            )


def _ws_url(r: EnvReader) -> str:
    """`POLYMARKET_WS_URL`: a ws(s):// URL, or empty (streaming off)."""
    if r.blank("POLYMARKET_WS_URL"):
        return ""
    value = r.text("POLYMARKET_WS_URL", PolymarketConfig.ws_url)
    parts = urlsplit(value)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ConfigError(
            "POLYMARKET_WS_URL", f"must be a ws(s):// URL or empty (no streaming), got {value!r}"
        )
    return value


def _build(r: EnvReader) -> AppConfig:

    polymarket = PolymarketConfig(
        base_url=r.url("POLYMARKET_BASE_URL", PolymarketConfig.base_url),
        gamma_url=r.url("POLYMARKET_GAMMA_URL", PolymarketConfig.gamma_url),
        request_timeout_seconds=r.number(
            "POLYMARKET_REQUEST_TIMEOUT_SECONDS",
            PolymarketConfig.request_timeout_seconds,
            strict=True,
        ),
        rate_limit_delay_ms=r.number(
            "POLYMARKET_RATE_LIMIT_DELAY_MS", PolymarketConfig.rate_limit_delay_ms, strict=False
        ),
        max_retries=r.integer("POLYMARKET_MAX_RETRIES", PolymarketConfig.max_retries, minimum=0),
        metadata_refresh_seconds=r.number(
            "POLYMARKET_METADATA_REFRESH_SECONDS",
            PolymarketConfig.metadata_refresh_seconds,
            strict=True,
        ),
        ws_url=_ws_url(r),
        ws_assets_per_connection=r.integer(
            "POLYMARKET_WS_ASSETS_PER_CONNECTION",
            PolymarketConfig.ws_assets_per_connection,
            minimum=1,
        ),
        ws_ping_seconds=r.number(
            "POLYMARKET_WS_PING_SECONDS", PolymarketConfig.ws_ping_seconds, strict=True
        ),
        ws_silence_seconds=r.number(
            "POLYMARKET_WS_SILENCE_SECONDS", PolymarketConfig.ws_silence_seconds, strict=True
        ),
        ws_coalesce_ms=r.number(
            "POLYMARKET_WS_COALESCE_MS", PolymarketConfig.ws_coalesce_ms, strict=False
        ),
        ws_reconcile_seconds=r.number(
            "POLYMARKET_WS_RECONCILE_SECONDS", PolymarketConfig.ws_reconcile_seconds, strict=True
        ),
        ws_tolerance=r.number(
            "POLYMARKET_WS_TOLERANCE", PolymarketConfig.ws_tolerance, strict=True
        ),
        ws_reconnect_max_seconds=r.number(
            "POLYMARKET_WS_RECONNECT_MAX_SECONDS",
            PolymarketConfig.ws_reconnect_max_seconds,
            minimum=1.0,
            strict=False,
        ),
    )

    security_protocol = r.choice(
        "KAFKA_SECURITY_PROTOCOL", KafkaConfig.security_protocol, _SECURITY_PROTOCOLS
    )
    kafka = KafkaConfig(
        bootstrap_servers=r.text("KAFKA_BOOTSTRAP_SERVERS", KafkaConfig.bootstrap_servers),
        topic=r.text("KAFKA_TOPIC", KafkaConfig.topic),
        topic_prefix=r.text("KAFKA_TOPIC_PREFIX", KafkaConfig.topic_prefix),
        security_protocol=security_protocol,
        sasl_mechanisms=r.choice(
            "KAFKA_SASL_MECHANISMS", KafkaConfig.sasl_mechanisms, _SASL_MECHANISMS
        ),
        sasl_username=r.text("KAFKA_SASL_USERNAME", ""),
        sasl_password=r.text("KAFKA_SASL_PASSWORD", ""),
        client_id=r.text("KAFKA_CLIENT_ID", KafkaConfig.client_id),
        max_in_flight=r.integer("KAFKA_MAX_IN_FLIGHT", KafkaConfig.max_in_flight, minimum=1),
        dead_letter_topic=r.text("KAFKA_DEAD_LETTER_TOPIC", KafkaConfig.dead_letter_topic),
        state_topic=r.text("KAFKA_STATE_TOPIC", KafkaConfig.state_topic),
        state_partitions=r.integer(
            "KAFKA_STATE_PARTITIONS", KafkaConfig.state_partitions, minimum=1
        ),
        delivery=r.choice("KAFKA_DELIVERY", KafkaConfig.delivery, _DELIVERY_MODES),
        transactional_id=r.text("KAFKA_TRANSACTIONAL_ID", KafkaConfig.transactional_id),
        transaction_linger_ms=r.integer(
            "KAFKA_TRANSACTION_LINGER_MS", KafkaConfig.transaction_linger_ms, minimum=0
        ),
        group_id=r.text("KAFKA_GROUP_ID", KafkaConfig.group_id),
        group_session_timeout_ms=r.integer(
            "KAFKA_GROUP_SESSION_TIMEOUT_MS",
            KafkaConfig.group_session_timeout_ms,
            minimum=1000,
        ),
        standby=r.flag("KAFKA_STANDBY", KafkaConfig.standby),
    )
    require_sasl_credentials(kafka)
    require_group_prerequisites(kafka)
    check_stream_limits(polymarket)

    mongo_uri = r.text("MONGODB_URI", MongoConfig.uri)
    if not mongo_uri.startswith(("mongodb://", "mongodb+srv://")):
        # Never echo the value: it may hold credentials.
        raise ConfigError("MONGODB_URI", "must start with mongodb:// or mongodb+srv://")
    mongo = MongoConfig(
        uri=mongo_uri,
        database=r.text("MONGODB_DATABASE", MongoConfig.database),
        collection=r.text("MONGODB_COLLECTION", MongoConfig.collection),
        collection_prefix=r.text("MONGODB_COLLECTION_PREFIX", MongoConfig.collection_prefix),
        poll_interval_seconds=r.number(
            "MONGODB_POLL_INTERVAL_SECONDS", MongoConfig.poll_interval_seconds, strict=True
        ),
    )

    rules = r.optional_str("RULES_PATH")
    http_host, http_port = http_address(r)
    return AppConfig(
        kafka=kafka,
        polymarket=polymarket,
        mongodb=mongo,
        poll_interval_seconds=r.number(
            "POLL_INTERVAL_SECONDS", AppConfig.poll_interval_seconds, strict=True
        ),
        environment=r.text("ENVIRONMENT", AppConfig.environment),
        shutdown_grace_seconds=r.number(
            "SHUTDOWN_GRACE_SECONDS", AppConfig.shutdown_grace_seconds, strict=True
        ),
        rules_path=Path(rules) if rules else None,
        log_level=r.choice("LOG_LEVEL", AppConfig.log_level, ("DEBUG", "INFO", "WARNING", "ERROR")),
        log_format=r.choice("LOG_FORMAT", AppConfig.log_format, LOG_FORMATS),
        http_host=http_host,
        http_port=http_port,
        state_checkpoint_seconds=r.number(
            "STATE_CHECKPOINT_SECONDS", AppConfig.state_checkpoint_seconds, strict=True
        ),
    )
