"""Non-blocking writes to the log DB: one writer thread applies calls in order, so the event loop
never waits on the database (another process may hold SQLite's write lock for a while).

The thread drains its queue in batches: with a ``batch`` scope (:meth:`LogDB.batch <.db.LogDB.batch>`), what
has queued up since the last batch commits as one transaction, each call in a savepoint of its own so that a
failing call is undone alone. Under load that turns the five or so writes of a request into a fraction of a
commit; when idle a batch is a single write, applied at once.

A write (or batch) that finds the database locked for longer than its busy timeout is retried with backoff
(tenacity) for up to :data:`BUSY_RETRY_S`, holding back the writes queued after it so their order is
kept: a long lock delays the log, it does not lose rows.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from ..errors import LogDatabaseBusy
from .backend import ItemScope

_log = logging.getLogger("imagegen.log")

#: How long a write keeps trying while the database stays locked by someone else.
BUSY_RETRY_S = 120.0

#: While writes wait for a locked database, say so about this often.
BUSY_REPORT_EVERY_S = 10.0

#: How long closing waits for the queued writes: past the retries of a locked database, so only a database
#: that does not answer at all (a server that hangs; nothing is refused) makes a process give up its last rows.
CLOSE_WAIT_S = BUSY_RETRY_S + 10.0

#: At most this many queued calls share one transaction (bounds how long the write lock is held).
MAX_BATCH = 500

#: Opens one batch: a transaction whose scope factory isolates each call (see :meth:`LogDB.batch`).
BatchScope = Callable[[], AbstractContextManager[ItemScope]]


@dataclass(slots=True)
class _Call:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)


class LogWriter:
    """Runs write calls on a single dedicated thread, in submission order; with ``batch``, what queues up
    while a transaction commits is applied in the next one."""

    def __init__(
        self,
        name: str = "imagegen-log-writer",
        *,
        batch: BatchScope | None = None,
        max_batch: int = MAX_BATCH,
        busy_retry_s: float = BUSY_RETRY_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._name = name
        self._batch = batch
        self._max_batch = max(1, max_batch)
        self._busy_retry_s = busy_retry_s
        self._sleep = sleep
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._last_report = 0.0  # writer thread only: seconds into the current wait of the last warning

    # -- the caller's side ----------------------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Queue ``fn(*args, **kwargs)``; failures are logged, never raised into the caller. The future
        resolves once the call's transaction has committed."""
        call = self._enqueue(fn, args, kwargs)
        call.future.add_done_callback(_report_failure)
        return call.future

    async def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` on the writer thread and await its result once committed (exceptions propagate)."""
        return await asyncio.wrap_future(self._enqueue(fn, args, kwargs).future)

    async def flush(self) -> None:
        """Wait until everything submitted so far has been applied."""
        await asyncio.wrap_future(self._enqueue(_nothing, (), {}).future)

    def flush_sync(self) -> None:
        """Blocking :meth:`flush` for synchronous code."""
        self._enqueue(_nothing, (), {}).future.result()

    def close(self, *, timeout: float | None = CLOSE_WAIT_S) -> None:
        """Apply what is queued, then stop the thread; idempotent. Waits ``timeout`` at most (None: for ever):
        longer than a locked database is retried, so only a database that does not answer at all (a server
        that hangs) is given up on, with a warning, rather than keeping the process from ending."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        atexit.unregister(self.close)
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)
            if thread.is_alive():
                _log.warning("the log database did not answer for %g s: the log writes under way are lost", timeout)

    def _enqueue(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Call:
        call = _Call(fn, args, kwargs)
        with self._lock:  # no call may slip in behind close()'s stop marker, where nothing would apply it
            if self._closed:
                raise RuntimeError("the log writer is closed")
            if self._thread is None:
                # A daemon thread, drained at exit: an ImageGen nobody closed still applies what it queued.
                self._thread = threading.Thread(target=self._run, name=f"{self._name}_0", daemon=True)
                self._thread.start()
                atexit.register(self.close)
            self._queue.put(call)
        return call

    # -- the writer thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            calls: list[_Call] = []
            stop = first is None
            if first is not None:
                calls.append(first)
            while not stop and len(calls) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                else:
                    calls.append(nxt)
            if calls:
                self._apply(calls)
            if stop:
                return

    def _apply(self, calls: list[_Call]) -> None:
        if self._batch is None or len(calls) == 1:
            for call in calls:
                self._apply_one(call)
            return
        try:
            try:
                outcomes = self._patiently(self._apply_batch, calls, isolated=False)
            except _CallFailed:  # rolled back; again with a savepoint around each call, to undo that one alone
                outcomes = self._patiently(self._apply_batch, calls, isolated=True)
        except LogDatabaseBusy as exc:  # locked for the whole retry window: these writes are lost, and said so
            for call in calls:
                _settle(call.future, exc, None)
            return
        except Exception:
            # The batch itself failed (not one call: those are isolated): apply one by one, each with its own
            # error, exactly as without batching. Nothing of the batch was committed.
            for call in calls:
                self._apply_one(call)
            return
        for call, (error, value) in zip(calls, outcomes, strict=True):
            _settle(call.future, error, value)

    def _apply_batch(self, calls: list[_Call], *, isolated: bool) -> list[tuple[BaseException | None, Any]]:
        """One transaction for ``calls``. Not ``isolated`` (the usual case: no call fails), a failing call
        raises :class:`_CallFailed` and rolls the whole batch back; ``isolated``, each call runs in a savepoint
        (two more statements per call) and a failure is that call's outcome."""
        assert self._batch is not None
        outcomes: list[tuple[BaseException | None, Any]] = []
        with self._batch() as scope:
            for call in calls:
                try:
                    with scope() if isolated else nullcontext():
                        outcomes.append((None, call.fn(*call.args, **call.kwargs)))
                except LogDatabaseBusy:
                    raise  # the whole batch is retried: a busy database must delay rows, not drop them
                except Exception as exc:
                    if not isolated:
                        raise _CallFailed from exc
                    outcomes.append((exc, None))
        return outcomes

    def _apply_one(self, call: _Call) -> None:
        try:
            value = self._patiently(call.fn, *call.args, **call.kwargs)
        except Exception as exc:
            _settle(call.future, exc, None)
        else:
            _settle(call.future, None, value)

    def _patiently(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        retrying = Retrying(
            retry=retry_if_exception_type(LogDatabaseBusy),
            stop=stop_after_delay(self._busy_retry_s),
            wait=wait_exponential_jitter(multiplier=0.05, max=2.0),
            before_sleep=self._report_wait,
            sleep=self._sleep,
            reraise=True,
        )
        return retrying(fn, *args, **kwargs)

    def _report_wait(self, state: RetryCallState) -> None:
        """Say once, then about every :data:`BUSY_REPORT_EVERY_S`, that writes are waiting, in words (the
        retries themselves back off to a couple of seconds, so one line per retry would flood the log)."""
        waited = state.seconds_since_start or 0.0
        if state.attempt_number > 1 and waited // BUSY_REPORT_EVERY_S == self._last_report // BUSY_REPORT_EVERY_S:
            return
        self._last_report = waited
        error = state.outcome.exception() if state.outcome is not None else None
        _log.warning("%s; the log writes wait (%.0f s so far, giving up after %g s)", error, waited, self._busy_retry_s)


class _CallFailed(Exception):
    """A call failed inside a batch run without savepoints: the batch is rolled back and run with them."""


def _nothing() -> None:
    return None


def _settle(future: concurrent.futures.Future[Any], error: BaseException | None, value: Any) -> None:
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def _report_failure(future: concurrent.futures.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        _log.error("log write failed: %s", future.exception())
