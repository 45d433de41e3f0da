"""Non-blocking writes to the log DB: one writer thread applies calls in order, so the event loop
never waits on the database (another process may hold SQLite's write lock for a while).

A write that finds the database locked for longer than its busy timeout is retried with backoff
(tenacity) for up to :data:`BUSY_RETRY_S`, holding back the writes queued after it so their order is
kept: a long lock delays the log, it does not lose rows.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable
from typing import Any

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from ..errors import LogDatabaseBusy

_log = logging.getLogger("imagegen.log")

#: How long a write keeps trying while the database stays locked by someone else.
BUSY_RETRY_S = 120.0


class LogWriter:
    """Runs write calls on a single dedicated thread, in submission order."""

    def __init__(
        self,
        name: str = "imagegen-log-writer",
        *,
        busy_retry_s: float = BUSY_RETRY_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._closed = False
        self._busy_retry_s = busy_retry_s
        self._sleep = sleep

    def _patiently(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        retrying = Retrying(
            retry=retry_if_exception_type(LogDatabaseBusy),
            stop=stop_after_delay(self._busy_retry_s),
            wait=wait_exponential_jitter(multiplier=0.05, max=2.0),
            before_sleep=lambda state: _log.warning("log database busy, retrying a write (%s)", state.outcome),
            sleep=self._sleep,
            reraise=True,
        )
        return retrying(fn, *args, **kwargs)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Queue ``fn(*args, **kwargs)``; failures are logged, never raised into the caller."""
        future = self._pool.submit(self._patiently, fn, *args, **kwargs)
        future.add_done_callback(_report_failure)
        return future

    async def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` on the writer thread and await its result (exceptions propagate)."""
        return await asyncio.wrap_future(self._pool.submit(self._patiently, fn, *args, **kwargs))

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
