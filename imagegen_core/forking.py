"""Objects with threads of their own make them again in a child forked from this process.

A forked child has one thread, the one that called ``fork()``; the parent's other threads are gone, but the
objects that ran them still say they have them: the sync portal's loop "runs" in a thread that is no more
(``generate_sync`` and ``close`` waited for it for ever), the log writer's queue has no thread to drain it
(the child's rows were lost), a worker pool counts threads it does not have. A pre-fork server (gunicorn
``--preload``, ``multiprocessing`` with ``fork``) builds and warms up an ImageGen before it forks.

Each such object registers with :func:`renew_after_fork`; in the child, its :meth:`Renewable.renew_after_fork`
forgets its threads, their queues and the locks they may have held at the fork, so that it starts new ones on
first use. What the parent had queued or under way stays the parent's: the child neither does it again nor
waits for it. (``images.py`` and ``ids.py`` renew their module-wide state the same way.)

Some state a child cannot renew, because it is not ours: SQLite's in-process record of the file locks its
connections hold. Forked while the log writer's thread held SQLite's write lock, the child's copy said that lock
was taken for good (by a connection of a thread that is gone), and every write of the child met "database is
locked". Such an object registers with :func:`settle_before_fork` (a :class:`ForkGate` does): just before a
fork, its :meth:`Settling.settle_before_fork` lets what is under way finish and holds the next one back until
the fork is done; all of them together wait :data:`SETTLE_WAIT_S` at most, so that a fork never hangs on a
database.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Protocol

_log = logging.getLogger("imagegen")


class Renewable(Protocol):
    """An object whose threads a forked child must make again."""

    def renew_after_fork(self) -> None:
        """In a forked child, before anything else runs: forget the parent's threads (and what only they would
        have done), so that new ones start on first use."""


class Settling(Protocol):
    """An object whose threads must not be in the middle of something when the process forks."""

    def settle_before_fork(self, deadline: float) -> None:
        """Just before a fork: wait until ``deadline`` (``time.monotonic()``) at most for what is under way to end,
        and start nothing more until :meth:`resume_after_fork`."""

    def resume_after_fork(self) -> None:
        """Just after the fork, in the parent: go on (the child renews instead)."""


#: How long a fork waits at most for every :class:`Settling` object together: a commit takes milliseconds, and a
#: database that does not answer must not hang a pre-fork server (the child is then forked as it would have been).
SETTLE_WAIT_S = 2.0

_renewable: weakref.WeakSet[Renewable] = weakref.WeakSet()
_settling: weakref.WeakSet[Settling] = weakref.WeakSet()
#: Those settled for the fork under way (strongly: one collected meanwhile must still be resumed in the parent).
_settled: list[Settling] = []


def renew_after_fork(obj: Renewable) -> None:
    """Call ``obj.renew_after_fork()`` in every child forked from this process while ``obj`` lives."""
    _renewable.add(obj)


def settle_before_fork(obj: Settling) -> None:
    """Call ``obj.settle_before_fork()`` before, and ``obj.resume_after_fork()`` after, every fork of this process
    (in the parent) while ``obj`` lives."""
    _settling.add(obj)


def _settle_all() -> None:
    deadline = time.monotonic() + SETTLE_WAIT_S
    _settled[:] = list(_settling)
    for obj in _settled:
        obj.settle_before_fork(deadline)


def _resume_all() -> None:
    settled, _settled[:] = list(_settled), []
    for obj in settled:
        obj.resume_after_fork()


def _renew_all() -> None:
    _settled.clear()  # the parent resumes them; here they are renewed
    for obj in list(_renewable):
        obj.renew_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_settle_all, after_in_parent=_resume_all, after_in_child=_renew_all)


class ForkGate:
    """Passages (a database transaction, say) that a fork must not copy half-way: a fork waits for those under
    way to end (:data:`SETTLE_WAIT_S` at most) and new ones wait for the fork. A thread inside a passage may enter
    another (nested) without waiting."""

    def __init__(self, what: str) -> None:
        self.what = what  # what a passage is, for the warning of a fork that could not wait for one
        self._changed = threading.Condition()
        self._inside = 0
        self._forking = False
        self._depth = threading.local()
        renew_after_fork(self)
        settle_before_fork(self)

    @contextlib.contextmanager
    def passage(self) -> Iterator[None]:
        """Hold forks back while the body runs (waiting first for one about to happen)."""
        nested = getattr(self._depth, "n", 0)
        with self._changed:
            if not nested:
                self._changed.wait_for(lambda: not self._forking)
            self._inside += 1
        self._depth.n = nested + 1
        try:
            yield
        finally:
            self._depth.n = nested
            with self._changed:
                self._inside -= 1
                self._changed.notify_all()

    def settle_before_fork(self, deadline: float) -> None:
        """Before a fork: no new passage, and the ones under way end, until ``deadline`` at most."""
        own = getattr(self._depth, "n", 0)  # a fork from inside a passage cannot wait for that one
        with self._changed:
            self._forking = True
            ended = self._changed.wait_for(lambda: self._inside == own, timeout=max(0.0, deadline - time.monotonic()))
        if not ended:
            _log.warning("forking during %s: the child may find it unusable", self.what)

    def resume_after_fork(self) -> None:
        """After the fork, in the parent: passages go on."""
        with self._changed:
            self._forking = False
            self._changed.notify_all()

    def renew_after_fork(self) -> None:
        """In a forked child: the passages under way at the fork were other threads', gone; nothing waits."""
        self._changed = threading.Condition()
        self._inside = 0
        self._forking = False
        self._depth = threading.local()
