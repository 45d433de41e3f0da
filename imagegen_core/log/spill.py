"""Log rows kept on disk while the log database does not take them, written to it once it answers again.

The log writer (:mod:`.writer`) retries a locked or unreachable database in memory for a while; past that,
rows used to be dropped. With a spill they are kept under ``<IMAGEGEN_HOME>/log-spill`` instead (after
:data:`~.writer.SPILL_AFTER_S`, so that a killed process loses no more than those seconds of rows),
and the writer puts them in the database, oldest first and before any newer row, once it answers again (it
tries every :data:`~.writer.WRITE_BACK_EVERY_S`): a PostgreSQL failover or maintenance window, a server that
hangs, or a SQLite file someone holds locked, delays the log but does not lose it. Each database has a folder
of its own there (:func:`spill_folder`).

Only the request log's rows are kept (:data:`KEPT_CALLS`: requests, attempts, editors' picks). Breaker
transitions are not: replayed later they would describe a state long gone.

* **Whole or absent.** Each batch is one JSON-lines file written atomically and durably (temporary file,
  fsync, rename), named so that names sort in the order written and say how many rows they hold:
  ``<ns since epoch>-<pid>-<seq>-<rows>.jsonl``.
* **Once.** One process at a time writes the kept rows (an exclusive lock file; another waits for it, up to
  :data:`LOCK_WAIT_S`), and removes a file only after its rows committed. A crash between the two writes the
  same rows again, as does a write the writer abandoned to a hung server that commits after all; that changes
  nothing: inserts find their row (requests and attempts ``ON CONFLICT DO NOTHING``, picks ``WHERE NOT
  EXISTS``), and the rest are updates.
* **Private.** Files are ``0600``: they hold prompts, as the database does.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..storage.files import atomic_write
from .records import LogRecords

_log = logging.getLogger("imagegen.log")

#: The :class:`~.records.LogRecords` methods whose calls are kept: the request log's rows.
KEPT_CALLS = frozenset(
    {"start_request", "reject_request", "finish_request", "start_attempt", "finish_attempt", "record_pick"}
)

#: The spill stops growing here (rows past it are dropped, with an error): a request makes about five rows of
#: 300-600 bytes, so this holds about 300 000 requests, while a full disk would stop the local image store too.
MAX_SPILL_BYTES = 512 * 1024 * 1024
#: How long the spill's size, once measured, is trusted (plus what this process kept since) before measuring again.
_SIZE_FRESH_S = 10.0

#: How long a writer waits for another one that is writing the kept rows back (see :meth:`LogSpill.write_back`).
LOCK_WAIT_S = 10.0

_SUFFIX = ".jsonl"
_UNREADABLE = ".unreadable"
_LOCK = ".write.lock"

#: One kept call: the method's name, its positional and its keyword arguments.
KeptCall = tuple[str, Sequence[Any], dict[str, Any]]
#: What :meth:`LogSpill.write_back` hands its ``apply``: the calls of one file, ready to run.
BoundCall = tuple[Callable[..., Any], Sequence[Any], dict[str, Any]]


def spill_folder(home: Path, database: str) -> Path:
    """Where rows for the log ``database`` (its label: a file, or a URL without password) are kept under
    ``home``: a folder per database, so a process never writes rows kept for one into another."""
    return Path(home) / "log-spill" / hashlib.sha256(database.encode("utf-8")).hexdigest()[:16]


class LogSpill:
    """Rows for ``records`` (the log database) kept in the folder ``root`` (created on first :meth:`keep`)."""

    def __init__(self, root: Path, records: LogRecords, *, max_bytes: int = MAX_SPILL_BYTES) -> None:
        self.root = Path(root).expanduser().absolute()
        self.records = records
        self.max_bytes = max_bytes
        self._sequence = itertools.count()
        self._size = 0  # bytes in the folder when last measured, plus what was kept since
        self._measured_at = -_SIZE_FRESH_S  # monotonic; measured again after _SIZE_FRESH_S

    def __repr__(self) -> str:
        return f"LogSpill(root={str(self.root)!r})"

    def name_of(self, fn: Callable[..., Any]) -> str | None:
        """The name under which a call of ``fn`` is kept, or None when it is not a row of this log."""
        name = getattr(fn, "__name__", None)
        return name if getattr(fn, "__self__", None) is self.records and name in KEPT_CALLS else None

    def keep(self, calls: Sequence[KeptCall]) -> Path:
        """Keep ``calls`` as one file, durably (blocking: the log writer's thread calls it). Raises OSError
        when the folder cannot be written or holds :attr:`max_bytes` already, TypeError when an argument is not
        JSON."""
        lines = [json.dumps({"call": name, "args": list(args), "kwargs": kwargs}) for name, args, kwargs in calls]
        data = ("\n".join(lines) + "\n").encode("utf-8")
        if self._used_bytes() + len(data) > self.max_bytes:
            limit = f"{self.max_bytes >> 20} MiB" if self.max_bytes >= 1 << 20 else f"{self.max_bytes} bytes"
            raise OSError(errno.ENOSPC, f"the spill is full (it holds {limit}, its limit)")
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._sequence):06d}-{len(lines)}{_SUFFIX}"
        atomic_write(str(self.root), name, data, mode=0o600, durable=True)
        self._size += len(data)
        return self.root / name

    def _used_bytes(self) -> int:
        if time.monotonic() - self._measured_at >= _SIZE_FRESH_S:
            total = 0
            for path in self.files():
                with contextlib.suppress(OSError):  # written back and removed meanwhile
                    total += path.stat().st_size
            self._size, self._measured_at = total, time.monotonic()
        return self._size

    def files(self) -> list[Path]:
        """The files of kept rows, oldest first."""
        try:
            return sorted(p for p in self.root.iterdir() if p.suffix == _SUFFIX and not p.name.startswith("."))
        except FileNotFoundError:
            return []

    def waiting(self) -> int:
        """How many rows wait to be written, from the files' names (a status page asks, and the files may hold
        hundreds of megabytes); 0 when the folder cannot be read (said by the writer's log)."""
        total = 0
        with contextlib.suppress(OSError):
            for path in self.files():
                count = path.stem.rpartition("-")[2]
                if count.isdigit():
                    total += int(count)
                else:  # not named by keep(): its lines, as write_back will try them
                    with contextlib.suppress(OSError):
                        total += path.read_bytes().count(b"\n")
        return total

    def write_back(self, apply: Callable[[list[BoundCall]], None], *, wait_s: float = LOCK_WAIT_S) -> int | None:
        """Hand each file's calls to ``apply`` (one transaction), oldest first, and remove the file once it
        returns; the number of rows written, or None when another process kept writing them for ``wait_s``.
        What ``apply`` raises (the database still away) stops here and leaves that file and the later ones."""
        written = 0
        with self._exclusive(wait_s) as mine:
            if not mine:
                return None
            for path in self.files():
                calls = self._read(path)
                if calls is None:
                    continue
                apply(calls)
                path.unlink(missing_ok=True)
                written += len(calls)
        return written

    def _read(self, path: Path) -> list[BoundCall] | None:
        """The calls of ``path``; None, with the file set aside as ``.unreadable``, when it is not what
        :meth:`keep` writes (edited by hand, or from a newer imagegen): it must not block the ones after it."""
        try:
            calls: list[BoundCall] = []
            for line in path.read_text("utf-8").splitlines():
                item = json.loads(line)
                name = item["call"]
                if name not in KEPT_CALLS:
                    raise ValueError(f"unknown call {name!r}")
                calls.append((getattr(self.records, name), list(item["args"]), dict(item["kwargs"])))
        except FileNotFoundError:
            return None  # written back by another process between the listing and now
        except (OSError, ValueError, KeyError, TypeError) as exc:
            with contextlib.suppress(OSError):
                os.replace(path, path.with_name(path.name + _UNREADABLE))
            _log.error("log rows in %s cannot be read (%s); set aside as %s%s", path, exc, path.name, _UNREADABLE)
            return None
        return calls

    @contextlib.contextmanager
    def _exclusive(self, wait_s: float) -> Iterator[bool]:
        """Whether this process may write the kept rows now: one process (or writer) at a time. Another one
        writing them is waited for ``wait_s`` at most: with the database answering it is done in moments, and
        this writer's rows then go straight in rather than into the spill behind its."""
        if sys.platform == "win32":  # pragma: no cover - no flock; single-process use only
            yield True
            return
        import fcntl

        try:
            handle = open(self.root / _LOCK, "a+b")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            yield True  # no folder: nothing kept, nothing to race for
            return
        with handle:
            give_up = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= give_up:
                        yield False
                        return
                    time.sleep(0.05)
            try:
                yield True
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
