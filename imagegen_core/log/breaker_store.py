"""Circuit-breaker state in the log DB, shared by every process that opens the same database.

``update`` runs the read-modify-write in one transaction under a per-provider lock (SQLite: ``BEGIN
IMMEDIATE``, which grants one writer at a time; PostgreSQL: an advisory lock named after the provider, which
also covers the first write, when there is no row to lock yet). So two processes — on one machine or on
several — updating the same breaker queue up instead of overwriting each other's window entries or losing a
transition. The record is stored as JSON (``BreakerRecord.to_json``) so the breaker can grow fields without a
migration; transitions are rows in ``breaker_events`` for history and audit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..breaker import BreakerRecord, BreakerState, Transition, UpdateFn, log_transitions

if TYPE_CHECKING:
    from .db import LogDB


class LogBreakerStore:
    """A :class:`~imagegen_core.breaker.BreakerStore` over :class:`~imagegen_core.log.db.LogDB` (either backend)."""

    def __init__(self, db: LogDB) -> None:
        self.db = db

    def get(self, provider: str) -> BreakerRecord | None:
        """The stored record, or None."""
        rows = self.db.query("SELECT record FROM breaker_state WHERE provider = ?", (provider,))
        return BreakerRecord.from_json(rows[0]["record"]) if rows else None

    def all(self) -> dict[str, BreakerRecord]:
        """Every stored record by provider."""
        rows = self.db.query("SELECT provider, record FROM breaker_state ORDER BY provider")
        return {row["provider"]: BreakerRecord.from_json(row["record"]) for row in rows}

    def update(self, provider: str, fn: UpdateFn) -> BreakerRecord:
        """Read, apply ``fn`` and write back in one transaction under the provider's lock, appending its
        transitions."""
        with self.db.transaction(lock=f"imagegen.breaker:{provider}") as tx:
            row = tx.execute("SELECT record FROM breaker_state WHERE provider = ?", (provider,)).fetchone()
            before = BreakerRecord.from_json(row["record"]) if row else None
            record, transitions = fn(before)
            if transitions or record.state != BreakerState.CLOSED or (before and before.state != BreakerState.CLOSED):
                # What acquire decides from changed (counting a call in a closed breaker does not).
                self.db.note_change()
            tx.execute(
                "INSERT INTO breaker_state (provider, record, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (provider) DO UPDATE SET record = excluded.record, updated_at = excluded.updated_at",
                (provider, record.to_json(), record.updated_at),
            )
            if transitions:  # most updates only count a call
                tx.executemany(
                    "INSERT INTO breaker_events (provider, from_state, to_state, reason, at) VALUES (?, ?, ?, ?, ?)",
                    [(t.provider, str(t.from_state), str(t.to_state), t.reason, t.at) for t in transitions],
                )
        log_transitions(record, transitions)  # once committed: a transaction retried after a lost race logs once
        return record

    def transitions(self, provider: str | None = None, limit: int = 100) -> list[Transition]:
        """Recorded transitions, newest first, optionally for one provider."""
        sql = "SELECT provider, from_state, to_state, reason, at FROM breaker_events"
        params: tuple[object, ...] = ()
        if provider is not None:
            sql += " WHERE provider = ?"
            params = (provider,)
        rows = self.db.query(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))
        return [
            Transition(
                provider=row["provider"],
                from_state=BreakerState(row["from_state"]),
                to_state=BreakerState(row["to_state"]),
                reason=row["reason"],
                at=float(row["at"]),
            )
            for row in rows
        ]


#: The name before PostgreSQL support; the store serves both backends.
SQLiteBreakerStore = LogBreakerStore
