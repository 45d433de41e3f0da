"""Admin routes that read: ``/admin/status``, ``/admin/providers``, ``/admin/storage``, ``/admin/stats`` and
``/admin/alerts``. Every admin route sits behind :func:`~imagegen_core.api.auth.require_admin`."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from datetime import UTC, date, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from .. import alerts, stats
from ..chaos import chaos_status
from ..config import parse_config, parse_stored
from ..errors import ConfigError, ImageGenError, StatsWindowError, clip
from ..log.queries import provider_stats
from ..providers import provider_names
from ..service import ImageGen
from ..stats_window import DEFAULT_DAYS, provider_filter, query_parameter, stats_window
from ..timestamps import iso
from .admin_ops import break_fields
from .auth import require_admin
from .context import Ctx, Gen
from .errors import ApiError, error_responses
from .loop_watch import STALL_WARN_S
from .probes import check_db, check_spool, spool_backlog, storage_summary
from .routing import also_head

router = APIRouter(
    prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)], responses=error_responses(401, 403)
)

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_log = logging.getLogger("imagegen.api")


def _version() -> str | None:
    try:
        return version("imagegen")
    except PackageNotFoundError:
        return None


def config_status(gen: ImageGen) -> dict[str, Any]:
    """The newest stored config version: its id, source and time, whether it is valid, and whether it is the
    one in force (an invalid stored version is ignored and the previous one kept)."""
    running = gen.reload_config()
    history = gen.log.config_history(limit=1)
    if not history:
        in_force = gen.config_in_force_version  # not None: a version of a log deleted under this process
        return {
            "version": None,
            "source": "defaults",
            "storedAt": None,
            "valid": True,
            "error": None,
            "inForce": in_force is None,
            "inForceVersion": in_force,
        }
    version_id, stored_at, source = history[0]
    latest = gen.log.latest_config()
    known = set(provider_names()) | {running.provider_type(name) for name in running.providers}
    try:
        document = latest[1] if latest else {}
        parsed = parse_stored(document, lambda doc: parse_config(doc, known_providers=known, stored=True))
    except ConfigError as exc:
        valid, error, in_force = False, str(exc), False
    else:
        valid, error, in_force = True, "", parsed == running
    return {
        "version": version_id,
        "source": source,
        "storedAt": iso(stored_at),
        "valid": valid,
        "error": error or None,
        "inForce": in_force,
        "inForceVersion": gen.config_in_force_version,  # which stored version is, when this one is not
    }


@router.get("/status", summary="Providers, config, store and log DB at a glance")
async def status(ctx: Ctx, gen: Gen) -> dict[str, Any]:
    """Providers (enabled, configured, breaker state), config validity, store and log DB reachability, the
    images waiting in the upload spool and the log rows kept on disk, whether fault injection (``chaos``) is
    on, and the stalls of this process's event loop (``service.eventLoop``: answers due during one were late)."""
    # Each waits PROBE_WAIT_S at most.
    db, store, spool = await asyncio.gather(
        check_db(gen, reveal=True), ctx.store_checks.check(gen.store, reveal=True), check_spool(gen.spool, reveal=True)
    )
    providers, config = await _providers_and_config(gen, readable=db["schemaVersion"] is not None)
    return {
        "service": {
            "version": _version(),
            "startedAt": iso(ctx.started_at),
            "uptimeS": round(time.time() - ctx.started_at),
            "eventLoop": {
                "pid": os.getpid(),  # each `serve --workers` worker has its own loop
                "stalls": ctx.loop_stalls.count,
                "longestStallMs": ctx.loop_stalls.longest_ms if ctx.loop_stalls.count else None,
                "lastStallMs": ctx.loop_stalls.last_ms,
                "lastStallAt": iso(ctx.loop_stalls.last_at),
                "stallThresholdMs": round(STALL_WARN_S * 1000),
            },
        },
        "providers": providers,
        "config": config,
        # Images the store refused (paid for), waiting on this machine for the next upload: an outage's backlog.
        # ... and whether it could keep one now (``spool.error`` says why not).
        "store": {**store, **await asyncio.to_thread(spool_backlog, gen.spool, gen.store), "spool": spool},
        # Rows an outage longer than the writer's retries left on this machine, waiting for the database.
        "logDb": {**db, "keptRows": await asyncio.to_thread(gen.log_spill.waiting)},
        "chaos": chaos_status(gen.config),  # injected faults must never be on unnoticed
    }


