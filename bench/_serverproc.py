"""A fake server in its own process, for benchmarks: its CPU time is not the client's, and it starts
clean (spawn, not fork) instead of inheriting the parent's threads and event loop.

The child binds a loopback socket, serves an aiohttp app on it, reports the port through a pipe and
runs until SIGTERM (or SIGINT, so Ctrl-C in a terminal ends quietly).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

HOST = "127.0.0.1"


def bind_loopback() -> tuple[socket.socket, int]:
    """A socket bound to a free port on 127.0.0.1 (bound first, so handlers can name their own origin)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    return sock, sock.getsockname()[1]


async def serve_until_stopped(conn: Connection, sock: socket.socket, app: Any) -> None:
    """Serve ``app`` (an aiohttp ``web.Application``) on ``sock``, tell the parent the port, stop on a signal."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock, backlog=1024).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    conn.send(sock.getsockname()[1])
    conn.close()
    await stop.wait()
    await runner.cleanup()


class ServerProcess:
    """Start ``target(conn, *args)`` in a spawned process and wait for the port it reports."""

    def __init__(
        self, target: Callable[..., None], args: tuple[Any, ...], *, name: str, error: type[Exception]
    ) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._target, self._args, self.name, self._error = target, args, name, error
        self._proc: Any = None

    def start(self) -> int:
        """The child's port, once it listens; raises ``error`` when it dies or takes over 30 s."""
        receiver, sender = self._ctx.Pipe(duplex=False)
        self._proc = self._ctx.Process(target=self._target, args=(sender, *self._args), name=self.name, daemon=True)
        self._proc.start()
        sender.close()
        started = time.monotonic()
        try:
            while not receiver.poll(0.1):
                if not self._proc.is_alive() or time.monotonic() - started > 30:
                    self.stop()
                    raise self._error(f"{self.name} did not start")
            try:
                port: int = receiver.recv()
            except EOFError:  # poll() is also true when the child died before sending
                self.stop()
                raise self._error(f"{self.name} exited during start-up") from None
        finally:
            receiver.close()
        return port

    def stop(self) -> int | None:
        """Terminate (then kill) the child; its exit code, or None when it had to be killed."""
        if self._proc is None:
            return 0
        self._proc.terminate()
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
            return None
        exitcode: int | None = self._proc.exitcode
        return exitcode
