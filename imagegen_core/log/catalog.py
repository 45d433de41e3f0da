"""What the log database holds, asked the same way of either backend: its tables and their columns.

For ``imagegen db check`` and for tests that compare the two backends' schemas or dump every row.
"""

from __future__ import annotations

from .db import LogDB


def table_names(db: LogDB) -> list[str]:
    """The tables of the log (``schema_migrations`` included), sorted; the engine's own are left out."""
    return [str(row["name"]) for row in db.query(db.dialect.tables_sql())]


def table_columns(db: LogDB, table: str) -> list[tuple[str, bool]]:
    """``(name, required)`` of each column of ``table`` in declaration order (``required``: NOT NULL)."""
    return [(str(row["name"]), bool(row["required"])) for row in db.query(db.dialect.columns_sql(), (table,))]


def dump_rows(db: LogDB) -> dict[str, list[dict[str, object]]]:
    """Every row of every table, by table (for small logs: tests, audits)."""
    return {table: db.query(f"SELECT * FROM {table}") for table in table_names(db)}
