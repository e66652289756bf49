"""Log records as lines on stderr: readable text for terminals, one JSON object per line for
log pipelines, and no secrets in either.

Why the formatter scrubs instead of trusting every call site: the service already logs
`redacted_uri` and a `***` SASL password, but a third-party message (a pymongo error quoting
a URI, a librdkafka line, an exception raised deep in a driver) is outside our control. So the
last step before a line leaves the process replaces every configured secret value and the
user-info part of any URL (`scheme://user:password@` -> `scheme://***:***@`). The scrubbing
runs on everything a line carries: the message, every context value and the exception text.
A secret is also found as `repr()` and JSON show it (backslashes and quotes escaped), since
a driver's error often quotes its configuration that way.

Context fields: a call passes them with `extra=` (`market_id`, `event_id`, `rule`, `cycle`,
`endpoint`, `attempt`, ...). Every LogRecord attribute that the standard library did not put
there is such a field: the JSON format emits it as a top-level key, the text format appends
it as `key=value`.

The formatters are pure (the timestamp comes from the record) and never raise: a record whose
arguments do not match its format string, or whose context cannot be encoded, still becomes
one line, because a logging failure must never take a stage down, and the standard library's
fallback would print the raw, unscrubbed arguments.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from enum import Enum
from types import TracebackType

from polymarket_kafka.redact import Redactor

__all__ = [
    "LOG_FORMATS",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "context_fields",
]

LOG_FORMATS = ("text", "json")

# Attributes every LogRecord has (plus those `Formatter.format` and Python 3.12 add): anything
# else on a record came from `extra=` and is a context field.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}
# Keys of a JSON line that a context field may not overwrite; a clash gets a trailing `_`.
_CORE_KEYS = frozenset({"timestamp", "level", "logger", "message", "exc_info", "stack_info"})
# `scheme://userinfo@`: greedy up to the last `@` before a space, `/`, `?` or `#`, so a raw `@`
# inside a password cannot end the match early and leave the rest of the password behind.
# json.dumps leaves these unescaped, but str.splitlines() (and some log shippers) break on them.
_LINE_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_MAX_DEPTH = 8


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the line
        return f"<unprintable {type(value).__name__}>"


def _safe_repr(value: object) -> str:
    try:
        return repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not lose the line
        return f"<unprintable {type(value).__name__}>"


def _timestamp(created: float) -> str:
    """ISO-8601 UTC with milliseconds and a `Z`: `2024-11-06T01:00:00.123Z`."""
    moment = datetime.fromtimestamp(created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # noqa: BLE001 - arguments that do not match the format string
        return f"{_safe_str(record.msg)} (unformattable log arguments: {_safe_str(record.args)})"


def context_fields(record: logging.LogRecord) -> dict[str, object]:
    """The fields a call passed with `extra=`, in the order given."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRIBUTES}


class _BaseFormatter(logging.Formatter):
    def __init__(self, secrets: Sequence[str] = ()) -> None:
        super().__init__()
        self.redact = Redactor(secrets)

    def _exception_text(self, record: logging.LogRecord) -> str | None:
        if record.exc_info:
            return self.formatException(record.exc_info)
        return record.exc_text or None

    def _stack_text(self, record: logging.LogRecord) -> str | None:
        return self.formatStack(record.stack_info) if record.stack_info else None


class JsonFormatter(_BaseFormatter):
    """One JSON object per record, on one line, with every string scrubbed.

    Keys: `timestamp` (ISO-8601 UTC, ms, `Z`), `level`, `logger`, `message`, then every
    context field (a value that is not JSON-native is `str()`-ed; an enum gives its value),
    then `exc_info` and `stack_info` as text when present.
    """

    def format(self, record: logging.LogRecord) -> str:
        try:
            line: dict[str, object] = {
                "timestamp": _timestamp(record.created),
                "level": record.levelname,
                "logger": record.name,
                "message": self.redact(_message(record)),
            }
            for key, value in context_fields(record).items():
                name = self.redact(key)
                line[f"{name}_" if name in _CORE_KEYS else name] = self._jsonable(value, 0)
            if (exc_text := self._exception_text(record)) is not None:
                line["exc_info"] = self.redact(exc_text)
            if (stack_text := self._stack_text(record)) is not None:
                line["stack_info"] = self.redact(stack_text)
            return _one_line(json.dumps(line, ensure_ascii=False, allow_nan=False))
        except Exception as exc:  # noqa: BLE001 - never raise out of logging
            return _one_line(
                json.dumps(
                    {
                        "timestamp": _timestamp(record.created),
                        "level": record.levelname,
                        "logger": record.name,
                        "message": self.redact(_safe_str(record.msg)),
                        "format_error": self.redact(f"{type(exc).__name__}: {_safe_str(exc)}"),
                    },
                    ensure_ascii=False,
                )
            )

    def _jsonable(self, value: object, depth: int) -> object:
        if value is None or isinstance(value, bool | int):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else str(value)
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, Enum):
            return self._jsonable(value.value, depth)
        if depth < _MAX_DEPTH and isinstance(value, Mapping):
            return {
                self.redact(_safe_str(k)): self._jsonable(v, depth + 1) for k, v in value.items()
            }
        if depth < _MAX_DEPTH and isinstance(value, list | tuple | set | frozenset):
            return [self._jsonable(item, depth + 1) for item in value]
        return self.redact(_safe_str(value))


