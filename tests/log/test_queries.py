"""Read-only log queries over hand-made rows with known answers, on both backends (SQLite, PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from imagegen_core.log import LogDB, attempts_for, percentile, provider_stats, recent_requests, request_summary
from imagegen_core.log.history import get_request, record_reuse
from imagegen_core.log.queries import (
    change_marker,
    daily_attempt_totals,
    daily_request_totals,
    request_elapsed_percentiles,
)
from tests.log.rows import add_request

T0 = 1_700_000_000.0


@pytest.fixture
def db(logdb: LogDB) -> Iterator[LogDB]:
    yield logdb


def add_attempt(
    db: LogDB,
    attempt_id: str,
    request_id: str,
    provider: str,
    outcome: str,
    *,
    started_at: float = T0,
    duration_ms: int | None = None,
    failure_class: str | None = None,
    cost_usd: float = 0.0,
    attempt: int = 1,
    hedged: bool = False,
) -> None:
    db.start_attempt(
        attempt_id, request_id=request_id, provider=provider, attempt=attempt, hedged=hedged, started_at=started_at
    )
    if outcome != "running":
        db.finish_attempt(
            attempt_id,
            finished_at=started_at + (duration_ms or 0) / 1000,
            outcome=outcome,
            failure_class=failure_class,
            duration_ms=duration_ms,
            cost_usd=cost_usd,
        )


def test_percentile_interpolates_linearly() -> None:
    values = [500.0, 100.0, 300.0, 200.0, 400.0]
    assert percentile(values, 50) == 300
    assert percentile(values, 95) == pytest.approx(480)  # rank 3.8: 400 + 0.8 * 100
    assert percentile(values, 0) == 100 and percentile(values, 100) == 500
    assert percentile([42.0], 95) == 42
    assert percentile([], 50) is None


def test_provider_stats(db: LogDB) -> None:
    add_request(db, "r1", T0)
    for i, ms in enumerate([100, 200, 300, 400, 500]):
        add_attempt(db, f"ok{i}", "r1", "fal", "success", duration_ms=ms, cost_usd=0.003)
    add_attempt(db, "t1", "r1", "fal", "failed", duration_ms=15000, failure_class="timeout")
    add_attempt(db, "t2", "r1", "fal", "failed", duration_ms=20, failure_class="auth")
    add_attempt(db, "t3", "r1", "fal", "failed", duration_ms=20, failure_class="timeout")
    add_attempt(db, "c1", "r1", "fal", "cancelled", duration_ms=50)  # lost to a winner: not fal's failure
    add_attempt(db, "cut", "r1", "fal", "cancelled", duration_ms=2000, failure_class="timeout")  # the deadline
    add_attempt(db, "s1", "r1", "fal", "skipped")  # the breaker refused: not a call
    add_attempt(db, "run", "r1", "fal", "running")  # not finished: not counted yet
    add_attempt(db, "u1", "r1", "unsplash", "success", duration_ms=80)
    add_attempt(db, "old", "r1", "replicate", "success", started_at=T0 - 10, duration_ms=80)

    fal, unsplash = provider_stats(db, since=T0)
    assert fal == {
        "provider": "fal",
        "calls": 10,
        "successes": 5,
        "success_rate": pytest.approx(5 / 9),  # the lost race is not counted, the deadline's cut is
        "cancelled": 1,
        "interrupted": 0,
        "failures": {"auth": 1, "timeout": 3},
        "p50_ms": 300,
        "p95_ms": pytest.approx(480),
        "cost_usd": pytest.approx(0.015),
    }
    assert unsplash["calls"] == 1 and unsplash["p50_ms"] == 80 and unsplash["failures"] == {}


def test_provider_stats_with_no_successes_has_no_percentiles(db: LogDB) -> None:
    add_request(db, "r1", T0)
    add_attempt(db, "a1", "r1", "fal", "failed", failure_class="transient")
    [fal] = provider_stats(db, since=T0)
    assert fal["success_rate"] == 0 and fal["p50_ms"] is None and fal["p95_ms"] is None


def test_a_provider_that_only_lost_races_has_no_success_rate(db: LogDB) -> None:
    """Cancelled because another provider won (or the caller left): no verdict on the provider, not 0 %."""
    add_request(db, "r1", T0)
    add_attempt(db, "lost", "r1", "replicate", "cancelled", duration_ms=900)
    [replicate] = provider_stats(db, since=T0)
    assert (replicate["calls"], replicate["success_rate"], replicate["cancelled"]) == (1, None, 1)


def test_daily_totals_count_an_attempt_the_deadline_cut_as_a_failure(db: LogDB) -> None:
    """``/admin/stats``'s source: a provider that always hangs past the deadline shows failures, not nothing;
    one that lost a race stays ``cancelled``."""
    add_request(db, "r1", T0)
    add_attempt(db, "cut", "r1", "hangs", "cancelled", duration_ms=5000, failure_class="timeout", cost_usd=0.01)
    add_attempt(db, "lost", "r1", "slow", "cancelled", duration_ms=900)
    add_attempt(db, "won", "r1", "fast", "success", duration_ms=300)
    rows = daily_attempt_totals(db, since=T0 - 1, until=T0 + 10)
    assert {(r["provider"], r["outcome"], r["n"]) for r in rows} == {
        ("hangs", "failed", 1),
        ("slow", "cancelled", 1),
        ("fast", "success", 1),
    }


def test_request_summary(db: LogDB) -> None:
    add_request(db, "ok1", T0, "success")
    add_request(db, "ok2", T0, "success")
    add_request(db, "bad", T0, "failed")
    add_request(db, "gone", T0)  # crashed long ago
    add_request(db, "live", T0 + 650)  # still in progress
    add_request(db, "before", T0 - 100, "success")  # outside the period
    db.reject_request(
        "rej", created_at=T0, prompt="", keyword=None, article_id=None, width=None, height=None, style=None,
        source="api", error="prompt: empty",
    )  # fmt: skip
    original = get_request(db, "ok1")
    assert original is not None
    # History's Reuse: not a request, left out of total and cost, counted apart (counted_as_request)
    record_reuse(db, {**original, "url": "https://x/1.webp"}, request_id="reuse", article_id="a-2", at=T0)
    assert request_summary(db, since=T0, now=T0 + 700) == {
        "total": 6,
        "success": 2,
        "failed": 1,
        "cancelled": 0,
        "rejected": 1,
        "offered": 0,
        "running": 2,
        "incomplete": 1,
        "cost_usd": pytest.approx(1.5),
        "reused": 1,
        "interrupted": 0,
        "won": 2,  # every success, without a provider filter
    }


def test_recent_requests_are_newest_first(db: LogDB) -> None:
    for i in range(5):
        add_request(db, f"r{i}", T0 + i)
    rows = recent_requests(db, limit=3)
    assert [r["id"] for r in rows] == ["r4", "r3", "r2"]
    assert rows[0]["status"] == "running" and rows[0]["width"] == 512


def test_attempts_for_one_request_in_start_order(db: LogDB) -> None:
    add_request(db, "r1", T0)
    add_request(db, "r2", T0)
    add_attempt(db, "b", "r1", "fal", "cancelled", started_at=T0 + 2, hedged=True)
    add_attempt(db, "a", "r1", "replicate", "success", started_at=T0 + 1)
    add_attempt(db, "c", "r2", "fal", "success", started_at=T0)
    rows = attempts_for(db, "r1")
    assert [(r["id"], r["hedged"]) for r in rows] == [("a", False), ("b", True)]
    assert attempts_for(db, "missing") == []


def test_the_change_marker_moves_with_every_change_the_stats_count(db: LogDB) -> None:
    """The Provider stats page recomputes only when this marker moves (or its refresh interval ends): a new
    request, a request that finishes, an attempt that starts and an editor's pick each move it; reading
    moves nothing. An empty log has a marker too."""
    marks = [change_marker(db), change_marker(db)]
    add_request(db, "r1", T0)
    marks.append(change_marker(db))
    db.finish_request("r1", finished_at=T0 + 1, status="success", provider="alpha", cost_usd=0.1)
    marks.append(change_marker(db))
    add_attempt(db, "a1", "r1", "alpha", "running", started_at=T0 + 0.5)
    marks.append(change_marker(db))
    db.record_pick(
        "r1", provider="alpha", offered=["alpha"], article_id=None, url=None, storage_key=None, picked_at=T0 + 2
    )
    marks.append(change_marker(db))
    assert marks[0] == marks[1]
    assert len(set(marks[1:])) == len(marks) - 1, marks


def _raced_requests(db: LogDB) -> None:
    """Six requests at T0, each with a known part for fal and replicate (see the test below)."""
    for request_id in ("fal-won", "replicate-won", "fal-skipped", "both-failed", "fal-running"):
        add_request(db, request_id, T0)
    add_attempt(db, "a1", "fal-won", "fal", "success", duration_ms=300, cost_usd=0.01)
    add_attempt(db, "a2", "fal-won", "replicate", "cancelled", duration_ms=300, cost_usd=0.02)
    db.finish_request("fal-won", finished_at=T0 + 1, status="success", provider="fal", cost_usd=0.03)
    add_attempt(db, "b1", "replicate-won", "fal", "cancelled", duration_ms=900)  # lost the race: it did run
    add_attempt(db, "b2", "replicate-won", "replicate", "success", duration_ms=800)
    db.finish_request("replicate-won", finished_at=T0 + 1, status="success", provider="replicate", cost_usd=0.5)
    add_attempt(db, "c1", "fal-skipped", "fal", "skipped")  # its open breaker: fal was never called
    add_attempt(db, "c2", "fal-skipped", "replicate", "success", duration_ms=700)
    db.finish_request("fal-skipped", finished_at=T0 + 1, status="success", provider="replicate", cost_usd=0.5)
    add_attempt(db, "d1", "both-failed", "fal", "failed", duration_ms=100, failure_class="transient")
    add_attempt(db, "d2", "both-failed", "replicate", "failed", duration_ms=100, failure_class="auth")
    db.finish_request("both-failed", finished_at=T0 + 1, status="failed", provider="default", cost_usd=0.0)
    add_attempt(db, "e1", "fal-running", "fal", "running")
    db.reject_request(
        "rejected", created_at=T0, prompt="", keyword=None, article_id=None, width=None, height=None, style=None,
        source="api", error="prompt: empty",
    )  # fmt: skip


def test_a_provider_filter_keeps_the_requests_they_raced_in_and_only_their_calls(db: LogDB) -> None:
    """``imagegen stats --provider``: a request is fal's when fal was called for it (won, lost, failed or still
    running), not when its breaker skipped fal; a rejected request called no one. ``success`` stays the status
    (whoever won), ``won`` counts fal's wins; the per-provider rows are fal's alone."""
    _raced_requests(db)
    everyone = request_summary(db, since=T0, until=T0 + 60, now=T0 + 1)
    fal = request_summary(db, since=T0, until=T0 + 60, now=T0 + 1, providers=["fal"])
    both = request_summary(db, since=T0, until=T0 + 60, now=T0 + 1, providers=["fal", "replicate"])
    counts = ("total", "success", "won", "failed", "rejected", "running")
    assert [everyone[k] for k in counts] == [6, 3, 3, 1, 1, 1]
    assert [fal[k] for k in counts] == [4, 2, 1, 1, 0, 1]
    assert [both[k] for k in counts] == [5, 3, 3, 1, 0, 1]
    assert fal["cost_usd"] == pytest.approx(0.53)  # the requests' whole cost, replicate's part included
    (fal_row,) = provider_stats(db, since=T0, until=T0 + 60, providers=["fal"])
    assert (fal_row["provider"], fal_row["calls"], fal_row["successes"], fal_row["cancelled"]) == ("fal", 3, 1, 1)
    assert fal_row["failures"] == {"transient": 1} and fal_row["cost_usd"] == pytest.approx(0.01)
    assert [r["provider"] for r in provider_stats(db, since=T0, until=T0 + 60)] == ["fal", "replicate"]
    assert provider_stats(db, since=T0 + 1, until=T0 + 60, providers=["fal"]) == []  # the window still applies
    assert request_summary(db, since=T0 + 1, until=T0 + 60, providers=["fal"])["total"] == 0


def _record_statements(db: LogDB) -> list[tuple[str, tuple[Any, ...]]]:
    """The statements ``db.query`` runs from now on, with their parameters (for their ``EXPLAIN QUERY PLAN``)."""
    statements: list[tuple[str, tuple[Any, ...]]] = []
    query = db.query

    def recording(sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        statements.append((sql, tuple(params)))
        return query(sql, params)

    db.query = recording  # type: ignore[method-assign]
    return statements


def test_stats_queries_read_their_window_through_an_index(tmp_path: Path) -> None:
    """SQLite's plan for every statement ``imagegen stats`` runs, with and without a provider filter: each reads
    the window's rows through an index on its time column (``created_at``; for the attempts, one provider's range
    of ``(provider, started_at)`` at a time, the providers found by a skip scan of that index), never a scan of a
    whole table, and the filter's check that a provider raced in a request looks its attempts up by
    ``request_id``."""
    with LogDB(tmp_path / "log.db") as db:
        _raced_requests(db)
        query = db.query
        statements = _record_statements(db)
        for providers in (None, ["fal"]):
            request_summary(db, since=T0, until=T0 + 60, now=T0, providers=providers)
            provider_stats(db, since=T0, until=T0 + 60, providers=providers)
        plans = [[row["detail"] for row in query(f"EXPLAIN QUERY PLAN {sql}", params)] for sql, params in statements]
    for plan in plans:
        assert not any(step.startswith(("SCAN requests", "SCAN attempts")) for step in plan), plan
    summaries = [plan for plan, (sql, _) in zip(plans, statements, strict=True) if "FROM requests" in sql]
    assert len(summaries) == 2
    for plan in summaries:
        assert "SEARCH requests USING INDEX requests_created_at (created_at>? AND created_at<?)" in plan
    assert "SEARCH attempts USING INDEX attempts_request_id (request_id=?)" in summaries[1]
    windows = [plan for plan, (sql, _) in zip(plans, statements, strict=True) if "started_at >= ?" in sql]
    assert len(windows) == 2 + 1  # one statement per provider: fal and replicate, then fal alone
    for plan in windows:
        assert any("attempts_provider_started_at (provider=? AND started_at>? AND started_at<?)" in s for s in plan)


def test_admin_stats_filtered_queries_read_their_window_through_an_index(tmp_path: Path) -> None:
    """SQLite's plan for the statements ``GET /admin/stats?provider=…`` adds a filter to (the daily request and
    attempt totals, the requests' percentiles): the window through an index on ``created_at``, the attempts through
    ``(provider, started_at)``, the raced-in check by ``request_id``; never a scan of a whole table. And they
    count what ``request_summary`` counts for the same filter: the requests fal raced in, and the ones it won."""
    with LogDB(tmp_path / "log.db") as db:
        _raced_requests(db)
        query = db.query
        statements = _record_statements(db)
        days = daily_request_totals(db, since=T0, until=T0 + 60, providers=["fal"])
        attempts = daily_attempt_totals(db, since=T0, until=T0 + 60, providers=["fal"])
        percentiles = request_elapsed_percentiles(db, since=T0, until=T0 + 60, providers=["fal"])
        counted = len(statements)
        summary = request_summary(db, since=T0, until=T0 + 60, now=T0, providers=["fal"])
        plans = [[row["detail"] for row in query(f"EXPLAIN QUERY PLAN {sql}", params)] for sql, params in statements]
    for plan in plans[:counted]:
        assert not any(step.startswith("SCAN") for step in plan), plan
    for plan in (plans[0], plans[2]):  # requests_created_at, or requests_status (status=? AND created_at>? …)
        assert any(s.startswith("SEARCH requests USING INDEX") and "created_at>? AND created_at<?" in s for s in plan)
    assert "SEARCH attempts USING INDEX attempts_request_id (request_id=?)" in plans[0]
    assert any("attempts_provider_started_at (provider=? AND started_at>? AND started_at<?)" in s for s in plans[1])
    assert "SEARCH attempts USING INDEX attempts_request_id (request_id=?)" in plans[2]
    by_status = {row["status"]: row for row in days}
    assert (by_status["success"]["n"], by_status["success"]["won"]) == (summary["success"], summary["won"])
    assert by_status["failed"]["n"] == summary["failed"]
    assert {row["provider"] for row in attempts} == {"fal"}
    assert percentiles[50] is None  # the rows above have no elapsed time
