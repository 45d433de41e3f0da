"""``serve --workers N``: a worker that dies is replaced, and a replacement that cannot start (its log database
away: a PostgreSQL outage) is tried again later while the other workers serve. QA (an SRE's drill): one worker
killed during a database outage stopped the whole server, the healthy worker with it, because uvicorn's
supervisor takes any failure to start for a broken app. A worker of the first start that fails still stops it.

The supervisor's policy is driven here with stand-in processes (a real outage and ``kill -9`` is the QA run's),
on a clock the test moves."""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import multiprocess
from uvicorn.supervisors.multiprocess import SIGNALS

from imagegen_core.api import processes
from imagegen_core.api.processes import RESTART_RETRY_FIRST_S, RESTART_RETRY_MAX_S, Supervisor

KILLED = -9


class StandIn:
    """A worker process: alive until the test ends it with an exit code."""

    started: ClassVar[list[StandIn]] = []

    def __init__(self, config: Any, sockets: Any) -> None:
        self.exitcode: int | None = None
        self.pid = 1000 + len(StandIn.started)

    def start(self) -> None:
        StandIn.started.append(self)

    def is_alive(self, timeout: float = 5) -> bool:
        return self.exitcode is None and not self.frozen

    #: Running but answering no health check (SIGSTOP, a machine frozen): uvicorn's ``is_alive`` is then False.
    frozen = False

    def end(self, exitcode: int) -> None:
        self.exitcode = exitcode

    def kill(self) -> None:
        self.exitcode = KILLED if self.exitcode is None else self.exitcode

    def join(self) -> None:
        pass

    def terminate(self) -> None:
        pass

    def wait_until_ready(self, timeout: float, should_exit: Any = None) -> bool:
        return self.exitcode is None  # started and serving (uvicorn's restart_all asks)


@pytest.fixture
def supervisor(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Supervisor, list[float]]]:
    """A supervisor of two stand-in workers, and the clock it reads (seconds; move it by assigning [0])."""
    StandIn.started = []
    clock = [100.0]
    monkeypatch.setattr(processes, "Process", StandIn)
    monkeypatch.setattr(multiprocess, "Process", StandIn)  # uvicorn's first start and its restart_all
    monkeypatch.setattr(processes.time, "monotonic", lambda: clock[0])
    handlers = {sig: signal.getsignal(sig) for sig in SIGNALS}
    try:
        config = uvicorn.Config("imagegen_core.api:create_app", workers=2)
        with socket.socket() as sock:
            supervisor = Supervisor(config, sockets=[sock])
            supervisor.init_processes()
            yield supervisor, clock
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def test_a_replacement_that_cannot_start_is_tried_again_later_while_the_other_worker_serves(
    supervisor: tuple[Supervisor, list[float]],
) -> None:
    sup, clock = supervisor
    first, healthy = sup.processes
    first.end(KILLED)  # kill -9 (the OOM killer) during the outage
    sup.keep_subprocess_alive()
    replacement = sup.processes[0]
    assert replacement is not first and replacement in StandIn.started and sup.processes[1] is healthy

    waits = []
    for _ in range(7):  # the database stays away: each replacement fails to start
        sup.processes[0].end(STARTUP_FAILURE)
        before = len(StandIn.started)
        sup.keep_subprocess_alive()
        assert not sup.should_exit.is_set(), "the healthy worker was stopped with the failing one"
        assert sup.processes[1] is healthy and healthy.exitcode is None
        waited = 0.0
        while len(StandIn.started) == before:  # nothing starts before its wait is over
            clock[0] += 0.5
            waited += 0.5
            sup.keep_subprocess_alive()
        waits.append(waited)
    assert waits == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert (RESTART_RETRY_FIRST_S, RESTART_RETRY_MAX_S) == (2.0, 60.0)

    # The database is back: the replacement starts and serves; when it dies later, it is replaced at once, and
    # a failure to start after that begins again with the first wait.
    serving = sup.processes[0]
    sup.keep_subprocess_alive()
    assert sup.processes[0] is serving
    serving.end(1)
    sup.keep_subprocess_alive()
    assert sup.processes[0] is not serving and sup.processes[0] is StandIn.started[-1]
    sup.processes[0].end(STARTUP_FAILURE)
    sup.keep_subprocess_alive()
    clock[0] += RESTART_RETRY_FIRST_S
    sup.keep_subprocess_alive()
    assert sup.processes[0].exitcode is None and not sup.should_exit.is_set()


def test_a_worker_of_the_first_start_that_fails_to_start_still_stops_the_server(
    supervisor: tuple[Supervisor, list[float]],
) -> None:
    """As uvicorn has it: the app itself is broken (every start would fail the same way)."""
    sup, _ = supervisor
    sup.processes[1].end(STARTUP_FAILURE)
    sup.keep_subprocess_alive()
    assert sup.should_exit.is_set()


def test_a_slot_waiting_to_start_again_gets_its_worker_from_a_restart_and_no_second_one(
    supervisor: tuple[Supervisor, list[float]],
) -> None:
    """SIGHUP (uvicorn's ``restart_all``) while a slot waits: the restart's worker takes the slot, and the wait
    does not start one more beside it later."""
    sup, clock = supervisor
    sup.processes[0].end(KILLED)
    sup.keep_subprocess_alive()
    sup.processes[0].end(STARTUP_FAILURE)
    sup.keep_subprocess_alive()  # slot 0 now waits
    sup.restart_all()  # the database is back: each slot gets a new worker that serves
    restarted = list(sup.processes)
    assert all(process.exitcode is None for process in restarted)
    clock[0] += RESTART_RETRY_MAX_S
    sup.keep_subprocess_alive()
    assert sup.processes == restarted


def test_a_worker_that_stops_answering_its_health_check_is_killed_and_replaced_with_a_warning_saying_so(
    supervisor: tuple[Supervisor, list[float]], caplog: pytest.LogCaptureFixture
) -> None:
    """QA chaos (SIGSTOP of one worker of two under load): the supervisor killed it after 5 s, its requests in
    flight got no answer, and the server's log said only "Child process [N] died", as for a crash."""
    sup, _ = supervisor
    frozen, healthy = sup.processes
    frozen.frozen = True
    with caplog.at_level(logging.INFO, logger="uvicorn.error"):
        sup.keep_subprocess_alive()
    assert frozen.exitcode == KILLED and sup.processes[0] is StandIn.started[-1] and sup.processes[1] is healthy
    (line,) = [r for r in caplog.records if str(frozen.pid) in r.getMessage()]
    assert line.levelno == logging.WARNING
    assert line.getMessage().startswith(f"Child process [{frozen.pid}] did not answer its health check within 5 s")
    assert "died" not in line.getMessage()


def test_a_worker_that_ended_by_itself_is_still_said_to_have_died(
    supervisor: tuple[Supervisor, list[float]], caplog: pytest.LogCaptureFixture
) -> None:
    sup, _ = supervisor
    dead = sup.processes[0]
    dead.end(KILLED)
    with caplog.at_level(logging.INFO, logger="uvicorn.error"):
        sup.keep_subprocess_alive()
    assert [r.getMessage() for r in caplog.records if str(dead.pid) in r.getMessage()] == [
        f"Child process [{dead.pid}] died"
    ]
