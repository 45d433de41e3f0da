"""Requests a killed process left ``running`` are closed: by the log's ``end_abandoned_requests`` and by every
API server, at start and periodically; only rows older than any request can run (another live process on a
shared PostgreSQL log has young ``running`` rows that must stay so).

Regression (QA, kill -9 of ``serve``): rows stayed ``running`` for ever, even one whose client got success.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from imagegen_core.api import create_app
from imagegen_core.log import LogDB
from imagegen_core.settings import Settings
from tests.api.conftest import live_server
from tests.log.rows import add_request

T0 = 1_700_000_000.0
ERROR = "the process ended before this request finished (crash or kill)"
HOUR = 3600.0  # longer than any request may run (the longest deadline a config allows is 10 minutes)


def _row(db: LogDB, request_id: str) -> dict[str, Any]:
    return db.query("SELECT status, error, finished_at FROM requests WHERE id = ?", (request_id,))[0]


def _outcomes(db: LogDB, request_id: str) -> dict[str, tuple[str, str | None]]:
    rows = db.query("SELECT id, outcome, error FROM attempts WHERE request_id = ?", (request_id,))
    return {r["id"]: (r["outcome"], r["error"]) for r in rows}


def test_old_running_requests_are_failed_and_their_running_attempts_cancelled(logdb: LogDB) -> None:
    add_request(logdb, "old", T0)
    logdb.start_attempt("old-a", request_id="old", provider="fal", attempt=1, hedged=False, started_at=T0)
    logdb.start_attempt("old-b", request_id="old", provider="openai", attempt=1, hedged=True, started_at=T0)
    logdb.finish_attempt("old-b", finished_at=T0 + 2, outcome="failed", failure_class="transient", error="503")
    add_request(logdb, "young", T0 + HOUR - 60)  # another process's request, still under way
    add_request(logdb, "done", T0, "success")

    closed = logdb.end_abandoned_requests(created_before=T0 + HOUR - 600, now=T0 + HOUR)

    assert closed == 1
    assert _row(logdb, "old") == {"status": "failed", "error": ERROR, "finished_at": T0 + HOUR}
    assert _outcomes(logdb, "old") == {"old-a": ("cancelled", ERROR), "old-b": ("failed", "503")}
    assert _row(logdb, "young")["status"] == "running"
    assert _row(logdb, "done") == {"status": "success", "error": None, "finished_at": T0 + 1}
    assert logdb.end_abandoned_requests(created_before=T0 + HOUR - 600, now=T0 + HOUR) == 0  # idempotent


def test_a_real_end_written_later_still_wins(logdb: LogDB) -> None:
    """A process that was only cut off (its last rows spilled through an outage) writes its real end later."""
    add_request(logdb, "late", T0)
    logdb.end_abandoned_requests(created_before=T0 + 1, now=T0 + HOUR)

    logdb.finish_request("late", finished_at=T0 + 3, status="success", url="https://img.example/a.webp")

    assert _row(logdb, "late") == {"status": "success", "error": None, "finished_at": T0 + 3}


def _wait_for_status(db_url: str, request_id: str, unlike: str, timeout_s: float = 15) -> str:
    deadline = time.monotonic() + timeout_s
    while True:  # the server closes them in the background after its start: bounded polling of another thread
        with LogDB.from_url(db_url) as db:
            status = str(_row(db, request_id)["status"])
        if status != unlike or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def test_an_api_server_closes_at_start_what_a_killed_process_left_running(
    db_url: str, settings_factory: Callable[..., Settings]
) -> None:
    now = time.time()
    with LogDB.from_url(db_url) as db:
        add_request(db, "killed", now - HOUR)  # a process killed an hour ago
        add_request(db, "alive", now - 60)  # another server's request under way on the shared log
    app = create_app(settings=settings_factory(IMAGEGEN_DATABASE_URL=db_url))

    with live_server(app):
        assert _wait_for_status(db_url, "killed", unlike="running") == "failed"

    with LogDB.from_url(db_url) as db:
        assert _row(db, "killed")["error"] == ERROR
        assert _row(db, "alive")["status"] == "running"


def _seed_a_crash(db: LogDB, at: float) -> None:
    """One request answered by fal, one with the default image (fal failed), and one a crash ended: its fal
    attempt still running, closed by the sweep (``failed`` request, ``cancelled`` attempt, no times)."""
    for request_id, status, outcome, failure_class in (
        ("won", "success", "success", None),
        ("default", "failed", "failed", "transient"),
    ):
        add_request(db, request_id, at)
        db.start_attempt(
            f"{request_id}-a", request_id=request_id, provider="fal", attempt=1, hedged=False, started_at=at
        )
        db.finish_attempt(
            f"{request_id}-a", finished_at=at + 1, outcome=outcome, failure_class=failure_class, duration_ms=1000
        )
        db.finish_request(request_id, finished_at=at + 2, status=status, elapsed_ms=2000, cost_usd=0.0)
    add_request(db, "crashed", at)
    db.start_attempt("crashed-a", request_id="crashed", provider="fal", attempt=1, hedged=False, started_at=at)
    assert db.end_abandoned_requests(created_before=at + 1, now=at + HOUR) == 1


def test_a_request_a_crash_ended_is_neither_a_default_image_answer_nor_a_lost_race(logdb: LogDB) -> None:
    """QA: the crash sweep's rows counted as answers with the default image (``/admin/stats``'
    ``providers.default``, the console's *Default image*) and their attempts as lost races (``imagegen stats``'
    lost, ``cancelled_rate``); and their NULL times pulled the mean down. They are counted apart, as
    interrupted, on every surface."""
    from datetime import UTC, datetime

    from imagegen_core.alerts import evaluate_alerts
    from imagegen_core.analysis import outcome_rates, provider_summary
    from imagegen_core.config import AlertsConfig
    from imagegen_core.console_stats import stats_view
    from imagegen_core.log.queries import provider_stats, request_summary
    from imagegen_core.stats import Period, period_stats

    _seed_a_crash(logdb, T0)
    day = datetime.fromtimestamp(T0, UTC).date()
    stats = period_stats(logdb, Period(day, day))
    default, fal = stats["providers"]["default"], stats["providers"]["fal"]
    assert (stats["total"], stats["failed"], stats["avgElapsedMs"], default["total"]) == (2, 1, 2000, 1)
    assert (fal["total"], fal["cancelled"], fal["avgElapsedMs"]) == (2, 0, 1000)
    assert (stats["interrupted"], stats["dailyBreakdown"][0]["interrupted"], fal["interrupted"]) == (1, 1, 1)
    assert default["interrupted"] == 0

    summary = request_summary(logdb, since=T0)
    assert (summary["total"], summary["failed"], summary["interrupted"]) == (3, 1, 1)
    [fal_calls] = provider_stats(logdb, since=T0)
    assert (fal_calls["calls"], fal_calls["cancelled"], fal_calls["interrupted"]) == (3, 0, 1)

    rates = outcome_rates(logdb).set_index("provider").loc["fal"]
    assert (rates["cancelled"], rates["cancelled_rate"], rates["interrupted"]) == (0, 0.0, 1)
    fal_summary = provider_summary(logdb).set_index("provider").loc["fal"]
    shares = ["success_rate", "failure_rate", "cancelled_rate", "interrupted_rate"]
    third = pytest.approx(1 / 3)
    assert fal_summary[shares].tolist() == [third, third, 0.0, third]  # the shares add up to one

    totals = stats_view(logdb, range_label="All time", now=T0 + HOUR).totals
    assert (totals["requests"], totals["failed"], totals["interrupted"]) == (3, 1, 1)

    alerts = evaluate_alerts(logdb, AlertsConfig(min_samples=1), now=T0 + 60)
    (error_rate,) = [r for r in alerts["rules"] if r["rule"] == "errorRate"]
    assert (error_rate["value"], error_rate["samples"]) == (0.5, 2)


def test_a_mean_over_rows_without_a_time_is_unknown_not_zero(logdb: LogDB) -> None:
    """``avgElapsedMs`` averages the rows that have a time: None when none has, 0 only for an empty record."""
    from datetime import UTC, datetime, timedelta

    from imagegen_core.stats import Period, period_stats

    add_request(logdb, "untimed", T0)
    logdb.finish_request("untimed", finished_at=T0 + 1, status="success", elapsed_ms=None)
    day = datetime.fromtimestamp(T0, UTC).date()
    stats = period_stats(logdb, Period(day, day + timedelta(days=1)))
    assert (stats["total"], stats["avgElapsedMs"]) == (1, None)
    assert [d["avgElapsedMs"] for d in stats["dailyBreakdown"]] == [None, 0]


def test_the_requests_chart_draws_what_a_crash_ended_apart_from_the_default_image_answers(logdb: LogDB) -> None:
    from imagegen_core.analysis import bucket_requests, load_requests, requests_over_time_chart

    _seed_a_crash(logdb, T0)
    counts = bucket_requests(load_requests(logdb), freq="1D").set_index("status")["requests"].to_dict()
    assert counts == {"success": 1, "failed": 1, "interrupted": 1}
    chart = requests_over_time_chart(load_requests(logdb), freq="1D").to_dict()
    assert "interrupted" in chart["encoding"]["color"]["scale"]["domain"]
