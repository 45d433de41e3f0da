"""The PostgreSQL backend: one log, one runtime config and one breaker state shared by several machines.

psycopg 3 with a synchronous :class:`psycopg_pool.ConnectionPool` (the log is called from worker threads,
never awaited). Connections are in autocommit mode: a read is one statement, a write transaction is opened
explicitly. Where SQLite serialises writers with ``BEGIN IMMEDIATE``, this backend takes a transaction-scoped
advisory lock named by the caller (``pg_advisory_xact_lock``): it also covers a row that does not exist yet,
which ``SELECT … FOR UPDATE`` cannot lock, so two processes creating the same breaker never lose a transition.

psycopg is imported only when a PostgreSQL URL is opened (``import imagegen_core`` stays light), and its
exceptions become :class:`LogDatabaseError` here and only here, without the password.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LogDatabaseBusy, LogDatabaseError
from .backend import ItemScope, Result, safe_url, unbatched, url_password
from .dialect import POSTGRES, POSTGRES_UNACCENT, Dialect

_log = logging.getLogger("imagegen.log")

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import DictRow
    from psycopg_pool import ConnectionPool

#: Connections per process: the log writer, the breaker gate's threads and a few readers.
POOL_MAX_SIZE = 10
#: How long a connection attempt, or a wait for a free pooled connection, may take.
CONNECT_TIMEOUT_S = 5
POOL_TIMEOUT_S = 30.0


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_xact_lock`` (the same in every process and version)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


def _configure(conn: psycopg.Connection[Any]) -> None:
    """Per new pooled connection: ``numeric`` (what AVG and SUM of integers yield) comes back as ``float``,
    the type SQLite gives for the same statements, so every query answers alike on both backends."""
    from psycopg.types.numeric import FloatLoader

    conn.adapters.register_loader("numeric", FloatLoader)


class _PostgresTx:
    """A :class:`~.backend.Tx` over one pooled connection inside ``BEGIN`` … ``COMMIT``."""

    def __init__(self, conn: psycopg.Connection[DictRow], dialect: Dialect) -> None:
        self.conn = conn
        self.dialect = dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        cursor = self.conn.execute(self.dialect.sql(sql), tuple(params))
        rows = cursor.fetchall() if cursor.description else []
        return Result(list(rows), cursor.rowcount)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        batch = [tuple(row) for row in rows]
        if batch:
            with self.conn.cursor() as cursor:
                cursor.executemany(self.dialect.sql(sql), batch)


class PostgresBackend:
    """The log in the PostgreSQL database at ``url`` (``postgresql://user:password@host:port/dbname``)."""

    #: Class default; an instance switches to :data:`POSTGRES_UNACCENT` once it sees the extension.
    dialect: Dialect = POSTGRES
    #: Every read is a network round trip (and may wait for a pooled connection).
    reads_never_wait = False

    def __init__(self, url: str) -> None:
        self.url = url
        self.label = safe_url(url)
        self.identity = url
        self.path: Path | None = None
        self._password = url_password(url)
        self._lock = threading.Lock()
        self._pool: ConnectionPool[psycopg.Connection[DictRow]] | None = None

    def open(self) -> None:
        self._get_pool()

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _get_pool(self) -> ConnectionPool[psycopg.Connection[DictRow]]:
        pool = self._pool
        if pool is not None:
            return pool
        import psycopg
        from psycopg.rows import DictRow, dict_row
        from psycopg_pool import ConnectionPool

        with self._lock:
            if self._pool is not None:
                return self._pool
            # One direct connection first: a wrong URL or a server that is down fails now with the server's
            # own reason, where the pool would only keep retrying in the background.
            with self._translated("connect"):
                psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT_S).close()
            self._pool = ConnectionPool(
                self.url,
                connection_class=psycopg.Connection[DictRow],
                kwargs={
                    "autocommit": True,
                    "row_factory": dict_row,
                    "connect_timeout": CONNECT_TIMEOUT_S,
                    "application_name": "imagegen",
                },
                min_size=1,
                max_size=POOL_MAX_SIZE,
                timeout=POOL_TIMEOUT_S,
                configure=_configure,
                # A connection broken by a server restart is replaced when handed out, not failed on.
                check=self._check_or_purge,
                name="imagegen-log",
                open=False,
            )
            self._pool.open()
            self.dialect = self._dialect_of(self._pool)
            return self._pool

    def _dialect_of(self, pool: ConnectionPool[psycopg.Connection[DictRow]]) -> Dialect:
        """:data:`POSTGRES_UNACCENT` where ``unaccent(text)`` can be called (the extension installed in a schema
        on the search path: installed in another one, it is not for us)."""
        with self._translated("read"), pool.connection() as conn:
            row = conn.execute("SELECT to_regprocedure('unaccent(text)') IS NOT NULL AS found").fetchone()
        return POSTGRES_UNACCENT if row and row["found"] else POSTGRES

    def prepare_search(self) -> None:
        """Install ``unaccent`` (a trusted extension: a database owner may) so that history search ignores
        accents as on SQLite. Without the right (a shared server), search stays accent-sensitive: said once."""
        import psycopg

        pool = self._get_pool()
        if self.dialect is POSTGRES_UNACCENT:
            return
        try:
            with pool.connection() as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS unaccent")
        except psycopg.Error as exc:
            _log.info("history search keeps accents significant: %s", self._explain(exc, "create extension unaccent"))
            return
        self.dialect = self._dialect_of(pool)  # installed before in a schema off our search path: still not ours

    def _check_or_purge(self, conn: psycopg.Connection[Any]) -> None:
        """The pool's check of a connection it hands out. When one is broken (the server restarted), every
        other idle one is too: check them all now. Otherwise the pool tries them one by one, sleeping 1, 2, 4,
        8 … s between tries (its anti-busy-loop backoff), and a writer waited out its whole 30 s timeout
        after the server was back (measured: running rows for 28 s after a restart, 100 requests in flight)."""
        from psycopg_pool import ConnectionPool

        try:
            ConnectionPool.check_connection(conn)
        except Exception:
            pool = self._pool
            if pool is not None:
                pool.check()  # discards the broken idle connections and starts replacing them at once
            raise

    @contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            yield
        except PoolTimeout as exc:  # every connection busy (a psycopg.Error too): transient, the writer retries
            raise LogDatabaseBusy(self._explain(exc, action)) from None
        except psycopg.Error as exc:
            raise LogDatabaseError(self._explain(exc, action)) from None

    def _explain(self, exc: Exception, action: str) -> str:
        import psycopg
        from psycopg_pool import PoolTimeout

        # Server messages continue with DETAIL/HINT lines; one line is the contract for errors.
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if self._password:
            text = text.replace(self._password, "***")
        if isinstance(exc, PoolTimeout):
            return (
                f"log database {self.label}: all {POOL_MAX_SIZE} connections stayed busy for {POOL_TIMEOUT_S:g} s;"
                " the server is slow or unreachable"
            )
        if isinstance(exc, psycopg.errors.ForeignKeyViolation):
            return f"log database {self.label}: {action} failed: FOREIGN KEY constraint failed ({text})"
        if action == "connect" or isinstance(exc, psycopg.OperationalError):
            return (
                f"cannot reach the log database {self.label}: {text}; check that URL (IMAGEGEN_DATABASE_URL,"
                " unless a command was given another) and that the server is running"
            )
        return f"log database {self.label}: {action} failed: {text}"

    @contextmanager
    def transaction(self, *, lock: str | None = None, action: str = "write") -> Iterator[_PostgresTx]:
        pool = self._get_pool()
        with self._translated(action), pool.connection() as conn, conn.transaction():
            if lock is not None:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_key(lock),))
            yield _PostgresTx(conn, self.dialect)

    def query(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        pool = self._get_pool()
        with self._translated("read"), pool.connection() as conn:
            cursor = conn.execute(self.dialect.sql(sql), tuple(params))
            return list(cursor.fetchall()) if cursor.description else []

    def write(self, sql: str, params: Sequence[Any]) -> int:
        pool = self._get_pool()
        with self._translated("write"), pool.connection() as conn:
            return conn.execute(self.dialect.sql(sql), tuple(params)).rowcount

    def change_token(self) -> None:
        return None  # machines share no memory: every request reads

    def note_change(self) -> None:
        return None

    def batch(self) -> AbstractContextManager[ItemScope]:
        # Each write takes a pooled connection of its own; grouping them would pin one connection to the
        # writer thread. Not needed yet: the writer is one thread and the server commits concurrently.
        return unbatched()

    def server_version(self) -> str:
        version = self.query("SHOW server_version", ())[0]["server_version"]
        return f"PostgreSQL {str(version).split()[0]}"
