"""Fixture ``stoppable_front``: a server seen through a TCP front on a port of its own, which a test stops and
starts again. Stopped, the port refuses connections and every open one is cut, as when the server's process died;
started again, the same port answers with the server's state intact, as after a restart with a persistent store
(MLflow's database, S3's objects). A real server process behind it is spared the restart itself, which on a
loaded 2-core machine takes minutes.
"""

from __future__ import annotations

import re
import socket
import threading
from urllib.parse import urlparse

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StoppableFront:
    """A TCP front on a fixed 127.0.0.1 port for a server behind it. ``stop()`` closes the port and cuts every
    connection (clients see a stopped server: refused); ``start()`` opens the same port again. ``stop_when(pattern)``
    makes the front stop itself the moment a client sends bytes matching it, before they reach the server: the
    server dies in the middle of that request."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._trigger: re.Pattern | None = None
        self.trips = 0  # times stop_when's pattern stopped the front

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        with self._lock:
            self._listener = listener
        self.stopped.clear()
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            connections, self._connections = self._connections, set()
        if listener is not None:
            listener.close()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            connection.close()
        self.stopped.set()

    def stop_when(self, pattern: bytes) -> None:
        self._trigger = re.compile(pattern)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._connections |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        try:
            while chunk := source.recv(65536):
                trigger = self._trigger
                if from_client and trigger is not None and trigger.search(chunk):
                    self._trigger = None
                    self.trips += 1
                    self.stop()
                    return
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass



@pytest.fixture
def stoppable_front():
    """``front_of(url)``: a started :class:`StoppableFront` for the server at ``url`` (stopped at the end of the test)."""
    fronts: list[StoppableFront] = []

    def front_of(url: str) -> StoppableFront:
        front = StoppableFront(urlparse(url).port)
        front.start()
        fronts.append(front)
        return front

    yield front_of
    for front in fronts:
        front.stop()
