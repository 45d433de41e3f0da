"""Log rows for tests: a request as the service starts it, optionally finished; a schema as an older imagegen
left it."""

from __future__ import annotations

from imagegen_core.log import MIGRATIONS, LogDB
from imagegen_core.log.backend import Tx
from imagegen_core.log.migrations import BOOTSTRAP_SQL, split_statements


def apply_migrations_up_to(db: LogDB, tx: Tx, version: int, *, recorded_at: float | None = None) -> None:
    """Create the schema of migrations 1..``version`` in ``tx`` through ``db``'s dialect, as that imagegen did;
    with ``recorded_at``, each is also recorded in ``schema_migrations`` (else the table stays empty)."""
    tx.execute(db.dialect.ddl(BOOTSTRAP_SQL))
    for number, name, sql in MIGRATIONS:
        if number <= version:
            for statement in split_statements(db.dialect.ddl(sql)):
                tx.execute(statement)
            if recorded_at is not None:
                tx.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (number, name, recorded_at),
                )


def add_request(db: LogDB, request_id: str, created_at: float, status: str | None = None, *, prompt: str = "p") -> None:
    db.start_request(
        request_id,
        created_at=created_at,
        prompt=prompt,
        keyword=None,
        article_id=None,
        width=512,
        height=512,
        style=None,
        source="python",
    )
    if status is not None:
        db.finish_request(request_id, finished_at=created_at + 1, status=status, cost_usd=0.5)


def add_rejected(db: LogDB, request_id: str, created_at: float, error: str = "prompt: must not be empty") -> None:
    """A request refused by validation, as the service logs it (one finished ``rejected`` row)."""
    db.reject_request(
        request_id,
        created_at=created_at,
        prompt="",
        keyword=None,
        article_id=None,
        width=None,
        height=None,
        style=None,
        source="api",
        error=error,
    )
