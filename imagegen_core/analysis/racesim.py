"""One race as a discrete-event simulation, following :class:`imagegen_core.race.Race` step by step.

Times are milliseconds from the race's start; nothing sleeps. The rules, as in ``race.py``:

- Providers wait in priority order. ``hedged`` starts the first, then the next one when the latest
  started one has not succeeded within its hedge delay (if the hedge budget and the request's extra-cost
  cap allow; refused by the budget only for its reserve, it asks again once the request is overdue), or
  at once when a running one has ended without winning; ``parallel`` starts all at once;
  ``sequential`` starts the next only when one has ended.
- An attempt gets ``min(timeout, time left)``. After a retryable failure (``transient``, ``timeout``,
  ``rate_limited``) the provider retries after ``min(backoffInitial·2^(n-1) + U(0, backoffInitial),
  backoffMax)``, or after the failure's Retry-After hint when the provider gave one, unless another
  provider is waiting to start (failover first: it then steps aside and its remaining attempts go to the
  back of the queue; resumed, it still waits out the hint), its attempts are used up, or the sleep would
  pass the deadline (it also steps aside then, with its attempts left, unless the hint ends past the
  deadline: that rules it out for the race).
- The first success wins and every running attempt is cancelled; at the deadline everything running is
  cancelled. A timed-out, cancelled or successful attempt costs ``costPerImage``; a refused one nothing.
- Adaptive hedge delays (the ``race.hedgeQuantile`` of the process's recent successes, once
  ``hedgeMinSamples`` are known) and the hedge budget carry over from race to race in :class:`HedgeState`,
  as they do in one ImageGen process; so do the recent answer times that order the providers under
  ``race.order = "fastest"`` (:mod:`imagegen_core.ordering`), and the circuit breakers.
- Every attempt, retries included, first asks the provider's circuit breaker (the engine's own
  :class:`~imagegen_core.breaker.CircuitBreakers`, over an in-memory store and the simulated clock: the
  race's start time plus its ms). A refusal is a ``skipped`` attempt that takes no time and costs nothing,
  and the lane ends (the next provider starts at once). Successes and counted failures are reported to the
  breaker when they end; a cancelled attempt is reported as ignored. (The engine's reports reach the
  breaker through the log writer's thread, a millisecond or so later: a retry after a near-zero backoff
  may still find the breaker closed there where the simulation, which applies them at once, refuses it.)
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ..breaker import CircuitBreakers, InMemoryBreakerStore, Permit
from ..config import BreakerConfig
from ..errors import FailureClass
from ..hedging import HedgeBudget, LatencyWindow, adaptive_delay, over_cost_cap, overdue_after
from ..ordering import AnswerTimes
from .latency import LatencyModel, retry_after_hint

if TYPE_CHECKING:
    from .replay import HedgePolicy, LanePlan, ReplayPlan

#: Failure classes the race retries (``FailureClass.retryable``), as strings: models speak strings.
RETRYABLE = frozenset(cls.value for cls in FailureClass if cls.retryable)
#: Failure classes that are not the provider's fault (``FailureClass.counts_for_breaker`` is False).
NOT_THE_PROVIDERS_FAULT = frozenset(cls.value for cls in FailureClass if not cls.counts_for_breaker)


@dataclass(slots=True)
class SimAttempt:
    """One simulated attempt; times in ms from the start of the race."""

    provider: str
    attempt: int
    hedged: bool
    start_ms: float
    end_ms: float
    outcome: str  # success | failed | cancelled | skipped (refused by the breaker: no call, no time, no cost)
    failure_class: str | None
    cost_usd: float
    #: A failure's Retry-After hint (ms), when the model gave one: the lane waits that long, not its backoff.
    retry_after_ms: float | None = None


@dataclass(slots=True)
class SimRace:
    """One simulated race: the winner (None when every provider failed or time ran out) and its attempts."""

    winner: str | None
    answer_ms: float
    deadline_hit: bool
    attempts: list[SimAttempt]
    #: When the race started on the simulated clock (its attempts' times are from this start).
    start_ms: float = 0.0


class HedgeState:
    """The memory one process carries from race to race: recent successful latencies per provider, the
    hedge budget, the recent answer times (in ms) that ``race.order = "fastest"`` sorts by, and (given a
    ``breaker`` config) the circuit breakers, on the simulated clock :attr:`now_ms`."""

    def __init__(self, policy: HedgePolicy, breaker: BreakerConfig | None = None) -> None:
        self.policy = policy
        #: The simulated time, in ms: set by each race (its start plus its own clock) before it asks a breaker.
        self.now_ms = 0.0
        self.breakers = None
        if breaker is not None:
            self.breakers = CircuitBreakers(
                InMemoryBreakerStore(announce=False), breaker, clock=lambda: self.now_ms / 1000
            )
        self.budget = None
        if policy.budget_share is not None:
            self.budget = HedgeBudget(
                share=policy.budget_share, burst=policy.budget_burst, reserve=policy.budget_reserve
            )
        self._windows: dict[str, LatencyWindow] = {}
        self.answers = AnswerTimes()

    def observe(self, provider: str, latency_ms: float, *, ran_first: bool = True) -> None:
        """An attempt's latency, or the lower bound of a cancelled one (the window keeps ``hedgeWindow``);
        as in :meth:`Hedger.observe_at_least`, a cancelled hedge does not count for the start order."""
        window = self._windows.get(provider)
        if window is None:
            window = self._windows[provider] = LatencyWindow(self.policy.window)
        window.add(latency_ms)
        if ran_first:
            self.answers.record(provider, latency_ms)

    def delay_ms(self, provider: str, fixed_ms: float) -> float:
        """The hedge delay as :meth:`Hedger.delay_s` computes it (:func:`adaptive_delay`), in ms."""
        policy = self.policy
        if not policy.adaptive:
            return fixed_ms
        return adaptive_delay(
            self._windows.get(provider),
            fixed_ms,
            quantile=policy.quantile,
            budget_share=policy.budget_share,
            min_samples=policy.min_samples,
            min_delay=policy.min_delay_ms,
        )

    def deposit(self) -> None:
        """A request arrived: it earns a share of a hedge."""
        if self.budget is not None:
            self.budget.deposit()

    def try_spend(self, *, overdue: bool) -> bool:
        """Take one hedge if the budget allows (:meth:`HedgeBudget.try_spend`; always, without a budget)."""
        return self.budget is None or self.budget.try_spend(overdue=overdue)

    def admit(self, provider: str, at_ms: float) -> Permit | None:
        """The breaker's leave to call ``provider`` at ``at_ms`` (always, when breakers are not modelled);
        None when it refuses."""
        if self.breakers is None:
            return Permit(provider, probe=False, token=at_ms / 1000)
        self.now_ms = at_ms
        permit = self.breakers.acquire(provider)
        return permit if isinstance(permit, Permit) else None

    def report(self, permit: Permit | None, at_ms: float, outcome: str, failure_class: str | None) -> None:
        """How a permitted attempt ended, for its breaker, as the engine reports it: a success; a failure
        (the breaker ignores classes that are not the provider's fault); ``cancelled``, ignored."""
        if self.breakers is None or permit is None:
            return
        self.now_ms = at_ms
        verdict: Literal["success", "failure", "ignored"] = (
            "success" if outcome == "success" else "failure" if outcome == "failed" else "ignored"
        )
        cls = FailureClass(failure_class) if failure_class is not None else None
        self.breakers.record(permit, outcome=verdict, failure_class=cls)


@dataclass(slots=True)
class _Lane:
    plan: LanePlan
    model: LatencyModel
    hedged: bool = False
    attempts_done: int = 0
    run_attempts: int = 0  # attempts since this lane (re)started: tenacity's attempt number
    next_ms: float = math.inf  # when its current attempt ends, or its backoff sleep ends
    sleeping: bool = False
    current: SimAttempt | None = None
    permit: Permit | None = None  # the breaker's leave for the current attempt
    finished: bool = False
    won: bool = False
    resumable: bool = False
    not_before: float = 0.0  # a resumed lane calls no sooner (its last failure's Retry-After)
    attempts: list[SimAttempt] = field(default_factory=list)


class _Race:
    def __init__(
        self,
        plan: ReplayPlan,
        models: Mapping[str, LatencyModel],
        rng: random.Random,
        state: HedgeState,
        start_ms: float,
    ):
        self.plan, self.rng, self.state, self.start_ms = plan, rng, state, start_ms
        lanes = plan.lanes
        if plan.order == "fastest":
            lanes = tuple(state.answers.fastest_first(lanes, lambda lane: lane.name))
        self.lanes = [_Lane(lane, models[lane.name]) for lane in lanes]
        self.waiting = list(self.lanes)
        self.running: list[_Lane] = []
        self.now = 0.0
        self.next_hedge_ms: float | None = None
        self.overdue_ms = math.inf  # when the wait on the newest lane earns the budget's reserve
        self.extra_cost = 0.0

    def start_next(self, *, hedged: bool) -> None:
        lane = self.waiting.pop(0)
        lane.hedged, lane.run_attempts, lane.finished, lane.resumable = hedged, 0, False, False
        self.running.append(lane)
        if lane.not_before > self.now:  # resumed while the provider's Retry-After holds: the lane waits first
            lane.next_ms, lane.sleeping = lane.not_before, True
        else:
            self.begin_attempt(lane)
        self.next_hedge_ms, self.overdue_ms = None, math.inf
        if self.plan.mode == "hedged":
            delay = self.state.delay_ms(lane.plan.name, lane.plan.hedge_delay_ms)
            self.next_hedge_ms, self.overdue_ms = self.now + delay, self.now + overdue_after(delay)

    def over_cost_cap(self) -> bool:
        return over_cost_cap(self.extra_cost + self.waiting[0].plan.cost_per_image, self.state.policy.max_extra_cost)

    def may_hedge(self, overdue: bool) -> bool:
        if self.over_cost_cap() or not self.state.try_spend(overdue=overdue):
            return False
        self.extra_cost += self.waiting[0].plan.cost_per_image
        return True

    def begin_attempt(self, lane: _Lane) -> None:
        lane.attempts_done += 1
        lane.run_attempts += 1
        hedged = lane.hedged and lane.run_attempts == 1
        lane.permit = self.state.admit(lane.plan.name, self.start_ms + self.now)
        if lane.permit is None:  # the breaker refused: the lane ends now, nothing drawn, nothing paid
            skipped = SimAttempt(lane.plan.name, lane.attempts_done, hedged, self.now, self.now, "skipped", None, 0.0)
            lane.current = skipped
            lane.attempts.append(skipped)
            lane.next_ms, lane.sleeping = self.now, False
            return
        latency, failure = lane.model.draw(self.rng)
        budget = max(0.0, min(lane.plan.timeout_ms, self.plan.deadline_ms - self.now))
        hint = None
        if latency <= budget:
            outcome, end = ("success" if failure is None else "failed"), self.now + latency
            if failure is not None:
                hint = retry_after_hint(lane.model, failure, self.rng)
        else:
            outcome, failure, end = "failed", "timeout", self.now + budget
        cost = lane.plan.cost_per_image if outcome == "success" or failure == "timeout" else 0.0
        lane.current = SimAttempt(
            lane.plan.name, lane.attempts_done, hedged, self.now, end, outcome, failure, cost, retry_after_ms=hint
        )
        lane.attempts.append(lane.current)
        lane.next_ms, lane.sleeping = end, False

    def step_lane(self, lane: _Lane) -> None:
        """The lane's next event is now: a backoff ends, or an attempt ends."""
        if lane.sleeping:
            self.begin_attempt(lane)
            return
        attempt = lane.current
        assert attempt is not None
        lane.current = None
        if attempt.outcome == "skipped":  # not retried, not resumed: the breaker stays open for this race
            lane.finished = True
            return
        self.state.report(lane.permit, self.start_ms + self.now, attempt.outcome, attempt.failure_class)
        if attempt.outcome == "success":
            lane.finished = lane.won = True
            self.state.observe(lane.plan.name, attempt.end_ms - attempt.start_ms)
            return
        if attempt.failure_class not in NOT_THE_PROVIDERS_FAULT:  # no image within its timeout, for the order
            self.state.answers.record(lane.plan.name, lane.plan.timeout_ms)
        retryable = attempt.failure_class in RETRYABLE
        hint = attempt.retry_after_ms
        if retryable and not self.waiting:  # tenacity: retry? then the sleep (the provider's hint first), stop?
            if hint is not None:
                sleep = hint
            else:
                initial = self.plan.backoff_initial_ms
                backoff = initial * 2 ** (lane.run_attempts - 1) + self.rng.uniform(0, initial)
                sleep = min(backoff, self.plan.backoff_max_ms)
            if lane.attempts_done < lane.plan.retries + 1 and self.now + sleep < self.plan.deadline_ms:
                lane.next_ms, lane.sleeping = self.now + sleep, True
                return
        lane.finished = True
        # A hint ending past the deadline rules the provider out for this race, as in the engine.
        lane.not_before = self.now + hint if hint is not None else 0.0
        retries_left = lane.attempts_done < lane.plan.retries + 1
        lane.resumable = retryable and retries_left and lane.not_before < self.plan.deadline_ms

    def run(self) -> SimRace:
        plan = self.plan
        self.state.deposit()
        winner: _Lane | None = None
        deadline_hit = False
        if plan.mode == "parallel":
            while self.waiting:
                self.start_next(hedged=False)
        while winner is None and (self.running or self.waiting):
            if not self.running:
                self.start_next(hedged=False)
            hedge_at = math.inf
            if plan.mode == "hedged" and self.waiting and self.next_hedge_ms is not None:
                hedge_at = self.next_hedge_ms
            done: list[_Lane] = []
            while not done:  # asyncio.wait: until a lane ends, the hedge delay passes, or the deadline
                lane_at = min(lane.next_ms for lane in self.running)
                if min(lane_at, hedge_at) >= plan.deadline_ms:
                    self.now, deadline_hit = plan.deadline_ms, True
                    break
                if hedge_at < lane_at:  # (an exact tie has no defined order in the engine either)
                    self.now = hedge_at
                    break
                self.now = lane_at
                for lane in [lane for lane in self.running if lane.next_ms == lane_at]:
                    self.step_lane(lane)
                    if lane.finished:
                        done.append(lane)
            if deadline_hit:
                break
            if not done:  # the hedge delay passed without a success
                overdue = self.now >= self.overdue_ms
                if self.may_hedge(overdue):
                    self.start_next(hedged=True)
                elif not overdue and not self.over_cost_cap():
                    self.next_hedge_ms = self.overdue_ms  # refused for the reserve: ask again when overdue
                else:
                    # Out of budget, or over the cost cap: wait for the running lanes instead. (The engine
                    # asks the budget again every hedgeMinDelay; in a replay, races do not overlap, so no
                    # other request refills it meanwhile.)
                    self.next_hedge_ms = None
                continue
            for lane in done:
                self.running.remove(lane)
                if lane.won and winner is None:
                    winner = lane
                elif lane.resumable:
                    self.waiting.append(lane)
            if winner is None and self.waiting and (plan.mode != "parallel" or not self.running):
                self.start_next(hedged=False)  # a failure hands over at once
        cut = winner is None  # the deadline ended the race: the engine marks what it cut as a timeout
        for lane in self.running:  # losers and everything still running at the deadline are cancelled
            if lane.current is not None and lane.current.end_ms >= self.now and lane.current.outcome != "skipped":
                lane.current.outcome, lane.current.failure_class = "cancelled", "timeout" if cut else None
                lane.current.end_ms, lane.current.cost_usd = self.now, lane.plan.cost_per_image
                self.state.report(lane.permit, self.start_ms + self.now, "cancelled", None)
                # the engine remembers a loser as "at least this long" (Hedger.observe_at_least)
                elapsed = lane.current.end_ms - lane.current.start_ms
                self.state.observe(lane.plan.name, elapsed, ran_first=not lane.current.hedged)
        attempts = sorted((a for lane in self.lanes for a in lane.attempts), key=lambda a: a.start_ms)
        winner_name = winner.plan.name if winner else None
        return SimRace(winner_name, self.now, deadline_hit and winner is None, attempts, start_ms=self.start_ms)


def simulate_race(
    plan: ReplayPlan,
    models: Mapping[str, LatencyModel],
    rng: random.Random,
    state: HedgeState | None = None,
    *,
    start_ms: float = 0.0,
) -> SimRace:
    """Run one race of ``plan`` starting at ``start_ms`` on the simulated clock; ``state`` carries adaptive
    hedge delays, the budget and the breakers between races."""
    state = state if state is not None else HedgeState(plan.hedging, plan.breaker)
    return _Race(plan, models, rng, state, start_ms).run()
