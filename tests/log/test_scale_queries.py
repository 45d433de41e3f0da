"""The log's read paths rewritten to hold up on a year of log (bench/log_scale.py) answer what a straightforward
reference answers, on a generated log with its edge cases, on both backends; and, on SQLite, their plans read
through the indexes they rely on instead of scanning the attempts.

The reference is the plain reading: every row into Python, then counted (the code these queries replaced did
exactly that). Edge cases in the log: a provider whose calls all failed, requests with no attempt (rejected,
reused), attempts exactly at a window's bounds, crash-ended (interrupted) attempts, a deadline's cut, breaker
skips and running attempts (out of the counts), failure classes NULL or empty (``unknown``), successes without a
duration, a provider with one success, equal durations, and windows with nothing in them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from imagegen_core.log import LogDB, percentile, provider_stats
from imagegen_core.log.analysis_queries import request_rows
from imagegen_core.log.history import logged_providers
from imagegen_core.log.queries import attempt_duration_percentiles, request_elapsed_percentiles
from imagegen_core.log.records import ABANDONED_ERROR

T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC
DAY_S = 86_400.0
PROVIDERS = ("replicate", "fal", "unsplash", "broken")  # broken: every call failed


def _requests_and_attempts(seed: int = 7) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Ten days of seeded rows, with the edge cases of the module's docstring."""
    rng = random.Random(seed)
    requests: list[tuple[Any, ...]] = []
    attempts: list[tuple[Any, ...]] = []
    for i in range(600):
        rid = f"r{i:04d}"
        created = T0 + rng.uniform(0, 10 * DAY_S)
        status = rng.choice(("success", "success", "success", "failed", "rejected", "reused", "offered"))
        if i == 0:
            created = T0 + 2 * DAY_S  # exactly at a bound
        requests.append((rid, created, status, rng.choice((800, 1200, 1200, 2500, None)), 0.01))
        if status in ("rejected", "reused"):
            continue  # no attempt
        for n, provider in enumerate(rng.sample(PROVIDERS, rng.randint(1, 4))):
            started = created if n == 0 or i == 0 else created + rng.uniform(0, 5)
            outcome = rng.choice(("success", "failed", "cancelled", "cancelled", "skipped", "running"))
            failure_class = error = None
            duration: int | None = rng.choice((300, 500, 500, 700, 1200, 2400, None))
            if provider == "broken":
                outcome = "failed"
            if outcome == "failed":
                failure_class = rng.choice(("transient", "timeout", "auth", None, ""))
            elif outcome == "cancelled" and rng.random() < 0.2:
                failure_class = "timeout"  # the deadline's cut: a failure
            elif outcome == "cancelled" and rng.random() < 0.1:
                error, duration = ABANDONED_ERROR, None  # a crash ended it
            attempts.append(
                (
                    f"{rid}-{n}",
                    rid,
                    provider,
                    1,
                    started,
                    outcome,
                    failure_class,
                    duration,
                    rng.choice((0.0, 0.003)),
                    error,
                )
            )
    # a provider with one success, at the last moment of the log
    requests.append(("r-last", T0 + 10 * DAY_S, "success", 900, 0.0))
    attempts.append(("r-last-0", "r-last", "stability", 1, T0 + 10 * DAY_S, "success", None, 900, 0.04, None))
    return requests, attempts


@pytest.fixture
def db(logdb: LogDB) -> Iterator[LogDB]:
    requests, attempts = _requests_and_attempts()
    with logdb.transaction() as tx:
        tx.executemany(
            "INSERT INTO requests (id, created_at, finished_at, status, prompt, elapsed_ms, cost_usd, source)"
            " VALUES (?, ?, ?, ?, 'p', ?, ?, 'python')",
            [(r[0], r[1], r[1] + 1, r[2], r[3], r[4]) for r in requests],
        )
        tx.executemany(
            "INSERT INTO attempts (id, request_id, provider, attempt, started_at, outcome, failure_class,"
            " duration_ms, cost_usd, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            attempts,
        )
    yield logdb


