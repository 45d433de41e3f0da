"""The log database: one interface over SQLite (the embedded default) and PostgreSQL (shared by machines).

``LogDB(path)`` opens a SQLite file; ``LogDB.from_url(url)`` (or :func:`open_log` from settings) picks the
backend from ``IMAGEGEN_DATABASE_URL``: ``sqlite:///path`` or ``postgresql://user:password@host:port/db``.
Everything above this class — the write API in :mod:`.records`, the queries, the breaker store, stats — is
the same code for both; the differences live in :mod:`.dialect` (SQL spelling) and the backend modules
(connections, locking, error translation).

Migrations are applied on first use, all in one transaction that every other opener waits for: SQLite's
``BEGIN IMMEDIATE``, or a PostgreSQL advisory lock. ``migrate=False`` only inspects: a log whose schema is not
this imagegen's is refused at :meth:`LogDB.open` (and by its writes) with what to run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LogDatabaseBusy, LogDatabaseError
from .backend import Backend, ItemScope, Tx, make_backend
from .breaker_store import LogBreakerStore
from .dialect import Dialect
from .migrations import BOOTSTRAP_SQL, MIGRATIONS, split_statements
from .records import CONFIG_VERSIONS_NEWEST_FIRST, LogRecords, RowStep, decoded_versions
from .trails import RequestTrails, Statement

if TYPE_CHECKING:
    from ..settings import Settings

#: The advisory-lock name migrations run under (PostgreSQL); SQLite's write lock covers it by itself.
_MIGRATE_LOCK = "imagegen.migrate"
_log = logging.getLogger("imagegen.log")


class LogDB(LogRecords):
    """The log DB at ``target``: a SQLite file path, ``sqlite:///path`` or a ``postgresql://`` URL.

    Opens lazily on first use; :meth:`open` does it eagerly (and surfaces a bad path or an unreachable
    server at once). Usable as a context manager, which releases every connection on exit.
    """

    def __init__(self, target: Path | str, *, migrate: bool = True) -> None:
        self.backend: Backend = make_backend(target)
        self._auto_migrate = migrate
        self._lock = threading.Lock()
        self._ready = False
        #: How many times the database was found deleted or replaced (SQLite): the generation of the file now.
        self._file_generation = 0
        self._trails = RequestTrails()
        #: With ``migrate=False``: why this imagegen cannot use the log's rows (see :meth:`_unusable_schema`).
        self._schema_gap: str | None = None

    @classmethod
    def from_url(cls, url: str, *, migrate: bool = True) -> LogDB:
        """The log at a database URL (``sqlite:///path`` or ``postgresql://…``)."""
        return cls(url, migrate=migrate)

    @property
    def path(self) -> Path | None:
        """The SQLite file, or None on PostgreSQL."""
        return self.backend.path

    @property
    def label(self) -> str:
        """Where the log is, safe to show: the file, or the URL without its password."""
        return self.backend.label

    @property
    def reads_never_wait(self) -> bool:
        """Whether a read may run on an event loop in place (SQLite in WAL mode), not off it (PostgreSQL)."""
        return self.backend.reads_never_wait

    @property
    def dialect(self) -> Dialect:
        """The SQL spelling of this backend (for the query modules in ``log/``)."""
        return self.backend.dialect

    # -- connections ------------------------------------------------------------------------------------

    def open(self) -> LogDB:
        """Connect and apply pending migrations. Idempotent. With ``migrate=False``, a schema this imagegen cannot
        use (not migrated to its version, or newer) is refused here, saying what to run, rather than by whichever
        statement first meets a missing column; inspecting (:meth:`schema_version`, :meth:`migrate`, …) needs no
        ``open()`` and works on any schema."""
        self._ensure_usable()
        return self

    def close(self) -> None:
        """Release every connection. A later call reopens lazily."""
        self.backend.close()

    def __enter__(self) -> LogDB:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_ready(self) -> None:
        # The check too under the lock (no I/O but a stat once a second): the thread that finds the file replaced
        # makes the new one while the others wait. They went on, and their connections, renewed, met the new file
        # before its tables were made ("no such table: breaker_state", seen with a request under way).
        with self._lock:
            if self._ready:
                if not self.backend.replaced():
                    return
                _log.warning(
                    "log database %s was deleted or replaced under this process: writing to the file there now"
                    " (made anew with its tables if it was deleted, and the rows of the requests under way written"
                    " to it again); what was written before is in the file removed",
                    self.label,
                )
                self._file_generation += 1
                self._ready = False
            self.backend.open()
            if self._auto_migrate:
                try:
                    self.migrate()
                except BaseException:
                    # Unusable (a newer schema, say): release the connections now, not whenever a pool
                    # left behind is collected, possibly in one of its own threads.
                    self.backend.close()
                    raise
            else:
                self._schema_gap = self._unusable_schema()
            self._ready = True

    def _ensure_usable(self) -> None:
        """:meth:`_ensure_ready`, then refuse a schema this imagegen cannot use (``migrate=False`` only)."""
        self._ensure_ready()
        if self._schema_gap is not None:
            raise LogDatabaseError(self._schema_gap)

    def _unusable_schema(self) -> str | None:
        """Why this imagegen cannot use the log's rows, opened without migrating (a log of an older schema
        opened, wrote rows, then failed at some later statement with "no such column"), saying what to run; None
        when every migration is applied. One read, as a start with migrations does."""
        known = max(version for version, _, _ in MIGRATIONS)
        applied = self._versions_applied()
        if applied and max(applied) > known:
            return _newer_schema(self.label, max(applied), known)
        if set(applied) >= {version for version, _, _ in MIGRATIONS}:
            return None
        found = max(applied, default=0)
        return (
            f"log database {self.label}: schema v{found}, this imagegen needs v{known}; run `imagegen db migrate`"
            " (--url names a log other than the environment's), or open it with migrate=True"
        )

    def migrate(self) -> list[int]:
        """Apply pending migrations in one transaction; returns the versions applied now (often none).

        Concurrent first openers queue on the lock, and the later ones find nothing left to do."""
        known = max(version for version, _, _ in MIGRATIONS)
        if self._schema_is_current(known):
            # The usual case, answered by a read: no write lock, so opening the log does not wait for (or fail
            # on) another process that holds SQLite's write lock; the rows themselves wait in the log writer.
            return []
        applied_now: list[int] = []
        with self.backend.transaction(lock=_MIGRATE_LOCK, action="migrate") as tx:
            tx.execute(self.dialect.ddl(BOOTSTRAP_SQL))
            applied = {int(row["version"]) for row in tx.execute("SELECT version FROM schema_migrations")}
            if applied and max(applied) > known:
                raise LogDatabaseError(_newer_schema(self.label, max(applied), known))
            if not applied and list(tx.execute(self.dialect.table_exists_sql(), ("requests",))):
                raise LogDatabaseError(unversioned_tables(self.label))  # the whole transaction rolled back
            for version, name, sql in MIGRATIONS:
                if version in applied:
                    continue
                for statement in split_statements(self.dialect.ddl(sql)):
                    tx.execute(statement)
                tx.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, time.time()),
                )
                applied_now.append(version)
        self.backend.prepare_search()
        self._schema_gap = None  # migrated: usable now, even opened with migrate=False
        return applied_now

    def _schema_is_current(self, known: int) -> bool:
        """Whether every migration is applied already, read without a write transaction; raises for a schema
        newer than this imagegen."""
        applied = set(self._versions_applied())
        if not applied:
            return False
        if max(applied) > known:
            raise LogDatabaseError(_newer_schema(self.label, max(applied), known))
        return applied >= {version for version, _, _ in MIGRATIONS}

    # -- the three primitives of log/ -------------------------------------------------------------------

    @contextmanager
    def transaction(self, *, lock: str | None = None) -> Iterator[Tx]:
        """A write transaction (rolled back on error); statements use ``?`` placeholders.

        Writers naming the same ``lock`` never interleave, across threads and processes: SQLite's
        ``BEGIN IMMEDIATE`` serialises every writer, PostgreSQL takes an advisory lock of that name.
        For ``log/`` modules only: SQL stays inside this package.
        """
        self._ensure_usable()
        with self.backend.transaction(lock=lock) as tx:
            yield tx

    def change_token(self) -> bytes | None:
        """A token that moves after every committed change to the config versions or a breaker's state, in any
        process on this machine, read without I/O (SQLite; see :mod:`.stamp`). None on PostgreSQL: read then."""
        return self.backend.change_token()

    def note_change(self) -> None:
        """Inside a write that readers may cache: move the change token once it commits. For ``log/`` only."""
        self.backend.note_change()

    @contextmanager
    def batch(self) -> Iterator[ItemScope]:
        """Group the calling thread's writes inside into one transaction where the backend gains from it; each
        ``with scope():`` is undone alone if its body raises. For the log writer (see :class:`.writer.LogWriter`)."""
        self._ensure_usable()
        with self.backend.batch() as scope:
            yield scope

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run a read-only statement (``?`` placeholders) and return plain dict rows. For ``log/`` only.

        Reads work on any schema (the catalog's inspect it), but one that fails on a schema opened with
        ``migrate=False`` and not this imagegen's ("no such column") says so, and what to run."""
        self._ensure_ready()
        try:
            return self.backend.query(sql, params)
        except LogDatabaseBusy:
            raise
        except LogDatabaseError as exc:
            if self._schema_gap is None:
                raise
            raise LogDatabaseError(f"{exc}: {self._schema_gap}") from None

    def _write(self, sql: str, params: Sequence[Any]) -> int:
        """One statement in its own transaction; returns the rows changed."""
        self._ensure_usable()
        return self.backend.write(sql, params)

    def _write_request_row(
        self,
        sql: str,
        params: Sequence[Any],
        *,
        step: RowStep,
        request_id: str | None = None,
        attempt_id: str | None = None,
    ) -> int:
        self._ensure_usable()
        file = self._file_generation
        moved = None if step == "first" else self._trails.moved(file=file, request_id=request_id, attempt_id=attempt_id)
        changed = self.backend.write(sql, params) if moved is None else self._write_after_trail(*moved, (sql, params))
        if step == "first" and request_id is not None:
            self._trails.opened(request_id, (sql, tuple(params)), file=file)
        elif step == "more":
            self._trails.added((sql, tuple(params)), request_id=request_id, attempt_id=attempt_id)
        elif step == "last" and request_id is not None:
            self._trails.ended(request_id)
        return changed

    def _write_after_trail(self, request_id: str, trail: list[Statement], statement: Statement) -> int:
        """``statement`` of a request whose first row went to a file deleted since: its rows so far first, when
        this file has no row of it yet. Looked up at each of its rows, not marked as done: a batch rolled back and
        applied again must write them again too (a lookup by primary key, for these few requests only)."""
        with self.backend.transaction() as tx:
            if not tx.execute("SELECT 1 FROM requests WHERE id = ?", (request_id,)).rows:
                for sql, params in trail:
                    tx.execute(sql, params)
            return tx.execute(*statement).rowcount

    # -- introspection --------------------------------------------------------------------------------------

    def applied_versions(self) -> list[int]:
        """The migrations applied to this database, ascending (none on a blank one)."""
        self._ensure_ready()
        return self._versions_applied()

    def _versions_applied(self) -> list[int]:
        """:meth:`applied_versions`, read as the database stands (no :meth:`_ensure_ready`: it asks this too)."""
        if not self.backend.query(self.dialect.table_exists_sql(), ("schema_migrations",)):
            return []
        return [int(r["version"]) for r in self.backend.query("SELECT version FROM schema_migrations ORDER BY 1", ())]

    def has_unversioned_tables(self) -> bool:
        """Whether the database has a ``requests`` table but no schema version: no imagegen log (another
        program's database), or one whose version table was dropped. Migrating cannot make it one."""
        self._ensure_ready()
        return not self.applied_versions() and bool(self.backend.query(self.dialect.table_exists_sql(), ("requests",)))

    def schema_version(self) -> int:
        """The highest applied migration (0 for a blank database)."""
        applied = self.applied_versions()
        return applied[-1] if applied else 0

    def server_version(self) -> str:
        """The engine and its version, e.g. ``PostgreSQL 15.8``."""
        self._ensure_ready()
        return self.backend.server_version()

    def check_writable(self) -> None:
        """Raise LogDatabaseBusy when the database is known to refuse writes now (a SQLite file made read-only);
        a server database answers that with each write (nothing to check up front)."""
        self._ensure_ready()
        check = getattr(self.backend, "check_writable", None)
        if check is not None:
            check()

    def configs_as_they_stand(self) -> list[tuple[int, Any]]:
        """Every stored config document with its id, newest first, read from the SQLite file as it stands,
        without opening it as usual (see :meth:`~.sqlite.SQLiteBackend.snapshot_query`): what a process starting
        while the file cannot be opened (a read-only mount, a full disk) goes on with. Empty when none is stored
        (the built-in defaults are in force); LogDatabaseError when the file cannot be read this way either, or
        on PostgreSQL (a server that is away cannot be read at all)."""
        snapshot = getattr(self.backend, "snapshot_query", None)
        if snapshot is None:
            raise LogDatabaseError(f"log database {self.label}: no read without a connection on this backend")
        if not snapshot(self.dialect.table_exists_sql(), ("config_versions",)):
            return []
        return decoded_versions(snapshot(CONFIG_VERSIONS_NEWEST_FIRST))

    # -- breakers -------------------------------------------------------------------------------------------

    def breaker_store(self) -> LogBreakerStore:
        """A :class:`~imagegen_core.breaker.BreakerStore` over this database, shared by every process."""
        return LogBreakerStore(self)


def open_log(settings: Settings, *, migrate: bool = True) -> LogDB:
    """The log DB that ``settings`` point at (``IMAGEGEN_DATABASE_URL``, default the SQLite file in
    ``IMAGEGEN_HOME``), not yet connected."""
    return LogDB.from_url(settings.log_database_url, migrate=migrate)


def unversioned_tables(label: str) -> str:
    """The refusal of a database :meth:`LogDB.has_unversioned_tables` (QA: `db check` said "run `imagegen db
    migrate`", which then failed with "table requests already exists")."""
    return (
        f"log database {label} has a requests table but no imagegen schema version: it is not an imagegen log (or"
        " its schema_migrations table was dropped); move it away or choose another path"
    )


def _newer_schema(label: str, found: int, known: int) -> str:
    return f"log database {label} has schema v{found}, newer than this imagegen (v{known}); upgrade imagegen"
