"""A ``serve --workers N`` worker ends when its supervisor dies.

uvicorn's supervisor stops its workers when it is told to (SIGTERM, SIGINT), but a supervisor killed outright
(``kill -9``, the OOM killer) tells no one: its workers were re-parented to init and kept serving on the
inherited socket, so a restart failed with "Address already in use" until someone found and killed them.

Each worker therefore watches its supervisor and, when it is gone, sends itself SIGTERM: the same graceful
shutdown as a normal stop (no new connections, requests in flight answered, the log writer drained, rows
completed). Two mechanisms, because each covers what the other cannot:

- Linux ``prctl(PR_SET_PDEATHSIG, SIGTERM)``: the kernel signals the worker as soon as the *thread* that
  spawned it ends. uvicorn starts (and restarts) workers from its supervisor's main thread only
  (``Multiprocess.run`` and the signal handlers it runs there), whose end is the supervisor's end.
- Everywhere (and for a supervisor that died before the ``prctl``): a daemon thread blocks on multiprocessing's
  parent sentinel, a pipe only the supervisor holds open (a process handle on Windows), which becomes ready
  when the supervisor ends. No polling, no cost while it lives.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
from multiprocessing.process import BaseProcess

_log = logging.getLogger("imagegen.api")

#: ``PR_SET_PDEATHSIG`` from ``<linux/prctl.h>``.
PR_SET_PDEATHSIG = 1


def exit_with_supervisor() -> bool:
    """In a multiprocessing worker: end it gracefully (SIGTERM to itself) when its parent process ends. Does
    nothing in a process that no multiprocessing parent started (``serve`` with one worker, plain uvicorn).
    True when a watch was set up."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return False
    if sys.platform.startswith("linux"):
        _signal_on_parent_death()
    thread = threading.Thread(target=_watch, args=(parent,), name="imagegen-supervisor-watch", daemon=True)
    thread.start()
    return True


def _signal_on_parent_death() -> None:
    """Ask the kernel for SIGTERM when the spawning thread ends; a failure leaves the sentinel watch alone."""
    try:
        # The process's own symbols, libc's among them: ctypes.util.find_library would run ldconfig.
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # no libc or no prctl (an unusual libc): the watch thread still works
        pass


def _watch(parent: BaseProcess) -> None:
    """Wait for the parent to end (a ready sentinel), then stop this worker the way a normal stop does."""
    parent.join()
    _log.warning("the server's supervisor process %s ended; this worker stops gracefully", parent.pid)
    _terminate_self()


def _terminate_self() -> None:
    # uvicorn's handler turns SIGTERM into its graceful shutdown. On Windows os.kill(SIGTERM) would be
    # TerminateProcess (no shutdown at all); raise_signal runs the Python handler instead.
    if os.name == "nt":
        signal.raise_signal(signal.SIGTERM)
    else:
        os.kill(os.getpid(), signal.SIGTERM)
