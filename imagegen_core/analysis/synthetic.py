"""A realistic log without providers or waiting: races simulated by the replay engine (whose agreement
with the real race engine ``tests/test_replay.py`` checks) written through the log's own write API, with
timestamps spread over a working week. The notebooks use it when there is no real log to read.

The provider profiles follow published behaviour: Replicate's flux-schnell answers in about 1–3 s but
a cold start now and then takes 5–10 s; fal's flux-schnell about 1 s; Unsplash search about 0.3 s; each
fails a few per cent of the time.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import DEFAULT_DOCUMENT, RuntimeConfig, newest_valid_config, parse_config
from ..errors import AnalysisError
from ..log.analysis_queries import attempt_rows
from ..log.backend import database_url_problem, safe_url
from ..log.db import LogDB
from .frames import Since
from .latency import LatencyModel, Lognormal, Mixture, ProfileModel
from .replay import simulate
from .window import epoch_range, to_epoch, window_label

WEEK_S = 7 * 24 * 3600.0
#: Attempts that called the provider and ended (what the latency models learn from; skipped ones did not call).
_ENDED = frozenset({"success", "failed", "cancelled"})


def newsroom_profiles() -> dict[str, LatencyModel]:
    """Replicate (warm ~1.8 s, 12 % cold starts ~7 s), fal (~1 s), Unsplash (~0.3 s), with failures."""
    return {
        "replicate": ProfileModel(
            Mixture(((0.88, Lognormal(1_800, 0.3)), (0.12, Lognormal(7_000, 0.35)))),
            failure_rate=0.04,
            failure_class={"transient": 3, "rate_limited": 1, "content_rejected": 0.5},
        ),
        "fal": ProfileModel(
            Lognormal(1_000, 0.35), failure_rate=0.03, failure_class={"transient": 2, "content_rejected": 1}
        ),
        "unsplash": ProfileModel(Lognormal(300, 0.4), failure_rate=0.02, failure_class={"transient": 1}),
    }


def newsroom_config(document: Mapping[str, Any] | None = None) -> RuntimeConfig:
    """The default runtime config racing only Replicate, fal and Unsplash, with timeouts someone guessed
    (6 s, 4 s, 2 s: short enough that Replicate's cold starts time out), and ``document`` merged over."""
    providers: dict[str, Any] = {name: {"enabled": False} for name in DEFAULT_DOCUMENT["providers"]}
    providers.update(replicate={"timeout": 6_000}, fal={"timeout": 4_000}, unsplash={"timeout": 2_000})
    base = parse_config({"providers": providers}).to_document()
    for name in ("replicate", "fal", "unsplash"):
        base["providers"][name]["enabled"] = True
    return parse_config(document or {}, base=base)


def write_simulated_log(
    db: LogDB,
    config: RuntimeConfig,
    models: Mapping[str, LatencyModel],
    *,
    requests: int = 2_000,
    start: float | None = None,
    end: float | None = None,
    seed: int = 7,
) -> int:
    """Simulate ``requests`` races of ``config`` and record them in ``db`` as the service would (rows
    ``source = 'synthetic'``), between ``start`` and ``end`` (default: the last 7 days), busier in
    working hours (UTC). Saves ``config`` as a config version too. Returns the attempts written."""
    end = time.time() if end is None else end
    start = end - WEEK_S if start is None else start
    rng = random.Random(seed)
    times = sorted(_working_time(rng, start, end) for _ in range(requests))
    db.save_config(config.to_document(), source="synthetic", created_at=start)
    written = 0
    # The races run on the requests' own clock, so that breakers open and close as they would have that week.
    arrivals_ms = [(at - times[0]) * 1000 for at in times]
    races = simulate(config, models, requests=requests, seed=seed, arrivals_ms=arrivals_ms)
    for index, (at, race) in enumerate(zip(times, races, strict=True)):
        request_id = f"synthetic-{seed}-{index:06d}"
        db.start_request(
            request_id,
            created_at=at,
            prompt=f"synthetic request {index}",
            keyword=None,
            article_id=None,
            width=1200,
            height=630,
            style=None,
            source="synthetic",
        )
        for number, attempt in enumerate(race.attempts):
            attempt_id = f"{request_id}-{number}"
            db.start_attempt(
                attempt_id,
                request_id=request_id,
                provider=attempt.provider,
                attempt=attempt.attempt,
                hedged=attempt.hedged,
                started_at=at + attempt.start_ms / 1000,
            )
            db.finish_attempt(
                attempt_id,
                finished_at=at + attempt.end_ms / 1000,
                outcome=attempt.outcome,
                failure_class=attempt.failure_class,
                duration_ms=round(attempt.end_ms - attempt.start_ms),
                cost_usd=attempt.cost_usd,
            )
            written += 1
        cost = round(sum(a.cost_usd for a in race.attempts), 6)
        error = None if race.winner else ("deadline reached" if race.deadline_hit else "all providers failed")
        db.finish_request(
            request_id,
            finished_at=at + race.answer_ms / 1000,
            status="success" if race.winner else "failed",
            provider=race.winner or "default",
            elapsed_ms=round(race.answer_ms),
            error=error,
            cost_usd=cost,
        )
    return written


def _working_time(rng: random.Random, start: float, end: float) -> float:
    """A time in ``[start, end)``, three times likelier between 07:00 and 19:00 UTC than at night."""
    while True:
        at = rng.uniform(start, end)
        hour = (at % 86_400) / 3_600
        if rng.random() < (1.0 if 7 <= hour < 19 else 1 / 3):
            return at


#: How far past now a window may end (a clock a little ahead, "today" given as tomorrow's date at midnight).
FUTURE_SLACK_S = 24 * 3600


def notebook_log(
    database: Path | str | None = None,
    *,
    since: Since = None,
    until: Since = None,
    min_attempts: int = 300,
    requests: int = 2_000,
    seed: int = 7,
) -> tuple[LogDB, LogSource]:
    """The log a notebook analyses, and a sentence saying which one it is (``.synthetic`` tells which kind).

    The real log at ``database`` (a SQLite file path, or a ``sqlite:///`` or ``postgresql://`` URL; default:
    the one ``Settings()`` points at — ``IMAGEGEN_DATABASE_URL`` or the file under ``IMAGEGEN_HOME``) when it
    holds at least ``min_attempts`` finished attempts (calls that ended: not those an open breaker skipped)
    in the window the notebook reports on, ``[since, until)`` (default: the 7 days before ``until``, which
    defaults to now); otherwise a synthetic week ending at ``until`` (:func:`write_simulated_log` with
    :func:`newsroom_profiles`) in a fresh temporary folder — never mixed into a real log, and removed with
    the returned LogDB (at the latest when the kernel exits). ValueError for a URL of another database
    (``mysql://…``), as ``Settings`` refuses it, rather than a simulated week in its place.
    """
    end = to_epoch(until)
    end = time.time() if end is None else end
    start = to_epoch(since)
    start = end - WEEK_S if start is None else start
    epoch_range(start, end)  # refuses since after until
    if end > time.time() + FUTURE_SLACK_S:  # QA: REPORT_END 2030-01-01 simulated a week in 2030 without a word
        raise AnalysisError(
            f"the window ends in the future ({window_label(start, end)}): end it before now (the notebooks' REPORT_END)"
        )
    window = "the last 7 days" if since is None and until is None else window_label(start, end)
    if database is None:
        from ..settings import Settings

        database = Settings().log_database_url
    where = log_label(database)
    # A missing SQLite file is no log: don't create one just to look.
    if not _missing_sqlite_file(str(database)):
        db = LogDB(database)
        rows = attempt_rows(db, since=start, until=end, providers=None)
        finished = [r for r in rows if r["outcome"] in _ENDED and r["duration_ms"] is not None]
        if len(finished) >= min_attempts:
            return db, LogSource(f"the real log at {where}: {len(finished)} attempts in {window}", synthetic=False)
        db.close()
        why = (
            f"the real log at {where} has {len(finished)} finished attempts in {window}, fewer than the"
            f" {min_attempts} this analysis needs: generate more images, report on a busier week, or point"
            " IMAGEGEN_HOME at a busier log"
        )
    else:
        why = f"there is no log at {where} yet: generate some images first"
    folder = Path(tempfile.mkdtemp(prefix="imagegen-notebook-"))
    db = LogDB(folder / "imagegen.db")
    # Every run used to leave its ~1 MB week behind in the temporary folder.
    weakref.finalize(db, _remove_week, db.backend, folder)
    # The simulated week is the reported one, so that a report on a past week has something to show.
    written = write_simulated_log(
        db, newsroom_config(), newsroom_profiles(), requests=requests, seed=seed, start=start, end=end
    )
    return db, LogSource(
        f"a synthetic week in {folder}: {requests} requests, {written} attempts, simulated with"
        f" newsroom_profiles(), because {why}. Its figures are not your providers'.",
        synthetic=True,
    )


def log_label(database: Path | str) -> str:
    """Where a log is, safe to show: a file path as it is, a URL without its password. ValueError, in the
    words ``Settings`` uses, for a URL of a database imagegen does not log to (``mysql://…``)."""
    text = str(database)
    if isinstance(database, Path) or "://" not in text:
        return text
    problem = database_url_problem(text)
    if problem:
        raise AnalysisError(f"the log database URL {safe_url(text)} {problem} (or pass the SQLite file's path)")
    return safe_url(text)


class LogSource(str):
    """The sentence saying which log a notebook analyses; ``synthetic`` is True for a simulated week (whose
    figures must not be applied to a real deployment)."""

    synthetic: bool

    def __new__(cls, text: str, *, synthetic: bool) -> LogSource:
        source = super().__new__(cls, text)
        source.synthetic = synthetic
        return source


def stored_config(db: LogDB) -> RuntimeConfig:
    """The config a process would put in force from ``db``: the newest stored version that is valid (one a
    newer imagegen stored may not be), else the defaults."""
    found = newest_valid_config(db.recent_configs())
    return found[1] if found is not None else parse_config(None)


def _remove_week(backend: Any, folder: Path) -> None:
    """Close a synthetic week's connections and remove its folder (garbage collection or interpreter exit)."""
    backend.close()
    shutil.rmtree(folder, ignore_errors=True)


def _missing_sqlite_file(target: str) -> bool:
    if target.startswith("postgresql://") or target.startswith("postgres://"):
        return False
    return not Path(target.removeprefix("sqlite:///")).exists()
