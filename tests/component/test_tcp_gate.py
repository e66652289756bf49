"""`TcpGate`, the test helper that takes a server down and up at a fixed address."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from tests.plugins.tcp_gate import TcpGate


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(1024):
            self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo) as server:
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        yield "127.0.0.1", server.server_address[1]
        server.shutdown()
        thread.join(timeout=5)


def connect(gate: TcpGate) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gate.port), timeout=5)


def hung_up(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


def test_closed_hangs_up_open_forwards_and_close_cuts(echo: tuple[str, int]) -> None:
    with TcpGate() as gate:
        port = gate.port
        with connect(gate) as sock:
            assert hung_up(sock)  # closed: the server looks down

        gate.open(*echo)
        with connect(gate) as sock:
            sock.sendall(b"ping")
            assert sock.recv(1024) == b"ping"
            gate.close()  # the server "dies" under an open connection
            assert hung_up(sock)

        with connect(gate) as sock:
            assert hung_up(sock)
        gate.open(*echo)  # back up, at the same address
        assert gate.port == port
        with connect(gate) as sock:
            sock.sendall(b"pong")
            assert sock.recv(1024) == b"pong"


def test_an_unreachable_target_hangs_up() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        with TcpGate() as gate:
            gate.open(*unused.getsockname())
            with connect(gate) as sock:
                assert hung_up(sock)
