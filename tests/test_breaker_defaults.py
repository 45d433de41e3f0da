"""The default breaker thresholds, judged on simulated providers: they must keep a mostly healthy provider
and drop a failing one quickly. A seeded random sequence of outcomes, one call after another, on a fake clock."""

from __future__ import annotations

import random

from imagegen_core.breaker import BreakerState, CircuitBreakers, InMemoryBreakerStore, Permit
from imagegen_core.config import BreakerConfig
from imagegen_core.errors import FailureClass

T0 = 1_700_000_000.0


def calls_until_open(failure_share: float, calls: int, rng: random.Random) -> int | None:
    """Calls made one after another (a second apart) to a provider failing ``failure_share`` of them, under
    the default thresholds: how many before its breaker opened, or None if it stayed closed."""
    now = [T0]
    breakers = CircuitBreakers(InMemoryBreakerStore(announce=False), BreakerConfig(), clock=lambda: now[0])
    for number in range(1, calls + 1):
        permit = breakers.acquire("fal")
        assert isinstance(permit, Permit)
        failed = rng.random() < failure_share
        breakers.record(permit, outcome="failure" if failed else "success", failure_class=FailureClass.TRANSIENT)
        if breakers.state("fal").state is BreakerState.OPEN:
            return number
        now[0] += 1.0
    return None


def test_a_provider_failing_30_percent_of_calls_mostly_keeps_its_breaker_closed() -> None:
    rng = random.Random(20261130)
    opened = sum(calls_until_open(0.3, 200, rng) is not None for _ in range(150))
    assert opened / 150 < 0.30  # 20 calls and minCalls 5: 82 % of runs opened it within 200 calls


def test_a_provider_failing_every_call_opens_its_breaker_after_min_calls() -> None:
    rng = random.Random(1)
    assert calls_until_open(1.0, 200, rng) == BreakerConfig().min_calls == 10


def test_a_provider_failing_most_calls_opens_its_breaker_within_a_few_dozen() -> None:
    rng = random.Random(2)
    runs = [calls_until_open(0.7, 200, rng) for _ in range(200)]
    assert all(n is not None and n <= 40 for n in runs)
