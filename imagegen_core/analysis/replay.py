"""The timeout what-if: replay races under a candidate runtime config, drawing each attempt from
per-provider latency models (:mod:`.latency`), and report what that config would have done: success
rate, answer-time quantiles, extra provider calls and cost per image.

The races follow the engine's rules (:mod:`.racesim` spells them out): modes, per-attempt timeouts,
retries with backoff, failover, hedge delays (adaptive ones included), the hedge budget and the deadline
(``defaults.timeout`` minus ``race.finalizeReserve``, at most half of it). ``tests/test_replay.py``
checks the predictions against real races.

Circuit breakers are modelled (the config's ``breaker`` section, on a simulated clock): races are replayed
one after another, as one process serving them in turn would, each starting when the one before answered,
or at its own arrival time when arrivals are given and that is later (``gaps_ms``: the log's own gaps
between requests, bursts included; or ``interval_ms``: an even pace; a breaker's 30 s break skips far fewer
requests at one request a minute than back to back). Breakers start closed. ``Retry-After`` hints are
modelled as the log recorded them (since schema version 3; older attempts have none): a failure drawn from a
provider's model carries a hint drawn from those its logged failures of that class carried. Not modelled: the
time to store the winner (the finalize reserve covers it).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from ..config import BreakerConfig, RuntimeConfig
from ..errors import AnalysisError, AnalysisTypeError
from ..log.queries import percentile
from .latency import LatencyModel
from .racesim import HedgeState, SimRace, simulate_race

#: The longest pace ``replay`` takes: a week between requests (any slower and every break is long over).
MAX_INTERVAL_MS = 7 * 24 * 3600 * 1000.0


@dataclass(frozen=True, slots=True)
class LanePlan:
    """One provider's settings for the replay (milliseconds, USD)."""

    name: str
    timeout_ms: float
    retries: int
    hedge_delay_ms: float
    cost_per_image: float


@dataclass(frozen=True, slots=True)
class HedgePolicy:
    """Adaptive hedge delays and the hedge budget (``race.adaptiveHedge``, ``race.hedgeBudgetShare``, ...).

    ``budget_share=None`` means no budget and ``adaptive=False`` fixed delays: what a config without
    these keys means.
    """

    adaptive: bool = False
    quantile: float = 0.9
    min_samples: int = 20
    window: int = 200
    min_delay_ms: float = 50.0
    budget_share: float | None = None
    budget_burst: float = 5.0
    budget_reserve: float = 2.0
    max_extra_cost: float = math.inf

    @classmethod
    def from_config(cls, config: RuntimeConfig) -> HedgePolicy:
        """Read ``race.*`` by field name, so that configs which predate these keys still replay."""
        race = config.race.model_dump()
        share = race.get("hedge_budget_share")
        return cls(
            adaptive=bool(race.get("adaptive_hedge", False)),
            quantile=float(race.get("hedge_quantile", 0.9)),
            min_samples=int(race.get("hedge_min_samples", 20)),
            window=int(race.get("hedge_window", 200)),
            min_delay_ms=float(race.get("hedge_min_delay", 50)),
            budget_share=None if share is None else float(share),
            budget_burst=float(race.get("hedge_budget_burst", 5)),
            budget_reserve=float(race.get("hedge_budget_reserve", 2)),
            max_extra_cost=float(race.get("max_extra_cost_per_request", math.inf)),
        )


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """What the replay races: the race part of a runtime config."""

    lanes: tuple[LanePlan, ...]
    mode: str
    deadline_ms: float
    backoff_initial_ms: float
    backoff_max_ms: float
    hedging: HedgePolicy = HedgePolicy()
    #: ``race.order``: ``priority``, or ``fastest`` (re-ordered before each race by recent answer times).
    order: str = "priority"
    #: The ``breaker`` section; None: breakers are not modelled (every one stays closed).
    breaker: BreakerConfig | None = None

    @classmethod
    def from_config(cls, config: RuntimeConfig) -> ReplayPlan:
        """Enabled providers by priority, as :meth:`imagegen_core.planning.ProviderSet.plan` orders them
        (under ``race.order = "fastest"`` each simulated race re-orders them, as the engine does)."""
        race = config.race
        enabled = [(pc.priority, name, pc) for name, pc in config.providers.items() if pc.enabled]
        lanes = tuple(
            LanePlan(
                name=name,
                timeout_ms=pc.timeout,
                retries=pc.retries,
                hedge_delay_ms=pc.hedge_delay if pc.hedge_delay is not None else race.hedge_delay,
                cost_per_image=pc.cost_per_image,
            )
            for _, name, pc in sorted(enabled, key=lambda entry: entry[0])
        )
        total = config.defaults.timeout
        return cls(
            lanes=lanes,
            mode=race.mode,
            deadline_ms=max(0.0, total - min(race.finalize_reserve, total / 2)),
            backoff_initial_ms=race.backoff_initial,
            backoff_max_ms=race.backoff_max,
            hedging=HedgePolicy.from_config(config),
            order=str(race.model_dump().get("order", "priority")),
            breaker=config.breaker,
        )


