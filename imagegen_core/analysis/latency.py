"""What one provider attempt does, as a distribution the what-if replay can draw from: how long it takes
and how it ends (success or a failure class).

Two kinds of model:

- :class:`EmpiricalModel`, built from logged attempts. Races cancel losers and timeouts cut slow attempts,
  so many logged durations are only lower bounds ("it had not answered after 1.2 s"). Treating them as
  answers would make providers look faster than they are; dropping them would too. The model uses the
  Kaplan–Meier estimator, which counts a cut-short attempt as "still running" up to its cut. Beyond the
  longest observed attempt the log says nothing: that remaining probability is drawn as "never answers"
  (pessimistic), and :attr:`EmpiricalModel.horizon_ms` tells the replay where that starts.
- :class:`ProfileModel`, a parametric profile (lognormal, a mixture for cold starts, a failure rate) for
  published behaviour or the fake provider's options.

A model may also say what a failure's Retry-After hint was (:func:`retry_after_hint`): the engine waits that
long instead of its backoff before calling the provider again, and the replay does the same.
"""

from __future__ import annotations

import bisect
import math
import numbers
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import AnalysisError
from ..log.analysis_queries import attempt_rows
from ..log.db import LogDB
from .frames import log_range, need_pandas, resolve_providers

if TYPE_CHECKING:
    import pandas as pd

#: How far below ``q`` a cumulative share may fall from rounding and still count as reaching it
#: (:meth:`EmpiricalModel.quantile_ms`).
QUANTILE_SLACK = 1e-9

#: ``(latency_ms, failure_class)``: ``failure_class`` None means success; ``math.inf`` means no answer.
Draw = tuple[float, str | None]


class LatencyModel(Protocol):
    """A provider's attempts as a distribution."""

    @property
    def horizon_ms(self) -> float:
        """Latencies beyond this are unknown to the model (``math.inf`` for parametric models)."""
        ...

    def draw(self, rng: random.Random) -> Draw:
        """One attempt: how long until it ends by itself, and how (None = success)."""
        ...


def retry_after_hint(model: LatencyModel, failure_class: str, rng: random.Random) -> float | None:
    """The Retry-After hint (ms) of a failure of ``failure_class`` just drawn from ``model``; None when the
    provider gave none. Optional for a model: one without a ``retry_after_ms(failure_class, rng)`` method
    never gives a hint (models written before hints were logged keep working)."""
    hint = getattr(model, "retry_after_ms", None)
    return None if hint is None else hint(failure_class, rng)


@dataclass(frozen=True, slots=True)
class Observation:
    """One logged attempt. ``censored``: it was cut short (cancelled, or timed out on our side), so its
    real latency is only known to exceed ``duration_ms``."""

    duration_ms: float
    failure_class: str | None = None
    censored: bool = False
    #: The failure's Retry-After hint, when the provider gave one.
    retry_after_ms: float | None = None


def observation_from_row(row: Mapping[str, Any]) -> Observation | None:
    """An attempt row from the log as an observation; None for attempts that tell nothing (running,
    skipped by the breaker, no duration)."""
    outcome, duration = row.get("outcome"), row.get("duration_ms")
    if duration is None or outcome not in ("success", "failed", "cancelled"):
        return None
    if outcome == "success":
        return Observation(float(duration))
    if outcome == "cancelled":
        return Observation(float(duration), censored=True)
    cls = str(row.get("failure_class") or "transient")
    if cls == "timeout":  # our own timeout cut the attempt: the provider might still have answered later
        return Observation(float(duration), censored=True)
    hint = row.get("retry_after_ms")
    return Observation(float(duration), cls, retry_after_ms=float(hint) if hint is not None else None)


