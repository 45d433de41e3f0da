"""Per-provider numbers from the log, as DataFrames with one row per provider (sorted by name): latency
quantiles, outcome and failure-class rates, win rate, cost per winning image, and the summary table that
puts them side by side. The console's stats page and the notebooks call the same functions.

Every function takes the log DB and the loaders' keywords (``since``, ``until``, ``providers``; see
:mod:`.frames`). Quantiles interpolate linearly between closest ranks, like ``imagegen stats``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import AnalysisError
from ..log.db import LogDB
from ..log.queries import INTERRUPTED, counted_as_request
from ..log.records import ABANDONED_ERROR
from .frames import Providers, Since, expect_frame, load_attempts, load_picks, load_requests, resolve_providers
from .window import provider_list

if TYPE_CHECKING:
    import pandas as pd

QUANTILES = {"p50_ms": 0.50, "p90_ms": 0.90, "p95_ms": 0.95, "p99_ms": 0.99}
#: Attempts that reached a provider and ended: ``running`` ones have no outcome, ``skipped`` ones never
#: reached the provider (its breaker was open).
FINISHED = ("success", "failed", "cancelled")


def latency_quantiles(
    db: LogDB, *, since: Since = None, until: Since = None, providers: Providers = None
) -> pd.DataFrame:
    """p50/p90/p95/p99 and mean of successful attempts' durations (ms), with their count, per provider."""
    return _latency_quantiles(load_attempts(db, since=since, until=until, providers=providers))


