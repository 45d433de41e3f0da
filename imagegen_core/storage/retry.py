"""Uploading the spool again without an operator: after the store refused an image (kept in the spool), a
long-running process (``imagegen serve``, the console) tries :meth:`Spool.flush` in the background, after
pauses that grow from :attr:`SpoolRetrier.first_pause_s` to :attr:`SpoolRetrier.max_pause_s`, until the spool
is empty. A process that starts over a spool an earlier one left (a restart during a store outage) tries at
once, then the same way. The answers given meanwhile point at keys that then serve (the default image's included), and
paid-for images reach the store once it is back. ``imagegen storage flush`` still does the same at once.

Several processes may retry at the same time: the spool's flush lock lets one flush at a time, and a
process that finds it taken simply tries again after its next pause.

A retrier uploads only the images kept for its own store (see the spool's destinations): those kept for another
store wait for a process configured for it, and neither keep this retry going nor count as the store refusing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from ..errors import StorageError
from .base import Store
from .spool import Spool

_log = logging.getLogger("imagegen.storage")


class SpoolRetrier:
    """One process's background retry of the spool (see the module docstring). :meth:`wake` after keeping an
    image; :meth:`aclose` on shutdown. ``on_moved`` hears the keys each flush uploaded."""

    #: The first pause after an image was kept: the store may be back by then (a restart, a network blip).
    first_pause_s: float = 30.0
    #: Pauses double up to this while the store keeps refusing.
    max_pause_s: float = 600.0

    def __init__(
        self,
        spool: Spool,
        store: Store,
        *,
        on_moved: Callable[[list[str]], None] = lambda keys: None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.spool = spool
        self.store = store
        self._on_moved = on_moved
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Whether a retry is scheduled or under way."""
        return self._task is not None and not self._task.done()

    def wake(self, *, now: bool = False) -> None:
        """An image was just kept in the spool: make sure a retry is scheduled (on the running loop). ``now``:
        the first try without the first pause (a process starting over a spool an earlier one left)."""
        if not self.running:
            first = 0.0 if now else self.first_pause_s
            self._task = asyncio.get_running_loop().create_task(self._retry(first), name="imagegen-spool-retry")

    async def aclose(self) -> None:
        """Stop retrying (the spool stays as it is, for the next process or ``imagegen storage flush``). Only
        a retry on the running loop is awaited; one on another loop is cancelled there."""
        task, self._task = self._task, None
        if task is None or task.done():
            return
        if task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        else:
            with contextlib.suppress(RuntimeError):  # that loop is closed already, and the task with it
                task.get_loop().call_soon_threadsafe(task.cancel)

    async def _retry(self, pause: float) -> None:
        while True:
            await self._sleep(pause)
            pause = min(max(pause * 2, self.first_pause_s), self.max_pause_s)  # after a first try at once: 30 s
            try:
                report = await self.spool.flush(self.store)
            except StorageError as exc:  # another process is flushing, or the spool folder is unreadable
                _log.info("spool retry postponed: %s", exc)
                continue
            for line in report.set_aside.values():  # the disk's fault, not the store's: one line each
                _log.warning("spool: %s", line)
            if report.moved:
                self._on_moved(report.moved)
                _log.info("spool: %d kept image(s) uploaded to the store", len(report.moved))
            if report.ok:
                if not await asyncio.to_thread(self.spool.entries, store=self.store):  # none kept meanwhile either
                    return
                pause = self.first_pause_s  # kept during the flush: the store works, try again soon
            else:
                first = report.failed[0] if report.failed else ""
                _log.warning(
                    "spool: the store still refuses kept images (%d failed, %d left for later; %s); retrying in %g s",
                    len(report.failed),
                    report.skipped,
                    report.errors.get(first, ""),
                    pause,
                )
