"""One HTTP client per event loop, closed with its loop if nobody closes it sooner.

An aiohttp session belongs to the loop it was made on, so an ImageGen used from several loops (a script's
successive ``asyncio.run`` calls, a notebook's loop, the sync portal's) holds one client per loop.
:meth:`LoopClients.aclose_current` closes the running loop's; the others close when their loop shuts down:
``asyncio.run`` (like every loop that calls ``shutdown_asyncgens``) finalises the async generators started
on it, and each client is tied to one of those. Without that, a client whose loop was gone could never be
closed again: its connections stayed open until the process ended (``Unclosed client session``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import threading
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

import httpx


async def _closed_with_its_loop(client: httpx.AsyncClient, forget: Callable[[], None]) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        forget()  # QA: the entry (the closed loop and its client, ~0.8 MB) stayed for ever, one per asyncio.run
        await client.aclose()


@dataclass(slots=True)
class _Entry:
    client: httpx.AsyncClient
    closer: AsyncGenerator[None, None]


class LoopClients:
    """The HTTP client of each event loop, made by ``factory`` on first use there."""

    def __init__(self, factory: Callable[[], httpx.AsyncClient]) -> None:
        self._factory = factory
        self._entries: dict[asyncio.AbstractEventLoop, _Entry] = {}
        self._lock = threading.Lock()  # loops in several threads (the sync portal's, the caller's)

    def get(self) -> httpx.AsyncClient:
        """The running loop's client."""
        loop = asyncio.get_running_loop()
        entry = self._entries.get(loop)
        if entry is None:
            self._drop_closed_loops()
            client = self._factory()
            closer = _closed_with_its_loop(client, functools.partial(self._forget, loop, client))
            # Run it to its `yield` now. Its first step registers it with the running loop (the loop's
            # asyncgen hooks), whose shutdown_asyncgens() then runs its `finally`: the client closes.
            with contextlib.suppress(StopIteration):  # what reaching the `yield` raises here
                closer.asend(None).send(None)
            entry = _Entry(client, closer)
            with self._lock:
                self._entries[loop] = entry
        return entry.client

    def _forget(self, loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient) -> None:
        with self._lock:
            entry = self._entries.get(loop)
            if entry is not None and entry.client is client:
                del self._entries[loop]

    def _drop_closed_loops(self) -> None:
        """Forget the clients of loops closed without finalising their async generators (``loop.close()``
        alone): nothing can close those clients any more, and holding them would keep each loop in memory."""
        with self._lock:
            for loop in [loop for loop in self._entries if loop.is_closed()]:
                del self._entries[loop]

    async def aclose_current(self) -> None:
        """Close the running loop's client, if it has one."""
        with self._lock:
            entry = self._entries.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await entry.closer.aclose()

    def close_others(self) -> list[concurrent.futures.Future[None]]:
        """Ask every other loop that still runs (another thread's) to close its client there; returns the
        pending closings. Clients of loops that are closed went with them (see the module docstring)."""
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        with self._lock:
            entries = [(loop, self._entries.pop(loop)) for loop in list(self._entries) if loop is not current]
        return [
            asyncio.run_coroutine_threadsafe(entry.closer.aclose(), loop)
            for loop, entry in entries
            if loop.is_running() and not loop.is_closed()
        ]

    def close_current_soon(self) -> asyncio.Task[None] | None:
        """From synchronous code running on a loop (``close()`` called in a notebook cell or a coroutine):
        close that loop's client as soon as the caller yields to it."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        with self._lock:
            entry = self._entries.pop(loop, None)
        return loop.create_task(entry.closer.aclose()) if entry is not None else None


#: Libraries that log a line per HTTP call at INFO: the request line and the attempt rows say it already, and a
#: URL may hold what is not for the log (Unsplash's query is the prompt).
_CHATTY_HTTP_LOGGERS = ("httpx", "httpcore")


def quiet_http_client_lines(level: str) -> None:
    """Keep the HTTP client's per-call lines out of the log unless ``level`` is DEBUG (the commands' plain
    lines and ``serve``'s JSON ones alike; here, not in the API package, which the base install lacks)."""
    for name in _CHATTY_HTTP_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if level.upper() == "DEBUG" else logging.WARNING)
