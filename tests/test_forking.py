"""fork() while an ImageGen's threads are busy: the child gets a log database (and a store) it can use."""

from __future__ import annotations

import gc
import logging
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from imagegen_core import ImageGen, forking
from imagegen_core.forking import ForkGate
from imagegen_core.log import LogDB, recent_requests
from tests.children import child_exit_code, generate_in_child

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")

#: How long the parent's slow write holds its transaction open: a commit that lasts (a slow disk), far longer
#: than a fork takes, far shorter than the writer's wait for it before a fork.
SLOW_COMMIT_S = 0.5


def _slow_transaction(gen: ImageGen, inside: threading.Event, done: threading.Event) -> None:
    """On the log writer's thread: a write transaction (SQLite's one write lock) that lasts :data:`SLOW_COMMIT_S`,
    or less if ``done`` is set."""
    with gen.log.transaction():
        inside.set()
        done.wait(SLOW_COMMIT_S)


def test_a_fork_while_the_log_writer_commits_leaves_the_child_a_log_it_can_write(settings_factory: Any) -> None:
    """The flaky embedding test, made certain: forked while the parent's log writer held SQLite's write lock,
    the child's copy of SQLite's in-process lock records said the lock was taken for ever (it belonged to a thread
    that is gone); every write of the child met "database is locked", and its rows ended in the spill, not the
    log. A fork now lets the write under way commit first (waiting a bounded time)."""
    url = f"sqlite:///{settings_factory().home / 'log.db'}"
    settings = settings_factory(IMAGEGEN_DATABASE_URL=url)
    gen = ImageGen.from_settings(settings)
    assert gen.generate_sync({"prompt": "parent", "width": 64, "height": 64}).success  # the writer's connection
    inside, done = threading.Event(), threading.Event()
    slow = gen._writer.submit(_slow_transaction, gen, inside, done)
    assert inside.wait(30)
    pid = os.fork()
    if pid == 0:
        generate_in_child(gen)
    done.set()
    slow.result(30)
    code = child_exit_code(pid, timeout_s=60, what="the forked child hung")
    gen.close()
    assert code == 0
    # Read with a LogDB alone: an ImageGen would write back what the child kept in its spill, hiding the loss.
    with LogDB.from_url(url) as log:
        rows = sorted((row["prompt"], row["status"]) for row in recent_requests(log, limit=10))
    assert rows == [("child", "success"), ("parent", "success")]


def _open_files(path: Path) -> int:
    """How many of this process's file descriptors are open on ``path``."""
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == str(path))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_a_child_leaves_the_sqlite_connections_it_inherited_open(settings_factory: Any) -> None:
    """Closing an inherited SQLite connection in a child undoes file locks the child does not hold (POSIX locks
    are per process: it can release those of the child's own connections) and may checkpoint the WAL under the
    parent; the child keeps them open, unused, instead of letting the garbage collector close them."""
    url = f"sqlite:///{settings_factory().home / 'log.db'}"
    gen = ImageGen.from_settings(settings_factory(IMAGEGEN_DATABASE_URL=url))
    assert gen.generate_sync({"prompt": "parent", "width": 64, "height": 64}).success
    gen._writer.flush_sync()  # the writer thread's connection is open
    db_file = Path(url.removeprefix("sqlite:///")).resolve()
    inherited = _open_files(db_file)
    assert inherited >= 1
    pid = os.fork()
    if pid == 0:
        gc.collect()
        os._exit(0 if _open_files(db_file) == inherited else 3)
    code = child_exit_code(pid, timeout_s=60, what="the forked child hung")
    gen.close()
    assert code == 0


def test_a_fork_waits_a_bounded_time_for_a_write_that_does_not_end(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A database that does not answer must not hang a pre-fork server: past :data:`forking.SETTLE_WAIT_S` the
    fork goes ahead, with a warning naming what it could not wait for."""
    monkeypatch.setattr(forking, "SETTLE_WAIT_S", 0.2)
    gate = ForkGate("a write that never ends")
    inside, done = threading.Event(), threading.Event()

    def stuck() -> None:
        with gate.passage():
            inside.set()
            done.wait(60)

    thread = threading.Thread(target=stuck)
    thread.start()
    assert inside.wait(30)
    with caplog.at_level(logging.WARNING, logger="imagegen"):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
    done.set()
    thread.join(30)
    assert child_exit_code(pid, timeout_s=60, what="the forked child hung") == 0
    assert "forking during a write that never ends: the child may find it unusable" in caplog.messages
    with gate.passage():  # the parent's writes go on after the fork
        pass
