"""The log DB schema is pinned: a migrated blank database must match ``schema_vN.sql`` exactly.

Migrations are append-only. When you add migration N (at the end of ``MIGRATIONS``), regenerate its pin with::

    .venv/bin/python tests/log/test_schema.py N > tests/log/schema_vN.sql

and commit it next to the older pins. Older pins are never regenerated: each one checks that applying
migrations 1..k still yields the same schema, which fails if an applied migration was edited.
"""

from __future__ import annotations

import re
import sqlite3
import sys
from pathlib import Path

import pytest

from imagegen_core.log import MIGRATIONS, LogDB
from imagegen_core.log.migrations import BOOTSTRAP_SQL, split_statements

PIN_DIR = Path(__file__).parent


def dump_schema(conn: sqlite3.Connection) -> str:
    """Every table and index definition, grouped by table, SQLite's internal tables left out."""
    rows = conn.execute(
        "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'"
        " ORDER BY tbl_name, type DESC, name"
    )
    return "".join(f"{sql};\n\n" for (sql,) in rows)


def schema_up_to(version: int) -> str:
    """The schema of a fresh database after migrations 1..version, applied without LogDB."""
    conn = sqlite3.connect(":memory:")
    conn.execute(BOOTSTRAP_SQL)
    for number, _, sql in MIGRATIONS:
        if number <= version:
            for statement in split_statements(sql):
                conn.execute(statement)
    return dump_schema(conn)


def pinned_versions() -> list[int]:
    return sorted(
        int(m.group(1)) for p in PIN_DIR.glob("schema_v*.sql") if (m := re.fullmatch(r"schema_v(\d+)\.sql", p.name))
    )


def test_latest_migration_has_a_pin() -> None:
    """Adding a migration without its pin fails here; see the module docstring."""
    assert pinned_versions()[-1] == MIGRATIONS[-1][0]


@pytest.mark.parametrize("version", pinned_versions())
def test_each_pinned_schema_still_matches(version: int) -> None:
    """Editing an applied migration changes an older pin: add a new migration instead."""
    assert schema_up_to(version) == (PIN_DIR / f"schema_v{version}.sql").read_text(encoding="utf-8")


def test_logdb_creates_exactly_the_pinned_schema(tmp_path: Path) -> None:
    with LogDB(tmp_path / "log.db") as db:
        db.open()
    conn = sqlite3.connect(tmp_path / "log.db")
    try:
        assert dump_schema(conn) == (PIN_DIR / f"schema_v{MIGRATIONS[-1][0]}.sql").read_text(encoding="utf-8")
    finally:
        conn.close()


if __name__ == "__main__":
    sys.stdout.write(schema_up_to(int(sys.argv[1]) if len(sys.argv) > 1 else MIGRATIONS[-1][0]))
