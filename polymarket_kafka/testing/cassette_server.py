"""Recorded Polymarket responses (a vcrpy cassette) served over real loopback HTTP.

`CassetteTransport` replays a cassette inside one process's httpx client. `CassetteServer`
serves the same replay on 127.0.0.1, for a client that can only be given URLs: the service
in a container (`scripts/container_live.py` points `POLYMARKET_BASE_URL` and
`POLYMARKET_GAMMA_URL` of the container at it), or any other process. Both base URLs point at
the one server: the recorded paths (`/midpoints`, `/markets`) tell CLOB and Gamma requests
apart, and the host is not matched.

    with CassetteServer(DEFAULT_CASSETTE) as server:
        config = server.polymarket_config()
        ...                                        # a client configured with it polls
        assert server.all_played and not server.errors

Replay is `CassetteTransport`'s, unchanged: the same matching (method, path, query as a
multiset, body as JSON), identical requests answered by their recorded interactions in
recorded order, then -- with `repeat_last=True`, the default here as in the demo -- the last
one again, so a client polling on real time past the end of the recording sees a flat price.
Requests are answered one at a time, in arrival order (the replay state is under a lock).

A request the cassette cannot answer gets HTTP 422 `{"error": "cassette: ..."}`: a status the
client neither retries nor bisects, so a cassette that does not fit the client's requests
fails the request at once; the reason is kept in `errors` for the caller to show.

The server is stdlib `ThreadingHTTPServer` in a daemon thread, like `FakePolymarketServer`
(`polymarket_kafka.testing.fake_polymarket`), which stays the scriptable synthetic fake for
everything else.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Mapping
from http.server import ThreadingHTTPServer
from os import PathLike

import httpx

from polymarket_kafka.testing.cassette import CassetteError, CassetteTransport
from polymarket_kafka.testing.loopback import KeepAliveHandler, LoopbackHttpServer

__all__ = ["MISMATCH_STATUS", "CassetteServer"]

#: The status of a request the cassette cannot answer (neither retried nor bisected).
MISMATCH_STATUS = 422
# Describe the recorded body, not how it travelled: the server frames it itself.
_HOP_HEADERS = frozenset(
    ("connection", "content-encoding", "content-length", "keep-alive", "transfer-encoding")
)

_Answer = tuple[int, str | None, list[tuple[str, str]], bytes]


class _Replay:
    """The transport's replay state and what was served, under one lock."""

    def __init__(self, transport: CassetteTransport) -> None:
        self.transport = transport
        self.lock = threading.Lock()
        self.errors: list[str] = []
        self.counts: Counter[str] = Counter()

    def answer(self, request: httpx.Request) -> _Answer:
        with self.lock:
            self.counts[f"{request.method} {request.url.path}"] += 1
            try:
                response = self.transport.respond(request)
            except CassetteError as exc:
                self.errors.append(str(exc))
                body = json.dumps({"error": f"cassette: {exc}"}).encode()
                return MISMATCH_STATUS, None, [("Content-Type", "application/json")], body
        headers = [(k, v) for k, v in response.headers.items() if k.lower() not in _HOP_HEADERS]
        return response.status_code, response.reason_phrase or None, headers, response.content


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, replay: _Replay) -> None:
        self.replay = replay
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(KeepAliveHandler):
    server: _Server

    def do_GET(self) -> None:
        self._replay()

    def do_POST(self) -> None:
        self._replay()

    def _replay(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        host, port = self.server.server_address[:2]
        url = f"http://{host!s}:{port}{self.path}"
        status, reason, headers, content = self.server.replay.answer(
            httpx.Request(self.command, url, content=body)
        )
        self.send_response(status, reason)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)


class CassetteServer(LoopbackHttpServer):
    """A cassette's recorded Polymarket answers on `http://127.0.0.1:<free port>`.

    `cassette` is a YAML file path or an already loaded mapping (see `CassetteTransport`).
    Start and stop it with `with` (or `start()`/`stop()`); every method is thread-safe, and
    what was served stays readable after `stop()`.
    """

    def __init__(
        self, cassette: str | PathLike[str] | Mapping[str, object], *, repeat_last: bool = True
    ) -> None:
        self._replay = _Replay(CassetteTransport(cassette, repeat_last=repeat_last))
        super().__init__()

    thread_name = "cassette-server"

    def _make_server(self) -> _Server:
        return _Server(self._replay)

    # --- what was served -------------------------------------------------------------------

    @property
    def all_played(self) -> bool:
        """True once every recorded interaction was served at least once."""
        with self._replay.lock:
            return self._replay.transport.all_played

    @property
    def play_count(self) -> int:
        """Recorded responses served (repeats of the last one included; refusals not)."""
        with self._replay.lock:
            return self._replay.transport.play_count

    @property
    def errors(self) -> list[str]:
        """Why each request the cassette could not answer was refused, in arrival order."""
        with self._replay.lock:
            return list(self._replay.errors)

    def request_count(self, endpoint: str | None = None) -> int:
        """Requests received, e.g. for `"POST /midpoints"` or `"GET /markets"`, or in total."""
        with self._replay.lock:
            if endpoint is None:
                return sum(self._replay.counts.values())
            return self._replay.counts[endpoint]
