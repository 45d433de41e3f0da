"""The SQLite backend: the embedded default, one file under ``IMAGEGEN_HOME``.

Thread safety: one connection per thread (``threading.local``), so the writer thread and the event-loop
thread never share a cursor and, thanks to WAL, reads never wait for writes — also across processes on the
same machine (CLI, API workers, console); an event loop may therefore read in place. Every write is one short
transaction, or part of the log writer's :meth:`~SQLiteBackend.batch` (one transaction for what queued up,
a savepoint per call); multi-statement writes use ``BEGIN IMMEDIATE`` so that two processes queue on the write
lock instead of failing half-way. ``sqlite3`` errors become :class:`LogDatabaseError` here and only here.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import LogDatabaseBusy, LogDatabaseError, clip
from ..forking import ForkGate, renew_after_fork
from .backend import ItemScope, Result, file_in_the_way
from .dialect import SQLITE, Dialect, fold_spaces, search_fold
from .stamp import ChangeStamp

#: How long a writer waits for another process's write lock before giving up.
BUSY_TIMEOUT_MS = 5_000

#: In a forked child, the connections its parent had open: never used, and never closed (see
#: :meth:`SQLiteBackend.renew_after_fork`). Module-wide, as a backend collected in the child must not close them.
_LEFT_BY_PARENT: list[sqlite3.Connection] = []


#: What to do about a damaged SQLite log file.
DAMAGED_ADVICE = "the file is damaged: restore it from a backup, or move it away (imagegen then starts a new log there)"


class _SQLiteTx:
    """A :class:`~.backend.Tx` over one connection inside ``BEGIN IMMEDIATE``."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        cursor = self.conn.execute(sql, tuple(params))
        rows = [dict(row) for row in cursor.fetchall()] if cursor.description else []
        return Result(rows, cursor.rowcount)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.conn.executemany(sql, [tuple(row) for row in rows])


#: How long closing waits for another thread's statement to end before leaving its connection to that thread.
CLOSE_WAIT_S = BUSY_TIMEOUT_MS / 1000 + 1

#: How often the file is checked to still be the one the connections have open (see :meth:`SQLiteBackend.replaced`).
FILE_CHECK_EVERY_S = 1.0


