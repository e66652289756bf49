"""Typed access to one merged environment, with errors that name the variable.

`EnvReader` reads text, choices, numbers, integers, ports and URLs from a mapping (the
environment `environment.merged_env` builds), raising `ConfigError` (`str()` one line: the
variable and the problem) and recording every name it was asked for, so the set of known
variables has one definition (`config.known_variables`). `http_address` reads the ops
server's address, for `AppConfig` and for `healthcheck`.

Pure and standard library only: `healthcheck` runs every 15 s in the container and reads its
two variables here without loading the configuration (dataclasses, logging;
bench/cli_startup.py measures it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_HTTP_HOST",
    "DEFAULT_HTTP_PORT",
    "ConfigError",
    "EnvReader",
    "http_address",
    "url_host",
]

#: `HTTP_HOST` and `HTTP_PORT` when unset (the defaults of `AppConfig.http_host`/`http_port`).
DEFAULT_HTTP_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 9464

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration variable is missing or malformed. `str()` is a single line."""

    def __init__(self, variable: str, problem: str) -> None:
        self.variable = variable
        super().__init__(f"{variable}: {problem}")


class EnvReader:
    """Typed access to one merged environment, with errors naming the variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        #: Every variable asked for, so the set of known names has one definition.
        self.names: set[str] = set()

    def _raw(self, name: str) -> str | None:
        self.names.add(name)
        value = self._env.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    def text(self, name: str, default: str) -> str:
        return self._raw(name) or default

    def blank(self, name: str) -> bool:
        """Whether `name` is set, to nothing (or spaces): unset for every reader above,
        but a variable may give it a meaning (`POLYMARKET_WS_URL=` turns streaming off)."""
        self.names.add(name)
        value = self._env.get(name)
        return value is not None and not value.strip()

    def optional_str(self, name: str) -> str | None:
        return self._raw(name)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(name, default)
        normalised = {c.upper(): c for c in choices}.get(value.upper())
        if normalised is None:
            raise ConfigError(name, f"must be one of {', '.join(choices)}, got {value!r}")
        return normalised

    def _convert(self, name: str, default: T, parse: Callable[[str], T], kind: str) -> T:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            return parse(raw)
        except ValueError:
            raise ConfigError(name, f"must be {kind}, got {raw!r}") from None

    def number(self, name: str, default: float, *, minimum: float = 0.0, strict: bool) -> float:
        value = self._convert(name, default, float, "a number")
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(name, f"must be a finite number, got {value!r}")
        if (strict and value <= minimum) or (not strict and value < minimum):
            relation = ">" if strict else ">="
            raise ConfigError(name, f"must be {relation} {minimum:g}, got {value:g}")
        return value

    def integer(self, name: str, default: int, *, minimum: int) -> int:
        value = self._convert(name, default, int, "an integer")
        if value < minimum:
            raise ConfigError(name, f"must be >= {minimum}, got {value}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        """A yes/no variable: true/false, yes/no, on/off or 1/0 (any case)."""
        raw = self._raw(name)
        if raw is None:
            return default
        value = _FLAGS.get(raw.lower())
        if value is None:
            raise ConfigError(name, f"must be true or false, got {raw!r}")
        return value

    def port(self, name: str, default: int) -> int:
        value = self.integer(name, default, minimum=0)
        if value > 65535:
            raise ConfigError(name, f"must be <= 65535, got {value}")
        return value

    def url(self, name: str, default: str) -> str:
        value = self.text(name, default).rstrip("/")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(name, f"must be an http(s) URL, got {value!r}")
        return value


_FLAGS = {
    "true": True,
    "yes": True,
    "on": True,
    "1": True,
    "false": False,
    "no": False,
    "off": False,
    "0": False,
}


def http_address(reader: EnvReader) -> tuple[str, int]:
    """`HTTP_HOST` and `HTTP_PORT`: where the ops server (health, metrics) listens."""
    return (
        reader.text("HTTP_HOST", DEFAULT_HTTP_HOST),
        reader.port("HTTP_PORT", DEFAULT_HTTP_PORT),
    )


def url_host(host: str) -> str:
    """`host` as written in a URL: IPv6 literals in brackets."""
    return f"[{host}]" if ":" in host else host
