"""The race/hedge engine: which providers run when, under per-attempt timeouts, retries, circuit
breakers and one hard deadline. It knows providers, deadlines, retries and breakers — not storage, not SQL.

Modes (DESIGN §4):

- ``hedged`` (default): start the first provider by priority; start the next one when the running one
  has not succeeded within its hedge delay, or as soon as it has failed. A hedge needs the process's
  hedge budget (:mod:`imagegen_core.hedging`): refused, it is asked again shortly (other requests refill
  the bucket), and at the latest when the request becomes overdue and may spend the budget's reserve.
- ``parallel``: start every provider at once.
- ``sequential``: start the next provider only when the previous one has failed.

The first *verified* image wins: the ``finish`` callback (decode, normalise) runs inside the attempt, so an
undecodable answer is just a failed attempt; it may run past the race's deadline by the plan's
``finish_extension_s`` when the provider delivered before it. Losers are cancelled at
once; a provider cancels its server-side work from its CancelledError handler. A provider that ignores its
cancellation (catches CancelledError and goes on) is not waited for: a short grace after its timeout, or after the
race cancelled it, its attempt is ended as the cancellation would have ended it, and whatever it does afterwards is
ignored. Attempts are reported to a :class:`RaceListener` as they start and end (the service writes them to the log).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Literal, Protocol, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from .breaker import Permit, denial_text
from .errors import BreakerOpenError, FailureClass, ImageGenError, ImageTooLargeError, ProviderError, clip
from .gates import BreakerGate
from .hedging import Hedger, overdue_after
from .ids import new_id
from .models import AttemptOutcome, AttemptSummary
from .providers.base import Provider, ProviderContext, ProviderJob, ProviderOutput
from .sent_requests import SentRequests

T = TypeVar("T")
RaceMode = Literal["hedged", "parallel", "sequential"]

_log = logging.getLogger("imagegen")

#: How long cancelled losers get to run their clean-up before the race stops waiting for them; also how long
#: a timed-out or cut attempt's provider gets to let go before its attempt is ended without it.
_CANCEL_GRACE_S = 0.02
#: A hedge timer that fires a hair early (its timeout is a float difference; asyncio runs timers due within
#: its clock resolution) still counts as on time.
_CLOCK_SLACK_S = 1e-6


@dataclass(frozen=True, slots=True)
class Entrant:
    """One provider's place in a race, with its settings from the runtime config (seconds)."""

    name: str
    provider: Provider
    timeout_s: float
    retries: int = 0
    hedge_delay_s: float = 2.0
    cost_per_image: float = 0.0
    model: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RacePlan:
    """What to race: entrants in start order, the mode, the race's budget and retry backoff (seconds)."""

    entrants: Sequence[Entrant]
    mode: RaceMode = "hedged"
    deadline_s: float = 30.0
    backoff_initial_s: float = 0.25
    backoff_max_s: float = 4.0
    #: How long past ``deadline_s`` an image a provider delivered in time may still be verified and normalised
    #: (part of the request's finalize reserve): it was made and billed, and throwing it away for our own
    #: processing time answered the default image with time left (QA).
    finish_extension_s: float = 0.0


@dataclass(frozen=True, slots=True)
class AttemptEvent:
    """An attempt starting (``outcome == RUNNING``) or ending. Times are wall-clock seconds."""

    attempt_id: str
    provider: str
    attempt: int
    hedged: bool
    started_at: float
    outcome: AttemptOutcome = AttemptOutcome.RUNNING
    finished_at: float | None = None
    duration_ms: int | None = None
    failure_class: FailureClass | None = None
    http_status: int | None = None
    cost_usd: float = 0.0
    error: str | None = None
    #: A failure's Retry-After hint (ms), when the provider gave one: logged for the what-if replay.
    retry_after_ms: int | None = None

    def summary(self) -> AttemptSummary:
        """The short form reported in a GenerateResult."""
        return AttemptSummary(
            provider=self.provider,
            attempt=self.attempt,
            outcome=self.outcome,
            elapsed_ms=self.duration_ms or 0,
            hedged=self.hedged,
            failure_class=self.failure_class,
            http_status=self.http_status,
            error=self.error,
        )


class RaceListener(Protocol):
    """Receives every attempt event; must not block (the service queues them for the log writer)."""

    def __call__(self, event: AttemptEvent) -> None: ...


@dataclass(frozen=True, slots=True)
class Won(Generic[T]):
    """The winning attempt: its entrant, the provider's output and what ``finish`` made of it."""

    entrant: Entrant
    output: ProviderOutput
    payload: T
    attempt: AttemptEvent


