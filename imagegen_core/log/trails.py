"""The rows of each request under way, kept in memory until it ends, so that a SQLite log file deleted under
the process gets them again and the request lands whole in the new file.

:class:`~.db.LogDB` makes a new file when the one it had open is deleted or replaced (see
:meth:`.sqlite.SQLiteBackend.replaced`). A request under way at that moment had its row, and maybe attempts, in
the old file; its later rows need that row (FOREIGN KEY) or update rows that are not there (QA: a new attempt
failed with "FOREIGN KEY constraint failed", an error line each, and the ends of its attempts and of the
request updated nothing: the request was lost). So the statements written for a request are kept until its
end, and written again, in order, before its next row whenever that row goes to another file than its first.
They are inserts that skip a row already there, and updates that set the same values again.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: How many requests under way are followed at most (the oldest forgotten past it): a request ends within its
#: deadline, so only rows written back from the spill for a process that died mid-request linger here, and the
#: console's comparisons closed ``offered`` that no editor picked from (a pick closes the row again), a few
#: statements each: the oldest ones, whose pick is least likely, go first.
TRAILS_KEPT = 10_000

#: One statement of the request log with its parameters (``?`` placeholders).
Statement = tuple[str, Sequence[Any]]


@dataclass(slots=True)
class _Trail:
    file: int  # the generation of the log file (LogDB's count of replacements) its first row went to
    statements: list[Statement]
    attempts: list[str] = field(default_factory=list)


class RequestTrails:
    """The statements written for each request under way (thread-safe)."""

    def __init__(self, *, kept: int = TRAILS_KEPT) -> None:
        self._lock = threading.Lock()
        self._kept = kept
        self._trails: collections.OrderedDict[str, _Trail] = collections.OrderedDict()
        self._request_of_attempt: dict[str, str] = {}

    def opened(self, request_id: str, statement: Statement, *, file: int) -> None:
        """The request's first row was written (``statement``) to the log file of generation ``file``."""
        with self._lock:
            self._forget(request_id)
            self._trails[request_id] = _Trail(file, [statement])
            while len(self._trails) > self._kept:
                self._forget(next(iter(self._trails)))

    def added(self, statement: Statement, *, request_id: str | None = None, attempt_id: str | None = None) -> None:
        """Another row of a request under way: an attempt's start names both, an attempt's end the attempt only.
        A request not followed (its first row written by another process) is ignored."""
        with self._lock:
            owner = request_id or self._request_of_attempt.get(attempt_id or "")
            trail = self._trails.get(owner or "")
            if owner is None or trail is None:
                return
            trail.statements.append(statement)
            if attempt_id is not None and request_id is not None:
                trail.attempts.append(attempt_id)
                self._request_of_attempt[attempt_id] = request_id

    def ended(self, request_id: str) -> None:
        """The request's last row was written: nothing of it is written again."""
        with self._lock:
            self._forget(request_id)

    def moved(
        self, *, file: int, request_id: str | None = None, attempt_id: str | None = None
    ) -> tuple[str, list[Statement]] | None:
        """The request (named, or through its attempt) and its statements so far, when its first row went to
        another log file than the one of generation ``file``; else None (the usual case: nothing to write again)."""
        with self._lock:
            owner = request_id or self._request_of_attempt.get(attempt_id or "")
            trail = self._trails.get(owner or "")
            if owner is None or trail is None or trail.file == file:
                return None
            return owner, list(trail.statements)

    def _forget(self, request_id: str) -> None:
        """Drop the request's trail and its attempts' links to it. Lock held."""
        trail = self._trails.pop(request_id, None)
        if trail is not None:
            for attempt_id in trail.attempts:
                self._request_of_attempt.pop(attempt_id, None)
