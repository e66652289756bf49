"""The operator's dashboard behind the ops server: `GET /`, its static files and `/api/*`.

| endpoint | what |
|---|---|
| `GET /` | the page (`ops/static/index.html`; its script and style under `/static/`) |
| `GET /api/markets` | every watched market (`MarketBoard.markets`, with the rules in force) |
| `GET /api/events?limit=N` | the latest N events published (default 50, at most 200) |
| `GET /api/health` | readiness, each component with since when, and the feed's figures |
| `GET /api/live` | server-sent events: `update` with a version whenever something changed |

Read-only, on the event loop thread like the rest of the ops server. Every response has a
strict Content-Security-Policy (no inline script, nothing from another origin) and
`X-Content-Type-Options: nosniff`; the page renders every market-supplied string as text.
Secrets never get here: health details are scrubbed by `ServiceHealth`, and nothing else
carries configuration.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import anyio

from polymarket_kafka.kafka.publisher import DeliveryStats
from polymarket_kafka.ops.board import MAX_EVENTS, MarketBoard
from polymarket_kafka.ops.health import ServiceHealth
from polymarket_kafka.service.reloader import RulesHolder
from polymarket_kafka.service.sharding import GroupStats
from polymarket_kafka.service.stats import ServiceStats
from polymarket_kafka.service.streaming import StreamCoordinator

__all__ = ["API_ENDPOINTS", "PAGE_FILES", "Dashboard", "Response"]

#: (status, headers, body) as the ops app sends it.
Response = tuple[int, list[tuple[bytes, bytes]], bytes]

#: The page's files: path → (package file, content type).
PAGE_FILES = {
    "/": ("index.html", b"text/html; charset=utf-8"),
    "/static/app.js": ("app.js", b"text/javascript; charset=utf-8"),
    "/static/app.css": ("app.css", b"text/css; charset=utf-8"),
}
API_ENDPOINTS = ("/api/markets", "/api/events", "/api/health", "/api/live")
#: Every response of the dashboard carries these.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        b"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
DEFAULT_EVENTS = 50
#: The market list is rebuilt at most this often, and never more often than this many
#: times its own build time (see `Dashboard._markets_body`).
MIN_REBUILD_SECONDS = 1.0
REBUILD_FACTOR = 10.0
#: How often readiness is sampled for "since when".
SAMPLE_SECONDS = 1.0


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


@dataclass
class Dashboard:
    """What the page shows, read from the service's own objects (none is copied)."""

    board: MarketBoard
    health: ServiceHealth
    rules: RulesHolder
    stats: ServiceStats
    clock: Callable[[], datetime]
    delivery: DeliveryStats | None = None
    stream: StreamCoordinator | None = None
    #: Several instances (`KAFKA_GROUP_ID`): who this instance is and what it owns.
    group: GroupStats | None = None
    #: When each readiness component last changed status (for "since when").
    _since: dict[str, tuple[bool, datetime]] = field(default_factory=dict)
    _files: dict[str, bytes] = field(default_factory=dict)
    #: ((board version, rules), monotonic time before which it is not rebuilt, body).
    _markets_cache: tuple[tuple[int, object], float, bytes] | None = None

    def page(self, path: str) -> Response:
        name, content_type = PAGE_FILES[path]
        body = self._files.get(name)
        if body is None:
            body = self._files[name] = (
                resources.files("polymarket_kafka.ops").joinpath("static", name).read_bytes()
            )
        return 200, [(b"content-type", content_type), *SECURITY_HEADERS], body

    def api(self, path: str, query: bytes, monotonic: float) -> Response:
        if path == "/api/markets":
            body = self._markets_body(monotonic)
        else:
            if path == "/api/events":
                payload: dict[str, Any] = {"events": self.board.events(_limit(query))}
            else:
                payload = self.health_payload(monotonic)
            body = json.dumps(payload, separators=(",", ":")).encode()
        return 200, [(b"content-type", b"application/json"), *SECURITY_HEADERS], body

    def _markets_body(self, monotonic: float) -> bytes:
        """The market list, rebuilt only when the board changed, and at most once per
        max(`MIN_REBUILD_SECONDS`, `REBUILD_FACTOR` x its last build time): however many
        pages ask, it takes at most about 1/REBUILD_FACTOR of the event loop."""
        cached = self._markets_cache
        key = (self.board.version, self.rules.current)
        # New rules show at once; a changed board waits for the next rebuild time.
        same_rules = cached is not None and cached[0][1] is key[1]
        if cached is not None and same_rules and (cached[0][0] == key[0] or monotonic < cached[1]):
            return cached[2]
        started = time.perf_counter()
        now = self.clock()
        payload = {
            "generated_at": now.isoformat(),
            "markets": self.board.markets(now, self.rules.current.resolve),
        }
        body = json.dumps(payload, separators=(",", ":")).encode()
        cost = time.perf_counter() - started
        self._markets_cache = (
            key,
            monotonic + max(MIN_REBUILD_SECONDS, REBUILD_FACTOR * cost),
            body,
        )
        return body

    def sample(self, monotonic: float) -> None:
        """Note each readiness component's status, so "since" is when it changed (the ops
        server calls this every second); a change bumps the board's version."""
        report = self.health.ready(monotonic).to_json()
        now = self.clock()
        for name, component in report.get("components", {}).items():
            if self._note(name, component.get("status") == "ok", now)[1]:
                self.board.version += 1

    def _note(self, name: str, ok: bool, now: datetime) -> tuple[datetime, bool]:
        """Since when component `name` has had status `ok`, and whether that changed `now`."""
        previous = self._since.get(name)
        if previous is not None and previous[0] == ok:
            return previous[1], False
        self._since[name] = (ok, now)
        return now, True

    async def sample_forever(self) -> None:
        while True:
            self.sample(anyio.current_time())
            await anyio.sleep(SAMPLE_SECONDS)

    def health_payload(self, monotonic: float) -> dict[str, Any]:
        report = self.health.ready(monotonic).to_json()
        now = self.clock()
        components = {}
        for name, component in report.get("components", {}).items():
            since, _ = self._note(name, component.get("status") == "ok", now)
            components[name] = {**component, "since": since.isoformat()}
        delivery = self.delivery
        stream = None
        if self.stream is not None:
            shards = self.stream.stream.connections
            stream = {
                "connections": len(shards),
                "connections_up": sum(1 for s in shards if s.connected),
                "reconnects": sum(s.reconnects for s in shards),
                "streamed_markets": self.stream.stream.markets,
                "rest_fallback_markets": len(self.stream.fallback),
                "disagreements": self.stream.disagreements,
            }
        loaded = self.rules.metrics.last_reload_success_timestamp
        return {
            "ready": report.get("status") == "ok",
            "components": components,
            "feed": {
                "rules_version": self.rules.current.version,
                "rules_loaded_at": None
                if loaded is None
                else datetime.fromtimestamp(loaded, tz=UTC).isoformat(),
                "events_detected": self.stats.events_detected,
                "events_published": self.stats.events_published,
                "events_in_flight": 0 if delivery is None else delivery.pending,
                "events_dead_lettered": 0 if delivery is None else delivery.dead_lettered,
                "events_acknowledged": None if delivery is None else delivery.delivered,
                "last_poll_at": _iso(self.stats.last_poll_at),
                "markets": len(self.board),
                "stream": stream,
                # Several instances only: who this instance is, what it owns.
                **({} if self.group is None else {"group": self.group.to_json()}),
            },
        }


def _limit(query: bytes) -> int:
    values = parse_qs(query.decode("latin-1")).get("limit", [])
    try:
        limit = int(values[-1]) if values else DEFAULT_EVENTS
    except ValueError:
        limit = DEFAULT_EVENTS
    return min(max(limit, 0), MAX_EVENTS)
