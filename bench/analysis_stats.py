"""How long the console's Provider stats page and the analysis summary take on a big log, next to the win rates
computed as they were before (a Python list of the providers raced, built request by request: the baseline).

The stats page refreshes every 10 s by default; on a log of 200k requests in 7 days its data took 10-13 s
(QA, D1), most of it in that list. Printed (Markdown, ready to paste into bench/README.md), for a log
(``--db PATH``, else a simulated week of ``--requests`` written to a temporary folder): CPU seconds (this
process's time, so that other work on the machine moves it less) and wall seconds of

1. reading the week's requests, attempts and picks as frames (what every figure below starts from);
2. the providers offered in each successful request: as a list per request (the baseline) and as a join (now),
   on the same frames, with the ratio baseline / now;
3. ``win_rate``, ``provider_summary`` and the page's ``stats_view`` ("Last 7 days"), each whole.

Run from the project root: ``.venv/bin/python bench/analysis_stats.py [--db PATH] [--requests N]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

WEEK_S = 7 * 24 * 3600


def timed(work: Callable[[], Any]) -> tuple[Any, float, float]:
    """``work()``'s result, CPU seconds and wall seconds."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = work()
    return result, time.process_time() - cpu, time.perf_counter() - wall


def offered_as_lists(requests: Any, attempts: Any) -> Any:
    """The baseline: the providers called in each request as a list, looked up per successful request."""
    won = requests[requests["status"] == "success"]
    called = attempts[attempts["outcome"] != "skipped"]
    raced = called.drop_duplicates(["request_id", "provider"]).groupby("request_id")["provider"].agg(list)
    return won["id"].map(raced).explode().dropna().astype(object).value_counts()


def offered_joined(requests: Any, attempts: Any) -> Any:
    """Now: one row per (successful request, provider called in it), by a join."""
    won = requests[requests["status"] == "success"]
    called = attempts[attempts["outcome"] != "skipped"]
    raced = called[["request_id", "provider"]].drop_duplicates()
    joined = won[["id"]].merge(raced, left_on="id", right_on="request_id")["provider"]
    return joined.dropna().astype(object).value_counts()


def simulated_log(folder: Path, requests: int) -> Path:
    """A simulated week of ``requests`` (the notebooks' newsroom providers) in ``folder``."""
    from imagegen_core.analysis import newsroom_config, newsroom_profiles, write_simulated_log
    from imagegen_core.log import LogDB

    path = folder / "imagegen.db"
    with LogDB(path) as db:
        write_simulated_log(db, newsroom_config(), newsroom_profiles(), requests=requests, seed=3)
    return path


def measure(path: Path) -> list[str]:
    """The table's rows for the log at ``path``."""
    from imagegen_core import analysis
    from imagegen_core.console_stats import stats_view
    from imagegen_core.log import LogDB

    db = LogDB(path)
    since = time.time() - WEEK_S
    rows = []
    (requests, attempts, _), cpu, wall = timed(
        lambda: (
            analysis.load_requests(db, since=since),
            analysis.load_attempts(db, since=since),
            analysis.load_picks(db, since=since),
        )
    )
    counted = f"{len(requests):,} requests, {len(attempts):,} attempts"
    rows.append(f"| read the frames ({counted}) | {cpu:.2f} | {wall:.2f} |")
    baseline, base_cpu, base_wall = timed(lambda: offered_as_lists(requests, attempts))
    now, now_cpu, now_wall = timed(lambda: offered_joined(requests, attempts))
    assert baseline.sort_index().equals(now.sort_index()), "the join must count what the lists counted"
    rows.append(f"| offered per provider: a list per request (baseline) | {base_cpu:.2f} | {base_wall:.2f} |")
    rows.append(
        f"| offered per provider: a join (now; baseline / now {base_cpu / max(now_cpu, 1e-9):.0f}x CPU)"
        f" | {now_cpu:.2f} | {now_wall:.2f} |"
    )
    for label, work in (
        ("win_rate, last 7 days", lambda: analysis.win_rate(db, since=since)),
        ("provider_summary, last 7 days", lambda: analysis.provider_summary(db, since=since)),
        ("stats_view (the page's data), Last 7 days", lambda: stats_view(db, range_label="Last 7 days")),
    ):
        _, cpu, wall = timed(work)
        rows.append(f"| {label} | {cpu:.2f} | {wall:.2f} |")
    db.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, help="An imagegen.db to measure (default: a simulated week).")
    parser.add_argument("--requests", type=int, default=20_000, help="Requests in the simulated week.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imagegen-bench-analysis-") as folder:
        path = args.db or simulated_log(Path(folder), args.requests)
        import altair  # noqa: F401  (imported once by the page's process, not per refresh: not timed)
        import pandas  # noqa: F401

        print(f"log: {path}\n")
        print("| step | CPU s | wall s |\n|---|---:|---:|")
        for row in measure(path):
            print(row)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
