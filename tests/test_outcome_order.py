"""Outcomes reach a circuit breaker in the order their calls started (imagegen_core.outcome_order).

The operator QA's finding: a burst of 200 requests, 40 at once, to a provider that fails 30 % of calls at once
and answers the rest in 300 ms. The first five calls to end were failures, so the breaker (minCalls 5, ratio
0.5) opened on a 70 %-healthy provider and 190 requests got the default image.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from imagegen_core.breaker import BreakerState, CircuitBreakers, InMemoryBreakerStore, Permit
from imagegen_core.config import BreakerConfig
from imagegen_core.errors import FailureClass, ProviderError
from imagegen_core.gates import BreakerGate, DirectBreakerGate, ThreadedBreakerGate
from imagegen_core.log.db import LogDB
from imagegen_core.log.writer import LogWriter
from imagegen_core.models import AttemptOutcome
from imagegen_core.outcome_order import OutcomeOrder
from imagegen_core.providers.base import ProviderContext, ProviderJob, ProviderOutput
from imagegen_core.providers.fake import FakeProvider
from imagegen_core.race import Entrant, Race, RacePlan

T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def permit(provider: str = "fal", *, probe: bool = False, token: float = T0) -> Permit:
    return Permit(provider, probe=probe, token=token)


def test_an_outcome_waits_for_the_calls_that_started_before_it() -> None:
    order, delivered = OutcomeOrder(Clock(), lease_s=120), []
    first, second, third = permit(), permit(), permit()
    for p in (first, second, third):
        order.started(p)
    order.ended(third, lambda: delivered.append("third"))
    order.ended(second, lambda: delivered.append("second"))
    assert delivered == [] and order.waiting("fal") == 2
    order.ended(first, lambda: delivered.append("first"))
    assert delivered == ["first", "second", "third"] and order.waiting("fal") == 0


def test_providers_are_ordered_apart_and_alone_judged_outcomes_do_not_wait() -> None:
    order, delivered = OutcomeOrder(Clock(), lease_s=120), []
    slow_fal, fal_billing, replicate = permit("fal"), permit("fal"), permit("replicate")
    for p in (slow_fal, fal_billing, replicate):
        order.started(p)
    order.ended(replicate, lambda: delivered.append("replicate"))  # another provider: nothing before it
    order.ended(fal_billing, lambda: delivered.append("billing"), at_once=True)
    assert delivered == ["replicate", "billing"]
    order.ended(slow_fal, lambda: delivered.append("slow"))
    assert delivered == ["replicate", "billing", "slow"]


def test_probes_and_calls_not_seen_to_start_are_handed_on_at_once() -> None:
    order, delivered = OutcomeOrder(Clock(), lease_s=120), []
    under_way, probe = permit(), permit(probe=True)
    order.started(under_way)
    order.started(probe)
    order.ended(probe, lambda: delivered.append("probe"))
    order.ended(permit(token=T0 + 1), lambda: delivered.append("stranger"))  # equal to none started here
    assert delivered == ["probe", "stranger"]


def test_a_call_that_never_reports_holds_the_others_back_only_for_its_lease() -> None:
    clock = Clock()
    order, delivered = OutcomeOrder(clock, lease_s=120), []
    lost, later = permit(), permit()
    order.started(lost)
    order.started(later)
    order.ended(later, lambda: delivered.append("later"))
    assert delivered == []
    clock.now += 121
    after = permit(token=clock.now)
    order.started(after)
    order.ended(after, lambda: delivered.append("after"))
    assert delivered == ["later", "after"] and order.waiting("fal") == 0


class FailsFastOrAnswersSlowly(FakeProvider):
    """Calls 0, 3 and 6 of every ten fail at once (the provider's fault: a 500); the others answer after
    ``answer_s``: a 70 %-healthy provider whose failures are quicker than its images."""

    def __init__(self, answer_s: float, fail_all: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.answer_s = answer_s
        self.fail_all = fail_all

    async def generate(self, job: ProviderJob, ctx: ProviderContext) -> ProviderOutput:
        number = len(self.calls)
        self.calls.append(job)
        if self.fail_all or number % 10 in (0, 3, 6):
            raise ProviderError("fal: HTTP 500", failure_class=FailureClass.SERVER, http_status=500)
        await asyncio.sleep(self.answer_s)
        return ProviderOutput(data=b"image", content_type="image/png", model="fake")


async def burst(gate: BreakerGate, provider: FakeProvider, requests: int) -> list[Any]:
    """``requests`` races at once against ``provider`` alone, as the QA's burst."""

    async def finish(_entrant: Entrant, output: ProviderOutput, _data: bytes | None) -> ProviderOutput:
        return output

    race: Race[ProviderOutput] = Race(client=None, breakers=gate, finish=finish)
    plan = RacePlan(
        entrants=(Entrant(name="fal", provider=provider, timeout_s=5, retries=0, hedge_delay_s=5, cost_per_image=0),),
        mode="hedged",
        deadline_s=5,
        backoff_initial_s=0.2,
        backoff_max_s=1,
    )
    job = ProviderJob(request_id="r", prompt="a lighthouse", width=64, height=64, timeout_s=5)
    return await asyncio.gather(*(race.run(plan, job) for _ in range(requests)))


@pytest.fixture(params=["direct", "threaded-sqlite"])
def gate_and_breakers(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """The race's gate over breakers with the default thresholds (minCalls 5, failure ratio 0.5): in memory,
    and as ImageGen runs them, on the SQLite log through the log writer."""
    config = BreakerConfig()
    if request.param == "direct":
        breakers = CircuitBreakers(InMemoryBreakerStore(), config)
        yield DirectBreakerGate(breakers), breakers, None
        return
    db = LogDB(f"sqlite:///{tmp_path / 'log.db'}")
    writer = LogWriter()
    breakers = CircuitBreakers(db.breaker_store(), config)
    gate = ThreadedBreakerGate(breakers, writer, redact=str, read_in_place=True, change_token=db.change_token)
    yield gate, breakers, writer
    gate.close()
    writer.close()
    db.close()


async def test_a_burst_to_a_provider_failing_30_percent_fast_does_not_open_its_breaker(
    gate_and_breakers: Any,
) -> None:
    gate, breakers, writer = gate_and_breakers
    provider = FailsFastOrAnswersSlowly(0.3, name="fal")
    results = await burst(gate, provider, 40)
    if writer is not None:
        await writer.flush()
    skipped = [a for r in results for a in r.attempts if a.outcome is AttemptOutcome.SKIPPED]
    assert skipped == []
    assert sum(r.winner is not None for r in results) == 28  # every call that could answer did
    assert breakers.state("fal").state == BreakerState.CLOSED
    # and the next burst, with the window full of this one, still goes through
    results = await burst(gate, provider, 20)
    assert sum(r.winner is not None for r in results) == 14


async def test_a_burst_to_a_provider_failing_every_call_still_opens_its_breaker_after_min_calls(
    gate_and_breakers: Any,
) -> None:
    gate, breakers, writer = gate_and_breakers
    provider = FailsFastOrAnswersSlowly(0.3, fail_all=True, name="fal")
    await burst(gate, provider, 40)  # all at once: every call started before the first failure was counted
    if writer is not None:
        await writer.flush()
    assert breakers.state("fal").state == BreakerState.OPEN
    calls = len(provider.calls)
    results = await burst(gate, provider, 10)
    assert len(provider.calls) == calls  # open: not called again
    assert all(a.outcome is AttemptOutcome.SKIPPED for r in results for a in r.attempts)
