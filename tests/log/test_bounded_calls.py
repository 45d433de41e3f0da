"""BoundedCalls, under every bounded log read: a call that does not answer in time is given up on (and keeps
its thread), its owner knows one is overdue until it ends, and a cancelled await does not wait for it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from imagegen_core.errors import LogDatabaseError
from imagegen_core.log.outage import BoundedCalls, ReadPause


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` for up to a second (a worker thread's ending reaches the caller a moment later)."""
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("still not true after 1 s")


async def test_a_call_that_outlives_its_wait_raises_and_is_overdue_until_it_ends() -> None:
    calls = BoundedCalls(wait_s=0.2, threads=2, name="test-bounded")
    release = threading.Event()
    assert await calls.run(lambda: 7) == 7
    started = time.monotonic()
    with pytest.raises(LogDatabaseError, match=r"did not answer within 0\.2 s"):
        await calls.run(release.wait)
    assert 0.15 <= time.monotonic() - started < 2.0
    assert calls.overdue
    started = time.monotonic()
    with pytest.raises(LogDatabaseError, match="has not answered an earlier call yet"):
        await calls.run(lambda: 9)  # refused at once: it would only queue behind the hung one
    assert time.monotonic() - started < 0.1
    release.set()
    await until(lambda: not calls.overdue)
    assert await calls.run(lambda: 8, wait_s=1.0) == 8
    calls.close()


async def test_a_cancelled_await_returns_at_once_and_the_call_is_not_overdue() -> None:
    """A race's losing lane is cancelled while its breaker read runs: it must end now (and the cancellation
    must not be lost, as ``asyncio.wait_for`` on Python 3.11 loses one that meets a result)."""
    calls = BoundedCalls(wait_s=5.0, threads=1, name="test-bounded")
    release = threading.Event()
    task = asyncio.create_task(calls.run(release.wait))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not calls.overdue
    release.set()
    calls.close()


async def test_a_cancellation_that_meets_the_result_is_not_lost() -> None:
    """The result arrives (the worker thread finished) in the same turn of the loop as the cancel: with
    ``asyncio.wait_for`` on Python 3.11 the await returned the result and the task went on as if never
    cancelled; a race's losing lane then called its provider after the race had ended."""
    calls = BoundedCalls(wait_s=5.0, threads=1, name="test-bounded")
    task = asyncio.create_task(calls.run(lambda: "result"))
    await asyncio.sleep(0)  # the task submits the call and waits
    time.sleep(0.2)  # the loop blocked: the call ends in its thread, its result queued for the loop
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    calls.close()


async def test_a_read_pause_skips_reads_while_one_is_overdue() -> None:
    pause = ReadPause(down="down: %s", back="back", pause_s=0.0, wait_s=0.1, threads=1)
    release = threading.Event()
    with pytest.raises(LogDatabaseError):
        await pause.read(release.wait)
    assert pause.paused  # no second read piles up behind the hung one
    release.set()
    await until(lambda: not pause.paused)
    pause.close()


def test_a_hung_read_that_answers_after_its_loop_closed_is_dropped_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """``generate_sync``'s loop, or a notebook's, may be gone by the time a hung server answers: the answer
    must go nowhere, quietly (handing it to a closed loop raises "Event loop is closed" in the worker thread,
    which concurrent.futures logs as a failed callback with its traceback)."""
    calls = BoundedCalls(wait_s=0.1, threads=1, name="test-bounded")
    release = threading.Event()

    async def give_up() -> None:
        with pytest.raises(LogDatabaseError):
            await calls.run(release.wait)

    asyncio.run(give_up())
    assert calls.overdue
    release.set()
    give_up_at = time.monotonic() + 2
    while calls.overdue and time.monotonic() < give_up_at:
        time.sleep(0.01)
    assert not calls.overdue
    assert "exception calling callback" not in caplog.text and "Traceback" not in caplog.text
    calls.close()


def test_a_call_bounded_again_from_a_bounded_thread_runs_in_place() -> None:
    """Its caller waits a bounded time already (an admin change that reads the log on PostgreSQL): a second hop
    would only add a thread, and with one thread it would wait for itself until its bound ran out."""
    calls = BoundedCalls(wait_s=2.0, threads=1, name="test-in-place")
    try:
        outer, inner = calls.run_sync(
            lambda: (threading.current_thread().name, calls.run_sync(lambda: threading.current_thread().name))
        )
    finally:
        calls.close()
    assert outer == inner and outer.startswith("test-in-place")