def reference_provider_stats(
    db: LogDB, *, since: float, until: float | None, providers: Sequence[str] | None
) -> list[dict[str, Any]]:
    """Every attempt read, then counted in Python (what ``provider_stats`` did before it counted in SQL)."""
    rows = [
        r
        for r in db.query("SELECT * FROM attempts")
        if r["started_at"] >= since
        and (until is None or r["started_at"] < until)
        and (providers is None or r["provider"] in providers)
        and r["outcome"] not in ("running", "skipped")
    ]
    out = []
    for provider in sorted({r["provider"] for r in rows}):
        mine = [r for r in rows if r["provider"] == provider]
        failures: dict[str, int] = {}
        cancelled = interrupted = 0
        for r in mine:
            if r["outcome"] == "failed" or (r["outcome"] == "cancelled" and r["failure_class"] == "timeout"):
                failures[r["failure_class"] or "unknown"] = failures.get(r["failure_class"] or "unknown", 0) + 1
            elif r["outcome"] == "cancelled" and r["error"] == ABANDONED_ERROR:
                interrupted += 1
            elif r["outcome"] == "cancelled":
                cancelled += 1
        successes = sum(r["outcome"] == "success" for r in mine)
        durations = [
            float(r["duration_ms"]) for r in mine if r["outcome"] == "success" and r["duration_ms"] is not None
        ]
        decided = successes + sum(failures.values())
        out.append(
            {
                "provider": provider,
                "calls": len(mine),
                "successes": successes,
                "success_rate": successes / decided if decided else None,
                "cancelled": cancelled,
                "interrupted": interrupted,
                "failures": dict(sorted(failures.items())),
                "p50_ms": percentile(durations, 50),
                "p95_ms": percentile(durations, 95),
                "cost_usd": pytest.approx(sum(float(r["cost_usd"]) for r in mine), rel=1e-12, abs=1e-12),
            }
        )
    return out


#: (since, until) windows: the whole log, days with bounds on rows, an empty window before the log and after it,
#: a window ending exactly where a row starts (left out) and one starting there (kept).
WINDOWS = [
    (T0 - DAY_S, None),
    (T0, T0 + 10 * DAY_S + 1),
    (T0 + 2 * DAY_S, T0 + 3 * DAY_S),
    (T0 + DAY_S, T0 + 2 * DAY_S),
    (T0 - 5 * DAY_S, T0 - DAY_S),
    (T0 + 11 * DAY_S, T0 + 12 * DAY_S),
    (T0 + 10 * DAY_S, None),
    (T0 + 3.5 * DAY_S, T0 + 3.5 * DAY_S + 60),
]


@pytest.mark.parametrize("providers", [None, ["broken"], ["fal", "stability"], ["nobody"], []])
def test_provider_stats_counts_as_the_reference_in_every_window(db: LogDB, providers: list[str] | None) -> None:
    """Per provider, every count, the percentiles and the cost are those of the plain reading, for each window
    and provider filter: empty windows give no row, the always-failing provider a success rate of 0 and no
    percentile, the single success its own duration as p50 and p95."""
    for since, until in WINDOWS:
        found = provider_stats(db, since=since, until=until, providers=providers)
        assert found == reference_provider_stats(db, since=since, until=until, providers=providers), (since, until)
    whole = {r["provider"]: r for r in provider_stats(db, since=T0 - DAY_S)}
    assert whole["broken"]["success_rate"] == 0 and whole["broken"]["p50_ms"] is None
    assert whole["stability"]["p50_ms"] == whole["stability"]["p95_ms"] == 900
    assert provider_stats(db, since=T0 + 11 * DAY_S) == []


def test_logged_providers_lists_every_name_of_the_attempts_sorted(db: LogDB) -> None:
    expected = sorted({str(r["provider"]) for r in db.query("SELECT provider FROM attempts")})
    assert logged_providers(db) == expected == ["broken", "fal", "replicate", "stability", "unsplash"]


def test_logged_providers_of_an_empty_log_is_empty(logdb: LogDB) -> None:
    assert logged_providers(logdb) == []


@pytest.mark.parametrize("providers", [None, ["broken"], ["fal", "unsplash"], ["stability"]])
def test_request_rows_keeps_the_requests_the_providers_raced_in(db: LogDB, providers: list[str] | None) -> None:
    """The requests of the range in which one of ``providers`` made an attempt that was not a breaker's skip
    (requests with no attempt never), in creation order, as the plain reading finds them."""
    raced: dict[str, set[str]] = {}
    for r in db.query("SELECT request_id, provider, outcome FROM attempts"):
        if r["outcome"] != "skipped":
            raced.setdefault(r["request_id"], set()).add(r["provider"])
    for since, until in WINDOWS:
        found = [r["id"] for r in request_rows(db, since=since, until=until, providers=providers)]
        every = sorted(
            (r["created_at"], r["id"])
            for r in db.query("SELECT id, created_at FROM requests")
            if r["created_at"] >= since and (until is None or r["created_at"] < until)
        )
        expected = [rid for _, rid in every if providers is None or raced.get(rid, set()) & set(providers)]
        assert found == expected, (since, until)


