"""Read-only questions about the log (CLI ``stats``, the admin API, the console). Plain dicts out.

Percentiles are computed in Python (linear interpolation between closest ranks, like numpy's default) so the
same code serves SQLite and PostgreSQL.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from .db import LogDB

#: A request still ``running`` after this long is presumed lost (crash, killed process).
STALE_AFTER_S = 600.0


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0–100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def provider_stats(db: LogDB, *, since: float) -> list[dict[str, Any]]:
    """Per provider, over finished attempts started at or after ``since`` (skipped ones excluded).

    Keys: provider, calls, successes, success_rate, cancelled, failures (by failure class), p50_ms and p95_ms
    (of successful attempts' duration), cost_usd. Sorted by provider name.
    """
    rows = db.query(
        "SELECT provider, outcome, failure_class, duration_ms, cost_usd FROM attempts"
        " WHERE started_at >= ? AND outcome NOT IN ('running', 'skipped')",
        (since,),
    )
    by_provider: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_provider.setdefault(row["provider"], []).append(row)
    stats = []
    for provider in sorted(by_provider):
        attempts = by_provider[provider]
        durations = [
            float(r["duration_ms"]) for r in attempts if r["outcome"] == "success" and r["duration_ms"] is not None
        ]
        successes = sum(1 for r in attempts if r["outcome"] == "success")
        failures: dict[str, int] = {}
        for r in attempts:
            if r["outcome"] == "failed":
                key = r["failure_class"] or "unknown"
                failures[key] = failures.get(key, 0) + 1
        stats.append(
            {
                "provider": provider,
                "calls": len(attempts),
                "successes": successes,
                "success_rate": successes / len(attempts),
                "cancelled": sum(1 for r in attempts if r["outcome"] == "cancelled"),
                "failures": dict(sorted(failures.items())),
                "p50_ms": percentile(durations, 50),
                "p95_ms": percentile(durations, 95),
                "cost_usd": sum(float(r["cost_usd"] or 0) for r in attempts),
            }
        )
    return stats


def request_summary(
    db: LogDB, *, since: float, now: float | None = None, stale_after_s: float = STALE_AFTER_S
) -> dict[str, Any]:
    """Counts of requests created at or after ``since``.

    Keys: total, success, failed, cancelled, rejected, running (still in progress), incomplete (``running`` for longer
    than ``stale_after_s``: the process most likely died), cost_usd.
    """
    now = time.time() if now is None else now
    rows = db.query(
        "SELECT status, COUNT(*) AS n, SUM(cost_usd) AS cost,"
        " SUM(CASE WHEN status = 'running' AND created_at < ? THEN 1 ELSE 0 END) AS stale"
        " FROM requests WHERE created_at >= ? GROUP BY status",
        (now - stale_after_s, since),
    )
    summary: dict[str, Any] = {"total": 0, "success": 0, "failed": 0, "cancelled": 0, "rejected": 0, "running": 0}
    summary.update(incomplete=0, cost_usd=0.0)
    for row in rows:
        summary["total"] += row["n"]
        summary[row["status"]] = summary.get(row["status"], 0) + row["n"]
        summary["incomplete"] += row["stale"] or 0
        summary["cost_usd"] += float(row["cost"] or 0)
    return summary


def recent_requests(db: LogDB, limit: int = 50) -> list[dict[str, Any]]:
    """The newest requests, newest first, as full rows."""
    return db.query("SELECT * FROM requests ORDER BY created_at DESC, rowid DESC LIMIT ?", (limit,))


def attempts_for(db: LogDB, request_id: str) -> list[dict[str, Any]]:
    """Every attempt of one request in start order; ``hedged`` as a bool."""
    rows = db.query("SELECT * FROM attempts WHERE request_id = ? ORDER BY started_at, attempt, rowid", (request_id,))
    for row in rows:
        row["hedged"] = bool(row["hedged"])
    return rows