def simulate(
    config: RuntimeConfig,
    models: Mapping[str, LatencyModel],
    *,
    requests: int = 1000,
    seed: int = 0,
    arrivals_ms: Sequence[float] | None = None,
) -> Iterator[SimRace]:
    """``requests`` races of ``config``, one after another in one simulated process (hedging memory, budget
    and breakers carry over); every enabled provider needs a model. ``arrivals_ms``: when each request
    arrives on the simulated clock (ascending, at least ``requests`` of them); its race starts then, or when
    the one before has answered if that is later (one process serving them in turn). By default each starts
    when the one before answered."""
    if not isinstance(config, RuntimeConfig):
        raise AnalysisTypeError(f"takes a RuntimeConfig (parse_config(document)), not {type(config).__name__}")
    if isinstance(requests, bool) or not isinstance(requests, int) or requests < 1:
        raise AnalysisError(f"requests must be a whole number of at least 1, not {requests!r}")
    plan = ReplayPlan.from_config(config)
    if not plan.lanes:
        raise AnalysisError("no provider is enabled in this config: nothing would race")
    missing = [lane.name for lane in plan.lanes if lane.name not in models]
    if missing:
        raise AnalysisError(f"no latency model for enabled provider(s) {', '.join(missing)}: add one or disable them")
    if arrivals_ms is not None and len(arrivals_ms) < requests:
        raise AnalysisError(f"{len(arrivals_ms)} arrival times for {requests} requests")
    rng = random.Random(seed)
    state = HedgeState(plan.hedging, plan.breaker)
    clock_ms = 0.0
    for index in range(requests):
        # Never before the race ahead has answered: the races are simulated one after another, so an earlier
        # start would let this one see that race's later verdicts (a breaker opened in its future).
        start_ms = max(arrivals_ms[index], clock_ms) if arrivals_ms is not None else clock_ms
        race = simulate_race(plan, models, rng, state, start_ms=start_ms)
        clock_ms = start_ms + race.answer_ms
        yield race


@dataclass(slots=True)
class ReplayReport:
    """What a config would have done over ``requests`` replayed races."""

    requests: int
    success_rate: float
    answer_p50_ms: float
    answer_p95_ms: float
    answer_p99_ms: float
    calls_per_request: float
    extra_calls_per_request: float
    timeouts_per_request: float
    skipped_per_request: float
    cost_per_request: float
    cost_per_image: float | None
    wins: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        """A flat dict (one row of a comparison table)."""
        row: dict[str, object] = {k: getattr(self, k) for k in self.__slots__ if k not in ("wins", "warnings")}
        row.update({f"win_{name}": share for name, share in self.wins.items()})
        return row