def _latency_quantiles(attempts: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    ok = attempts[(attempts["outcome"] == "success") & attempts["duration_ms"].notna()]
    grouped = ok.groupby("provider")["duration_ms"]
    frame = pd.DataFrame({"successes": grouped.size()})
    for column, q in QUANTILES.items():
        frame[column] = grouped.quantile(q)
    frame["mean_ms"] = grouped.mean()
    return frame.reset_index().sort_values("provider", ignore_index=True)


def _cut_by_deadline(attempts: pd.DataFrame) -> pd.Series:
    """Attempts the request's deadline ended (``cancelled`` with class ``timeout``): failures of the provider,
    like the log's queries count them, unlike an attempt that lost to another provider."""
    return (attempts["outcome"] == "cancelled") & (attempts["failure_class"] == "timeout")


def _interrupted(attempts: pd.DataFrame) -> pd.Series:
    """Attempts a crash ended (closed ``cancelled`` by the crash sweep, see
    :data:`~imagegen_core.log.queries.INTERRUPTED`): no race lost, no failure of the provider."""
    return (attempts["outcome"] == "cancelled") & (attempts["error"] == ABANDONED_ERROR)


def interrupted_requests(requests: pd.DataFrame) -> pd.Series:
    """Requests a crash ended (closed ``failed`` by the crash sweep, see
    :data:`~imagegen_core.log.queries.INTERRUPTED`): no answer with the default image is known of."""
    return (requests["status"] == "failed") & (requests["error"] == ABANDONED_ERROR)


def outcome_rates(db: LogDB, *, since: Since = None, until: Since = None, providers: Providers = None) -> pd.DataFrame:
    """Per provider: ``calls`` (finished attempts), successes, failures (every failed attempt, timeouts
    included, and attempts the request's deadline cut), timeouts, cancelled (lost the race, or the caller
    left), interrupted (ended by a crash: neither lost nor failed) and skipped (breaker open, not in
    ``calls``), each as a count and as a share of ``calls``."""
    return _outcome_rates(load_attempts(db, since=since, until=until, providers=providers))


def _outcome_rates(attempts: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    finished = attempts[attempts["outcome"].isin(FINISHED)].copy()
    cut = _cut_by_deadline(finished)
    finished["failed"] = (finished["outcome"] == "failed") | cut
    finished["interrupted"] = _interrupted(finished)
    finished["lost"] = (finished["outcome"] == "cancelled") & ~cut & ~finished["interrupted"]
    by = finished.groupby("provider")
    frame = pd.DataFrame(
        {
            "calls": by.size(),
            "successes": by["outcome"].agg(lambda s: int((s == "success").sum())),
            "failures": by["failed"].sum(),
            "timeouts": by["failure_class"].agg(lambda s: int((s == "timeout").sum())),
            "cancelled": by["lost"].sum(),
            "interrupted": by["interrupted"].sum(),
        }
    )
    skipped = attempts[attempts["outcome"] == "skipped"].groupby("provider").size()
    frame = frame.join(skipped.rename("skipped"), how="outer").fillna(0).astype("int64")
    for rate, count in (
        ("success_rate", "successes"),
        ("failure_rate", "failures"),
        ("timeout_rate", "timeouts"),
        ("cancelled_rate", "cancelled"),
        ("interrupted_rate", "interrupted"),
    ):
        frame[rate] = (frame[count] / frame["calls"]).where(frame["calls"] > 0)
    return frame.reset_index().rename(columns={"index": "provider"}).sort_values("provider", ignore_index=True)


def failure_class_rates(
    db: LogDB, *, since: Since = None, until: Since = None, providers: Providers = None
) -> pd.DataFrame:
    """Long format, one row per (provider, failure class): ``count`` and ``rate`` (share of the
    provider's finished attempts). Timeouts are the class ``timeout``."""
    return _failure_class_rates(load_attempts(db, since=since, until=until, providers=providers))


def _failure_class_rates(attempts: pd.DataFrame) -> pd.DataFrame:
    finished = attempts[attempts["outcome"].isin(FINISHED)]
    calls = finished.groupby("provider").size()
    failed = finished[(finished["outcome"] == "failed") | _cut_by_deadline(finished)]
    failed = failed.fillna({"failure_class": "unknown"})
    if failed.empty:  # pandas 3 types an empty group-by's columns as str, and str / int then fails
        import pandas as pd

        return pd.DataFrame(
            {
                "provider": pd.Series(dtype="str"),
                "failure_class": pd.Series(dtype="str"),
                "count": pd.Series(dtype="int64"),
                "rate": pd.Series(dtype="float64"),
            }
        )
    frame = failed.groupby(["provider", "failure_class"]).size().rename("count").reset_index()
    frame["rate"] = frame["count"] / frame["provider"].map(calls)
    return frame.sort_values(["provider", "count", "failure_class"], ascending=[True, False, True], ignore_index=True)


def win_rate(
    db: LogDB,
    *,
    since: Since = None,
    until: Since = None,
    providers: Providers = None,
    every_provider: bool = False,
) -> pd.DataFrame:
    """Per provider: ``wins`` (the images it delivered to articles: successful requests it won, a comparison an
    editor picked from included, since the pick makes it a success of the picked provider), ``win_rate`` (its
    share of them), ``offered`` (successful requests in which it was called; a provider behind an open
    breaker was not) and ``win_rate_when_offered``; and, apart, the editors' choices in the console's
    Compare: ``picks`` (its image chosen) and ``pick_rate_when_offered`` (chosen when it was on offer).

    Wins are the same figure as :func:`cost_per_winning_image` divides by: mixing picks in made a provider with
    delivered images show 0 wins next to a cost per win. With ``every_provider``, every provider with an
    attempt in the range has a row, 0 wins included, as in :func:`provider_summary`; without, only those that
    won, were offered or were on offer in a comparison.
    """
    requests = load_requests(db, since=since, until=until)  # checks the log and the range first
    return _win_rate(
        requests,
        load_attempts(db, since=since, until=until),
        load_picks(db, since=since, until=until),
        providers=resolve_providers(db, providers),
        every_provider=every_provider,
    )


def _win_rate(
    requests: pd.DataFrame, attempts: pd.DataFrame, picks: pd.DataFrame, *, providers: Providers, every_provider: bool
) -> pd.DataFrame:
    """:func:`win_rate` from frames loaded for the range *without* a provider filter: a provider's share of all
    the wins, not of the requests it took part in (``providers`` only picks the rows shown)."""
    import pandas as pd

    won = requests[requests["status"] == "success"]
    called = attempts[attempts["outcome"] != "skipped"]  # a provider behind an open breaker was not offered
    # One row per (successful request, provider called in it), by a join: a list per request built in Python
    # took most of the Provider stats page's time on a log of 200k requests.
    raced = called[["request_id", "provider"]].drop_duplicates()
    offered = won[["id"]].merge(raced, left_on="id", right_on="request_id")["provider"]
    picks_offered = _counts(picks["offered"].explode())
    frame = pd.DataFrame(
        {
            "wins": _counts(won["provider"]),
            "offered": _counts(offered),
            "picks": _counts(picks["provider"]),
            "picks_offered": picks_offered,
        }
    )
    seen = attempts["provider"].dropna().unique().tolist() if every_provider else []
    frame = frame.reindex(frame.index.union(pd.Index(seen, dtype=frame.index.dtype)))
    frame = frame.fillna(0).astype("int64")
    frame.index.name = "provider"
    frame["win_rate"] = frame["wins"] / max(len(won), 1)
    frame["win_rate_when_offered"] = (frame["wins"] / frame["offered"]).where(frame["offered"] > 0)
    frame["pick_rate_when_offered"] = (frame["picks"] / frame["picks_offered"]).where(frame["picks_offered"] > 0)
    frame = frame.reset_index()
    wanted = provider_list(providers)
    if wanted is not None:
        frame = frame[frame["provider"].isin(wanted)]
    columns = ["provider", "wins", "win_rate", "offered", "win_rate_when_offered", "picks", "pick_rate_when_offered"]
    return frame[columns].sort_values("provider", ignore_index=True)


def _counts(names: pd.Series) -> pd.Series:
    """How often each provider name occurs (missing ones left out), as int64 even when there are none."""
    return names.dropna().astype(object).value_counts().astype("int64")


def cost_per_winning_image(
    db: LogDB, *, since: Since = None, until: Since = None, providers: Providers = None
) -> pd.DataFrame:
    """Per provider: everything it was paid for (``cost_usd``: every attempt, losers and timeouts
    included), the images it delivered (``wins``: successful requests it won, picked comparisons included, as
    in :func:`win_rate`) and ``cost_per_win``."""
    attempts = load_attempts(db, since=since, until=until, providers=providers)
    requests = load_requests(db, since=since, until=until, providers=providers)
    return _cost_per_win(attempts, requests)


def _cost_per_win(attempts: pd.DataFrame, requests: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    cost = attempts.groupby("provider")["cost_usd"].sum()
    wins = requests[requests["status"] == "success"]["provider"].value_counts()
    wins = wins[wins.index.isin(cost.index)]
    frame = pd.DataFrame({"cost_usd": cost, "wins": wins}).fillna({"wins": 0})
    frame["wins"] = frame["wins"].astype("int64")
    frame["cost_per_win"] = (frame["cost_usd"] / frame["wins"]).where(frame["wins"] > 0)
    frame.index.name = "provider"
    return frame.reset_index().sort_values("provider", ignore_index=True)


def provider_summary(
    db: LogDB, *, since: Since = None, until: Since = None, providers: Providers = None
) -> pd.DataFrame:
    """The one table of a provider report, one row per provider: calls; success, failure, lost-race
    (``cancelled_rate``), interrupted (a crash ended it: ``interrupted_rate``) and timeout rates, shares of the
    calls, so that a provider that mostly loses races is not read as one that mostly fails; attempts its open
    breaker refused (``skipped``, not calls); p50/p95 latency; the failure classes seen
    (``"transient: 3, auth: 1"``); wins (images delivered), win rate and cost; editors' ``picks`` of its image
    in the console's Compare, apart from the wins (see :func:`win_rate`)."""
    # Each table read once: the win rates need every provider's rows (a share of all the wins), the rest only
    # the chosen providers', which the attempts filter the same way in pandas as in SQL. The requests they
    # raced in are read with the SQL filter: it also counts an attempt started after ``until``.
    every_attempt = load_attempts(db, since=since, until=until)
    every_request = load_requests(db, since=since, until=until)
    providers = resolve_providers(db, providers)
    if providers is None:
        attempts, requests = every_attempt, every_request
    else:
        attempts = every_attempt[every_attempt["provider"].isin(providers)].reset_index(drop=True)
        requests = load_requests(db, since=since, until=until, providers=providers)
    # The interrupted share too (attempts a crash ended): without it the shares of a provider's calls did not
    # add up to one, and the reader could not tell where the rest went (QA).
    columns = [
        "provider", "calls", "success_rate", "failure_rate", "cancelled_rate", "interrupted_rate", "timeout_rate",
        "skipped",
    ]  # fmt: skip
    rates = _outcome_rates(attempts)[columns]
    latency = _latency_quantiles(attempts)[["provider", "p50_ms", "p95_ms"]]
    classes = _failure_class_rates(attempts)
    # A plain dict, not groupby().apply(): on an empty frame pandas 3 returns a DataFrame there.
    labels: dict[str, str] = {}
    for provider, cls, count in zip(classes["provider"], classes["failure_class"], classes["count"], strict=True):
        labels[provider] = f"{labels[provider]}, {cls}: {count}" if provider in labels else f"{cls}: {count}"
    picks = load_picks(db, since=since, until=until)
    wins = _win_rate(every_request, every_attempt, picks, providers=providers, every_provider=False)
    wins = wins[["provider", "wins", "win_rate", "picks"]]
    cost = _cost_per_win(attempts, requests)[["provider", "cost_usd", "cost_per_win"]]
    frame = rates.merge(latency, on="provider", how="left")
    frame["failure_classes"] = [labels.get(provider, "") for provider in frame["provider"]]
    frame = frame.merge(wins, on="provider", how="left").merge(cost, on="provider", how="left")
    frame["wins"] = frame["wins"].fillna(0).astype("int64")
    frame["win_rate"] = frame["win_rate"].fillna(0.0)
    frame["picks"] = frame["picks"].fillna(0).astype("int64")
    return frame.sort_values("provider", ignore_index=True)


def check_bucket_size(freq: object) -> None:
    """Refuse, in one line, a bucket size that is not a positive fixed length of time: pandas floors to "0h"
    (one bucket per request) and "-1h" (a 14:03 request counted in the 15:00 bucket) without a word, and
    fails on "1W" or "1ME" (weeks and months have no fixed floor) with its own message (QA)."""
    import pandas as pd

    try:
        nanos = pd.tseries.frequencies.to_offset(freq).nanos  # ValueError for a calendar length (weeks, months)
    except (ValueError, TypeError):
        nanos = 0
    if nanos <= 0:
        raise AnalysisError(
            f"freq must be a positive fixed length of time such as '15min', '1h', '6h' or '1D', not {freq!r}"
        )


def bucket_requests(requests: pd.DataFrame, *, freq: str = "1h") -> pd.DataFrame:
    """Requests counted per time bucket and status (long format: ``bucket``, ``status``, ``requests``),
    from :func:`~.frames.load_requests`. Buckets are UTC (days start at midnight UTC), as the charts draw
    them. A reuse (status ``reused``) is not a request and is left out, as the console and ``imagegen stats``
    leave it out (:func:`~imagegen_core.log.queries.counted_as_request`; QA: notebook 02's chart counted it).
    A request a crash ended is ``interrupted``, not ``failed`` (no default image is known to have been given;
    see :data:`~imagegen_core.log.queries.INTERRUPTED`)."""
    expect_frame(requests, ("created_at", "status"), "load_requests")
    check_bucket_size(freq)
    requests = requests[requests["status"].map(counted_as_request).astype(bool)]
    status = requests["status"]
    if "error" in requests:
        status = status.mask(interrupted_requests(requests), INTERRUPTED)
    counts = requests.groupby([requests["created_at"].dt.floor(freq), status]).size()
    return counts.rename("requests").reset_index().rename(columns={"created_at": "bucket"})
