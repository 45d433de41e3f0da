"""``imagegen serve --workers N``: uvicorn's supervisor and its worker processes, stopped as one process is.

uvicorn's server catches SIGINT and SIGTERM while it serves, shuts down, then raises each again (the last one
first) under the handler from before it started. In a worker process that handler was SIGTERM's default, and
Ctrl+C in a terminal reaches a worker twice over: SIGINT from the terminal, then SIGTERM from the supervisor.
So the SIGTERM, raised first, killed the worker on the spot, before its event loop cancelled what a forced
shutdown (Ctrl+C twice, or a supervisor's stop then Ctrl+C) had left running: the requests in flight got no
answer and their log rows stayed ``running``, in every worker (found reading uvicorn, then reproduced).
:class:`WorkerConfig` puts a handler in place in each worker before uvicorn looks; :class:`Supervisor` ends
the parent as the signal it got says, as one server process does (Ctrl+C: exit status 130; SIGTERM: by
SIGTERM).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess
from uvicorn.supervisors.multiprocess import SIGNALS, Process

_log = logging.getLogger("uvicorn.error")  # where uvicorn's supervisor says what became of its workers

#: A worker started again after a death that fails to start is tried again after this long, doubled at each
#: failure in a row up to :data:`RESTART_RETRY_MAX_S`, while the other workers serve.
RESTART_RETRY_FIRST_S = 2.0
RESTART_RETRY_MAX_S = 60.0


class WorkerStopped(KeyboardInterrupt):
    """A stop signal handed back to a worker by its uvicorn server. A KeyboardInterrupt, which uvicorn's worker
    entry point swallows once the event loop has cancelled and finished every task left (no traceback)."""


def _stop_worker(signum: int, frame: FrameType | None) -> None:
    # The first stop signal unwinds the worker. The supervisor's SIGTERM, which can come after a Ctrl+C the
    # worker got first, must not cut short the cancelled requests' 503s and rows, so later ones are ignored
    # (a further Ctrl+C still interrupts: the user insists).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise WorkerStopped


class QuietStopHook:
    """``sys.unraisablehook`` of a worker: a WorkerStopped that met a weakref or ``__del__`` callback is no error.

    A signal handler runs wherever the main thread is, and an exception raised inside such a callback cannot
    propagate: Python printed "Exception ignored in: <function WeakSet...>" and WorkerStopped's traceback into
    the server's JSON log (a CI run, ``serve --workers 2`` stopped by SIGTERM then Ctrl+C). The worker's handler
    runs once uvicorn hands the signal back, when its server has already shut down and ``serve`` is returning:
    the event loop's runner then cancels what is left (the 503s, the ``cancelled`` rows), raised or not.
    Anything else goes to the hook that was in place before (``before``)."""

    def __init__(self, before: Callable[[Any], object]) -> None:
        self.before = before

    def __call__(self, unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, WorkerStopped):
            _log.debug("stop signal met inside %r: the worker stops as its server returns", unraisable.object)
            return
        self.before(unraisable)


class WorkerConfig(uvicorn.Config):
    """uvicorn's config for the worker processes. uvicorn calls :meth:`configure_logging` first thing in each
    worker, before its server saves the signal handlers it will hand the signals back to: the one hook that
    runs there in time."""

    def configure_logging(self) -> None:
        """uvicorn's logging set-up; in a worker process, also :func:`_stop_worker` for SIGINT and SIGTERM (and
        :class:`QuietStopHook` for the one place its exception cannot go)."""
        super().configure_logging()
        if multiprocessing.parent_process() is not None:  # a worker (the parent calls this when it builds us)
            signal.signal(signal.SIGINT, _stop_worker)
            signal.signal(signal.SIGTERM, _stop_worker)
            sys.unraisablehook = QuietStopHook(sys.unraisablehook)


class Supervisor(Multiprocess):
    """uvicorn's supervisor of the worker processes, which ends the parent as the first stop signal it got
    would end a single server process. uvicorn's own left its signal handlers in place and returned: exit
    status 0 whatever stopped it."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        self._handlers_before = {sig: signal.getsignal(sig) for sig in SIGNALS}
        self.stopped_by: signal.Signals | None = None
        super().__init__(config, sockets)
        for sig in (signal.SIGINT, signal.SIGTERM):  # over uvicorn's, which only queue the signal
            signal.signal(sig, self._on_stop_signal)

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        """Queue the signal for uvicorn's loop, as its own handler does. A stop signal while a stop is under way
        forces it: Ctrl+C goes to every worker, which then cancels its requests in flight (503) rather than
        wait for them. QA: sent to this process alone (docker stop's second signal, ``systemctl kill
        --kill-who=main``, a script's ``kill PID``) it forced nothing, since uvicorn, stopping, no longer looks
        at its queue; only a terminal's Ctrl+C, which reaches every process of the group, did."""
        if self.should_exit.is_set() or self.signal_queue:
            for process in list(self.processes):
                if process.pid is not None and process.exitcode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGINT)
        self.signal_queue.append(signum)

    def init_processes(self) -> None:
        """Start the workers (uvicorn); none is a replacement yet."""
        #: Slots whose worker is a replacement of one that died (a failure to start is then no broken app).
        self._replacements: set[int] = set()
        #: Slots waiting to start a replacement again, with when (monotonic).
        self._retry_at: dict[int, float] = {}
        #: Per slot, the last wait before starting its replacement again (kept until one starts, then dies).
        self._waited: dict[int, float] = {}
        super().init_processes()

    def keep_subprocess_alive(self) -> None:
        """uvicorn's: a worker that died is replaced. Except that a replacement that fails to start (the log
        database away: a PostgreSQL outage) is tried again later, after :data:`RESTART_RETRY_FIRST_S` doubling to
        :data:`RESTART_RETRY_MAX_S`, while the other workers go on serving. uvicorn stopped the whole server
        instead, the healthy worker with it (QA: one worker killed during a database outage took the service
        down, where the other one had answered through the outage). A worker of the first start that fails
        to start still stops the server, as uvicorn has it: the app itself is broken then."""
        if self.should_exit.is_set():
            return
        for idx, process in enumerate(self.processes):
            when = self._retry_at.get(idx)
            if when is not None:
                if time.monotonic() >= when:
                    self._replace(idx)
                continue
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            hung = process.exitcode is None  # running, but its health check went unanswered
            process.kill()  # hung, or already ended
            process.join()
            if process.exitcode == STARTUP_FAILURE and idx not in self._replacements:
                _log.error(f"Child process [{process.pid}] failed to start, stopping the parent process.")
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            if process.exitcode == STARTUP_FAILURE:
                wait = min(RESTART_RETRY_MAX_S, 2 * self._waited.get(idx, RESTART_RETRY_FIRST_S / 2))
                self._waited[idx] = wait
                self._retry_at[idx] = time.monotonic() + wait
                _log.error(
                    f"Child process [{process.pid}] failed to start (see its error above); the other workers serve"
                    f" on, and it is started again in {wait:g} s"
                )
                continue
            self._waited.pop(idx, None)  # it had started: a failure to start later begins with the first wait
            if hung:
                self._say_hung_worker_killed(process.pid)
            else:
                _log.info(f"Child process [{process.pid}] died")
            self._replace(idx)

    def _say_hung_worker_killed(self, pid: int | None) -> None:
        """One warning for a worker killed because it stopped answering its health check. QA chaos (SIGSTOP of
        one worker of two under load): uvicorn said "Child process [N] died", which reads as a crash of the
        worker's own, while the supervisor had killed it, and its requests in flight got no answer."""
        _log.warning(
            f"Child process [{pid}] did not answer its health check within"
            f" {self.config.timeout_worker_healthcheck:g} s (stopped, or frozen by the machine): killed it;"
            " its requests in flight got no answer, and their log rows stay running until a server closes them"
        )

    def _replace(self, idx: int) -> None:
        """Start a new worker in slot ``idx`` (uvicorn's restart), marked a replacement."""
        self._retry_at.pop(idx, None)
        process = Process(self.config, self.sockets)
        process.start()
        self.processes[idx] = process
        self._replacements.add(idx)

    def restart_all(self) -> None:
        """uvicorn's (SIGHUP: each worker replaced once its replacement serves); then no slot waits any more: one
        still without a worker is found so by the next look, and tried again later."""
        super().restart_all()
        self._retry_at.clear()

    def handle_int(self) -> None:
        """Ctrl+C: stop every worker (uvicorn), remembered."""
        self.stopped_by = self.stopped_by or signal.SIGINT
        super().handle_int()

    def handle_term(self) -> None:
        """A supervisor's stop (SIGTERM): stop every worker (uvicorn), remembered."""
        self.stopped_by = self.stopped_by or signal.SIGTERM
        super().handle_term()

    def run(self) -> None:
        """Supervise until stopped (uvicorn), then put the signal handlers from before back, and raise
        KeyboardInterrupt after Ctrl+C, or SIGTERM again after SIGTERM (under the handler from before)."""
        try:
            super().run()
        finally:
            for sig, handler in self._handlers_before.items():
                signal.signal(sig, handler)
        if self.stopped_by == signal.SIGINT:
            raise KeyboardInterrupt
        if self.stopped_by == signal.SIGTERM:
            signal.raise_signal(signal.SIGTERM)
