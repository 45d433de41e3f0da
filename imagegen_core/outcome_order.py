"""Outcomes of concurrent calls to a provider reach its circuit breaker in the order the calls started.

Why: a breaker judges a provider by the failure ratio of its last calls, and in a burst the calls that end
first are not a fair sample of them. A provider that fails 30 % of calls at once and answers the rest in
300 ms has, 5 ms into a burst of 40 calls, reported only failures: five of them reached ``minCalls`` at a ratio
of 1.00 and opened a breaker on a provider that was 70 % healthy (QA: 190 of 200 requests then got the default
image). Handed on in start order, an outcome waits for the calls that started before it, and the breaker sees
the burst's calls as they were made: about 30 % failures.

The cost: while an earlier call is still under way (at worst until its timeout), the outcomes of the calls
after it wait, so a provider that hangs on some calls and fails fast on others opens its breaker up to one
timeout later. Probes of a half-open breaker and failures that open it at once (auth, billing) are judged
alone and are handed on at once, as are the outcomes of calls this process did not see start.

Only this process's calls are ordered: outcomes from other processes sharing the breakers arrive as they come.
A call that never reports (a defect) stops holding the others back after ``lease_s``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .breaker import Permit
from .forking import renew_after_fork


@dataclass
class _Call:
    permit: Permit  # kept alive, so that its id() is not reused while it is listed
    started_at: float
    deliver: Callable[[], None] | None = None  # set once the call has ended: what hands its outcome on


class OutcomeOrder:
    """Hands outcomes on in the order their calls started (see the module's docstring). Thread-safe: the
    gates serve every event loop of the process."""

    def __init__(self, clock: Callable[[], float], *, lease_s: float) -> None:
        self._clock = clock
        self._lease_s = lease_s
        self._lock = threading.Lock()
        #: provider -> the calls under way or waiting to be handed on, by id(permit), in start order.
        self._calls: dict[str, OrderedDict[int, _Call]] = {}
        renew_after_fork(self)

    def renew_after_fork(self) -> None:
        """In a forked child the parent's calls never end here: forget them (and the parent's lock)."""
        self._lock = threading.Lock()
        self._calls = {}

    def started(self, permit: Permit) -> None:
        """A call permitted by ``permit`` starts now. Probes are not ordered (see the module's docstring)."""
        if permit.probe:
            return
        with self._lock:
            self._calls.setdefault(permit.provider, OrderedDict())[id(permit)] = _Call(permit, self._clock())

    def ended(self, permit: Permit, deliver: Callable[[], None], *, at_once: bool = False) -> None:
        """The call of ``permit`` ended: ``deliver`` hands its outcome to the breaker, now or once every call to
        the same provider that started before it has ended too. ``at_once``: an outcome judged alone."""
        with self._lock:
            calls = self._calls.get(permit.provider)
            call = calls.get(id(permit)) if calls is not None else None
            if calls is None or call is None or call.permit is not permit:
                deliver()  # not seen to start here: a probe, a forked parent's call
                return
            if at_once:
                del calls[id(permit)]
                deliver()
            else:
                call.deliver = deliver
            self._hand_on(calls)

    def waiting(self, provider: str) -> int:
        """How many ended calls to ``provider`` wait for an earlier one (for tests and status)."""
        with self._lock:
            return sum(1 for call in self._calls.get(provider, {}).values() if call.deliver is not None)

    def _hand_on(self, calls: OrderedDict[int, _Call]) -> None:
        """Deliver, oldest first, every ended call that no earlier call still under way holds back. Under the
        lock: the order of delivery is the point."""
        horizon = self._clock() - self._lease_s
        while calls:
            first = next(iter(calls.values()))
            if first.deliver is None and first.started_at > horizon:
                return  # under way: the calls after it wait
            calls.popitem(last=False)
            if first.deliver is not None:  # else a call that never reported: it holds nothing back any more
                first.deliver()
