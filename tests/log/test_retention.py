"""Log retention (:mod:`imagegen_core.log.retention`) on both backends: which rows a prune deletes at the cut
and which it keeps, that what hangs off a request goes with it, that a dry run changes nothing, that batches
commit whole and a stop between them leaves a consistent log, and what vacuum reports."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from imagegen_core.log import LogDB
from imagegen_core.log.migrations import BOOTSTRAP_SQL, MIGRATIONS, split_statements
from imagegen_core.log.retention import KEPT_TABLES, PRUNED_TABLES, PruneResult, prune_log, vacuum_log
from imagegen_core.log.transfer import table_counts
from tests.log.rows import add_rejected, add_request

CUT = datetime(2026, 9, 1, tzinfo=UTC).timestamp()


def ids(db: LogDB, table: str = "requests") -> set[str]:
    column = "request_id" if table in ("attempts", "picks") else "id"
    return {str(row[column]) for row in db.query(f"SELECT {column} FROM {table}")}


def finished(db: LogDB, rid: str, at: float, *, ended_at: float | None = None, attempts: int = 2) -> None:
    """A request started at ``at`` with ``attempts`` attempts, ended at ``ended_at`` (default ``at + 1``)."""
    add_request(db, rid, at)
    for n in range(attempts):
        db.start_attempt(f"{rid}-{n}", request_id=rid, provider="fal", attempt=n + 1, hedged=False, started_at=at)
        db.finish_attempt(f"{rid}-{n}", finished_at=at + 0.5, outcome="failed" if n else "success")
    db.finish_request(rid, finished_at=at + 1 if ended_at is None else ended_at, status="success", provider="fal")


def pick(db: LogDB, rid: str, at: float) -> None:
    db.record_pick(rid, provider="fal", offered=["fal", "replicate"], article_id="a", url=None, storage_key=None,
                   picked_at=at)  # fmt: skip


def seed_boundary(db: LogDB) -> None:
    """Requests on either side of the cut, and the kinds a prune must keep although they started before it."""
    finished(db, "old", CUT - 86_400)
    finished(db, "just-before", CUT - 2)  # ended at CUT - 1: gone
    finished(db, "at-cut", CUT)  # started at the cut: not before it
    finished(db, "after", CUT + 3600)
    finished(db, "ends-after", CUT - 0.5)  # started before, ended after the cut: kept
    add_request(db, "running-old", CUT - 30 * 86_400)  # under way (or left by a crash): never pruned
    db.start_attempt("running-old-0", request_id="running-old", provider="fal", attempt=1, hedged=False,
                     started_at=CUT - 30 * 86_400)  # fmt: skip
    finished(db, "picked-old", CUT - 86_400)
    pick(db, "picked-old", CUT - 86_000)  # a pick before the cut: goes with its request
    finished(db, "picked-late", CUT - 86_400)
    pick(db, "picked-late", CUT + 10)  # an editor's choice dated after the cut: the request stays
    add_rejected(db, "rejected-old", CUT - 5)
    db.save_config({"defaults": {"timeout": 9000}}, source="cli", created_at=CUT - 90 * 86_400)
    db.breaker_store().update("fal", lambda record: (record, []) if record else _open_breaker())


def _open_breaker() -> tuple[Any, list[Any]]:
    from imagegen_core.breaker import BreakerRecord, BreakerState, Transition

    record = BreakerRecord("fal", BreakerState.OPEN, updated_at=CUT - 50 * 86_400)
    return record, [Transition("fal", BreakerState.CLOSED, BreakerState.OPEN, "test", CUT - 50 * 86_400)]


KEPT = {"at-cut", "after", "ends-after", "running-old", "picked-late"}
GONE = {"old", "just-before", "picked-old", "rejected-old"}


def test_prune_deletes_exactly_the_requests_started_and_ended_before_the_cut_with_their_rows(logdb: LogDB) -> None:
    seed_boundary(logdb)
    before = table_counts(logdb)
    result = prune_log(logdb, before=CUT, pause_s=0)
    assert ids(logdb) == KEPT
    assert ids(logdb, "attempts") == KEPT  # every attempt of a deleted request went with it, none of a kept one
    assert ids(logdb, "picks") == {"picked-late"}
    assert result.deleted == {"requests": 4, "attempts": 6, "picks": 1}
    assert (result.kept_running, result.kept_later) == (1, 2)  # ends-after and picked-late
    after = table_counts(logdb)
    for table in KEPT_TABLES[:3]:  # config versions, breaker state and transitions untouched
        assert after[table] == before[table] > 0, table
    assert not result.dry_run and not result.interrupted and result.batches == 1


def test_a_dry_run_counts_the_same_rows_and_changes_nothing(logdb: LogDB) -> None:
    seed_boundary(logdb)
    before = table_counts(logdb)
    dry = prune_log(logdb, before=CUT, dry_run=True)
    assert table_counts(logdb) == before
    assert dry.dry_run and dry.batches == 0
    assert dry.deleted == {"requests": 4, "attempts": 6, "picks": 1}
    assert (dry.kept_running, dry.kept_later) == (1, 2)
    real = prune_log(logdb, before=CUT, pause_s=0)
    assert real.deleted == dry.deleted


def test_batches_are_small_each_committed_and_a_second_prune_finds_nothing(logdb: LogDB) -> None:
    """23 requests in batches of 5: five batches, ``progress`` after each with the running totals; the rows
    kept before the cut (running ones, spread among them) are skipped, not stuck on."""
    for i in range(23):
        finished(logdb, f"r{i:02d}", CUT - 1000 + i * 10, attempts=1 + i % 3)
        if i % 7 == 0:
            add_request(logdb, f"live{i:02d}", CUT - 995 + i * 10)
    seen: list[PruneResult] = []
    slept: list[float] = []
    result = prune_log(logdb, before=CUT, batch_requests=5, progress=seen.append, pause_s=0.25, sleep=slept.append)
    assert result.batches == 5 and [r.requests for r in seen] == [5, 10, 15, 20, 23]
    assert slept == [0.25] * 5  # a pause after each batch, for the writers waiting
    assert result.deleted == {"requests": 23, "attempts": sum(1 + i % 3 for i in range(23)), "picks": 0}
    assert ids(logdb) == {"live00", "live07", "live14", "live21"} and result.kept_running == 4
    again = prune_log(logdb, before=CUT, batch_requests=5, pause_s=0)
    assert again.deleted == {"requests": 0, "attempts": 0, "picks": 0} and again.batches == 0


def test_stopping_between_batches_leaves_whole_batches_and_a_later_run_goes_on(logdb: LogDB) -> None:
    for i in range(12):
        finished(logdb, f"r{i:02d}", CUT - 1000 + i, attempts=2)
    calls = iter([False, False, True])
    stopped = prune_log(logdb, before=CUT, batch_requests=5, stop=lambda: next(calls), pause_s=0)
    assert stopped.interrupted and stopped.batches == 2 and stopped.requests == 10
    left = ids(logdb)
    assert left == {"r10", "r11"} and ids(logdb, "attempts") == left  # the oldest ten, whole
    rest = prune_log(logdb, before=CUT, batch_requests=5, pause_s=0)
    assert rest.requests == 2 and not ids(logdb)


def test_a_failing_batch_is_rolled_back_whole(logdb: LogDB, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch that fails half-way (its requests' delete refused) deletes none of its picks or attempts."""
    from imagegen_core.errors import LogDatabaseError
    from imagegen_core.log import retention

    for i in range(3):
        finished(logdb, f"r{i}", CUT - 100 + i)
    pick(logdb, "r0", CUT - 50)
    real = retention._prune_batch

    def failing(db: LogDB, *args: Any) -> Any:
        with db.transaction() as tx:
            tx.execute("DELETE FROM picks")
            tx.execute("DELETE FROM attempts")
            raise LogDatabaseError("boom")
        return real(db, *args)

    monkeypatch.setattr(retention, "_prune_batch", failing)
    with pytest.raises(LogDatabaseError, match="boom"):
        prune_log(logdb, before=CUT, pause_s=0)
    assert ids(logdb, "picks") == {"r0"} and ids(logdb, "attempts") == {"r0", "r1", "r2"}


