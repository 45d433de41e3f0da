"""The hedge budget's reserve, measured on the race engine alone under a virtual clock, over many seeds.

``bench/hedging.py`` runs everything for real (sockets, WebP, the log) and so carries this VM's noise; one
run's p99 rests on its 20 slowest answers and moves from run to run. This benchmark takes the noise out to
compare two budget rules over many runs: the real :class:`~imagegen_core.race.Race` with the real
:class:`~imagegen_core.hedging.Hedger` (settings from the default config), fake providers that sleep,
and a looptime event loop, so that a 2 s straggler costs no wall time and a seed gives the same run every
time.

Setup: two providers, ``primary`` and ``backup``, whose latencies follow one script per seed (lognormal,
median ``--median-ms``, sigma ``--sigma``, a share ``--straggler-p`` of ``--straggler-ms`` stragglers; each
provider its own script, consumed call by call). ``--concurrency`` requests in flight in a closed loop;
after each race the request spends ``--overhead-ms`` more (what storing and logging take in
``bench/hedging.py``). ``--warmup`` requests, then ``--requests`` timed ones, per seed and configuration:

1. **no hedging**: ``race.mode = "sequential"``;
2. **no reserve**: the defaults with ``race.hedgeBudgetReserve = 0`` (any hedge may take the last token);
3. **defaults**: adaptive p90, budget 10 %, burst 5, reserve 2.

(Both hedged ones with ``race.hedgeDelay = 250``, the delay until enough attempt times are known.)

Printed (Markdown): per configuration the p99 over the seeds (best, median, worst), the runs that met the
issue's goal (p99 at least 5x lower than no hedging on the same seed, at most 10 % extra calls), extra calls
and stragglers left unhedged; then the ratio of the defaults to no reserve.

Run from the project root: ``.venv/bin/python bench/hedging_virtual.py`` (``--seeds 3`` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import looptime
from _measure import pct

from imagegen_core.breaker import CircuitBreakers, InMemoryBreakerStore
from imagegen_core.config import BreakerConfig, parse_config
from imagegen_core.gates import DirectBreakerGate
from imagegen_core.hedging import Hedger
from imagegen_core.planning import hedge_settings
from imagegen_core.providers.base import ProviderJob, ProviderOutput
from imagegen_core.providers.fake import FakeProvider
from imagegen_core.race import Entrant, Race, RacePlan

JOB = ProviderJob(request_id="bench", prompt="p", width=64, height=64, timeout_s=30)
#: As in ``bench/hedging.py``: a fixed 250 ms until ``race.hedgeMinSamples`` attempt times are known.
CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "no hedging (sequential)": {"mode": "sequential"},
    "adaptive p90, no reserve": {"hedgeDelay": 250, "hedgeBudgetReserve": 0},
    "defaults (adaptive p90, reserve 2)": {"hedgeDelay": 250},
}


@dataclass(frozen=True)
class Plan:
    seeds: int
    requests: int
    warmup: int
    concurrency: int
    overhead_ms: float
    median_ms: float
    sigma: float
    straggler_p: float
    straggler_ms: float


@dataclass(frozen=True)
class Run:
    """One seed of one configuration."""

    p99_ms: float
    extra_pct: float  # requests that started a second provider
    unhedged_stragglers: int  # answers slower than half a straggler that started no second provider


def latency_script(plan: Plan, seed: int, calls: int) -> list[float]:
    """One provider's latencies (ms), call by call."""
    rng = random.Random(seed)
    return [
        plan.straggler_ms if rng.random() < plan.straggler_p else plan.median_ms * rng.lognormvariate(0, plan.sigma)
        for _ in range(calls)
    ]


async def run_once(plan: Plan, race_section: dict[str, Any], seed: int) -> Run:
    config = parse_config({"race": race_section})
    hedger = Hedger(hedge_settings(config))

    async def finish(_entrant: Entrant, output: ProviderOutput) -> ProviderOutput:
        return output

    breakers = CircuitBreakers(InMemoryBreakerStore(), BreakerConfig(min_calls=1000, window_size=1000))
    race: Race[ProviderOutput] = Race(client=None, breakers=DirectBreakerGate(breakers), finish=finish, hedger=hedger)
    calls = 2 * (plan.requests + plan.warmup)  # enough that no script repeats
    entrants = [
        Entrant(
            name=name,
            provider=FakeProvider(name=name),
            timeout_s=10,
            hedge_delay_s=config.race.hedge_delay / 1000,
            options={"latencyMs": latency_script(plan, 2 * seed + index, calls)},
        )
        for index, name in enumerate(("primary", "backup"))
    ]
    race_plan = RacePlan(entrants=entrants, mode=config.race.mode)
    loop = asyncio.get_running_loop()
    numbers = iter(range(plan.warmup + plan.requests))
    answers: list[tuple[float, bool]] = []

    async def client() -> None:
        for number in numbers:
            start = loop.time()
            result = await race.run(race_plan, JOB)
            await asyncio.sleep(plan.overhead_ms / 1000)
            if number >= plan.warmup:
                answers.append(((loop.time() - start) * 1000, len({a.provider for a in result.attempts}) > 1))

    await asyncio.gather(*(client() for _ in range(plan.concurrency)))
    slow = plan.straggler_ms / 2
    return Run(
        p99_ms=pct([ms for ms, _ in answers], 99),
        extra_pct=100 * sum(second for _, second in answers) / len(answers),
        unhedged_stragglers=sum(1 for ms, second in answers if ms >= slow and not second),
    )


