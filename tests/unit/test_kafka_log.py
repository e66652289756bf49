"""`LibrdkafkaLog`: called the way confluent-kafka calls a configured `logger`.

confluent-kafka calls `logger.log(level, "%s [%s] %s", facility, client_name, text)`; the
texts below are made up (librdkafka's wording is not ours to assert on).
"""

from __future__ import annotations

import logging

import pytest

from polymarket_kafka.kafka.librdkafka_log import LibrdkafkaLog

FORMAT = "%s [%s] %s"
NAME = "tests.librdkafka"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def log(clock: Clock, caplog: pytest.LogCaptureFixture) -> LibrdkafkaLog:
    caplog.set_level(logging.DEBUG, logger=NAME)
    return LibrdkafkaLog(logging.getLogger(NAME), window=60.0, monotonic=clock)


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == NAME]


def test_connection_failures_go_to_debug(
    log: LibrdkafkaLog, caplog: pytest.LogCaptureFixture
) -> None:
    for n in range(3):  # not limited: DEBUG is asked for
        log.log(logging.ERROR, FORMAT, "FAIL", "client#producer-1", f"b:9092: refused ({n}ms)")
    log.log(logging.INFO, FORMAT, "FAIL", "client#producer-1", "b:9092: disconnected")
    assert lines(caplog) == [
        (logging.DEBUG, "FAIL [client#producer-1] b:9092: refused (0ms)"),
        (logging.DEBUG, "FAIL [client#producer-1] b:9092: refused (1ms)"),
        (logging.DEBUG, "FAIL [client#producer-1] b:9092: refused (2ms)"),
        (logging.DEBUG, "FAIL [client#producer-1] b:9092: disconnected"),
    ]


def test_lines_about_being_fenced_go_to_debug(
    log: LibrdkafkaLog, caplog: pytest.LogCaptureFixture
) -> None:
    # The transactional publisher says it once, at CRITICAL, naming the transactional.id.
    log.log(logging.CRITICAL, FORMAT, "TXNERR", "c#producer-1", "failed: fenced (_FENCED)")
    log.log(logging.ERROR, FORMAT, "ADDPARTS", "c#producer-1", "newer one fences the current one")
    log.log(logging.CRITICAL, FORMAT, "FATAL", "c#producer-1", "this one has been fenced")
    log.log(logging.ERROR, FORMAT, "ADDPARTS", "c#producer-1", "timed out")
    assert lines(caplog) == [
        (logging.DEBUG, "TXNERR [c#producer-1] failed: fenced (_FENCED)"),
        (logging.DEBUG, "ADDPARTS [c#producer-1] newer one fences the current one"),
        (logging.DEBUG, "FATAL [c#producer-1] this one has been fenced"),
        (logging.ERROR, "ADDPARTS [c#producer-1] timed out"),
    ]


def test_connection_failures_cost_nothing_above_debug(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=NAME)
    log = LibrdkafkaLog(logging.getLogger(NAME), window=60.0, monotonic=clock)
    for _ in range(100):
        log.log(logging.ERROR, FORMAT, "FAIL", "client#producer-1", "b:9092: refused")
    assert lines(caplog) == []


def test_other_lines_keep_their_level_and_repeats_are_limited(
    log: LibrdkafkaLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    log.log(logging.WARNING, FORMAT, "PARTCNT", "c#producer-1", "topic t: 1 -> 4 partitions")
    log.log(logging.ERROR, FORMAT, "ERROR", "c#producer-1", "broker b:9092: something 12")
    clock.now = 1.0
    # The same line with other numbers, from a replaced producer: a repeat.
    log.log(logging.ERROR, FORMAT, "ERROR", "c#producer-2", "broker b:9092: something 13")
    log.log(logging.ERROR, FORMAT, "ERROR", "c#producer-2", "broker b:9092: something 14")
    log.log(logging.WARNING, FORMAT, "ERROR", "c#producer-2", "broker b:9092: something 15")
    clock.now = 60.0
    log.log(logging.ERROR, FORMAT, "ERROR", "c#producer-2", "broker b:9092: something 16")
    clock.now = 200.0
    log.log(logging.ERROR, FORMAT, "ERROR", "c#producer-2", "broker b:9092: something 17")
    assert lines(caplog) == [
        (logging.WARNING, "PARTCNT [c#producer-1] topic t: 1 -> 4 partitions"),
        (logging.ERROR, "ERROR [c#producer-1] broker b:9092: something 12"),
        (logging.WARNING, "ERROR [c#producer-2] broker b:9092: something 15"),  # other level
        (
            logging.ERROR,
            "ERROR [c#producer-2] broker b:9092: something 16 (2 similar line(s) left out)",
        ),
        (logging.ERROR, "ERROR [c#producer-2] broker b:9092: something 17"),
    ]


def test_a_call_of_another_shape_is_passed_on(
    log: LibrdkafkaLog, caplog: pytest.LogCaptureFixture
) -> None:
    log.log(logging.WARNING, "plain %s", "text")
    log.log(logging.WARNING, "plain %s", "text")
    assert lines(caplog) == [(logging.WARNING, "plain text")] * 2


def test_nothing_is_logged_once_closed(
    log: LibrdkafkaLog, caplog: pytest.LogCaptureFixture
) -> None:
    log.log(logging.ERROR, FORMAT, "ERROR", "c#producer-1", "before")
    log.close()
    log.log(logging.CRITICAL, FORMAT, "ERROR", "c#producer-1", "after")
    log.log(logging.ERROR, FORMAT, "FAIL", "c#producer-1", "after")
    log.log(logging.WARNING, "plain %s", "after")
    assert lines(caplog) == [(logging.ERROR, "ERROR [c#producer-1] before")]
