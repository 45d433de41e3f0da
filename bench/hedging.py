"""Does hedging cut imagegen's tail latency, and at what cost in extra provider calls?

Two fake OpenAI-style providers (``primary`` and ``backup``, both of type ``openai``) run in a separate
process on 127.0.0.1 (``bench/_fakeserver.py``). Each answers ``POST /v1/images/generations`` with a
64x64 PNG as ``b64_json`` after a delay drawn from the same distribution: lognormal (median
``--median-ms``, sigma ``--sigma``) with a share ``--straggler-p`` of stragglers that take
``--straggler-ms`` instead. Each provider has its own seeded generator.

The same requests go through ``ImageGen.generate`` (validation, race, WebP, local store, SQLite log) at
``--concurrency`` in flight, for three race configurations, each on a fresh ImageGen:

1. **no hedging**: ``race.mode = "sequential"`` (the backup only starts if the primary fails; it never does);
2. **fixed delay**: ``race.mode = "hedged"``, ``race.hedgeDelay = --fixed-ms``, ``race.adaptiveHedge = false``;
3. **adaptive**: ``race.mode = "hedged"``, ``race.adaptiveHedge = true``, ``race.hedgeQuantile = --quantile``
   (default: the config's default, 0.9; a quantile below what the budget affords is raised to it, see
   ``imagegen_core.hedging.effective_quantile``) and ``race.hedgeDelay = --fixed-ms`` until
   ``race.hedgeMinSamples`` successes are known.

The hedge budget stays at its defaults (``race.hedgeBudgetShare`` 0.1, ``race.hedgeBudgetBurst`` 5);
``costPerImage`` is 0, so ``race.maxExtraCostPerRequest`` never limits. Every configuration first runs
``--warmup`` untimed requests (the adaptive delay needs them; the others get them too, so all start
alike).

Printed (Markdown, stdout): p50, p99 and p99.9 of the answer time (nearest rank), extra provider calls
(% of requests that started a second provider, and all calls over requests as the server counted them),
answers slower than half a straggler that started no second provider, the hedge delay in force at the
end, and the p99 ratio vs no hedging, with the issue's goal (p99 at least 5x lower with at most 10 %
extra calls).

Run from the project root: ``.venv/bin/python bench/hedging.py`` (``--quick`` for a smoke run). Exits
non-zero if any request fails, if the server counts more calls than imagegen reports, or if the server
does not shut down cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from _fakeserver import Behaviour, FakeImageServer, ServerError
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
    behaviour: Behaviour


@dataclass(frozen=True)
class Variant:
    label: str
    race: dict[str, Any]


def variants(plan: Plan) -> list[Variant]:
    """The three race configurations, as ``race`` sections of the config document."""
    from imagegen_core.config import RaceConfig
    from imagegen_core.hedging import effective_quantile

    effective = effective_quantile(plan.quantile, RaceConfig().hedge_budget_share)
    adaptive = f"adaptive p{plan.quantile * 100:g}"
    if effective != plan.quantile:
        adaptive += f" (p{effective * 100:g} under the default budget)"
    return [
        Variant("no hedging (sequential)", {"mode": "sequential"}),
        Variant(
            f"fixed delay {plan.fixed_ms} ms",
            {"mode": "hedged", "hedgeDelay": plan.fixed_ms, "adaptiveHedge": False},
        ),
        Variant(
            adaptive,
            {"mode": "hedged", "hedgeDelay": plan.fixed_ms, "adaptiveHedge": True, "hedgeQuantile": plan.quantile},
        ),
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


async def run_all(plan: Plan, server: FakeImageServer, home: Path) -> list[tuple[Variant, Outcome]]:
    results = []
    for index, variant in enumerate(variants(plan)):
        print(f"{variant.label}: {plan.warmup} warm-up + {plan.requests} requests", file=sys.stderr, flush=True)
        outcome = await run_variant(plan, variant, server, home / f"v{index}")
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
        results.append((variant, outcome))
    return results


def report(plan: Plan, results: list[tuple[Variant, Outcome]]) -> None:
    b = plan.behaviour
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"\nimagegen hedging: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, "
        f"{platform.machine()} with {cores} cores, {platform.system()} {platform.release()}"
    )
    print(
        f"\n### Answer time, {plan.requests} requests at {plan.concurrency} in flight "
        f"(after {plan.warmup} warm-up), lognormal median {b.median_ms:g} ms sigma {b.sigma:g}, "
        f"{b.straggler_p * 100:g} % stragglers at {b.straggler_ms:g} ms\n"
    )
    print(
        "| configuration | p50 ms | p99 ms | p99.9 ms | second provider started | calls / request "
        f"| ≥ {b.straggler_ms / 2:g} ms, not hedged | hedge delay at end | p99 vs no hedging |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = results[0][1]
    for index, (variant, o) in enumerate(results):
        delay = f"{o.hedge_delay_ms:.0f} ms" if index else "—"
        reduction = f"{base.pct(99) / o.pct(99):.2f}x lower" if index else "—"
        print(
            f"| {variant.label} | {o.pct(50):.0f} | {o.pct(99):.0f} | {o.pct(99.9):.0f} | {o.extra_pct:.1f} % "
            f"| {o.server_calls / len(o.latencies_ms):.3f} | {o.slow_single} | {delay} | {reduction} |"
        )
    print(
        "\n(calls / request: generation requests the fake server received during the timed run, over requests; "
        "not hedged: answers slower than half a straggler that started no second provider; "
        "hedge delay: the primary's, as `Hedger.delay_s` gives it after the run)"
    )
    print("\nGoal (issue 7): p99 at least 5x lower than no hedging, with at most 10 % extra calls.\n")
    for variant, o in results[1:]:
        ratio = base.pct(99) / o.pct(99)
        met = ratio >= 5 and o.extra_pct <= 10
        print(
            f"- {variant.label}: p99 {ratio:.2f}x lower with {o.extra_pct:.1f} % extra calls: "
            f"**{'met' if met else 'missed'}**"
        )


def parse_args(argv: list[str] | None = None) -> Plan:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--requests", type=int, help="timed requests per configuration (default 2000; quick 300)")
    parser.add_argument("--warmup", type=int, help="untimed requests per configuration first (default 100; quick 60)")
    parser.add_argument("--concurrency", type=int, default=20, help="requests in flight (default 20)")
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
        behaviour=Behaviour(
            median_ms=args.median_ms, sigma=args.sigma, straggler_p=args.straggler_p, straggler_ms=args.straggler_ms
        ),
    )
    if min(plan.requests, plan.concurrency) < 1 or plan.warmup < 0 or not 0.5 <= plan.quantile <= 0.999:
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
        with tempfile.TemporaryDirectory(prefix="imagegen-hedging-") as tmp, FakeImageServer(behaviours) as server:
            results = asyncio.run(run_all(plan, server, Path(tmp)))
    except (BenchError, ServerError, httpx.HTTPError, OSError) as exc:
        print(f"\nbenchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    report(plan, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
