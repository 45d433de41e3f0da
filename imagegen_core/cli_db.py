"""``imagegen db``: the log database itself — ``migrate``, ``check``, ``copy --to URL`` and ``prune``.

These open only the log (never a store or providers), so they work before the rest is configured, e.g. while
moving to PostgreSQL. Registered on the ``imagegen`` group by ``cli.py``. Failures are one line on stderr:
exit 1 when the database is unreachable, behind or the copy failed, 2 for bad settings or arguments.
``prune`` is :mod:`.log.retention` behind options.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .cli_common import EXIT_INTERRUPTED, JsonRefusalCommand, fail
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
    """The log database: migrate, check, copy or prune it."""


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


@db.command(cls=JsonRefusalCommand)  # with --json, a refusal (exit 2) is also the API's error shape on stdout
@click.option(
    "--before", metavar="DATE", help="Prune requests started before this UTC date (or date-time), e.g. 2026-09-01."
)
@click.option("--older-than", "older_than", metavar="DAYS", help="Prune requests started over DAYS days ago.")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted, per table; change nothing.")
@click.option("--vacuum", is_flag=True, help="Afterwards give the space back (SQLite: VACUUM; see below).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of the summary line.")
@click.option("--url", help="Database URL (default: IMAGEGEN_DATABASE_URL, else the SQLite file in IMAGEGEN_HOME).")
def prune(
    before: str | None, older_than: str | None, dry_run: bool, vacuum: bool, as_json: bool, url: str | None
) -> None:
    """Delete the requests started before a cut, with their attempts and picks.

    Prunes the tables requests, attempts and picks only; config versions, breaker state and transitions stay,
    as do the images in the store. A request still running, or ended or picked at or after the cut, is kept.
    Deletes in batches of a few hundred requests, each its own short transaction, so a running `imagegen
    serve` or console waits for one batch at most. Ctrl-C stops after the batch under way (every batch is
    committed whole) and says how far it got; run the command again to go on.

    --vacuum: on SQLite, VACUUM rewrites the file without the freed pages (it needs that much free disk, and
    holds the write lock throughout: seconds per GB, for a quiet hour); on PostgreSQL, VACUUM (ANALYZE) of
    the pruned tables, which writers do not wait for, makes the space reusable rather than the files smaller.

    Exit 0 when done; 1 when the database is unreachable, locked or not migrated; 2 for bad options;
    130 when interrupted.
    """
    import time

    from .log.db import LogDB
    from .log.retention import prune_log, vacuum_log

    now = time.time()
    cut = _prune_cut(before, older_than, now=now)
    log = LogDB.from_url(_settings_url(url), migrate=False)  # a schema this imagegen cannot use is refused
    if log.path is not None and not log.path.is_file():  # and no empty log is made to prune
        fail(f"{log.label}: no log database there to prune (check IMAGEGEN_HOME, IMAGEGEN_DATABASE_URL or --url)",
             EXIT_DB)  # fmt: skip
    done: list[Any] = []  # the totals after the last committed batch (only the latest kept)

    def committed(totals: Any) -> None:
        done[:] = [totals]

    swept = None
    with _stop_on_interrupt() as stopping:
        try:
            result = prune_log(log, before=cut, dry_run=dry_run, stop=stopping.is_set, progress=committed)
        except ImageGenError as exc:
            log.close()
            so_far = f" ({_summary(done[-1])} before it stopped; run the command again to go on)" if done else ""
            fail(f"{exc}{so_far}", EXIT_DB)
        except KeyboardInterrupt:  # a second Ctrl-C, inside a batch: that batch is rolled back
            log.close()
            so_far = _summary(done[-1]) if done else "nothing pruned"
            fail(f"interrupted: {so_far}; the batch under way was rolled back, run the command again to go on",
                 EXIT_INTERRUPTED)  # fmt: skip
        if vacuum and not dry_run and not result.interrupted:
            try:
                swept = vacuum_log(log)  # one statement: a Ctrl-C meanwhile waits for its end
            except ImageGenError as exc:
                log.close()
                click.echo(_summary(result))  # the prune itself is done
                fail(f"vacuum: {exc}", EXIT_DB)
    log.close()
    if as_json:
        document = result.to_json()
        document["vacuum"] = swept.to_json() if swept is not None else None
        click.echo(json.dumps(document))
    else:
        click.echo(_summary(result))
        if swept is not None:
            click.echo(
                f"vacuum: {_size(swept.size_before)} → {_size(swept.size_after)} in {swept.elapsed_s:.1f} s"
                f" ({swept.note})"
            )
    if result.interrupted:
        click.echo("imagegen: interrupted between batches: the batches done are committed; run the command again"
                   " to go on", err=True)  # fmt: skip
        raise SystemExit(EXIT_INTERRUPTED)


def _prune_cut(before: str | None, older_than: str | None, *, now: float) -> float:
    """The cut ``--before`` / ``--older-than`` ask for, in Unix seconds, or a one-line refusal (exit 2; the
    number read here, not by Click, whose refusal takes three lines)."""
    from .analysis.window import to_epoch
    from .errors import AnalysisError
    from .log.retention import utc_text

    if (before is None) == (older_than is None):
        fail("give one of --before DATE and --older-than DAYS: where the prune cuts")
    if older_than is not None:
        try:
            days = int(older_than)
        except ValueError:
            fail(f"--older-than: {older_than!r} is not a whole number of days: give e.g. 90")
        if days < 0:
            fail(f"--older-than: {days} days is negative: give 0 or more days")
        try:
            utc_text(now - days * 86_400)
        except (ValueError, OverflowError, OSError):
            fail(f"--older-than: {days} days reaches before the year 1: give fewer days")
        return now - days * 86_400
    assert before is not None
    try:
        cut = to_epoch(before)
    except AnalysisError:
        fail(
            f"--before: {before!r} is not an ISO 8601 date or date-time: give e.g. 2026-09-01 or 2026-09-01T08:00"
            " (UTC unless it ends with an offset such as +01:00 or Z)"
        )
    assert cut is not None
    if cut > now:
        fail(f"--before: {before} is in the future: a prune only deletes what is older than a past date")
    return cut


#: The pruned tables in the order the summary names them.
PRUNED_ORDER = ("requests", "attempts", "picks")


def _rows(count: int, noun: str) -> str:
    """``1 request``, ``2,000 requests``."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _summary(result: Any) -> str:
    """One line: rows per table, the cut, the batches and the time taken."""
    from .log.retention import utc_text

    counts = ", ".join(_rows(result.deleted.get(table, 0), table.removesuffix("s")) for table in PRUNED_ORDER)
    head = f"would prune {counts}" if result.dry_run else f"pruned {counts}"
    line = f"{head} started before {utc_text(result.cut)}"
    if not result.dry_run:
        line += (
            f" in {result.batches} batch{'es' if result.batches != 1 else ''}"
            f" (median {result.batch_median_s * 1000:.0f} ms, max {result.batch_max_s * 1000:.0f} ms)"
        )
    line += f", {result.elapsed_s:.1f} s"
    kept = []
    if result.kept_running:
        kept.append(f"{result.kept_running:,} still running")
    if result.kept_later:
        kept.append(f"{result.kept_later:,} ended or picked after the cut")
    if kept:
        line += f"; kept {' and '.join(kept)}"
    return line + (" (dry run: nothing changed)" if result.dry_run else "")


def _size(size: int) -> str:
    """Bytes as MB (or kB for a small log)."""
    return f"{size / 1e6:,.1f} MB" if size >= 1e6 else f"{size / 1e3:,.0f} kB"


@contextmanager
def _stop_on_interrupt() -> Iterator[threading.Event]:
    """An event set by the first Ctrl-C (or SIGTERM) inside the block, so that the prune stops between two
    batches; a second one interrupts at once (KeyboardInterrupt: the batch under way is rolled back)."""
    stopping = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stopping
        return

    def first(signum: int, frame: object) -> None:
        stopping.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _interrupt)

    previous = {sig: signal.signal(sig, first) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stopping
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