async def _providers_and_config(gen: ImageGen, *, readable: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The providers and the config status, read from the log database when it answers, else those in force in
    this process (what ``/config`` shows): QA read ``"providers": []`` and ``"config": null`` during an outage as
    "no provider configured". The database's failure is said by the status's ``logDb``."""
    if readable:
        try:
            providers, config = await gen.log_call(gen.provider_status), await gen.log_call(lambda: config_status(gen))
            return providers, {**config, "worker": worker_config(gen)}
        except ImageGenError as exc:  # down between the probe and now
            _log.error("status: log database: %s", exc)
    # This answer could not look for a newer version either (QA: the first status during an outage said false).
    return gen.provider_status(read_log=False), {**config_in_force(gen), "worker": worker_config(gen, unread=True)}


def worker_config(gen: ImageGen, *, unread: bool = False) -> dict[str, Any]:
    """The config of the process that answers: with ``serve --workers N`` (or several servers) each worker has
    its own, read from the log database by its own requests. During an outage a worker goes on with the one it
    had, which may be older than another's (QA: a worker that served no request since version 8 was stored kept
    version 7 the whole outage); ``mayBeStale`` says so, ``checkedAt`` since when. ``unread``: the log
    database could not be read for this answer."""
    return {
        "pid": os.getpid(),
        "inForceVersion": gen.config_in_force_version,
        "checkedAt": iso(gen.config_checked_at),
        "mayBeStale": unread or gen.config_may_be_stale,
    }


def config_in_force(gen: ImageGen) -> dict[str, Any]:
    """:func:`config_status` without the log database: the version in force is known, the newest stored one
    (and so whether it is valid and in force) is not."""
    return {
        "version": None,
        "source": None,
        "storedAt": None,
        "valid": None,
        "error": "the log database cannot be read (see logDb): the newest stored version is unknown",
        "inForce": None,
        "inForceVersion": gen.config_in_force_version,
    }


def _providers(gen: ImageGen) -> dict[str, Any]:
    now = time.time()
    # Up to now: an attempt a machine with its clock ahead dated in the future is in no last 24 h (QA).
    recent = {row["provider"]: row for row in provider_stats(gen.log, since=now - 86_400, until=now)}
    rows = []
    for row in gen.provider_status():
        record = gen.breakers.state(row["name"])
        brk = gen.breakers.open_break(record)
        summary = recent.get(row["name"])
        rows.append(
            {
                **row,
                "circuitBreaker": {
                    "state": str(record.state),
                    "lastReason": record.last_reason or None,
                    **break_fields(brk),
                    "trips": record.trips,
                },
                "last24h": {
                    "calls": summary["calls"] if summary else 0,
                    "successes": summary["successes"] if summary else 0,
                    "successRate": round(summary["success_rate"], 4)
                    if summary and summary["success_rate"] is not None
                    else None,
                    "cancelled": summary["cancelled"] if summary else 0,
                    "failures": summary["failures"] if summary else {},
                    "p50Ms": summary["p50_ms"] if summary else None,
                    "p95Ms": summary["p95_ms"] if summary else None,
                    "costUsd": round(summary["cost_usd"], 6) if summary else 0.0,
                },
            }
        )
    return {"providers": rows}


@router.get("/providers", summary="Each provider: settings, breaker and the last 24 hours")
async def providers(gen: Gen) -> dict[str, Any]:
    """Per provider: enabled, configured, racing, timeout/retries/priority, breaker, and its attempts over the
    last 24 hours (calls, success rate, failures by class, p50/p95 of successes, cost)."""
    return await gen.log_call(lambda: _providers(gen))


@router.get("/storage", summary="Stored objects and bytes per month")
async def storage(gen: Gen) -> dict[str, Any]:
    """Objects and bytes per ``YYYY-MM`` under the configured key prefix (``r2.pathPrefix``); 503 when the
    store fails or does not answer a page of the listing in time (R2: 10 s, one try)."""
    return await storage_summary(gen.store, gen.config.r2.path_prefix)


#: The longest window ``/admin/stats`` counts, in days (``?days``' bound): a window of centuries would be a
#: ``dailyBreakdown`` of a million days.
MAX_STATS_DAYS = 365


@router.get("/stats", summary="Request statistics in the Worker's shape", responses=error_responses(400))
async def get_stats(
    request: Request,
    gen: Gen,
    days: Annotated[
        int | None,
        Query(ge=1, le=MAX_STATS_DAYS, description="The last N UTC days, today included (7); or N days before until"),
    ] = None,
    day: Annotated[str | None, Query(alias="date", description="One UTC day, YYYY-MM-DD")] = None,
    since: Annotated[
        str | None,
        Query(description="Start of the window, included: an ISO 8601 date or date-time, UTC unless it has an offset"),
    ] = None,
    until: Annotated[
        str | None, Query(description="End of the window, excluded, as since (default: the end of today, UTC)")
    ] = None,
    provider: Annotated[
        list[str] | None, Query(description="Only the requests this provider raced in, and its entry (repeatable)")
    ] = None,
) -> dict[str, Any]:
    """``?days=N`` (1–365): the aggregate with ``dailyBreakdown``; ``?date=YYYY-MM-DD``: that day's record.
    Both carry p50/p95 latency and cost; the module :mod:`imagegen_core.stats` says what is counted.

    ``?since=…&until=…`` (``imagegen stats --since/--until``: ISO 8601, half-open; ``until`` defaults to the end
    of today, ``days`` counts back from it) and ``?provider=NAME`` (repeatable, any case: the requests it raced
    in, its entry, and ``won``) answer the same shape, led by the window and the filter as ``imagegen stats
    --json`` names them: ``since``, ``until`` (ISO UTC), ``days`` (null when ``since`` or ``date`` set the start),
    ``providerFilter``. Without them, the Worker's answer is unchanged."""
    _refuse_repeated(request, "days", "date", "since", "until")
    if since is None and until is None and provider is None:  # the Worker's question, answered as it was
        if days is not None and day is not None:
            raise ApiError(400, "give either days or date, not both", field="date")
        if day is not None:
            wanted = _stats_date(day)
            return await gen.log_call(lambda: stats.daily_stats(gen.log, wanted))
        return await gen.log_call(lambda: stats.period_stats(gen.log, stats.Period.last_days(days or 7)))
    if day is not None and (days is not None or since is not None or until is not None):
        raise ApiError(400, "give either date or a window (days, since, until), not both", field="date")
    try:
        if day is not None:
            one_day = _stats_date(day)
            period, counted_back = stats.Period(one_day, one_day), None
        elif since is None and until is None:
            period, counted_back = stats.Period.last_days(days or DEFAULT_DAYS), days or DEFAULT_DAYS
        else:
            period, counted_back = _stats_window(days, since, until)
    except StatsWindowError as exc:
        raise _refusal(exc, since=since, until=until, providers=provider) from None

    def answer() -> dict[str, Any]:
        names = provider_filter(gen.log, provider or [], spell=query_parameter)
        if day is not None:
            record = stats.daily_stats(gen.log, period.first, providers=names)
        else:
            record = stats.period_stats(gen.log, period, providers=names)
        window = {"since": iso(period.since), "until": iso(period.until), "days": counted_back, "providerFilter": names}
        return {**window, **{key: value for key, value in record.items() if key != "days"}}

    try:
        return await gen.log_call(answer)
    except StatsWindowError as exc:
        raise _refusal(exc, since=since, until=until, providers=provider) from None


