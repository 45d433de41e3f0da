"""Adaptive hedge delays, the hedge budget and cheap failover, on the virtual clock (looptime)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from imagegen_core.breaker import CircuitBreakers, InMemoryBreakerStore
from imagegen_core.config import BreakerConfig, RaceConfig
from imagegen_core.gates import DirectBreakerGate
from imagegen_core.hedging import OVERDUE_FACTOR, HedgeBudget, Hedger, HedgeSettings, LatencyWindow
from imagegen_core.models import AttemptOutcome
from imagegen_core.providers.base import ProviderJob, ProviderOutput
from imagegen_core.providers.fake import FakeProvider
from imagegen_core.race import Entrant, Race, RacePlan

JOB = ProviderJob(request_id="r", prompt="p", width=64, height=64, timeout_s=30)


def entrant(name: str, *, cost: float = 0.0, retries: int = 0, hedge_delay_s: float = 0.5, **options: Any) -> Entrant:
    return Entrant(
        name=name,
        provider=FakeProvider(name=name),
        timeout_s=10,
        retries=retries,
        hedge_delay_s=hedge_delay_s,
        cost_per_image=cost,
        options=options,
    )


def race(hedger: Hedger | None) -> Race[ProviderOutput]:
    async def finish(_e: Entrant, output: ProviderOutput, _data: bytes | None) -> ProviderOutput:
        return output

    breakers = CircuitBreakers(InMemoryBreakerStore(), BreakerConfig(min_calls=1000, window_size=1000))
    return Race(client=None, breakers=DirectBreakerGate(breakers), finish=finish, hedger=hedger)


def test_latency_window_gives_nearest_rank_quantiles_and_forgets_the_oldest() -> None:
    window = LatencyWindow(size=10)
    for value in range(1, 11):
        window.add(float(value))
    assert window.quantile(0.9) == 9.0 and window.quantile(0.5) == 5.0 and window.quantile(1.0) == 10.0
    for value in (100.0, 100.0):
        window.add(value)  # evicts 1 and 2
    assert len(window) == 10 and window.quantile(0.0) == 3.0 and window.quantile(1.0) == 100.0


def test_adaptive_delay_uses_the_fixed_delay_until_enough_samples_then_tracks_a_changing_distribution() -> None:
    hedger = Hedger(HedgeSettings(quantile=0.9, min_samples=20, window=200, budget_share=1.0))
    rng = random.Random(1)
    for _ in range(19):
        hedger.observe("replicate", rng.lognormvariate(0, 0.3))
    assert hedger.delay_s("replicate", 10.0) == 10.0  # not enough samples yet
    for _ in range(400):  # median 1 s
        hedger.observe("replicate", rng.lognormvariate(0, 0.3))
    assert hedger.delay_s("replicate", 10.0) == pytest.approx(1.47, rel=0.12)  # p90 of lognormal(0, 0.3)
    for _ in range(200):  # the provider slows down: median 3 s; the window turns over completely
        hedger.observe("replicate", 3 * rng.lognormvariate(0, 0.3))
    assert hedger.delay_s("replicate", 10.0) == pytest.approx(3 * 1.47, rel=0.12)
    assert hedger.delay_s("replicate", 2.0) == 2.0  # the configured delay caps the adaptive one


@pytest.mark.parametrize(
    ("quantile", "share", "expected_s"),
    [
        (0.9, 0.1, 90.0),  # the defaults: +10 % calls affords hedging at p90, as configured
        (0.5, 0.1, 90.0),  # hedging half the requests would drain a +10 % budget at once: raised to p90
        (0.5, 0.25, 75.0),
        (0.95, 0.1, 95.0),  # a quantile above what the budget needs stays
        (0.9, 0.0, 100.0),  # no budget: the highest quantile there is (0.999), and no hedge will be allowed
    ],
)
def test_the_hedge_quantile_is_raised_to_what_the_budget_affords(
    quantile: float, share: float, expected_s: float
) -> None:
    hedger = Hedger(HedgeSettings(quantile=quantile, min_samples=1, window=100, budget_share=share, min_delay_s=0))
    for value in range(1, 101):
        hedger.observe("p", float(value))
    assert hedger.delay_s("p", 1000.0) == expected_s


@pytest.mark.looptime
async def test_in_a_race_the_hedge_starts_at_the_providers_observed_p90() -> None:
    hedger = Hedger(HedgeSettings(quantile=0.9, min_samples=20, window=100, budget_share=1.0, budget_burst=1000))
    latencies = [0.1 * k for k in range(1, 11)]  # p90 of this cycle is 0.9 s
    r = race(hedger)
    primary = entrant("primary", latencyMs=[x * 1000 for x in latencies], hedge_delay_s=3)
    for _ in range(30):
        await r.run(RacePlan(entrants=[primary], mode="hedged"), JOB)
    slow, backup = entrant("primary", latencyMs=5000, hedge_delay_s=3), entrant("backup", latencyMs=10)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    result = await r.run(RacePlan(entrants=[slow, backup], mode="hedged"), JOB)
    assert result.winner.entrant.name == "backup"
    assert loop.time() - t0 == pytest.approx(0.9 + 0.01, abs=1e-6)


@pytest.mark.looptime
async def test_the_budget_caps_extra_calls_within_one_percent_of_the_share_over_1000_requests() -> None:
    hedger = Hedger(HedgeSettings(adaptive=False, budget_share=0.1, budget_burst=5))
    r = race(hedger)
    primary = entrant("primary", latencyMs=1000, hedge_delay_s=0.1)  # always slower than its hedge delay
    backup = entrant("backup", latencyMs=10)
    hedges = 0
    for _ in range(1000):
        result = await r.run(RacePlan(entrants=[primary, backup], mode="hedged"), JOB)
        hedges += sum(1 for a in result.attempts if a.hedged)
    assert 0.09 <= hedges / 1000 <= 0.11, hedges


@pytest.mark.looptime
async def test_no_hedging_when_the_budget_is_empty() -> None:
    hedger = Hedger(HedgeSettings(adaptive=False, budget_share=0.0, budget_burst=0.0))
    primary, backup = entrant("primary", latencyMs=1000, hedge_delay_s=0.1), entrant("backup", latencyMs=10)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    result = await race(hedger).run(RacePlan(entrants=[primary, backup], mode="hedged"), JOB)
    assert result.winner.entrant.name == "primary" and loop.time() - t0 == pytest.approx(1.0)
    assert isinstance(backup.provider, FakeProvider) and backup.provider.calls == []


@pytest.mark.looptime
async def test_a_hedge_is_refused_when_it_would_exceed_the_extra_cost_cap() -> None:
    hedger = Hedger(HedgeSettings(adaptive=False, budget_share=1.0, budget_burst=10, max_extra_cost=0.002))
    primary = entrant("primary", latencyMs=1000, hedge_delay_s=0.1, cost=0.003)
    pricey = entrant("pricey", latencyMs=10, cost=0.003)
    result = await race(hedger).run(RacePlan(entrants=[primary, pricey], mode="hedged"), JOB)
    assert [a.provider for a in result.attempts] == ["primary"]
    assert hedger.budget.tokens == 10  # the refused hedge spent nothing


@pytest.mark.looptime
async def test_a_failing_provider_hands_over_at_once_instead_of_sleeping_through_its_backoff() -> None:
    failing = entrant("failing", latencyMs=1, retries=3, failureRate=1.0, hedge_delay_s=5)
    backup = entrant("backup", latencyMs=20)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    result = await race(None).run(RacePlan(entrants=[failing, backup], mode="hedged", backoff_initial_s=1.0), JOB)
    assert result.winner.entrant.name == "backup"
    assert loop.time() - t0 == pytest.approx(0.001 + 0.020)
    assert [(a.provider, a.outcome) for a in result.attempts] == [
        ("failing", AttemptOutcome.FAILED),
        ("backup", AttemptOutcome.SUCCESS),
    ]


@pytest.mark.looptime
async def test_remaining_retries_run_after_the_other_providers_have_failed() -> None:
    flaky = entrant("flaky", latencyMs=1, retries=1, failFirst=1)
    broken = entrant("broken", latencyMs=1, failureRate=1.0)
    result = await race(None).run(RacePlan(entrants=[flaky, broken], mode="sequential", backoff_initial_s=0.1), JOB)
    assert [(a.provider, a.attempt, a.outcome) for a in result.attempts] == [
        ("flaky", 1, AttemptOutcome.FAILED),
        ("broken", 1, AttemptOutcome.FAILED),
        ("flaky", 2, AttemptOutcome.SUCCESS),
    ]


def test_budget_refills_per_request_up_to_its_burst() -> None:
    budget = HedgeBudget(share=0.5, burst=2, reserve=0)
    assert budget.try_spend(overdue=True) and budget.try_spend(overdue=True) and not budget.try_spend(overdue=True)
    budget.deposit()
    assert not budget.try_spend(overdue=True)
    budget.deposit()
    assert budget.try_spend(overdue=True)
    for _ in range(10):
        budget.deposit()
    assert budget.tokens == 2


@pytest.mark.looptime
async def test_a_cancelled_straggler_is_remembered_as_at_least_its_elapsed_time() -> None:
    hedger = Hedger(HedgeSettings(adaptive=False, budget_share=1.0, budget_burst=10))
    primary, backup = entrant("primary", latencyMs=2000, hedge_delay_s=0.2), entrant("backup", latencyMs=100)
    await race(hedger).run(RacePlan(entrants=[primary, backup], mode="hedged"), JOB)
    assert hedger.samples("primary") == 1 and hedger.samples("backup") == 1
    assert hedger._windows["primary"].quantile(1.0) == pytest.approx(0.3)  # lost after 0.2 + 0.1 s


@pytest.mark.looptime
async def test_a_hedge_refused_for_lack_of_budget_is_asked_again_once_other_requests_refill_it() -> None:
    hedger = Hedger(HedgeSettings(adaptive=False, budget_share=0.5, budget_burst=1, min_delay_s=0.05))
    hedger.budget.tokens = 0.0
    slow = entrant("slow", latencyMs=3000, hedge_delay_s=0.1)
    backup = entrant("backup", latencyMs=10)
    r = race(hedger)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    first = asyncio.create_task(r.run(RacePlan(entrants=[slow, backup], mode="hedged"), JOB))
    await asyncio.sleep(0.5)  # the first request's hedge was refused at 0.1 s
    await r.run(RacePlan(entrants=[fake_free()], mode="hedged"), JOB)  # another request deposits 0.5
    result = await first
    assert result.winner.entrant.name == "backup"
    assert loop.time() - t0 < 1.0  # hedged once the bucket held a token, not after the 3 s straggler


def fake_free() -> Entrant:
    return entrant("quick", latencyMs=1)


def test_the_reserve_for_overdue_requests_is_what_the_bucket_can_spare() -> None:
    assert Hedger().budget.reserve == RaceConfig().hedge_budget_reserve == 2.0
    assert HedgeBudget(share=0.1, burst=2, reserve=2).reserve == 1.0
    assert HedgeBudget(share=0.1, burst=1, reserve=2).reserve == 0.0  # a one-token bucket keeps nothing back
    budget = HedgeBudget(share=0.1, burst=5, reserve=2)
    budget.tokens = 2.5
    assert not budget.try_spend(overdue=False)  # would leave 1.5, less than the reserve
    assert budget.try_spend(overdue=True) and budget.tokens == 1.5


@pytest.mark.looptime
@pytest.mark.parametrize(("tokens_before", "hedge_at_s"), [(2.9, 0.2), (2.4, 0.2 * OVERDUE_FACTOR)])
async def test_a_hedge_that_would_dip_into_the_reserve_waits_until_the_request_is_overdue(
    tokens_before: float, hedge_at_s: float
) -> None:
    hedger = Hedger(HedgeSettings(adaptive=False, budget_share=0.1, budget_burst=5, budget_reserve=2))
    hedger.budget.tokens = tokens_before  # the request deposits 0.1: 3.0 covers a hedge and the reserve, 2.5 not
    primary, backup = entrant("primary", latencyMs=1000, hedge_delay_s=0.2), entrant("backup", latencyMs=10)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    result = await race(hedger).run(RacePlan(entrants=[primary, backup], mode="hedged"), JOB)
    assert result.winner.entrant.name == "backup"
    assert loop.time() - t0 == pytest.approx(hedge_at_s + 0.01, abs=1e-6)
    assert hedger.budget.tokens == pytest.approx(tokens_before + 0.1 - 1)


@pytest.mark.looptime
@pytest.mark.parametrize(
    ("reserve", "ordinary_calls", "straggler_calls", "straggler_answer_s"),
    [
        (2, ["ordinary"], ["straggler", "backup"], 0.2 * OVERDUE_FACTOR + 0.01),
        (0, ["ordinary", "backup"], ["straggler"], 2.0),
    ],
)
async def test_when_tokens_are_scarce_the_request_that_waited_longest_gets_the_hedge(
    reserve: float, ordinary_calls: list[str], straggler_calls: list[str], straggler_answer_s: float
) -> None:
    """Two requests pass their hedge delay with one token and a half between them. With the reserve, the
    ordinary one (an answer at 220 ms) is not hedged and the straggler (2 s), which started 10 ms later,
    is, once overdue. Without it (``race.hedgeBudgetReserve = 0``) the token goes to the ordinary request
    at 200 ms, a hedge it did not need, and the straggler waits its full 2 s."""
    settings = HedgeSettings(adaptive=False, budget_share=0.1, budget_burst=5, budget_reserve=reserve)
    hedger = Hedger(settings)
    hedger.budget.tokens = 1.3  # + two deposits
    ordinary = entrant("ordinary", latencyMs=220, hedge_delay_s=0.2)
    straggler = entrant("straggler", latencyMs=2000, hedge_delay_s=0.2)
    backup = entrant("backup", latencyMs=10)
    r = race(hedger)
    loop = asyncio.get_running_loop()
    first = asyncio.create_task(r.run(RacePlan(entrants=[ordinary, backup], mode="hedged"), JOB))
    await asyncio.sleep(0.01)
    t0 = loop.time()
    second = await r.run(RacePlan(entrants=[straggler, backup], mode="hedged"), JOB)
    assert loop.time() - t0 == pytest.approx(straggler_answer_s, abs=1e-6)
    assert [a.provider for a in (await first).attempts] == ordinary_calls
    assert [a.provider for a in second.attempts] == straggler_calls
    assert hedger.budget.tokens == pytest.approx(0.5)
