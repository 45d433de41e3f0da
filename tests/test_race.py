"""The race engine on a virtual clock (looptime): modes, hedging, retries, breakers, the hard deadline.

Fake providers sleep on the event loop's clock, so "1000 ms" takes no real time and every assertion
about when something happened is exact.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from imagegen_core.breaker import BreakerState, CircuitBreakers, InMemoryBreakerStore, Permit
from imagegen_core.config import BreakerConfig
from imagegen_core.errors import FailureClass, ImageError, ImageGenError, ProviderError
from imagegen_core.gates import DirectBreakerGate
from imagegen_core.models import AttemptOutcome
from imagegen_core.providers.base import ProviderJob, ProviderOutput, image_too_large
from imagegen_core.providers.fake import FakeProvider
from imagegen_core.race import AttemptEvent, Entrant, Race, RacePlan

pytestmark = pytest.mark.looptime

JOB = ProviderJob(request_id="r1", prompt="a lighthouse", width=64, height=64, timeout_s=30)


def entrant(
    name: str, *, timeout_s: float = 10, retries: int = 0, hedge_delay_s: float = 0.5, **options: Any
) -> Entrant:
    return Entrant(
        name=name,
        provider=FakeProvider(name=name),
        timeout_s=timeout_s,
        retries=retries,
        hedge_delay_s=hedge_delay_s,
        cost_per_image=0.003,
        options=options,
    )


class Harness:
    """A race with an in-memory breaker board and a listener that notes loop times of events."""

    def __init__(
        self,
        breaker_config: BreakerConfig | None = None,
        *,
        fetch: Callable[[Entrant, ProviderOutput], Awaitable[bytes]] | None = None,
        refuse: ImageGenError | None = None,
    ) -> None:
        """``fetch``: the download step (none by default); ``refuse``: what our finishing step raises."""
        self.breakers = CircuitBreakers(InMemoryBreakerStore(), breaker_config or BreakerConfig())
        self.started_at: dict[str, list[float]] = {}
        self.events: list[AttemptEvent] = []

        async def finish(_entrant: Entrant, output: ProviderOutput, _data: bytes | None) -> ProviderOutput:
            if refuse is not None:
                raise refuse
            return output

        def listener(event: AttemptEvent) -> None:
            self.events.append(event)
            if event.outcome is AttemptOutcome.RUNNING:
                self.started_at.setdefault(event.provider, []).append(asyncio.get_running_loop().time())

        self.race: Race[ProviderOutput] = Race(
            client=None, breakers=DirectBreakerGate(self.breakers), finish=finish, fetch=fetch, listener=listener
        )

    async def run(
        self, *entrants: Entrant, mode: str = "hedged", deadline_s: float = 30.0, finish_extension_s: float = 0.0
    ) -> Any:
        plan = RacePlan(
            entrants=entrants,
            mode=mode,  # type: ignore[arg-type]
            deadline_s=deadline_s,
            backoff_initial_s=0.2,
            backoff_max_s=1.0,
            finish_extension_s=finish_extension_s,
        )
        return await self.race.run(plan, JOB)


def fake(e: Entrant) -> FakeProvider:
    assert isinstance(e.provider, FakeProvider)
    return e.provider


async def test_parallel_answers_at_the_backups_time_and_cancels_the_primary() -> None:
    h = Harness()
    primary, backup = entrant("primary", latencyMs=1000), entrant("backup", latencyMs=20)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    result = await h.run(primary, backup, mode="parallel")
    assert result.winner is not None and result.winner.entrant.name == "backup"
    assert loop.time() - t0 == pytest.approx(0.020, abs=1e-6)
    assert fake(primary).cancelled == 1
    outcomes = {a.provider: (a.outcome, a.failure_class) for a in result.attempts}
    assert outcomes == {"primary": (AttemptOutcome.CANCELLED, None), "backup": (AttemptOutcome.SUCCESS, None)}


async def test_hedged_starts_the_backup_only_after_the_hedge_delay() -> None:
    h = Harness()
    primary, backup = entrant("primary", latencyMs=1000, hedge_delay_s=0.3), entrant("backup", latencyMs=50)
    t0 = asyncio.get_running_loop().time()
    result = await h.run(primary, backup)
    assert h.started_at["primary"] == [pytest.approx(t0)]
    assert h.started_at["backup"] == [pytest.approx(t0 + 0.3)]
    assert result.winner.entrant.name == "backup"
    backup_attempt = next(a for a in result.attempts if a.provider == "backup")
    assert backup_attempt.hedged is True
    assert asyncio.get_running_loop().time() - t0 == pytest.approx(0.35)


async def test_hedged_never_calls_the_backup_when_the_primary_wins_within_its_delay() -> None:
    h = Harness()
    primary, backup = entrant("primary", latencyMs=200, hedge_delay_s=0.5), entrant("backup", latencyMs=1)
    result = await h.run(primary, backup)
    assert result.winner.entrant.name == "primary"
    assert fake(backup).calls == []


async def test_hedged_hands_over_at_once_when_the_primary_fails_before_its_delay() -> None:
    h = Harness()
    primary = entrant("primary", latencyMs=100, hedge_delay_s=5, failureRate=1.0, failureClass="content_rejected")
    backup = entrant("backup", latencyMs=10)
    t0 = asyncio.get_running_loop().time()
    result = await h.run(primary, backup)
    assert h.started_at["backup"] == [pytest.approx(t0 + 0.1)]
    assert result.winner.entrant.name == "backup"


async def test_sequential_starts_the_next_provider_only_after_a_failure() -> None:
    h = Harness()
    primary = entrant("primary", latencyMs=700, failureRate=1.0, failureClass="invalid_request")
    backup = entrant("backup", latencyMs=10)
    t0 = asyncio.get_running_loop().time()
    result = await h.run(primary, backup, mode="sequential")
    assert h.started_at["backup"] == [pytest.approx(t0 + 0.7)]
    assert result.winner.entrant.name == "backup"


async def test_all_failing_returns_no_winner_with_every_reason() -> None:
    h = Harness()
    a = entrant("a", latencyMs=10, failureRate=1.0, failureClass="auth")
    b = entrant("b", latencyMs=10, failureRate=1.0, failureClass="billing")
    result = await h.run(a, b, mode="parallel")
    assert result.winner is None
    assert "a: injected auth failure" in result.error and "b: injected billing failure" in result.error


async def test_the_deadline_is_hard_even_when_every_provider_hangs() -> None:
    h = Harness()
    t0 = asyncio.get_running_loop().time()
    result = await h.run(entrant("a", hang=True, timeout_s=60), entrant("b", hang=True, timeout_s=60), deadline_s=2.5)
    assert asyncio.get_running_loop().time() - t0 == pytest.approx(2.5, abs=0.03)
    assert result.winner is None and result.deadline_hit
    assert "deadline" in result.error
    # Cut by the deadline is a timeout too (a loser to a winner is not): the alerts count it as a failure.
    assert {(a.outcome, a.failure_class, a.error) for a in result.attempts} == {
        (AttemptOutcome.CANCELLED, FailureClass.TIMEOUT, "a: no image before the request's deadline"),
        (AttemptOutcome.CANCELLED, FailureClass.TIMEOUT, "b: no image before the request's deadline"),
    }


async def test_a_provider_with_an_open_breaker_receives_no_call() -> None:
    h = Harness()
    primary, backup = entrant("primary", latencyMs=5), entrant("backup", latencyMs=5)
    h.breakers.force_open("primary")
    t0 = asyncio.get_running_loop().time()
    result = await h.run(primary, backup)
    assert fake(primary).calls == []
    assert result.attempts[0].provider == "primary" and result.attempts[0].outcome is AttemptOutcome.SKIPPED
    assert h.started_at["backup"] == [pytest.approx(t0)]  # skipped without waiting for the hedge delay
    assert result.winner.entrant.name == "backup"


async def test_transient_failures_are_retried_with_backoff_within_the_retry_budget() -> None:
    h = Harness()
    flaky = entrant("flaky", latencyMs=10, retries=2, failFirst=2)
    result = await h.run(flaky)
    assert result.winner is not None
    assert [a.outcome for a in result.attempts] == [
        AttemptOutcome.FAILED,
        AttemptOutcome.FAILED,
        AttemptOutcome.SUCCESS,
    ]
    starts = h.started_at["flaky"]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(0.01 + 0.2 * 0.999 <= gap <= 0.01 + 1.0 + 0.2 + 1e-6 for gap in gaps), gaps  # backoff 0.2..1 s + jitter


async def test_retries_stop_at_the_configured_count() -> None:
    h = Harness()
    bad = entrant("bad", latencyMs=10, retries=1, failureRate=1.0)
    result = await h.run(bad)
    assert result.winner is None and len(fake(bad).calls) == 2


async def test_auth_failures_are_not_retried_and_open_the_breaker_at_once() -> None:
    h = Harness()
    bad = entrant("bad", latencyMs=10, retries=3, failureRate=1.0, failureClass="auth")
    await h.run(bad)
    assert len(fake(bad).calls) == 1
    assert h.breakers.state("bad").state == "open"


async def test_an_attempt_whose_own_timer_the_deadline_set_ends_as_cut_by_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The attempt's budget is the provider's timeout or what is left of the request's deadline, whichever is
    shorter. When the deadline set it, the attempt's own timer and the race's cut fire at the same instant, and
    on uvloop (timers up to ~1 ms early) the attempt's sometimes first: the attempt was then logged ``failed``,
    a failure its provider's breaker counted (3 runs in 20 of test_race_uvloop). Here the race's own cut is made
    to come 5 ms late, so the attempt's timer always fires first."""
    import imagegen_core.race as race_module

    late = race_module.asyncio.timeout_at

    def five_ms_late(when: float | None) -> Any:
        return late(None if when is None else when + 0.005)

    monkeypatch.setattr(race_module.asyncio, "timeout_at", five_ms_late)
    h = Harness()
    result = await h.run(entrant("a", hang=True, timeout_s=60), deadline_s=0.030)
    assert [(a.outcome, a.failure_class) for a in result.attempts] == [
        (AttemptOutcome.CANCELLED, FailureClass.TIMEOUT)
    ], result.attempts
    assert result.attempts[0].error == "a: no image before the request's deadline"
    record = h.breakers.store.get("a")
    assert record is None or record.window == [], "the deadline is not the provider's fault"


