"""The log DB schema is pinned on both backends: a migrated blank database must match ``schema_vN.sql``
(SQLite) and ``schema_postgres_vN.txt`` (PostgreSQL, read back from its catalog) exactly, and the two backends
must have the same tables, columns and indexes.

Migrations are append-only. When you add migration N (at the end of ``MIGRATIONS``), regenerate its pins with::

    .venv/bin/python tests/log/test_schema.py N > tests/log/schema_vN.sql
    .venv/bin/python tests/log/test_schema.py N --postgres > tests/log/schema_postgres_vN.txt

(the second starts a throwaway PostgreSQL server) and commit them next to the older pins. Older pins are never
regenerated: each one checks that applying migrations 1..k still yields the same schema, which fails if an
applied migration was edited.
"""

from __future__ import annotations

import re
import sqlite3
import sys
from pathlib import Path

import pytest

from imagegen_core.log import MIGRATIONS, LogDB
from imagegen_core.log.catalog import table_columns, table_names
from imagegen_core.log.migrations import BOOTSTRAP_SQL, split_statements
from tests.log.rows import apply_migrations_up_to

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


def pinned_versions(pattern: str = r"schema_v(\d+)\.sql") -> list[int]:
    return sorted(int(m.group(1)) for p in PIN_DIR.glob("schema_*") if (m := re.fullmatch(pattern, p.name)))


POSTGRES_PIN = r"schema_postgres_v(\d+)\.txt"


def dump_postgres_schema(db: LogDB) -> str:
    """Every table of the current schema from PostgreSQL's catalog: columns (type, NOT NULL, default or
    identity), constraints and indexes, with the schema name left out so any schema compares equal."""
    lines: list[str] = []
    for table in table_names(db):
        lines.append(f"TABLE {table}")
        for col in db.query(
            "SELECT column_name, data_type, is_nullable, column_default, identity_generation"
            " FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = ?"
            " ORDER BY ordinal_position",
            (table,),
        ):
            extra = " NOT NULL" if col["is_nullable"] == "NO" else ""
            if col["column_default"] is not None:
                extra += f" DEFAULT {col['column_default']}"
            if col["identity_generation"]:
                extra += f" GENERATED {col['identity_generation']} AS IDENTITY"
            lines.append(f"    {col['column_name']} {col['data_type']}{extra}")
        for con in db.query(
            "SELECT conname, pg_get_constraintdef(c.oid) AS def FROM pg_constraint c JOIN pg_class t"
            " ON t.oid = c.conrelid WHERE t.relname = ? AND t.relnamespace = current_schema()::regnamespace"
            " ORDER BY conname",
            (table,),
        ):
            lines.append(f"    CONSTRAINT {con['conname']} {con['def']}")
        for index in db.query(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = ?"
            " ORDER BY indexname",
            (table,),
        ):
            definition = index["indexdef"].replace(f" ON {db.query('SELECT current_schema() AS s')[0]['s']}.", " ON ")
            lines.append(f"    {definition}")
    return "\n".join(lines) + "\n"


def postgres_schema_up_to(url: str, version: int) -> str:
    """The PostgreSQL schema after migrations 1..version, applied through the dialect but without LogDB."""
    db = LogDB(url, migrate=False)
    try:
        with db.backend.transaction() as tx:
            apply_migrations_up_to(db, tx, version)
        return dump_postgres_schema(db)
    finally:
        db.close()


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


def test_latest_migration_has_a_postgres_pin() -> None:
    assert pinned_versions(POSTGRES_PIN)[-1] == MIGRATIONS[-1][0]


@pytest.mark.parametrize("version", pinned_versions(POSTGRES_PIN))
def test_each_pinned_postgres_schema_still_matches(version: int, postgres_url: str) -> None:
    pin = (PIN_DIR / f"schema_postgres_v{version}.txt").read_text(encoding="utf-8")
    assert postgres_schema_up_to(postgres_url, version) == pin


def test_logdb_creates_exactly_the_pinned_postgres_schema(postgres_url: str) -> None:
    with LogDB(postgres_url) as db:
        assert dump_postgres_schema(db) == (PIN_DIR / f"schema_postgres_v{MIGRATIONS[-1][0]}.txt").read_text()


def test_both_backends_have_the_same_tables_columns_and_indexes(tmp_path: Path, postgres_url: str) -> None:
    """One migration list, two dialects: the translation must not drop or add anything."""
    shapes = []
    for url in (f"sqlite:///{tmp_path / 'log.db'}", postgres_url):
        with LogDB(url) as db:
            tables = {table: table_columns(db, table) for table in table_names(db)}
            indexes = sorted(
                r["name"]
                for r in db.query(
                    "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
                    if db.dialect.name == "sqlite"
                    else "SELECT indexname AS name FROM pg_indexes WHERE schemaname = current_schema()"
                    " AND indexname NOT LIKE '%_pkey'"
                )
            )
            shapes.append((tables, indexes))
    assert shapes[0] == shapes[1]
    assert "requests" in shapes[0][0] and "requests_created_at" in shapes[0][1]


def _postgres_pin(version: int) -> str:
    from tests.pgcluster import PostgresCluster, find_bindir

    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL server binaries not found (apt-get install postgresql)")
    cluster = PostgresCluster(bindir)
    try:
        cluster.start()
        return postgres_schema_up_to(cluster.create_schema(), version)
    finally:
        cluster.stop()


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--postgres"]
    wanted = int(args[0]) if args else MIGRATIONS[-1][0]
    sys.stdout.write(_postgres_pin(wanted) if "--postgres" in sys.argv else schema_up_to(wanted))
