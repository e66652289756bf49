"""Log lines: the JSON and text formats, context fields, and secrets scrubbed from everything.

The formatters are called directly on hand-made records (time is in the record), and
`configure_logging` is checked on a root logger emptied for the test and restored after it.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from polymarket_kafka.logs import (
    JsonFormatter,
    TextFormatter,
    configure_logging,
    context_fields,
)
from polymarket_kafka.models import ConvictionDirection
from polymarket_kafka.redact import Redactor

SASL_PASSWORD = "kafka-s3cret!"
MONGO_URI = "mongodb://alice:hunter2%40x@db.example.test:27017/?authSource=admin"
SECRETS = (SASL_PASSWORD, "hunter2%40x", "hunter2@x")
CREATED = datetime(2024, 11, 6, 1, 2, 3, 456789, tzinfo=UTC).timestamp()


def record(
    msg: object = "hello",
    args: Any = (),
    *,
    level: int = logging.INFO,
    exc_info: Any = None,
    stack_info: str | None = None,
    **extra: object,
) -> logging.LogRecord:
    """A record as `logger.log(level, msg, *args, extra=extra)` makes it, at `CREATED`."""
    made = logging.getLogger("polymarket_kafka.test").makeRecord(
        "polymarket_kafka.test", level, __file__, 1, msg, args, exc_info, extra=extra or None
    )
    made.created = CREATED
    made.stack_info = stack_info
    return made


def as_json(line: str) -> dict[str, Any]:
    assert "\n" not in line and len(line.splitlines()) == 1
    parsed = json.loads(line)
    assert isinstance(parsed, dict)
    return parsed


def raised(message: str) -> Any:
    try:
        raise RuntimeError(message)
    except RuntimeError:
        return sys.exc_info()


# --- JSON format ------------------------------------------------------------------------


def test_json_line_has_the_core_fields() -> None:
    line = as_json(JsonFormatter().format(record("cycle %d: %s", (3, "ok"), level=logging.WARNING)))
    assert line == {
        "timestamp": "2024-11-06T01:02:03.456Z",
        "level": "WARNING",
        "logger": "polymarket_kafka.test",
        "message": "cycle 3: ok",
    }


def test_json_context_fields_are_top_level_keys_in_the_order_given() -> None:
    line = as_json(
        JsonFormatter().format(
            record("event", market_id="0xabc", event_id="e-1", rule="conviction_move", cycle=7)
        )
    )
    assert list(line)[4:] == ["market_id", "event_id", "rule", "cycle"]
    assert line["cycle"] == 7 and line["market_id"] == "0xabc"


class Colour(Enum):
    RED = "red"


def test_json_values_that_are_not_json_native_are_strings() -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque!"

    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no")

    line = as_json(
        JsonFormatter().format(
            record(
                "x",
                when=datetime(2024, 1, 1, tzinfo=UTC),
                path=Path("/tmp/rules.yaml"),
                direction=ConvictionDirection.TOWARD_YES,
                colour=Colour.RED,
                ratio=0.5,
                nan=float("nan"),
                flag=True,
                nothing=None,
                nested={"a": [1, 2.5, (Opaque(),)], 3: {"b": "c"}},
                opaque=Opaque(),
                broken=Broken(),
            )
        )
    )
    assert line["when"] == "2024-01-01 00:00:00+00:00"
    assert line["path"] == "/tmp/rules.yaml"
    assert line["direction"] == "toward_yes" and line["colour"] == "red"
    assert line["ratio"] == 0.5 and line["nan"] == "nan"
    assert line["flag"] is True and line["nothing"] is None
    assert line["nested"] == {"a": [1, 2.5, ["opaque!"]], "3": {"b": "c"}}
    assert line["opaque"] == "opaque!"
    assert line["broken"] == "<unprintable Broken>"


def test_json_deeply_nested_values_are_cut_to_a_string() -> None:
    deep: list[object] = []
    cursor = deep
    for _ in range(20):
        inner: list[object] = []
        cursor.append(inner)
        cursor = inner
    cursor.append(deep)  # and a cycle, which json.dumps alone would refuse
    line = as_json(JsonFormatter().format(record("x", deep=deep)))
    value = line["deep"]
    for _ in range(8):  # eight levels stay structured, the rest is one string
        (value,) = value
    assert isinstance(value, str) and value.startswith("[[[")


def test_json_is_one_line_whatever_the_message_holds() -> None:
    text = 'first\nsecond\r\nthird\u2028fourth\u2029fifth\x85sixth\ttab "quoted" é 東京 🚀'
    line = JsonFormatter().format(record(text, note=text))
    parsed = as_json(line)
    assert parsed["message"] == text and parsed["note"] == text
    for separator in ("\u2028", "\u2029", "\x85", "\r"):
        assert separator not in line
    assert "東京 🚀" in line  # unicode is kept readable, not \u-escaped


def test_json_exception_and_stack_are_text() -> None:
    line = as_json(
        JsonFormatter().format(
            record("failed", exc_info=raised("boom"), stack_info="Stack (most recent call last)")
        )
    )
    assert line["exc_info"].startswith("Traceback (most recent call last):")
    assert line["exc_info"].endswith("RuntimeError: boom")
    assert line["stack_info"] == "Stack (most recent call last)"
    assert list(line)[-2:] == ["exc_info", "stack_info"]


def test_json_uses_exc_text_cached_by_another_formatter() -> None:
    cached = record("failed")
    cached.exc_text = "Traceback: cached"
    assert as_json(JsonFormatter().format(cached))["exc_info"] == "Traceback: cached"


def test_json_context_cannot_overwrite_a_core_field() -> None:
    line = as_json(JsonFormatter().format(record("x", logger="custom", timestamp=1)))
    assert line["logger"] == "polymarket_kafka.test" and line["logger_"] == "custom"
    assert line["timestamp"] == "2024-11-06T01:02:03.456Z" and line["timestamp_"] == 1


def test_json_never_raises_on_arguments_that_do_not_match() -> None:
    line = as_json(JsonFormatter(SECRETS).format(record("%d markets", ("many", SASL_PASSWORD))))
    assert line["message"].startswith("%d markets (unformattable log arguments:")
    assert SASL_PASSWORD not in json.dumps(line)


def test_json_never_raises_when_encoding_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    formatter = JsonFormatter(SECRETS)

    def explode(value: object, depth: int) -> object:
        raise ValueError(f"cannot encode {SASL_PASSWORD}")

    monkeypatch.setattr(formatter, "_jsonable", explode)
    line = as_json(formatter.format(record(f"password {SASL_PASSWORD}", field=1)))
    assert line["message"] == "password ***"
    assert line["format_error"] == "ValueError: cannot encode ***"
    assert line["level"] == "INFO"


# --- text format ------------------------------------------------------------------------


def test_text_line_with_context() -> None:
    line = TextFormatter().format(
        record(
            "conviction change %s",
            ("0xabc",),
            market_id="0xabc",
            rule="conviction move",
            cycle=3,
            direction=ConvictionDirection.TOWARD_NO,
            empty="",
        )
    )
    assert line == (
        "2024-11-06T01:02:03.456Z INFO    polymarket_kafka.test: conviction change 0xabc "
        'market_id=0xabc rule="conviction move" cycle=3 direction=toward_no empty=""'
    )


def test_text_does_not_repeat_a_pair_the_message_has() -> None:
    line = TextFormatter().format(
        record("undelivered: event_id=%s", ("e-1",), event_id="e-1", market_id="0xabc")
    )
    assert line.endswith("polymarket_kafka.test: undelivered: event_id=e-1 market_id=0xabc")
    assert line.count("event_id=") == 1


def test_text_appends_the_traceback_on_the_next_lines() -> None:
    first, *rest = (
        TextFormatter().format(record("failed", exc_info=raised("boom"), cycle=2)).splitlines()
    )
    assert first.endswith("polymarket_kafka.test: failed cycle=2")
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "RuntimeError: boom"


def test_text_stack_info_follows_the_line() -> None:
    text = TextFormatter().format(record("here", stack_info="Stack (most recent call last)"))
    assert text.endswith("here\nStack (most recent call last)")


def test_text_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    formatter = TextFormatter(SECRETS)
    monkeypatch.setattr(formatter, "formatException", lambda _: 1 / 0)
    line = formatter.format(record(f"lost {SASL_PASSWORD}", exc_info=raised("x")))
    assert line.endswith("lost *** (log formatting failed: ZeroDivisionError)")


def test_context_fields_are_exactly_the_extras() -> None:
    assert context_fields(record("x")) == {}
    assert context_fields(record("x", market_id="m", attempt=2)) == {"market_id": "m", "attempt": 2}


# --- redaction --------------------------------------------------------------------------


def test_redactor_scrubs_secrets_and_url_userinfo() -> None:
    redact = Redactor(SECRETS)
    assert redact(f"sasl {SASL_PASSWORD}!") == "sasl ***!"
    assert redact(MONGO_URI) == "mongodb://***:***@db.example.test:27017/?authSource=admin"
    # A raw `@` in a password does not leave its tail behind, even unknown to the redactor.
    assert Redactor()("mongodb://alice:pa@ss@h:1/db") == "mongodb://***:***@h:1/db"
    assert Redactor()("https://token@github.com/x") == "https://***@github.com/x"
    assert Redactor()("http://h:1/a@b and mail me@x.org") == "http://h:1/a@b and mail me@x.org"
    # Longest first: a secret containing another is scrubbed whole.
    assert Redactor(["abc", "abcdef"])("xabcdefx") == "x***x"
    assert Redactor(["", "a.b"])("a.b axb") == "*** axb"  # literal, not a regex


@pytest.mark.parametrize("formatter_class", [JsonFormatter, TextFormatter])
def test_no_secret_in_message_extra_or_exception(
    formatter_class: type[JsonFormatter | TextFormatter],
) -> None:
    formatter = formatter_class(SECRETS)
    lines = [
        formatter.format(record("connecting to %s with %s", (MONGO_URI, SASL_PASSWORD))),
        formatter.format(record("x", uri=MONGO_URI, config={"sasl.password": SASL_PASSWORD})),
        formatter.format(record("x", decoded="hunter2@x", items=[SASL_PASSWORD])),
        formatter.format(record("failed", exc_info=raised(f"auth {MONGO_URI} {SASL_PASSWORD}"))),
        formatter.format(record("x", stack_info=f"File {SASL_PASSWORD}")),
    ]
    for line in lines:
        for secret in (*SECRETS, "alice", "hunter2"):
            assert secret not in line, line
        assert "***" in line, line
        if formatter_class is JsonFormatter:
            as_json(line)


# A password with a backslash, both quotes and non-ASCII: repr() and JSON escape it.
AWKWARD = "p\\w'o\"rd-é"


def test_redactor_scrubs_secrets_as_repr_and_json_write_them() -> None:
    redact = Redactor([AWKWARD])
    config = {"sasl.password": AWKWARD, "note": "it's"}
    shown = [
        repr(AWKWARD),  # single quotes: `'` escaped
        repr(("x'", AWKWARD)),
        repr(f"{AWKWARD}'"),  # inside a longer string
        repr(config),
        str([AWKWARD]),
        json.dumps(config),  # \u00e9 for é
        json.dumps(config, ensure_ascii=False),
        f"raw {AWKWARD}",
    ]
    for text in shown:
        scrubbed = redact(text)
        assert "***" in scrubbed, text
        assert "p\\" not in scrubbed and "p\\\\" not in scrubbed and "rd-" not in scrubbed
    assert redact(repr(config)) == "{'sasl.password': '***', 'note': \"it's\"}"
    # repr() escapes `'` or not depending on the whole string it shows: both are scrubbed.
    other = "p\\w'x"
    assert Redactor([other])(repr("it's " + other)) == '"it\'s ***"'
    assert Redactor([other])(repr('say "' + other)) == "'say \"***'"


@pytest.mark.parametrize("formatter_class", [JsonFormatter, TextFormatter])
def test_a_secret_in_a_repr_or_traceback_is_scrubbed(
    formatter_class: type[JsonFormatter | TextFormatter],
) -> None:
    formatter = formatter_class([AWKWARD])
    lines = [
        formatter.format(record("config %r", ({"sasl.password": AWKWARD},))),
        formatter.format(record("failed", exc_info=raised(repr(AWKWARD)))),
        formatter.format(record("x", config={"sasl.password": AWKWARD})),
    ]
    for line in lines:
        assert "rd-" not in line and "***" in line, line


def test_json_scrubs_context_keys_too() -> None:
    extra: dict[str, Any] = {SASL_PASSWORD: 1}
    line = as_json(JsonFormatter(SECRETS).format(record("x", **extra)))
    assert line["***"] == 1


# --- configure_logging -------------------------------------------------------------------


@contextmanager
def bare_root() -> Iterator[logging.Logger]:
    """The root logger with no handlers, restored afterwards, with the process hooks that
    `configure_logging` sets (warnings capture, excepthooks).

    A context manager, not a fixture: pytest puts its capture handlers back on the root
    logger at the start of every test phase.
    """
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_hooks = (sys.excepthook, threading.excepthook, sys.unraisablehook)
    for handler in saved_handlers:
        root.removeHandler(handler)
    try:
        yield root
    finally:
        logging.captureWarnings(False)
        sys.excepthook, threading.excepthook, sys.unraisablehook = saved_hooks
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)


def test_configure_logging_json_to_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = io.StringIO()
    with bare_root() as root:
        configure_logging("debug", "json", SECRETS)
        monkeypatch.setattr(sys, "stderr", stderr)  # the handler looks stderr up at emit time
        logging.getLogger("polymarket_kafka.x").debug("uri %s", MONGO_URI, extra={"cycle": 1})
        logging.getLogger("httpx").info("HTTP Request: GET https://x")  # quietened
        assert root.level == logging.DEBUG
    (line,) = stderr.getvalue().splitlines()
    parsed = as_json(line)
    assert parsed["level"] == "DEBUG" and parsed["cycle"] == 1
    assert parsed["message"] == "uri mongodb://***:***@db.example.test:27017/?authSource=admin"
    assert logging.getLogger("httpcore").level == logging.WARNING


def test_configure_logging_again_replaces_its_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = io.StringIO()
    with bare_root() as root:
        configure_logging("INFO", "json")
        configure_logging("WARNING", "text", SECRETS)
        assert len(root.handlers) == 1
        monkeypatch.setattr(sys, "stderr", stderr)
        logging.getLogger("polymarket_kafka.x").info("dropped")
        logging.getLogger("polymarket_kafka.x").warning("kept %s", SASL_PASSWORD)
    assert stderr.getvalue().endswith(" WARNING polymarket_kafka.x: kept ***\n")
    assert "dropped" not in stderr.getvalue()


def test_configure_logging_leaves_a_configured_root_alone() -> None:
    hooks = (sys.excepthook, threading.excepthook, sys.unraisablehook, warnings.showwarning)
    with bare_root() as root:
        theirs = logging.NullHandler()
        root.addHandler(theirs)
        root.setLevel(logging.ERROR)
        configure_logging("DEBUG", "json")
        assert root.handlers == [theirs]
        assert root.level == logging.ERROR
    assert (sys.excepthook, threading.excepthook, sys.unraisablehook, warnings.showwarning) == hooks


class _BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class _RaisesWhenCollected:
    def __del__(self) -> None:
        raise RuntimeError(f"finalizer saw {SASL_PASSWORD}")


def _crash_in_thread() -> None:
    raise RuntimeError(f"thread saw {MONGO_URI}")


def test_configure_logging_routes_warnings_and_uncaught_exceptions_through_the_handler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the interpreter would print raw (and unscrubbed) becomes JSON lines."""
    stderr = io.StringIO()
    with bare_root():
        configure_logging("INFO", "json", SECRETS)
        monkeypatch.setattr(sys, "stderr", stderr)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn(f"deprecated option in {MONGO_URI}", UserWarning, stacklevel=1)
        sys.excepthook(*raised(f"main thread saw {SASL_PASSWORD}"))
        for target in (_crash_in_thread, sys.exit):  # SystemExit ends a thread silently
            thread = threading.Thread(target=target, name="worker")
            thread.start()
            thread.join()
        _RaisesWhenCollected()  # collected at once: sys.unraisablehook
        # The hook's arguments without a thread, an object or an exception.
        threading.excepthook(
            SimpleNamespace(  # type: ignore[arg-type]  # the hook's args type is not public
                exc_type=RuntimeError, exc_value=None, exc_traceback=None, thread=None
            )
        )
        sys.unraisablehook(SimpleNamespace(err_msg=None, object=None, exc_value=None))
        sys.unraisablehook(SimpleNamespace(err_msg="Lost", object=_BrokenRepr(), exc_value=None))
    output = stderr.getvalue()
    for secret in (*SECRETS, "hunter2"):
        assert secret not in output
    records = [as_json(line) for line in output.splitlines()]
    assert [(r["level"], r["logger"]) for r in records] == [
        ("WARNING", "py.warnings"),
        ("CRITICAL", "polymarket_kafka"),
        ("ERROR", "polymarket_kafka"),
        ("ERROR", "polymarket_kafka"),
        ("ERROR", "polymarket_kafka"),
        ("ERROR", "polymarket_kafka"),
        ("ERROR", "polymarket_kafka"),
    ]
    warning, uncaught, in_thread, unraisable, no_thread, no_object, broken = records
    assert (
        "UserWarning: deprecated option in mongodb://***:***@db.example.test" in warning["message"]
    )
    assert uncaught["message"] == "uncaught exception"
    assert uncaught["exc_info"].endswith("RuntimeError: main thread saw ***")
    assert in_thread["message"] == "uncaught exception in thread worker"
    assert in_thread["exc_info"].endswith(
        "RuntimeError: thread saw mongodb://***:***@db.example.test:27017/?authSource=admin"
    )
    assert unraisable["message"].startswith(
        "Exception ignored in: <function _RaisesWhenCollected.__del__"
    )
    assert unraisable["exc_info"].endswith("RuntimeError: finalizer saw ***")
    assert no_thread["message"] == "uncaught exception in thread ?" and "exc_info" not in no_thread
    assert no_object["message"] == "Exception ignored in" and "exc_info" not in no_object
    assert broken["message"] == "Lost: <unprintable _BrokenRepr>"


