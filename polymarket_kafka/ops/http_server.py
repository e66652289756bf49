"""The operations endpoint: health and Prometheus metrics over HTTP, inside the service.

```
 GET /health/live   200|503  JSON  ServiceHealth.live(now)
 GET /health/ready  200|503  JSON  ServiceHealth.ready(now)
 GET /health        200|503  JSON  the same as /health/ready (the specification's name)
 GET /metrics       200      Prometheus text (OpenMetrics when the scraper asks for it)
 anything else      404 JSON; a method other than GET/HEAD on a known path: 405 JSON
```

Why it is built this way:

* One small ASGI application served by hypercorn, which runs natively on trio and on
  asyncio, so the server is just another task of the service's task group on either
  backend. HTTP parsing is hypercorn's (h11); the application only routes on path and method.
* `serve_ops` binds the socket itself, so a taken port fails at once with a message naming
  the address, and port 0 reports the port the kernel chose. Hypercorn gets a *duplicate* of
  the descriptor (`fd://`): hypercorn wraps what it is given in a socket object of its own
  and closes it at shutdown, so sharing one descriptor would close it twice -- the second
  time perhaps after another thread reused the number. Until hypercorn wraps it (after its
  lifespan startup), the duplicate is ours, and closed here if hypercorn stops before.
* Hypercorn must be shut down through its `shutdown_trigger`, not by cancellation: on
  asyncio a cancelled hypercorn skips the rest of its clean-up at the next `await` (anyio
  keeps re-delivering the cancellation) and leaves tasks and sockets behind. So hypercorn
  runs in a shielded scope, and cancelling `serve_ops` fires the trigger instead; the shield
  gets a deadline at that moment, so a stuck shutdown cannot hold the service.
* Hypercorn's own log lines go to our `polymarket_kafka.ops.http_server.hypercorn` logger, its
  informational ones (the "Running on" banner) at DEBUG; there is no access log.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import anyio
import sniffio
from anyio.abc import TaskStatus
from hypercorn.config import Config, Sockets
from hypercorn.logging import Logger as HypercornLogger
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from polymarket_kafka.env_reader import url_host
from polymarket_kafka.ops.dashboard import API_ENDPOINTS, PAGE_FILES, SECURITY_HEADERS, Dashboard
from polymarket_kafka.ops.health import HealthReport, ServiceHealth

__all__ = ["OpsApp", "OpsServerError", "serve_ops", "url_host"]

logger = logging.getLogger(__name__)

ENDPOINTS = ("/health", "/health/live", "/health/ready", "/metrics")
#: The live channel: how often it checks for a change, when it sends a keep-alive comment,
#: and how long one stream lasts before the browser reconnects.
LIVE_CHECK_SECONDS = 1.0
LIVE_KEEPALIVE_SECONDS = 15.0
LIVE_STREAM_SECONDS = 30.0
#: Live streams open at once; more get 503 (the page then polls).
MAX_LIVE_STREAMS = 64
_METHODS = ("GET", "HEAD")
#: How long open connections may finish their request once shutdown begins.
_GRACEFUL_SECONDS = 1.0
#: Hard bound on hypercorn's whole shutdown (graceful period, lifespan) after cancellation.
_SHUTDOWN_SECONDS = 5.0

_Headers = list[tuple[bytes, bytes]]


class OpsServerError(OSError):
    """The health/metrics server cannot listen on its address (the message names it)."""


class OpsApp:
    """The ASGI application (lifespan and http scopes; other scopes are refused).

    `clock` gives the monotonic time passed to the health questions; it must be the clock
    the service stamps poll cycles with (by default the event loop's, `anyio.current_time`).
    """

    def __init__(
        self,
        health: ServiceHealth,
        registry: CollectorRegistry,
        *,
        clock: Callable[[], float] = anyio.current_time,
        dashboard: Dashboard | None = None,
        shutdown: anyio.Event | None = None,
    ) -> None:
        self._health = health
        self._registry = registry
        self._clock = clock
        self._dashboard = dashboard
        self._shutdown = shutdown if shutdown is not None else anyio.Event()
        self._live_streams = 0
        self._endpoints: tuple[str, ...] = ENDPOINTS
        if dashboard is not None:
            self._endpoints = (*ENDPOINTS, *PAGE_FILES, *API_ENDPOINTS)

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # a websocket: returning without accepting makes the server refuse it
        path, method = scope["path"], scope["method"]
        dashboard = self._dashboard
        if dashboard is not None and path == "/api/live" and method == "GET":
            if self._live_streams < MAX_LIVE_STREAMS:
                self._live_streams += 1
                try:
                    await self._live(dashboard, receive, send)
                finally:
                    self._live_streams -= 1
                return
            status, headers, body = _json(503, {"error": "too many live streams: poll /api/*"})
            await _respond(send, status, headers, body, method)
            return
        if path not in self._endpoints:
            status, headers, body = _json(
                404, {"error": "not found", "endpoints": list(self._endpoints)}
            )
        elif method not in _METHODS:
            status, headers, body = _json(405, {"error": "method not allowed", "allow": _METHODS})
            headers.append((b"allow", ", ".join(_METHODS).encode()))
        elif path == "/metrics":
            status, headers, body = self._metrics(scope["headers"])
        elif dashboard is not None and path in PAGE_FILES:
            status, headers, body = dashboard.page(path)
        elif dashboard is not None and path == "/api/live":  # HEAD: the stream's headers
            status, headers, body = 200, _live_headers(), b""
        elif dashboard is not None and path in API_ENDPOINTS:
            status, headers, body = dashboard.api(path, scope["query_string"], self._clock())
        else:
            now = self._clock()
            ask = self._health.live if path == "/health/live" else self._health.ready
            status, headers, body = _report(ask(now))
        await _respond(send, status, headers, body, method)

    async def _live(
        self, dashboard: Dashboard, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        """Server-sent events: `update` (with the board's version) when something changed,
        checked every `LIVE_CHECK_SECONDS`; the stream ends after `LIVE_STREAM_SECONDS` (the
        browser reconnects), at shutdown, or when the client goes."""
        headers = [*_live_headers(), (b"cache-control", b"no-store")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await _chunk(send, b"retry: 1000\n\n")
        gone = False
        async with anyio.create_task_group() as tasks:

            async def watch() -> None:
                nonlocal gone
                while (await receive())["type"] != "http.disconnect":
                    pass
                gone = True
                tasks.cancel_scope.cancel()

            tasks.start_soon(watch)
            seen, last_sent = -1, anyio.current_time()
            deadline = anyio.current_time() + LIVE_STREAM_SECONDS
            while anyio.current_time() < deadline and not self._shutdown.is_set():
                version = dashboard.board.version
                now = anyio.current_time()
                if version != seen:
                    seen, last_sent = version, now
                    data = f"event: update\ndata: {json.dumps({'version': version})}\n\n"
                    await send(
                        {"type": "http.response.body", "body": data.encode(), "more_body": True}
                    )
                elif now - last_sent >= LIVE_KEEPALIVE_SECONDS:
                    last_sent = now
                    await send(
                        {
                            "type": "http.response.body",
                            "body": b": keepalive\n\n",
                            "more_body": True,
                        }
                    )
                with anyio.move_on_after(LIVE_CHECK_SECONDS):
                    await self._shutdown.wait()
            tasks.cancel_scope.cancel()
        if not gone:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _metrics(self, request_headers: Any) -> tuple[int, _Headers, bytes]:
        accept = b",".join(v for k, v in request_headers if k.lower() == b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1"))
        return 200, [(b"content-type", content_type.encode())], encoder(self._registry)


async def _respond(
    send: ASGISendCallable, status: int, headers: _Headers, body: bytes, method: str
) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    headers.append((b"cache-control", b"no-store"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    # HEAD: the headers of a GET (its content-length included), never a body.
    await send(
        {
            "type": "http.response.body",
            "body": b"" if method == "HEAD" else body,
            "more_body": False,
        }
    )


def _live_headers() -> _Headers:
    return [(b"content-type", b"text/event-stream"), *SECURITY_HEADERS]


async def _chunk(send: ASGISendCallable, body: bytes) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": True})


def _json(status: int, payload: object) -> tuple[int, _Headers, bytes]:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return status, [(b"content-type", b"application/json")], body


def _report(report: HealthReport) -> tuple[int, _Headers, bytes]:
    return _json(200 if report.ok else 503, report.to_json())


async def _lifespan(receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    # Nothing to set up or tear down; answering keeps hypercorn from logging that lifespan
    # is unsupported.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:  # "lifespan.shutdown", the only other message of the lifespan protocol
            await send({"type": "lifespan.shutdown.complete"})
            return


class _Log(HypercornLogger):
    """Hypercorn's logger with its informational lines demoted to DEBUG."""

    async def info(self, message: str, *args: Any, **kwargs: Any) -> None:
        await self.debug(message, *args, **kwargs)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        # SO_REUSEADDR (create_server sets it on POSIX): a restart may bind over TIME_WAIT.
        return socket.create_server(
            (host, port),
            family=family,
            dualstack_ipv6=host == "::" and socket.has_dualstack_ipv6(),
        )
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        error = OpsServerError(f"cannot serve health/metrics on {url_host(host)}:{port}: {reason}")
        error.errno = exc.errno
        raise error from None


class _Config(Config):
    """Hypercorn's configuration, noting when hypercorn takes the `fd://` descriptor.

    Both hypercorn backends run the lifespan startup before `create_sockets`, which wraps the
    descriptor in a socket object that hypercorn then closes; a failure before that point
    leaves the descriptor with us.
    """

    fd_taken = False

    def create_sockets(self) -> Sockets:
        # Set first: once called, the descriptor may already be wrapped (and closed later by
        # hypercorn or the garbage collector); a leak is better than closing it twice.
        self.fd_taken = True
        return super().create_sockets()


def _hypercorn_config(fd: int) -> _Config:
    config = _Config()
    config.bind = [f"fd://{fd}"]
    config.accesslog = None
    config.errorlog = logging.getLogger(f"{__name__}.hypercorn")
    config.logger_class = _Log
    config.graceful_timeout = _GRACEFUL_SECONDS
    config.include_server_header = False
    return config


async def _run_hypercorn(
    app: OpsApp, sock: socket.socket, shutdown: anyio.Event, shield: anyio.CancelScope
) -> None:
    with shield:
        # Duplicated only once shielded: from here on hypercorn runs until it has wrapped
        # (and so owns) the duplicate, however early the cancellation came. If it fails or
        # returns before wrapping it, the duplicate is still ours to close.
        fd = os.dup(sock.fileno())
        config = _hypercorn_config(fd)
        try:
            if sniffio.current_async_library() == "trio":
                from hypercorn.trio import serve as trio_serve

                await trio_serve(app, config, shutdown_trigger=shutdown.wait, mode="asgi")
            else:
                from hypercorn.asyncio import serve as asyncio_serve

                await asyncio_serve(app, config, shutdown_trigger=shutdown.wait, mode="asgi")
        finally:
            if not config.fd_taken:  # hypercorn failed or returned before wrapping it
                os.close(fd)
    if not shutdown.is_set():
        raise RuntimeError("the health/metrics server stopped by itself")


async def serve_ops(
    host: str,
    port: int,
    *,
    health: ServiceHealth,
    registry: CollectorRegistry,
    dashboard: Dashboard | None = None,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `/health/live`, `/health/ready` and `/metrics` on `host:port` until cancelled.

    Binds first (port 0: any free port) and reports the bound port through `task_status`;
    connections made from then on are served. Raises `OpsServerError` (an `OSError`) naming
    the address when it cannot bind. On cancellation, open requests get a short grace
    period, then it returns (re-raising the cancellation) with the socket closed, on trio
    and asyncio alike.
    """
    with _listen(host, port) as sock:
        bound = int(sock.getsockname()[1])
        shutdown = anyio.Event()
        shield = anyio.CancelScope(shield=True)
        async with anyio.create_task_group() as tg:
            app = OpsApp(health, registry, dashboard=dashboard, shutdown=shutdown)
            tg.start_soon(_run_hypercorn, app, sock, shutdown, shield)
            if dashboard is not None:
                tg.start_soon(dashboard.sample_forever)
            logger.info("health/metrics on http://%s:%d", url_host(host), bound)
            task_status.started(bound)
            try:
                await anyio.sleep_forever()
            finally:
                shutdown.set()
                shield.deadline = anyio.current_time() + _SHUTDOWN_SECONDS
