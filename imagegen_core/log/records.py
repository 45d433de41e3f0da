"""The write API of the log: requests, attempts, editors' picks and config versions.

A mixin of :class:`~imagegen_core.log.db.LogDB`, apart so each module holds one concept: these methods only
speak the SQL both backends share, through ``query``, ``_write`` and ``transaction``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Literal

from ..errors import ConfigConflictError, ConfigVersionError
from .backend import Tx

#: ``cancelled``: the caller gave up (task cancelled) before the race ended. ``offered``: a comparison whose
#: images were shown but none picked yet (a pick makes it ``success``): no image went to an article.
_FINISHED_REQUEST_STATUSES = frozenset({"success", "failed", "cancelled", "offered"})

#: The error of a request (and of its attempts) that :meth:`LogRecords.end_abandoned_requests` closed.
ABANDONED_ERROR = "the process ended before this request finished (crash or kill)"


#: Where a statement stands among its request's rows (see :meth:`LogRecords._write_request_row`).
RowStep = Literal["first", "more", "last"]


def _str_or_none(value: object) -> str | None:
    """Enum members (StrEnum) are stored as their plain string value."""
    return None if value is None else str(value)


class LogRecords:
    """Writes and config-version reads; :class:`~imagegen_core.log.db.LogDB` provides the three primitives."""

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _write(self, sql: str, params: Sequence[Any]) -> int:
        raise NotImplementedError

    def _write_request_row(
        self,
        sql: str,
        params: Sequence[Any],
        *,
        step: RowStep,
        request_id: str | None = None,
        attempt_id: str | None = None,
    ) -> int:
        """``_write`` for a row of a request under way: its ``first`` (the request's row), one of its ``more``
        (attempts, named by ``attempt_id``, with ``request_id`` for an attempt's start), or its ``last`` (its
        end). Such a request lands whole in a log file made anew under it (see :mod:`.trails`)."""
        raise NotImplementedError

    def transaction(self, *, lock: str | None = None) -> AbstractContextManager[Tx]:
        raise NotImplementedError

    def note_change(self) -> None:
        raise NotImplementedError

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
        self._write_request_row(_INSERT_REQUEST, (*row, None), step="first", request_id=request_id)

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
        status: str = "rejected",
    ) -> None:
        """Record a request that ended before any provider was asked, as one finished row: refused by validation
        (``rejected``), or cancelled by its caller while being admitted (``cancelled``)."""
        row = (request_id, status, created_at, created_at, prompt, keyword, article_id, width, height, style)
        self._write(_INSERT_REQUEST, (*row, source, error))

    def request_exists(self, request_id: str) -> bool:
        """Whether a request row has this id (a primary-key lookup: what ``ImageGen.generate`` checks a
        caller's id against)."""
        return bool(self.query("SELECT 1 FROM requests WHERE id = ?", (request_id,)))

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
        cost_usd: float | None = 0.0,
        attribution: str | None = None,
    ) -> bool:
        """Close a running request as ``success``, ``failed``, ``cancelled`` or ``offered``; False when no such
        request exists. ``cost_usd=None``: what its attempts logged so far cost (a request cancelled before it
        had a result still paid for the attempts it started). ``attribution``: a stock photo's credit, as the
        JSON text of its :class:`~imagegen_core.models.Attribution` (``Attribution.to_log()``)."""
        if status not in _FINISHED_REQUEST_STATUSES:
            raise ValueError(f"status must be one of {sorted(_FINISHED_REQUEST_STATUSES)}, not {status!r}")
        cost_sql = (
            "?" if cost_usd is not None else "(SELECT COALESCE(SUM(cost_usd), 0) FROM attempts WHERE request_id = ?)"
        )
        changed = self._write_request_row(
            "UPDATE requests SET finished_at = ?, status = ?, provider = ?, url = ?, storage_key = ?,"
            f" elapsed_ms = ?, error = ?, cost_usd = {cost_sql}, attribution = ? WHERE id = ?",
            (
                finished_at,
                str(status),
                provider,
                url,
                storage_key,
                elapsed_ms,
                error,
                cost_usd if cost_usd is not None else request_id,
                attribution,
                request_id,
            ),
            # An offered comparison's row is closed again by the editor's pick, maybe after the log file was made
            # anew: its rows stay followed until then (see :mod:`.trails`).
            step="more" if status == "offered" else "last",
            request_id=request_id,
        )
        return changed > 0

    def end_abandoned_requests(self, *, created_before: float, now: float) -> int:
        """Close every request still ``running`` that was created before ``created_before`` as ``failed`` with
        :data:`ABANDONED_ERROR`, and its attempts still ``running`` as ``cancelled`` (the provider was not at
        fault: the success rate leaves them out); returns how many requests.

        ``failed``, not a new status: the log's statuses are a contract (stats, alerts, History), and ``failed``
        is the truth as far as anyone can tell, the reason in ``error``. A process that comes back with the
        request's real end (a spilled row written back) overwrites this: :meth:`finish_request` sets the row
        whatever it holds. ``created_before`` must lie further back than any live request can (see
        :func:`imagegen_core.abandoned.abandoned_before`): a shared PostgreSQL log has other live processes."""
        stale = "SELECT id FROM requests WHERE status = 'running' AND created_at < ?"
        with self.transaction() as tx:
            tx.execute(
                "UPDATE attempts SET outcome = 'cancelled', finished_at = ?, error = ?"
                f" WHERE outcome = 'running' AND request_id IN ({stale})",
                (now, ABANDONED_ERROR, created_before),
            )
            rows = tx.execute(
                "UPDATE requests SET status = 'failed', finished_at = ?, error = ?"
                " WHERE status = 'running' AND created_at < ? RETURNING id",
                (now, ABANDONED_ERROR, created_before),
            ).fetchall()
        return len(rows)

    def start_attempt(
        self, attempt_id: str, *, request_id: str, provider: str, attempt: int, hedged: bool, started_at: float
    ) -> None:
        """Insert an attempt with outcome ``running`` (its request must exist)."""
        self._write_request_row(
            "INSERT INTO attempts (id, request_id, provider, attempt, hedged, started_at, outcome)"
            " VALUES (?, ?, ?, ?, ?, ?, 'running') ON CONFLICT (id) DO NOTHING",
            (attempt_id, request_id, provider, attempt, int(hedged), started_at),
            step="more",
            request_id=request_id,
            attempt_id=attempt_id,
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
        retry_after_ms: int | None = None,
    ) -> bool:
        """Close an attempt (outcome from :class:`~imagegen_core.models.AttemptOutcome`); False if unknown.
        ``retry_after_ms``: the provider's Retry-After hint on a failure, when it gave one."""
        changed = self._write_request_row(
            "UPDATE attempts SET finished_at = ?, outcome = ?, failure_class = ?, http_status = ?,"
            " duration_ms = ?, cost_usd = ?, error = ?, retry_after_ms = ? WHERE id = ?",
            (
                finished_at,
                str(outcome),
                _str_or_none(failure_class),
                http_status,
                duration_ms,
                cost_usd,
                error,
                retry_after_ms,
                attempt_id,
            ),
            step="more",
            attempt_id=attempt_id,
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
        """An editor chose ``provider``'s image among ``offered`` for the request (the console's Compare).
        Written once: the log writer may apply the same call again (a batch whose COMMIT the connection lost,
        rows kept through an outage, a write abandoned to a hung server that commits after all), and a second
        row would count the win twice."""
        # The casts: PostgreSQL cannot infer a parameter's type in a SELECT list; SQLite reads them as affinities.
        # A request row: in a log file made anew since the comparison, its rows are written again first.
        self._write_request_row(
            "INSERT INTO picks (request_id, provider, offered, article_id, url, storage_key, picked_at)"
            " SELECT CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT),"
            " CAST(? AS TEXT), CAST(? AS DOUBLE PRECISION)"
            " WHERE NOT EXISTS (SELECT 1 FROM picks WHERE request_id = ? AND provider = ? AND picked_at = ?)",
            (
                request_id,
                provider,
                json.dumps(list(offered)),
                article_id,
                url,
                storage_key,
                picked_at,
                request_id,
                provider,
                picked_at,
            ),
            step="more",
            request_id=request_id,
        )

    # -- config versions ----------------------------------------------------------------------------------

    def save_config(
        self,
        document: dict[str, Any],
        *,
        source: str,
        created_at: float | None = None,
        based_on: int | None = None,
    ) -> int:
        """Store a validated runtime config document as a new version; returns its id.

        With ``based_on`` (the version an edit started from; 0 when none was stored) the document is stored
        only if that is still the newest version, else :class:`ConfigConflictError` (:class:`ConfigVersionError`
        for a version never stored): checked and written
        under one lock, so two editors cannot both pass the check."""
        text = json.dumps(document, separators=(",", ":"))
        with self.transaction(lock="config_versions") as tx:
            if based_on is not None:
                row = tx.execute("SELECT MAX(id) AS id FROM config_versions").fetchone()
                current = int(row["id"]) if row and row["id"] is not None else 0
                if not 0 <= based_on <= current:
                    raise ConfigVersionError(based_on, current)
                if current != based_on:
                    raise ConfigConflictError(based_on, current)
            self.note_change()
            # RETURNING: both backends hand back the generated id the same way (SQLite since 3.35).
            row = tx.execute(
                "INSERT INTO config_versions (created_at, source, document) VALUES (?, ?, ?) RETURNING id",
                (time.time() if created_at is None else created_at, source, text),
            ).fetchone()
        return int(row["id"]) if row else 0

    def latest_config(self) -> tuple[int, Any] | None:
        """The newest stored document and its id, or None when none was saved. A document is what its JSON
        says (an object, unless someone wrote the row by hand); one that is not JSON comes back as its text."""
        rows = self.query("SELECT id, document FROM config_versions ORDER BY id DESC LIMIT 1")
        return (int(rows[0]["id"]), _decoded(rows[0]["document"])) if rows else None

    def recent_configs(self, limit: int = 20) -> list[tuple[int, Any]]:
        """The newest stored documents with their ids, newest first (decoded as :meth:`latest_config` does)."""
        return decoded_versions(self.query(f"{CONFIG_VERSIONS_NEWEST_FIRST} LIMIT ?", (limit,)))

    def latest_config_id(self) -> int | None:
        """The newest version id only: cheap enough to poll for hot reload (one indexed read, any backend)."""
        rows = self.query("SELECT MAX(id) AS id FROM config_versions")
        return None if rows[0]["id"] is None else int(rows[0]["id"])

    def config_document(self, version: int) -> tuple[bool, Any]:
        """``(found, document)`` of one stored version (decoded as :meth:`latest_config` does): what a rollback
        stores again."""
        rows = self.query("SELECT document FROM config_versions WHERE id = ?", (version,))
        return (True, _decoded(rows[0]["document"])) if rows else (False, None)

    def config_versions(self, limit: int = 20) -> list[tuple[int, float, str, Any]]:
        """``(id, created_at, source, document)`` of the newest stored versions, newest first."""
        rows = self.query(
            "SELECT id, created_at, source, document FROM config_versions ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [(int(r["id"]), float(r["created_at"]), str(r["source"]), _decoded(r["document"])) for r in rows]

    def config_history(self, limit: int = 20) -> list[tuple[int, float, str]]:
        """``(id, created_at, source)`` of stored versions, newest first."""
        rows = self.query("SELECT id, created_at, source FROM config_versions ORDER BY id DESC LIMIT ?", (limit,))
        return [(int(r["id"]), float(r["created_at"]), str(r["source"])) for r in rows]


#: ON CONFLICT DO NOTHING: the log writer applies a batch again when the database went away during its COMMIT (it
#: may have committed): the row is there already, and that is not an error. Ids are UUIDs.
_INSERT_REQUEST = (
    "INSERT INTO requests (id, status, created_at, finished_at, prompt, keyword, article_id, width, height,"
    " style, source, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
)

#: Every stored config document with its id, newest first (``id``, ``document``: see :func:`decoded_versions`).
CONFIG_VERSIONS_NEWEST_FIRST = "SELECT id, document FROM config_versions ORDER BY id DESC"


def decoded_versions(rows: Iterable[Mapping[str, Any]]) -> list[tuple[int, Any]]:
    """``(id, document)`` of config rows as :data:`CONFIG_VERSIONS_NEWEST_FIRST` selects them, each document
    decoded as :meth:`LogRecords.latest_config` does."""
    return [(int(row["id"]), _decoded(row["document"])) for row in rows]


def _decoded(text: Any) -> Any:
    """A stored document's JSON, or its text when it is not JSON: the reader refuses it, naming the version,
    instead of every command failing on a JSONDecodeError (or on a RecursionError: QA wrote a row nested
    100 000 deep, and every generate and status raised)."""
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return text
