"""Read-only questions about the log (CLI ``stats``, the admin API, the console). Plain dicts out.

Percentiles are linear interpolation between closest ranks, like numpy's default, computed in Python from a
histogram of the values that the database counts (``GROUP BY`` the value), so the same code serves SQLite and
PostgreSQL and no window's rows are read one by one into Python.
"""

from __future__ import annotations

import bisect
import itertools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from .db import LogDB
from .history import REUSED, logged_providers
from .records import ABANDONED_ERROR

#: A request still ``running`` after this long is presumed lost (crash, killed process).
STALE_AFTER_S = 600.0

#: What a row ended by the crash sweep (:meth:`~imagegen_core.log.records.LogRecords.end_abandoned_requests`)
#: is called in the statistics. Such a request is ``failed`` and its attempts ``cancelled``, both with
#: :data:`~imagegen_core.log.records.ABANDONED_ERROR`, but no one knows how they ended: the request is no
#: answer with the default image (its client may have had an image), and the attempt lost no race (nor did
#: its provider fail). Every surface counts them apart, as *interrupted*, out of those figures (QA: they
#: counted as default-image answers and as lost races), and they have no time (``elapsed_ms`` /
#: ``duration_ms`` NULL), so no mean or percentile includes them.
INTERRUPTED = "interrupted"


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


#: SQL conditions for a request / an attempt the crash sweep ended; never NULL (``NOT`` of one is safe).
INTERRUPTED_REQUEST = f"(status = 'failed' AND COALESCE(error, '') = {_sql_text(ABANDONED_ERROR)})"
INTERRUPTED_ATTEMPT = f"(outcome = 'cancelled' AND COALESCE(error, '') = {_sql_text(ABANDONED_ERROR)})"


def interrupted_attempt(outcome: str | None, error: str | None) -> bool:
    """Whether an attempt row was ended by the crash sweep (see :data:`INTERRUPTED`)."""
    return outcome == "cancelled" and error == ABANDONED_ERROR


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0–100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return _interpolated(len(ordered), q, ordered.__getitem__)


