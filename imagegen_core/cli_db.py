"""``imagegen db``: the log database itself — ``migrate``, ``check`` and ``copy --to URL``.

These open only the log (never a store or providers), so they work before the rest is configured, e.g. while
moving to PostgreSQL. Registered on the ``imagegen`` group by ``cli.py``. Failures are one line on stderr:
exit 1 when the database is unreachable, behind or the copy failed, 2 for bad settings or arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from .cli_common import fail
from .errors import ImageGenError

if TYPE_CHECKING:
    from .log.db import LogDB

#: Exit status when the database is unreachable, not migrated, or a copy did not complete.
EXIT_DB = 1


def _settings_url(url: str | None, option: str = "--url") -> str:
    """``url`` when given, else the log the environment points at (``IMAGEGEN_DATABASE_URL`` / ``IMAGEGEN_HOME``)."""
    if url:
        from .log.backend import database_url_problem

        problem = database_url_problem(url)
        if problem:
            fail(f"{option}: {problem}")
        return url
    from .settings import Settings

    try:
        return Settings().log_database_url
    except ImageGenError as exc:
        fail(str(exc))


@click.group()
def db() -> None:
    """The log database: migrate, check, or copy it to PostgreSQL."""


@db.command()
@click.option("--url", help="Database URL (default: IMAGEGEN_DATABASE_URL, else the SQLite file in IMAGEGEN_HOME).")
def migrate(url: str | None) -> None:
    """Apply pending schema migrations (every process also does this on first use)."""
    from .log.db import LogDB

    log = LogDB.from_url(_settings_url(url), migrate=False)
    try:
        applied = log.migrate()  # not open(): opened without migrating, it refuses the schema migrate fixes
        version = log.schema_version()
    except ImageGenError as exc:
        fail(str(exc), EXIT_DB)
    finally:
        log.close()
    done = f"applied {', '.join(f'v{v}' for v in applied)}" if applied else "nothing to apply"
    click.echo(f"{log.label}: schema v{version} ({done})")


@db.command()
@click.option("--url", help="Database URL (default: IMAGEGEN_DATABASE_URL, else the SQLite file in IMAGEGEN_HOME).")
def check(url: str | None) -> None:
    """Connect, and report the engine and schema version; exit 1 when unreachable or not migrated."""
    from .log.backend import file_in_the_way
    from .log.db import LogDB, unversioned_tables
    from .log.migrations import MIGRATIONS
    from .log.sqlite import DAMAGED_ADVICE

    log = LogDB.from_url(_settings_url(url), migrate=False)  # a check changes nothing
    if log.path is not None and not log.path.is_file():  # and creates no empty SQLite file either
        blocker = file_in_the_way(log.path.parent)
        if blocker is not None:  # no command could create it there
            fail(f"{log.label}: {blocker} is a file, not a folder: move it away or set IMAGEGEN_HOME", EXIT_DB)
        fail(
            f"{log.label}: no log database there yet; `imagegen db migrate` creates it (as does the first image "
            "request)",
            EXIT_DB,
        )
    try:
        engine = log.server_version()  # not open(): it refuses the schema this check reports on
        version = log.schema_version()
        if log.has_unversioned_tables():
            fail(unversioned_tables(log.label), EXIT_DB)
        damage = getattr(log.backend, "damage", None)  # SQLite's file check (a server checks its own)
        found = damage() if damage is not None else None
        if found is not None:
            fail(f"{log.label}: {found}: {DAMAGED_ADVICE}", EXIT_DB)
    except ImageGenError as exc:
        fail(str(exc), EXIT_DB)
    finally:
        log.close()
    known = MIGRATIONS[-1][0]
    if version < known:
        fail(f"{log.label}: schema v{version}, this imagegen needs v{known}; run `imagegen db migrate`", EXIT_DB)
    if version > known:
        fail(f"{log.label}: schema v{version} is newer than this imagegen (v{known}); upgrade imagegen", EXIT_DB)
    click.echo(f"{log.label}: ok · {engine} · schema v{version}")
    waiting = _kept_rows(log)
    if waiting is not None and waiting[0]:
        count, folder = waiting
        click.echo(
            f"{count} log row(s) kept on this machine through an outage wait for it in {folder}: the next "
            "imagegen process started here writes them (`imagegen stats` will do), as does a running one with its "
            "next requests"
        )


def _kept_rows(log: LogDB) -> tuple[int, Path] | None:
    """How many rows this machine's spill (under IMAGEGEN_HOME) keeps for ``log``, and where; None when the
    settings cannot be read (this check needs only the database, and says nothing about the rest)."""
    from .log.spill import LogSpill, spill_folder
    from .settings import Settings

    try:
        home = Settings().home
    except ImageGenError:
        return None
    spill = LogSpill(spill_folder(home, log.label), log)
    return spill.waiting(), spill.root


@db.command()
@click.option(
    "--to", "to_url", required=True, help="Target database URL, e.g. postgresql://user:pw@host:5432/imagegen."
)
@click.option("--from", "from_url", help="Source URL (default: the log the environment points at).")
@click.option("--force", is_flag=True, help="Replace the rows a non-empty target already holds.")
def copy(to_url: str, from_url: str | None, force: bool) -> None:
    """Copy the whole log (requests, attempts, picks, breakers, config versions) into another database."""
    from .log.db import LogDB
    from .log.transfer import copy_log

    source = LogDB.from_url(_settings_url(from_url, "--from"))
    target = LogDB.from_url(_settings_url(to_url, "--to"))  # both URLs checked before anything is opened
    if source.path is not None and not source.path.is_file():  # opening it would create an empty log to copy
        fail(f"{source.label}: no log database there to copy from (check --from)", EXIT_DB)

    def report(table: str, rows: int) -> None:
        click.echo(f"{table:<16}{rows:>10}")

    try:
        click.echo(f"copying {source.label} → {target.label}")
        counts = copy_log(source, target, force=force, progress=report)
    except ImageGenError as exc:
        fail(str(exc), EXIT_DB)
    finally:
        source.close()
        target.close()
    click.echo(f"{'total':<16}{sum(counts.values()):>10}  (row counts verified)")
