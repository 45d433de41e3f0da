"""Moving a whole log from one database to another (``imagegen db copy``): SQLite → PostgreSQL when a
deployment grows past one machine, or back.

Rows are copied as they are — ids included, so attempts still point at their requests, picks at theirs, and
config version numbers stay what operators have seen — in one transaction on the target, then the counts are
compared table by table. Generated-id counters are moved past the copied ids, so the next config version or
breaker event continues the numbering. Stop the writers of the source first: rows written during the copy
may be missed, and the count check would say so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import LogDatabaseError
from .backend import Tx
from .db import LogDB

#: Every table holding log data, parents before children (foreign keys), with the column to page by and
#: whether that column is generated (an identity whose counter must follow the copied ids).
TABLES: tuple[tuple[str, str, bool], ...] = (
    ("requests", "id", False),
    ("attempts", "id", False),
    ("picks", "id", True),
    ("breaker_state", "provider", False),
    ("breaker_events", "id", True),
    ("config_versions", "id", True),
)
#: Rows read and written per round trip.
BATCH_ROWS = 1_000


def table_counts(db: LogDB) -> dict[str, int]:
    """Rows per log table, in :data:`TABLES` order."""
    return {table: int(db.query(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"]) for table, _, _ in TABLES}


def copy_log(
    source: LogDB,
    target: LogDB,
    *,
    force: bool = False,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, int]:
    """Copy every log row from ``source`` into ``target``; returns the rows copied per table.

    Both are migrated to the current schema first. A target that already holds rows is refused unless
    ``force``, which empties it first (in the same transaction, so a failed copy leaves it as it was).
    Raises :class:`LogDatabaseError` when the source and target are the same database, or when the counts
    differ afterwards. ``progress(table, rows)`` is called after each table.
    """
    if source.backend.identity == target.backend.identity:
        raise LogDatabaseError(f"source and target are the same database ({source.label})")
    source.open()
    target.open()
    expected = table_counts(source)
    present = {table: n for table, n in table_counts(target).items() if n}
    if present and not force:
        rows = ", ".join(f"{table} {n}" for table, n in present.items())
        raise LogDatabaseError(f"target {target.label} is not empty ({rows}); use --force to replace its rows")
    with target.transaction(lock="imagegen.copy") as tx:
        target.note_change()  # new config versions and breakers for whoever reads the target
        for table, _, _ in reversed(TABLES):  # children first, for the foreign keys
            tx.execute(f"DELETE FROM {table}")
        for table, key, generated in TABLES:
            copied = _copy_table(source, tx, table, key)
            reset = target.dialect.reset_identity_sql(table, key) if generated else None
            if reset is not None:
                tx.execute(reset)
            if progress is not None:
                progress(table, copied)
    found = table_counts(target)
    if found != expected:
        diff = ", ".join(f"{name} {expected[name]}→{found[name]}" for name in expected if expected[name] != found[name])
        raise LogDatabaseError(f"copy incomplete: row counts differ ({diff}); was the source written meanwhile?")
    return found


def _copy_table(source: LogDB, tx: Tx, table: str, key: str) -> int:
    """Page through ``table`` by ``key`` (keyset, so each page is an index range) and insert every row."""
    copied = 0
    last: Any = None
    while True:
        where = "" if last is None else f" WHERE {key} > ?"
        params: tuple[Any, ...] = () if last is None else (last,)
        rows = source.query(f"SELECT * FROM {table}{where} ORDER BY {key} LIMIT ?", (*params, BATCH_ROWS))
        if not rows:
            return copied
        columns = list(rows[0])
        marks = ", ".join("?" for _ in columns)
        tx.executemany(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
            [tuple(row[c] for c in columns) for row in rows],
        )
        copied += len(rows)
        last = rows[-1][key]
