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
locked". Such an object also registers with :func:`settle_before_fork`: just before a fork, its
:meth:`Settling.settle_before_fork` lets what is under way finish and holds the next one back until the fork is
done; all of them together wait :data:`SETTLE_WAIT_S` at most, so that a fork never hangs on a database.
"""

from __future__ import annotations

import os
import time
import weakref
from typing import Protocol


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