def test_configure_logging_rejects_unknown_format_and_level() -> None:
    with bare_root() as root:
        with pytest.raises(ValueError, match="log format must be one of text, json"):
            configure_logging("INFO", "xml")
        with pytest.raises(ValueError, match="unknown log level 'LOUD'"):
            configure_logging("LOUD")
        assert root.handlers == []


class _BrokenStderr(io.StringIO):
    """Refuses every write except, if `notices`, the handler's one-line notice."""

    def __init__(self, *, notices: bool) -> None:
        super().__init__()
        self.accept_notices = notices
        self.written: list[str] = []

    def write(self, text: str) -> int:
        if self.accept_notices and "could not be written" in text:
            self.written.append(text)
            return len(text)
        raise OSError("broken pipe")


def test_a_broken_stderr_loses_the_line_without_leaking_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # logging's default handleError would print the record's raw arguments (the password).
    broken, dead = _BrokenStderr(notices=True), _BrokenStderr(notices=False)
    with bare_root():
        configure_logging("INFO", "text", SECRETS)
        monkeypatch.setattr(sys, "stderr", broken)
        logging.getLogger("polymarket_kafka.x").error("secret %s", SASL_PASSWORD)
        monkeypatch.setattr(sys, "stderr", dead)
        logging.getLogger("polymarket_kafka.x").error("nowhere to go")  # does not raise
    assert broken.written == ["polymarket-kafka: a log line could not be written\n"]


def test_readme_json_log_example_is_a_line_this_formatter_writes() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Logs\n", 1)[1].split("\n## ", 1)[0]
    (example,) = (line for line in section.splitlines() if line.startswith('{"timestamp"'))
    documented = as_json(example)
    fields = {k: v for k, v in documented.items() if k not in ("timestamp", "level", "logger")}
    made = record(fields.pop("message"), **fields)
    made.name, made.created = documented["logger"], CREATED
    assert JsonFormatter().format(made) == example.replace(
        documented["timestamp"], "2024-11-06T01:02:03.456Z"
    )
