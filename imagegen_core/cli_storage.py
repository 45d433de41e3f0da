"""``imagegen storage``: usage statistics of the image store, and the upload of spooled images.

``stats`` prints objects and bytes per month under the key prefix (default images and other objects on
their own rows). ``flush`` uploads the images that were paid for but could not be stored, and exits 1
if any of them is still waiting afterwards: images kept for another store than the one this process's settings
describe (R2 images, flushed without the R2 settings) included, which it leaves in the spool and names. It
opens no log database: it writes no row, and runs with the log away.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any

import click

from .cli_common import fail, open_imagegen, open_store

if TYPE_CHECKING:
    from .storage.spool import FlushReport, SpoolBacklog, SpoolEntry
    from .storage.stats import StorageStats

EXIT_FLUSH_INCOMPLETE = 1


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def storage() -> None:
    """Image storage: usage statistics and the spool of images waiting for upload."""


@storage.command()
@click.option("--prefix", help="Key prefix to count (default: r2.pathPrefix of the runtime config).")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON on stdout.")
def stats(prefix: str | None, as_json: bool) -> None:
    """Objects and bytes per month (YYYY-MM) under the key prefix, plus the spool.

    When the store fails (or R2 does not answer a page of the listing in 10 s), the images waiting in the spool
    are still printed, then the store's error on stderr, with exit status 2."""
    from .config import path_prefix_problem
    from .errors import StorageError

    shows = "counting under the built-in config's key prefix" if prefix is None else "counting under --prefix"
    # Reads the log for r2.pathPrefix only: creates none, and goes on without one that cannot be opened (a full
    # disk: what an operator then needs to see), with the config read from the file as it stands.
    with open_imagegen(no_log_shows=shows, without_log=True) as gen:
        if prefix is not None:
            problem = path_prefix_problem(prefix.rstrip("/"))
            if problem:  # "../.." counted the folders around the store
                fail(f"--prefix {prefix!r} {problem}")
        if prefix is None:
            prefix = (gen.config if gen.log_unavailable_at_start else gen.reload_config()).r2.path_prefix
        prefix = prefix.rstrip("/")
        # Read first: during a store outage, how many paid-for images wait is what the operator needs most.
        backlog = gen.spool.backlog()
        elsewhere = gen.spool.elsewhere(gen.store) if backlog.images else {}
        try:
            usage: StorageStats = asyncio.run(gen.store.stats(prefix=prefix))
        except StorageError as exc:
            if as_json:
                click.echo(json.dumps({"spool": _spool_document(backlog, elsewhere), "error": str(exc)}, indent=2))
            elif backlog.images:
                click.echo(_spool_line(backlog, elsewhere))
            fail(str(exc))
    if as_json:
        document: dict[str, Any] = usage.to_dict()
        document["spool"] = _spool_document(backlog, elsewhere)
        click.echo(json.dumps(document, indent=2))
        return
    click.echo(f"store: {usage.backend}, {usage.location}, prefix {usage.prefix or '(none)'}/")
    click.echo(f"{'month':<10}{'objects':>10}{'bytes':>16}{'size':>11}")
    for month in usage.months:
        click.echo(_row(month.month, month.objects, month.bytes))
    click.echo(_row("defaults", usage.defaults.objects, usage.defaults.bytes))
    if usage.other.objects:
        click.echo(_row("other", usage.other.objects, usage.other.bytes))
    total = usage.total
    click.echo(_row("total", total.objects, total.bytes))
    if backlog.images:
        click.echo(_spool_line(backlog, elsewhere))


def _spool_document(backlog: SpoolBacklog, elsewhere: dict[str, int]) -> dict[str, Any]:
    """The spool's counts (every image waiting, whichever store it was kept for) and, in ``otherStores``, how many
    of them were kept for another store than this process's (by that store's destination)."""
    return {
        "objects": backlog.images,
        "bytes": backlog.bytes,
        "oldestAgeS": backlog.oldest_age_s(),
        "otherStores": elsewhere,
    }


def _spool_line(backlog: SpoolBacklog, elsewhere: dict[str, int]) -> str:
    """``spool: 3 image(s), 1.2 MiB waiting for upload (the oldest for 2 h 5 min): run `imagegen storage flush```;
    the age once it is a minute or more (younger, an upload is still being retried); then, for images kept for
    another store, how many and which store (this process's flush leaves them)."""
    age_s = backlog.oldest_age_s()
    oldest = f" (the oldest for {_duration(age_s)})" if age_s is not None and age_s >= 60 else ""
    # The advice only when this process's flush has something to upload (QA: given when every one was another
    # store's, and that flush then moved nothing and exited 1).
    advice = ": run `imagegen storage flush`" if backlog.images > sum(elsewhere.values()) else ""
    line = f"spool: {backlog.images} image(s), {_human(backlog.bytes)} waiting for upload{oldest}{advice}"
    for destination, count in elsewhere.items():
        line += f"; {count} of them kept for another store ({destination}): {other_store_advice()}"
    return line


