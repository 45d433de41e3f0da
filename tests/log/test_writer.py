"""The log writer keeps order, does not drop a write when the database stays locked for a while, and applies
what queues up during a commit as one transaction."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from imagegen_core.errors import LogDatabaseBusy, LogDatabaseError
from imagegen_core.log import LogDB
from imagegen_core.log import writer as writer_module
from imagegen_core.log.backend import ItemScope
from imagegen_core.log.spill import LogSpill
from imagegen_core.log.writer import LogWriter
from tests.log.rows import add_request


def test_a_busy_write_is_retried_and_later_writes_wait_for_it() -> None:
    applied: list[str] = []
    failures = {"first": 3}

    def write(name: str) -> None:
        if failures.get(name, 0) > 0:
            failures[name] -= 1
            raise LogDatabaseBusy("log database stayed locked")
        applied.append(name)

    waits: list[float] = []
    writer = LogWriter(busy_retry_s=30, sleep=waits.append)
    for name in ("first", "second", "third"):
        writer.submit(write, name)
    writer.flush_sync()
    writer.close()
    assert applied == ["first", "second", "third"]  # nothing lost, order kept
    assert len(waits) == 3 and all(0 < w <= 2.0 for w in waits)  # backed off between tries


@pytest.mark.parametrize("fails", [False, True], ids=["applied", "failed"])
def test_a_call_whose_waiter_cancelled_it_leaves_the_writer_working(fails: bool) -> None:
    """A caller interrupted while it waited for a write (Ctrl+C during ``generate``'s last log write, which
    cancels the flush's future) killed the writer thread: settling the cancelled future raised
    InvalidStateError there (a traceback), and every later write of the process waited for ever (QA)."""
    applied: list[str] = []
    entered, release = threading.Event(), threading.Event()

    def write(name: str) -> None:
        if name == "held":
            entered.set()
            release.wait(10)
            if fails:
                raise LogDatabaseError("the database went away")
        applied.append(name)

    writer = LogWriter()
    held = writer.submit(write, "held")
    assert entered.wait(10)  # readiness: the writer thread is inside the call
    waited = writer.submit(write, "waited for")
    assert held.cancel() and waited.cancel()  # as asyncio.wrap_future does when the awaiting task is cancelled
    release.set()
    later = writer.submit(write, "later")
    later.result(timeout=10)  # hung for ever (the thread was dead) before
    writer.close()
    # Written all the same: a waiter that left must not lose the rows it asked for.
    assert applied == (["waited for", "later"] if fails else ["held", "waited for", "later"])


def test_a_long_wait_is_reported_in_words_not_once_per_retry(caplog: pytest.LogCaptureFixture) -> None:
    failures = {"left": 30}

    def write() -> None:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise LogDatabaseBusy("log database /x/log.db stayed locked by another process for over 5000 ms")

    writer = LogWriter(busy_retry_s=30, sleep=lambda s: None)  # 30 retries within one report period
    with caplog.at_level(logging.WARNING, logger="imagegen.log"):
        writer.submit(write)
        writer.flush_sync()
    writer.close()
    assert failures["left"] == 0
    assert [r.getMessage() for r in caplog.records] == [
        "log database /x/log.db stayed locked by another process for over 5000 ms; "
        "the log writes wait (0 s so far, giving up after 30 s)"
    ]


def test_other_database_errors_are_not_retried() -> None:
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise LogDatabaseError("log database x is not a SQLite database")

    writer = LogWriter(busy_retry_s=30, sleep=lambda s: None)
    future = writer.submit(broken)
    writer.flush_sync()
    writer.close()
    assert calls == [1] and isinstance(future.exception(), LogDatabaseError)


# ------------------------------------------------------------------------------------------------
# Batches: what queues up while one transaction commits goes into the next one


def request_ids(db: LogDB) -> list[str]:
    return [row["id"] for row in db.query("SELECT id FROM requests ORDER BY rowid")]


class CountingBatches:
    """``LogDB.batch`` that counts the batches opened."""

    def __init__(self, db: LogDB) -> None:
        self.db = db
        self.opened = 0

    @contextmanager
    def __call__(self) -> Iterator[ItemScope]:
        self.opened += 1
        with self.db.batch() as scope:
            yield scope


@pytest.fixture
def db(tmp_path: Path) -> Iterator[LogDB]:
    log = LogDB(tmp_path / "log.db").open()
    yield log
    log.close()


def hold_writer(writer: LogWriter) -> threading.Event:
    """Block the writer thread in a call until the returned event is set (returns once it is blocked)."""
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        release.wait(10)

    writer.submit(hold)
    assert entered.wait(10)
    return release


def test_writes_queued_during_a_commit_share_one_transaction(db: LogDB) -> None:
    batches = CountingBatches(db)
    writer = LogWriter(batch=batches)
    release = hold_writer(writer)
    ids = [f"r{i:03d}" for i in range(100)]
    for request_id in ids:
        writer.submit(add_request, db, request_id, 1.0)
    release.set()
    writer.flush_sync()
    writer.close()
    assert request_ids(db) == ids  # all applied, in order
    assert batches.opened == 1  # the held call ran alone; the 100 queued behind it, together


def test_a_batch_holds_at_most_max_batch_calls(db: LogDB) -> None:
    batches = CountingBatches(db)
    writer = LogWriter(batch=batches, max_batch=30)
    release = hold_writer(writer)
    for i in range(100):
        writer.submit(add_request, db, f"r{i:03d}", 1.0)
    release.set()
    writer.close()  # applies what is queued
    assert len(request_ids(db)) == 100 and batches.opened == 4  # 30 + 30 + 30 + 10


def test_a_failing_call_in_a_batch_is_undone_alone(db: LogDB) -> None:
    """Its own earlier write is rolled back (savepoint); the calls around it commit; its future says why."""

    def half_then_fail() -> None:
        add_request(db, "half", 1.0)
        raise LogDatabaseError("log database x: write failed: constraint")

    writer = LogWriter(batch=db.batch)
    release = hold_writer(writer)
    writer.submit(add_request, db, "before", 1.0)
    failed = writer.submit(half_then_fail)
    writer.submit(add_request, db, "after", 1.0)
    release.set()
    writer.close()
    assert request_ids(db) == ["before", "after"]
    assert isinstance(failed.exception(), LogDatabaseError)


def test_a_busy_database_inside_a_batch_retries_the_whole_batch_without_duplicates(db: LogDB) -> None:
    """A call meeting a locked database rolls the batch back and the batch is applied again: every row once,
    in order."""
    busy = {"left": 2}

    def flaky(request_id: str) -> None:
        add_request(db, request_id, 1.0)
        if busy["left"] > 0:
            busy["left"] -= 1
            raise LogDatabaseBusy("log database stayed locked")

    waits: list[float] = []
    writer = LogWriter(batch=db.batch, sleep=waits.append)
    release = hold_writer(writer)
    futures = [
        writer.submit(add_request, db, "first", 1.0),
        writer.submit(flaky, "second"),
        writer.submit(add_request, db, "third", 1.0),
    ]
    release.set()
    writer.close()
    assert request_ids(db) == ["first", "second", "third"]
    # Each call succeeded on the last try (a start row written twice would not fail either: those INSERTs are
    # idempotent, for a batch applied again after a lost COMMIT).
    assert [f.exception() for f in futures] == [None, None, None]
    assert len(waits) == 2


def test_close_applies_what_is_queued_and_refuses_more(db: LogDB) -> None:
    writer = LogWriter(batch=db.batch)
    release = hold_writer(writer)
    writer.submit(add_request, db, "queued", 1.0)
    release.set()
    writer.close()
    assert request_ids(db) == ["queued"]
    with pytest.raises(LogDatabaseError, match=r"^the log writer is closed"):
        writer.submit(add_request, db, "late", 1.0)


def test_close_gives_up_on_a_write_that_never_returns(caplog: pytest.LogCaptureFixture) -> None:
    """A log database that hangs (nothing refused, no error) held close(), and so the end of every process
    (`imagegen generate` after its answer, a server's shutdown), for as long as the write hung."""
    release = threading.Event()
    writer = LogWriter()
    writer.submit(release.wait)
    started = time.monotonic()
    writer.close(timeout=0.5)
    waited = time.monotonic() - started
    release.set()
    assert 0.4 <= waited < 3.0, waited
    assert "the log database did not answer for 0.5 s: the log writes under way are lost" in caplog.text


def test_closing_waits_for_a_database_that_stays_away_once_not_once_per_batch(
    db: LogDB, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA: ``imagegen generate`` into a home on a full disk printed its URL and then took 12 s to end: closing
    retried the away database for CLOSING_RETRY_S for each queued batch in turn (two), although the first had
    just been given up. Once one is given up while closing, the later batches get one try each."""
    monkeypatch.setattr(writer_module, "CLOSING_RETRY_S", 1.0)
    tries: list[str] = []
    retrying = threading.Event()

    def write(name: str) -> None:
        tries.append(name)
        if name == "first":
            retrying.set()
        raise LogDatabaseBusy("database or disk is full")

    spill_root = tmp_path / "spill"
    spill_root.write_text("a file where the spill folder should be")  # nothing can keep the rows either
    writer = LogWriter(busy_retry_s=60, spill=LogSpill(spill_root, db))
    first = writer.submit(write, "first")
    assert retrying.wait(10)
    writer.begin_closing()
    time.sleep(0.2)  # the first batch is under way: the next ones queue behind it
    later = [writer.submit(write, "second"), writer.submit(write, "third")]
    started = time.monotonic()
    writer.close()
    took = time.monotonic() - started
    assert isinstance(first.exception(), LogDatabaseBusy)
    assert all(isinstance(f.exception(), LogDatabaseBusy) for f in later)
    # One try for the later batch (its first call refused, the rest give up with it), no second wait.
    assert [name for name in tries if name != "first"] in (["second"], ["second", "third"]), tries
    assert took < 1.0 + 0.8, took  # the first batch's closing window, not one more per batch


def test_closing_does_not_sleep_past_its_window(db: LogDB, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CI: closing took 1.89 s for a CLOSING_RETRY_S of 1 s: a back-off (0.05 s doubling plus up to 1 s of jitter)
    begun inside the window slept well past it. With the jitter at its largest, the first pause (1.05 s) is cut to
    the window's 0.3 s: the database is tried again at the window's end, and closing ends then."""
    monkeypatch.setattr(writer_module, "CLOSING_RETRY_S", 0.3)
    monkeypatch.setattr(random, "uniform", lambda low, high: high)  # the back-off's jitter, at its largest
    tries: list[float] = []

    def write() -> None:
        tries.append(time.monotonic())
        raise LogDatabaseBusy("database is locked")

    spill_root = tmp_path / "spill"
    spill_root.write_text("a file where the spill folder should be")  # what is given up is reported, not kept
    writer = LogWriter(busy_retry_s=60, spill=LogSpill(spill_root, db))
    writer.begin_closing()
    started = time.monotonic()
    done = writer.submit(write)
    writer.close()
    took = time.monotonic() - started
    assert isinstance(done.exception(), LogDatabaseBusy)
    assert len(tries) >= 2, tries  # retried within the window
    assert took < 0.3 + 0.4, took  # not after a 1.05 s pause


@pytest.mark.parametrize("clears_by_itself", [False, True])
def test_closing_keeps_rows_at_once_when_only_an_operator_ends_the_failure(
    db: LogDB, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clears_by_itself: bool
) -> None:
    """QA: ``imagegen generate`` on a full disk printed its answer, then sat 5 s (CLOSING_RETRY_S) retrying a
    write no wait could fix before it gave the rows to the spill. A failure only an operator ends (a full disk, a
    read-only mount, a damaged file) is now given up at the first try after closing began; a lock, which clears
    by itself, is still retried for the closing window."""
    monkeypatch.setattr(writer_module, "CLOSING_RETRY_S", 1.0)
    # The back-off's jitter at its middle: at its largest (1 in 20 draws) the first pause, taken before closing
    # began, would end at the window's end, leaving one try while closing.
    monkeypatch.setattr(random, "uniform", lambda low, high: (low + high) / 2)
    closing = threading.Event()
    tries_while_closing: list[float] = []
    retrying = threading.Event()

    def write() -> None:
        if closing.is_set():
            tries_while_closing.append(time.monotonic())
        retrying.set()
        raise LogDatabaseBusy("database or disk is full", clears_by_itself=clears_by_itself)

    spill_root = tmp_path / "spill"
    spill_root.write_text("a file where the spill folder should be")  # what is given up is reported, not kept
    writer = LogWriter(busy_retry_s=60, spill=LogSpill(spill_root, db))
    done = writer.submit(write)
    assert retrying.wait(10)
    writer.begin_closing()
    closing.set()  # after: a try between the two is counted by neither, not by both
    writer.close()
    assert isinstance(done.exception(), LogDatabaseBusy)
    if clears_by_itself:
        assert len(tries_while_closing) >= 2, tries_while_closing  # retried, with backoff, for the window
    else:
        assert len(tries_while_closing) <= 1, tries_while_closing  # the try under way, or none: given up
