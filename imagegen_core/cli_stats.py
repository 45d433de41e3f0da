"""``imagegen stats``: request totals and per-provider figures over a window of the log, as a table or JSON.

The window is half-open, ``[since, until)``, as every range of the log's queries and of
:mod:`imagegen_core.analysis` is: ``--until 2026-12-01`` ends with November, and one window's ``--until`` is
the next one's ``--since`` without a row counted twice.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from .cli_common import JsonRefusalCommand, fail, open_imagegen, require_log
from .errors import StatsWindowError
from .stats_window import DEFAULT_DAYS, StatsWindow, provider_filter, stats_window

_T = TypeVar("_T")


@click.command(cls=JsonRefusalCommand)
@click.option(
    "--days",
    type=click.IntRange(1, 3650),
    help=f"Count this many days back from --until (or now)  [default: {DEFAULT_DAYS}; not with --since]",
)
@click.option(
    "--since",
    metavar="WHEN",
    help="Start of the window, included: an ISO 8601 date or date-time (2026-11-01, 2026-11-01T08:00), UTC"
    " unless it has an offset (+01:00, Z).",
)
@click.option(
    "--until",
    metavar="WHEN",
    help="End of the window, excluded (--until 2026-12-01 ends with November 30), as --since  [default: now]",
)
@click.option(
    "--provider",
    "providers",
    metavar="NAME",
    multiple=True,
    help="Only this provider's calls, and only the requests it raced in (repeat for several).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON on stdout (for scripts).")
def stats(days: int | None, since: str | None, until: str | None, providers: tuple[str, ...], as_json: bool) -> None:
    """Per provider: calls, success and lost shares, p50/p95 latency, cost; plus request totals, over a window:
    the last 7 days by default, or --days, --since and --until (the first line says which times were counted).

    The total counts requests as the console's Provider stats does: rejected ones included, reuses (History's
    Reuse: an earlier image given to another article) left out and counted on a line of their own. GET
    /admin/stats' total is the Worker's: answered requests only (rejected and running ones left out).

    --provider NAME (any case; repeat for several) keeps those providers' rows, and the requests they raced in,
    as the console's provider filter does: one of their calls ran for it (not one their open breaker skipped).
    success stays the requests answered with an image, whoever won, and says how many they won (the console's
    "Won by them"); rejected requests and reuses, which call no provider, drop out; costUsd stays the requests'
    whole cost (each provider's own is in its row).

    success and lost are shares of the calls, as the console and imagegen_core.analysis count them: lost =
    cancelled because another provider won or the caller left; the rest failed (timeouts included), so the
    three add up, but for calls a crash or kill ended (interrupted: neither lost nor failed, said on a line
    of their own); a request a crash ended is no default-image answer (failed) either, but interrupted.
    GET /admin/stats' successRate is over decided calls (lost ones left out) and its p50 times every decided
    call (the Worker's shape); p50/p95 here time successful calls only.

    --json: {"since", "until" (the window, ISO 8601 UTC; until excluded), "days" (null when --since set the
    start), "providerFilter" (the --provider names as logged, or null), "requests": the counts above (won;
    costUsd, the requests' whole cost; reused out of total), "providers": [{provider, calls, successes,
    cancelled, interrupted, failures: {class: n}, successRate (over decided calls, as /admin/providers), p50Ms,
    p95Ms, costUsd}]}: what a script reads without parsing the table. A refusal (exit 2) is {"error", "field"}
    there, as generate's."""
    from .log.queries import provider_stats, request_summary

    # A whole second: the window printed (to the second) is then the one counted. Bounded at now: rows a machine
    # with its clock ahead dated in the future are in no "last N days" (QA: they were counted, where GET
    # /admin/stats, which ends with today, leaves them out).
    now = math.ceil(time.time())
    window = _or_refuse(lambda: stats_window(days, since, until, now=now))
    require_log()
    with open_imagegen() as gen:
        names = _or_refuse(lambda: provider_filter(gen.log, providers))
        summary = request_summary(gen.log, since=window.since, until=window.until, now=now, providers=names)
        rows = provider_stats(gen.log, since=window.since, until=window.until, providers=names)
    if as_json:
        click.echo(json.dumps(_stats_document(summary, rows, window, names), indent=2))
        return
    click.echo(window.heading())
    if names is not None:
        click.echo(f"providers: {', '.join(names)} (their calls, and the requests they raced in)")
    if not summary["total"] and not rows:  # a header over no rows read as a failure to read the log
        click.echo("no requests in this window")
        _echo_reused(summary)
        return
    click.echo(f"requests: {', '.join(_request_counts(summary, names))}")
    _echo_reused(summary)
    _echo_provider_table(rows)


def _or_refuse(read: Callable[[], _T]) -> _T:
    """What ``read`` gives, or its :class:`~imagegen_core.errors.StatsWindowError` as the command's refusal: one
    line, exit 2 (and the error shape with ``--json``)."""
    try:
        return read()
    except StatsWindowError as exc:
        fail(str(exc), field=exc.field)


def _request_counts(summary: dict[str, Any], providers: list[str] | None) -> list[str]:
    """The request line's counts: those always shown, then the rest when there are any, so that ``total`` adds
    up (a request a crash left behind says so); with providers, how many of the successes they won."""
    counts = [f"{summary.get(k, 0)} {k}" for k in ("total", "success", "failed", "rejected")]
    if providers is not None:
        winners = providers[0] if len(providers) == 1 else "them"
        counts[1] += f" ({summary['won']} won by {winners})"
    if summary.get("cancelled"):
        counts.append(f"{summary['cancelled']} cancelled")
    if summary.get("interrupted"):
        counts.append(f"{summary['interrupted']} interrupted (a crash or kill ended them)")
    if summary.get("offered"):
        counts.append(f"{summary['offered']} compared without a pick")
    if in_progress := summary.get("running", 0) - summary.get("incomplete", 0):
        counts.append(f"{in_progress} in progress")
    if summary.get("incomplete"):
        counts.append(f"{summary['incomplete']} incomplete (the process stopped mid-request)")
    return counts


def _echo_provider_table(rows: list[dict[str, Any]]) -> None:
    """One line per provider under a heading, and what its columns count."""
    # As wide as the longest name (up to 64 characters): a 12-character column pushed longer ones' figures
    # out from under their headings.
    width = max([12, *(len(r["provider"]) + 2 for r in rows)])
    click.echo(f"{'provider':<{width}}{'calls':>7}{'success':>9}{'lost':>7}{'p50 ms':>9}{'p95 ms':>9}{'cost $':>9}")
    for r in rows:
        success, lost = _share(r["successes"], r["calls"]), _share(r["cancelled"], r["calls"])
        click.echo(
            f"{r['provider']:<{width}}{r['calls']:>7}{success:>9}{lost:>7}{_ms(r.get('p50_ms')):>9}"
            f"{_ms(r.get('p95_ms')):>9}{r.get('cost_usd', 0.0):>9.4f}"
        )
    if rows:  # GET /admin/stats times every decided call (the Worker's avgElapsedMs): say which these are
        click.echo("success, lost: shares of the calls (lost: another provider won or the caller left)")
        click.echo("p50/p95: successful calls only")
    if interrupted := sum(r.get("interrupted", 0) for r in rows):
        click.echo(f"interrupted: {interrupted} calls a crash or kill ended (neither success, lost nor failed)")


def _stats_document(
    summary: dict[str, Any], rows: list[dict[str, Any]], window: StatsWindow, providers: list[str] | None
) -> dict[str, Any]:
    """``imagegen stats --json``: the same figures as the table, in the API's spelling (camelCase)."""
    from .timestamps import iso

    requests = {key: value for key, value in summary.items() if key != "cost_usd"}
    requests["costUsd"] = round(summary.get("cost_usd", 0.0), 6)
    provider_rows = [
        {
            "provider": r["provider"],
            "calls": r["calls"],
            "successes": r["successes"],
            "cancelled": r["cancelled"],
            "interrupted": r["interrupted"],
            "failures": r["failures"],
            "successRate": None if r["success_rate"] is None else round(r["success_rate"], 4),
            "p50Ms": r["p50_ms"],
            "p95Ms": r["p95_ms"],
            "costUsd": round(r["cost_usd"], 6),
        }
        for r in rows
    ]
    return {
        "since": iso(window.since),
        "until": iso(window.until),
        "days": window.days,
        "providerFilter": providers,
        "requests": requests,
        "providers": provider_rows,
    }


def _echo_reused(summary: dict[str, Any]) -> None:
    """The reuses in the range on a line of their own: like the console's Provider stats, ``total`` leaves them
    out (no provider was asked; see :func:`~imagegen_core.log.queries.counted_as_request`), and this line says
    how many were, so that no count silently changes meaning (QA: the CLI counted them in the total)."""
    if summary.get("reused"):
        n = summary["reused"]
        click.echo(f"reused: {n} earlier image{'s' if n != 1 else ''} given to another article (not in the total)")


def _share(count: int, calls: int) -> str:
    """``count`` as a whole percentage of ``calls`` ("-" for none); ">99%" and "<1%" where rounding would say
    "100%" or "0%" and some calls were otherwise (QA: 249 successes of 250 calls read "100%", a provider that
    never failed)."""
    if not calls:
        return "-"
    text = f"{count / calls * 100:.0f}%"
    if text == "100%" and count < calls:
        return ">99%"
    if text == "0%" and count > 0:
        return "<1%"
    return text


def _ms(value: float | None) -> str:
    """A latency in whole ms, rounded as the console's table rounds it ("-" for none)."""
    from .rounding import whole

    return "-" if value is None else str(whole(value))