def test_the_cut_may_be_a_date_or_a_datetime(logdb: LogDB) -> None:
    seed_boundary(logdb)
    assert prune_log(logdb, before=date(2026, 9, 1), dry_run=True).requests == 4
    assert prune_log(logdb, before=datetime(2026, 9, 1), dry_run=True).requests == 4  # naive: UTC
    two_hours_on = prune_log(logdb, before=datetime(2026, 9, 1, 2, tzinfo=UTC), dry_run=True)
    assert two_hours_on.requests == 8 and two_hours_on.kept_running == 1  # all but the running one


def test_the_pruned_tables_are_every_table_that_points_at_requests(tmp_path: Path) -> None:
    """A new table with a FOREIGN KEY to requests must be pruned too (else its rows block the delete, or
    dangle): the schema's foreign keys, read from SQLite, are exactly the pruned children."""
    with closing(sqlite3.connect(tmp_path / "schema.db")) as conn:
        conn.execute(BOOTSTRAP_SQL)
        for _, _, sql in MIGRATIONS:
            for statement in split_statements(sql):
                conn.execute(statement)
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        children = {t for t in tables for fk in conn.execute(f"PRAGMA foreign_key_list({t})") if fk[2] == "requests"}
    assert children | {"requests"} == set(PRUNED_TABLES)
    assert set(tables) - {"sqlite_sequence"} == set(PRUNED_TABLES) | set(KEPT_TABLES)


