"""Alert rules over the log, for cron and dashboards (``GET /admin/alerts``, ``imagegen alerts``).

Three rules, thresholds in the runtime config's ``alerts`` section: a provider's attempt success rate below
``providerSuccessRateMin`` over ``providerWindow``; the request error rate (answered with the default image /
answered) above ``errorRateMax`` and the mean request time above ``avgResponseMsMax``, both over ``window``.
A rule fires only when its window holds at least ``minSamples`` observations, so one failure at night does not
page anyone; a rule with fewer says so in its message ("not firing: fewer than 5 attempts"), whatever its value.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import AlertsConfig
from .log import queries
from .log.db import LogDB
from .timestamps import iso

if TYPE_CHECKING:
    from .service import ImageGen


def _window_text(ms: int) -> str:
    for unit_ms, unit in ((86_400_000, "d"), (3_600_000, "h"), (60_000, "min"), (1_000, "s")):
        if ms >= unit_ms and ms % unit_ms == 0:
            return f"{ms // unit_ms} {unit}"
    return f"{ms} ms"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _millis(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


@dataclass(frozen=True, slots=True)
class _Observed:
    """What one rule saw in its window."""

    value: float | None
    samples: int
    window_ms: int
    unit: str  # what a sample is: "attempts" or "requests"


def _rule(
    name: str,
    seen: _Observed,
    *,
    threshold: float,
    operator: str,
    min_samples: int,
    subject: str,
    fmt: Callable[[float | None], str],
    provider: str | None = None,
) -> dict[str, Any]:
    """One evaluated rule. It fires only with a value past the threshold and enough samples to trust it."""
    value = seen.value
    breached = value is not None and (value < threshold if operator == "<" else value > threshold)
    enough = seen.samples >= min_samples
    message = (
        f"{subject} {fmt(value)} (fires when {operator} {fmt(threshold)}) over the last "
        f"{_window_text(seen.window_ms)} ({seen.samples} {seen.unit})"
    )
    if not enough:
        # Said whether or not the value is past the threshold (QA: only a breached rule said it, so "50.0% …
        # (2 attempts)" read as a healthy provider): with too few samples the rule could not fire either way.
        message += f"; not firing: fewer than {min_samples} {seen.unit if min_samples != 1 else seen.unit[:-1]}"
    return {
        "rule": name,
        "provider": provider,
        "value": None if value is None else round(value, 4),
        "threshold": threshold,
        "operator": operator,
        "windowMs": seen.window_ms,
        "samples": seen.samples,
        "minSamples": min_samples,
        "firing": breached and enough,
        "message": message,
    }


def evaluate_alerts(
    db: LogDB, config: AlertsConfig, *, now: float | None = None, providers: Iterable[str] = ()
) -> dict[str, Any]:
    """Evaluate the three rules over the log: per-provider attempt success rate below
    ``providerSuccessRateMin`` over ``providerWindow``; request error rate (failed / answered) above
    ``errorRateMax`` and mean request time above ``avgResponseMsMax``, both over ``window``.

    ``providers`` (e.g. the racing ones) get a provider rule even without attempts, reported with no value.
    Returns ``{firing, evaluatedAt, rules: [...]}``; each rule carries its value, threshold and message.
    """
    now = time.time() if now is None else now
    until = now + 1  # attempts that start while we evaluate are still "now"
    rules: list[dict[str, Any]] = []
    by_provider = queries.decided_attempts_by_provider(db, since=now - config.provider_window / 1000, until=until)
    for name in sorted(set(by_provider) | set(providers)):
        counts = by_provider.get(name, {"success": 0, "failed": 0})
        samples = counts["success"] + counts["failed"]
        seen = _Observed(counts["success"] / samples if samples else None, samples, config.provider_window, "attempts")
        rule = _rule(
            "providerSuccessRate",
            seen,
            provider=name,
            threshold=config.provider_success_rate_min,
            operator="<",
            min_samples=config.min_samples,
            subject=f"{name} success rate",
            fmt=_percent,
        )
        rules.append(rule)
    totals = queries.answered_request_totals(db, since=now - config.window / 1000, until=until)
    answered = totals["success"] + totals["failed"]
    error_rate = totals["failed"] / answered if answered else None
    for name, value, threshold, subject, fmt in (
        ("errorRate", error_rate, config.error_rate_max, "error rate", _percent),
        ("avgResponseMs", totals["avg_elapsed_ms"], config.avg_response_ms_max, "average response time", _millis),
    ):
        seen = _Observed(value, answered, config.window, "requests")
        rules.append(
            _rule(
                name, seen, threshold=threshold, operator=">", min_samples=config.min_samples, subject=subject, fmt=fmt
            )
        )
    return {
        "firing": any(r["firing"] for r in rules),
        "evaluatedAt": iso(now),
        "rules": rules,
    }


def alerts_for(gen: ImageGen, *, now: float | None = None) -> dict[str, Any]:
    """:func:`evaluate_alerts` with the thresholds in force, every racing provider included (the API's
    ``/admin/alerts`` and ``imagegen alerts`` both use this)."""
    config = gen.reload_config()
    racing = [entrant.name for entrant in gen.entrants(config)]
    return evaluate_alerts(gen.log, config.alerts, now=now, providers=racing)
