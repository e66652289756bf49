"""The `polymarket-kafka` command.

Why this file is over 400 lines: the argument parser of every command and the dispatch of
the configured ones live together, so `--help` and `healthcheck` import nothing more
(tests/unit/test_cli_imports.py); the offline commands are in `cli_offline`.

Exit status: 0 on success (including a clean stop on SIGINT/SIGTERM), 1 when the command
failed at run time, 2 for a configuration or usage error (one line on stderr, naming the
variable or argument at fault), 69 (sysexits' EX_UNAVAILABLE) for `demo` in an installation
without it, such as the container image (one line: what is missing, what to run instead).
The offline commands (`rules check|explain|test`, `replay`) live in `cli_offline` and never
read the service configuration; 1 there means bad input.

What `run` writes on stderr goes through the logger once logging is configured, so with
`LOG_FORMAT=json` every line is a scrubbed JSON object: an invalid rules file, the ops address
taken, a crash of start-up or of a stage (its traceback in `exc_info`), warnings. A
configuration error comes before logging exists: it is made a JSON line here when
`LOG_FORMAT=json` asks for it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from polymarket_kafka import __version__
from polymarket_kafka.cli_offline import OFFLINE_COMMANDS, add_offline_commands, run_offline
from polymarket_kafka.env_reader import ConfigError, EnvReader, http_address, url_host
from polymarket_kafka.environment import check_env_file, merged_env
from polymarket_kafka.paths import DEFAULT_ENV_FILE

if TYPE_CHECKING:
    import logging

    from polymarket_kafka.config import AppConfig
    from polymarket_kafka.subscriptions import SubscriptionChange

__all__ = ["main"]

#: The logger of this module's lines (`logging` is imported by the commands that log).
LOGGER_NAME = "polymarket_kafka"

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_UNAVAILABLE = 69


def _logger() -> logging.Logger:
    import logging

    return logging.getLogger(LOGGER_NAME)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polymarket-kafka",
        description="Detect conviction changes on Polymarket and publish them to Kafka.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--env-file",
        type=Path,
        default=None,
        help="dotenv file read before the environment; it must exist (default: ./.env when "
        "present; the environment wins)",
    )
    parser.add_argument(
        "--backend",
        choices=("trio", "asyncio"),
        default="trio",
        help="async backend (default: trio)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("run", help="run the service (configured by environment variables)")

    demo = commands.add_parser(
        "demo",
        help="run the embedded demo: local broker, recorded Polymarket data, print events",
    )
    demo.add_argument("--cassette", type=Path, default=None, help="recorded Polymarket session")
    demo.add_argument(
        "--interval", type=float, default=0.25, help="seconds between poll cycles (default 0.25)"
    )
    demo.add_argument(
        "--serve",
        action="store_true",
        help="keep serving the dashboard (HTTP_PORT) after the recorded cycles, until Ctrl-C",
    )

    sub = commands.add_parser("subscribe", help="add a reference to a market (ref_count += 1)")
    sub.add_argument("market_id", help="Polymarket condition id (0x + 64 hex)")
    sub.add_argument("--question", default=None, help="question text to cache on the document")

    unsub = commands.add_parser(
        "unsubscribe", help="drop a reference to a market (ref_count -= 1, never below 0)"
    )
    unsub.add_argument("market_id", help="Polymarket condition id (0x + 64 hex)")

    listing = commands.add_parser("subscriptions", help="list subscriptions")
    listing.add_argument("--all", action="store_true", help="include inactive ones (ref_count 0)")
    listing.add_argument("--json", action="store_true", help="one JSON document per line")

    check = commands.add_parser(
        "healthcheck",
        help="ask a running service whether it is ready (exit 0) or not (exit 1)",
        description="GET /health/ready (or /health/live with --live) of a running service; "
        "exit 0 on HTTP 200, else 1. The container HEALTHCHECK command.",
    )
    check.add_argument("--live", action="store_true", help="ask /health/live instead")
    check.add_argument(
        "--url",
        default=None,
        help="base URL of the health server (default: http://HTTP_HOST:HTTP_PORT, "
        "with 127.0.0.1 for a wildcard HTTP_HOST)",
    )
    check.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for the answer (default 5)"
    )

    add_offline_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of `python -m polymarket_kafka`."""
    args = _parser().parse_args(argv)
    if args.command in OFFLINE_COMMANDS:
        # Offline tools (rules, replay) read files only: no environment configuration.
        return run_offline(args)
    try:
        if args.env_file is not None:
            check_env_file(args.env_file)  # named explicitly: a typo must not go unnoticed
        else:
            args.env_file = DEFAULT_ENV_FILE
    except ConfigError as exc:
        if args.command == "healthcheck":
            print(f"polymarket-kafka: configuration error: {exc}", file=sys.stderr)
            return EXIT_FAILURE  # never 2 from a healthcheck: container engines reserve it
        from polymarket_kafka.config import requested_log_format

        print(_configuration_error_line(exc, requested_log_format(env_file=None)), file=sys.stderr)
        return EXIT_USAGE
    if args.command == "healthcheck":
        return _healthcheck(args)
    return _configured_command(args)


