"""The one sync-over-async helper: run a coroutine to completion from synchronous code, including
inside a thread that already runs an event loop (Jupyter), on a private loop in a private thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from .errors import ImageGenError
from .forking import renew_after_fork

T = TypeVar("T")

#: How long an interrupted :meth:`SyncPortal.run` waits for the cancelled coroutine's clean-up.
_CANCEL_WAIT_S = 5.0


class SyncPortal:
    """A private event loop in a daemon thread. Objects bound to a loop (HTTP clients) that are used
    through the portal stay on that one loop for their whole life."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: A forked child's copy of the parent's loop: kept, never used (see :meth:`renew_after_fork`).
        self._parents_loop: asyncio.AbstractEventLoop | None = None
        renew_after_fork(self)

    def renew_after_fork(self) -> None:
        """In a forked child: the loop's thread is gone, so a new loop and thread start on first use. The
        parent's loop is kept, unused: it still says it runs, so it cannot be closed, and collected it would
        warn of an unclosed loop."""
        self._parents_loop = self._loop or self._parents_loop
        self._loop, self._thread = None, None
        self._lock = threading.Lock()  # may have been held by a thread that is gone

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=_serve, args=(loop,), name="imagegen-sync", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the portal's loop and wait for its result (exceptions propagate).

        When the waiting thread is interrupted (Ctrl-C, or SIGTERM turned into KeyboardInterrupt), the
        coroutine is cancelled and given a moment to finish its clean-up before the interruption propagates:
        abandoned on a loop that is about to stop, a generate would leave its log row ``running`` forever
        instead of ``cancelled``.

        Called on the portal's own thread (from a callback of another call it runs: ``on_event``, ``on_update``)
        it raises ImageGenError at once: that thread would wait for its own loop, which it blocks, for ever.
        """
        if self.is_current_thread():
            coro.close()  # never started: no "coroutine was never awaited" warning on top of the error
            raise ImageGenError(
                "a blocking *_sync call cannot run inside a callback of another one (on_event, on_update): it "
                "would wait for itself for ever; there, start it with "
                "asyncio.get_running_loop().create_task(gen.generate(...)), or use `await gen.generate(...)` in "
                "async code"
            )
        finished = threading.Event()

        async def guarded() -> T:
            try:
                return await coro
            finally:
                finished.set()

        future = asyncio.run_coroutine_threadsafe(guarded(), self._ensure())
        try:
            return future.result()
        except BaseException:
            if not future.done():
                future.cancel()  # cancels the task on the portal's loop
                finished.wait(_CANCEL_WAIT_S)
            raise

    def is_current_thread(self) -> bool:
        """Whether the calling thread is the portal's own: a callback (``on_event``, ``on_update``) of a call it
        runs, which must not wait for the portal's loop."""
        return self._thread is not None and threading.current_thread() is self._thread

    def runs(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether ``loop`` is the portal's."""
        return loop is self._loop

    @property
    def started(self) -> bool:
        """Whether the portal's loop exists."""
        return self._loop is not None

    def close_soon(self) -> None:
        """Stop the loop without waiting for it, from a finaliser (which any thread may run, this one included):
        its async generators are finalised first (each HTTP client's closer, see :mod:`.http_clients`) and its
        tasks given :data:`_CANCEL_WAIT_S` to end (a client's closing, scheduled when the garbage collector took
        its closer), then the thread closes the loop and ends."""
        loop, self._loop, self._thread = self._loop, None, None
        if loop is None:
            return

        async def wind_down() -> None:
            try:
                await asyncio.sleep(0)  # what was scheduled with this, from the same collection, starts first
                await loop.shutdown_asyncgens()
                others = asyncio.all_tasks() - {asyncio.current_task()}
                if others:
                    await asyncio.wait(others, timeout=_CANCEL_WAIT_S)
            finally:
                loop.stop()

        with contextlib.suppress(RuntimeError):  # closed already
            asyncio.run_coroutine_threadsafe(wind_down(), loop)

    def close(self) -> None:
        """Stop the loop and join its thread; idempotent."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            loop.close()


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    """The portal thread: run ``loop`` until stopped, then close it (:meth:`SyncPortal.close_soon` waits for
    nobody to do it; closing it again in :meth:`SyncPortal.close` does nothing)."""
    loop.run_forever()
    loop.close()
