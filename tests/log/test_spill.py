"""Through a log-database outage longer than the writer's retries, the request log's rows are kept on disk
(the spill) instead of being dropped, and written to the database in their order once it answers again, before
any newer row: by the same writer, or by the next process on the same home when this one ended first."""

from __future__ import annotations

import fcntl
import logging
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from imagegen_core import ImageGen, Settings
from imagegen_core.errors import LogDatabaseBusy, LogDatabaseError
from imagegen_core.log import LogDB
from imagegen_core.log import sqlite as sqlite_backend
from imagegen_core.log.spill import LogSpill, spill_folder
from imagegen_core.log.writer import LogWriter
from tests.log.rows import add_request


def until(condition: Callable[[], bool], *, timeout_s: float = 10.0) -> None:
    """Poll ``condition`` until true; fail after ``timeout_s``."""
    give_up = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < give_up, "timed out"
        time.sleep(0.02)


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LogDB]:
    """A SQLite log whose writes give up on a lock after 0.1 s (5 s in production), so that a test can hold
    the lock longer than the writer's retry window without waiting long."""
    monkeypatch.setattr(sqlite_backend, "BUSY_TIMEOUT_MS", 100)
    with LogDB(tmp_path / "imagegen.db") as log:
        log.open()
        yield log


@contextmanager
def locked(db: LogDB) -> Iterator[None]:
    """Another process's write transaction on the log file: every write waits, reads do not (WAL)."""
    other = sqlite3.connect(str(db.path), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
        other.execute("ROLLBACK")
    finally:
        other.close()


def start(db: LogDB, writer: LogWriter, request_id: str, *, prompt: str | None = None) -> None:
    writer.submit(
        db.start_request,
        request_id,
        created_at=time.time(),
        prompt=prompt if prompt is not None else f"prompt {request_id}",
        keyword=None,
        article_id=None,
        width=64,
        height=64,
        style=None,
        source="test",
    )


def finish(db: LogDB, writer: LogWriter, request_id: str) -> None:
    writer.submit(db.finish_request, request_id, finished_at=time.time(), status="success", elapsed_ms=5)


def statuses(db: LogDB) -> list[tuple[str, str]]:
    return [(r["id"], r["status"]) for r in db.query("SELECT id, status FROM requests ORDER BY created_at, id")]


def test_rows_outlasting_the_retries_are_kept_and_written_back_in_order(db: LogDB, tmp_path: Path) -> None:
    """Before, after 120 s of a locked (or unreachable) database the writer dropped the rows with an error.
    Now they wait on disk, and so does every newer row until they are back, so a finish never lands before
    its start; idle, the writer tries again on its own."""
    spill = LogSpill(tmp_path / "spill", db)
    writer = LogWriter(batch=db.batch, busy_retry_s=0.3, spill=spill, write_back_every_s=0.1)
    breaker_writes: list[str] = []
    try:
        with locked(db):
            start(db, writer, "r1")
            lost = writer.submit(breaker_writes.append, "a breaker transition")  # not a request row: not kept
            finish(db, writer, "r1")
            writer.flush_sync()
            start(db, writer, "r2")  # the database may answer now or not: r2 goes behind r1 either way
            writer.flush_sync()
            assert statuses(db) == []
            assert spill.waiting() == 3
            assert isinstance(lost.exception(), LogDatabaseBusy)
            assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in spill.files())
            assert stat.S_IMODE(spill.root.stat().st_mode) == 0o700
        until(lambda: statuses(db) == [("r1", "success"), ("r2", "running")])  # idle: written back by itself
        assert spill.files() == []
        finish(db, writer, "r2")
        writer.flush_sync()
        assert statuses(db) == [("r1", "success"), ("r2", "success")]
        assert breaker_writes == []
    finally:
        writer.close()