def replay(
    config: RuntimeConfig,
    models: Mapping[str, LatencyModel],
    *,
    requests: int = 2000,
    seed: int = 0,
    interval_ms: float | None = None,
    gaps_ms: Sequence[float] | None = None,
) -> ReplayReport:
    """Replay ``requests`` races of ``config`` and summarise them.

    Answer times cover every request (a failed race answers with the default image when it ends);
    ``extra_calls_per_request`` is the provider calls beyond each race's first, per request (never negative:
    a race that made no call, every provider's breaker open, has none; an attempt an open breaker refused is
    no call: ``skipped_per_request`` counts those); ``cost_per_image`` is the whole
    spend divided by the images produced. ``interval_ms``: requests arrive that far apart (see
    :func:`arrival_interval_ms`), for the breakers' clock; ``gaps_ms`` instead: they arrive as the log's did
    (:func:`arrival_gaps_ms`, see :func:`arrivals_from_gaps`); by default each follows the one before at once.
    """
    if interval_ms is not None and (
        isinstance(interval_ms, bool)
        or not isinstance(interval_ms, int | float)
        or not 0 <= interval_ms <= MAX_INTERVAL_MS
    ):
        raise AnalysisError(
            f"interval_ms must be None (back to back) or a number of ms from 0 to {MAX_INTERVAL_MS:g}, "
            f"not {interval_ms!r}"
        )
    if gaps_ms is not None and interval_ms is not None:
        raise AnalysisError("takes interval_ms (an even pace) or gaps_ms (the log's own gaps), not both")
    arrivals = None if interval_ms is None else [index * interval_ms for index in range(requests)]
    if gaps_ms is not None and isinstance(requests, int) and requests >= 1:
        arrivals = arrivals_from_gaps(gaps_ms, requests)
    races = list(simulate(config, models, requests=requests, seed=seed, arrivals_ms=arrivals))
    n = len(races)
    answers = [race.answer_ms for race in races]
    successes = sum(1 for race in races if race.winner is not None)
    skipped = sum(1 for race in races for a in race.attempts if a.outcome == "skipped")
    calls = sum(len(race.attempts) for race in races) - skipped
    # Calls beyond each race's first: a race whose every provider an open breaker refused made no call, and
    # ``calls / n - 1`` then went negative (-0.118 on a log with breaker skips), as if it had saved calls.
    extra = sum(max(0, sum(1 for a in race.attempts if a.outcome != "skipped") - 1) for race in races)
    cost = sum(a.cost_usd for race in races for a in race.attempts)
    timeouts = sum(1 for race in races for a in race.attempts if a.failure_class == "timeout")
    won = Counter(race.winner for race in races if race.winner is not None)
    wins = {name: count / successes for name, count in sorted(won.items())}
    return ReplayReport(
        requests=n,
        success_rate=successes / n if n else 0.0,
        answer_p50_ms=percentile(answers, 50) or 0.0,
        answer_p95_ms=percentile(answers, 95) or 0.0,
        answer_p99_ms=percentile(answers, 99) or 0.0,
        calls_per_request=calls / n if n else 0.0,
        extra_calls_per_request=extra / n if n else 0.0,
        timeouts_per_request=timeouts / n if n else 0.0,
        skipped_per_request=skipped / n if n else 0.0,
        cost_per_request=cost / n if n else 0.0,
        cost_per_image=cost / successes if successes else None,
        wins=wins,
        warnings=horizon_warnings(ReplayPlan.from_config(config), models),
    )


#: Requests replayed together at the log's own gaps (:func:`arrivals_from_gaps`): long enough for a burst and
#: the breaker it opens to play out, short enough that a replay samples many parts of the log.
GAP_RUN = 50


def arrivals_from_gaps(gaps_ms: Sequence[float], requests: int) -> list[float]:
    """Arrival times (ms, from 0) for ``requests`` races spaced as the log's requests were. An even pace at the
    median gap missed the bursts that open breakers: on a log of failures, 371 s apart, longer than the breaker's
    window, no breaker ever opened and the replay made 6 calls a request where the log made 1.66.

    With at least as many gaps as races, runs of :data:`GAP_RUN` consecutive gaps are taken from evenly spaced
    places in the log (by request, so busy hours weigh as much as the requests they held); with fewer, the gaps
    in order, over and over. ValueError for no gaps, or a gap that is negative or not a number."""
    gaps = [float(gap) for gap in gaps_ms]
    if not gaps:
        raise AnalysisError("gaps_ms is empty: a log with fewer than two requests has no gaps (use interval_ms=None)")
    if not all(0 <= gap <= MAX_INTERVAL_MS for gap in gaps):  # NaN fails this too
        raise AnalysisError(f"gaps_ms must be numbers of ms from 0 to {MAX_INTERVAL_MS:g}")
    count = len(gaps)
    if requests > count:
        picked = [gaps[index % count] for index in range(requests - 1)]
    else:
        runs = -(-(requests - 1) // GAP_RUN) or 1
        picked = [
            gaps[min(count - 1, run * count // runs + offset)] for run in range(runs) for offset in range(GAP_RUN)
        ][: requests - 1]
    arrivals = [0.0]
    for gap in picked:
        arrivals.append(arrivals[-1] + gap)
    return arrivals


def horizon_warnings(plan: ReplayPlan, models: Mapping[str, LatencyModel]) -> list[str]:
    """Where the candidate asks more of the log than it holds: a timeout beyond the longest attempt seen."""
    warnings = []
    for lane in plan.lanes:
        model = models.get(lane.name)
        reach = min(lane.timeout_ms, plan.deadline_ms)
        if model is not None and reach > model.horizon_ms:
            warnings.append(
                f"{lane.name}: the candidate waits up to {reach:.0f} ms but the log has no attempt longer than"
                f" {model.horizon_ms:.0f} ms; attempts beyond that are replayed as never answering"
            )
    return warnings
