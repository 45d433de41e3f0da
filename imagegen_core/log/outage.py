"""Going on without the log database while it cannot be read (a PostgreSQL restart, a lost network).

The config read before each request and the circuit breakers' reads both use it: after a read failed, they
keep what they have (the config in force; calls let through unchecked) for :data:`READ_PAUSE_S` before the
next read is tried, since each read of a server that is down costs its caller about a second; and each says
so once when the outage starts and once when a read works again, not once per request.

A server that hangs, or a network that drops packets, refuses nothing: a read then waits for TCP to give up,
many minutes, and the request with it, whatever its deadline. :meth:`ReadPause.read` runs a read on threads of
its own and waits :data:`READ_WAIT_S` at most; a read still running after that counts as failed, and no other
is started until it ends (so hung reads never pile up, nor take the threads everything else needs).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from ..errors import LogDatabaseBusy, LogDatabaseError
from ..forking import renew_after_fork
from ..workers import DaemonWorkers, outcome

_log = logging.getLogger("imagegen")

T = TypeVar("T")

#: How long callers go on without the log database after one of its reads failed.
READ_PAUSE_S = 5.0
#: How long a request waits for one read before going on without it. A read of a healthy server takes
#: milliseconds; a second covers a busy one.
READ_WAIT_S = 1.0


_BOUNDED = threading.local()


def on_bounded_thread() -> bool:
    """Whether this thread runs a :class:`BoundedCalls` call, whose caller waits a bounded time already: a
    blocking call bounded again from here (:meth:`BoundedCalls.run_sync`: a PostgreSQL read, an admin change)
    then runs right here instead of on a thread of its own."""
    return bool(getattr(_BOUNDED, "active", False))


def _marked(call: Callable[[], T]) -> Callable[[], T]:
    def run() -> T:
        _BOUNDED.active = True
        try:
            return call()
        finally:
            _BOUNDED.active = False

    return run


class BoundedCalls:
    """Blocking calls on the log database, each on one of these threads (never the loop's default executor,
    which image normalisation needs) and awaited ``wait_s`` at most. A call still running after that is
    :attr:`overdue`; while one is, no other starts (they would only pile up): it is refused at once.
    ``what`` and ``noun`` name the database and the call in errors ("the log database … an earlier read")."""

    def __init__(
        self, *, wait_s: float, threads: int, name: str, what: str = "the log database", noun: str = "call"
    ) -> None:
        self.wait_s = wait_s
        self._what = what
        self._noun = noun
        self._workers = DaemonWorkers(threads, name=name)
        self._overdue = 0
        self._lock = threading.Lock()
        renew_after_fork(self)

    def renew_after_fork(self) -> None:
        """In a forked child: a call the parent was waiting for never ends here, so it must not keep every
        later call refused as overdue (its workers renew themselves)."""
        self._overdue = 0
        self._lock = threading.Lock()

    @property
    def overdue(self) -> bool:
        """Whether a call outlived its wait and still runs (the database does not answer)."""
        return self._overdue > 0

    async def run(self, call: Callable[[], T], *, wait_s: float | None = None) -> T:
        """``call()`` on one of these threads, awaited at most ``wait_s`` (default :attr:`wait_s`). Longer, it
        raises LogDatabaseError and goes on in its thread, :attr:`overdue` until it ends. Cancelling the await
        abandons the call the same way, without waiting for it. While one is overdue, LogDatabaseBusy at once."""
        self._refuse_while_overdue()
        limit = self.wait_s if wait_s is None else wait_s
        future = self._workers.submit(_marked(call))
        try:
            # asyncio.timeout, not wait_for: on Python 3.11, wait_for returns a result that arrives as its task
            # is cancelled and drops the cancellation, and a race's losing lane then called its provider anyway.
            async with asyncio.timeout(limit):
                return await outcome(future)
        except TimeoutError:
            raise self._gave_up(future, limit) from None

    def run_sync(self, call: Callable[[], T], *, wait_s: float | None = None) -> T:
        """:meth:`run` for a blocking caller (a console page, a command). On a thread that runs a bounded call
        already (:func:`on_bounded_thread`), ``call`` runs in place: its caller waits a bounded time, and a second
        hop would only add a thread (or wait for this one, with a single thread)."""
        if on_bounded_thread():
            return call()
        self._refuse_while_overdue()
        limit = self.wait_s if wait_s is None else wait_s
        future = self._workers.submit(_marked(call))
        try:
            return future.result(timeout=limit)
        except TimeoutError:  # concurrent.futures' is the built-in one since Python 3.11
            future.cancel()  # still queued behind a hung call: never start it
            raise self._gave_up(future, limit) from None

    def _refuse_while_overdue(self) -> None:
        if self.overdue:
            raise LogDatabaseBusy(
                f"{self._what} has not answered an earlier {self._noun} yet (a server that hangs, or a network that "
                "drops packets?)"
            )

    def _gave_up(self, future: Future[Any], limit: float) -> LogDatabaseError:
        """The call goes on in its thread, overdue until it ends; the error to raise (transient: a log write
        that met it is retried)."""
        with self._lock:
            self._overdue += 1
        future.add_done_callback(self._ended)
        return LogDatabaseBusy(
            f"{self._what} did not answer within {limit:g} s (a server that hangs, or a network that drops packets?)"
        )

    def _ended(self, _: Future[Any]) -> None:
        with self._lock:
            self._overdue -= 1

    def close(self) -> None:
        """Let the threads end (one stuck in a call ends with it)."""
        self._workers.close()


class ReadPause:
    """One kind of log read (the config's, the breakers') going on without the database during an outage.

    ``down`` is the warning when a read first fails (``%s`` is the error), ``back`` the one when a read
    works again."""

    def __init__(
        self,
        *,
        down: str,
        back: str,
        pause_s: float = READ_PAUSE_S,
        wait_s: float = READ_WAIT_S,
        threads: int = 4,
        name: str = "imagegen-log-read",
    ) -> None:
        self._down = down
        self._back = back
        self._pause_s = pause_s
        #: ``time.monotonic()`` before which reads are skipped after one failed (0: reads work).
        self._resume_at = 0.0
        self._calls = BoundedCalls(wait_s=wait_s, threads=threads, name=name)

    @property
    def paused(self) -> bool:
        """Whether a read failed less than ``pause_s`` ago, or one that outlived its wait still runs: skip the
        database for now."""
        return time.monotonic() < self._resume_at or self._calls.overdue

    @property
    def failing(self) -> bool:
        """Whether the last read failed (or one still hangs) and none has worked since: an outage under way."""
        return bool(self._resume_at) or self._calls.overdue

    async def read(self, call: Callable[[], T], *, wait_s: float | None = None) -> T:
        """``call()`` (a blocking log read) on one of this pause's threads, awaited at most ``wait_s`` (default:
        the pause's). Longer, it raises LogDatabaseError and goes on in its thread, :attr:`paused` until it
        ends."""
        return await self._calls.run(call, wait_s=wait_s)

    def close(self) -> None:
        """Let the read threads end (one stuck in a read ends with it)."""
        self._calls.close()

    def failed(self, exc: Exception, *, said: bool = False) -> None:
        """A read failed: pause reads, and warn if this starts an outage (unless the caller ``said`` so)."""
        if not self._resume_at and not said:
            _log.warning(self._down, exc)
        self._resume_at = time.monotonic() + self._pause_s

    def worked(self) -> None:
        """A read worked: warn if that ends an outage."""
        if self._resume_at:
            _log.warning(self._back)
            self._resume_at = 0.0