class EmpiricalModel:
    """The Kaplan–Meier distribution of a provider's logged attempts (see the module docstring)."""

    def __init__(self, observations: Iterable[Observation]) -> None:
        obs = sorted(observations, key=lambda o: (o.duration_ms, o.censored))  # events before censorings
        if not obs:
            raise AnalysisError("an empirical latency model needs at least one observed attempt")
        #: failure class -> the Retry-After hints its failures carried (None: no hint), in duration order.
        self._hints: dict[str, list[float | None]] = {}
        for o in obs:
            if o.failure_class is not None and not o.censored:
                self._hints.setdefault(o.failure_class, []).append(o.retry_after_ms)
        self.count = len(obs)
        self.censored = sum(1 for o in obs if o.censored)
        at_risk = len(obs)
        survival = 1.0
        cumulative: list[float] = []
        atoms: list[Draw] = []
        i = 0
        while i < len(obs):
            t = obs[i].duration_ms
            j = i
            labels: dict[str | None, int] = {}
            while j < len(obs) and obs[j].duration_ms == t:
                if not obs[j].censored:
                    labels[obs[j].failure_class] = labels.get(obs[j].failure_class, 0) + 1
                j += 1
            events = sum(labels.values())
            if events:
                mass = survival * events / at_risk
                for label, n in labels.items():
                    atoms.append((t, label))
                    cumulative.append((cumulative[-1] if cumulative else 0.0) + mass * n / events)
                survival -= mass
            at_risk -= j - i
            i = j
        self._cumulative = cumulative
        self._atoms = atoms
        #: Probability that an attempt lasts beyond everything observed (drawn as "never answers").
        self.tail_mass = survival if survival > 1e-9 else 0.0
        #: The longest attempt in the log, ended or cut short.
        self.longest_seen_ms = obs[-1].duration_ms
        #: Where the model stops knowing: the longest observation, unless every attempt that long ended (then
        #: nothing is unknown: ``inf``, for the replay; show :attr:`longest_seen_ms` to people).
        self.horizon_ms = obs[-1].duration_ms if self.tail_mass else math.inf

    def draw(self, rng: random.Random) -> Draw:
        """A logged outcome, weighted by the Kaplan–Meier probabilities; ``inf`` for the unknown tail."""
        u = rng.random()
        index = bisect.bisect_right(self._cumulative, u)
        return self._atoms[index] if index < len(self._atoms) else (math.inf, None)

    def retry_after_ms(self, failure_class: str, rng: random.Random) -> float | None:
        """A hint drawn from those the logged failures of ``failure_class`` carried (hint-less ones count as
        None), independently of the latency: a provider's Retry-After follows its rate window, not how long
        the refused call took. Draws nothing from ``rng`` when no failure of the class had a hint."""
        hints = self._hints.get(failure_class, [])
        if all(hint is None for hint in hints):
            return None
        return hints[rng.randrange(len(hints))]

    def quantile_ms(self, q: float) -> float:
        """The latency below which a share ``q`` (0–1) of attempts end by themselves (``inf`` in the tail): the
        first atom whose cumulative share reaches ``q``."""
        # The cumulative shares are float sums: 20 steps of 1/40 add up to 0.5000000000000001, which put p50
        # one atom too high. Sums of at most millions of terms err far below QUANTILE_SLACK, and every atom of
        # a log that size weighs far above it, so the slack absorbs the rounding and never skips a real step.
        index = bisect.bisect_left(self._cumulative, q - QUANTILE_SLACK)
        return self._atoms[index][0] if index < len(self._atoms) else math.inf

    def outcome_shares(self) -> dict[str | None, float]:
        """Probability of each way an attempt ends by itself (None = success), censoring accounted for."""
        shares: dict[str | None, float] = {}
        previous = 0.0
        for (_, label), cum in zip(self._atoms, self._cumulative, strict=True):
            shares[label] = shares.get(label, 0.0) + cum - previous
            previous = cum
        return shares

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]]) -> EmpiricalModel:
        """Build from attempt rows (dicts with ``outcome``, ``failure_class``, ``duration_ms``)."""
        return cls(o for o in map(observation_from_row, rows) if o is not None)


# -- parametric profiles -------------------------------------------------------------------------------


