"""The log database: every request and attempt, breaker state and config versions (SQLite by default).

SQL lives only in this package; everything crossing its boundary is a plain Python type, so a PostgreSQL
backend can sit behind the same interface.
"""

from __future__ import annotations

from .breaker_store import SQLiteBreakerStore
from .db import LogDB
from .migrations import MIGRATIONS
from .queries import attempts_for, percentile, provider_stats, recent_requests, request_summary

__all__ = [
    "MIGRATIONS",
    "LogDB",
    "SQLiteBreakerStore",
    "attempts_for",
    "percentile",
    "provider_stats",
    "recent_requests",
    "request_summary",
]
