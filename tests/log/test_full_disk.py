"""The SQLite log on a full disk (SQLITE_FULL, for real: ``PRAGMA max_page_count`` keeps the file from growing):
writes are retried and then kept in the spill like an outage's, the writer says why while they fail (what
``/health`` reports), and no request's rows end up half written with FOREIGN KEY errors after them."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagegen_core.errors import LogDatabaseBusy
from imagegen_core.log import LogDB
from imagegen_core.log.spill import LogSpill
from imagegen_core.log.writer import FAILURE_FRESH_S, LogWriter
from tests.log.test_spill import start as start_request
from tests.log.test_spill import statuses, until

BIG_PROMPT = "x" * 50_000  # overflow pages: the row needs pages the file may not grow by


@pytest.fixture
def db(tmp_path: Path) -> Iterator[LogDB]:
    with LogDB(tmp_path / "imagegen.db") as log:
        log.open()
        yield log


def writer_connection(db: LogDB) -> sqlite3.Connection:
    """The SQLite connection of the log writer's thread (one per thread)."""
    (conn,) = [c for thread, c, _ in db.backend._connections if thread.name.startswith("imagegen-log-writer")]  # type: ignore[attr-defined]
    return conn


def fill_the_disk(conn: sqlite3.Connection) -> None:
    """From now on the file may not grow: a write that needs a new page fails with SQLITE_FULL."""
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")


def free_space(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA max_page_count = 1073741823")


def start(db: LogDB, writer: LogWriter, request_id: str) -> None:
    """A request whose row needs overflow pages, and its first attempt."""
    start_request(db, writer, request_id, prompt=BIG_PROMPT)
    writer.submit(
        db.start_attempt,
        f"{request_id}-a1",
        request_id=request_id,
        provider="p",
        attempt=1,
        hedged=False,
        started_at=time.time(),
    )


def test_a_full_disk_is_retried_then_kept_in_the_spill_and_written_once_there_is_room(
    db: LogDB, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """QA (full_disk.sh): rows met "database or disk is full" and were dropped at once, each with an error line
    of its own (23 of them "FOREIGN KEY constraint failed": the attempts of a request whose row was not
    written), and nothing said what to fix. Now a full disk is handled as an outage."""
    spill = LogSpill(tmp_path / "spill", db)
    writer = LogWriter(batch=db.batch, busy_retry_s=0.3, spill=spill, write_back_every_s=0.1)
    try:
        start(db, writer, "r0")
        writer.flush_sync()
        assert writer.failing is None
        conn = writer_connection(db)
        with caplog.at_level(logging.WARNING, logger="imagegen"):
            fill_the_disk(conn)
            start(db, writer, "r1")
            writer.flush_sync()
            assert statuses(db) == [("r0", "running")] and spill.waiting() == 2
            failure = writer.failing
            assert failure is not None
            assert failure.message.endswith(f"database or disk is full: free space on {tmp_path}")
            free_space(conn)
            until(lambda: statuses(db) == [("r0", "running"), ("r1", "running")])
        assert [r["id"] for r in db.query("SELECT id FROM attempts ORDER BY id")] == ["r0-a1", "r1-a1"]
        assert writer.failing is None and spill.files() == []
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert "FOREIGN KEY" not in caplog.text
    finally:
        writer.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_write_failure_counts_until_a_write_is_taken_or_nothing_was_tried_for_a_minute() -> None:
    """A writer with nothing left to write has no evidence that the database still refuses writes: after the
    rows that met a full disk were lost, a probe must not say "failing" for ever (a load balancer would never
    send the requests that show it works again)."""
    clock = Clock()
    refuse = [True]
    taken: list[str] = []

    def write(row: str) -> None:
        if refuse[0]:
            clock.now += 1
            raise LogDatabaseBusy("log database /srv/imagegen.db: write failed: database or disk is full")
        taken.append(row)

    writer = LogWriter(busy_retry_s=0.2, clock=clock, sleep=lambda s: None)
    try:
        since = clock.now
        writer.submit(write, "a")
        writer.flush_sync()
        failure = writer.failing
        assert failure is not None and "disk is full" in failure.message
        assert failure.since == since + 1 and failure.at > failure.since  # the first refusal, and the last
        clock.now = failure.at + FAILURE_FRESH_S - 1
        assert writer.failing is not None
        clock.now = failure.at + FAILURE_FRESH_S + 1
        assert writer.failing is None  # nothing tried for a minute
        writer.submit(write, "b")
        writer.flush_sync()
        assert writer.failing is not None  # refused again: failing at once
        refuse[0] = False
        writer.submit(write, "c")
        writer.flush_sync()
        assert writer.failing is None and taken == ["c"]
    finally:
        writer.close()


def test_with_the_spill_full_too_each_lost_batch_is_one_line_and_the_orphans_of_a_lost_request_none(
    db: LogDB, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The spill on the same full disk: the rows are lost, but said once per batch with what to fix, and the
    attempts of a request whose row was lost are not written afterwards one FOREIGN KEY error at a time."""
    (tmp_path / "spill").write_text("no room for a folder")  # keeping rows fails too, as on a full disk
    writer = LogWriter(batch=db.batch, busy_retry_s=0.2, spill=LogSpill(tmp_path / "spill", db))
    try:
        start(db, writer, "r0")
        writer.flush_sync()
        conn = writer_connection(db)
        with caplog.at_level(logging.WARNING, logger="imagegen"):
            fill_the_disk(conn)
            start(db, writer, "r1")
            writer.flush_sync()
            free_space(conn)
            writer.submit(
                db.start_attempt, "r1-a2", request_id="r1", provider="p", attempt=2, hedged=False, started_at=1.0
            )
            writer.submit(db.finish_request, "r1", finished_at=2.0, status="success", elapsed_ms=5)
            writer.flush_sync()
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, errors
        assert errors[0].startswith("the log database did not take 2 row(s) and they are lost")
        assert f"free space on {tmp_path}" in errors[0]
        assert "FOREIGN KEY" not in caplog.text
        assert "2 log row(s) of request(s) whose request row was lost earlier" in caplog.text
        assert statuses(db) == [("r0", "running")]
    finally:
        writer.close()
