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
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class Renewable(Protocol):
    """An object whose threads a forked child must make again."""

    def renew_after_fork(self) -> None:
        """In a forked child, before anything else runs: forget the parent's threads (and what only they would
        have done), so that new ones start on first use."""


_renewable: weakref.WeakSet[Renewable] = weakref.WeakSet()


def renew_after_fork(obj: Renewable) -> None:
    """Call ``obj.renew_after_fork()`` in every child forked from this process while ``obj`` lives."""
    _renewable.add(obj)


def _renew_all() -> None:
    for obj in list(_renewable):
        obj.renew_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_all)