def _check(owner: str, name: str, value: Any, *, low: float = 0.0, high: float = math.inf, above: bool = False) -> None:
    """ValueError, in one line naming the parameter, unless ``value`` is a number from ``low`` (excluded when
    ``above``) to ``high``: a negative or NaN latency replayed as negative answer times, not as an error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise AnalysisError(f"{owner}: {name} must be a number, not {value!r}")
    number = float(value)
    if number < low or (above and number == low) or number > high:
        bounds = f"{'above' if above else 'at least'} {low:g}" + ("" if high == math.inf else f" and at most {high:g}")
        raise AnalysisError(f"{owner}: {name} must be {bounds}, not {value!r}")


class Distribution(Protocol):
    """A latency distribution in milliseconds."""

    def sample_ms(self, rng: random.Random) -> float:
        """One latency."""
        ...


@dataclass(frozen=True, slots=True)
class Lognormal:
    """Latency whose logarithm is normal: ``median_ms * exp(N(0, sigma))`` (as the fake provider draws)."""

    median_ms: float
    sigma: float = 0.5

    def __post_init__(self) -> None:
        _check("Lognormal", "median_ms", self.median_ms, above=True, high=math.inf)
        _check("Lognormal", "sigma", self.sigma, high=1e3)  # exp(N(0, sigma)) of a larger sigma overflows

    def sample_ms(self, rng: random.Random) -> float:
        """One latency."""
        return self.median_ms * math.exp(rng.gauss(0.0, self.sigma))


@dataclass(frozen=True, slots=True)
class Uniform:
    """Latency uniformly between ``low_ms`` and ``high_ms``."""

    low_ms: float
    high_ms: float

    def __post_init__(self) -> None:
        _check("Uniform", "low_ms", self.low_ms, high=1e15)
        _check("Uniform", "high_ms", self.high_ms, low=float(self.low_ms), high=1e15)

    def sample_ms(self, rng: random.Random) -> float:
        """One latency."""
        return rng.uniform(self.low_ms, self.high_ms)


@dataclass(frozen=True, slots=True)
class Fixed:
    """Always the same latency."""

    ms: float

    def __post_init__(self) -> None:
        _check("Fixed", "ms", self.ms)  # inf is allowed: an attempt that never answers

    def sample_ms(self, rng: random.Random) -> float:
        """One latency."""
        return self.ms


@dataclass(frozen=True, slots=True)
class Mixture:
    """A weighted mix, e.g. warm starts plus a cold-start tail: ``Mixture(((0.9, warm), (0.1, cold)))``."""

    parts: Sequence[tuple[float, Distribution]]

    def __post_init__(self) -> None:
        for weight, _ in self.parts:
            _check("Mixture", "a weight", weight, high=1e300)
        if not self.parts or sum(w for w, _ in self.parts) <= 0:
            raise AnalysisError("Mixture: needs at least one part with a weight above 0")

    def sample_ms(self, rng: random.Random) -> float:
        """One latency from a part chosen by weight."""
        total = sum(w for w, _ in self.parts)
        u = rng.random() * total
        for weight, part in self.parts:
            u -= weight
            if u < 0:
                return part.sample_ms(rng)
        return self.parts[-1][1].sample_ms(rng)


@dataclass(frozen=True, slots=True)
class ProfileModel:
    """A parametric provider: latency from ``latency``; then a failure with probability ``failure_rate``
    (decided after the latency, as the fake provider does) of ``failure_class``, or of a class drawn from
    a ``{class: weight}`` mapping; a share ``hang_rate`` of attempts never answer. Every failure carries the
    Retry-After hint ``failure_retry_after_ms`` (None: none), as the fake provider's ``retryAfterS`` does."""

    latency: Distribution
    failure_rate: float = 0.0
    failure_class: str | Mapping[str, float] = "transient"
    hang_rate: float = 0.0
    horizon_ms: float = field(default=math.inf)
    failure_retry_after_ms: float | None = None

    def __post_init__(self) -> None:
        _check("ProfileModel", "failure_rate", self.failure_rate, high=1.0)
        _check("ProfileModel", "hang_rate", self.hang_rate, high=1.0)
        _check("ProfileModel", "horizon_ms", self.horizon_ms, above=True)
        if self.failure_retry_after_ms is not None:
            _check("ProfileModel", "failure_retry_after_ms", self.failure_retry_after_ms, high=1e15)
        if not isinstance(self.failure_class, str):
            for cls, weight in self.failure_class.items():
                _check("ProfileModel", f"failure_class weight of {cls!r}", weight, high=1e300)
            if sum(self.failure_class.values()) <= 0:
                raise AnalysisError("ProfileModel: failure_class needs a class with a weight above 0")
        if not callable(getattr(self.latency, "sample_ms", None)):
            raise AnalysisError(f"ProfileModel: latency must be a distribution (Fixed, ...), not {self.latency!r}")

    def retry_after_ms(self, failure_class: str, rng: random.Random) -> float | None:
        """``failure_retry_after_ms``, whatever the class."""
        return self.failure_retry_after_ms

    def draw(self, rng: random.Random) -> Draw:
        """One attempt."""
        if self.hang_rate and rng.random() < self.hang_rate:
            return (math.inf, None)
        latency = self.latency.sample_ms(rng)
        if not (self.failure_rate and rng.random() < self.failure_rate):
            return (latency, None)
        if isinstance(self.failure_class, str):
            return (latency, self.failure_class)
        u = rng.random() * sum(self.failure_class.values())
        for cls, weight in self.failure_class.items():
            u -= weight
            if u < 0:
                return (latency, cls)
        return (latency, list(self.failure_class)[-1])

    @classmethod
    def from_fake_options(cls, options: Mapping[str, Any]) -> ProfileModel:
        """The profile of a fake provider with these options (``latencyMs``, ``failureRate``, ...)."""
        spec = options.get("latencyMs", options.get("latency_ms", 0))
        latency: Distribution
        if isinstance(spec, int | float):
            latency = Fixed(float(spec))
        elif isinstance(spec, Mapping) and "lognormal" in spec:
            latency = Lognormal(float(spec["lognormal"]["medianMs"]), float(spec["lognormal"].get("sigma", 0.5)))
        elif isinstance(spec, Mapping) and "uniform" in spec:
            latency = Uniform(float(spec["uniform"][0]), float(spec["uniform"][1]))
        else:
            raise AnalysisError(f"unsupported latencyMs {spec!r}: use a number, lognormal or uniform")
        retry_after = options.get("retryAfterS")
        return cls(
            latency=latency,
            failure_rate=float(options.get("failureRate", options.get("failure_rate", 0.0))),
            failure_class=str(options.get("failureClass", options.get("failure_class", "transient"))),
            hang_rate=1.0 if options.get("hang") else 0.0,
            failure_retry_after_ms=float(retry_after) * 1000 if retry_after is not None else None,
        )