async def test_retry_after_is_honoured_when_it_fits_in_the_deadline() -> None:
    h = Harness()
    limited = entrant("limited", latencyMs=10, retries=1, failFirst=1, failureClass="rate_limited", retryAfterS=3)
    t0 = asyncio.get_running_loop().time()
    result = await h.run(limited, deadline_s=10)
    assert result.winner is not None
    assert h.started_at["limited"][1] - t0 == pytest.approx(0.01 + 3.0)


async def test_retry_after_beyond_the_deadline_gives_up_at_once() -> None:
    h = Harness()
    limited = entrant("limited", latencyMs=10, retries=1, failFirst=1, failureClass="rate_limited", retryAfterS=60)
    backup = entrant("backup", latencyMs=10)
    t0 = asyncio.get_running_loop().time()
    result = await h.run(limited, backup, deadline_s=10)
    assert len(fake(limited).calls) == 1
    assert h.started_at["backup"] == [pytest.approx(t0 + 0.01)]
    assert result.winner.entrant.name == "backup"


async def test_a_provider_whose_retry_after_passes_the_deadline_is_not_called_again_when_the_others_fail() -> None:
    """Out of time for its Retry-After, the rate-limited provider must not be resumed at once after the
    backup fails (it was, with its retries left: four calls in 92 ms)."""
    h = Harness()
    limited = entrant("limited", latencyMs=10, retries=3, failureRate=1.0, failureClass="rate_limited", retryAfterS=30)
    backup = entrant("backup", latencyMs=10, failureRate=1.0)
    result = await h.run(limited, backup, deadline_s=5)
    assert result.winner is None
    assert (len(fake(limited).calls), len(fake(backup).calls)) == (1, 1)