def test_a_process_ending_during_the_outage_keeps_its_rows_in_seconds_and_the_next_one_writes_them(
    db: LogDB, tmp_path: Path
) -> None:
    """Closing waited out the 120 s of retries and then lost the rows; with a spill it keeps them after
    5 s, and a writer started later on the same spill writes them back before its own first row."""
    spill = LogSpill(tmp_path / "spill", db)
    writer = LogWriter(batch=db.batch, spill=spill)  # the production retry window
    with locked(db):
        start(db, writer, "r1")
        finish(db, writer, "r1")
        started = time.monotonic()
        writer.close()
        took = time.monotonic() - started
        assert took < 15, took
        assert spill.waiting() == 2 and statuses(db) == []
    following = LogWriter(batch=db.batch, spill=LogSpill(tmp_path / "spill", db))
    try:
        start(db, following, "r2")
        following.flush_sync()
        assert statuses(db) == [("r1", "success"), ("r2", "running")]
        assert spill.files() == []
    finally:
        following.close()


def test_rows_kept_at_exit_are_reported_as_kept_in_one_warning_not_as_failed_writes(
    db: LogDB, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """QA (pg_outage_shutdown_log.sh): a server stopped during an outage logged "ERROR log write failed: the
    log database is still away" once per breaker update, and nothing about the rows it had kept on disk."""
    spill = LogSpill(tmp_path / "spill", db)
    writer = LogWriter(batch=db.batch, spill=spill)
    breaker_writes: list[str] = []
    with locked(db), caplog.at_level(logging.INFO, logger="imagegen"):
        start(db, writer, "r1")
        for n in range(3):
            writer.submit(breaker_writes.append, f"a breaker update {n}")
        finish(db, writer, "r1")
        writer.close()
    assert spill.waiting() == 2 and breaker_writes == []
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    said = [r.getMessage() for r in caplog.records if "wait in" in r.getMessage()]
    assert said == [
        f"2 log row(s) wait in {spill.root} for the log database: the next imagegen process started on this "
        "IMAGEGEN_HOME writes them to it once it answers"
    ]
    assert "3 circuit-breaker update(s) not written" in caplog.text


def test_kept_rows_are_written_back_by_one_writer_at_a_time_and_the_next_waits_for_it(
    db: LogDB, tmp_path: Path
) -> None:
    """While another process (or writer) writes the kept rows back, holding the lock, a writer waits for it
    rather than writing newer rows past them; when the other takes too long, its rows are kept behind them.
    Before it waited for nothing: with the database answering, its rows went into the spill for 10 s, and
    its breaker writes were dropped."""
    spill = LogSpill(tmp_path / "spill", db)
    writer = LogWriter(batch=db.batch, busy_retry_s=0.2, spill=spill, write_back_every_s=0.1)
    try:
        with locked(db):
            start(db, writer, "r1")
            writer.flush_sync()
        with open(spill.root / ".write.lock", "a+b") as other:
            fcntl.flock(other.fileno(), fcntl.LOCK_EX)
            assert spill.write_back(lambda calls: None, wait_s=0.2) is None  # taking too long: not this one's turn
            releases = threading.Timer(0.5, fcntl.flock, (other.fileno(), fcntl.LOCK_UN))
            releases.start()
            started = time.monotonic()
            start(db, writer, "r2")
            writer.flush_sync()  # waited for the other writer, then wrote r1 back and r2 after it
            assert time.monotonic() - started >= 0.3
            releases.join()
        assert statuses(db) == [("r1", "running"), ("r2", "running")] and spill.waiting() == 0
    finally:
        writer.close()


def test_a_kept_file_that_cannot_be_read_is_set_aside_and_blocks_nothing(
    db: LogDB, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spill = LogSpill(tmp_path / "spill", db)
    bad = spill.keep([("drop_table", ["requests"], {})])  # not a row of the log: never called
    spill.keep([("start_attempt", ["a1"], {"request_id": "r1", "provider": "p", "attempt": 1, "hedged": False})])
    add_request(db, "r1", 1.0)
    applied: list[str] = []

    def apply(calls: list[tuple[Callable[..., object], list[object], dict[str, object]]]) -> None:
        for fn, args, kwargs in calls:
            applied.append(fn.__name__)
            fn(*args, started_at=2.0, **kwargs)

    with caplog.at_level(logging.ERROR, logger="imagegen.log"):
        assert spill.write_back(apply) == 1
    assert applied == ["start_attempt"]
    assert spill.files() == [] and (bad.parent / (bad.name + ".unreadable")).is_file()
    assert "cannot be read (unknown call 'drop_table')" in caplog.text
    assert db.query("SELECT id, outcome FROM attempts") == [{"id": "a1", "outcome": "running"}]


def test_each_database_has_a_spill_of_its_own(tmp_path: Path) -> None:
    """Rows kept for one database are never written into another that shares the home."""
    one = spill_folder(tmp_path, "postgresql://app@db1:5432/imagegen")
    other = spill_folder(tmp_path, "postgresql://app@db2:5432/imagegen")
    assert one.parent == other.parent == tmp_path / "log-spill" and one != other
    assert spill_folder(tmp_path, "postgresql://app@db1:5432/imagegen") == one


def test_rows_are_lost_with_a_clear_error_only_when_the_spill_cannot_be_written_either(
    db: LogDB, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "spill").write_text("a file where the folder should be")
    writer = LogWriter(batch=db.batch, busy_retry_s=0.2, spill=LogSpill(tmp_path / "spill", db))
    try:
        with locked(db), caplog.at_level(logging.ERROR, logger="imagegen.log"):
            start(db, writer, "r1")
            writer.flush_sync()  # settles: the loss is logged, and closing must not fail with the database
    finally:
        writer.close()
    assert "the log database did not take 1 row(s) and they are lost" in caplog.text
    assert f"keeping the rows in {tmp_path / 'spill'} failed too: Not a directory" in caplog.text


class AwayLog:
    """A log whose writes fail as a database that is away does, while ``away``; counts the tries."""

    def __init__(self) -> None:
        self.away = True
        self.tries = 0
        self.rows: list[str] = []

    def start_request(self, request_id: str) -> None:
        self.tries += 1
        if self.away:
            raise LogDatabaseBusy("cannot reach the log database")
        self.rows.append(request_id)


def test_while_rows_are_kept_the_database_is_tried_once_per_pause_not_once_per_batch(tmp_path: Path) -> None:
    """Each try of a database still away costs its timeout (5 s for a locked SQLite file): tried before
    every batch, a busy server's writer would fall behind by that much per batch."""
    log = AwayLog()
    writer = LogWriter(busy_retry_s=0.05, spill=LogSpill(tmp_path / "spill", log), write_back_every_s=1.0)  # type: ignore[arg-type]
    try:
        writer.submit(log.start_request, "r0")
        writer.flush_sync()
        tries = log.tries
        for n in range(1, 21):
            writer.submit(log.start_request, f"r{n}")
            writer.flush_sync()
        assert log.tries == tries  # all kept behind r0 without asking the database again
        log.away = False
        until(lambda: len(log.rows) == 21, timeout_s=5)
        assert log.rows == [f"r{n}" for n in range(21)]
    finally:
        writer.close()


def test_the_spill_stops_growing_at_its_limit_and_says_so(db: LogDB, tmp_path: Path) -> None:
    """A full disk would stop the local image store too: past its limit the spill keeps nothing more, and
    the rows are dropped with an error that says why."""
    row = ("start_attempt", ["a1"], {"request_id": "r1", "provider": "p", "attempt": 1, "hedged": False})
    spill = LogSpill(tmp_path / "spill", db, max_bytes=300)
    spill.keep([row, row])
    with pytest.raises(OSError, match=r"^\[Errno 28\] the spill is full \(it holds 300 bytes, its limit\)$"):
        spill.keep([row, row])
    assert spill.waiting() == 2


async def test_an_imagegen_closed_during_an_outage_keeps_its_rows_in_seconds(
    settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA run: `imagegen serve` stopped during a PostgreSQL outage took 2 minutes, and a supervisor's stop
    timeout (the README's unit: 30 s) killed it before its answered requests reached the log or the spill.
    Closing flushed the writer before telling it the process was ending, so the flush waited out the 120 s
    of retries instead of the 5 s of closing."""
    monkeypatch.setattr(sqlite_backend, "BUSY_TIMEOUT_MS", 100)
    gen = ImageGen.from_settings(settings_factory())
    await gen.generate({"prompt": "before", "width": 64, "height": 64})
    await gen.flush()
    with locked(gen.log):
        answer = await gen.generate({"prompt": "during", "width": 64, "height": 64})
        assert answer.success
        started = time.monotonic()
        await gen.aclose()
        took = time.monotonic() - started
    assert took < 15, took
    assert gen.log_spill.waiting() >= 2  # the request's start and finish at least, kept on disk
    with ImageGen.from_settings(settings_factory()) as following:  # the next process writes them back
        until(lambda: following.log_spill.waiting() == 0)
        prompts = [r["prompt"] for r in following.log.query("SELECT prompt FROM requests ORDER BY created_at")]
        assert prompts == ["before", "during"]


def test_an_imagegen_refused_over_a_file_that_is_no_log_leaves_the_kept_rows_in_the_spill(
    settings_factory: Callable[..., Settings],
) -> None:
    """QA (embedding): over a log file that is not SQLite (a bad restore), ``from_settings`` rightly refused to
    start, but its writer had begun writing the rows an earlier process kept back into that file, and the spill
    deleted them, each "could not be written", then reported "the log database answers again"."""
    settings = settings_factory()
    with ImageGen.from_settings(settings) as gen:
        gen.log_spill.keep([("finish_request", ["r1"], {"finished_at": 2.0, "status": "success", "elapsed_ms": 5})])
        path, spill = gen.log.path, gen.log_spill
    assert path is not None
    for leftover in path.parent.glob(f"{path.name}*"):
        leftover.unlink()
    path.write_text("not a SQLite file " * 100)
    before = set(threading.enumerate())
    with pytest.raises(LogDatabaseError, match="is not a SQLite database"):
        ImageGen.from_settings(settings)
    # No writer thread was started to write them back (it stayed, unclosed, with the refused ImageGen's writer).
    assert [t.name for t in set(threading.enumerate()) - before if t.name.startswith("imagegen-log-writer")] == []
    assert spill.waiting() == 1


def test_a_writer_told_the_database_is_away_keeps_rows_from_the_first_one_until_it_answers(
    db: LogDB, tmp_path: Path
) -> None:
    """An ImageGen started while its SQLite log could not be opened (a full disk, a read-only mount): its rows go
    straight to the spill, not through the retry window first (a ``generate`` waited 5 s more at exit), even
    when nothing was kept yet at a write-back tick (which used to end spilling without asking the database)."""
    spill = LogSpill(tmp_path / "spill", db)
    writer = LogWriter(batch=db.batch, busy_retry_s=30, spill=spill, write_back_every_s=0.05)
    try:
        with locked(db):
            writer.spill_from_now()
            writer.flush_sync()  # the writer thread now runs idle write-back ticks, with nothing kept
            time.sleep(0.4)
            began = time.monotonic()
            start(db, writer, "r1")
            writer.flush_sync()
            assert time.monotonic() - began < 5 and spill.waiting() == 1  # kept at once, not after 30 s
        until(lambda: statuses(db) == [("r1", "running")])
        assert writer.failing is None
    finally:
        writer.close()


def test_the_write_back_counts_only_the_kept_rows_the_database_took(
    db: LogDB, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """QA (embedding): a kept row the database refused (here an attempt of a request it does not hold) was reported
    "could not be written", and then counted among the rows "written to it" all the same."""
    spill = LogSpill(tmp_path / "spill", db)
    add_request(db, "r1", 1.0)
    spill.keep([("finish_request", ["r1"], {"finished_at": 2.0, "status": "success", "elapsed_ms": 5})])
    orphan = {"request_id": "nope", "provider": "p", "attempt": 1, "hedged": False, "started_at": 2.0}
    spill.keep([("start_attempt", ["a1"], orphan)])
    writer = LogWriter(batch=db.batch, spill=spill)
    try:
        with caplog.at_level(logging.WARNING, logger="imagegen.log"):
            writer.write_back_kept()
            writer.flush_sync()
    finally:
        writer.close()
    assert statuses(db) == [("r1", "success")] and spill.files() == []
    assert "a kept log row (start_attempt) could not be written" in caplog.text
    assert "the log database answers again: 1 kept row(s) written to it (1 could not be, see above)" in caplog.text
