"""Read-only row queries behind the analyst layer (:mod:`imagegen_core.analysis`): plain dict rows over a
time range and an optional provider filter. SQL stays in ``log/``; pandas stays out of it.

Times are Unix seconds; ranges are half-open ``[since, until)``; ``None`` leaves that side open.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .db import LogDB

#: Columns read from the ``picks`` table (migration 2: the console's Compare records editors' choices).
PICK_COLUMNS = ("request_id", "provider", "offered", "picked_at")


def _range(column: str, since: float | None, until: float | None) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if since is not None:
        clauses.append(f"{column} >= ?")
        params.append(since)
    if until is not None:
        clauses.append(f"{column} < ?")
        params.append(until)
    return clauses, params


def _in(column: str, values: Sequence[str]) -> tuple[str, list[Any]]:
    return f"{column} IN ({', '.join('?' for _ in values)})", list(values)


def request_rows(
    db: LogDB, *, since: float | None, until: float | None, providers: Sequence[str] | None
) -> list[dict[str, Any]]:
    """Requests created in the range, oldest first. With ``providers``, only requests in which one of
    them raced: made an attempt, not one its open breaker skipped (the provider was never called). Not by
    the request's ``provider``: a failed request's is ``default``, so filtering on it would hide exactly
    the requests an analyst is looking for."""
    clauses, params = _range("created_at", since, until)
    if providers is not None:
        # A correlated EXISTS: for each request of the range, a look-up in the attempts' request_id index. The
        # ``id IN (SELECT request_id …)`` it replaces listed every attempt of those providers in the whole log
        # first, whatever the range: 30 days of one provider took 17 s on a year of log, against 2.6 s now
        # (bench/log_scale.py, the frame included).
        condition, values = _in("attempts.provider", providers)
        clauses.append(
            "EXISTS (SELECT 1 FROM attempts WHERE attempts.request_id = requests.id"
            f" AND {condition} AND attempts.outcome <> 'skipped')"
        )
        params += values
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    return db.query(
        "SELECT id, created_at, finished_at, status, provider, elapsed_ms, cost_usd, source, error, width, height"
        f" FROM requests{where} ORDER BY created_at, {db.dialect.insertion_order}",
        params,
    )


def attempt_rows(
    db: LogDB, *, since: float | None, until: float | None, providers: Sequence[str] | None
) -> list[dict[str, Any]]:
    """Attempts started in the range, in start order."""
    clauses, params = _range("started_at", since, until)
    if providers is not None:
        condition, values = _in("provider", providers)
        clauses.append(condition)
        params += values
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    return db.query(
        "SELECT id, request_id, provider, attempt, hedged, started_at, finished_at, outcome, failure_class,"
        f" http_status, duration_ms, cost_usd, retry_after_ms, error FROM attempts{where}"
        f" ORDER BY started_at, attempt, {db.dialect.insertion_order}",
        params,
    )


def has_table(db: LogDB, name: str) -> bool:
    """Whether the log DB has a table ``name`` (tables added by later migrations may be absent)."""
    return bool(db.query(db.dialect.table_exists_sql(), (name,)))


def pick_rows(
    db: LogDB, *, since: float | None, until: float | None, providers: Sequence[str] | None
) -> list[dict[str, Any]]:
    """Editors' picks in the range as :data:`PICK_COLUMNS` rows (``offered`` is a JSON list); none when
    the log predates the ``picks`` migration."""
    if not has_table(db, "picks"):
        return []
    clauses, params = _range("picked_at", since, until)
    if providers is not None:
        condition, values = _in("provider", providers)
        clauses.append(condition)
        params += values
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    return db.query(
        f"SELECT request_id, provider, offered, picked_at FROM picks{where} ORDER BY picked_at, id",
        params,
    )
