"""The PostgreSQL backend: one log, one runtime config and one breaker state shared by several machines.

psycopg 3 with a synchronous :class:`psycopg_pool.ConnectionPool` (the log is called from worker threads,
never awaited). Connections are in autocommit mode: a read is one statement, a write transaction is opened
explicitly. Where SQLite serialises writers with ``BEGIN IMMEDIATE``, this backend takes a transaction-scoped
advisory lock named by the caller (``pg_advisory_xact_lock``): it also covers a row that does not exist yet,
which ``SELECT … FOR UPDATE`` cannot lock, so two processes creating the same breaker never lose a transition.

While the server is down an operation fails within about a second, naming the server's reason, as
:class:`LogDatabaseBusy` (the log writer retries it, as it does a write whose connection a restart ended),
and the first operation after the server is back connects at once instead of at the pool's backed-off retry.

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
from time import monotonic
from typing import TYPE_CHECKING, Any, Self

from ..errors import LogDatabaseBusy, LogDatabaseError
from ..forking import renew_after_fork
from .backend import ItemScope, Result, safe_url, unbatched, url_password
from .dialect import POSTGRES, POSTGRES_UNACCENT, Dialect
from .outage import BoundedCalls

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
#: While the server cannot be reached, how long an operation waits for the pool before saying so: a request
#: must not spend its deadline (or the whole pool timeout) waiting for a server that is down.
UNREACHABLE_WAIT_S = 1.0
#: ... and once a connection attempt has failed, how long it waits for a free one before trying a direct one.
KNOWN_DOWN_WAIT_S = 0.05
#: How long the pool keeps retrying one lost connection before it gives up on it. Its retries back off 1, 2,
#: 4 … 64 s; after a longer outage the next try came a minute after the server was back (measured: a 100 s
#: outage, 34 s more of failures). Given up, the next operation starts a fresh attempt at once.
RECONNECT_GIVE_UP_S = 3.0
#: SQLSTATEs of a connection the server ended (shut down, crashed, restarting): nothing wrong with the
#: statement, so a write is worth trying again on a new connection. Class 08 is every connection exception.
#: A COMMIT cut off after the server applied it is applied twice: harmless for the log's inserts (ON CONFLICT on
#: their ids) and updates; a breaker may count that one call twice.
_CONNECTION_ENDED = frozenset({"57P01", "57P02", "57P03"})


#: How long a read waits for the server when its caller does not bound the wait itself (see ``query``).
QUERY_WAIT_S = 10.0

#: How long sent data may stay unacknowledged before the connection counts as broken (``tcp_user_timeout``).
TCP_USER_TIMEOUT_MS = 30_000

#: How long a statement waits for a lock another session holds. Without it, a table an operator locked
#: (``LOCK TABLE``, ``VACUUM FULL``, an ``ALTER TABLE`` waiting behind a long query) held every config read,
#: and so every generate, for as long as the lock lasted. A read that gives up is LogDatabaseBusy: requests go on
#: with the config in force and calls skip their breaker (as while the server is down); writes are retried.
#: Migrations wait as long as it takes (they run once, before any request).
LOCK_TIMEOUT_MS = 1000


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_xact_lock`` (the same in every process and version)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


def _configure(conn: psycopg.Connection[Any]) -> None:
    """Per new connection: ``numeric`` (what AVG and SUM of integers yield) comes back as ``float``, the type
    SQLite gives for the same statements, so every query answers alike on both backends; and a statement waits
    at most :data:`LOCK_TIMEOUT_MS` for a lock. Set by a statement, not the ``options`` startup parameter,
    which PgBouncer refuses."""
    from psycopg.types.numeric import FloatLoader

    conn.adapters.register_loader("numeric", FloatLoader)
    conn.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")  # autocommit: it holds for the session


class _Reachability:
    """Whether the server could be reached at the last connection attempt, and if not, why (one line)."""

    def __init__(self) -> None:
        self.failure: str | None = None

    def connection_class(self) -> type[psycopg.Connection[DictRow]]:
        """A connection class that notes each connection attempt's outcome here (the pool makes them in its
        background threads, which tell nobody why they fail)."""
        import psycopg
        from psycopg.rows import DictRow

        reachability = self

        class _NotingConnection(psycopg.Connection[DictRow]):
            @classmethod
            def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
                try:
                    conn = super().connect(conninfo, **kwargs)
                except psycopg.Error as exc:
                    reachability.failure = _first_line(exc)
                    raise
                reachability.failure = None
                return conn

        return _NotingConnection


def _bounded_reads(label: str) -> BoundedCalls:
    """The threads a read of a caller without a bound of its own waits on (see ``PostgresBackend.query``)."""
    what = f"the log database {label}"
    return BoundedCalls(wait_s=QUERY_WAIT_S, threads=2, name="imagegen-pg-read", what=what, noun="read")


def _first_line(exc: Exception) -> str:
    """An error's first line: server messages continue with DETAIL/HINT lines, and errors are one line."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _connection_ended(exc: Exception) -> bool:
    """Whether ``exc`` says the connection was lost (a restart, a network cut) rather than the statement
    failed; psycopg gives no SQLSTATE when the socket itself closed."""
    import psycopg

    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in _CONNECTION_ENDED


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

    @staticmethod
    def replaced() -> bool:
        """Never: a server's database is not a file that can be removed under the connections."""
        return False

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
        self._reachability = _Reachability()
        #: The pool's connection class (made with the pool: psycopg is imported only then).
        self._connection_class: type[psycopg.Connection[DictRow]] | None = None
        self._reads = _bounded_reads(self.label)
        renew_after_fork(self)

    def renew_after_fork(self) -> None:
        """In a forked child: a new pool on first use. The parent's pool is dropped unclosed: its threads are
        gone, and its connections are the parent's sockets (closing them here would end the parent's sessions)."""
        self._lock = threading.Lock()
        self._pool = None

    def open(self) -> None:
        self._get_pool()

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        reads, self._reads = self._reads, _bounded_reads(self.label)  # a closed log may be used again: it reopens
        reads.close()
        if pool is not None:
            pool.close()

    def _get_pool(self) -> ConnectionPool[psycopg.Connection[DictRow]]:
        pool = self._pool
        if pool is not None:
            return pool
        import psycopg
        from psycopg_pool import ConnectionPool

        with self._lock:
            if self._pool is not None:
                return self._pool
            self._connection_class = self._reachability.connection_class()
            # One direct connection first: a wrong URL or a server that is down fails now with the server's
            # own reason, where the pool would only keep retrying in the background.
            with self._translated("connect"):
                psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT_S).close()
            self._pool = ConnectionPool(
                self.url,
                connection_class=self._connection_class,
                kwargs=self._connect_kwargs(),
                min_size=1,
                max_size=POOL_MAX_SIZE,
                timeout=POOL_TIMEOUT_S,
                reconnect_timeout=RECONNECT_GIVE_UP_S,
                configure=_configure,
                # A connection broken by a server restart is replaced when handed out, not failed on.
                check=self._check_or_purge,
                name="imagegen-log",
                open=False,
            )
            self._pool.open()
            self.dialect = self._dialect_of(self._pool)
            return self._pool

    @staticmethod
    def _connect_kwargs() -> dict[str, Any]:
        """How every connection is opened, pooled or not."""
        from psycopg.rows import dict_row

        return {
            "autocommit": True,
            "row_factory": dict_row,
            "connect_timeout": CONNECT_TIMEOUT_S,
            "application_name": "imagegen",
            # A network that drops packets fails a connection in about half a minute (the log writer then
            # retries on a new one), not after the operating system's default of two hours or more.
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
        }

    def _dialect_of(self, pool: ConnectionPool[psycopg.Connection[DictRow]]) -> Dialect:
        """:data:`POSTGRES_UNACCENT` where ``unaccent(text)`` can be called (the extension installed in a schema
        on the search path: installed in another one, it is not for us)."""
        with self._translated("read"), self._connection(pool) as conn:
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
            with self._connection(pool) as conn:
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
    def _connection(self, pool: ConnectionPool[psycopg.Connection[DictRow]]) -> Iterator[psycopg.Connection[DictRow]]:
        """A pooled connection (as ``pool.connection()``), waited for in slices. When the pool has none to give
        because its attempts to connect failed, one direct attempt: it fails at once with the server's reason
        (instead of the pool's whole timeout), or, the server being back before the pool's next try, serves
        this one operation."""
        conn = self._pooled(pool)
        if conn is None:
            with self._direct() as direct:  # closed on exit: it is no pool's
                yield direct
            return
        try:
            with conn:  # a pooled connection's exit commits or rolls back and leaves it open for the pool
                yield conn
        finally:
            pool.putconn(conn)

    def _pooled(self, pool: ConnectionPool[psycopg.Connection[DictRow]]) -> psycopg.Connection[DictRow] | None:
        """A connection from ``pool`` within :data:`POOL_TIMEOUT_S`, or None once it cannot connect."""
        from psycopg_pool import PoolTimeout

        give_up = monotonic() + POOL_TIMEOUT_S
        while True:
            # Once the server is known to be unreachable, only a moment for a connection that is free already:
            # a direct attempt then says at once whether it is still down (each request waited a second).
            known_down = self._reachability.failure is not None
            slice_s = KNOWN_DOWN_WAIT_S if known_down else UNREACHABLE_WAIT_S
            try:
                return pool.getconn(timeout=max(0.0, min(slice_s, give_up - monotonic())))
            except PoolTimeout:
                if self._reachability.failure is not None:
                    return None
                if monotonic() >= give_up:
                    raise

    def _direct(self) -> psycopg.Connection[DictRow]:
        """A connection of its own, made as the pool makes them; unreachable is transient (the writer retries)."""
        import psycopg

        assert self._connection_class is not None  # made with the pool, which the caller got
        try:
            conn = self._connection_class.connect(self.url, **self._connect_kwargs())
        except psycopg.Error as exc:
            raise LogDatabaseBusy(self._cannot_reach(self._redacted(_first_line(exc)))) from None
        _configure(conn)
        return conn

    @contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            yield
        except PoolTimeout as exc:  # every connection busy (a psycopg.Error too): transient, the writer retries
            raise LogDatabaseBusy(self._explain(exc, action)) from None
        except psycopg.errors.LockNotAvailable:  # transient too: the lock's holder will let go
            raise LogDatabaseBusy(
                f"log database {self.label}: {action} waited {LOCK_TIMEOUT_MS / 1000:g} s for a lock another "
                "session holds (a LOCK TABLE, VACUUM FULL or ALTER TABLE?); will try again"
            ) from None
        except psycopg.Error as exc:
            if action != "connect" and _connection_ended(exc):  # e.g. a restart: a new connection may succeed
                raise LogDatabaseBusy(self._explain(exc, action)) from None
            raise LogDatabaseError(self._explain(exc, action)) from None

    def _redacted(self, text: str) -> str:
        return text.replace(self._password, "***") if self._password else text

    def _cannot_reach(self, text: str) -> str:
        return (
            f"cannot reach the log database {self.label}: {text}; check that URL (IMAGEGEN_DATABASE_URL,"
            " unless a command was given another) and that the server is running"
        )

    def _explain(self, exc: Exception, action: str) -> str:
        import psycopg
        from psycopg_pool import PoolTimeout

        text = self._redacted(_first_line(exc))
        if isinstance(exc, PoolTimeout):
            return (
                f"log database {self.label}: all {POOL_MAX_SIZE} connections stayed busy for {POOL_TIMEOUT_S:g} s;"
                " the server is slow or unreachable"
            )
        if isinstance(exc, psycopg.errors.ForeignKeyViolation):
            return f"log database {self.label}: {action} failed: FOREIGN KEY constraint failed ({text})"
        if action == "connect" or isinstance(exc, psycopg.OperationalError):
            return self._cannot_reach(text)
        return f"log database {self.label}: {action} failed: {text}"

    @contextmanager
    def transaction(self, *, lock: str | None = None, action: str = "write") -> Iterator[_PostgresTx]:
        pool = self._get_pool()
        with self._translated(action), self._connection(pool) as conn, conn.transaction():
            if action == "migrate":
                conn.execute("SET LOCAL lock_timeout = 0")  # see LOCK_TIMEOUT_MS
            if lock is not None:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_key(lock),))
            yield _PostgresTx(conn, self.dialect)

    def query(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        """The rows of one read, waited for :data:`QUERY_WAIT_S` at most (a caller that bounds its own wait,
        a request's, reads right here). A server that hangs refuses nothing: a console page or a command then
        waited for TCP to give up, many minutes; now it gets a LogDatabaseBusy that says why, at once while an
        earlier read is still unanswered."""
        return self._reads.run_sync(lambda: self._query(sql, params))  # in place on a bounded thread already

    def _query(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        pool = self._get_pool()
        with self._translated("read"), self._connection(pool) as conn:
            cursor = conn.execute(self.dialect.sql(sql), tuple(params))
            return list(cursor.fetchall()) if cursor.description else []

    def write(self, sql: str, params: Sequence[Any]) -> int:
        pool = self._get_pool()
        with self._translated("write"), self._connection(pool) as conn:
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