def test_period_percentiles_are_those_of_every_value(db: LogDB) -> None:
    """``GET /admin/stats``' p50/p95: of the answered requests' times, and of each provider's decided attempts
    (succeeded, failed, or cut by the deadline), as :func:`percentile` over every value."""
    for since, until in [(T0 - DAY_S, T0 + 11 * DAY_S), (T0 + 2 * DAY_S, T0 + 3 * DAY_S), (T0 - 5 * DAY_S, T0)]:
        elapsed = [
            float(r["elapsed_ms"])
            for r in db.query("SELECT * FROM requests")
            if since <= r["created_at"] < until and r["status"] in ("success", "failed") and r["elapsed_ms"] is not None
        ]
        found = request_elapsed_percentiles(db, since=since, until=until, qs=(0, 50, 95, 100))
        assert found == {q: percentile(elapsed, q) for q in (0, 50, 95, 100)}
        for provider in (*PROVIDERS, "stability", "nobody"):
            durations = [
                float(r["duration_ms"])
                for r in db.query("SELECT * FROM attempts")
                if r["provider"] == provider
                and since <= r["started_at"] < until
                and (
                    r["outcome"] in ("success", "failed")
                    or (r["outcome"], r["failure_class"]) == ("cancelled", "timeout")
                )
                and r["duration_ms"] is not None
            ]
            found = attempt_duration_percentiles(db, provider, since=since, until=until)
            assert found == {50: percentile(durations, 50), 95: percentile(durations, 95)}, provider


# -- plans (SQLite: the default log) -------------------------------------------------------------------------


class _PlanRecorder:
    """Records each SELECT a LogDB runs, and gives its EXPLAIN QUERY PLAN."""

    def __init__(self, db: LogDB, monkeypatch: pytest.MonkeyPatch) -> None:
        self.db = db
        self.statements: list[tuple[str, Sequence[Any]]] = []
        run = db.query

        def query(sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
            self.statements.append((sql, params))
            return run(sql, params)

        monkeypatch.setattr(db, "query", query)
        self._run = run

    def plans(self) -> list[str]:
        return [
            "\n".join(str(row["detail"]) for row in self._run(f"EXPLAIN QUERY PLAN {sql}", params))
            for sql, params in self.statements
        ]


@pytest.fixture
def sqlite_db(tmp_path: Any) -> Iterator[LogDB]:
    with LogDB(tmp_path / "log.db") as db:
        yield db


def test_logged_providers_skips_through_the_provider_index(sqlite_db: LogDB, monkeypatch: pytest.MonkeyPatch) -> None:
    """One look-up in the ``(provider, started_at)`` index per name, never a scan of the attempts or of the whole
    index (``SELECT DISTINCT`` read all four million entries of a year of log)."""
    recorder = _PlanRecorder(sqlite_db, monkeypatch)
    logged_providers(sqlite_db)
    (plan,) = recorder.plans()
    assert "SEARCH attempts USING COVERING INDEX attempts_provider_started_at (provider>?)" in plan
    assert "SCAN attempts" not in plan


def test_provider_stats_reads_each_provider_through_its_index_range(
    sqlite_db: LogDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each statement reads one provider's range of the ``(provider, started_at)`` index: no scan of the attempts,
    and no sort of the whole window at once (a ``GROUP BY provider`` over a year's four million attempts took 12 s)."""
    sqlite_db.start_request(
        "r", created_at=T0, prompt="p", keyword=None, article_id=None, width=1, height=1, style=None, source="python"
    )
    sqlite_db.start_attempt("a", request_id="r", provider="fal", attempt=1, hedged=False, started_at=T0)
    sqlite_db.finish_attempt("a", finished_at=T0 + 1, outcome="success", duration_ms=1000)
    recorder = _PlanRecorder(sqlite_db, monkeypatch)
    provider_stats(sqlite_db, since=T0 - DAY_S, until=T0 + DAY_S)
    reads = [
        plan
        for plan, (sql, _) in zip(recorder.plans(), recorder.statements, strict=True)
        if "WITH RECURSIVE" not in sql
    ]
    assert reads
    for plan in reads:
        assert "USING INDEX attempts_provider_started_at (provider=? AND started_at>? AND started_at<?)" in plan, plan
        assert "SCAN attempts" not in plan


def test_request_rows_with_providers_looks_up_each_request_s_attempts(
    sqlite_db: LogDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider filter reads the attempts of the range's requests through the ``request_id`` index, not every
    attempt those providers ever made (``id IN (SELECT request_id …)``: 17 s for 30 days of a year of log)."""
    recorder = _PlanRecorder(sqlite_db, monkeypatch)
    request_rows(sqlite_db, since=T0, until=None, providers=["fal"])
    (plan,) = recorder.plans()
    assert "SEARCH requests USING INDEX requests_created_at" in plan
    assert "SEARCH attempts USING INDEX attempts_request_id (request_id=?)" in plan
    assert "attempts_provider_started_at" not in plan
