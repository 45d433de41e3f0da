"""Log retention: :func:`prune_log` deletes the requests that started before a cut, with every row that hangs
off them, and :func:`vacuum_log` gives the space back (``imagegen db prune``).

The request log grows by every request and attempt, forever. Pruning deletes from :data:`PRUNED_TABLES` only —
a request, its attempts and its editors' picks (the tables whose FOREIGN KEYs point at ``requests``, children
first) — and leaves config versions, breaker state and transitions and the schema version alone. The images in
the store stay too: articles use them.

A request is pruned when it started (``created_at``) before the cut, is not ``running`` (a request under way,
or one a crash left so until ``imagegen serve`` closes it) and nothing of it is at or after the cut: it ended
before the cut and no pick of it is dated at or after it. The unit is the request: its attempts go with it,
never alone. Deletes run in batches of :data:`BATCH_REQUESTS` requests, each its own short transaction, so a
process writing to the same log (``imagegen serve``, the console) waits for one batch at most, not for the
whole prune: on SQLite every writer queues on the one write lock, so the pruner also pauses between batches
(:data:`SQLITE_PAUSE_S`) to let them in; on PostgreSQL the rows are locked, ``SKIP LOCKED`` (a row a writer is
changing now is left for the next prune). A batch is committed whole or not at all: stopped between batches
(``stop``), or interrupted inside one, the log is consistent and a second run goes on where the first ended.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from .db import LogDB

#: The tables a prune deletes from, children before their parent (their FOREIGN KEYs point at ``requests``).
PRUNED_TABLES: tuple[str, ...] = ("picks", "attempts", "requests")
#: The tables a prune never touches: what the log holds besides requests.
KEPT_TABLES: tuple[str, ...] = ("config_versions", "breaker_state", "breaker_events", "schema_migrations")
#: Requests per batch (with their attempts and picks, some 750 rows): a batch is one transaction, and every
#: other writer of a SQLite log waits for it. Measured on a 2-core machine (bench/log_prune.py, 1.5 million
#: requests, a writer alongside): 6 ms median, 74 ms max; the writer waited 35 ms at p99, 153 ms at most. With
#: 500, as long in total: 23 / 121 ms, and the writer 111 ms at p99, 451 ms at most.
BATCH_REQUESTS = 250
#: On SQLite, the pause after each batch: a writer waiting for the lock polls it (SQLite's busy handler sleeps
#: 1, 2, 5 … 100 ms between tries) and would rarely find it free between two batches back to back (measured,
#: 500 a batch: without the pause a writer waited 961 ms at p99, 1.7 s at most; with it 111 ms and 451 ms).
SQLITE_PAUSE_S = 0.01

#: A request that may be pruned (``?``: the cut, three times): started and ended before the cut, not running,
#: and no pick of it at or after the cut.
_PRUNABLE = (
    "created_at < ? AND status <> 'running' AND COALESCE(finished_at, created_at) < ?"
    " AND NOT EXISTS (SELECT 1 FROM picks WHERE picks.request_id = requests.id AND picks.picked_at >= ?)"
)


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What :func:`prune_log` did (or, with ``dry_run``, would do).

    ``deleted``: rows per table of :data:`PRUNED_TABLES` (would be deleted, in a dry run); ``kept_running``:
    requests started before the cut that are still ``running`` (never pruned); ``kept_later``: requests started
    before the cut that ended, or were picked, at or after it (pruned by a later cut); ``batch_s``: each
    committed batch's duration, lock wait included; ``interrupted``: stopped before the end (``stop`` said so),
    the batches done so far committed."""

    cut: float
    dry_run: bool
    deleted: dict[str, int]
    kept_running: int = 0
    kept_later: int = 0
    batch_s: Sequence[float] = ()
    elapsed_s: float = 0.0
    interrupted: bool = False

    @property
    def requests(self) -> int:
        """Requests deleted (or to delete)."""
        return self.deleted.get("requests", 0)

    @property
    def batches(self) -> int:
        """Batches committed."""
        return len(self.batch_s)

    @property
    def batch_median_s(self) -> float:
        """The median batch's duration (0 without any)."""
        return statistics.median(self.batch_s) if self.batch_s else 0.0

    @property
    def batch_max_s(self) -> float:
        """The longest batch's duration: the longest any other writer waited for the prune (0 without any)."""
        return max(self.batch_s, default=0.0)

    def to_json(self) -> dict[str, Any]:
        """The result in the HTTP API's spelling (camelCase), for ``imagegen db prune --json``."""
        return {
            "cut": utc_text(self.cut),
            "dryRun": self.dry_run,
            "deleted": dict(self.deleted),
            "keptRunning": self.kept_running,
            "keptLater": self.kept_later,
            "batches": self.batches,
            "batchMedianMs": round(self.batch_median_s * 1000, 1),
            "batchMaxMs": round(self.batch_max_s * 1000, 1),
            "elapsedS": round(self.elapsed_s, 3),
            "interrupted": self.interrupted,
        }