def other_store_advice(store: str = "<that store>") -> str:
    """What to do about images kept for another store than this process's, ``store`` (QA: with only the first
    half, images kept for a mistyped endpoint could never be uploaded once it was fixed)."""
    return (
        "flush from a process configured for that store, or, if that store was a mistake (a mistyped endpoint),"
        f" upload them to this one with `imagegen storage flush --from-store '{store}'`"
    )


def _duration(seconds: int) -> str:
    """``75`` → ``1 min 15 s``; ``7500`` → ``2 h 5 min``; ``200000`` → ``2 d 7 h``."""
    for unit, size, smaller, small_size in (("d", 86400, "h", 3600), ("h", 3600, "min", 60), ("min", 60, "s", 1)):
        if seconds >= size:
            rest = (seconds % size) // small_size
            return f"{seconds // size} {unit}" + (f" {rest} {smaller}" if rest else "")
    return f"{seconds} s"


@storage.command()
@click.option(
    "--from-store",
    "from_stores",
    multiple=True,
    metavar="STORE",
    help='Also upload the images kept for STORE (as a flush names it, e.g. "r2 bucket news at '
    'https://...") to the store configured now: for a store that was a mistake, such as a mistyped '
    "endpoint. Repeatable.",
)
def flush(from_stores: tuple[str, ...]) -> None:
    """Upload the images kept in the spool (the store refused them earlier) and remove them from it.

    An entry whose data cannot be read, is missing or is corrupt is moved to the spool's damaged/ folder
    (never deleted) and named on stderr; the exit status is then 1 too, as an operator has to look at it.
    Images kept for another store (say R2, with this process configured for the local folder) are left in the
    spool, named on stderr with that store, and the exit status is 1: flush them from a process configured for
    that store, or, when that store was a mistake, name it with --from-store."""
    # No log: a flush writes no row, and the images must move whatever the log database does.
    with open_store() as (store, spool):
        if from_stores:
            kept_for = spool.elsewhere(store)
            unknown = [s for s in from_stores if s not in kept_for]
            if unknown:
                known = "; ".join(f"{d!r} ({n})" for d, n in kept_for.items()) or "none"
                fail(
                    f"no image in the spool is kept for store {unknown[0]!r}; stores with kept images other than "
                    f"this one: {known}"
                )
        if not spool.has_files():
            click.echo("spool is empty: nothing to upload")
            return
        report = asyncio.run(spool.flush(store, on_try=_say_trying, adopt=frozenset(from_stores)))
        for key in report.moved:
            click.echo(f"moved {key} -> {store.url_for(key)}")
    for line in report.set_aside.values():
        click.echo(f"imagegen: {line}", err=True)
    for key in report.failed:
        click.echo(f"imagegen: not moved {key}: {report.errors[key]}", err=True)
    for destination, count in report.elsewhere.items():
        click.echo(
            f"imagegen: {count} image(s) kept for another store ({destination}) left in the spool: "
            + other_store_advice(destination),
            err=True,
        )
    click.echo(_flush_summary(report))
    if not report.ok or report.set_aside or report.elsewhere:
        sys.exit(EXIT_FLUSH_INCOMPLETE)


def _say_trying(entry: SpoolEntry, number: int, count: int) -> None:
    """One line on stderr per entry as its upload starts: against a store that answers slowly (or not at all)
    the flush otherwise said nothing for minutes."""
    click.echo(f"imagegen: uploading {entry.key} ({number} of {count})", err=True)


def _flush_summary(report: FlushReport) -> str:
    """``moved 2, failed 0, set aside 3 damaged, 1 left for another store`` (each part after ``failed`` only
    when it happened)."""
    summary = f"moved {len(report.moved)}, failed {len(report.failed)}"
    if report.set_aside:
        summary += f", set aside {len(report.set_aside)} damaged"
    if report.skipped:
        why = "the store does not answer" if report.unanswered else "after repeated failures"
        summary += f", {report.skipped} not tried {why}"
    if report.elsewhere:
        summary += f", {sum(report.elsewhere.values())} left for another store"
    return summary


def _row(label: str, objects: int, size: int) -> str:
    return f"{label:<10}{objects:>10}{size:>16}{_human(size):>11}"


def _human(size: int) -> str:
    """``1536`` → ``1.5 KiB``."""
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


if __name__ == "__main__":  # pragma: no cover - `python -m imagegen_core.cli_storage` before registration
    storage()