def run_configuration(plan: Plan, race_section: dict[str, Any], seed: int) -> Run:
    loop = looptime.new_event_loop()
    try:
        return loop.run_until_complete(run_once(plan, race_section, seed))
    finally:
        loop.close()


def report(plan: Plan, runs: dict[str, list[Run]], wall_s: float) -> None:
    print(
        f"\nimagegen hedging on a virtual clock: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"Python {platform.python_version()}, {wall_s:.0f} s of wall time"
    )
    print(
        f"\n### {plan.seeds} seeds × {plan.requests} requests at {plan.concurrency} in flight (after {plan.warmup} "
        f"warm-up), lognormal median {plan.median_ms:g} ms sigma {plan.sigma:g}, {plan.straggler_p * 100:g} % "
        f"stragglers at {plan.straggler_ms:g} ms, {plan.overhead_ms:g} ms per request after the race\n"
    )
    print(
        "| configuration | p99 best ms | p99 median ms | p99 worst ms | goal met (≥ 5x, ≤ 10 %) "
        "| extra calls, mean | extra calls, most | stragglers not hedged (all seeds) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    base = runs[next(iter(CONFIGURATIONS))]
    for label, results in runs.items():
        p99 = sorted(r.p99_ms for r in results)
        hedging = results is not base
        met = sum(b.p99_ms / r.p99_ms >= 5 and r.extra_pct <= 10 for b, r in zip(base, results, strict=True))
        print(
            f"| {label} | {p99[0]:.0f} | {statistics.median(p99):.0f} | {p99[-1]:.0f} "
            f"| {f'{met} of {len(results)}' if hedging else '—'} "
            f"| {statistics.fmean(r.extra_pct for r in results):.1f} % | {max(r.extra_pct for r in results):.1f} % "
            f"| {sum(r.unhedged_stragglers for r in results)} |"
        )
    no_reserve, defaults = (sorted(r.p99_ms for r in runs[label]) for label in list(CONFIGURATIONS)[1:])
    print(
        f"\nDefaults vs no reserve, p99: median {statistics.median(defaults) / statistics.median(no_reserve):.2f}x, "
        f"worst {defaults[-1] / no_reserve[-1]:.2f}x (below 1: the reserve is better)."
    )


def parse_args(argv: list[str] | None = None) -> Plan:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seeds", type=int, default=12, help="runs per configuration (default 12)")
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per run (default 2000)")
    parser.add_argument("--warmup", type=int, default=100, help="untimed requests first (default 100)")
    parser.add_argument("--concurrency", type=int, default=20, help="requests in flight (default 20)")
    parser.add_argument("--overhead-ms", type=float, default=15.0, help="time per request after the race (15)")
    parser.add_argument("--median-ms", type=float, default=100.0, help="provider latency median (default 100)")
    parser.add_argument("--sigma", type=float, default=0.3, help="lognormal sigma (default 0.3)")
    parser.add_argument("--straggler-p", type=float, default=0.05, help="share of stragglers (default 0.05)")
    parser.add_argument("--straggler-ms", type=float, default=2000.0, help="straggler latency (default 2000)")
    args = parser.parse_args(argv)
    plan = Plan(**vars(args))
    if min(plan.seeds, plan.requests, plan.concurrency) < 1 or min(plan.warmup, plan.overhead_ms) < 0:
        parser.error("counts must be positive, --warmup and --overhead-ms not negative")
    if not (plan.median_ms > 0 and plan.sigma >= 0 and 0 <= plan.straggler_p <= 1 and plan.straggler_ms > 0):
        parser.error("the latency mix needs --median-ms > 0, --sigma >= 0, --straggler-p in 0..1, --straggler-ms > 0")
    return plan


def main(argv: list[str] | None = None) -> int:
    plan = parse_args(argv)
    runs: dict[str, list[Run]] = {label: [] for label in CONFIGURATIONS}
    started = time.perf_counter()
    for seed in range(1, plan.seeds + 1):
        for label, section in CONFIGURATIONS.items():
            run = run_configuration(plan, section, seed)
            runs[label].append(run)
            print(f"seed {seed}, {label}: p99 {run.p99_ms:.0f} ms, {run.extra_pct:.1f} % extra", file=sys.stderr)
    report(plan, runs, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
