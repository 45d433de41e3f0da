"""Does hedging cut imagegen's tail latency, and at what cost in extra provider calls?

Two fake OpenAI-style providers (``primary`` and ``backup``, both of type ``openai``) run in a separate
process on 127.0.0.1 (``bench/_fakeserver.py``). Each answers ``POST /v1/images/generations`` with a
64x64 PNG as ``b64_json`` after a delay drawn from the same distribution: lognormal (median
``--median-ms``, sigma ``--sigma``) with a share ``--straggler-p`` of stragglers that take
``--straggler-ms`` instead. Each provider has its own seeded generator.

The same requests go through ``ImageGen.generate`` (validation, race, WebP, local store, SQLite log) at
``--concurrency`` in flight, for four race configurations, each on a fresh ImageGen:

1. **no hedging**: ``race.mode = "sequential"`` (the backup only starts if the primary fails; it never does);
2. **fixed delay**: ``race.mode = "hedged"``, ``race.hedgeDelay = --fixed-ms``, ``race.adaptiveHedge = false``;
3. **adaptive**: ``race.mode = "hedged"``, ``race.adaptiveHedge = true``, ``race.hedgeQuantile = --quantile``
   (default: the config's default, 0.9; a quantile below what the budget affords is raised to it, see
   ``imagegen_core.hedging.effective_quantile``) and ``race.hedgeDelay = --fixed-ms`` until
   ``race.hedgeMinSamples`` successes are known;
4. **adaptive, no reserve**: the same with ``race.hedgeBudgetReserve = 0`` (the baseline of the reserve: every
   hedge may take the bucket's last token, not only overdue requests).

Otherwise the hedge budget stays at its defaults (``race.hedgeBudgetShare`` 0.1, ``race.hedgeBudgetBurst`` 5,
``race.hedgeBudgetReserve`` 2);
``costPerImage`` is 0, so ``race.maxExtraCostPerRequest`` never limits. Every configuration first runs
``--warmup`` untimed requests (the adaptive delay needs them; the others get them too, so all start
alike). The four run ``--rounds`` times, alternating (round 1 runs all four, then round 2, ...), since
one run's p99 rests on its 20 slowest answers and moves from run to run.

Printed (Markdown, stdout): p50, p99 and p99.9 of the answer time (nearest rank), extra provider calls
(% of requests that started a second provider, and all calls over requests as the server counted them),
answers slower than half a straggler that started no second provider, the hedge delay in force at the
end, and the p99 ratio vs no hedging, all over the rounds' answers pooled; then each round's p99 ratio
against that round's no-hedging run, with the issue's goal (p99 at least 5x lower with at most 10 % extra
calls) counted per round.

Run from the project root: ``.venv/bin/python bench/hedging.py`` (``--quick`` for a smoke run). Exits
non-zero if any request fails, if the server counts more calls than imagegen reports, or if the server
does not shut down cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import platform
import sys
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from _fakeserver import Behaviour, FakeImageServer, ServerError
from _home import temporary_home
from _measure import pct

PROMPT = "a lighthouse at dusk"
IMAGE_SIZE = 64
DUMMY_KEY = "bench-dummy-openai-key"
PROVIDERS = ("primary", "backup")


class BenchError(Exception):
    """A failed request or a call count that does not add up: the figures would be meaningless."""


@dataclass(frozen=True)
class Plan:
    requests: int
    warmup: int
    concurrency: int
    fixed_ms: int
    quantile: float
    rounds: int
    behaviour: Behaviour


@dataclass(frozen=True)
class Variant:
    label: str
    race: dict[str, Any]


def variants(plan: Plan) -> list[Variant]:
    """The four race configurations, as ``race`` sections of the config document."""
    from imagegen_core.config import RaceConfig
    from imagegen_core.hedging import effective_quantile

    effective = effective_quantile(plan.quantile, RaceConfig().hedge_budget_share)
    adaptive = f"adaptive p{plan.quantile * 100:g}"
    if effective != plan.quantile:
        adaptive += f" (p{effective * 100:g} under the default budget)"
    adaptive_race = {
        "mode": "hedged",
        "hedgeDelay": plan.fixed_ms,
        "adaptiveHedge": True,
        "hedgeQuantile": plan.quantile,
    }
    return [
        Variant("no hedging (sequential)", {"mode": "sequential"}),
        Variant(
            f"fixed delay {plan.fixed_ms} ms",
            {"mode": "hedged", "hedgeDelay": plan.fixed_ms, "adaptiveHedge": False},
        ),
        Variant(f"{adaptive}, no reserve", {**adaptive_race, "hedgeBudgetReserve": 0}),
        Variant(adaptive, adaptive_race),
    ]


def config_document(race: dict[str, Any]) -> dict[str, Any]:
    """Only the two fake providers race (the built-in entries are switched off)."""
    entry = {"type": "openai", "enabled": True, "timeout": 10_000, "retries": 0, "costPerImage": 0.0}
    return {
        "providers": {
            **{name: {"enabled": False} for name in ("replicate", "fal", "unsplash", "openai", "offline")},
            "primary": {**entry, "priority": 1},
            "backup": {**entry, "priority": 2},
        },
        "race": race,
    }


@dataclass
class Outcome:
    """What one configuration measured."""

    latencies_ms: list[float]
    second_provider: int  # requests that started a second provider
    slow_single: int  # requests slower than half a straggler that started no second provider
    attempts: int  # provider calls imagegen reports (skipped ones excluded)
    server_calls: int  # provider calls the fake server received
    hedge_delay_ms: float  # the primary's hedge delay in force at the end
    elapsed_s: float

    def pct(self, p: float) -> float:
        """Nearest-rank percentile of the latencies (an observed value)."""
        return pct(self.latencies_ms, p)

    @classmethod
    def pooled(cls, outcomes: list[Outcome]) -> Outcome:
        """The rounds of one configuration as one run (answers and counts together; the last delay)."""
        return cls(
            [ms for o in outcomes for ms in o.latencies_ms],
            sum(o.second_provider for o in outcomes),
            sum(o.slow_single for o in outcomes),
            sum(o.attempts for o in outcomes),
            sum(o.server_calls for o in outcomes),
            outcomes[-1].hedge_delay_ms,
            sum(o.elapsed_s for o in outcomes),
        )

    @property
    def extra_pct(self) -> float:
        return 100 * self.second_provider / len(self.latencies_ms)

    @property
    def server_extra_pct(self) -> float:
        return 100 * (self.server_calls - len(self.latencies_ms)) / len(self.latencies_ms)


async def run_variant(plan: Plan, variant: Variant, server: FakeImageServer, home: Path) -> Outcome:
    from imagegen_core import ImageGen, Settings
    from imagegen_core.models import AttemptOutcome
    from imagegen_core.service import make_http_client

    settings = Settings(
        _env_file=None,  # never a stray .env from the working directory
        IMAGEGEN_HOME=str(home),
        IMAGEGEN_DATABASE_URL=None,
        IMAGEGEN_PUBLIC_BASE_URL=None,
        OPENAI_API_KEY=DUMMY_KEY,
        provider_base_urls={name: server.url(name) for name in PROVIDERS},
    )
    request = {"prompt": PROMPT, "width": IMAGE_SIZE, "height": IMAGE_SIZE}
    async with make_http_client() as client:
        gen = ImageGen.from_settings(settings, http_client=client)
        async with gen:
            gen.set_config(config_document(variant.race), source="bench")
            if [e.name for e in gen.entrants()] != list(PROVIDERS):
                raise BenchError(f"unexpected entrants: {[e.name for e in gen.entrants()]}")

            latencies: list[float] = []
            counters = {"second": 0, "attempts": 0, "slow_single": 0}
            slow_ms = plan.behaviour.straggler_ms / 2 if plan.behaviour.straggler_p > 0 else math.inf

            async def one(gate: asyncio.Semaphore, timed: bool) -> None:
                async with gate:
                    start = time.perf_counter()
                    result = await gen.generate(request)
                    elapsed_ms = (time.perf_counter() - start) * 1000
                if not result.success or result.provider not in PROVIDERS:
                    raise BenchError(f"generate failed: provider={result.provider} error={result.error}")
                if timed:
                    latencies.append(elapsed_ms)
                    started = [a for a in result.attempts if a.outcome != AttemptOutcome.SKIPPED]
                    counters["attempts"] += len(started)
                    second = len({a.provider for a in started}) > 1
                    counters["second"] += second
                    counters["slow_single"] += elapsed_ms >= slow_ms and not second

            gate = asyncio.Semaphore(plan.concurrency)
            await asyncio.gather(*(one(gate, False) for _ in range(plan.warmup)))
            await gen.flush()
            fixed_s = plan.fixed_ms / 1000
            print(
                f"  after warm-up: {gen.hedger.samples('primary')} samples, hedge delay "
                f"{gen.hedger.delay_s('primary', fixed_s) * 1000:.0f} ms ...",
                end="",
                flush=True,
                file=sys.stderr,
            )
            before = server.stats()
            t0 = time.perf_counter()
            await asyncio.gather(*(one(gate, True) for _ in range(plan.requests)))
            elapsed = time.perf_counter() - t0
            await gen.flush()
            after = server.stats()
            hedge_delay_ms = gen.hedger.delay_s("primary", fixed_s) * 1000
    server_calls = sum(after[name] - before[name] for name in PROVIDERS)
    return Outcome(
        latencies,
        counters["second"],
        counters["slow_single"],
        counters["attempts"],
        server_calls,
        hedge_delay_ms,
        elapsed,
    )


async def run_all(plan: Plan, server: FakeImageServer, home: Path) -> list[tuple[Variant, list[Outcome]]]:
    """Every configuration ``plan.rounds`` times, alternating: the outcomes of each, round by round."""
    results: list[tuple[Variant, list[Outcome]]] = [(variant, []) for variant in variants(plan)]
    for round_no in range(1, plan.rounds + 1):
        for index, (variant, outcomes) in enumerate(results):
            print(
                f"round {round_no}, {variant.label}: {plan.warmup} warm-up + {plan.requests} requests",
                file=sys.stderr,
                flush=True,
            )
            outcome = await run_variant(plan, variant, server, home / f"round{round_no}-v{index}")
            # A hedge imagegen cancels before its request leaves may never reach the server, so the server may
            # count fewer calls than imagegen started, never more.
            if outcome.server_calls > outcome.attempts:
                raise BenchError(
                    f"{variant.label}: the server saw {outcome.server_calls} calls, imagegen reports {outcome.attempts}"
                )
            print(
                f" p50 {outcome.pct(50):.0f} ms, p99 {outcome.pct(99):.0f} ms, "
                f"{outcome.extra_pct:.1f} % second provider, {outcome.elapsed_s:.1f} s",
                file=sys.stderr,
            )
            outcomes.append(outcome)
    return results


def report(plan: Plan, results: list[tuple[Variant, list[Outcome]]]) -> None:
    b = plan.behaviour
    from imagegen_core.workers import usable_cores

    cores = usable_cores()
    print(
        f"\nimagegen hedging: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, "
        f"{platform.machine()} with {cores} cores, {platform.system()} {platform.release()}"
    )
    print(
        f"\n### Answer time, {plan.rounds} rounds of {plan.requests} requests at {plan.concurrency} in flight "
        f"(each after {plan.warmup} warm-up), lognormal median {b.median_ms:g} ms sigma {b.sigma:g}, "
        f"{b.straggler_p * 100:g} % stragglers at {b.straggler_ms:g} ms\n"
    )
    print(
        "| configuration | p50 ms | p99 ms | p99.9 ms | second provider started | calls / request "
        f"| ≥ {b.straggler_ms / 2:g} ms, not hedged | hedge delay at end | p99 vs no hedging |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    pooled = [(variant, Outcome.pooled(outcomes)) for variant, outcomes in results]
    base = pooled[0][1]
    for index, (variant, o) in enumerate(pooled):
        delay = f"{o.hedge_delay_ms:.0f} ms" if index else "—"
        reduction = f"{base.pct(99) / o.pct(99):.2f}x lower" if index else "—"
        print(
            f"| {variant.label} | {o.pct(50):.0f} | {o.pct(99):.0f} | {o.pct(99.9):.0f} | {o.extra_pct:.1f} % "
            f"| {o.server_calls / len(o.latencies_ms):.3f} | {o.slow_single} | {delay} | {reduction} |"
        )
    print(
        "\n(all rounds' answers together; calls / request: generation requests the fake server received during "
        "the timed runs, over requests; not hedged: answers slower than half a straggler that started no second "
        "provider; hedge delay: the primary's, as `Hedger.delay_s` gives it after the last round)"
    )
    print(
        "\n### Goal (issue 7), round by round: p99 at least 5x lower than that round's no hedging, "
        "with at most 10 % extra calls\n"
    )
    hedged = results[1:]
    print("| round | no hedging p99 ms | " + " | ".join(v.label for v, _ in hedged) + " |")
    print("|---:|---:|" + "---|" * len(hedged))
    met = [0] * len(hedged)
    for r in range(plan.rounds):
        base_p99 = results[0][1][r].pct(99)
        cells = []
        for index, (_, outcomes) in enumerate(hedged):
            o = outcomes[r]
            ratio = base_p99 / o.pct(99)
            ok = ratio >= 5 and o.extra_pct <= 10
            met[index] += ok
            verdict = "met" if ok else "missed"
            cells.append(f"p99 {o.pct(99):.0f} ms, {ratio:.2f}x, {o.extra_pct:.1f} % extra: {verdict}")
        print(f"| {r + 1} | {base_p99:.0f} | " + " | ".join(cells) + " |")
    print()
    for (variant, _), count in zip(hedged, met, strict=True):
        print(f"- {variant.label}: goal met in **{count} of {plan.rounds}** rounds")


def parse_args(argv: list[str] | None = None) -> Plan:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--requests", type=int, help="timed requests per configuration (default 2000; quick 300)")
    parser.add_argument("--warmup", type=int, help="untimed requests per configuration first (default 100; quick 60)")
    parser.add_argument("--concurrency", type=int, default=20, help="requests in flight (default 20)")
    parser.add_argument("--rounds", type=int, help="runs of each configuration, alternating (default 3; quick 1)")
    parser.add_argument("--fixed-ms", type=int, default=250, help="fixed hedge delay, ms (default 250)")
    parser.add_argument(
        "--quantile", type=float, help="adaptive hedge quantile (default: the config's, race.hedgeQuantile)"
    )
    parser.add_argument("--median-ms", type=float, default=100.0, help="provider latency median (default 100)")
    parser.add_argument("--sigma", type=float, default=0.3, help="lognormal sigma (default 0.3)")
    parser.add_argument("--straggler-p", type=float, default=0.05, help="share of stragglers (default 0.05)")
    parser.add_argument("--straggler-ms", type=float, default=2000.0, help="straggler latency (default 2000)")
    args = parser.parse_args(argv)
    plan = Plan(
        requests=args.requests or (300 if args.quick else 2000),
        warmup=args.warmup if args.warmup is not None else (60 if args.quick else 100),
        concurrency=args.concurrency,
        fixed_ms=args.fixed_ms,
        quantile=args.quantile if args.quantile is not None else _default_quantile(),
        rounds=args.rounds or (1 if args.quick else 3),
        behaviour=Behaviour(
            median_ms=args.median_ms, sigma=args.sigma, straggler_p=args.straggler_p, straggler_ms=args.straggler_ms
        ),
    )
    if min(plan.requests, plan.concurrency, plan.rounds) < 1 or plan.warmup < 0 or not 0.5 <= plan.quantile <= 0.999:
        parser.error("counts must be positive and --quantile within 0.5..0.999")
    return plan


def _default_quantile() -> float:
    from imagegen_core.config import RaceConfig

    return RaceConfig().hedge_quantile


def main(argv: list[str] | None = None) -> int:
    plan = parse_args(argv)
    b = plan.behaviour
    behaviours = {name: replace(b, seed=seed) for seed, name in enumerate(PROVIDERS, start=1)}
    try:
        with temporary_home("imagegen-hedging-") as tmp, FakeImageServer(behaviours) as server:
            results = asyncio.run(run_all(plan, server, Path(tmp)))
    except (BenchError, ServerError, httpx.HTTPError, OSError) as exc:
        print(f"\nbenchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    report(plan, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
