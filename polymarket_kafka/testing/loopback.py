"""A threaded HTTP server on a free loopback port: the lifecycle the test servers share.

`fake_polymarket.FakePolymarketServer` (synthetic markets) and `cassette_server.CassetteServer`
(recorded answers) differ only in what they answer; starting, stopping, the `with` block and
the base URL a `PolymarketConfig` points at are this class.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from polymarket_kafka.config import PolymarketConfig

__all__ = ["KeepAliveHandler", "LoopbackHttpServer"]


class KeepAliveHandler(BaseHTTPRequestHandler):
    """An HTTP/1.1 keep-alive handler that stays quiet (subclasses add `do_GET`/`do_POST`)."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle plus delayed
    # ACKs add ~40 ms to every keep-alive response.
    disable_nagle_algorithm = True
    # An idle keep-alive connection ends its thread after this long.
    timeout = 30

    def log_message(self, format: str, *args: object) -> None:
        pass  # the caller's output stays clean; each server counts what it served


class LoopbackHttpServer:
    """Serves `_make_server()` in a daemon thread between `start()` and `stop()`."""

    #: Name of the serving thread (shows in thread dumps).
    thread_name = "loopback-http"

    def __init__(self) -> None:
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _make_server(self) -> ThreadingHTTPServer:
        """A new server bound to 127.0.0.1, port 0 (subclasses say what it answers)."""
        raise NotImplementedError

    def start(self) -> Self:
        if self._server is None:
            self._server = self._make_server()
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=self.thread_name,
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is not None and thread is not None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>`; both the CLOB and Gamma paths are served there."""
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def polymarket_config(self, **overrides: Any) -> PolymarketConfig:
        """A config pointing both base URLs here, with no client-side pacing and no market
        channel by default (a test that streams names its fake channel: `ws_url=`)."""
        config = PolymarketConfig(
            base_url=self.url, gamma_url=self.url, rate_limit_delay_ms=0, ws_url=""
        )
        return replace(config, **overrides)
