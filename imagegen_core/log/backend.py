"""What :class:`~imagegen_core.log.db.LogDB` needs from a database: the backend interface, and the choice of
backend from ``IMAGEGEN_DATABASE_URL``.

Two backends implement it: :mod:`.sqlite` (the embedded default: one file, per-thread connections, WAL) and
:mod:`.postgres` (psycopg 3 with a connection pool, for several machines sharing one log). Statements are
written once with ``?`` placeholders; each backend translates them through its :class:`~.dialect.Dialect`.
Driver exceptions become :class:`~imagegen_core.errors.LogDatabaseError` inside the backend and only there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from ..errors import clip
from .dialect import Dialect

#: URL schemes of the PostgreSQL backend (libpq accepts both).
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
SQLITE_SCHEME = "sqlite:///"


@dataclass
class Result:
    """The rows (plain dicts) and row count of one statement, fetched eagerly so no cursor stays open."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    rowcount: int = -1

    def fetchone(self) -> dict[str, Any] | None:
        """The first row, or None."""
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[dict[str, Any]]:
        """Every row."""
        return self.rows

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)


#: Opens the scope of one item inside :meth:`Backend.batch`.
ItemScope = Callable[[], AbstractContextManager[None]]


def unbatched() -> AbstractContextManager[ItemScope]:
    """:meth:`Backend.batch` of a backend that does not batch: every write commits on its own."""
    return nullcontext(nullcontext)


class Tx(Protocol):
    """One open transaction: statements with ``?`` placeholders, run on the transaction's connection."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        """Run one statement and return its rows (none for a write without ``RETURNING``)."""
        ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement once per parameter row (no-op for none)."""
        ...


