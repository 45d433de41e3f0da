"""Non-blocking writes to the log DB: one writer thread applies calls in order, so the event loop never
waits on the database (another SQLite process may hold the write lock for a while; a PostgreSQL server is a
network round trip away)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from typing import Any

_log = logging.getLogger("imagegen.log")


class LogWriter:
    """Runs write calls on a single dedicated thread, in submission order."""

    def __init__(self, name: str = "imagegen-log-writer") -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Queue ``fn(*args, **kwargs)``; failures are logged, never raised into the caller."""
        future = self._pool.submit(fn, *args, **kwargs)
        future.add_done_callback(_report_failure)
        return future

    async def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` on the writer thread and await its result (exceptions propagate)."""
        return await asyncio.wrap_future(self._pool.submit(fn, *args, **kwargs))

    async def flush(self) -> None:
        """Wait until everything submitted so far has been applied."""
        await asyncio.wrap_future(self._pool.submit(lambda: None))

    def flush_sync(self) -> None:
        """Blocking :meth:`flush` for synchronous code."""
        self._pool.submit(lambda: None).result()

    def close(self) -> None:
        """Apply what is queued, then stop the thread; idempotent."""
        if not self._closed:
            self._closed = True
            self._pool.shutdown(wait=True)


def _report_failure(future: concurrent.futures.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        _log.error("log write failed: %s", future.exception())
