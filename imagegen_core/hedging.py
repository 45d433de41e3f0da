"""When to hedge: an adaptive hedge delay per provider and a budget that caps how much hedging may add.

"The Tail at Scale" (Dean & Barroso): send a backup request once the first has been outstanding longer
than, say, the 95th-percentile latency of its kind, and cap the extra load. Here:

- :class:`LatencyWindow` keeps a provider's recent successful latencies in sorted order, so a quantile
  is one index away (adding and evicting are a bisect each).
- :class:`HedgeBudget` is a token bucket filled per *request*, not per second: every request adds
  ``share`` tokens and every hedge spends one, so over any long run hedges are at most ``share`` of
  requests (plus the bucket's small start), and when every provider is slow hedging stops amplifying load.
  When tokens are scarce they go to the longest waits: a hedge at its delay must leave a small reserve in
  the bucket (``race.hedgeBudgetReserve``), which only an *overdue* request (one that has waited
  ``OVERDUE_FACTOR`` times its delay) may spend; see :meth:`HedgeBudget.try_spend`.
- :class:`Hedger` combines both per ImageGen process; the race asks it for delays and permission, and
  reports every attempt's time to it (which also feeds :class:`~imagegen_core.ordering.AnswerTimes`, the
  start order of ``race.order = "fastest"``).
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from dataclasses import dataclass

from .ordering import AnswerTimes

#: A request that has waited this many times its hedge delay is *overdue*: past the delay, a slow answer
#: of the ordinary kind has mostly come by now, so what still waits is most likely a straggler, the
#: request a hedge is for. Measured (notes in ``bench/README.md``): 1.1 to 1.25 did alike, 1.5 worse.
OVERDUE_FACTOR = 1.25


def overdue_after(delay: float) -> float:
    """How long after its lane started a request becomes overdue, for a hedge ``delay`` (same unit)."""
    return delay * OVERDUE_FACTOR


def effective_quantile(quantile: float, budget_share: float | None) -> float:
    """The latency quantile to hedge at: ``quantile``, raised to what the hedge budget can afford.

    Hedging after the q-quantile of a provider's latency hedges about 1 - q of its requests. When that is
    more than the budget's ``budget_share``, the bucket runs dry, and the stragglers that arrive while it is
    empty (the requests hedging is for) go unhedged, while ordinary requests just past the delay used the
    tokens. So the quantile never goes below ``1 - budget_share`` (with the default share of 0.1, p90: the
    default quantile, which this leaves alone). ``budget_share=None`` means no budget (the replay's engines
    without one). Measured with ``bench/hedging.py`` (5 % stragglers): raising p90 further, to p92.5, cut
    extra calls from 8.6–9.2 % to 7.0–7.6 % but left as many stragglers unhedged and raised p99, so the
    floor is exactly what the budget refills, no more."""
    if budget_share is None:
        return quantile
    return min(0.999, max(quantile, 1.0 - budget_share))


def adaptive_delay(
    window: LatencyWindow | None,
    fixed: float,
    *,
    quantile: float,
    budget_share: float | None,
    min_samples: int,
    min_delay: float,
) -> float:
    """The hedge delay ``window`` calls for, in its own unit (the same as ``fixed`` and ``min_delay``): its
    :func:`effective_quantile` once it holds ``min_samples``, never below ``min_delay``, never above
    ``fixed`` (the operator's limit of patience); else ``fixed``. The engine (:meth:`Hedger.delay_s`, seconds)
    and the replay (``analysis/racesim.py``, milliseconds) both ask here."""
    if window is None or len(window) < min_samples:
        return fixed
    value = window.quantile(effective_quantile(quantile, budget_share))
    if value is None:
        return fixed
    # Capped by fixed: with stragglers near 1 - quantile of the mass, the quantile would jump to the
    # stragglers' own latency and hedging would stop exactly when it is needed.
    return min(fixed, max(min_delay, value))


class LatencyWindow:
    """The newest ``size`` latencies (seconds) of one provider, with nearest-rank quantiles."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._arrival: deque[float] = deque()
        self._sorted: list[float] = []

    def __len__(self) -> int:
        return len(self._arrival)

    def add(self, seconds: float) -> None:
        """Record one latency, evicting the oldest beyond ``size``."""
        self._arrival.append(seconds)
        bisect.insort(self._sorted, seconds)
        while len(self._arrival) > self.size:
            oldest = self._arrival.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, oldest)]

    def quantile(self, q: float) -> float | None:
        """The nearest-rank ``q`` quantile, or None when empty."""
        if not self._sorted:
            return None
        index = min(len(self._sorted) - 1, max(0, int(q * len(self._sorted) + 0.999999) - 1))
        return self._sorted[index]