def _refuse_repeated(request: Request, *names: str) -> None:
    """A parameter given twice is refused (FastAPI would keep one of them): ``?days=3&days=30`` has no answer
    that is right. ``provider`` is repeatable, as ``imagegen stats --provider`` is."""
    for name in names:
        if len(request.query_params.getlist(name)) > 1:
            raise ApiError(400, f"given {len(request.query_params.getlist(name))} times: give it once", field=name)


def _stats_date(day: str) -> date:
    """``?date=YYYY-MM-DD`` as a date, or the 400 that says what was expected."""
    try:
        if not _DATE.match(day):
            raise ValueError
        return date.fromisoformat(day)
    except ValueError:
        raise ApiError(400, f"expected a date as YYYY-MM-DD, got {clip(day, 40)!r}", field="date") from None


def _stats_window(days: int | None, since: str | None, until: str | None) -> tuple[stats.Period, int | None]:
    """The window ``since`` / ``until`` / ``days`` ask for, read as ``imagegen stats`` reads them; its end, when
    not given, is the end of today (UTC), where the Worker's periods end. At most :data:`MAX_STATS_DAYS` long."""
    today = datetime.now(UTC).date()
    end_of_today = datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC).timestamp()
    window = stats_window(days, since, until, now=end_of_today, spell=query_parameter, end="the end of today")
    if window.until - window.since > MAX_STATS_DAYS * 86_400:
        raise StatsWindowError(
            f"the window is {(window.until - window.since) / 86_400:.1f} days long; at most {MAX_STATS_DAYS}:"
            " give a later since or an earlier until",
            field="since",
        )
    return stats.Period.between(window.since, window.until), window.days


def _refusal(exc: StatsWindowError, *, since: str | None, until: str | None, providers: list[str] | None) -> ApiError:
    """A window or filter refused, as the API's 400: the message without the field it leads with (the error
    shape puts it there), and a hint when a time holds a space (a query string's ``+`` is one, so an offset's
    ``+01:00`` sent as it is arrives as `` 01:00``) or a provider name a comma (one name per ``provider``, as
    one per ``--provider``)."""
    field = exc.field or "since"
    message = str(exc).removeprefix(f"{field}: ")
    given = {"since": since, "until": until}.get(field)
    if given is not None and " " in given.strip():
        message += "; a + in a query string reads as a space: send an offset's + as %2B"
    if field == "provider" and any("," in name for name in providers or ()):
        message += "; one name per provider: repeat it for several (provider=fal&provider=replicate)"
    return ApiError(400, message, field=field)


@router.get("/alerts", summary="Alert rules evaluated over the log")
async def get_alerts(gen: Gen) -> dict[str, Any]:
    """``{firing, evaluatedAt, rules: [{rule, provider, value, threshold, operator, windowMs, samples,
    minSamples, firing, message}]}``; thresholds come from the runtime config's ``alerts`` section. A rule
    whose window holds fewer than ``minSamples`` samples never fires, and its message says so."""
    return await gen.log_call(lambda: alerts.alerts_for(gen))


also_head(router)