async def test_a_provider_resumed_after_the_others_still_waits_out_its_retry_after() -> None:
    h = Harness()
    limited = entrant("limited", latencyMs=10, retries=1, failFirst=1, failureClass="rate_limited", retryAfterS=2)
    backup = entrant("backup", latencyMs=10, failureRate=1.0)
    t0 = asyncio.get_running_loop().time()
    result = await h.run(limited, backup, deadline_s=10)
    assert result.winner is not None and result.winner.entrant.name == "limited"
    assert h.started_at["backup"] == [pytest.approx(t0 + 0.01)]  # failover first, at once
    assert h.started_at["limited"] == [pytest.approx(t0), pytest.approx(t0 + 0.01 + 2.0)]  # then after its 2 s


async def test_a_failure_the_provider_bills_costs_its_price_in_the_log() -> None:
    """A Replicate prediction cancelled while it ran is charged: the failed attempt carries costPerImage
    (an ordinary failure costs nothing)."""

    class Billed(FakeProvider):
        async def generate(self, job: Any, ctx: Any) -> Any:
            raise ProviderError(f"{self.name}: prediction canceled", failure_class=FailureClass.TRANSIENT, billed=True)

    h = Harness()
    charged = dataclasses.replace(entrant("charged"), provider=Billed(name="charged"))
    free = entrant("free", latencyMs=1, failureRate=1.0)
    await h.run(charged, free, mode="sequential")
    costs = {e.provider: e.cost_usd for e in h.events if e.outcome is AttemptOutcome.FAILED}
    assert costs == {"charged": 0.003, "free": 0.0}


async def _expired(entrant: Entrant, output: ProviderOutput) -> bytes:
    raise ProviderError(f"{entrant.name}: HTTP 404 fetching the output", failure_class=FailureClass.TRANSIENT)


async def _too_large(entrant: Entrant, output: ProviderOutput) -> bytes:
    raise image_too_large(entrant.name, 1000)


@pytest.mark.parametrize(
    ("fetch", "refuse"),
    [(_expired, None), (_too_large, None), (None, ImageError("not an image: image file is truncated"))],
    ids=["expired URL", "over maxDownloadBytes", "broken image"],
)
async def test_an_image_the_provider_made_costs_its_price_when_we_refuse_it(
    fetch: Callable[[Entrant, ProviderOutput], Awaitable[bytes]] | None, refuse: ImageGenError | None
) -> None:
    """Regression (SRE): an image the provider made and delivered, then refused on our side (its download
    failing, our size limit, a broken image), was logged at cost 0 though the provider billed it."""
    h = Harness(fetch=fetch, refuse=refuse)
    result = await h.run(entrant("made", latencyMs=1))
    assert result.winner is None
    assert [(a.outcome, a.cost_usd) for a in result.attempts] == [(AttemptOutcome.FAILED, 0.003)]