class HedgeBudget:
    """A token bucket filled per request: ``deposit`` once per request, ``try_spend`` once per hedge.

    ``reserve``: tokens that hedges at their delay leave in the bucket for overdue requests. Why: at the
    defaults, p90 hedging asks for about the 10 % the bucket refills, so it runs low often; without a
    reserve a straggler that arrived then waited for a token behind requests just past p90 (which mostly
    answer on their own a moment later), some got none, and the hedged p99 of the unlucky runs rose by
    up to a third (``bench/hedging_virtual.py``: the engine on a virtual clock; notes in ``bench/README.md``).
    """

    def __init__(self, *, share: float, burst: float, reserve: float) -> None:
        self.share = share
        self.burst = burst
        self._reserve = reserve
        # Start full: a quiet process (an editor's console) may hedge its first requests; over a long run
        # the burst adds at most ``burst`` hedges to the ``share`` per request.
        self.tokens = burst
        self._lock = threading.Lock()  # ImageGen may serve several loops (async callers and the sync portal)

    def configure(self, *, share: float, burst: float, reserve: float) -> None:
        """New limits from a config change; the current balance is kept (capped)."""
        with self._lock:
            self.share, self.burst, self._reserve = share, burst, reserve
            self.tokens = min(self.tokens, burst)

    def deposit(self) -> None:
        """A request arrived: it earns ``share`` of a hedge."""
        with self._lock:
            self.tokens = min(self.burst, self.tokens + self.share)

    @property
    def reserve(self) -> float:
        """Tokens kept for overdue requests: as configured, but at most ``burst - 1`` (a bucket must be
        able to hold a hedge beyond its reserve)."""
        return min(self._reserve, max(0.0, self.burst - 1.0))

    def try_spend(self, *, overdue: bool) -> bool:
        """Take one hedge if the bucket holds one; a request that is not ``overdue`` must leave the
        :attr:`reserve` in it, so that scarce tokens go to the requests that have waited longest."""
        need = 1.0 if overdue else 1.0 + self.reserve
        with self._lock:
            if self.tokens >= need:
                self.tokens -= 1.0
                return True
            return False


def over_cost_cap(extra_cost: float, cap: float) -> bool:
    """Whether hedges costing ``extra_cost`` USD in one request exceed ``cap`` (with a hair of slack, so a cap
    equal to the sum of the prices is not lost to float rounding). The engine's rule and the replay's."""
    return extra_cost > cap + 1e-12


@dataclass(frozen=True, slots=True)
class HedgeSettings:
    """The race's hedging knobs (seconds), from ``race.*`` of the runtime config."""

    adaptive: bool = True
    quantile: float = 0.9
    min_samples: int = 20
    window: int = 200
    min_delay_s: float = 0.05
    budget_share: float = 0.1
    budget_burst: float = 5.0
    budget_reserve: float = 2.0
    max_extra_cost: float = 0.01

    def over_cost_cap(self, extra_cost: float) -> bool:
        """Whether hedges costing ``extra_cost`` USD in one request exceed ``max_extra_cost`` (see
        :func:`over_cost_cap`)."""
        return over_cost_cap(extra_cost, self.max_extra_cost)


class Hedger:
    """Adaptive hedge delays, the hedge budget and recent answer times of one process (shared by all its
    requests)."""

    def __init__(self, settings: HedgeSettings | None = None) -> None:
        self.settings = settings or HedgeSettings()
        s = self.settings
        self.budget = HedgeBudget(share=s.budget_share, burst=s.budget_burst, reserve=s.budget_reserve)
        self.answers = AnswerTimes()
        self._windows: dict[str, LatencyWindow] = {}
        self._lock = threading.Lock()

    def configure(self, settings: HedgeSettings) -> None:
        """Apply changed settings (hot config); recent latencies are kept unless the window shrinks."""
        if settings == self.settings:
            return
        with self._lock:
            if settings.window != self.settings.window:
                self._windows = {}
            self.settings = settings
        self.budget.configure(share=settings.budget_share, burst=settings.budget_burst, reserve=settings.budget_reserve)

    def over_cost_cap(self, extra_cost: float) -> bool:
        """See :meth:`HedgeSettings.over_cost_cap` (the settings in force)."""
        return self.settings.over_cost_cap(extra_cost)

    def observe(self, provider: str, seconds: float) -> None:
        """A successful attempt of ``provider`` took ``seconds``."""
        self._add_latency(provider, seconds)
        self.answers.record(provider, seconds)

    def observe_at_least(self, provider: str, seconds: float, *, ran_first: bool = True) -> None:
        """An attempt of ``provider`` was cancelled after ``seconds`` (it lost to a hedge): its latency
        was at least that. Recording the lower bound keeps stragglers in the window; leaving them out
        would bias the quantile low and spend the hedge budget on requests that did not need it.
        ``ran_first``: no other attempt had started before it; only then does the bound say the provider
        was slower than the winner, which is what the start order needs."""
        self._add_latency(provider, seconds)
        if ran_first:
            self.answers.record(provider, seconds)

    def _add_latency(self, provider: str, seconds: float) -> None:
        with self._lock:
            window = self._windows.get(provider)
            if window is None:
                window = self._windows[provider] = LatencyWindow(self.settings.window)
            window.add(seconds)

    def observe_failure(self, provider: str, timeout_s: float) -> None:
        """An attempt of ``provider`` failed through its own fault: for the start order it gave no image
        within its whole timeout (the hedge delay only learns from answers that came)."""
        self.answers.record(provider, timeout_s)

    def delay_s(self, provider: str, fixed_s: float) -> float:
        """How long to wait on ``provider`` before hedging: see :func:`adaptive_delay`; ``fixed_s`` when the
        delay is not adaptive."""
        s = self.settings
        if not s.adaptive:
            return fixed_s
        with self._lock:
            return adaptive_delay(
                self._windows.get(provider),
                fixed_s,
                quantile=s.quantile,
                budget_share=s.budget_share,
                min_samples=s.min_samples,
                min_delay=s.min_delay_s,
            )

    def samples(self, provider: str) -> int:
        """How many recent successes of ``provider`` are known."""
        with self._lock:
            window = self._windows.get(provider)
            return len(window) if window else 0