def _configured_command(args: argparse.Namespace) -> int:
    """`run`, `demo` and the subscription commands: the configuration and logging, then the
    command on the event loop. Imported here, not at the top: `healthcheck` and `--help`
    never need them (tests/unit/test_cli_imports.py, bench/cli_startup.py)."""
    import anyio

    from polymarket_kafka.config import load_config, requested_log_format, unknown_variable_warnings
    from polymarket_kafka.logs import configure_logging

    try:
        config = load_config(env_file=args.env_file)
    except ConfigError as exc:
        log_format = requested_log_format(env_file=args.env_file)
        print(_configuration_error_line(exc, log_format), file=sys.stderr)
        return EXIT_USAGE
    configure_logging(config.log_level, config.log_format, config.secret_values())
    for warning in unknown_variable_warnings(env_file=args.env_file):
        _logger().warning("configuration: %s", warning)
    try:
        return anyio.run(_dispatch, args, config, backend=args.backend)
    except KeyboardInterrupt:  # pragma: no cover - signals are handled inside the service
        return EXIT_OK


def _configuration_error_line(exc: ConfigError, log_format: str) -> str:
    """The line reporting `exc`; a JSON log record for `json` (the message holds no secret)."""
    message = f"configuration error: {exc}"
    if log_format != "json":
        return f"polymarket-kafka: {message}"
    import logging

    from polymarket_kafka.logs import JsonFormatter

    record = logging.makeLogRecord(
        {
            "name": LOGGER_NAME,
            "levelno": logging.CRITICAL,
            "levelname": "CRITICAL",
            "msg": message,
            "variable": exc.variable,
        }
    )
    return JsonFormatter().format(record)


async def _dispatch(args: argparse.Namespace, config: AppConfig) -> int:
    command: str = args.command
    if command == "run":
        return await _run(config)
    if command == "demo":
        return await _demo(args, config)
    return await _subscriptions(args, config)


async def _run(config: AppConfig) -> int:
    """`_serve`, with any error it raises logged (not printed by the interpreter) as exit 1."""
    from polymarket_kafka.kafka.transactional import ProducerFencedError
    from polymarket_kafka.ops.http_server import OpsServerError

    logger = _logger()
    try:
        return await _serve(config)
    except Exception as exc:
        errors = _leaves(exc)
        taken = [error for error in errors if isinstance(error, OpsServerError)]
        fenced = [error for error in errors if isinstance(error, ProducerFencedError)]
        if taken:
            # One line instead of a traceback through the task groups: the address is taken.
            logger.critical("%s (HTTP_HOST/HTTP_PORT)", taken[0])
        elif fenced:
            # Another instance took over: expected in a botched deploy, not a crash.
            logger.critical("%s (KAFKA_TRANSACTIONAL_ID)", fenced[0])
        else:
            first = errors[0]
            logger.critical(
                "stopped by an unexpected error: %s: %s", type(first).__name__, first, exc_info=True
            )
        return EXIT_FAILURE