async def test_a_provider_answering_something_else_than_a_provider_output_fails_in_words_and_the_next_answers() -> None:
    """QA: a plugin returning a dict failed with "AttributeError: 'dict' object has no attribute 'billed'"."""

    class Sloppy(FakeProvider):
        async def generate(self, job: Any, ctx: Any) -> Any:
            return {"data": b"..."}

    h = Harness()
    result = await h.run(
        dataclasses.replace(entrant("sloppy"), provider=Sloppy(name="sloppy")), entrant("backup", latencyMs=1)
    )
    assert result.winner is not None and result.winner.entrant.name == "backup"
    (failed,) = [a for a in result.attempts if a.provider == "sloppy"]
    assert (failed.outcome, failed.failure_class) == (AttemptOutcome.FAILED, FailureClass.TRANSIENT)
    assert (
        failed.error == "sloppy: its generate() returned dict, not a ProviderOutput (a defect of the provider's code)"
    )


@pytest.mark.looptime(False)  # a loop held up in true time
async def test_an_image_verified_in_the_turn_the_deadline_fell_in_wins_and_is_not_lost() -> None:
    """QA (drill, 200 requests at once on 2 cores): the loop, held up past the deadline, ran a lane's last step
    and the deadline's timer in one turn; the attempt was logged ``success`` and its image, billed, was neither
    answered nor stored. It is the race's winner now (delivering it past the deadline keeps it in the spool)."""
    h = Harness()

    async def finish_while_the_loop_stalls(_entrant: Entrant, output: ProviderOutput, _data: bytes | None) -> Any:
        await asyncio.sleep(0.05)
        time.sleep(0.15)  # the loop is held up (CPU, the GIL) across the 0.1 s deadline, then this lane ends
        return output

    h.race._finish = finish_while_the_loop_stalls  # type: ignore[assignment]
    result = await h.run(entrant("made", latencyMs=1), deadline_s=0.1)
    assert result.winner is not None and result.winner.entrant.name == "made"
    assert not result.deadline_hit
    assert [a.outcome for a in result.attempts] == [AttemptOutcome.SUCCESS]


async def test_an_output_the_provider_never_made_costs_nothing_when_refused() -> None:
    """A chaos drill's corrupt payload (``billed=False``) never reached the provider: refused, it is free."""

    class Unmade(FakeProvider):
        async def generate(self, job: Any, ctx: Any) -> Any:
            return ProviderOutput(data=b"corrupt", content_type="image/png", billed=False)

    h = Harness(refuse=ImageError("not an image"))
    result = await h.run(dataclasses.replace(entrant("drill"), provider=Unmade(name="drill")))
    assert [(a.outcome, a.cost_usd) for a in result.attempts] == [(AttemptOutcome.FAILED, 0.0)]


async def test_an_image_over_our_size_limit_is_not_retried_nor_counted_against_the_breaker() -> None:
    """Regression (SRE): ``limits.maxDownloadBytes`` refusals were ``transient``: retried (each retry paid for an
    image of the same size again) and counted by the breaker, which opened for a provider that works. The limit
    is ours: ``invalid_request``, one attempt, the breaker untouched."""
    h = Harness(BreakerConfig(min_calls=2, window_size=4), fetch=_too_large)
    for _ in range(4):
        result = await h.run(entrant("big", latencyMs=1, retries=2))
        [attempt] = result.attempts
        assert attempt.failure_class is FailureClass.INVALID_REQUEST and "limits.maxDownloadBytes" in attempt.error
    assert h.breakers.state("big").state == "closed"


async def test_content_rejections_do_not_count_against_the_breaker() -> None:
    h = Harness(BreakerConfig(min_calls=2, window_size=4))
    for _ in range(4):
        await h.run(entrant("picky", latencyMs=1, failureRate=1.0, failureClass="content_rejected"))
    assert h.breakers.state("picky").state == "closed"


async def test_per_attempt_timeout_is_a_timeout_failure_then_the_next_provider() -> None:
    h = Harness()
    slow, backup = entrant("slow", timeout_s=0.4, hang=True, hedge_delay_s=10), entrant("backup", latencyMs=5)
    t0 = asyncio.get_running_loop().time()
    result = await h.run(slow, backup)
    first = result.attempts[0]
    assert first.outcome is AttemptOutcome.FAILED and first.failure_class is FailureClass.TIMEOUT
    assert h.started_at["backup"] == [pytest.approx(t0 + 0.4)]


async def test_an_unverifiable_image_is_a_failed_attempt_and_the_next_one_wins() -> None:
    from imagegen_core.errors import ImageError

    async def strict_finish(_e: Entrant, output: ProviderOutput, _data: bytes | None) -> ProviderOutput:
        if output.data == b"this is not an image":
            raise ImageError("not an image")
        return output

    h = Harness()
    h.race._finish = strict_finish  # type: ignore[attr-defined]
    result = await h.run(entrant("corrupt", latencyMs=5, corrupt=True), entrant("good", latencyMs=50), mode="parallel")
    assert result.winner.entrant.name == "good"
    assert result.attempts[0].failure_class is FailureClass.TRANSIENT


