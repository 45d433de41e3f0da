"""``imagegen stats``: request totals and per-provider figures over a window of the log, as a table or JSON."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from .cli_common import JsonRefusalCommand, open_imagegen, require_log


@click.command(cls=JsonRefusalCommand)
@click.option("--days", type=click.IntRange(1, 3650), default=7, show_default=True, help="Look back this many days.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON on stdout (for scripts).")
def stats(days: int, as_json: bool) -> None:
    """Per provider: calls, success and lost shares, p50/p95 latency, cost; plus request totals.

    The total counts requests as the console's Provider stats does: rejected ones included, reuses (History's
    Reuse: an earlier image given to another article) left out and counted on a line of their own. GET
    /admin/stats' total is the Worker's: answered requests only (rejected and running ones left out).

    success and lost are shares of the calls, as the console and imagegen_core.analysis count them: lost =
    cancelled because another provider won or the caller left; the rest failed (timeouts included), so the
    three add up, but for calls a crash or kill ended (interrupted: neither lost nor failed, said on a line
    of their own); a request a crash ended is no default-image answer (failed) either, but interrupted.
    GET /admin/stats' successRate is over decided calls (lost ones left out) and its p50 times every decided
    call (the Worker's shape); p50/p95 here time successful calls only.

    --json: {"since", "until", "days", "requests": the counts above (costUsd, and reused out of total),
    "providers": [{provider, calls, successes, cancelled, interrupted, failures: {class: n}, successRate (over
    decided calls, as /admin/providers), p50Ms, p95Ms, costUsd}]}: what a script reads without parsing the
    table."""
    from .log.queries import provider_stats, request_summary

    require_log()
    with open_imagegen() as gen:
        now = time.time()
        since = now - days * 86400
        # Bounded at now: rows a machine with its clock ahead dated in the future are in no "last N days" (QA:
        # they were counted, where GET /admin/stats, which ends with today, leaves them out).
        summary = request_summary(gen.log, since=since, until=now, now=now)
        rows = provider_stats(gen.log, since=since, until=now)
    if as_json:
        click.echo(json.dumps(_stats_document(summary, rows, since=since, until=now, days=days), indent=2))
        return
    if not summary["total"] and not rows:  # a header over no rows read as a failure to read the log
        click.echo(f"no requests in the last {days} day{'s' if days != 1 else ''}")
        _echo_reused(summary)
        return
    counts = [f"{summary.get(k, 0)} {k}" for k in ("total", "success", "failed", "rejected")]
    # Shown when there are any, so that `total` adds up: a request a crash left behind says so.
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
    click.echo(f"requests: {', '.join(counts)} (last {days} day{'s' if days != 1 else ''})")
    _echo_reused(summary)
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
    summary: dict[str, Any], rows: list[dict[str, Any]], *, since: float, until: float, days: int
) -> dict[str, Any]:
    """``imagegen stats --json``: the same figures as the table, in the API's spelling (camelCase)."""
    from .timestamps import iso

    requests = {key: value for key, value in summary.items() if key != "cost_usd"}
    requests["costUsd"] = round(summary.get("cost_usd", 0.0), 6)
    providers = [
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
    return {"since": iso(since), "until": iso(until), "days": days, "requests": requests, "providers": providers}


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
