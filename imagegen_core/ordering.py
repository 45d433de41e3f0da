"""Start order for ``race.order = "fastest"``: the provider that has recently answered fastest starts first.

Priority is the editors' choice and stays the default. Where several providers are equally welcome (the
same model on two hosts, say), ``fastest`` lets the one that is quick *now* go first, so a slow primary
stops costing every request its latency, without hedging every request (which the hedge budget forbids).

Evidence per provider is its most recent answers, in seconds:

- a success: how long it took;
- an attempt cancelled while it was the first one running (it lost to a hedge, or hit the deadline): at
  least that long. A cancelled *hedge* says nothing: it started late, so its time only reflects when the
  first provider happened to finish;
- a failure that is the provider's (not ``content_rejected``, not ``invalid_request``): no image, so it
  counts as its whole per-attempt timeout.

A provider with fewer than ``min_samples`` answers is not yet measured and starts *before* the measured
ones (in priority order): optimism about the unknown is how a backup that has never been asked gets
measured at all. Measured providers follow by their recent median; ties keep priority order.
"""

from __future__ import annotations

import statistics
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import TypeVar

E = TypeVar("E")

#: Answers kept per provider: recent enough to follow a provider that slows down within a few requests.
RECENT_ANSWERS = 20
#: Answers needed before a provider's median is trusted.
MIN_SAMPLES = 3


class AnswerTimes:
    """Recent answer times per provider and the start order they imply; shared by a process's requests."""

    def __init__(self, *, recent: int = RECENT_ANSWERS, min_samples: int = MIN_SAMPLES) -> None:
        if not 1 <= min_samples <= recent:
            raise ValueError(f"min_samples must be between 1 and recent ({recent}), not {min_samples}")
        self.recent = recent
        self.min_samples = min_samples
        self._answers: dict[str, deque[float]] = {}
        self._lock = threading.Lock()  # one ImageGen may serve several loops

    def record(self, provider: str, seconds: float) -> None:
        """One answer of ``provider`` (a success's time, a lower bound, or a failure's timeout)."""
        with self._lock:
            answers = self._answers.get(provider)
            if answers is None:
                answers = self._answers[provider] = deque(maxlen=self.recent)
            answers.append(seconds)

    def typical_s(self, provider: str) -> float | None:
        """The median of ``provider``'s recent answers, or None while fewer than ``min_samples`` are known."""
        with self._lock:
            answers = self._answers.get(provider)
            if answers is None or len(answers) < self.min_samples:
                return None
            return statistics.median(answers)

    def fastest_first(self, entrants: Sequence[E], name: Callable[[E], str]) -> list[E]:
        """``entrants`` (given in priority order) re-ordered: the unmeasured ones first, keeping their order,
        then the measured ones by recent median (ties keep their order)."""
        unmeasured: list[E] = []
        measured: list[tuple[float, int, E]] = []
        for index, entrant in enumerate(entrants):
            typical = self.typical_s(name(entrant))
            if typical is None:
                unmeasured.append(entrant)
            else:
                measured.append((typical, index, entrant))
        measured.sort(key=lambda m: (m[0], m[1]))
        return unmeasured + [entrant for _, _, entrant in measured]