class _UnboundedWaitProvider(FakeProvider):
    """Fails with a wait hint no ProviderError would accept (set past its cap, as a provider subclass could):
    converting it to milliseconds while the failure is settled raises OverflowError, a defect of imagegen's."""

    async def generate(self, job: ProviderJob, ctx: Any) -> ProviderOutput:
        error = ProviderError("primary: slow down", failure_class=FailureClass.RATE_LIMITED, http_status=429)
        error.retry_after_s = float("inf")
        raise error


async def test_a_defect_while_settling_an_attempt_ends_its_row_and_returns_its_breaker_permit() -> None:
    """QA (last gap of the infinite Retry-After defect): an exception of imagegen's own while an attempt was
    settled surfaced, but left the attempt ``running`` for ever (its log row too) and its half-open probe slot
    taken until the lease ran out. The defect still surfaces; the attempt now ends ``failed``, naming it, and
    the probe slot is free at once (the provider is not blamed: the breaker stays half-open)."""
    h = Harness(BreakerConfig(min_calls=1, window_size=1, break_duration=1000, half_open_probes=1))
    now = [1_000.0]
    h.breakers.clock = lambda: now[0]
    permit = h.breakers.acquire("primary")
    assert isinstance(permit, Permit)
    h.breakers.record(permit, outcome="failure", failure_class=FailureClass.TRANSIENT)
    now[0] += 2  # past the break: the next call is the half-open probe
    primary = dataclasses.replace(entrant("primary"), provider=_UnboundedWaitProvider(name="primary"))
    with pytest.raises(OverflowError):
        await h.run(primary)
    ends = [e for e in h.events if e.outcome is not AttemptOutcome.RUNNING]
    assert [(e.provider, e.outcome, e.failure_class, e.error) for e in ends] == [
        (
            "primary",
            AttemptOutcome.FAILED,
            None,
            "internal error (OverflowError: cannot convert float infinity to integer)",
        )
    ]
    record = h.breakers.store.get("primary")
    assert record is not None
    assert (record.state, record.probes_in_flight) == (BreakerState.HALF_OPEN, [])


async def test_our_processing_of_an_image_is_not_counted_against_its_provider_s_timeout() -> None:
    """QA: the image work (verify, normalise) ran inside the provider's timeout, so a queue for the image threads
    (40 requests of 4096x4096 at once) timed a healthy provider out and opened its breaker. Now the provider's
    timeout bounds its own part (the call, the download); the image work is bounded by the request's deadline."""
    h = Harness(BreakerConfig(min_calls=1, window_size=1))

    async def slow_processing(_entrant: Entrant, output: ProviderOutput, _data: bytes | None) -> ProviderOutput:
        await asyncio.sleep(3)  # the image threads busy with others' large images
        return output

    h.race._finish = slow_processing  # type: ignore[attr-defined]
    result = await h.run(entrant("fal", latencyMs=100, timeout_s=1), deadline_s=30)
    assert result.winner is not None and result.winner.entrant.name == "fal"
    (attempt,) = result.attempts
    assert (attempt.outcome, attempt.failure_class, attempt.duration_ms) == (AttemptOutcome.SUCCESS, None, 3100)
    assert h.breakers.state("fal").state is BreakerState.CLOSED

    # Processing that outlasts the request's deadline: cancelled, saying whose time it was, and not the
    # provider's timeout (no failure class; the breaker is not told of a failure).
    result = await h.run(entrant("fal", latencyMs=100, timeout_s=1), deadline_s=2)
    (attempt,) = result.attempts
    assert (attempt.outcome, attempt.failure_class, attempt.error) == (
        AttemptOutcome.CANCELLED,
        None,
        "fal: answered in 100 ms, but its image was still being processed at the request's deadline",
    )
    assert h.breakers.state("fal").state is BreakerState.CLOSED


async def test_a_race_with_no_time_left_calls_no_provider_and_blames_none() -> None:
    """QA: a request whose body took its whole deadline to arrive still started an attempt, cut at once: a
    timeout and a cost logged against a provider that never received a request."""
    h = Harness()
    primary = entrant("primary", latencyMs=1)
    result = await h.run(primary, deadline_s=0)
    assert (result.winner, result.attempts, result.deadline_hit) == (None, [], True)
    assert fake(primary).calls == [] and h.events == []
    assert result.error == "deadline reached before any provider produced an image"


async def test_a_local_provider_s_failures_never_open_its_breaker() -> None:
    """QA: four 4096x4096 offline drawings at once timed the offline provider out and opened its breaker, so a
    machine without keys answered every later request with the default image. A local drawing's failure is the
    machine's load, not a service's health: it is logged, never counted."""
    from imagegen_core.providers.offline import OfflineProvider

    class Busy(FakeProvider):
        local = True

    assert OfflineProvider.local and not FakeProvider.local
    h = Harness(BreakerConfig(min_calls=1, window_size=2))
    drawing = dataclasses.replace(entrant("offline", hang=True, timeout_s=0.5), provider=Busy(name="offline"))
    for _ in range(3):
        result = await h.run(drawing)
        assert [(a.outcome, a.failure_class) for a in result.attempts] == [
            (AttemptOutcome.FAILED, FailureClass.TIMEOUT)
        ]
    assert h.breakers.state("offline").state is BreakerState.CLOSED


async def test_a_provider_resumed_after_the_others_still_waits_out_its_backoff() -> None:
    """QA: a transient failure handed over to the backup, then resumed at once when the backup failed too: a
    retry milliseconds after the failure (4 calls in 15 ms; 41 calls in 27 ms for 20 requests). The resumed
    provider waits its backoff (0.2-1 s here, plus jitter) from its own failure; the hand-over stays at once."""
    h = Harness()
    primary = entrant("primary", latencyMs=10, retries=1, failFirst=1)
    backup = entrant("backup", latencyMs=10, failureRate=1.0)
    t0 = asyncio.get_running_loop().time()
    result = await h.run(primary, backup, deadline_s=10)
    assert result.winner is not None and result.winner.entrant.name == "primary"
    assert h.started_at["backup"] == [pytest.approx(t0 + 0.01)]  # failover first, at once
    retried = h.started_at["primary"][1] - (t0 + 0.01)  # after the primary's own failure
    assert 0.2 * 0.999 <= retried <= 0.2 + 0.2 + 1e-6, retried  # its first backoff: 0.2 s plus up to 0.2 of jitter


async def test_a_resumed_provider_backs_off_further_after_each_of_its_failures() -> None:
    """Backoff grows with the provider's failures in the request, not from zero each time it is resumed."""
    h = Harness()
    primary = entrant("primary", latencyMs=10, retries=2, failFirst=2)
    backup = entrant("backup", latencyMs=10, retries=2, failureRate=1.0)
    result = await h.run(primary, backup, deadline_s=30)
    assert result.winner is not None and result.winner.entrant.name == "primary"
    starts = h.started_at["primary"]
    waits = [b - (a + 0.01) for a, b in itertools.pairwise(starts)]  # from each failure to the next call
    assert 0.2 * 0.999 <= waits[0] <= 0.4 + 1e-6, waits  # 0.2 s x 2^0 + jitter
    assert 0.4 * 0.999 <= waits[1] <= 0.6 + 1e-6, waits  # 0.2 s x 2^1 + jitter


async def test_a_provider_whose_backoff_passes_the_deadline_is_not_called_again() -> None:
    """QA: with a backoff longer than the time left, the retry came at once instead of not at all (calls at
    0, 4 ms, 4.5 s and 4.5 s with backoffInitial 3 s and 6 s left)."""
    h = Harness()
    lonely = entrant("lonely", latencyMs=10, retries=3, failureRate=1.0)
    plan = RacePlan(entrants=(lonely,), mode="hedged", deadline_s=5, backoff_initial_s=3.0, backoff_max_s=8.0)
    t0 = asyncio.get_running_loop().time()
    result = await h.race.run(plan, JOB)
    assert result.winner is None
    starts = [t - t0 for t in h.started_at["lonely"]]
    assert starts[0] == pytest.approx(0)
    # Each retry waits 3 s x 2^(n-1) plus up to 3 s of jitter: the second fits only when its wait does, and no
    # call comes sooner than 3 s after the one before.
    assert all(b - a >= 0.01 + 3.0 * 0.999 for a, b in itertools.pairwise(starts)), starts
    assert len(starts) <= 2, starts


async def test_two_images_done_in_the_same_moment_log_one_winner_and_one_loser() -> None:
    """QA: in parallel mode two providers answering in the same turn of the loop were both logged ``success``
    (11 requests in 55), though one image was used; the stats counted two successes. The other is ``cancelled``,
    its cost kept: it was made."""
    h = Harness()
    result = await h.run(entrant("a", latencyMs=100), entrant("b", latencyMs=100), mode="parallel")
    assert result.winner is not None
    outcomes = {event.provider: event.outcome for event in result.attempts}
    loser = "b" if result.winner.entrant.name == "a" else "a"
    assert outcomes == {result.winner.entrant.name: AttemptOutcome.SUCCESS, loser: AttemptOutcome.CANCELLED}
    (lost,) = [event for event in result.attempts if event.provider == loser]
    assert lost.cost_usd == 0.003 and "answered in the same moment as the winner" in (lost.error or "")
    assert h.events[-1] == lost  # the listener (the log) heard it last


class IgnoresCancellation(FakeProvider):
    """A badly written plugin: it catches every CancelledError and goes on, then answers an image ``late_s`` after
    its call."""

    def __init__(self, *, late_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.late_s = late_s
        self.answered_at: float | None = None

    async def generate(self, job: ProviderJob, ctx: Any) -> ProviderOutput:
        self.calls.append(job)
        loop = asyncio.get_running_loop()
        until = loop.time() + self.late_s
        while (left := until - loop.time()) > 0:
            try:
                await asyncio.sleep(left)
            except asyncio.CancelledError:
                self.cancelled += 1
        self.answered_at = loop.time()
        return ProviderOutput(data=b"a late image", content_type="image/png", model="fake")


def stubborn(name: str, *, late_s: float, timeout_s: float, retries: int = 0) -> Entrant:
    """An entrant whose provider ignores its cancellation (hedge delay 10 s: a backup starts only by failover)."""
    plain = entrant(name, timeout_s=timeout_s, retries=retries, hedge_delay_s=10)
    return dataclasses.replace(plain, provider=IgnoresCancellation(name=name, late_s=late_s))


def ends_of(h: Harness, provider: str) -> list[tuple[AttemptOutcome, FailureClass | None, str | None]]:
    """How the listener (the log) heard ``provider``'s attempts end, in order."""
    return [
        (e.outcome, e.failure_class, e.error)
        for e in h.events
        if e.provider == provider and e.outcome is not AttemptOutcome.RUNNING
    ]


@pytest.mark.parametrize("mode", ["hedged", "sequential"])
async def test_a_provider_that_ignores_its_cancellation_fails_at_its_timeout_and_the_next_one_answers(
    mode: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """QA: a plugin that caught CancelledError and went on was not cut at its timeout: its attempt stayed
    ``running`` until the plugin chose to answer (here 5 s, its timeout 400 ms), the backup waited as long, and the
    late image won. The attempt now fails as a timeout a grace after its timeout, its breaker told, and the race
    hands over to the backup at once; the operator is warned once, naming the provider."""
    import imagegen_core.race as race_module

    # A fresh "warned once" set (not ``raising``: the engine before this fix had none, and failed on the race).
    monkeypatch.setattr(race_module, "_IGNORED_CANCELLATION", set(), raising=False)
    h = Harness()
    primary, backup = stubborn("primary", late_s=5, timeout_s=0.4), entrant("backup", latencyMs=5)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    result = await h.run(primary, backup, mode=mode, deadline_s=30)
    assert result.winner is not None and result.winner.entrant.name == "backup"
    assert loop.time() - t0 <= 0.4 + 0.1, "answered long after the primary's timeout"
    assert 0.4 <= h.started_at["backup"][0] - t0 <= 0.4 + 0.05  # handed over at the timeout (plus the grace)
    first = result.attempts[0]
    assert (first.provider, first.outcome, first.failure_class, first.error) == (
        "primary",
        AttemptOutcome.FAILED,
        FailureClass.TIMEOUT,
        "primary: no image within 400 ms",
    )
    assert first.duration_ms is not None and 400 <= first.duration_ms <= 450
    record = h.breakers.store.get("primary")
    assert record is not None and [failed for _, failed in record.window] == [True]
    warned = [r.getMessage() for r in caplog.records if "ignored its cancellation" in r.getMessage()]
    assert len(warned) == 1 and "'primary'" in warned[0], warned
    await h.run(primary, backup, mode=mode, deadline_s=30)  # again: no second warning
    assert len([r for r in caplog.records if "ignored its cancellation" in r.getMessage()]) == 1


async def test_a_provider_that_ignores_its_cancellation_is_cut_at_the_deadline_and_the_race_answers_on_time() -> None:
    """QA: at the request's deadline such a plugin was cancelled and waited for the grace, but its attempt was left
    ``running`` (in the log for as long as the plugin ran). The race answers at its deadline, the attempt ended as
    cut by it, as an attempt that let go is."""
    h = Harness()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    result = await h.run(stubborn("a", late_s=10, timeout_s=60), deadline_s=2.5)
    assert loop.time() - t0 <= 2.5 + 0.1
    assert result.winner is None and result.deadline_hit
    (attempt,) = result.attempts
    assert (attempt.outcome, attempt.failure_class, attempt.error) == (
        AttemptOutcome.CANCELLED,
        FailureClass.TIMEOUT,
        "a: no image before the request's deadline",
    )
    assert attempt.duration_ms is not None and 2500 <= attempt.duration_ms <= 2600
    assert ends_of(h, "a") == [(attempt.outcome, attempt.failure_class, attempt.error)]


@pytest.mark.parametrize(
    ("mode", "deadline_s", "timeout_s", "expected"),
    [
        ("sequential", 30, 0.4, (AttemptOutcome.FAILED, FailureClass.TIMEOUT, "stubborn: no image within 400 ms")),
        (
            "sequential",
            2.5,
            60,
            (AttemptOutcome.CANCELLED, FailureClass.TIMEOUT, "stubborn: no image before the request's deadline"),
        ),
        ("parallel", 30, 60, (AttemptOutcome.CANCELLED, None, None)),
    ],
    ids=["timed out", "cut at the deadline", "lost to the winner"],
)
async def test_the_late_answer_of_a_provider_that_ignored_its_cancellation_changes_nothing(
    mode: str, deadline_s: float, timeout_s: float, expected: tuple[AttemptOutcome, FailureClass | None, str | None]
) -> None:
    """QA: the plugin's image, answered seconds after its attempt should have ended, was logged a success (a second
    end of the attempt), its breaker told of a success and the hedger of an answer time. Once its attempt is
    ended, whatever the plugin does is ignored: no second end, no breaker record, no sample, no retry."""
    from imagegen_core.hedging import Hedger

    h = Harness()
    hedger = Hedger()
    h.race._hedger = hedger  # type: ignore[attr-defined]
    late = stubborn("stubborn", late_s=8, timeout_s=timeout_s, retries=2)
    backup = entrant("backup", latencyMs=5, failureRate=1.0, failureClass="invalid_request")
    if mode == "parallel":
        backup = entrant("backup", latencyMs=5)
    await h.run(late, backup, mode=mode, deadline_s=deadline_s)
    assert ends_of(h, "stubborn") == [expected]
    window = getattr(h.breakers.store.get("stubborn"), "window", [])
    samples = hedger.samples("stubborn")
    await asyncio.sleep(10)  # the plugin answers meanwhile
    provider = late.provider
    assert isinstance(provider, IgnoresCancellation) and provider.answered_at is not None
    assert ends_of(h, "stubborn") == [expected]
    assert [e.outcome for e in h.events if e.provider == "stubborn"] == [AttemptOutcome.RUNNING, expected[0]]
    assert getattr(h.breakers.store.get("stubborn"), "window", []) == window
    assert hedger.samples("stubborn") == samples
    assert len(provider.calls) == 1, "the given-up lane must not retry"


def processing_takes(h: Harness, seconds: float) -> None:
    """Our verifying and normalising of each delivered image takes ``seconds`` (of the loop's clock)."""

    async def finish(_entrant: Entrant, output: ProviderOutput, _data: bytes | None) -> ProviderOutput:
        await asyncio.sleep(seconds)
        return output

    h.race._finish = finish  # type: ignore[assignment]


async def test_an_image_delivered_in_time_is_processed_into_the_finish_extension_and_wins() -> None:
    """QA: a 2048x2048 image delivered at 900 ms of a 1 s race (2 s deadline) was thrown away while normalising,
    the answer the default image with "deadline reached before any provider produced an image" and 1 s left."""
    h = Harness()
    processing_takes(h, 0.3)
    slow = entrant("slow", latencyMs=5000)
    t0 = asyncio.get_running_loop().time()
    result = await h.run(entrant("edge", latencyMs=900), slow, mode="parallel", deadline_s=1.0, finish_extension_s=0.5)
    assert result.winner is not None and result.winner.entrant.name == "edge"
    assert asyncio.get_running_loop().time() - t0 == pytest.approx(1.2)
    outcomes = {a.provider: (a.outcome, a.failure_class) for a in result.attempts}
    # The provider still making its image is cut at the race's deadline, not at the extension's end.
    assert outcomes == {
        "edge": (AttemptOutcome.SUCCESS, None),
        "slow": (AttemptOutcome.CANCELLED, FailureClass.TIMEOUT),
    }
    assert fake(slow).cancelled == 1 and h.events[-1].provider == "edge"


@pytest.mark.parametrize("extension_s", [0.0, 0.5])
async def test_processing_past_the_extension_is_cut_and_said_so_not_as_no_image_produced(extension_s: float) -> None:
    h = Harness()
    processing_takes(h, 0.8)
    t0 = asyncio.get_running_loop().time()
    result = await h.run(entrant("edge", latencyMs=900), deadline_s=1.0, finish_extension_s=extension_s)
    assert result.winner is None and result.deadline_hit
    assert asyncio.get_running_loop().time() - t0 == pytest.approx(1.0 + extension_s, abs=0.03)
    (attempt,) = result.attempts
    assert (attempt.outcome, attempt.failure_class) == (AttemptOutcome.CANCELLED, None)
    assert (
        attempt.error == "edge: answered in 900 ms, but its image was still being processed at the request's deadline"
    )
    assert result.error == "deadline reached while the image from edge was still being processed"


async def test_a_delivered_image_that_proves_broken_in_the_extension_is_a_failure_and_no_winner() -> None:
    h = Harness()

    async def broken(_entrant: Entrant, _output: ProviderOutput, _data: bytes | None) -> ProviderOutput:
        await asyncio.sleep(0.2)  # past the race's deadline, within the extension
        raise ImageError("not an image: image file is truncated")

    h.race._finish = broken  # type: ignore[assignment]
    t0 = asyncio.get_running_loop().time()
    result = await h.run(entrant("edge", latencyMs=900), deadline_s=1.0, finish_extension_s=0.5)
    assert asyncio.get_running_loop().time() - t0 == pytest.approx(1.1)  # at its failure, not the extension's end
    assert result.winner is None
    assert [(a.outcome, a.cost_usd) for a in result.attempts] == [(AttemptOutcome.FAILED, 0.003)]
    assert result.error is not None and "still being processed" not in result.error