def _leaves(error: BaseException) -> list[BaseException]:
    """The exceptions in `error`, (nested) exception groups flattened."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


async def _serve(config: AppConfig) -> int:
    from polymarket_kafka.app import load_initial_rules, run_app
    from polymarket_kafka.ruleset import RulesError

    logger = _logger()
    try:
        rules = load_initial_rules(config)
    except RulesError as exc:
        logger.critical("invalid rules, not starting:\n%s", exc)
        return EXIT_USAGE
    logger.info(
        "rules %s (version %s)",
        rules.path or "built-in defaults",
        rules.current.version,
    )
    logger.info(
        "starting: environment=%s kafka=%s topic=%s mongodb=%s",
        config.environment,
        config.kafka.bootstrap_servers,
        config.kafka.full_topic,
        config.mongodb.redacted_uri,
    )
    stats = await run_app(config, rules)
    # Exit 0 only when Kafka acknowledged every event the service detected.
    return EXIT_OK if stats.everything_delivered else EXIT_FAILURE


def _healthcheck(args: argparse.Namespace) -> int:
    """One request, one line of output; never 2 (container engines reserve that status).

    It runs every 15 s in the container: it reads the configuration and makes the request
    with the standard library only (no pydantic, yaml, httpx or anyio: `bench/cli_startup.py`,
    and a test that checks what it imports). A direct connection: no proxy from the
    environment relays a loopback request.
    """
    import http.client
    from urllib.parse import urlsplit

    base: str | None = args.url
    if base is None:
        try:
            host, port = http_address(EnvReader(merged_env(None, args.env_file)))
        except ConfigError as exc:
            print(f"polymarket-kafka: configuration error: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        # A wildcard bind address answers on loopback.
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
        base = f"http://{url_host(host)}:{port}"
    url = base.rstrip("/") + ("/health/live" if args.live else "/health/ready")
    parts = urlsplit(url)
    connection_class = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    connection = connection_class(parts.hostname or "", parts.port, timeout=args.timeout)
    try:
        connection.request("GET", parts.path or "/")
        response = connection.getresponse()
        status, text = response.status, response.read().decode("utf-8", errors="replace")
    except (OSError, http.client.HTTPException) as exc:
        print(f"polymarket-kafka: {url}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        connection.close()
    print(f"HTTP {status} {' '.join(text.splitlines())}".strip())
    return EXIT_OK if status == 200 else EXIT_FAILURE


async def _demo(args: argparse.Namespace, config: AppConfig) -> int:
    import signal

    import anyio
    from anyio.abc import TaskStatus

    from polymarket_kafka.exception_groups import innermost
    from polymarket_kafka.ops.http_server import OpsServerError
    from polymarket_kafka.service.stages import Stopper
    from polymarket_kafka.testing.demo import (
        DEFAULT_CASSETTE,
        DemoUnavailableError,
        InvalidCassetteError,
        check_demo_installed,
        run_demo,
    )

    try:
        check_demo_installed(args.cassette)
    except DemoUnavailableError as exc:
        print(f"polymarket-kafka: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    cassette: Path = args.cassette or DEFAULT_CASSETTE
    stop = anyio.Event() if args.serve else None

    def listening(port: int) -> None:
        host = url_host(config.http_host)
        print(f"demo: dashboard on http://{host}:{port}/", file=sys.stderr, flush=True)

    stopper = Stopper()

    async def on_signals(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        # One receiver for the whole demo: a signal during the cycles stops the service (it
        # drains) and, with --serve, the serving after it too; one after them ends serving.
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for _ in signals:
                stopper.stop()
                if stop is not None:
                    stop.set()

    problem: str | None = None
    try:
        async with anyio.create_task_group() as tasks:
            await tasks.start(on_signals)
            stats, read_back = await run_demo(
                cassette=cassette,
                interval_seconds=args.interval,
                handle_signals=False,
                stopper=stopper,
                http_host=config.http_host,
                http_port=config.http_port,
                on_listening=listening,
                serve_until=stop,
            )
            tasks.cancel_scope.cancel()
    # A usage error, plain or from inside a task group: one line, never a traceback.
    except* (FileNotFoundError, InvalidCassetteError, OpsServerError) as group:
        problem = str(innermost(group))
    if problem is not None:
        print(f"polymarket-kafka: {problem}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"demo: {stats.poll_cycles} poll cycles, {stats.snapshots} snapshots "
        f"({stats.snapshots_streamed} streamed over the market channel), "
        f"{stats.events_detected} events detected, {stats.events_acknowledged} acknowledged "
        f"by Kafka, {read_back} read back from the broker",
        file=sys.stderr,
    )
    ok = stats.everything_delivered and read_back == stats.events_acknowledged
    return EXIT_OK if ok else EXIT_FAILURE


async def _subscriptions(args: argparse.Namespace, config: AppConfig) -> int:
    from polymarket_kafka.clock import now_utc
    from polymarket_kafka.subscriptions import SubscriptionStoreError, open_subscription_store

    try:
        async with open_subscription_store(config.mongodb, clock=now_utc) as store:
            if args.command == "subscribe":
                _print_change(await store.subscribe(args.market_id, question=args.question))
            elif args.command == "unsubscribe":
                _print_change(await store.unsubscribe(args.market_id))
            else:
                listing = await (store.list_all() if args.all else store.active())
                for subscription in listing.subscriptions:
                    if args.json:
                        print(subscription.model_dump_json())
                    else:
                        updated = subscription.updated_at
                        print(
                            f"{subscription.market_id} ref_count={subscription.ref_count} "
                            f"updated_at={updated.isoformat() if updated else '-'}"
                        )
                for invalid in listing.invalid:
                    print(
                        f"invalid document {invalid.describe()}: {invalid.error}", file=sys.stderr
                    )
    except ValueError as exc:
        print(f"polymarket-kafka: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SubscriptionStoreError as exc:
        # The store raises only when this call did not change the count: retrying is safe.
        print(f"polymarket-kafka: {exc} (ref_count unchanged)", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _print_change(change: SubscriptionChange) -> None:
    """One line on stdout for what a subscribe/unsubscribe did; a read-back problem goes to
    stderr without failing the command, because the write itself was applied."""
    if not change.applied:
        print(f"{change.market_id}: not subscribed (nothing to do)")
        return
    if change.subscription is not None:
        print(f"{change.market_id} ref_count={change.subscription.ref_count}")
        return
    print(f"{change.market_id} ref_count changed ({change.delta:+d})")
    print(
        f"polymarket-kafka: warning: {change.market_id}: the write was applied, but reading "
        f"the document back failed: {change.read_error}",
        file=sys.stderr,
    )


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
