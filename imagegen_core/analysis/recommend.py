"""Whether a candidate config is worth applying: replayed next to the current one on several seeds, it must
bring images, keep today's success, not make the slowest answers (p99) slower, and beat today's success or
p95 answer time on every seed (one replay's p95 wanders by several per cent from seed to seed, so a gain seen
on one seed may be noise). The tuning notebook recommends nothing, and says why, otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..config import RuntimeConfig
from ..errors import AnalysisError, is_finite_number
from .latency import EmpiricalModel, LatencyModel
from .replay import ReplayReport, replay

#: Never trade success for speed: at most 0.2 points below today's.
SUCCESS_SLACK = 0.002
#: Seeds the verdict replays both configs on: a gain must hold on each.
SEEDS = (1, 2, 3, 4)


#: Latency quantiles a timeout sweep tries (:func:`timeout_candidates`): where a timeout starts to cut answers.
SWEEP_QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.99)
#: Multiples of the p99 a sweep also tries: past the tail, where a longer timeout stops changing anything.
SWEEP_P99_MULTIPLES = (1.5, 2.0)
#: Candidate timeouts are rounded up to this step (ms): a config holds round numbers.
SWEEP_STEP_MS = 100


def timeout_candidates(model: EmpiricalModel, *, current_ms: float, race_ms: float) -> list[int]:
    """The timeouts worth replaying for one provider, ascending, without repeats: its own latency quantiles
    (:data:`SWEEP_QUANTILES`) and some multiples of its p99, rounded up to :data:`SWEEP_STEP_MS`; its current
    timeout and the race's length as they are; all at most the race's length (a longer timeout replays as the
    race's length). A fixed list of 1-20 s said little about a provider answering in 300 ms. Quantiles the log
    cannot see (``inf``: cut-short attempts hide the tail) are left out, and the longest attempt it saw is tried
    in their place. AnalysisError, in one line, unless both times are positive milliseconds (QA: -1 and 0 came back
    as candidates)."""
    for name, value in (("current_ms", current_ms), ("race_ms", race_ms)):
        if not is_finite_number(value) or value <= 0:
            raise AnalysisError(f"{name} must be a positive number of milliseconds, not {value!r}")
    p99 = model.quantile_ms(SWEEP_QUANTILES[-1])
    derived = [model.quantile_ms(q) for q in SWEEP_QUANTILES] + [p99 * m for m in SWEEP_P99_MULTIPLES]
    if not math.isfinite(p99):
        derived.append(model.longest_seen_ms)
    rounded = [max(SWEEP_STEP_MS, math.ceil(ms / SWEEP_STEP_MS) * SWEEP_STEP_MS) for ms in derived if math.isfinite(ms)]
    return sorted({int(min(race_ms, ms)) for ms in [*rounded, current_ms, race_ms]})


@dataclass(frozen=True, slots=True)
class Verdict:
    """``reason`` is None when the candidate is worth applying, else one line saying why not. ``current`` and
    ``candidate`` are the replays behind it, one per seed."""

    reason: str | None
    current: tuple[ReplayReport, ...]
    candidate: tuple[ReplayReport, ...]

    @property
    def recommend(self) -> bool:
        """Whether to apply the candidate."""
        return self.reason is None


def judge(
    current: RuntimeConfig,
    candidate: RuntimeConfig,
    models: Mapping[str, LatencyModel],
    *,
    requests: int = 3000,
    seeds: Sequence[int] = SEEDS,
    interval_ms: float | None = None,
    gaps_ms: Sequence[float] | None = None,
    success_slack: float = SUCCESS_SLACK,
) -> Verdict:
    """Replay both configs on each of ``seeds`` (``requests`` races each, at ``interval_ms`` or ``gaps_ms``; see
    :func:`~.replay.replay`) and judge the candidate (:func:`verdict`)."""
    now: list[ReplayReport] = []
    then: list[ReplayReport] = []
    for seed in seeds:
        for config, reports in ((candidate, then), (current, now)):
            reports.append(
                replay(config, models, requests=requests, seed=seed, interval_ms=interval_ms, gaps_ms=gaps_ms)
            )
        if then[-1].success_rate == 0:  # settled: more seeds of races that all fail would only take time
            break
    return Verdict(verdict(now, then, success_slack=success_slack), tuple(now), tuple(then))


def verdict(
    current: Sequence[ReplayReport], candidate: Sequence[ReplayReport], *, success_slack: float = SUCCESS_SLACK
) -> str | None:
    """None when ``candidate`` is worth applying over ``current`` (replays paired by seed), else why not."""
    if not current or len(current) != len(candidate):
        raise AnalysisError("needs one replay of each config per seed, paired")

    def mean(reports: Sequence[ReplayReport], field: str) -> float:
        return sum(float(getattr(r, field)) for r in reports) / len(reports)

    success_now, success_then = mean(current, "success_rate"), mean(candidate, "success_rate")
    p95_now, p95_then = mean(current, "answer_p95_ms"), mean(candidate, "answer_p95_ms")
    p99_now, p99_then = mean(current, "answer_p99_ms"), mean(candidate, "answer_p99_ms")
    if any(c.success_rate == 0 for c in candidate):
        return (
            "no replayed request succeeds under it, so the log has nothing to tune timings from:"
            " find out why every attempt fails first (imagegen stats, the failure classes)"
        )
    # The figures quoted are means over the seeds: say so, and how many (one replay's figures wander).
    seeds = f"means over {len(current)} seed{'s' if len(current) != 1 else ''}"
    if success_then < success_now - success_slack:
        return f"it loses success ({success_then:.2%} against {success_now:.2%} today, {seeds})"
    if p99_then > p99_now:
        return f"it makes the slowest answers slower (p99 {p99_then:,.0f} ms against {p99_now:,.0f} ms today, {seeds})"
    pairs = list(zip(current, candidate, strict=True))
    more_success = all(c.success_rate > n.success_rate + success_slack for n, c in pairs)
    faster = all(c.answer_p95_ms < n.answer_p95_ms for n, c in pairs)
    if not (more_success or faster):
        return (
            f"it is no better than today's beyond replay noise (p95 {p95_then:,.0f} ms against {p95_now:,.0f} ms,"
            f" success {success_then:.2%} against {success_now:.2%}, {seeds}; it must win on every seed)"
        )
    return None