class SQLiteBackend:
    """The log in the SQLite file at ``path`` (created with its folder on first use)."""

    dialect: Dialect = SQLITE
    #: WAL mode: a reader sees the last commit without taking a lock a writer holds.
    reads_never_wait = True

    def __init__(self, path: Path) -> None:
        self.path: Path | None = path
        self.file = path
        self.label = str(path)
        self.identity = str(path.resolve())
        self._lock = threading.Lock()
        self._local = threading.local()
        self.stamp = ChangeStamp(path)
        #: Every open connection with the thread that owns it, and the lock that thread holds while it uses it
        #: (see :meth:`_using`).
        self._connections: list[tuple[threading.Thread, sqlite3.Connection, threading.RLock]] = []
        #: Every write passes through it: a fork waits for the one under way (see :meth:`renew_after_fork`).
        self._writes = ForkGate(f"a write to the log database {path}")
        #: ``(st_dev, st_ino)`` of the file the connections have open (None until one is made, or once it was
        #: found replaced), when to check it next, and how many times it was replaced: a connection of an older
        #: generation is renewed on its thread's next use (see :meth:`replaced`).
        self._file_identity: tuple[int, int] | None = None
        self._file_check_at = 0.0
        self._generation = 0
        renew_after_fork(self)

    def renew_after_fork(self) -> None:
        """In a forked child: new connections on first use. SQLite forbids using a connection across a fork (the
        child holds none of its file locks). The inherited ones are kept open, unused, for as long as the child
        lives (:data:`_LEFT_BY_PARENT`): collected, each would be closed, and closing one in the child undoes
        locks it does not hold — POSIX file locks belong to the process, so that can release the locks of the
        child's own connections to the same file — and may checkpoint the WAL under the parent.

        A fork waits for the write under way to end (:attr:`_writes`), since the new connections share SQLite's
        in-process record of the file's locks with the inherited ones: forked while a thread held the write
        lock, the child's copy said it was taken for good, and every write of the child met "database is
        locked" (its rows went to the spill)."""
        _LEFT_BY_PARENT.extend(conn for _, conn, _ in self._connections)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._connections = []

    def open(self) -> None:
        self._conn()

    def replaced(self) -> bool:
        """See :meth:`.backend.Backend.replaced`. QA: the log deleted under a running console, every later request
        of the console went into the deleted file (held open), lost without a word, while a command made a new
        log beside it.

        Not inside this thread's transaction (the log writer's batch): its statements stay on the connection it
        began on, so "the new file" would be made there, on the deleted one, and the next batch would find an
        empty file with no tables, and every later write failed ("no such table: requests"). The file is looked
        at before the next transaction instead."""
        now = time.monotonic()
        if self._file_identity is None or now < self._file_check_at or self._in_transaction():
            return False
        self._file_check_at = now + FILE_CHECK_EVERY_S
        try:
            st = os.stat(self.file)
        except FileNotFoundError:
            found = None
        except OSError:
            return False  # cannot look (a folder made unreadable): not evidence of a new file
        else:
            found = (st.st_dev, st.st_ino)
        with self._lock:
            if self._file_identity is None or found == self._file_identity:
                return False
            self._file_identity = None
            self._generation += 1
        return True

    def _in_transaction(self) -> bool:
        """Whether this thread's connection is inside a transaction."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        return conn is not None and conn.in_transaction

    def close(self) -> None:
        """Close every connection. Another thread's may be in the middle of a statement (an admin change on a
        log-call thread while the app shuts down): closing it under that statement crashed the interpreter (QA: a
        segmentation fault), so it is closed once that thread is done with it, waited for :data:`CLOSE_WAIT_S` at
        most; past that it is left to that thread (closed when collected)."""
        self.stamp.close()
        with self._lock:
            connections, self._connections = self._connections, []
            self._local = threading.local()
        for _, conn, busy in connections:
            if busy.acquire(timeout=CLOSE_WAIT_S):
                try:
                    conn.close()
                finally:
                    busy.release()

    def prepare_search(self) -> None:
        """Nothing to prepare: searches fold accents through ``imagegen_fold`` (registered per connection)."""

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        stale = getattr(self._local, "generation", 0) != self._generation  # the file was replaced since
        if conn is not None and (stale or getattr(self._local, "reconnect", False)) and not conn.in_transaction:
            self._local.reconnect = False
            self._forget(conn)
            conn = None
        if conn is not None:
            return conn
        generation = self._generation
        conn = self._connect()
        self._local.reconnect = False  # a flag set while connecting failed: this one is new already
        self._local.generation = generation
        with self._lock:
            # Threads come and go (Streamlit runs every script run in a new thread): close the connections
            # of threads that have ended, or a long-running process would pile up open files.
            ended = [c for thread, c, _ in self._connections if not thread.is_alive()]
            self._connections = [entry for entry in self._connections if entry[0].is_alive()]
            self._local.busy = threading.RLock()
            self._connections.append((threading.current_thread(), conn, self._local.busy))
            self._local.conn = conn
        for stale in ended:
            stale.close()
        return conn

    @contextmanager
    def _using(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, marked in use for the block, so that :meth:`close` from another thread waits
        for the block to end instead of closing it under a statement."""
        conn = self._conn()
        busy: threading.RLock = self._local.busy
        with busy:
            yield conn

    def _forget(self, conn: sqlite3.Connection) -> None:
        """Close this thread's connection ``conn``: the next use opens a new one."""
        with self._lock:
            self._connections = [entry for entry in self._connections if entry[1] is not conn]
            self._local.conn = None
        with contextlib.suppress(sqlite3.Error):
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            blocker = file_in_the_way(self.file.parent)
            reason = f"{blocker} is a file, not a folder" if blocker else exc.strerror or str(exc)
            raise LogDatabaseError(
                f"cannot create the log folder {self.file.parent}: {reason}; "
                "set IMAGEGEN_HOME (or IMAGEGEN_DATABASE_URL) to a writable folder"
            ) from None
        if self.file.is_dir():
            raise LogDatabaseError(
                f"the log database {self.file} is a folder: name a file, e.g. sqlite:///{self.file / 'imagegen.db'}"
            )
        if self.file.exists() and not self.file.is_file():
            # QA (embedding): /dev/null, a FIFO or a socket failed with "disk I/O error: make the file … writable",
            # an outage to wait out (rows kept in the spill for ever), where it is a path to fix, as a folder is.
            raise LogDatabaseError(
                f"the log database {self.file} is not a regular file (a device, a pipe or a socket): name a file, "
                "e.g. sqlite:////srv/imagegen/imagegen.db (every request is logged: there is no log to turn off)"
            )
        self._create_private()
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves (the legacy implicit mode would not
            # let us choose BEGIN IMMEDIATE). check_same_thread=False only so close() may run anywhere.
            conn = sqlite3.connect(
                str(self.file), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self._error(exc, "open") from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._enable_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")  # safe with WAL; a power loss may drop the last commits
            conn.execute("PRAGMA foreign_keys = ON")
            conn.create_function("imagegen_fold", 1, _fold, deterministic=True)  # Dialect.case_fold
            conn.create_function("imagegen_fold_spaced", 1, _fold_spaced, deterministic=True)
        except sqlite3.Error as exc:
            conn.close()
            raise self._error(exc, "open") from None
        conn.row_factory = sqlite3.Row
        with contextlib.suppress(OSError), self._lock:
            if self._file_identity is None:
                st = os.stat(self.file)
                self._file_identity = (st.st_dev, st.st_ino)
        return conn

    def _create_private(self) -> None:
        """Create the log file readable by its owner only, as the spill and the spool are: it holds every
        prompt, article id and provider error, and SQLite made it 0644 (its -wal and -shm files take the
        file's mode). An existing file keeps the mode it has (an operator may have widened it on purpose)."""
        with contextlib.suppress(OSError):  # exists already; or cannot be made, which connecting then says
            os.close(os.open(self.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))

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

    def _error(self, exc: sqlite3.Error, action: str) -> LogDatabaseError:
        """LogDatabaseBusy for what passes (locked; a full disk, once someone frees space; a file that cannot be
        written, once it can again): the log writer retries those, then keeps the rows in its spill, rather than
        dropping them at once (QA: on a full disk, and on a file made read-only, every row was lost, each with
        an error line of its own, while ``/health`` said ok)."""
        text = str(exc)
        if _unwritable(exc):
            # A connection that met a read-only file may have been opened read-only (SQLite falls back to that
            # when it cannot open the file for writing) and would stay so: this thread reconnects next time.
            self._local.reconnect = True
        # A write to a damaged file waits too: the advice is to move the file away, after which this process
        # starts a new log there and writes the rows kept meanwhile (QA chaos: a log truncated under a running
        # server dropped every row, "database disk image is malformed", until the file was moved).
        for_operator = _disk_full(exc) or _unwritable(exc) or (action == "write" and _damaged(exc))
        busy = "locked" in text or "busy" in text or for_operator
        if action == "open" and not self.file.exists():
            # No log was ever written there: a path to fix, not an outage to wait out with rows in the spill.
            busy = False
        if not busy:
            return LogDatabaseError(self._explain(exc, action))
        return LogDatabaseBusy(self._explain(exc, action), clears_by_itself=not for_operator)

    def _explain(self, exc: sqlite3.Error, action: str) -> str:
        text = str(exc)
        folder = self.file.parent
        if _disk_full(exc):
            return f"log database {self.file}: {action} failed: database or disk is full: free space on {folder}"
        if _unwritable(exc):
            # SQLite says "disk I/O error" or "unable to open database file" whatever the cause: in WAL mode even
            # opening the file creates and grows its -shm file, so a full disk or a read-only mount fails there
            # too (QA: both read "make the file writable", which sent the operator after permissions).
            cause = unwritable_cause(folder)
            if cause == "disk full":
                return f"log database {self.file}: {action} failed: {text}: the disk is full: free space on {folder}"
            if cause == "read-only mount":
                return (
                    f"log database {self.file}: {action} failed: {text}: {folder} is on a read-only mount: "
                    "remount it read-write (or point IMAGEGEN_DATABASE_URL at a writable folder)"
                )
        if _unwritable(exc) and "unable to open" not in text:
            return (
                f"log database {self.file}: {action} failed: {text}: make the file, its -wal and -shm files and "
                "its folder writable for this process (an immutable file? another owner's?)"
            )
        if "not a database" in text:
            return f"log database {self.file} is not a SQLite database; move the file away or choose another path"
        if "unable to open" in text:
            return f"cannot open log database {self.file}: {text}; check that the folder is writable"
        if "locked" in text or "busy" in text:
            return (
                f"log database {self.file} stayed locked by another process for over {BUSY_TIMEOUT_MS} ms: try"
                " again once it is done (a long `imagegen db copy`, a tool left inside a transaction)"
            )
        if "malformed" in text or "corrupt" in text:  # QA: the message said nothing of what to do
            return f"log database {self.file}: {action} failed: {text}: {DAMAGED_ADVICE}"
        return f"log database {self.file}: {action} failed: {text}"

    @contextmanager
    def transaction(self, *, lock: str | None = None, action: str = "write") -> Iterator[_SQLiteTx]:
        # ``lock`` needs nothing more: BEGIN IMMEDIATE takes the database's one write lock.
        with self._using() as conn:
            if conn.in_transaction:  # inside this thread's batch, which holds the write lock already
                with self._savepoint(conn, action):
                    yield _SQLiteTx(conn)
                return
            with self._immediate(conn, action):
                yield _SQLiteTx(conn)

    @contextmanager
    def batch(self) -> Iterator[ItemScope]:
        """One ``BEGIN IMMEDIATE`` … ``COMMIT`` around every write this thread makes inside: the WAL gets each
        touched page once per batch instead of once per write (the log writer's queue drains in batches)."""
        with self._using() as conn, self._immediate(conn, "write"):
            yield lambda: self._savepoint(conn, "write")

    @contextmanager
    def _immediate(self, conn: sqlite3.Connection, action: str) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back when the body raises or the commit fails (a failed
        COMMIT leaves the transaction open), ``sqlite3`` errors translated; then the change stamp moves if a
        write inside noted a change."""
        try:
            with self._writes.passage():
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield
                    conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):  # the first error says more than a failed rollback
                        conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise self._error(exc, action) from None
        finally:
            self._announce_changes()

    def change_token(self) -> bytes | None:
        return self.stamp.token()

    def note_change(self) -> None:
        # After the commit, never before: a reader that sees the new token must find the new rows.
        if self._conn().in_transaction:
            self._local.changed = True
        else:
            self.stamp.bump()

    def _announce_changes(self) -> None:
        """Bump the stamp if this thread's transaction noted a change (committed or not: an extra bump only
        costs the other processes one read)."""
        if getattr(self._local, "changed", False):
            self._local.changed = False
            self.stamp.bump()

    @contextmanager
    def _savepoint(self, conn: sqlite3.Connection, action: str) -> Iterator[None]:
        """A nested scope of the open transaction: undone alone when its body raises."""
        try:
            conn.execute("SAVEPOINT imagegen_item")
            try:
                yield
            except BaseException:
                conn.execute("ROLLBACK TO imagegen_item")
                conn.execute("RELEASE imagegen_item")
                raise
            conn.execute("RELEASE imagegen_item")
        except sqlite3.Error as exc:
            raise self._error(exc, action) from None

    def query(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        with self._using() as conn:
            try:
                return [dict(row) for row in conn.execute(sql, tuple(params))]
            except sqlite3.Error as exc:
                raise self._error(exc, "read") from None

    def write(self, sql: str, params: Sequence[Any]) -> int:
        with self._using() as conn:
            try:
                with self._writes.passage():  # a statement of its own is a transaction too
                    return conn.execute(sql, tuple(params)).rowcount
            except sqlite3.Error as exc:
                raise self._error(exc, "write") from None

    def server_version(self) -> str:
        return f"SQLite {sqlite3.sqlite_version}"

    def damage(self) -> str | None:
        """SQLite's ``quick_check`` of the whole file: its first finding when the file is damaged, else None
        (QA: `imagegen db check` said ok of a file every other command found malformed; it read the schema
        only). Reads every page: 2.5 s for a log of 180k requests (82 MB)."""
        try:
            with self._using() as conn:
                found = [str(row[0]) for row in conn.execute("PRAGMA quick_check")]
        except sqlite3.DatabaseError as exc:  # damaged past what the check can walk
            return str(exc)
        if found == ["ok"]:
            return None
        # One problem a line, under a "*** in database main ***" heading: the first, and how many more.
        problems = [line for text in found for line in text.splitlines() if line.strip() and "***" not in line]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return f"SQLite's check: {clip(problems[0] if problems else found[0], 120)}{more}"

    def snapshot_query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """One read of the file as it stands, for when it cannot be opened as usual (a read-only mount, a full
        disk: WAL mode needs to create or grow the -shm file even to read). SQLite's ``immutable`` mode takes no
        lock and skips the WAL, so changes not yet copied from the -wal file into the database are not seen;
        the database is otherwise whole (its last process checkpointed it on closing). Raises LogDatabaseError."""
        uri = f"file:{urllib.parse.quote(str(self.file))}?immutable=1"
        try:
            with contextlib.closing(sqlite3.connect(uri, uri=True, isolation_level=None)) as conn:
                conn.row_factory = sqlite3.Row
                return [dict(row) for row in conn.execute(sql, tuple(params))]
        except sqlite3.Error as exc:
            raise LogDatabaseError(f"log database {self.file}: read failed: {exc}") from None

    def check_writable(self) -> None:
        """Raise LogDatabaseBusy when the file cannot be written now (read-only, immutable, another owner's): one
        write, rolled back, so that a server says so at its start rather than with its first rows. A lock held
        by another process is no such problem: it passes."""
        try:
            with self._using() as conn, self._writes.passage():  # a write like any other: a fork waits for it
                conn.execute("BEGIN IMMEDIATE")
                try:
                    # Changes nothing, yet needs a writable file: SQLite refuses it on a connection opened read-only.
                    conn.execute(
                        "UPDATE schema_migrations SET name = name "
                        "WHERE version = (SELECT MAX(version) FROM schema_migrations)"
                    )
                finally:
                    conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            if _unwritable(exc):
                raise self._error(exc, "write") from None


#: SQLite's primary result codes for a file this process cannot write now (read-only: a remount, an immutable or
#: foreign file; an I/O error; a file it cannot open; no permission): an outage like a full disk, which ends when
#: the operator fixes the file, not a fault of one row.
_UNWRITABLE_CODES = frozenset(
    {sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM}
)


def _unwritable(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` says the file cannot be written (or opened) now (:data:`_UNWRITABLE_CODES`)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return "readonly database" in str(exc) or "disk I/O error" in str(exc)
    return code & 0xFF in _UNWRITABLE_CODES  # extended codes (SQLITE_IOERR_WRITE...) carry the primary one


def _damaged(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` says the file is damaged (SQLITE_CORRUPT, SQLITE_NOTADB): no row's fault."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return "malformed" in str(exc) or "not a database" in str(exc)
    return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


#: Below this many free bytes a write error is put down to a full disk: SQLite's -shm file alone grows by 32 KiB.
NEARLY_FULL_BYTES = 1 << 20


def unwritable_cause(folder: Path) -> str:
    """Why SQLite may not write in ``folder``, as far as the file system says: ``"read-only mount"``,
    ``"disk full"`` (under :data:`NEARLY_FULL_BYTES` free for this user), or ``"permissions"`` (anything
    else: the file's or the folder's mode or owner, an immutable file)."""
    statvfs = getattr(os, "statvfs", None)  # not on Windows
    try:
        stat = statvfs(folder) if statvfs is not None else None
    except OSError:
        stat = None
    if stat is None:
        return "permissions"
    if stat.f_flag & os.ST_RDONLY:
        return "read-only mount"
    if stat.f_bavail * stat.f_frsize < NEARLY_FULL_BYTES:
        return "disk full"
    return "permissions"


def _disk_full(exc: sqlite3.Error) -> bool:
    """SQLITE_FULL: the disk (or the file's ``max_page_count``) has no room for the write."""
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc)


def _fold(value: str | None) -> str | None:
    """SQL ``imagegen_fold(x)``: text with case and accents folded (Ä Ï → a i, see :func:`search_fold`);
    NULL stays NULL."""
    return search_fold(value) if isinstance(value, str) else value


def _fold_spaced(value: str | None) -> str | None:
    """SQL ``imagegen_fold_spaced(x)``: ``imagegen_fold`` with each run of whitespace as one space (see
    :func:`~.dialect.fold_spaces`); NULL stays NULL."""
    return search_fold(fold_spaces(value)) if isinstance(value, str) else value