def models_from_log(
    db: LogDB,
    *,
    since: float | datetime | None = None,
    until: float | datetime | None = None,
    providers: str | Iterable[str] | None = None,
) -> dict[str, EmpiricalModel]:
    """One :class:`EmpiricalModel` per provider from the attempts logged in the range."""
    start, end = log_range(db, since, until)
    rows = attempt_rows(db, since=start, until=end, providers=resolve_providers(db, providers))
    by_provider: dict[str, list[Observation]] = {}
    for row in rows:
        observation = observation_from_row(row)
        if observation is not None:
            by_provider.setdefault(str(row["provider"]), []).append(observation)
    return {name: EmpiricalModel(obs) for name, obs in sorted(by_provider.items())}


def model_table(models: Mapping[str, EmpiricalModel], *, providers: Iterable[str] | None = None) -> pd.DataFrame:
    """What each provider's model knows, one row per provider (index ``provider``): attempts, how many were
    cut short, p50/p90/p99 (``inf`` where the log cannot see that far), the ``unknown tail`` (share of attempts
    the log cannot see the end of) and the ``longest seen ms`` attempt (its real length, also when every
    attempt ended: the replay's :attr:`~EmpiricalModel.horizon_ms` is ``inf`` then, which read as "infinitely
    long attempts" in a table)."""
    need_pandas()
    import pandas as pd

    wanted = None if providers is None else set(providers)
    rows = [
        {
            "provider": name,
            "attempts": model.count,
            "cut short": model.censored,
            "p50_ms": model.quantile_ms(0.5),
            "p90_ms": model.quantile_ms(0.9),
            "p99_ms": model.quantile_ms(0.99),
            "unknown tail": model.tail_mass,
            "longest seen ms": model.longest_seen_ms,
        }
        for name, model in models.items()
        if wanted is None or name in wanted
    ]
    columns = ["provider", "attempts", "cut short", "p50_ms", "p90_ms", "p99_ms", "unknown tail", "longest seen ms"]
    return pd.DataFrame(rows, columns=columns).set_index("provider")
