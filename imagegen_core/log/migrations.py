"""The log DB schema as an append-only list of numbered migrations, one list for both backends.

Never edit or reorder an applied migration: add a new ``(version, name, sql)`` at the end, then regenerate the
pinned schemas (``tests/log/schema_vN.sql`` and ``tests/log/schema_postgres_vN.txt``, see
``tests/log/test_schema.py``). The SQL is SQLite's DDL restricted to what PostgreSQL also accepts once
:meth:`~imagegen_core.log.dialect.Dialect.ddl` has translated its few spellings (``REAL``, ``AUTOINCREMENT``);
a new difference gets a translation rule there, not a second migration list. Each SQL string may hold
several statements; :func:`split_statements` cuts them so they run inside one transaction (``executescript``
would commit early). Times are Unix seconds (REAL); money is USD (REAL).
"""

from __future__ import annotations

import sqlite3

#: Created before any migration runs: it records which migrations are applied.
BOOTSTRAP_SQL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at REAL NOT NULL
)
"""

_V1_INITIAL = """
CREATE TABLE requests (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    finished_at REAL,
    status TEXT NOT NULL,               -- running | success | failed | cancelled | rejected
    prompt TEXT NOT NULL,
    keyword TEXT,
    article_id TEXT,
    width INTEGER,
    height INTEGER,
    style TEXT,
    provider TEXT,
    url TEXT,
    storage_key TEXT,
    elapsed_ms INTEGER,
    error TEXT,
    cost_usd REAL NOT NULL DEFAULT 0,
    source TEXT NOT NULL                -- cli | api | python | console ...
);
CREATE INDEX requests_created_at ON requests (created_at);
CREATE INDEX requests_status ON requests (status, created_at);

CREATE TABLE attempts (
    id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    provider TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    hedged INTEGER NOT NULL DEFAULT 0,
    started_at REAL NOT NULL,
    finished_at REAL,
    outcome TEXT NOT NULL DEFAULT 'running',  -- running | success | failed | cancelled | skipped
    failure_class TEXT,
    http_status INTEGER,
    duration_ms INTEGER,
    cost_usd REAL NOT NULL DEFAULT 0,
    error TEXT
);
CREATE INDEX attempts_request_id ON attempts (request_id);
CREATE INDEX attempts_provider_started_at ON attempts (provider, started_at);
CREATE INDEX attempts_started_at ON attempts (started_at);

CREATE TABLE breaker_state (
    provider TEXT PRIMARY KEY,
    record TEXT NOT NULL,               -- JSON of imagegen_core.breaker.BreakerRecord
    updated_at REAL NOT NULL
);

CREATE TABLE breaker_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    provider TEXT NOT NULL,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX breaker_events_provider ON breaker_events (provider, id);

CREATE TABLE config_versions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    source TEXT NOT NULL,
    document TEXT NOT NULL              -- JSON runtime config document
);
"""

_V2_PICKS = """
CREATE TABLE picks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL REFERENCES requests (id),
    provider TEXT NOT NULL,             -- the provider whose image the editor chose
    offered TEXT NOT NULL,              -- JSON list of the providers whose images were offered
    article_id TEXT,
    url TEXT,
    storage_key TEXT,
    picked_at REAL NOT NULL
);
CREATE INDEX picks_picked_at ON picks (picked_at);
CREATE INDEX picks_request ON picks (request_id);
"""

#: A failed attempt's Retry-After hint (the provider's header or body), so that the what-if replay waits as
#: the engine did instead of backing off (``imagegen_core.analysis.racesim``).
_V3_RETRY_AFTER = """
ALTER TABLE attempts ADD COLUMN retry_after_ms INTEGER;
"""

#: The credit a stock photo must be published with (Unsplash's terms), as the JSON of its
#: :class:`~imagegen_core.models.Attribution` with wire names; NULL for every other image and for rows logged
#: before it. Kept with the request so that History can show it when it gives the image to another article.
_V4_CREDIT = """
ALTER TABLE requests ADD COLUMN attribution TEXT;
"""

#: ``(version, name, sql)``, append-only, versions strictly increasing from 1.
MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "initial", _V1_INITIAL),
    (2, "editor picks", _V2_PICKS),
    (3, "attempt retry-after hints", _V3_RETRY_AFTER),
    (4, "stock photo credits", _V4_CREDIT),
]


def split_statements(sql: str) -> list[str]:
    """Cut a multi-statement script into complete statements (SQLite's own tokenizer decides)."""
    statements: list[str] = []
    current = ""
    for line in sql.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements
