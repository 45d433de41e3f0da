"""Requests a killed process left ``running`` are closed: by the log's ``end_abandoned_requests`` and by every
API server, at start and periodically; only rows older than any request can run (another live process on a
shared PostgreSQL log has young ``running`` rows that must stay so).

Regression (QA, kill -9 of ``serve``): rows stayed ``running`` for ever, even one whose client got success.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

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
