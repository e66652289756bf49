"""A loopback TCP port that a test closes and opens under a client's feet, and never gives up.

A test that needs a server to be down and later up *at the same address* cannot stop the
server and start it again on that port: once the port is free, any other process may take it
before the server binds it again. `TcpGate` holds its listening port from start to stop and
decides per connection instead. Closed, it accepts and hangs up at once (the client sees the
server as down); open, it forwards both ways to its target. `close()` also cuts every
forwarded connection, as when the server behind it dies.

Plain threads, no event loop: the gate works the same under trio and asyncio, and the
clients (pymongo runs in worker threads) never wait on the test's own loop.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

__all__ = ["TcpGate"]

_ACCEPT_POLL_SECONDS = 0.05


class TcpGate:
    """A listening port on 127.0.0.1 that is closed until `open(host, port)`. Use with `with`."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(_ACCEPT_POLL_SECONDS)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._target: tuple[str, int] | None = None
        self._links: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_forever, name="tcp-gate")

    def __enter__(self) -> TcpGate:
        self._acceptor.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping.set()
        self.close()
        self._acceptor.join(timeout=5)
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def open(self, host: str, port: int) -> None:
        """Forward every new connection to `host:port`."""
        with self._lock:
            self._target = (host, port)

    def close(self) -> None:
        """Hang up on every new connection, and cut the forwarded ones."""
        with self._lock:
            self._target = None
            links, self._links = self._links, set()
        for sock in links:
            _hang_up(sock)

    def _accept_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            client.settimeout(None)
            with self._lock:
                target = self._target
            upstream = _connect(target) if target is not None else None
            with self._lock:
                if upstream is None or self._target != target:
                    _hang_up(client)
                    if upstream is not None:
                        _hang_up(upstream)
                    continue
                self._links |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=_pump, args=(source, sink), name="tcp-gate-pump")
                thread.start()
                self._threads.append(thread)


def _connect(target: tuple[str, int]) -> socket.socket | None:
    try:
        upstream = socket.create_connection(target, timeout=5)
    except OSError:
        return None
    upstream.settimeout(None)
    return upstream


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy `source` to `sink` until either side ends; then end both."""
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    _hang_up(source)
    _hang_up(sink)


def _hang_up(sock: socket.socket) -> None:
    # shutdown() first: it wakes a recv() blocked on the socket in another thread.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