class Backend(Protocol):
    """A log database connection manager. Thread-safe; every method may be called from any thread."""

    dialect: Dialect
    #: Where the log is, safe to print (a file path, or a URL without its password).
    label: str
    #: The SQLite file, or None for a server database.
    path: Path | None
    #: Equal for two backends on the same database (not for display: it may hold a password).
    identity: str
    #: Whether a read returns without waiting for writers or the network (SQLite in WAL mode), so that an
    #: event loop may run it in place instead of paying a thread hop.
    reads_never_wait: bool

    def open(self) -> None:
        """Connect now (idempotent), so that a wrong path or an unreachable server fails at once."""
        ...

    def replaced(self) -> bool:
        """Whether the database was deleted or replaced under the open connections since the last call (a SQLite
        file removed or moved away; checked once a second at most): they are then renewed on their next use, and
        the caller must migrate the new database. Always False on a server."""
        ...

    def close(self) -> None:
        """Release every connection; a later call reopens."""
        ...

    def prepare_search(self) -> None:
        """After migrating: make history search accent-blind where the database needs something for it
        (PostgreSQL's ``unaccent`` extension), best effort; SQLite folds in Python and needs nothing."""
        ...

    def query(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        """One read-only statement as plain dict rows."""
        ...

    def write(self, sql: str, params: Sequence[Any]) -> int:
        """One statement in its own transaction; the number of rows it changed."""
        ...

    def transaction(self, *, lock: str | None = None, action: str = "write") -> AbstractContextManager[Tx]:
        """A write transaction, committed on exit and rolled back on error. Writers holding the same ``lock``
        name (across threads and processes) run one after another; SQLite serialises every writer anyway."""
        ...

    def change_token(self) -> bytes | None:
        """A token that moves after every committed change noted by :meth:`note_change` in any process, read
        without I/O; None when the backend has none (then nothing read from it may be cached)."""
        ...

    def note_change(self) -> None:
        """Mark the calling thread's current write as one that readers cache (a config version, a breaker's
        state): the token moves once it commits."""
        ...

    def batch(self) -> AbstractContextManager[ItemScope]:
        """Group the writes the calling thread makes inside into one transaction, when the backend gains from
        it (SQLite: one ``BEGIN IMMEDIATE`` … ``COMMIT`` instead of one per write). The yielded callable opens
        a scope per item whose writes are undone alone if the item raises (a savepoint); a backend that
        does not batch yields scopes that do nothing, and every write then commits on its own."""
        ...

    def server_version(self) -> str:
        """The database engine and its version, e.g. ``SQLite 3.40.1``."""
        ...


def safe_url(url: str) -> str:
    """``url`` without its password and query (which may carry one): fit for messages and logs. Never raises,
    whatever the URL looks like (a malformed one must still be nameable in its error message)."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user = unquote(userinfo.split(":", 1)[0]) if at else ""
    return f"{parts.scheme}://{user + '@' if user else ''}{hostport}{parts.path}"


def url_password(url: str) -> str | None:
    """The password in a database URL (decoded), or None: a secret to redact."""
    if not url.startswith(POSTGRES_SCHEMES):
        return None
    password = urlsplit(url).password
    return unquote(password) if password else None


def database_url_problem(url: str) -> str | None:
    """What is wrong with a log database URL, in words (None: nothing seen before connecting): the scheme,
    a SQLite URL without a file, a PostgreSQL URL that does not parse (``[::1`` without its bracket, a port
    out of range). The text never repeats the URL, which may hold a password."""
    if not url.startswith((SQLITE_SCHEME, *POSTGRES_SCHEMES)):
        return "must start with sqlite:/// or postgresql://"
    if url.startswith(SQLITE_SCHEME):
        path = url.removeprefix(SQLITE_SCHEME)
        if not path.strip("/"):
            return "sqlite:/// needs a file after it, e.g. sqlite:////srv/imagegen/imagegen.db"
        if path == ":memory:" or path.startswith("file:") or "mode=memory" in path:
            # Each connection (the writer's, every reader's, every process's) would get its own empty database.
            return "needs a file: an in-memory SQLite log is empty for every connection, so nothing would be logged"
        if (cut := min((i for i in (path.find("?"), path.find("#")) if i >= 0), default=-1)) >= 0:
            # Not SQLite's URI parameters: the file is opened by its path, and "x.db?mode=ro" would be its name.
            return (
                f"takes no ?query or #fragment (got {clip(path[cut:], 40)!r}): name only the file, "
                "e.g. sqlite:////srv/imagegen/imagegen.db"
            )
        return None
    if _authority(url).count("@") > 1:
        # libpq ends the password at the first @ and would try to resolve the rest of it as the host name,
        # printing that piece of the password in its error.
        return f"has more than one @ before the host: {_ENCODE_HINT}"
    try:
        urlsplit(url).port  # noqa: B018 -- parsing the port is the check
    except ValueError as exc:
        reason = str(exc)
        if "'" in reason:
            # The parser quotes what it read as the port: with an unencoded / ? or # in the password
            # ("app:pw/rd@host"), that is the password itself.
            reason = f"what it reads as the port is not a number; {_ENCODE_HINT}"
        return f"is not a valid URL ({reason}): postgresql://user:password@host:5432/dbname"
    return None


#: How to write a user name or password that holds a character URLs reserve.
_ENCODE_HINT = "percent-encode @ : / ? # % in the user name and password (%40 %3A %2F %3F %23 %25)"


def _authority(url: str) -> str:
    """What follows the scheme up to the first ``/``, ``?`` or ``#``: user, password, host and port."""
    rest = url.split("://", 1)[1]
    for end in "/?#":
        rest = rest.split(end, 1)[0]
    return rest


def make_backend(target: Path | str) -> Backend:
    """The backend for ``target``: a ``postgresql://`` URL, a ``sqlite:///path`` URL, or a file path."""
    if isinstance(target, str) and target.startswith(POSTGRES_SCHEMES):
        from ..extras import require
        from .postgres import PostgresBackend

        # Now, not at the first query: psycopg is imported lazily, deep inside, where its absence was a raw
        # ModuleNotFoundError that named no extra.
        require("postgres", feature="a postgresql:// log database (IMAGEGEN_DATABASE_URL)")

        return PostgresBackend(target)
    from .sqlite import SQLiteBackend

    if isinstance(target, str) and target.startswith(SQLITE_SCHEME):
        target = target.removeprefix(SQLITE_SCHEME)
    return SQLiteBackend(Path(target).expanduser())  # sqlite:///~/x.db: where the images' ~ is


def file_in_the_way(folder: Path) -> Path | None:
    """The nearest of ``folder`` and its parents that exists as something other than a folder, if any
    (``mkdir`` reports "File exists" for it, which does not say which)."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None
