"""A TCP proxy on 127.0.0.1 that can stall: a server that hangs, or a network that drops every packet, as
its clients see it. Connections are accepted and their bytes forwarded both ways; :meth:`StallingProxy.stall`
stops all forwarding (bytes already sent wait in the proxy, new connections are accepted and get nothing) until
:meth:`StallingProxy.resume`. Unlike a stopped server, nothing is refused: a client learns of it only by its
own timeouts."""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType


class StallingProxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream`` (host, port); ``url_port`` is where clients connect."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._acceptor = threading.Thread(target=self._accept, name="stalling-proxy", daemon=True)

    def stall(self) -> None:
        """From now on, forward nothing (in either direction, on every connection, old or new)."""
        self._flowing.clear()

    def resume(self) -> None:
        """Forward again, what waited first."""
        self._flowing.set()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self._flowing.wait()  # a new connection while stalled: accepted, then silence
        if self._closed.is_set():
            client.close()
            return
        try:
            server = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            client.close()
            return
        server.settimeout(None)
        with self._lock:
            self._sockets += [client, server]
        for source, sink in ((client, server), (server, client)):
            threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self._flowing.wait()  # stalled: the bytes wait here, as in a hung server's socket buffer
                if self._closed.is_set():
                    return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> StallingProxy:
        self._acceptor.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._closed.set()
        self._flowing.set()  # lets every waiting thread see the close
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()
        self._acceptor.join(5)
