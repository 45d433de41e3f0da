"""The SQLite log database: connection handling, migrations and the write API.

Thread safety: one connection per thread (``threading.local``), so the writer thread and the event-loop
thread never share a cursor and, thanks to WAL, reads never wait for writes. Every write is one short
transaction; multi-statement writes use ``BEGIN IMMEDIATE`` so that two processes queue on the write lock
instead of failing half-way. ``sqlite3`` errors become :class:`LogDatabaseError` here and only here.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import LogDatabaseError
from .breaker_store import SQLiteBreakerStore
from .migrations import BOOTSTRAP_SQL, MIGRATIONS, split_statements

#: How long a writer waits for another process's write lock before giving up.
BUSY_TIMEOUT_MS = 5_000
#: ``cancelled``: the caller gave up (task cancelled) before the race ended.
_FINISHED_REQUEST_STATUSES = frozenset({"success", "failed", "cancelled"})


def _str_or_none(value: object) -> str | None:
    """Enum members (StrEnum) are stored as their plain string value."""
    return None if value is None else str(value)


class LogDB:
    """The log DB at ``path`` (a SQLite file, created with its folder on first use).

    Opens lazily on first use; :meth:`open` does it eagerly (and surfaces a bad path at once).
    Usable as a context manager, which closes every thread's connection on exit.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._local = threading.local()
        #: Every open connection with the thread that owns it.
        self._connections: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._migrated = False

    # -- connections ------------------------------------------------------------------------------------

    def open(self) -> LogDB:
        """Connect this thread and apply pending migrations. Idempotent."""
        self._conn()
        return self

    def close(self) -> None:
        """Close every thread's connection. A later call reopens lazily."""
        with self._lock:
            connections, self._connections = self._connections, []
            self._local = threading.local()
        for _, conn in connections:
            conn.close()

    def __enter__(self) -> LogDB:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        conn = self._connect()
        if not self._migrated:
            try:
                self._migrate(conn)
            except BaseException:
                conn.close()
                raise
            self._migrated = True
        with self._lock:
            # Threads come and go (Streamlit runs every script run in a new thread): close the connections
            # of threads that have ended, or a long-running process would pile up open files.
            ended = [c for thread, c in self._connections if not thread.is_alive()]
            self._connections = [(t, c) for t, c in self._connections if t.is_alive()]
            self._connections.append((threading.current_thread(), conn))
            self._local.conn = conn
        for stale in ended:
            stale.close()
        return conn

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LogDatabaseError(
                f"cannot create the log folder {self.path.parent}: {exc.strerror or exc}; "
                "set IMAGEGEN_HOME to a writable folder"
            ) from None
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves (the legacy implicit mode would not
            # let us choose BEGIN IMMEDIATE). check_same_thread=False only so close() may run anywhere.
            conn = sqlite3.connect(
                str(self.path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise LogDatabaseError(self._explain(exc, "open")) from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._enable_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")  # safe with WAL; a power loss may drop the last commits
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            conn.close()
            raise LogDatabaseError(self._explain(exc, "open")) from None
        conn.row_factory = sqlite3.Row
        return conn

    @staticmethod
    def _enable_wal(conn: sqlite3.Connection) -> None:
        """Switch to WAL, retrying: SQLite answers BUSY at once here (no busy handler) while another
        process is switching the same fresh file."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _explain(self, exc: sqlite3.Error, action: str) -> str:
        text = str(exc)
        if "not a database" in text:
            return f"log database {self.path} is not a SQLite database; move the file away or choose another path"
        if "unable to open" in text:
            return f"cannot open log database {self.path}: {text}; check that the folder is writable"
        if "locked" in text or "busy" in text:
            return f"log database {self.path} stayed locked by another process for over {BUSY_TIMEOUT_MS} ms"
        return f"log database {self.path}: {action} failed: {text}"

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Apply pending migrations in one IMMEDIATE transaction: a second opener waits, then finds none."""
        known = max(version for version, _, _ in MIGRATIONS)
        with self._transaction(conn, "migrate"):
            conn.execute(BOOTSTRAP_SQL)
            applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            if applied and max(applied) > known:
                raise LogDatabaseError(
                    f"log database {self.path} has schema v{max(applied)}, newer than this imagegen "
                    f"(v{known}); upgrade imagegen"
                )
            for version, name, sql in MIGRATIONS:
                if version in applied:
                    continue
                for statement in split_statements(sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, time.time()),
                )

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection, action: str) -> Iterator[sqlite3.Connection]:
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise LogDatabaseError(self._explain(exc, action)) from None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection inside ``BEGIN IMMEDIATE`` … ``COMMIT`` (rolled back on error).

        For ``log/`` modules only: SQL stays inside this package.
        """
        with self._transaction(self._conn(), "write") as conn:
            yield conn

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run a read-only statement and return plain dict rows. For ``log/`` modules only."""
        conn = self._conn()
        try:
            return [dict(row) for row in conn.execute(sql, params)]
        except sqlite3.Error as exc:
            raise LogDatabaseError(self._explain(exc, "read")) from None

    def _write(self, sql: str, params: Sequence[Any]) -> int:
        """One statement in autocommit mode (its own transaction); returns the rows changed."""
        conn = self._conn()
        try:
            return conn.execute(sql, params).rowcount
        except sqlite3.Error as exc:
            raise LogDatabaseError(self._explain(exc, "write")) from None

    def schema_version(self) -> int:
        """The highest applied migration."""
        rows = self.query("SELECT MAX(version) AS v FROM schema_migrations")
        return int(rows[0]["v"] or 0)

    # -- requests and attempts ----------------------------------------------------------------------------

    def start_request(
        self,
        request_id: str,
        *,
        created_at: float,
        prompt: str,
        keyword: str | None,
        article_id: str | None,
        width: int | None,
        height: int | None,
        style: str | None,
        source: str,
    ) -> None:
        """Insert a request in status ``running``; a crash before :meth:`finish_request` leaves it so."""
        row = (request_id, "running", created_at, None, prompt, keyword, article_id, width, height, style, source)
        self._insert_request((*row, None))

    def reject_request(
        self,
        request_id: str,
        *,
        created_at: float,
        prompt: str,
        keyword: str | None,
        article_id: str | None,
        width: int | None,
        height: int | None,
        style: str | None,
        source: str,
        error: str,
    ) -> None:
        """Record a request refused before any provider was asked (validation): one finished row."""
        row = (request_id, "rejected", created_at, created_at, prompt, keyword, article_id, width, height, style)
        self._insert_request((*row, source, error))

    def _insert_request(self, values: tuple[Any, ...]) -> None:
        self._write(
            "INSERT INTO requests (id, status, created_at, finished_at, prompt, keyword, article_id, width, height,"
            " style, source, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            values,
        )

    def finish_request(
        self,
        request_id: str,
        *,
        finished_at: float,
        status: str,
        provider: str | None = None,
        url: str | None = None,
        storage_key: str | None = None,
        elapsed_ms: int | None = None,
        error: str | None = None,
        cost_usd: float = 0.0,
    ) -> bool:
        """Close a running request as ``success``, ``failed`` or ``cancelled``; False when no such request exists."""
        if status not in _FINISHED_REQUEST_STATUSES:
            raise ValueError(f"status must be one of {sorted(_FINISHED_REQUEST_STATUSES)}, not {status!r}")
        changed = self._write(
            "UPDATE requests SET finished_at = ?, status = ?, provider = ?, url = ?, storage_key = ?,"
            " elapsed_ms = ?, error = ?, cost_usd = ? WHERE id = ?",
            (finished_at, str(status), provider, url, storage_key, elapsed_ms, error, cost_usd, request_id),
        )
        return changed > 0

    def start_attempt(
        self, attempt_id: str, *, request_id: str, provider: str, attempt: int, hedged: bool, started_at: float
    ) -> None:
        """Insert an attempt with outcome ``running`` (its request must exist)."""
        self._write(
            "INSERT INTO attempts (id, request_id, provider, attempt, hedged, started_at, outcome)"
            " VALUES (?, ?, ?, ?, ?, ?, 'running')",
            (attempt_id, request_id, provider, attempt, int(hedged), started_at),
        )

    def finish_attempt(
        self,
        attempt_id: str,
        *,
        finished_at: float,
        outcome: str,
        failure_class: str | None = None,
        http_status: int | None = None,
        duration_ms: int | None = None,
        cost_usd: float = 0.0,
        error: str | None = None,
    ) -> bool:
        """Close an attempt (outcome from :class:`~imagegen_core.models.AttemptOutcome`); False if unknown."""
        changed = self._write(
            "UPDATE attempts SET finished_at = ?, outcome = ?, failure_class = ?, http_status = ?,"
            " duration_ms = ?, cost_usd = ?, error = ? WHERE id = ?",
            (
                finished_at,
                str(outcome),
                _str_or_none(failure_class),
                http_status,
                duration_ms,
                cost_usd,
                error,
                attempt_id,
            ),
        )
        return changed > 0

    def record_pick(
        self,
        request_id: str,
        *,
        provider: str,
        offered: Sequence[str],
        article_id: str | None,
        url: str | None,
        storage_key: str | None,
        picked_at: float,
    ) -> None:
        """An editor chose ``provider``'s image among ``offered`` for the request (the console's Compare)."""
        self._write(
            "INSERT INTO picks (request_id, provider, offered, article_id, url, storage_key, picked_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (request_id, provider, json.dumps(list(offered)), article_id, url, storage_key, picked_at),
        )

    # -- config versions ----------------------------------------------------------------------------------

    def save_config(self, document: dict[str, Any], *, source: str, created_at: float | None = None) -> int:
        """Store a validated runtime config document as a new version; returns its id."""
        text = json.dumps(document, separators=(",", ":"))
        with self.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO config_versions (created_at, source, document) VALUES (?, ?, ?)",
                (time.time() if created_at is None else created_at, source, text),
            )
            return int(cursor.lastrowid or 0)

    def latest_config(self) -> tuple[int, dict[str, Any]] | None:
        """The newest stored document and its id, or None when none was saved."""
        rows = self.query("SELECT id, document FROM config_versions ORDER BY id DESC LIMIT 1")
        return (int(rows[0]["id"]), json.loads(rows[0]["document"])) if rows else None

    def latest_config_id(self) -> int | None:
        """The newest version id only: cheap enough to poll for hot reload."""
        rows = self.query("SELECT MAX(id) AS id FROM config_versions")
        return None if rows[0]["id"] is None else int(rows[0]["id"])

    def config_history(self, limit: int = 20) -> list[tuple[int, float, str]]:
        """``(id, created_at, source)`` of stored versions, newest first."""
        rows = self.query("SELECT id, created_at, source FROM config_versions ORDER BY id DESC LIMIT ?", (limit,))
        return [(int(r["id"]), float(r["created_at"]), str(r["source"])) for r in rows]

    # -- breakers -------------------------------------------------------------------------------------------

    def breaker_store(self) -> SQLiteBreakerStore:
        """A :class:`~imagegen_core.breaker.BreakerStore` over this database."""
        return SQLiteBreakerStore(self)
