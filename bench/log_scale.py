"""The request log's read paths on a year of log (2 million requests, about 4 million attempts), each against
its old query text in the same run.

A newsroom's imagegen logs some 5 500 requests a day; after a year the SQLite log holds two million requests and
twice as many attempts, and every surface that reads it (``imagegen stats``, the console's provider filter, the
notebooks' loaders, ``GET /admin/stats``, History) must still answer in interactive time. This builds such a
log once (``bench/_yearlog.py``: the project's own schema, a realistic mix of providers, outcomes and
latencies over 365 UTC days; cached under ``--dir``, reused by later runs of the same ``--requests``), then
times each read path as the product runs it and, where its query was rewritten, the query as it was before
(kept below, verbatim: :class:`Before`), on the same log in the same run, checking that both answer the same.

Windows count back from the log's end (the UTC midnight after its last day), not from the clock, so a log
built days ago is measured as on the day it was built.

Printed (Markdown): per read path, the median wall seconds (and CPU seconds of this process) of ``--rounds``
runs each, the baseline's, and baseline / now. The OS page cache is warm (one untimed run of each first): a
console or a server reads its log again and again.

Run from the project root: ``.venv/bin/python bench/log_scale.py`` (two million requests: the first run builds
the log, about 2 GB, in a few minutes) or ``--requests 50000`` for a quick run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import _yearlog

DAY_S = 86_400
DEFAULT_DIR = Path("/var/tmp/imagegen-log-scale")


def cached_log(folder: Path, requests: int) -> tuple[Path, dict[str, Any]]:
    """The year log of ``requests`` under ``folder``, built unless a complete one of this format is there (the
    description beside it is written last: a build cut short leaves none, and is started again)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"year-{requests}.db"
    about = folder / f"year-{requests}.json"
    if about.exists() and path.exists():
        info = json.loads(about.read_text())
        if info.get("format") == _yearlog.FORMAT:
            return path, info
    for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"), about):
        leftover.unlink(missing_ok=True)
    print(f"building {path} ({requests:,} requests over 365 days) ...", flush=True)
    info = _yearlog.build(path, requests=requests, today_s=time.time())
    info["bytes"] = path.stat().st_size
    about.write_text(json.dumps(info, indent=2))
    return path, info


