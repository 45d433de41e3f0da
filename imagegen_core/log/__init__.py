"""The log database: every request and attempt, breaker state and config versions.

SQLite by default (one file under ``IMAGEGEN_HOME``); PostgreSQL when ``IMAGEGEN_DATABASE_URL`` is a
``postgresql://`` URL, so that several machines share one log, one runtime config and one breaker state.
SQL lives only in this package; everything crossing its boundary is a plain Python type.
"""

from __future__ import annotations

from .breaker_store import LogBreakerStore, SQLiteBreakerStore
from .db import LogDB, open_log
from .migrations import MIGRATIONS
from .queries import attempts_for, percentile, provider_stats, recent_requests, request_summary

__all__ = [
    "MIGRATIONS",
    "LogBreakerStore",
    "LogDB",
    "SQLiteBreakerStore",
    "attempts_for",
    "open_log",
    "percentile",
    "provider_stats",
    "recent_requests",
    "request_summary",
]
