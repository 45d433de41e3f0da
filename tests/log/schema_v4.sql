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
, retry_after_ms INTEGER);

CREATE INDEX attempts_provider_started_at ON attempts (provider, started_at);

CREATE INDEX attempts_request_id ON attempts (request_id);

CREATE INDEX attempts_started_at ON attempts (started_at);

CREATE TABLE breaker_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    provider TEXT NOT NULL,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL
);

CREATE INDEX breaker_events_provider ON breaker_events (provider, id);

CREATE TABLE breaker_state (
    provider TEXT PRIMARY KEY,
    record TEXT NOT NULL,               -- JSON of imagegen_core.breaker.BreakerRecord
    updated_at REAL NOT NULL
);

CREATE TABLE config_versions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    source TEXT NOT NULL,
    document TEXT NOT NULL              -- JSON runtime config document
);

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
, attribution TEXT);

CREATE INDEX requests_created_at ON requests (created_at);

CREATE INDEX requests_status ON requests (status, created_at);

CREATE TABLE schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at REAL NOT NULL
);