class Before:
    """The read paths' queries as they were before the 2026-12-02 session (commit 7fdc5af), verbatim but for
    their helpers' module names: the baselines. :func:`before` puts them where the product looks them up."""

    @staticmethod
    def provider_stats(
        db: Any, *, since: float, until: float | None = None, providers: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        from imagegen_core.log.queries import _before, _names_in, interrupted_attempt, percentile

        before, bound = _before("started_at", until)
        only = "" if providers is None else f" AND {_names_in('provider', providers)}"
        rows = db.query(
            "SELECT provider, outcome, failure_class, duration_ms, cost_usd, error FROM attempts"
            f" WHERE started_at >= ?{before}{only} AND outcome NOT IN ('running', 'skipped')",
            (since, *bound, *(providers or ())),
        )
        by_provider: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_provider.setdefault(row["provider"], []).append(row)
        stats = []
        for provider in sorted(by_provider):
            attempts = by_provider[provider]
            durations = [
                float(r["duration_ms"]) for r in attempts if r["outcome"] == "success" and r["duration_ms"] is not None
            ]
            successes = sum(1 for r in attempts if r["outcome"] == "success")
            failures: dict[str, int] = {}
            cancelled = interrupted = 0
            for r in attempts:
                cut = r["outcome"] == "cancelled" and r["failure_class"] == "timeout"
                if r["outcome"] == "failed" or cut:
                    key = r["failure_class"] or "unknown"
                    failures[key] = failures.get(key, 0) + 1
                elif interrupted_attempt(r["outcome"], r["error"]):
                    interrupted += 1
                elif r["outcome"] == "cancelled":
                    cancelled += 1
            decided = successes + sum(failures.values())
            stats.append(
                {
                    "provider": provider,
                    "calls": len(attempts),
                    "successes": successes,
                    "success_rate": successes / decided if decided else None,
                    "cancelled": cancelled,
                    "interrupted": interrupted,
                    "failures": dict(sorted(failures.items())),
                    "p50_ms": percentile(durations, 50),
                    "p95_ms": percentile(durations, 95),
                    "cost_usd": sum(float(r["cost_usd"] or 0) for r in attempts),
                }
            )
        return stats

    @staticmethod
    def logged_providers(db: Any) -> list[str]:
        return [str(r["provider"]) for r in db.query("SELECT DISTINCT provider FROM attempts ORDER BY provider")]

    @staticmethod
    def request_rows(
        db: Any, *, since: float | None, until: float | None, providers: Sequence[str] | None
    ) -> list[dict[str, Any]]:
        from imagegen_core.log.analysis_queries import _in, _range

        clauses, params = _range("created_at", since, until)
        if providers is not None:
            condition, values = _in("provider", providers)
            clauses.append(f"id IN (SELECT request_id FROM attempts WHERE {condition} AND outcome <> 'skipped')")
            params += values
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        return db.query(  # type: ignore[no-any-return]
            "SELECT id, created_at, finished_at, status, provider, elapsed_ms, cost_usd, source, error, width, height"
            f" FROM requests{where} ORDER BY created_at, {db.dialect.insertion_order}",
            params,
        )

    @staticmethod
    def attempt_rows(
        db: Any, *, since: float | None, until: float | None, providers: Sequence[str] | None
    ) -> list[dict[str, Any]]:
        from imagegen_core.log.analysis_queries import _in, _range

        clauses, params = _range("started_at", since, until)
        if providers is not None:
            condition, values = _in("provider", providers)
            clauses.append(condition)
            params += values
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        return db.query(  # type: ignore[no-any-return]
            "SELECT id, request_id, provider, attempt, hedged, started_at, finished_at, outcome, failure_class,"
            f" http_status, duration_ms, cost_usd, retry_after_ms, error FROM attempts{where}"
            f" ORDER BY started_at, attempt, {db.dialect.insertion_order}",
            params,
        )

    @staticmethod
    def _ranked_percentiles(db: Any, sql: str, params: tuple[Any, ...], qs: Sequence[float]) -> dict[float, Any]:
        count = int(db.query(f"SELECT COUNT(*) AS n FROM ({sql}) AS ranked", params)[0]["n"])
        found: dict[float, float | None] = {}
        for q in qs:
            if count == 0:
                found[q] = None
                continue
            rank = (count - 1) * q / 100
            low = math.floor(rank)
            values = [float(r["v"]) for r in db.query(f"{sql} ORDER BY v LIMIT 2 OFFSET ?", (*params, low))]
            high = values[1] if rank > low and len(values) > 1 else values[0]
            found[q] = values[0] + (high - values[0]) * (rank - low)
        return found

    @staticmethod
    def request_elapsed_percentiles(
        db: Any, *, since: float, until: float, qs: Sequence[float] = (50, 95)
    ) -> dict[float, float | None]:
        sql = (
            "SELECT elapsed_ms AS v FROM requests WHERE created_at >= ? AND created_at < ?"
            " AND status IN ('success', 'failed') AND elapsed_ms IS NOT NULL"
        )
        return Before._ranked_percentiles(db, sql, (since, until), qs)

    @staticmethod
    def attempt_duration_percentiles(
        db: Any, provider: str, *, since: float, until: float, qs: Sequence[float] = (50, 95)
    ) -> dict[float, float | None]:
        sql = (
            "SELECT duration_ms AS v FROM attempts WHERE provider = ? AND started_at >= ? AND started_at < ?"
            " AND (outcome IN ('success', 'failed') OR (outcome = 'cancelled' AND failure_class = 'timeout'))"
            " AND duration_ms IS NOT NULL"
        )
        return Before._ranked_percentiles(db, sql, (provider, since, until), qs)


#: Where the product looks each old function up (``module: {name: baseline}``).
BEFORE: dict[str, dict[str, Callable[..., Any]]] = {
    "imagegen_core.log.queries": {
        "provider_stats": Before.provider_stats,
        "request_elapsed_percentiles": Before.request_elapsed_percentiles,
        "attempt_duration_percentiles": Before.attempt_duration_percentiles,
    },
    "imagegen_core.log.history": {"logged_providers": Before.logged_providers},
    "imagegen_core.console_stats": {"logged_providers": Before.logged_providers},
    "imagegen_core.analysis.frames": {
        "logged_providers": Before.logged_providers,
        "request_rows": Before.request_rows,
        "attempt_rows": Before.attempt_rows,
    },
}


@contextmanager
def before() -> Iterator[None]:
    """The product with its old queries: each :data:`BEFORE` function put in its module for the block."""
    saved: list[tuple[Any, str, Any]] = []
    try:
        for module_name, functions in BEFORE.items():
            module = importlib.import_module(module_name)
            for name, function in functions.items():
                saved.append((module, name, getattr(module, name)))
                setattr(module, name, function)
        yield
    finally:
        for module, name, function in reversed(saved):
            setattr(module, name, function)


def as_before(work: Callable[[], Any]) -> Callable[[], Any]:
    """``work`` run with the old queries (:func:`before`)."""

    def run() -> Any:
        with before():
            return work()

    return run


def timed(work: Callable[[], Any]) -> tuple[Any, float, float]:
    """``work()``'s result, wall seconds and CPU seconds (this process)."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = work()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def same(a: Any, b: Any) -> bool:
    """Equal, floats to 1e-9 relative (a sum's order may move its last bits): frames by their values."""
    if hasattr(a, "equals") and hasattr(b, "equals"):
        return bool(a.equals(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


class Case:
    """One read path: what the product runs now, and the same with the old queries (the baseline)."""

    def __init__(self, label: str, now: Callable[[], Any]) -> None:
        self.label, self.now, self.before = label, now, as_before(now)


def cases(db: Any, end: float, providers: Sequence[str]) -> list[Case]:
    """The read paths, with the log ``db`` ending at ``end``."""
    from imagegen_core import stats
    from imagegen_core.analysis import load_attempts, load_requests
    from imagegen_core.console_stats import provider_choices
    from imagegen_core.log.history import count_rows, search_requests

    last_day = datetime.fromtimestamp(end - 1, UTC).date()

    def cli_stats(days: int, names: list[str] | None = None) -> Callable[[], Any]:
        # What `imagegen stats --days N [--provider NAME]` reads (cli_stats.stats, now = the log's end)
        def run() -> Any:
            # Looked up when run, as the command does: the baseline puts the old functions in their module
            from imagegen_core.cli_stats import provider_filter
            from imagegen_core.log.queries import provider_stats, request_summary

            wanted = None if names is None else provider_filter(db, names)
            since = end - days * DAY_S
            return (
                request_summary(db, since=since, until=end, now=end, providers=wanted),
                provider_stats(db, since=since, until=end, providers=wanted),
            )

        return run

    def admin_stats(days: int) -> Callable[[], Any]:
        return lambda: stats.period_stats(db, stats.Period.last_days(days, today=last_day))

    def history_page() -> Any:
        # The History page without a search: the count, then the newest 20 (imagegen_core.history.search)
        return count_rows(db), search_requests(db, limit=20)

    week, month = end - 7 * DAY_S, end - 30 * DAY_S
    pick = [providers[0]]
    return [
        Case("`imagegen stats --days 365`", cli_stats(365)),
        Case("`imagegen stats --days 7`", cli_stats(7)),
        Case(f"`imagegen stats --days 7 --provider {pick[0]}`", cli_stats(7, pick)),
        Case("console: provider choices (`provider_choices`)", lambda: provider_choices(db, list(providers))),
        Case("notebook: `load_requests(since=7 days)`", lambda: load_requests(db, since=week)),
        Case("notebook: `load_attempts(since=7 days)`", lambda: load_attempts(db, since=week)),
        Case(
            f"notebook: `load_requests(since=30 days, providers=[{pick[0]!r}])`",
            lambda: load_requests(db, since=month, providers=pick),
        ),
        Case(
            f"notebook: `load_attempts(since=30 days, providers=[{pick[0]!r}])`",
            lambda: load_attempts(db, since=month, providers=pick),
        ),
        Case("`GET /admin/stats?days=7` (`stats.period_stats`)", admin_stats(7)),
        Case("`GET /admin/stats?days=365` (`stats.period_stats`)", admin_stats(365)),
        Case("History, first page (`count_rows` + `search_requests`)", history_page),
    ]


def measure(case: Case, rounds: int) -> dict[str, Any]:
    """Median wall and CPU seconds of ``rounds`` runs of the case (and of its baseline, alternating who goes
    first), after one untimed run of each; stops the script if the two answer differently."""
    result = case.now()
    if not same(result, case.before()):
        raise SystemExit(f"{case.label}: the rewritten query answers differently from the old one")
    runs: dict[str, list[tuple[float, float]]] = {"now": [], "before": []}
    for i in range(rounds):
        order = [("now", case.now), ("before", case.before)]
        if i % 2:
            order.reverse()
        for name, work in order:
            _, wall, cpu = timed(work)
            runs[name].append((wall, cpu))
    return {name: tuple(statistics.median(t[i] for t in ts) for i in (0, 1)) for name, ts in runs.items()}


def commit() -> str:
    try:
        found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return found.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"Where the log is cached ({DEFAULT_DIR}).")
    parser.add_argument("--requests", type=int, default=2_000_000, help="Requests in the year (2,000,000).")
    parser.add_argument("--rounds", type=int, default=3, help="Timed runs of each read path (3).")
    parser.add_argument("--only", help="Only the read paths whose label contains this text.")
    args = parser.parse_args()

    path, info = cached_log(args.dir, args.requests)
    import altair  # noqa: F401  (imported once by a notebook or the console: not timed)
    import pandas  # noqa: F401

    from imagegen_core.log import LogDB

    started = datetime.now(UTC)
    size_gb = path.stat().st_size / 1e9
    print(
        f"log: {path} ({size_gb:.2f} GB): {info['requests']:,} requests, {info['attempts']:,} attempts, "
        f"{info['picks']:,} picks; year ending {datetime.fromtimestamp(info['end'], UTC):%Y-%m-%d %H:%M} UTC"
    )
    print(
        f"run: {started:%Y-%m-%d %H:%M} UTC, commit {commit()}, Python {platform.python_version()},"
        f" SQLite {__import__('sqlite3').sqlite_version}, {args.rounds} rounds\n"
    )
    print("| read path | now: wall s (CPU s) | before: wall s (CPU s) | before / now |")
    print("|---|---:|---:|---:|")
    with LogDB(path) as db:
        for case in cases(db, info["end"], list(_yearlog.PROVIDERS)):
            if args.only and args.only not in case.label:
                continue
            found = measure(case, args.rounds)
            (now_wall, now_cpu), (before_wall, before_cpu) = found["now"], found["before"]
            ratio = before_wall / max(now_wall, 1e-9)
            now, old = f"{now_wall:.3f} ({now_cpu:.3f})", f"{before_wall:.3f} ({before_cpu:.3f})"
            print(f"| {case.label} | {now} | {old} | {ratio:.1f}x |", flush=True)
    print(f"\nended {datetime.now(UTC):%H:%M} UTC")


if __name__ == "__main__":
    main()
