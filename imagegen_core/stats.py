"""Statistics in the Cloudflare Worker's ``/admin/stats`` shape, and the alert rules, computed from the log.

The Worker kept one ``stats:daily:{YYYY-MM-DD}`` record per day and aggregated N of them; here the same shape
is computed from the log on demand, by UTC day::

    {period: "2026-11-22 to 2026-11-28", total, successful, failed, successRate (percent), avgElapsedMs,
     providers: {name: {total, successful, failed, successRate, avgElapsedMs, ...}}, dailyBreakdown: [...]}

plus p50/p95 latency and cost. What is counted (the Worker never wrote this down):

- ``total`` / ``successful`` / ``failed``: answered requests (a provider's image, or the default image);
  rejected input and requests still running are left out, as the Worker never recorded them. A request a
  crash or kill ended (closed later by the crash sweep) is no answer anyone knows of: it is counted apart, as
  ``interrupted`` (a field the Worker did not have), and in none of those.
- ``providers.<name>``: that provider's *attempts* with a verdict (success or failure); ``cancelled`` (lost
  the race) is reported beside them, and ``interrupted`` (ended by a crash: no verdict, no race lost).
  ``providers.default`` counts the answers given with the default image, as the Worker did. A provider's
  ``total``, ``failed``, ``avgElapsedMs`` and p50/p95 are all over one population, its decided attempts:
  succeeded, failed, or cut by the request's deadline (a failure of the provider: it gave no image in all the
  time there was).
- ``avgElapsedMs``: the mean over the rows counted that have a time (those a crash ended have none); 0 when
  nothing was counted (the Worker's empty day), null when rows were but none has a time.
- ``costUsd``: all the money spent, the sum of the finished attempts' costs by the day they started, whatever
  became of their request (a comparison nobody picked, a cancelled request): the total is the sum of its
  providers' ``costUsd``, as the console's *Spent* is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from .log import queries
from .log.db import LogDB

#: Provider name under which the Worker counted answers with the default image.
DEFAULT_PROVIDER = "default"


@dataclass(frozen=True, slots=True)
class Period:
    """Whole UTC days ``first`` … ``last`` (inclusive); or, with ``bounds``, the Unix seconds ``[since, until)``
    of a window on those days (:meth:`between`): the first and last are then counted from ``since`` and up to
    ``until`` only."""

    first: date
    last: date
    bounds: tuple[float, float] | None = None

    @classmethod
    def between(cls, since: float, until: float) -> Period:
        """The window ``[since, until)`` (Unix seconds, ``since`` before ``until``), on the UTC days it touches:
        an ``until`` at a midnight leaves that day out."""
        first = datetime.fromtimestamp(since, UTC).date()
        end = datetime.fromtimestamp(until, UTC)
        last = end.date() if end.time() != datetime.min.time() else end.date() - timedelta(days=1)
        return cls(first, max(first, last), (since, until))

    @classmethod
    def last_days(cls, days: int, *, today: date | None = None) -> Period:
        """The ``days`` UTC days ending with ``today`` (default: today in UTC)."""
        end = today or datetime.now(UTC).date()
        return cls(end - timedelta(days=days - 1), end)

    @property
    def since(self) -> float:
        """Unix time of the first day's UTC midnight (or the window's start)."""
        if self.bounds is not None:
            return self.bounds[0]
        return datetime(self.first.year, self.first.month, self.first.day, tzinfo=UTC).timestamp()

    @property
    def until(self) -> float:
        """Unix time of the UTC midnight after the last day (or the window's end; exclusive bound)."""
        if self.bounds is not None:
            return self.bounds[1]
        return self.since + self.days * 86_400

    @property
    def days(self) -> int:
        """Number of days in the period."""
        return (self.last - self.first).days + 1

    @property
    def label(self) -> str:
        """The Worker's ``period`` text, ``YYYY-MM-DD to YYYY-MM-DD``."""
        return f"{self.first.isoformat()} to {self.last.isoformat()}"


def _success_rate(successful: int, total: int) -> float:
    """Percent with two decimals, as the Worker reported it; 0 when nothing was counted."""
    return round(successful * 100 / total, 2) if total else 0.0


def _mean_ms(total_ms: float, timed: int, counted: int) -> int | None:
    """The mean over the ``timed`` rows (those with a time; a NULL time is unknown, not 0 ms): 0 when nothing was
    counted, as the Worker reported an empty day, but None when rows were and none has a time (QA: the sum
    skipped NULLs and the count did not, and rows without a time read 0 ms)."""
    if timed:
        return round(total_ms / timed)
    return None if counted else 0


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class _Tally:
    """Running sums for one day or period and one subject (all requests, or one provider)."""

    __slots__ = ("cancelled", "cost_usd", "elapsed_ms", "failed", "interrupted", "successful", "timed")

    def __init__(self) -> None:
        self.successful = self.failed = self.cancelled = self.interrupted = 0
        self.timed = 0  # how many of the successful and failed have a time
        self.elapsed_ms = 0.0
        self.cost_usd = 0.0

    def add(self, outcome: str, n: int, elapsed_ms: float, cost_usd: float, timed: int) -> None:
        """Count ``n`` rows of one ``outcome`` (a request's status or an attempt's verdict); ``timed`` of them
        have a time, summing to ``elapsed_ms``."""
        self.cost_usd += cost_usd
        if outcome == "cancelled":
            self.cancelled += n
            return
        if outcome == queries.INTERRUPTED:  # a crash ended it: no verdict, no time (see queries.INTERRUPTED)
            self.interrupted += n
            return
        if outcome == "success":
            self.successful += n
        else:
            self.failed += n
        self.elapsed_ms += elapsed_ms
        self.timed += timed

    def to_wire(self) -> dict[str, Any]:
        total = self.successful + self.failed
        return {
            "total": total,
            "successful": self.successful,
            "failed": self.failed,
            "successRate": _success_rate(self.successful, total),
            "avgElapsedMs": _mean_ms(self.elapsed_ms, self.timed, total),
            "totalElapsedMs": round(self.elapsed_ms),
            "costUsd": round(self.cost_usd, 6),
            "interrupted": self.interrupted,
        }


@dataclass
class _Day:
    requests: _Tally
    providers: dict[str, _Tally]
    won: int = 0  # of the successes, those the filter's providers won (counted only with a filter)


def _day_in(days: dict[str, _Day], day: str) -> _Day:
    """The tallies of ``day``, or of the period's nearest day when the database filed a row of the period
    outside it: a day's rounding by the database once made ``?date=`` answer 500 (QA), and whatever the
    database answers must not (ISO dates sort as text)."""
    if day not in days:
        day = min(max(day, min(days)), max(days))
    return days[day]


def _tally_days(db: LogDB, period: Period, providers: Sequence[str] | None = None) -> dict[str, _Day]:
    days = {(period.first + timedelta(days=i)).isoformat(): _Day(_Tally(), {}) for i in range(period.days)}
    # Only a filter is passed on: without one, the queries are called as they always were.
    only: dict[str, Any] = {} if providers is None else {"providers": providers}
    for row in queries.daily_request_totals(db, since=period.since, until=period.until, **only):
        day = _day_in(days, row["day"])
        # The money is counted from the attempts below: answered requests' own cost left out what comparisons
        # nobody picked and cancelled requests spent, so the total was less than its providers' (QA).
        day.requests.add(row["status"], row["n"], row["elapsed_ms"], 0.0, row["timed"])
        if providers is not None:
            day.won += int(row["won"] or 0)
        elif row["status"] == "failed":  # answered with the default image; its cost belongs to the providers
            default = day.providers.setdefault(DEFAULT_PROVIDER, _Tally())
            default.add("failed", row["n"], row["elapsed_ms"], 0.0, row["timed"])
    for row in queries.daily_attempt_totals(db, since=period.since, until=period.until, **only):
        day = _day_in(days, row["day"])
        day.providers.setdefault(row["provider"], _Tally()).add(
            row["outcome"], row["n"], row["duration_ms"], row["cost_usd"], row["timed"]
        )
        day.requests.cost_usd += row["cost_usd"]  # all the money spent that day, whatever became of the request
    return days


def _provider_entry(tally: _Tally) -> dict[str, Any]:
    return {**tally.to_wire(), "cancelled": tally.cancelled}


def _daily_record(day: str, tallies: _Day, filtered: bool) -> dict[str, Any]:
    providers = {name: _provider_entry(t) for name, t in sorted(tallies.providers.items())}
    won = {"won": tallies.won} if filtered else {}
    return {"date": day, **tallies.requests.to_wire(), **won, "providers": providers}


def _with_percentiles(
    db: LogDB, record: dict[str, Any], period: Period, providers: Sequence[str] | None = None
) -> dict[str, Any]:
    """Add p50/p95 (ms) to a record and to each of its providers, over the whole period."""
    since, until = period.since, period.until
    only: dict[str, Any] = {} if providers is None else {"providers": providers}
    p = queries.request_elapsed_percentiles(db, since=since, until=until, **only)
    record["p50ElapsedMs"], record["p95ElapsedMs"] = _ms(p[50]), _ms(p[95])
    for name, entry in record["providers"].items():
        if name == DEFAULT_PROVIDER:
            entry["p50ElapsedMs"] = entry["p95ElapsedMs"] = None
            continue
        p = queries.attempt_duration_percentiles(db, name, since=since, until=until)
        entry["p50ElapsedMs"], entry["p95ElapsedMs"] = _ms(p[50]), _ms(p[95])
    return record


def daily_stats(db: LogDB, day: date, *, providers: Sequence[str] | None = None) -> dict[str, Any]:
    """One day's record (``/admin/stats?date=YYYY-MM-DD``) with p50/p95 and cost; with ``providers``, as
    :func:`period_stats` filters it."""
    period = Period(day, day)
    ((name, tallies),) = _tally_days(db, period, providers).items()
    return _with_percentiles(db, _daily_record(name, tallies, providers is not None), period, providers)


def period_stats(db: LogDB, period: Period, *, providers: Sequence[str] | None = None) -> dict[str, Any]:
    """The aggregate over ``period`` (``/admin/stats?days=N``) with every day in ``dailyBreakdown``, oldest first
    (days without requests included, as zeros, so a chart has no gaps).

    ``providers`` (names as the log spells them): the requests they raced in (one of their calls ran for it, as
    ``imagegen stats --provider`` and the console keep them), with ``won``, how many of the successful ones they
    won; and only their entries under ``providers`` (no ``default``: its answers are the requests' ``failed``).
    ``costUsd`` stays the sum of the providers' entries: what their own calls cost."""
    days = _tally_days(db, period, providers)
    overall = _Tally()
    by_provider: dict[str, _Tally] = {}
    for tallies in days.values():
        _merge(overall, tallies.requests)
        for name, tally in tallies.providers.items():
            _merge(by_provider.setdefault(name, _Tally()), tally)
    filtered = providers is not None
    record: dict[str, Any] = {
        "period": period.label,
        "days": period.days,
        **overall.to_wire(),
        **({"won": sum(t.won for t in days.values())} if filtered else {}),
        "providers": {name: _provider_entry(t) for name, t in sorted(by_provider.items())},
    }
    _with_percentiles(db, record, period, providers)
    record["dailyBreakdown"] = [_daily_record(day, tallies, filtered) for day, tallies in days.items()]
    return record


def _merge(into: _Tally, tally: _Tally) -> None:
    into.successful += tally.successful
    into.failed += tally.failed
    into.cancelled += tally.cancelled
    into.interrupted += tally.interrupted
    into.timed += tally.timed
    into.elapsed_ms += tally.elapsed_ms
    into.cost_usd += tally.cost_usd