def _interpolated(count: int, q: float, value_at: Callable[[int], float]) -> float:
    """:func:`percentile` of ``count`` sorted values, ``value_at(i)`` the ``i``-th (from 0): the same arithmetic,
    whichever way the values are found."""
    rank = (count - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return value_at(low) + (value_at(high) - value_at(low)) * (rank - low)


def _histogram_percentiles(histogram: Sequence[tuple[float, int]], qs: Sequence[float]) -> dict[float, float | None]:
    """:func:`percentile` for each of ``qs``, from the values' histogram: ``(value, how many)`` in ascending value
    order, what a ``GROUP BY v ORDER BY v`` answers. A log's durations are whole milliseconds, so a year of them
    has some thousands of distinct values: the database sorts and counts the rows, and only the histogram is
    read, where every value was (QA, a year of log: ``imagegen stats --days 365`` read four million rows)."""
    count = sum(n for _, n in histogram)
    if not count:
        return {q: None for q in qs}
    ends = list(itertools.accumulate(n for _, n in histogram))  # ends[i]: how many values up to the i-th

    def value_at(index: int) -> float:
        return float(histogram[bisect.bisect_right(ends, index)][0])

    return {q: _interpolated(count, q, value_at) for q in qs}


def _before(column: str, until: float | None) -> tuple[str, tuple[float, ...]]:
    """The SQL condition (and its parameter) that ``column`` is before ``until``; none when ``until`` is None."""
    return ("", ()) if until is None else (f" AND {column} < ?", (until,))


def _names_in(column: str, names: Sequence[str]) -> str:
    """``column IN (?, …)`` with one placeholder per name; for no name, a condition no row meets (PostgreSQL
    refuses an empty ``IN ()``)."""
    return f"{column} IN ({', '.join('?' for _ in names)})" if names else "1 = 0"


def _raced_in_by(providers: Sequence[str] | None) -> tuple[str, tuple[str, ...]]:
    """The SQL condition (and its parameters) that a ``requests`` row is one ``providers`` raced in: one of them
    made an attempt (not one its open breaker skipped: that provider was never called), as the analysis layer's
    and the console's provider filter keep them; none when ``providers`` is None. A correlated EXISTS: read
    through the attempts' ``request_id`` index for each request of the range, whatever the log's size."""
    if providers is None:
        return "", ()
    attempt = f"attempts.request_id = requests.id AND {_names_in('attempts.provider', providers)}"
    return f" AND EXISTS (SELECT 1 FROM attempts WHERE {attempt} AND attempts.outcome <> 'skipped')", tuple(providers)


#: An attempt the request's deadline cut: cancelled, class ``timeout``. A failure of its provider (it gave no
#: image in all the time there was), unlike a race lost to another provider.
_CUT_BY_DEADLINE = "(outcome = 'cancelled' AND failure_class = 'timeout')"


#: What one attempt counts as in :func:`provider_stats`, in SQL (the order of its tests is the order they win in):
#: a failure (failed, or cut by the request's deadline), interrupted (:data:`INTERRUPTED`), cancelled (a race
#: lost, or the caller left), success, or none of them (only in ``calls``).
_ATTEMPT_KIND = (
    f"CASE WHEN outcome = 'failed' OR {_CUT_BY_DEADLINE} THEN 'failure'"
    f" WHEN {INTERRUPTED_ATTEMPT} THEN 'interrupted' WHEN outcome = 'cancelled' THEN 'cancelled'"
    " WHEN outcome = 'success' THEN 'success' ELSE 'other' END"
)


#: Decimals a provider's summed cost is rounded to: far below any price (a sum of micro-dollars stays exact), and
#: above the noise of adding floats in another order. SQLite and PostgreSQL sum the groups each in its own order
#: (the copy test saw 3.135000000000041 against 3.1350000000000007 for one sum), so the same log gave figures
#: that differed in the last bits between the backends.
COST_DIGITS = 9


def provider_stats(
    db: LogDB, *, since: float, until: float | None = None, providers: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Per provider, over finished attempts started at or after ``since`` (and before ``until``, when given;
    skipped ones excluded); only ``providers``' (names as the log spells them), when given.

    Keys: provider, calls, successes, success_rate, cancelled, failures (by failure class), p50_ms and p95_ms
    (of successful attempts' duration), cost_usd. Sorted by provider name. ``success_rate`` is over the attempts
    that had their chance: succeeded, failed, or cut by the request's deadline (a timeout, counted under
    ``failures``); one cancelled because another provider won or the caller left (``cancelled``) says nothing
    about the provider. None when there is no such attempt. ``interrupted``: attempts a crash ended (see
    :data:`INTERRUPTED`), in ``calls`` but neither failures nor cancelled.

    Counted by the database, one provider at a time (a range of the ``(provider, started_at)`` index, each row
    read once), grouped by kind, failure class and, for successes, duration: the percentiles come from that
    histogram (:func:`_histogram_percentiles`). It read every attempt of the window into Python (bench/log_scale.py).
    """
    before, bound = _before("started_at", until)
    names = sorted(set(logged_providers(db) if providers is None else providers))
    stats = []
    for provider in names:
        groups = db.query(
            "SELECT kind, CASE WHEN kind = 'failure' THEN COALESCE(NULLIF(failure_class, ''), 'unknown') END"
            " AS failure, CASE WHEN kind = 'success' THEN duration_ms END AS v, COUNT(*) AS n,"
            " SUM(COALESCE(cost_usd, 0)) AS cost"
            f" FROM (SELECT {_ATTEMPT_KIND} AS kind, failure_class, duration_ms, cost_usd FROM attempts"
            f" WHERE provider = ? AND started_at >= ?{before} AND outcome NOT IN ('running', 'skipped')) AS counted"
            " GROUP BY 1, 2, 3 ORDER BY 3",
            (provider, since, *bound),
        )
        if not groups:
            continue
        kinds = {"success": 0, "cancelled": 0, "interrupted": 0}
        failures: dict[str, int] = {}
        histogram: list[tuple[float, int]] = []
        for row in groups:
            n = int(row["n"])
            if row["kind"] == "failure":
                failures[str(row["failure"])] = failures.get(str(row["failure"]), 0) + n
            elif row["kind"] in kinds:
                kinds[row["kind"]] += n
            if row["v"] is not None:
                histogram.append((row["v"], n))
        p = _histogram_percentiles(histogram, (50, 95))
        successes = kinds["success"]
        decided = successes + sum(failures.values())
        stats.append(
            {
                "provider": provider,
                "calls": sum(int(row["n"]) for row in groups),
                "successes": successes,
                "success_rate": successes / decided if decided else None,
                "cancelled": kinds["cancelled"],
                "interrupted": kinds["interrupted"],
                "failures": dict(sorted(failures.items())),
                "p50_ms": p[50],
                "p95_ms": p[95],
                "cost_usd": round(sum(float(row["cost"] or 0) for row in groups), COST_DIGITS),
            }
        )
    return stats


def counted_as_request(status: str) -> bool:
    """Whether a ``requests`` row with this status counts in the request totals: every row but a reuse. The one
    definition of ``imagegen stats`` (:func:`request_summary`) and the console's Provider stats, whose totals
    disagreed (QA: the CLI counted reuses, the console's tooltip said it does not). A reuse (History's *Reuse
    for an article*, status ``reused``) gave an article an image that already existed: no provider was asked
    and nothing was answered, so it is not a request; it is counted apart."""
    return status != REUSED


def request_summary(
    db: LogDB,
    *,
    since: float,
    until: float | None = None,
    now: float | None = None,
    stale_after_s: float = STALE_AFTER_S,
    providers: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Counts of requests created at or after ``since`` (and before ``until``, when given); only those
    ``providers`` (names as the log spells them) raced in, when given: one of them was called for it.

    Keys: total, success, failed (answered with the default image), interrupted (ended by the crash sweep, see
    :data:`INTERRUPTED`; out of ``failed``), cancelled, rejected, offered (comparisons without a pick), running
    (still in progress), incomplete (``running`` for longer than ``stale_after_s``: the process most likely
    died), cost_usd (the requests' whole cost, every provider's calls); and reused: rows of earlier images
    given to another article, left out of ``total`` (see :func:`counted_as_request`), so that the other counts
    add up to it; won: of ``success``, the requests one of ``providers`` won (the console's *Won by them*;
    every success without ``providers``).
    """
    now = time.time() if now is None else now
    before, bound = _before("created_at", until)
    raced_in, names = _raced_in_by(providers)
    won = "status = 'success'" + ("" if providers is None else f" AND {_names_in('provider', providers)}")
    rows = db.query(
        "SELECT status, COUNT(*) AS n, SUM(cost_usd) AS cost,"
        " SUM(CASE WHEN status = 'running' AND created_at < ? THEN 1 ELSE 0 END) AS stale,"
        f" SUM(CASE WHEN {INTERRUPTED_REQUEST} THEN 1 ELSE 0 END) AS interrupted,"
        f" SUM(CASE WHEN {won} THEN 1 ELSE 0 END) AS won"
        f" FROM requests WHERE created_at >= ?{before}{raced_in} GROUP BY status",
        (now - stale_after_s, *(providers or ()), since, *bound, *names),
    )
    summary: dict[str, Any] = {"total": 0, "success": 0, "failed": 0, "cancelled": 0, "rejected": 0, "running": 0}
    summary["offered"] = 0  # comparisons nobody picked from (yet)
    summary.update(incomplete=0, cost_usd=0.0, reused=0, interrupted=0, won=0)
    for row in rows:
        interrupted = int(row["interrupted"] or 0)
        summary[row["status"]] = summary.get(row["status"], 0) + row["n"] - interrupted
        summary[INTERRUPTED] += interrupted
        summary["won"] += int(row["won"] or 0)
        if counted_as_request(row["status"]):  # a reuse costs nothing, and is counted apart
            summary["total"] += row["n"]
            summary["incomplete"] += row["stale"] or 0
            summary["cost_usd"] += float(row["cost"] or 0)
    return summary


def change_marker(db: LogDB) -> tuple[Any, ...]:
    """A cheap mark that moves when the log's statistics may have changed, for a page that redraws every few
    seconds and recomputes only when it moves: the newest request (id and creation time), how many are still
    running (it drops when one finishes: ``finished_at`` has no index, ``status`` has), the newest attempt's
    start and the newest pick. One statement, each part read through an index.

    A finished row written with an old time (an import) does not move it, nor does an attempt that ends
    while its request runs: callers keep what they computed for one refresh interval at most."""
    row = db.query(
        "SELECT (SELECT id FROM requests ORDER BY created_at DESC LIMIT 1) AS newest_id,"
        " (SELECT max(created_at) FROM requests) AS newest_created_at,"
        " (SELECT count(*) FROM requests WHERE status = ?) AS running,"
        " (SELECT max(started_at) FROM attempts) AS newest_attempt,"
        " (SELECT max(picked_at) FROM picks) AS newest_pick",
        ("running",),
    )[0]
    return tuple(row.values())


def recent_requests(db: LogDB, limit: int = 50) -> list[dict[str, Any]]:
    """The newest requests, newest first, as full rows."""
    order = db.dialect.insertion_order
    return db.query(f"SELECT * FROM requests ORDER BY created_at DESC, {order} DESC LIMIT ?", (limit,))


def attempts_for(db: LogDB, request_id: str) -> list[dict[str, Any]]:
    """Every attempt of one request in start order; ``hedged`` as a bool."""
    order = db.dialect.insertion_order
    rows = db.query(f"SELECT * FROM attempts WHERE request_id = ? ORDER BY started_at, attempt, {order}", (request_id,))
    for row in rows:
        row["hedged"] = bool(row["hedged"])
    return rows


# -- per UTC day and over a period (admin stats, alerts) -------------------------------------------------------

#: Requests that got an answer: the Worker counted exactly these (it never logged rejected input).
_ANSWERED = "('success', 'failed')"
#: Attempts with a verdict on the provider (cancelled losers and breaker skips have none).
_DECIDED = "('success', 'failed')"


def _count_if(column: str, value: str) -> str:
    # Summing a comparison works in SQLite only (PostgreSQL has real booleans); CASE works in both.
    return f"COALESCE(SUM(CASE WHEN {column} = '{value}' THEN 1 ELSE 0 END), 0)"


def daily_request_totals(
    db: LogDB, *, since: float, until: float, providers: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Finished requests created in ``[since, until)`` grouped by UTC day and status: the answered ones, and
    those a crash ended; only those ``providers`` (names as the log spells them) raced in, when given (one of
    their calls ran for it, as :func:`request_summary` keeps them).

    Keys: day (``YYYY-MM-DD``), status (success | failed | interrupted: see :data:`INTERRUPTED`), n, timed (how
    many have an ``elapsed_ms``), elapsed_ms (their sum), cost_usd (sum); with ``providers``, won: how many of
    the successes one of them won.
    """
    status = f"CASE WHEN {INTERRUPTED_REQUEST} THEN '{INTERRUPTED}' ELSE status END"
    raced_in, names = _raced_in_by(providers)
    won = ""
    if providers is not None:
        won = f", SUM(CASE WHEN status = 'success' AND {_names_in('provider', providers)} THEN 1 ELSE 0 END) AS won"
    return db.query(
        f"SELECT {db.dialect.utc_day('created_at')} AS day, {status} AS status, COUNT(*) AS n,"
        " COUNT(elapsed_ms) AS timed, COALESCE(SUM(elapsed_ms), 0) AS elapsed_ms,"
        f" COALESCE(SUM(cost_usd), 0) AS cost_usd{won}"
        f" FROM requests WHERE created_at >= ? AND created_at < ? AND status IN {_ANSWERED}{raced_in}"
        " GROUP BY 1, 2 ORDER BY 1, 2",
        (*names, since, until, *names),
    )


def daily_attempt_totals(
    db: LogDB, *, since: float, until: float, providers: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Finished attempts started in ``[since, until)`` grouped by UTC day, provider and outcome; only
    ``providers``' (names as the log spells them), when given.

    Keys: day, provider, outcome (success | failed | cancelled | interrupted), n, timed (how many have a
    ``duration_ms``), duration_ms (their sum), cost_usd (sum). An attempt the deadline cut is ``failed`` here: a
    provider that always hangs must not look idle; one a crash ended is ``interrupted`` (:data:`INTERRUPTED`),
    not a lost race.
    """
    verdict = (
        f"CASE WHEN {_CUT_BY_DEADLINE} THEN 'failed' WHEN {INTERRUPTED_ATTEMPT} THEN '{INTERRUPTED}' ELSE outcome END"
    )
    only = "" if providers is None else f" AND {_names_in('provider', providers)}"
    return db.query(
        f"SELECT {db.dialect.utc_day('started_at')} AS day, provider, {verdict} AS outcome, COUNT(*) AS n,"
        " COUNT(duration_ms) AS timed, COALESCE(SUM(duration_ms), 0) AS duration_ms,"
        " COALESCE(SUM(cost_usd), 0) AS cost_usd"
        f" FROM attempts WHERE started_at >= ? AND started_at < ?{only}"
        " AND outcome IN ('success', 'failed', 'cancelled')"
        " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        (since, until, *(providers or ())),
    )


def _ranked_percentiles(db: LogDB, sql: str, params: tuple[Any, ...], qs: Sequence[float]) -> dict[float, float | None]:
    """Percentiles of the single column ``v`` that ``sql`` selects, like :func:`percentile`, from the histogram of
    its values (:func:`_histogram_percentiles`): one statement. It counted the rows, then sorted them again for
    each percentile (``ORDER BY v LIMIT 2 OFFSET k``): three passes, each sorting up to the whole window."""
    rows = db.query(f"SELECT v, COUNT(*) AS n FROM ({sql}) AS ranked GROUP BY v ORDER BY v", params)
    return _histogram_percentiles([(r["v"], int(r["n"])) for r in rows], qs)


def request_elapsed_percentiles(
    db: LogDB,
    *,
    since: float,
    until: float,
    qs: Sequence[float] = (50, 95),
    providers: Sequence[str] | None = None,
) -> dict[float, float | None]:
    """Percentiles of ``elapsed_ms`` over answered requests created in ``[since, until)``; only those
    ``providers`` raced in, when given (as :func:`daily_request_totals` counts them)."""
    raced_in, names = _raced_in_by(providers)
    sql = (
        "SELECT elapsed_ms AS v FROM requests WHERE created_at >= ? AND created_at < ?"
        f" AND status IN {_ANSWERED} AND elapsed_ms IS NOT NULL{raced_in}"
    )
    return _ranked_percentiles(db, sql, (since, until, *names), qs)


def attempt_duration_percentiles(
    db: LogDB, provider: str, *, since: float, until: float, qs: Sequence[float] = (50, 95)
) -> dict[float, float | None]:
    """Percentiles of ``duration_ms`` over one provider's decided attempts in the period: succeeded, failed or
    cut by the request's deadline, the attempts :func:`daily_attempt_totals` counts in its ``total`` and
    ``avgElapsedMs`` (QA: the percentiles left the cut ones out, so a hanging provider's p95 hid them)."""
    sql = (
        "SELECT duration_ms AS v FROM attempts WHERE provider = ? AND started_at >= ? AND started_at < ?"
        f" AND (outcome IN {_DECIDED} OR {_CUT_BY_DEADLINE}) AND duration_ms IS NOT NULL"
    )
    return _ranked_percentiles(db, sql, (provider, since, until), qs)


def answered_request_totals(db: LogDB, *, since: float, until: float) -> dict[str, Any]:
    """Answered requests created in ``[since, until)``: success, failed, and mean ``elapsed_ms`` (None if none).
    A request a crash ended (:data:`INTERRUPTED`) is none of them: no one knows whether it was answered."""
    row = db.query(
        f"SELECT {_count_if('status', 'success')} AS success, {_count_if('status', 'failed')} AS failed,"
        " AVG(elapsed_ms) AS avg_elapsed_ms FROM requests WHERE created_at >= ? AND created_at < ?"
        f" AND status IN {_ANSWERED} AND NOT {INTERRUPTED_REQUEST}",
        (since, until),
    )[0]
    avg = row["avg_elapsed_ms"]
    return {"success": int(row["success"]), "failed": int(row["failed"]), "avg_elapsed_ms": avg}


def decided_attempts_by_provider(db: LogDB, *, since: float, until: float) -> dict[str, dict[str, int]]:
    """Per provider, its attempts started in ``[since, until)`` that succeeded or failed: ``{success, failed}``.
    An attempt the request's deadline cut (cancelled, class ``timeout``) counts as failed: a provider that
    hangs longer than the deadline has no other kind."""
    rows = db.query(
        f"SELECT provider, {_count_if('outcome', 'success')} AS success,"
        f" SUM(CASE WHEN outcome = 'failed' OR {_CUT_BY_DEADLINE} THEN 1 ELSE 0 END) AS failed FROM attempts"
        f" WHERE started_at >= ? AND started_at < ? AND (outcome IN {_DECIDED} OR {_CUT_BY_DEADLINE})"
        " GROUP BY provider ORDER BY provider",
        (since, until),
    )
    return {r["provider"]: {"success": int(r["success"]), "failed": int(r["failed"])} for r in rows}