@dataclass(frozen=True, slots=True)
class VacuumResult:
    """What :func:`vacuum_log` did: the log's size in bytes before and after (SQLite: the file with its -wal
    file; PostgreSQL: the pruned tables with their indexes), how long it took, and a note on what it means."""

    size_before: int
    size_after: int
    elapsed_s: float
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        """The result in the HTTP API's spelling, for ``imagegen db prune --vacuum --json``."""
        return {
            "sizeBefore": self.size_before,
            "sizeAfter": self.size_after,
            "elapsedS": round(self.elapsed_s, 3),
            "note": self.note,
        }


def cut_seconds(before: float | datetime | date) -> float:
    """Unix seconds of a cut given as Unix seconds, a datetime (naive: UTC, as the log's times) or a date (its
    midnight, UTC)."""
    if isinstance(before, datetime):
        return (before if before.tzinfo is not None else before.replace(tzinfo=UTC)).timestamp()
    if isinstance(before, date):
        return datetime(before.year, before.month, before.day, tzinfo=UTC).timestamp()
    return float(before)


def utc_text(epoch_s: float) -> str:
    """A Unix time as ISO 8601 in UTC to the second, ``2026-09-01T00:00:00Z``."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Totals:
    deleted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(reversed(PRUNED_TABLES), 0))
    batch_s: list[float] = field(default_factory=list)


def prune_log(
    db: LogDB,
    *,
    before: float | datetime | date,
    dry_run: bool = False,
    batch_requests: int = BATCH_REQUESTS,
    pause_s: float | None = None,
    stop: Callable[[], bool] | None = None,
    progress: Callable[[PruneResult], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> PruneResult:
    """Delete the requests of ``db`` that started before ``before`` (see the module's docstring for which), with
    their attempts and picks, in batches of ``batch_requests``; returns the rows deleted per table and timings.

    ``dry_run`` counts what would be deleted and changes nothing. ``pause_s``: the rest after each batch (None:
    :data:`SQLITE_PAUSE_S` on SQLite, none on PostgreSQL). ``stop()`` is asked before each batch: True ends the
    prune there, ``interrupted`` in the result (a command's Ctrl-C). ``progress(result)`` is called after each
    batch with the totals so far (its ``batch_s`` grows with the prune: copy it to keep it as it stands).
    Raises :class:`~imagegen_core.errors.LogDatabaseError` (``LogDatabaseBusy``
    for a lock held too long) from the batch that failed, which is rolled back: the batches before it stay done.
    ``before`` may lie in the future (a running request is still never deleted); ``imagegen db prune`` refuses
    that as a likely typo."""
    if batch_requests < 1:
        raise ValueError(f"batch_requests must be at least 1, not {batch_requests}")
    cut = cut_seconds(before)
    db.open()
    started = clock()
    if dry_run:
        counts = _counts(db, cut)
        running, later = _kept(db, cut)
        return PruneResult(cut, True, counts, running, later, (), clock() - started)
    if pause_s is None:
        pause_s = SQLITE_PAUSE_S if db.path is not None else 0.0
    totals = _Totals()
    position: float | None = None  # the start time the next batch reads from (None: the oldest)
    interrupted = False
    while True:
        if stop is not None and stop():
            interrupted = True
            break
        batch_started = clock()
        deleted, position_after = _prune_batch(db, cut, position, batch_requests)
        if position_after is None:
            break
        totals.batch_s.append(clock() - batch_started)
        position = position_after
        for table, rows in deleted.items():
            totals.deleted[table] += rows
        if progress is not None:
            # The batch times as they stand, not a copy (a copy per batch is quadratic in a long prune).
            progress(PruneResult(cut, False, dict(totals.deleted), batch_s=totals.batch_s,
                                 elapsed_s=clock() - started))  # fmt: skip
        if pause_s > 0:
            sleep(pause_s)
    running, later = _kept(db, cut)
    return PruneResult(
        cut, False, dict(totals.deleted), running, later, tuple(totals.batch_s), clock() - started, interrupted
    )


def _prune_batch(db: LogDB, cut: float, position: float | None, limit: int) -> tuple[dict[str, int], float | None]:
    """One transaction: the next ``limit`` prunable requests from ``position`` on (by start time: the rows kept
    before it are not read again), their picks, attempts and themselves deleted. Returns the rows deleted per
    table and the start time of the last request deleted; None when none was left."""
    # PostgreSQL: lock the chosen rows, skipping any a writer holds now, so none changes between the choice and
    # the delete (a pick closing an offered comparison). SQLite's BEGIN IMMEDIATE already excludes every writer.
    lock = " FOR UPDATE SKIP LOCKED" if db.dialect.name == "postgresql" else ""
    with db.transaction() as tx:
        since, params = ("", ()) if position is None else ("created_at >= ? AND ", (position,))
        rows = tx.execute(
            f"SELECT id, created_at FROM requests WHERE {since}{_PRUNABLE} ORDER BY created_at LIMIT ?{lock}",
            (*params, cut, cut, cut, limit),
        ).rows
        if not rows:
            return {}, None
        ids = [row["id"] for row in rows]
        marks = ", ".join("?" for _ in ids)
        deleted = {}
        for table, column in (("picks", "request_id"), ("attempts", "request_id"), ("requests", "id")):
            deleted[table] = tx.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", ids).rowcount
    return deleted, float(rows[-1]["created_at"])


def _counts(db: LogDB, cut: float) -> dict[str, int]:
    """Rows per pruned table that a prune at ``cut`` would delete now."""
    chosen = f"SELECT id FROM requests WHERE {_PRUNABLE}"
    params = (cut, cut, cut)
    requests = db.query(f"SELECT COUNT(*) AS n FROM requests WHERE {_PRUNABLE}", params)[0]["n"]
    attempts = db.query(f"SELECT COUNT(*) AS n FROM attempts WHERE request_id IN ({chosen})", params)[0]["n"]
    picks = db.query(f"SELECT COUNT(*) AS n FROM picks WHERE request_id IN ({chosen})", params)[0]["n"]
    return {"requests": int(requests), "attempts": int(attempts), "picks": int(picks)}


def _kept(db: LogDB, cut: float) -> tuple[int, int]:
    """Requests started before ``cut`` that a prune keeps: still running, and ended (or picked) at or after it."""
    running = db.query("SELECT COUNT(*) AS n FROM requests WHERE created_at < ? AND status = 'running'", (cut,))
    later = db.query(
        f"SELECT COUNT(*) AS n FROM requests WHERE created_at < ? AND status <> 'running' AND NOT ({_PRUNABLE})",
        (cut, cut, cut, cut),
    )
    return int(running[0]["n"]), int(later[0]["n"])


def vacuum_log(db: LogDB, *, clock: Callable[[], float] = time.monotonic) -> VacuumResult:
    """Give back the space pruned rows left.

    SQLite: ``VACUUM`` rewrites the whole file (it needs as much free disk again, and holds the write lock while
    it runs, seconds per GB: other writers wait, then keep their rows in their spill), then the -wal file is
    checkpointed and truncated. PostgreSQL: ``VACUUM (ANALYZE)`` of the pruned tables, which writers do not wait
    for; it makes the space reusable by new rows rather than smaller on disk (``VACUUM FULL`` would, but locks
    the tables against every writer for its whole run: an operator's call for a quiet hour)."""
    db.open()
    started = clock()
    if db.path is not None:
        before = _file_bytes(db.path)
        db._write("VACUUM", ())  # outside any transaction, as VACUUM must be
        checkpoint = db.query("PRAGMA wal_checkpoint(TRUNCATE)")
        busy = bool(checkpoint and checkpoint[0].get("busy"))
        after = _file_bytes(db.path)
        note = "the file rewritten without the free pages"
        if busy:
            note += "; a reader kept the -wal file from being truncated (it is, at the next checkpoint)"
        return VacuumResult(before, after, clock() - started, note)
    before = _table_bytes(db)
    db._write(f"VACUUM (ANALYZE) {', '.join(PRUNED_TABLES)}", ())
    after = _table_bytes(db)
    note = (
        "PostgreSQL: VACUUM (ANALYZE) of the pruned tables: the space is reused by new rows, not returned to the "
        "system (VACUUM FULL would, locking the tables against writers)"
    )
    return VacuumResult(before, after, clock() - started, note)


def _file_bytes(path: Path) -> int:
    """The SQLite file's size with its -wal file's."""
    total = 0
    for file in (path, path.with_name(path.name + "-wal")):
        with contextlib.suppress(FileNotFoundError):  # no -wal file: none written since the last close
            total += file.stat().st_size
    return total


def _table_bytes(db: LogDB) -> int:
    """The pruned tables' size on a PostgreSQL server, indexes and TOAST included."""
    total = 0
    for table in PRUNED_TABLES:
        total += int(db.query("SELECT pg_total_relation_size(CAST(? AS regclass)) AS n", (table,))[0]["n"])
    return total