@dataclass(slots=True)
class RaceResult(Generic[T]):
    """How a race ended: a winner, or none with the reason; every attempt in start order."""

    winner: Won[T] | None
    attempts: list[AttemptEvent]
    deadline_hit: bool = False
    #: Providers whose image had arrived in time but was still being processed when the race was cut.
    still_processing: tuple[str, ...] = ()

    @property
    def error(self) -> str | None:
        """A one-line reason when there is no winner."""
        if self.winner is not None:
            return None
        failed = [a for a in self.attempts if a.outcome in (AttemptOutcome.FAILED, AttemptOutcome.SKIPPED)]
        reasons = "; ".join(dict.fromkeys(a.error or a.outcome.value for a in failed))
        if self.deadline_hit and self.still_processing:
            # QA: "before any provider produced an image" was said of an image that had arrived in time.
            return (
                f"deadline reached while the image from {', '.join(self.still_processing)} was still being processed"
                + (f" (others: {reasons})" if reasons else "")
            )
        if self.deadline_hit:
            return "deadline reached before any provider produced an image" + (f" ({reasons})" if reasons else "")
        if not self.attempts:
            return "no provider is enabled and configured"
        return f"all providers failed: {reasons}" if reasons else "all providers failed"


@dataclass(slots=True)
class _Lane(Generic[T]):
    """One provider's run within a race; it may be resumed after others had their turn."""

    entrant: Entrant
    hedged: bool
    won: Won[T] | None = None
    attempts_done: int = 0
    resumable: bool = False
    #: When the provider asked to be called again (its Retry-After), on the loop's clock; 0: any time.
    not_before: float = 0.0
    #: Set when the race cancels this lane at its deadline (before the cancel reaches it).
    cut_by_deadline: bool = False
    #: The task running the lane now, and its attempt under way (or its latest).
    task: asyncio.Task[None] | None = None
    running: _Running | None = None
    #: Set when its provider kept running past its cancellation and its attempt was ended without it: whatever
    #: the provider does afterwards is ignored, and the lane tries no more.
    abandoned: bool = False
    #: Set while its attempt's image, delivered by the provider, is being verified and normalised (ours).
    finishing: bool = False


@dataclass(slots=True)
class _Running:
    """An attempt under way: its permit, its event and where that event sits in the race's ``events``, and when
    it started (loop time). What ending it, one way or another, needs."""

    permit: Permit
    event: AttemptEvent
    events: list[AttemptEvent]
    index: int
    started: float
    sent: SentRequests

    @property
    def ended(self) -> bool:
        """Whether its event was ended (a success, a failure, a cancellation) since it was emitted."""
        return self.events[self.index].outcome is not AttemptOutcome.RUNNING


class _AttemptFailed(Exception):
    """Internal: carries a ProviderError out of one attempt into tenacity's retry decision."""

    def __init__(self, error: ProviderError) -> None:
        super().__init__(str(error))
        self.error = error