def test_vacuum_reports_the_size_and_keeps_the_rows(logdb: LogDB) -> None:
    for i in range(300):
        finished(logdb, f"r{i:03d}", CUT - 1000 + i)
    finished(logdb, "new", CUT + 1)
    prune_log(logdb, before=CUT, pause_s=0)
    result = vacuum_log(logdb)
    assert result.size_before > 0 and result.size_after > 0 and result.note
    if logdb.path is not None:  # SQLite gives the freed pages back
        assert result.size_after < result.size_before
    assert ids(logdb) == {"new"} and ids(logdb, "attempts") == {"new"}


def test_batch_size_must_be_positive(logdb: LogDB) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        prune_log(logdb, before=CUT, batch_requests=0)


def test_requests_started_at_the_same_time_are_all_pruned_across_batches(logdb: LogDB) -> None:
    """Batches go on from the last start time deleted: requests sharing it, split across two batches, all go."""
    for i in range(7):
        finished(logdb, f"same{i}", CUT - 100, attempts=1)
    result = prune_log(logdb, before=CUT, batch_requests=3, pause_s=0)
    assert result.requests == 7 and result.batches == 3 and not ids(logdb)


def test_on_postgresql_a_request_a_writer_holds_is_skipped_not_waited_for(postgres_url: str) -> None:
    """A row another session has locked (a pick closing that comparison, say) is left for the next prune:
    the batch neither waits for it (up to the 1 s lock timeout, then fails) nor deletes it under the writer."""
    import psycopg

    with LogDB.from_url(postgres_url) as db:
        for i in range(4):
            finished(db, f"r{i}", CUT - 100 + i, attempts=1)
        with psycopg.connect(postgres_url) as other:  # a transaction of its own, open until the block ends
            other.execute("SELECT id FROM requests WHERE id = 'r1' FOR UPDATE")
            begun = time.monotonic()
            result = prune_log(db, before=CUT, batch_requests=2)
            took = time.monotonic() - begun
        assert result.requests == 3 and ids(db) == {"r1"} and ids(db, "attempts") == {"r1"}
        assert took < 0.9  # no lock wait (LOCK_TIMEOUT_MS is 1 s)
        assert prune_log(db, before=CUT).requests == 1  # released: the next prune takes it
