"""The log as pandas DataFrames: requests, attempts and editors' picks over a time range, optionally
for some providers only. pandas is imported inside the functions, so importing imagegen_core stays cheap.

Every loader takes the same keywords: ``since`` / ``until`` (Unix seconds, datetimes, dates or ISO 8601
strings, naive = UTC; half-open ``[since, until)``) and ``providers`` (a name or names, in any case, surrounding
spaces ignored; None for every provider; a name the log has no attempt of, or an empty list, is a ValueError,
not an empty frame). Times come back as UTC datetimes; empty results keep their columns, so charts and tables
need no special case.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from ..errors import AnalysisError, AnalysisTypeError
from ..extras import require
from ..log.analysis_queries import PICK_COLUMNS, attempt_rows, pick_rows, request_rows
from ..log.db import LogDB
from ..log.history import REUSED, logged_providers
from .window import epoch_range, match_providers, provider_list, providers_as_logged

if TYPE_CHECKING:
    import pandas as pd

REQUEST_COLUMNS = (
    "id",
    "created_at",
    "finished_at",
    "status",
    "provider",
    "elapsed_ms",
    "cost_usd",
    "source",
    "error",
    "width",
    "height",
)
ATTEMPT_COLUMNS = (
    "id",
    "request_id",
    "provider",
    "attempt",
    "hedged",
    "started_at",
    "finished_at",
    "outcome",
    "failure_class",
    "http_status",
    "duration_ms",
    "cost_usd",
    "retry_after_ms",
    "error",  # tells an attempt a crash ended (queries.INTERRUPTED) from a race lost
)

#: Unix seconds, a datetime, a date or an ISO 8601 string (see :func:`.window.to_epoch`); None: unbounded. Not
#: milliseconds, NaN, or ``since`` after ``until``: those raise ValueError rather than select nothing.
Since = float | datetime | date | str | None
Providers = str | Iterable[str] | None


def _frame(
    rows: list[dict[str, Any]], columns: Sequence[str], *, times: Sequence[str], floats: Sequence[str]
) -> pd.DataFrame:
    need_pandas()
    import pandas as pd

    frame = pd.DataFrame.from_records(rows, columns=list(columns))
    for column in times:
        frame[column] = pd.to_datetime(frame[column].astype("float64"), unit="s", utc=True)
    for column in floats:  # NULL durations become NaN, not object columns
        frame[column] = frame[column].astype("float64")
    return frame


def need_pandas() -> None:
    """Before building a frame from the log: :class:`~imagegen_core.errors.MissingExtraError` naming the extra
    that installs pandas (a plain ``pip install imagegen`` has none), not a bare ModuleNotFoundError."""
    require("notebooks", feature="imagegen_core.analysis", modules=("pandas",))


def expect_frame(frame: Any, columns: Iterable[str], loader: str) -> None:
    """Refuse, in one line naming the loader to use, a frame that lacks the columns a chart or metric reads
    (``latency_cdf_chart(load_requests(db))`` would otherwise end in a pandas ``KeyError``)."""
    missing = [c for c in columns if c not in getattr(frame, "columns", ())]
    if missing:
        raise AnalysisError(f"expects a frame from {loader}(db, ...): it has no {', '.join(missing)} column")


def log_range(db: Any, since: Since, until: Since) -> tuple[float | None, float | None]:
    """What every loader checks first: ``db`` is an open log, refusing anything else in one line saying what
    to pass (a path passed as ``db`` ended in ``AttributeError: 'str' object has no attribute 'query'``); and
    ``since``/``until`` as Unix seconds (:func:`.window.epoch_range`)."""
    expect_log(db)
    return epoch_range(since, until)


def expect_log(db: Any) -> None:
    """TypeError, in one line saying what to pass, unless ``db`` is an open log."""
    if not isinstance(db, LogDB):
        raise AnalysisTypeError(
            f"takes the log as a LogDB, not {type(db).__name__}: LogDB('/path/imagegen.db'),"
            " LogDB.from_url('postgresql://...') or notebook_log()"
        )


def resolve_providers(db: LogDB, providers: Providers) -> list[str] | None:
    """The ``providers`` keyword as the log spells the names (:func:`.window.match_providers`: any case; a name
    the log has no attempt of is a ValueError naming those it has); None for every provider."""
    wanted = provider_list(providers)
    if wanted is None:
        return None
    expect_log(db)
    return match_providers(wanted, logged_providers(db))


def load_requests(db: LogDB, *, since: Since = None, until: Since = None, providers: Providers = None) -> pd.DataFrame:
    """Requests created in the range, oldest first (:data:`REQUEST_COLUMNS`). With ``providers``: the
    requests in which one of them raced (an attempt its open breaker skipped does not count)."""
    start, end = log_range(db, since, until)
    rows = request_rows(db, since=start, until=end, providers=resolve_providers(db, providers))
    return _frame(rows, REQUEST_COLUMNS, times=("created_at", "finished_at"), floats=("elapsed_ms", "cost_usd"))


#: Request rows that are no arrival for a replay's pacing: rejected input never raced, a reuse (History's
#: *Reuse for an article*) asked no provider and is no request at all (as the console and ``imagegen stats``
#: count), and a comparison nobody picked ran every provider at once for an editor, not a race (QA: both
#: reuses and unpicked comparisons paced the replay).
NOT_ARRIVALS = frozenset({"rejected", REUSED, "offered"})


def arrival_interval_ms(db: LogDB, *, since: Since = None, until: Since = None) -> float | None:
    """The median time from one request's arrival to the next in the range, in ms: an even pace at which
    :func:`~imagegen_core.analysis.replay.replay` may replay (``interval_ms``). None with fewer than two
    requests, or when most share their arrival time with another (then the replay runs them one after
    another). The median, not the mean: nights and weekends would stretch the mean far past the busy hours.
    An even pace misses bursts: :func:`arrival_gaps_ms` gives the log's own gaps. The arrivals are those it
    counts."""
    import statistics

    gaps = arrival_gaps_ms(db, since=since, until=until)
    median = statistics.median(gaps) if gaps else 0.0
    return median if median > 0 else None  # mostly simultaneous (batches): replay them one after another


def arrival_gaps_ms(db: LogDB, *, since: Since = None, until: Since = None) -> list[float]:
    """The time from each request's arrival to the next one's in the range, in ms, in the log's order (empty
    with fewer than two requests): what :func:`~imagegen_core.analysis.replay.replay` takes as ``gaps_ms`` to
    space the races as the log's requests came, bursts and lulls included. Only the rows that raced arrive
    (:data:`NOT_ARRIVALS`)."""
    import itertools

    start, end = log_range(db, since, until)
    rows = request_rows(db, since=start, until=end, providers=None)
    times = sorted(float(row["created_at"]) for row in rows if row["status"] not in NOT_ARRIVALS)
    return [(later - earlier) * 1000 for earlier, later in itertools.pairwise(times)]


def load_attempts(db: LogDB, *, since: Since = None, until: Since = None, providers: Providers = None) -> pd.DataFrame:
    """Attempts started in the range, in start order (:data:`ATTEMPT_COLUMNS`; ``hedged`` as bool)."""
    start, end = log_range(db, since, until)
    rows = attempt_rows(db, since=start, until=end, providers=resolve_providers(db, providers))
    frame = _frame(
        rows, ATTEMPT_COLUMNS, times=("started_at", "finished_at"), floats=("duration_ms", "cost_usd", "retry_after_ms")
    )
    frame["hedged"] = frame["hedged"].astype(bool)
    return frame


def only_providers(
    requests: pd.DataFrame, attempts: pd.DataFrame, providers: Providers
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What :func:`load_requests` and :func:`load_attempts` return with ``providers``, from frames of the same
    range loaded without: a page that needs both (a provider's own numbers, and its share of all the wins)
    then reads each table once. A request they raced in (an attempt, not a breaker's skip) is kept, as in
    the SQL filter when ``until`` is open (an attempt starts after its request is created)."""
    wanted = provider_list(providers)
    if wanted is None:
        return requests, attempts
    wanted = providers_as_logged(wanted, attempts["provider"].dropna().unique())  # any case, as in SQL's filter
    theirs = attempts[attempts["provider"].isin(wanted)]
    called = theirs[theirs["outcome"] != "skipped"]
    raced = requests["id"].isin(called["request_id"])
    return requests[raced].reset_index(drop=True), theirs.reset_index(drop=True)


def load_picks(db: LogDB, *, since: Since = None, until: Since = None, providers: Providers = None) -> pd.DataFrame:
    """Editors' picks in the range (:data:`~imagegen_core.log.analysis_queries.PICK_COLUMNS`): the
    chosen provider and those offered (a list). Empty, with those columns, when the log has no ``picks``
    table yet (the console adds it)."""
    start, end = log_range(db, since, until)
    rows = pick_rows(db, since=start, until=end, providers=resolve_providers(db, providers))
    frame = _frame(rows, PICK_COLUMNS, times=("picked_at",), floats=())
    frame["offered"] = frame["offered"].map(_offered_list).astype(object)
    return frame


def _offered_list(value: Any) -> list[str]:
    """``offered`` as stored by the console: a JSON list, or comma-separated names."""
    import json

    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    if not isinstance(value, str) or not value.strip():
        return []
    text = value.strip()
    if text.startswith("["):
        try:
            return [str(v) for v in json.loads(text)]
        except ValueError:
            pass
    return [part.strip() for part in text.split(",") if part.strip()]