class Race(Generic[T]):
    """Runs races. One instance serves many concurrent races; it keeps no per-race state."""

    def __init__(
        self,
        *,
        client: Any,
        breakers: BreakerGate,
        finish: Callable[[Entrant, ProviderOutput, bytes | None], Awaitable[T]],
        fetch: Callable[[Entrant, ProviderOutput], Awaitable[bytes]] | None = None,
        listener: RaceListener | None = None,
        spawn: Callable[[Any], None] | None = None,
        linger: Callable[[Any], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
        hedger: Hedger | None = None,
    ) -> None:
        self._hedger = hedger
        self._client = client
        self._breakers = breakers
        self._finish = finish
        self._fetch = fetch
        self._listener = listener
        self._spawn = spawn or _detach
        self._linger = linger
        self._sleep = sleep
        self._wall = wall_clock

    async def run(self, plan: RacePlan, job: ProviderJob) -> RaceResult[T]:
        """Race ``plan.entrants`` for ``job``; returns by ``plan.deadline_s`` whatever the providers do."""
        loop = asyncio.get_running_loop()
        if plan.deadline_s <= 0:
            # No time left (the request's body took its whole deadline to arrive): calling a provider now would
            # only log a timeout and a cost against it, with no request sent (QA).
            return RaceResult(winner=None, attempts=[], deadline_hit=True)
        deadline = loop.time() + plan.deadline_s
        events: list[AttemptEvent] = []
        # Lanes waiting to start, in order. A lane that failed with retries left goes back to the end
        # (failover first: another provider takes over at once instead of waiting out a backoff).
        waiting: list[_Lane[T]] = [_Lane(e, hedged=False) for e in plan.entrants]
        lanes: dict[asyncio.Future[None], _Lane[T]] = {}
        winner: Won[T] | None = None
        deadline_hit = False
        next_hedge_at: float | None = None
        overdue_at = math.inf  # when the wait on the newest lane earns the budget's reserve
        extra_cost = 0.0
        # Done when a lane is given up on at its provider's timeout (see _give_up_if_stuck): its task runs on in
        # the provider's code, so only this wakes the race to hand over to the next provider.
        gave_up: asyncio.Future[None] = loop.create_future()
        if self._hedger is not None:
            self._hedger.budget.deposit()

        def wake() -> None:
            if not gave_up.done():
                gave_up.set_result(None)

        def start_next(*, hedged: bool) -> None:
            nonlocal next_hedge_at, overdue_at
            lane = waiting.pop(0)
            lane.hedged = hedged
            task = asyncio.create_task(self._run_lane(lane, plan, job, deadline, events, lambda: bool(waiting), wake))
            lanes[task] = lane
            lane.task = task
            next_hedge_at, overdue_at = None, math.inf
            if plan.mode == "hedged":
                now, delay = loop.time(), self._hedge_delay_s(lane.entrant)
                next_hedge_at, overdue_at = now + delay, now + overdue_after(delay)

        def may_hedge(overdue: bool) -> bool:
            """A hedge adds load and cost: only within the process's budget and the request's cost cap."""
            nonlocal extra_cost
            cost = waiting[0].entrant.cost_per_image
            if self._hedger is None:
                return True
            if self._hedger.over_cost_cap(extra_cost + cost):
                return False
            if not self._hedger.budget.try_spend(overdue=overdue):
                return False
            extra_cost += cost
            return True

        try:
            async with asyncio.timeout_at(deadline):
                if plan.mode == "parallel":
                    while waiting:
                        start_next(hedged=False)
                while winner is None and (lanes or waiting):
                    if not lanes:
                        start_next(hedged=False)
                    wait_s = None
                    if plan.mode == "hedged" and waiting and next_hedge_at is not None:
                        wait_s = max(0.0, next_hedge_at - loop.time())
                    done, _ = await asyncio.wait((*lanes, gave_up), timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
                    if gave_up in done:
                        done.discard(gave_up)
                        gave_up = loop.create_future()
                        for given_up in [task for task, lane in lanes.items() if lane.abandoned]:
                            del lanes[given_up]  # failed at its timeout; its task is the provider's now (lingering)
                    elif not done:  # the hedge delay passed without a success
                        now = loop.time()
                        overdue = now >= overdue_at - _CLOCK_SLACK_S
                        if may_hedge(overdue):
                            start_next(hedged=True)
                        else:
                            # Out of budget (or over the cost cap): other requests refill the bucket, so
                            # ask again shortly rather than never, and at the latest when the reserve opens
                            # to this request; the cost cap will not change, though.
                            next_hedge_at = self._hedge_retry_at(now, extra_cost, waiting[0].entrant)
                            if next_hedge_at is not None and not overdue:
                                next_hedge_at = min(next_hedge_at, overdue_at)
                        continue
                    for task in done:
                        lane = lanes.pop(task)
                        task.result()  # lanes never raise; surfaces a bug in the engine loudly
                        if lane.won is not None:
                            winner = self._claim(winner, lane.won, events)
                        elif lane.resumable:
                            waiting.append(lane)
                    if winner is None and waiting and (plan.mode != "parallel" or not lanes):
                        start_next(hedged=False)  # a failure hands over at once, hedge delay or not
        except TimeoutError:
            deadline_hit = True
            if plan.finish_extension_s > 0:
                winner = await self._finish_delivered(lanes, deadline + plan.finish_extension_s, events)
        finally:
            await self._cancel_lanes(lanes, at_deadline=deadline_hit)
        if winner is None:
            winner = self._won_as_the_deadline_fell(lanes, events)
        if winner is not None:
            return RaceResult(winner=winner, attempts=events)
        still = tuple(dict.fromkeys(lane.entrant.name for lane in lanes.values() if lane.finishing))
        return RaceResult(winner=None, attempts=events, deadline_hit=deadline_hit, still_processing=still)

    async def _finish_delivered(
        self, lanes: dict[asyncio.Future[None], _Lane[T]], until: float, events: list[AttemptEvent]
    ) -> Won[T] | None:
        """At the race's deadline: the lanes whose provider has delivered its image, which we are verifying and
        normalising, may finish until ``until`` (the first verified one wins); every other lane is cut now.
        Lanes done already, in the turn the deadline fell in, are left to :meth:`_won_as_the_deadline_fell`."""
        loop = asyncio.get_running_loop()
        finishing = {task: lane for task, lane in lanes.items() if lane.finishing and not task.done()}
        if not finishing:
            return None
        await self._cancel_lanes({t: lane for t, lane in lanes.items() if t not in finishing}, at_deadline=True)
        winner: Won[T] | None = self._won_as_the_deadline_fell(lanes, events)
        while finishing and winner is None and loop.time() < until:
            done, _ = await asyncio.wait(finishing, timeout=until - loop.time(), return_when=asyncio.FIRST_COMPLETED)
            if not done:
                break
            for task in done:
                lane = finishing.pop(task)
                del lanes[task]
                winner = self._claim(winner, lane.won, events)
        return winner

    def _won_as_the_deadline_fell(
        self, lanes: Mapping[asyncio.Future[None], _Lane[T]], events: list[AttemptEvent]
    ) -> Won[T] | None:
        """A lane whose image was made and verified in the loop's turn that the deadline fell in (a loop held
        up past it: CPU, the GIL): the image is the race's, not lost. QA (drill, 200 requests at once): such an
        attempt was logged ``success``, its image neither answered, stored nor kept, though the provider billed
        it. Delivering it now may not fit the deadline: the upload then keeps it in the spool, as a slow one."""
        winner: Won[T] | None = None
        for lane in lanes.values():
            winner = self._claim(winner, lane.won, events)
        return winner

    def _claim(self, winner: Won[T] | None, won: Won[T] | None, events: list[AttemptEvent]) -> Won[T] | None:
        """The race's winner once a lane's ``won`` is in: the first image verified; a later one, finished in the same
        turn of the loop as the winner's, is logged as the loser it is, ``cancelled``, its cost kept (it was made).
        QA: both were logged ``success``, 11 requests in 55 had two successes, and the stats' success and lost
        shares counted them so."""
        if won is None:
            return winner
        if winner is None:
            return won
        lost = replace(
            won.attempt,
            outcome=AttemptOutcome.CANCELLED,
            error=f"{won.entrant.name}: answered in the same moment as the winner; the winner's image was used",
        )
        index = next(i for i, event in enumerate(events) if event.attempt_id == lost.attempt_id)
        events[index] = lost
        self._emit(lost, events, append=False)
        return winner

    def _hedge_retry_at(self, now: float, extra_cost: float, entrant: Entrant) -> float | None:
        if self._hedger is None:
            return None
        if self._hedger.over_cost_cap(extra_cost + entrant.cost_per_image):
            return None
        return now + max(self._hedger.settings.min_delay_s, 0.01)

    def _hedge_delay_s(self, entrant: Entrant) -> float:
        if self._hedger is None:
            return entrant.hedge_delay_s
        return self._hedger.delay_s(entrant.name, entrant.hedge_delay_s)

    async def _cancel_lanes(self, lanes: Mapping[asyncio.Future[None], _Lane[T]], *, at_deadline: bool) -> None:
        """Cancel losers (or, ``at_deadline``, every lane still running) and give them a moment to log and send
        their server-side cancels. A lane still running after that moment has a provider that ignored its
        cancellation: its attempt is ended now, as the cancellation would have ended it."""
        for task, lane in lanes.items():
            lane.cut_by_deadline = at_deadline
            task.cancel()
        if lanes:
            _, stuck = await asyncio.wait(lanes, timeout=_CANCEL_GRACE_S)
            for task in stuck:
                lane = lanes[task]
                running = lane.running
                if running is None or running.ended:
                    continue  # between attempts: our own waits end at the cancel; nothing of the provider's runs
                billed = running.sent.may_have_reached
                hedged = running.event.hedged
                self._end_unfinished(
                    running, lane.entrant, hedged=hedged, cut=at_deadline, answered=None, billed=billed
                )
                self._abandon(lane)

    def _give_up_if_stuck(
        self, scope: asyncio.Timeout, lane: _Lane[T], running: _Running, budget_s: float, wake: Callable[[], None]
    ) -> None:
        """An attempt's provider timed out a moment ago: if it still runs (it caught its cancellation and went
        on), the attempt fails now as a timeout, as it would have had the provider let go, and the race is woken
        to hand over to the next provider."""
        if not scope.expired() or running.ended:  # it let go, or answered just before its timer fired
            return
        entrant = lane.entrant
        cost = entrant.cost_per_image if running.sent.may_have_reached else 0.0
        self._settle_failure(running, _timed_out(entrant, budget_s), cost=cost, entrant=entrant)
        self._abandon(lane)
        wake()

    def _time_up(
        self, scope: asyncio.Timeout, lane: _Lane[T], running: _Running, budget_s: float, wake: Callable[[], None]
    ) -> None:
        """An attempt's budget ran out: cancel it through ``scope`` (which turns the cancellation into
        TimeoutError), and, when the budget was the provider's own timeout, look again once the provider has had
        the grace to let go. The request's deadline cuts an attempt it set the budget of: the race does that."""
        loop = asyncio.get_running_loop()
        scope.reschedule(loop.time())
        if budget_s >= lane.entrant.timeout_s:
            loop.call_later(_CANCEL_GRACE_S, self._give_up_if_stuck, scope, lane, running, budget_s, wake)

    def _abandon(self, lane: _Lane[T]) -> None:
        """Leave a lane whose provider ignored its cancellation to run on unheeded: its task lingers (closing
        cancels it again rather than wait for it), and the operator hears of the provider once."""
        if lane.abandoned:
            return
        lane.abandoned = True
        if lane.task is not None:
            (self._linger or _detach)(lane.task)
        name = lane.entrant.name
        if name not in _IGNORED_CANCELLATION:
            _IGNORED_CANCELLATION.add(name)
            _log.warning(
                "provider %r ignored its cancellation (still running %d ms after it): its attempt was ended without "
                "it, and what it does from now on is ignored; a provider must let asyncio.CancelledError propagate "
                "(clean-up that takes time goes to ctx.spawn or ctx.start_lingering)",
                name,
                round(_CANCEL_GRACE_S * 1000),
            )

    async def _run_lane(
        self,
        lane: _Lane[T],
        plan: RacePlan,
        job: ProviderJob,
        deadline: float,
        events: list[AttemptEvent],
        others_waiting: Callable[[], bool],
        wake: Callable[[], None],
    ) -> None:
        """Attempts of one provider: retries with exponential backoff and jitter (tenacity), honouring
        Retry-After when it fits before the deadline. While another provider is waiting to start, a
        retryable failure ends the lane instead (marked resumable): the other provider takes over at
        once, and this one's remaining retries come after it. Returns normally in every case."""
        loop = asyncio.get_running_loop()
        entrant = lane.entrant
        budget = entrant.retries + 1 - lane.attempts_done

        def retryable(exc: BaseException) -> bool:
            # a breaker refusal ends the lane at once: the next provider takes over without waiting
            return (
                isinstance(exc, _AttemptFailed)
                and not isinstance(exc.error, BreakerOpenError)
                and exc.error.failure_class.retryable
            )

        backoff = wait_exponential_jitter(
            multiplier=plan.backoff_initial_s, max=plan.backoff_max_s, jitter=plan.backoff_initial_s
        )
        delays: dict[int, float] = {}

        def delay_after(error: ProviderError) -> float:
            """How long the provider waits after the lane's latest failure: its Retry-After, else the backoff
            for that many failures (the lane's, not tenacity's count of this run: a lane resumed after the others
            had their turn backs off from where it was). One jitter draw per failure, so that tenacity's stop
            and a hand-over judge the same wait."""
            if error.retry_after_s is not None:
                return error.retry_after_s
            failures = lane.attempts_done
            if failures not in delays:
                delays[failures] = _backoff_after(backoff, failures)
            return delays[failures]

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            return delay_after(exc.error) if isinstance(exc, _AttemptFailed) else 0.0

        retrying = AsyncRetrying(
            stop=stop_after_attempt(max(1, budget)) | _OutOfTime(loop, deadline),
            wait=wait,
            retry=retry_if_exception(lambda exc: retryable(exc) and not others_waiting() and not lane.abandoned),
            sleep=self._sleep,
            reraise=True,
        )
        lane.resumable = False
        if lane.not_before > loop.time():  # resumed after others had their turn: the provider's wait still holds
            await self._sleep(lane.not_before - loop.time())
        try:
            async for attempt in retrying:
                with attempt:
                    lane.attempts_done += 1
                    lane.won = await self._attempt(
                        entrant,
                        lane.hedged and attempt.retry_state.attempt_number == 1,
                        lane.attempts_done,
                        job,
                        deadline,
                        events,
                        lane,
                        wake,
                    )
        except _AttemptFailed as exc:
            # Handed over with retries left (or out of time for the wait): resumed later, the provider still
            # waits its Retry-After or backoff from this failure. QA: it was resumed at once when the others
            # failed, a retry milliseconds after the failure (20 requests made 41 calls in 27 ms).
            lane.not_before = loop.time() + delay_after(exc.error)
            # A wait that ends past the deadline rules the provider out for this request: resuming it at once
            # (when the others fail) would call it again against its own word, or without its backoff.
            lane.resumable = retryable(exc) and lane.attempts_done < entrant.retries + 1 and lane.not_before < deadline

    async def _attempt(
        self,
        entrant: Entrant,
        hedged: bool,
        number: int,
        job: ProviderJob,
        deadline: float,
        events: list[AttemptEvent],
        lane: _Lane[T],
        wake: Callable[[], None],
    ) -> Won[T]:
        loop = asyncio.get_running_loop()
        event = AttemptEvent(
            attempt_id=new_id(),
            provider=entrant.name,
            attempt=number,
            hedged=hedged,
            started_at=self._wall(),
        )
        permit = await self._breakers.acquire(entrant.name)
        if not isinstance(permit, Permit):
            skipped = replace(
                event,
                outcome=AttemptOutcome.SKIPPED,
                finished_at=event.started_at,
                duration_ms=0,
                error=denial_text(permit),
            )
            self._emit(skipped, events, append=True)
            raise _AttemptFailed(BreakerOpenError(entrant.name, str(permit.state)))
        self._emit(event, events, append=True)
        started = loop.time()
        # A request that timed out is billed only if it may have reached the provider: one that never left (its
        # connection never opened: a full listen backlog) costs nothing.
        sent = SentRequests(self._client)
        running = _Running(permit, event, events, len(events) - 1, started, sent)
        lane.running = running
        try:
            budget_s = max(0.0, min(entrant.timeout_s, deadline - started))
            attempt_job = replace(
                job, timeout_s=budget_s, attempt=number, model=entrant.model or job.model, options=entrant.options
            )
            ctx = ProviderContext(client=self._client, spawn=self._spawn, sleep=self._sleep, linger=self._linger)
            answered: float | None = None
            # Once the provider answered with an output it made, it bills it, whatever happens to it here (the
            # download fails, the image is too large or broken): the attempt's cost then stays its price.
            made = False
            try:
                # The provider's part, within its timeout: making the image and delivering it (the download). The
                # timer is ours, not asyncio.timeout's own (at the same cost): when it fires, it also checks a moment
                # later that the provider let go (QA: a plugin that caught CancelledError and went on kept its
                # attempt ``running`` for as long as it liked, then won with an image far past its timeout).
                async with asyncio.timeout(None) as scope:
                    timer = loop.call_at(started + budget_s, self._time_up, scope, lane, running, budget_s, wake)
                    try:
                        with sent:
                            output = await entrant.provider.generate(attempt_job, ctx)
                            if not isinstance(output, ProviderOutput):  # QA: "AttributeError: 'dict' object has…"
                                raise ProviderError(
                                    f"{entrant.name}: its generate() returned {type(output).__name__}, not a "
                                    "ProviderOutput (a defect of the provider's code)",
                                    failure_class=FailureClass.TRANSIENT,
                                )
                            made = output.billed
                            data = output.data if self._fetch is None else await self._fetch(entrant, output)
                    finally:
                        timer.cancel()
                if scope.expired() or lane.abandoned:
                    # The provider caught its cancellation and answered anyway: too late, whatever it brought.
                    raise TimeoutError
                answered = loop.time()
                # Ours, bounded by the request's deadline only: verifying and normalising the image. Inside the
                # provider's timeout, a queue for the image threads (a burst of large images) timed healthy
                # providers out and opened their breakers (QA: 40 requests of 4096x4096 tripped fal's). Past the
                # race's own deadline too, by the plan's finish_extension_s (see _finish_delivered).
                lane.finishing = True
                try:
                    payload = await self._finish(entrant, output, data)
                except asyncio.CancelledError:
                    raise  # cut while processing: the race's result says so (still_processing)
                except BaseException:
                    lane.finishing = False
                    raise
                lane.finishing = False
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling() == 0:
                    # Nobody cancelled this lane: the provider raised CancelledError itself, a defect like any
                    # other exception (QA: a plugin's did, and every request raised it to a caller that had
                    # cancelled nothing, the backups never tried).
                    error = ProviderError(
                        f"{entrant.name}: the provider raised CancelledError though nothing cancelled it",
                        failure_class=FailureClass.TRANSIENT,
                    )
                    self._fail(running, error, cost=entrant.cost_per_image if made else 0.0, entrant=entrant)
                # The race says so when it cuts at its deadline: uvloop's timers fire up to ~1 ms early, and the
                # clock alone missed 6 cuts in 30 (QA), logged as lost to a winner.
                cut = lane.cut_by_deadline or loop.time() >= deadline - _CLOCK_SLACK_S
                billed = made or sent.may_have_reached
                self._end_unfinished(running, entrant, hedged=hedged, cut=cut, answered=answered, billed=billed)
                raise
            except TimeoutError:
                error = _timed_out(entrant, budget_s)
                billed = made or sent.may_have_reached
                if budget_s < entrant.timeout_s:
                    # The request's deadline set this budget, not the provider's timeout: the attempt's timer firing
                    # before the race's own cut (uvloop runs timers up to ~1 ms early) is that cut, and is ended as
                    # one, not blamed on the provider (3 runs in 20 of test_race_uvloop logged such an attempt as
                    # failed, a failure its breaker counted).
                    self._end_unfinished(running, entrant, hedged=hedged, cut=True, answered=None, billed=billed)
                    raise _AttemptFailed(error) from None
                self._fail(running, error, cost=entrant.cost_per_image if billed else 0.0, entrant=entrant)
            except ProviderError as exc:
                cost = entrant.cost_per_image if exc.billed or made else 0.0
                self._fail(running, exc, cost=cost, entrant=entrant)
            except ImageGenError as exc:  # ImageError from finish: the provider sent something unusable
                # A garbled image may come out right next time; one of absurd size is made again (no retry).
                too_large = isinstance(exc, ImageTooLargeError)
                unusable = FailureClass.INVALID_REQUEST if too_large else FailureClass.TRANSIENT
                error = ProviderError(f"{entrant.name}: {exc}", failure_class=unusable)
                self._fail(running, error, cost=entrant.cost_per_image if made else 0.0, entrant=entrant)
            except Exception as exc:  # a provider bug must not break the race; it counts as a transient failure
                error = ProviderError(
                    f"{entrant.name}: {type(exc).__name__}: {exc}", failure_class=FailureClass.TRANSIENT
                )
                self._fail(running, error, cost=entrant.cost_per_image if made else 0.0, entrant=entrant)
            else:
                if lane.abandoned:  # ended as cut while our processing ran (the provider had let go too late)
                    raise _AttemptFailed(_timed_out(entrant, budget_s))
                done = self._end(running, AttemptOutcome.SUCCESS, cost=entrant.cost_per_image)
                self._breakers.record(permit, outcome="success", failure_class=None)
                if self._hedger is not None:  # the provider's time: hedging another provider cannot shorten ours
                    assert answered is not None  # set once the provider's part is done, before ours
                    self._hedger.observe(entrant.name, answered - started)
                return Won(entrant=entrant, output=output, payload=payload, attempt=done)
            raise AssertionError("unreachable")  # _fail always raises
        except BaseException as exc:
            # A defect of ours while the attempt ran or was settled (QA: an infinite Retry-After's conversion)
            # left its row ``running`` for ever and its breaker permit unreturned: end both, then let it surface.
            if not running.ended:
                self._end_after_defect(running, exc)
            raise

    def _end_after_defect(self, running: _Running, exc: BaseException) -> None:
        """End an attempt whose own handling raised: ``failed``, naming the exception (``cancelled`` if the
        defect was a cancellation), and return its permit as ignored: the provider is not to blame."""
        cancelled = isinstance(exc, asyncio.CancelledError)
        self._end(
            running,
            AttemptOutcome.CANCELLED if cancelled else AttemptOutcome.FAILED,
            cost=0.0,
            error=None if cancelled else clip(f"internal error ({type(exc).__name__}: {exc})", 500),
        )
        self._breakers.record(running.permit, outcome="ignored", failure_class=None)

    def _end_unfinished(
        self,
        running: _Running,
        entrant: Entrant,
        *,
        hedged: bool,
        cut: bool,
        answered: float | None,
        billed: bool,
    ) -> None:
        """End an attempt that did not finish, its breaker permit returned unjudged. ``cut`` by the request's
        deadline, it is also a timeout: the provider gave no image in all the time there was (the log and the
        alerts count it so), unless it had answered (``answered``, loop time) and the time went to our processing.
        Lost to a winner or dropped by the caller (not ``cut``): no class. It costs its price if ``billed`` (the
        provider may be making the image: a cancel does not always stop the charge). Once only: an attempt
        already ended from the outside (its provider ignored its cancellation) stays as it was ended."""
        if running.ended:
            return
        why = f"{entrant.name}: no image before the request's deadline" if cut else None
        if cut and answered is not None:
            why = (
                f"{entrant.name}: answered in {round((answered - running.started) * 1000)} ms, but its image was "
                "still being processed at the request's deadline"
            )
        self._end(
            running,
            AttemptOutcome.CANCELLED,
            cost=entrant.cost_per_image if billed else 0.0,
            failure_class=FailureClass.TIMEOUT if cut and answered is None else None,
            error=why,
        )
        self._breakers.record(running.permit, outcome="ignored", failure_class=None)
        if self._hedger is not None:  # a loser took at least this long: keep stragglers in the picture
            elapsed = asyncio.get_running_loop().time() - running.started
            self._hedger.observe_at_least(entrant.name, elapsed, ran_first=not hedged)

    def _fail(
        self,
        running: _Running,
        error: ProviderError,
        *,
        cost: float,
        entrant: Entrant,
    ) -> None:
        self._settle_failure(running, error, cost=cost, entrant=entrant)
        raise _AttemptFailed(error)

    def _settle_failure(self, running: _Running, error: ProviderError, *, cost: float, entrant: Entrant) -> None:
        """End a failed attempt and tell its breaker and the hedger; once only, as :meth:`_end_unfinished`."""
        if running.ended:
            return
        cls = error.failure_class
        if self._hedger is not None and cls.counts_for_breaker:
            self._hedger.observe_failure(entrant.name, entrant.timeout_s)
        self._end(
            running,
            AttemptOutcome.FAILED,
            cost=cost,
            failure_class=cls,
            http_status=error.http_status,
            error=str(error),
            retry_after_ms=round(error.retry_after_s * 1000) if error.retry_after_s is not None else None,
        )
        counts = cls.counts_for_breaker and not getattr(entrant.provider, "local", False)  # see ProviderBase.local
        self._breakers.record(
            running.permit, outcome="failure" if counts else "ignored", failure_class=cls, detail=str(error)
        )

    def _end(
        self,
        running: _Running,
        outcome: AttemptOutcome,
        *,
        cost: float,
        failure_class: FailureClass | None = None,
        http_status: int | None = None,
        error: str | None = None,
        retry_after_ms: int | None = None,
    ) -> AttemptEvent:
        elapsed = asyncio.get_running_loop().time() - running.started
        done = replace(
            running.event,
            outcome=outcome,
            finished_at=running.event.started_at + elapsed,
            duration_ms=round(elapsed * 1000),
            failure_class=failure_class,
            http_status=http_status,
            cost_usd=cost,
            error=error,
            retry_after_ms=retry_after_ms,
        )
        running.events[running.index] = done
        self._emit(done, running.events, append=False)
        return done

    def _emit(self, event: AttemptEvent, events: list[AttemptEvent], *, append: bool) -> None:
        if append:
            events.append(event)
        if self._listener is not None:
            self._listener(event)


def _timed_out(entrant: Entrant, budget_s: float) -> ProviderError:
    return ProviderError(
        f"{entrant.name}: no image within {budget_s * 1000:.0f} ms", failure_class=FailureClass.TIMEOUT
    )


def _backoff_after(backoff: wait_exponential_jitter, failures: int) -> float:
    """``backoff``'s wait after a lane's ``failures``-th failed attempt (tenacity's waits read only the attempt
    number of the state they are given)."""
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = max(1, failures)
    return float(backoff(state))


class _OutOfTime(stop_base):
    """Stop retrying when the upcoming sleep would pass the deadline (tenacity computes the sleep before it
    asks ``stop``). A module-level class: defining one per lane cost an ABC class creation per attempt."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        self._loop = loop
        self._deadline = deadline

    def __call__(self, state: RetryCallState) -> bool:
        return self._loop.time() + (state.upcoming_sleep or 0.0) >= self._deadline


def _detach(coro: Any) -> None:
    """Default ``spawn``: run clean-up work in the background, keeping a reference until it ends."""
    task = asyncio.ensure_future(coro)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


_BACKGROUND: set[asyncio.Future[Any]] = set()
#: Providers already warned about for ignoring their cancellation (once per process: it is the plugin's code).
_IGNORED_CANCELLATION: set[str] = set()