def _one_line(encoded: str) -> str:
    for char, escape in _LINE_BREAKS.items():
        encoded = encoded.replace(char, escape)
    return encoded


class TextFormatter(_BaseFormatter):
    """`timestamp LEVEL logger: message key=value ...`, then any traceback on the next lines.

    A context value with spaces, quotes or `=` is JSON-quoted; a `key=value` the message
    already contains is not repeated. The whole output is scrubbed.
    """

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = _message(record)
            parts = [f"{_timestamp(record.created)} {record.levelname:<7} {record.name}: {message}"]
            for key, value in context_fields(record).items():
                pair = f"{key}={_text_value(value, self.redact)}"
                # Messages stay self-contained for other formatters (an embedding application's,
                # pytest's); the text line does not repeat a `key=value` the message already has.
                if pair not in message:
                    parts.append(f" {pair}")
            for extra in (self._exception_text(record), self._stack_text(record)):
                if extra is not None:
                    parts.append(f"\n{extra}")
            return self.redact("".join(parts))
        except Exception as exc:  # noqa: BLE001 - never raise out of logging
            return self.redact(
                f"{_timestamp(record.created)} {record.levelname:<7} {record.name}: "
                f"{_safe_str(record.msg)} (log formatting failed: {type(exc).__name__})"
            )


def _text_value(value: object, redact: Redactor) -> str:
    if isinstance(value, Enum):
        value = value.value
    # Scrubbed before quoting: quoting escapes again a secret that `str()` showed escaped.
    text = redact(_safe_str(value))
    if not text or any(c.isspace() or c in "\"'=" for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class _StderrHandler(logging.Handler):
    """Writes each formatted record, plus a newline, to `sys.stderr` as it is at emit time
    (so a test or an embedding application that swaps `sys.stderr` still gets the lines)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except RecursionError:  # pragma: no cover - the standard library's rule
            raise
        except Exception:  # noqa: BLE001 - a closed or broken stderr
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:
        # The standard handler would print the record's raw message and arguments: unscrubbed.
        with contextlib.suppress(Exception):  # nowhere left to report it
            sys.stderr.write("polymarket-kafka: a log line could not be written\n")


def configure_logging(level: str = "INFO", fmt: str = "text", secrets: Sequence[str] = ()) -> None:
    """Send log records at `level` and above to stderr as `fmt` (`text` or `json`), with every
    value of `secrets` and every URL's user-info scrubbed.

    Installs one handler on the root logger and sets the root level; calling it again replaces
    that handler. It also routes what the interpreter would otherwise print raw to stderr
    through logging: warnings (`logging.captureWarnings`), and exceptions nothing caught, in
    the main thread (`sys.excepthook`), in other threads (`threading.excepthook`) and in
    finalizers (`sys.unraisablehook`), so that every line is in the chosen format and
    scrubbed. A root logger that already has other handlers (an embedding application,
    pytest's log capture) is left alone, hooks included: its owner decides where records go.
    Raises `ValueError` for an unknown format or level.
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    numeric_level = logging.getLevelNamesMapping().get(level.upper())
    if numeric_level is None:
        raise ValueError(f"unknown log level {level!r}")
    # httpx and httpcore log every request and connection at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    root = logging.getLogger()
    if any(not isinstance(h, _StderrHandler) for h in root.handlers):
        return
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter(secrets) if fmt == "json" else TextFormatter(secrets))
    for previous in list(root.handlers):
        root.removeHandler(previous)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
    sys.unraisablehook = _log_unraisable


_uncaught_logger = logging.getLogger("polymarket_kafka")


def _log_uncaught(
    exc_type: type[BaseException], exc: BaseException, traceback: TracebackType | None
) -> None:
    _uncaught_logger.critical("uncaught exception", exc_info=(exc_type, exc, traceback))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if issubclass(args.exc_type, SystemExit):  # as the default hook: a thread's normal exit
        return
    name = args.thread.name if args.thread is not None else "?"
    _uncaught_logger.error("uncaught exception in thread %s", name, exc_info=args.exc_value)


def _log_unraisable(args: sys.UnraisableHookArgs) -> None:
    message = args.err_msg or "Exception ignored in"
    if args.object is not None:
        message = f"{message}: {_safe_repr(args.object)}"
    _uncaught_logger.error("%s", message, exc_info=args.exc_value)
