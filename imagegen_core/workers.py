"""Worker threads for blocking calls that may hang for minutes, kept apart from the event loop's default
executor: the R2 store's boto3 calls, and the log database reads a request waits for (a PostgreSQL server that
hangs, or a network that drops packets, holds a read until TCP gives up).

Why not ``asyncio.to_thread``: its executor has ``min(32, CPUs + 4)`` threads (6 on a 2-core machine), and
boto3 may hold one for minutes when a server accepts connections but never answers (read timeout × attempts).
Six such uploads used to freeze every other ``to_thread`` call of the process — image normalisation, the
spool, the config reload — so answers came minutes after their deadline. And ``asyncio.run`` (every CLI
command) waits for that executor's threads when it ends, so a command that had answered stayed alive for
another two minutes. These threads are daemons: a call abandoned by its caller (the deadline passed; the
image is in the spool by then) neither delays anyone else nor keeps the process alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

from .forking import renew_after_fork

T = TypeVar("T")

_Job = tuple["Future[object]", Callable[[], object]] | None  # None: the thread that takes it ends


class DaemonWorkers:
    """At most ``max_threads`` daemon threads, started as calls need them, running blocking calls in order."""

    def __init__(self, max_threads: int, *, name: str) -> None:
        self.max_threads = max_threads
        self.name = name
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        #: Calls submitted and not finished (queued or running), and threads started: a call is only ever
        #: queued without a new thread when every thread has one to take (pending <= threads) or at the cap.
        self._pending = 0
        self._threads = 0
        self._closed = False
        renew_after_fork(self)

    def renew_after_fork(self) -> None:
        """In a forked child: none of the threads counted exists, so new ones start with the next calls (they
        waited for ever). The parent's queued calls are the parent's."""
        self._jobs = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = self._threads = 0

    @property
    def threads(self) -> int:
        """How many worker threads were started (they idle until the process ends)."""
        return self._threads

    def submit(self, call: Callable[[], T]) -> Future[T]:
        """Run ``call`` in a worker thread; a future cancelled before the call starts skips it."""
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name}: the workers are closed")
            self._jobs.put((future, call))  # type: ignore[arg-type]  # the queue is heterogeneous
            self._pending += 1
            if self._pending > self._threads and self._threads < self.max_threads:
                self._threads += 1
                thread = threading.Thread(target=self._work, name=f"{self.name}-{self._threads}", daemon=True)
                thread.start()
        return future

    async def run(self, call: Callable[[], T]) -> T:
        """Await ``call`` run in a worker thread. Cancelling the await abandons the call (it still ends in its
        thread, unseen) instead of waiting for it."""
        return await outcome(self.submit(call))

    def close(self) -> None:
        """Let every thread end once the calls queued before have run; idempotent. Threads are not waited for
        (one may be stuck in a call that hangs): an owner with many short lives leaves no idle threads."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for _ in range(self._threads):
                self._jobs.put(None)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self._run(*job)
            # Nothing of the call may outlive it here: an idle thread waiting with the last call (a closure over
            # its owner) in its locals kept that owner alive, so it was never collected nor its threads ended.
            del job

    def _run(self, future: Future[object], call: Callable[[], object]) -> None:
        try:
            if future.set_running_or_notify_cancel():
                try:
                    result = call()
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
        finally:
            with self._lock:
                self._pending -= 1


async def outcome(future: Future[T]) -> T:
    """Await a worker's ``future``. Cancelling the await abandons its call: never started if it had not, else
    it ends in its thread unseen. Unlike ``asyncio.wrap_future``, a call that ends after its loop was closed
    (a hung read that answers at last) is dropped quietly, not logged as a failed callback."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[T] = loop.create_future()

    def settle(done: Future[T]) -> None:  # in the worker thread
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_copy_outcome, done, waiter)

    future.add_done_callback(settle)
    try:
        return await waiter
    except asyncio.CancelledError:
        future.cancel()  # not started yet: never start it
        raise


def usable_cores() -> int:
    """How many CPU cores this process may run on (its affinity mask, where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _copy_outcome(source: Future[T], target: asyncio.Future[T]) -> None:
    if target.done():  # the awaiting task was cancelled meanwhile
        return
    if source.cancelled():
        target.cancel()
        return
    exc = source.exception()
    if exc is not None:
        target.set_exception(exc)
    else:
        target.set_result(source.result())
