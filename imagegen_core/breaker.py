"""Per-provider circuit breakers: a pure state machine over a pluggable, shared state store.

::

    CLOSED ──(failure ratio ≥ threshold over ≥ minCalls, or auth/billing)──▶ OPEN
    OPEN ──(first acquire after the break)──▶ HALF_OPEN (that call is a probe)
    HALF_OPEN ──(halfOpenProbes probe successes)──▶ CLOSED      HALF_OPEN ──(probe failure)──▶ OPEN (longer)
    any ──admin──▶ FORCED_OPEN (denies until reset) · DISABLED (admits all, records nothing) · CLOSED (reset)

State lives in a :class:`BreakerStore` so that the CLI, the API and the console, in separate processes, see
the same breaker; every state-changing step is one atomic :meth:`BreakerStore.update`. The clock is injected
and is wall-clock seconds, because timestamps are compared across processes. No SQL here (``log/`` has it).
"""

from __future__ import annotations

import enum
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from .config import BreakerConfig, RuntimeConfig
from .errors import FailureClass, clip

#: Where breaker transitions are logged (a child of "imagegen": same handlers; the drill quiets it, since its
#: breakers open on purpose in a scratch log).
TRANSITION_LOG = logging.getLogger("imagegen.breaker")

#: Transition reasons and details are stored and shown in consoles: keep them to one short line.
MAX_REASON_CHARS = 200

#: How far the clock may read before a stored time (a break's start, a probe's lease) before that time is taken
#: for one from a clock since stepped back. Machines sharing a PostgreSQL log disagree by less. Without this, a
#: clock stepped back an hour (NTP correcting a clock that ran fast, a VM restored from a snapshot) held a 30 s
#: break open for that hour, and a dead probe's lease as long (QA chaos: libfaketime, +1 h then +0).
CLOCK_STEP_BACK_S = 60.0

#: A half-open probe holds its slot until it reports, or for this many times its attempt's longest duration (see
#: :func:`probe_lease_s`): room for our processing after the provider's part and for a slow write of the
#: outcome. A probe that outlives its lease only lets one more in; one whose process died frees its slot then.
PROBE_LEASE_FACTOR = 3.0
#: ... and never less than this: clocks of machines sharing a log disagree by a little, and a very short lease
#: would let a second probe in beside every slow one.
PROBE_LEASE_MIN_S = 10.0
#: The lease of a provider with no derived one (breakers built without a runtime config, a provider since
#: removed from it): the longest a default deadline allows an attempt, with room to spare.
DEFAULT_PROBE_LEASE_S = 120.0


def probe_lease_s(*, timeout_ms: int, deadline_ms: int) -> float:
    """How long a half-open probe to a provider holds its slot, in seconds: :data:`PROBE_LEASE_FACTOR` times its
    attempt's longest duration (the provider's per-attempt ``timeout``, cut by the request's deadline), at least
    :data:`PROBE_LEASE_MIN_S`. QA: with a fixed 120 s, a probe whose process died kept a provider with a 10 s
    timeout from its next probe for two minutes."""
    longest_attempt_s = min(timeout_ms, deadline_ms) / 1000
    return max(PROBE_LEASE_MIN_S, PROBE_LEASE_FACTOR * longest_attempt_s)


def probe_leases(config: RuntimeConfig) -> dict[str, float]:
    """:func:`probe_lease_s` of each provider of ``config``, under its ``defaults.timeout``."""
    deadline_ms = config.defaults.timeout
    return {
        name: probe_lease_s(timeout_ms=entry.timeout, deadline_ms=deadline_ms)
        for name, entry in config.providers.items()
    }


class BreakerState(enum.StrEnum):
    """Where a provider's breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"


@dataclass
class BreakerRecord:
    """The stored state of one provider's breaker.

    ``window`` holds ``(timestamp, failed)`` of recent counted calls; ``trips`` counts consecutive trips and
    grows the break; ``probes_in_flight`` holds the lease timestamps of admitted half-open probes;
    ``fresh_since``: when the window was last cleared (a reset, a probe's success): calls admitted before it
    are not counted.
    """

    provider: str
    state: BreakerState = BreakerState.CLOSED
    window: list[tuple[float, bool]] = field(default_factory=list)
    trips: int = 0
    opened_at: float | None = None
    opened_until: float | None = None
    probes_in_flight: list[float] = field(default_factory=list)
    probe_successes: int = 0
    updated_at: float = 0.0
    last_reason: str = ""
    fresh_since: float | None = None

    def copy(self) -> BreakerRecord:
        """An independent copy (the lists copied, their immutable entries shared): what ``copy.deepcopy``
        gives, at a twentieth of its cost; the race's gate copies a record per call after a failure."""
        return replace(self, window=list(self.window), probes_in_flight=list(self.probes_in_flight))

    def to_json(self) -> str:
        """Serialise for storage (see :meth:`from_json`). Field by field: ``dataclasses.asdict`` deep-copies
        every window entry, and this runs once per provider call."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> BreakerRecord:
        """Parse what :meth:`to_json` wrote; unknown keys (from a newer version) are ignored."""
        data: dict[str, Any] = json.loads(text)
        known = {name for name in cls.__dataclass_fields__}
        data = {key: value for key, value in data.items() if key in known}
        data["state"] = BreakerState(data.get("state", BreakerState.CLOSED))
        data["window"] = [(float(ts), bool(failed)) for ts, failed in data.get("window", [])]
        data["probes_in_flight"] = [float(ts) for ts in data.get("probes_in_flight", [])]
        return cls(**data)


@dataclass(frozen=True)
class Transition:
    """One state change of one provider's breaker, with a human reason."""

    provider: str
    from_state: BreakerState
    to_state: BreakerState
    reason: str
    at: float


UpdateFn = Callable[[BreakerRecord | None], tuple[BreakerRecord, list[Transition]]]


class BreakerStore(Protocol):
    """Where breaker records live. ``update`` must be atomic across every user of the same store."""

    def get(self, provider: str) -> BreakerRecord | None:
        """The stored record, or None when the provider has none yet."""

    def all(self) -> dict[str, BreakerRecord]:
        """Every stored record by provider."""

    def update(self, provider: str, fn: UpdateFn) -> BreakerRecord:
        """Atomically read the record, apply ``fn``, persist its record and append its transitions.

        ``fn`` must be free of side effects: a store may call it again after a lost race."""

    def transitions(self, provider: str | None = None, limit: int = 100) -> list[Transition]:
        """Recorded transitions, newest first, optionally for one provider."""


class InMemoryBreakerStore:
    """A :class:`BreakerStore` for tests and single-process use; a lock makes ``update`` atomic. ``announce``:
    whether transitions go to the process's log (:func:`log_transitions`); not for simulated breakers (QA: a
    notebook's replay printed "circuit breaker open ... reset it" warnings of breakers nobody has)."""

    def __init__(self, *, announce: bool = True) -> None:
        self._announce = announce
        self._lock = threading.Lock()
        # Each record is copied in and out (BreakerRecord.copy), so callers never share mutable state. Not kept
        # as JSON, as it once was: the replay's simulator asks for a record several times per simulated call,
        # and decoding and encoding JSON were 60 % of a replay's time.
        self._records: dict[str, BreakerRecord] = {}
        self._transitions: list[Transition] = []

    def get(self, provider: str) -> BreakerRecord | None:
        """A copy of the stored record, or None."""
        with self._lock:
            record = self._records.get(provider)
            return record.copy() if record is not None else None

    def all(self) -> dict[str, BreakerRecord]:
        """A copy of every stored record by provider."""
        with self._lock:
            return {name: record.copy() for name, record in self._records.items()}

    def update(self, provider: str, fn: UpdateFn) -> BreakerRecord:
        """Apply ``fn`` (to a copy) under the lock and keep its record and transitions."""
        with self._lock:
            stored = self._records.get(provider)
            record, transitions = fn(stored.copy() if stored is not None else None)
            self._records[provider] = record.copy()
            self._transitions.extend(transitions)
        if self._announce:
            log_transitions(record, transitions)
        return record.copy()

    def transitions(self, provider: str | None = None, limit: int = 100) -> list[Transition]:
        """Recorded transitions, newest first."""
        with self._lock:
            found = [t for t in reversed(self._transitions) if provider is None or t.provider == provider]
        return found[:limit]


@dataclass(frozen=True)
class Permit:
    """Leave to call the provider; hand it back to :meth:`CircuitBreakers.record`. Truthy.

    ``token`` is the acquire time, which is also the probe's lease timestamp when ``probe`` is true.
    """

    provider: str
    probe: bool
    token: float

    def __bool__(self) -> bool:
        return True


@dataclass(frozen=True)
class Denial:
    """The breaker refused the call. Falsy. ``retry_at`` is when asking again may succeed, if known; ``reason``
    why the breaker opened (its last transition's)."""

    provider: str
    state: BreakerState
    retry_at: float | None
    reason: str = ""

    def __bool__(self) -> bool:
        return False


def _clock_went_back(stamp: float | None, now: float) -> bool:
    """Whether ``stamp`` lies further ahead of ``now`` than clocks disagree: written before the clock stepped back."""
    return stamp is not None and stamp - now > CLOCK_STEP_BACK_S


@dataclass(frozen=True)
class BreakView:
    """An open breaker's break as admission treats it at one moment: what the CLI, the admin API and the console
    show, so that none shows a break running that admission already counts as over.

    ``until``: when the break ends (or ended), or None when the clock went back since it began: its stored end,
    still ahead of the clock, means nothing then. ``over``: admission admits the next call, as a half-open probe.
    ``reason``: why it is over (the words of the transition that call records), empty while it runs."""

    until: float | None
    over: bool
    reason: str = ""


def open_break(record: BreakerRecord, now: float) -> BreakView | None:
    """``record``'s break as :meth:`CircuitBreakers.acquire` decides at ``now`` (None unless the state is open).
    QA: after a clock step back a break counted as over, calls probing, while ``imagegen breakers`` and the admin
    API still showed it open until a time an hour ahead."""
    if record.state != BreakerState.OPEN:
        return None
    if _clock_went_back(record.opened_at, now):
        return BreakView(until=None, over=True, reason=_break_over_reason(record, now))
    until = record.opened_until
    if until is not None and now < until:
        return BreakView(until=until, over=False)
    return BreakView(until=until, over=True, reason=_break_over_reason(record, now))


def _break_over_reason(rec: BreakerRecord, now: float) -> str:
    """Why an open breaker's break is over at ``now``: it elapsed, or the clock went back before it began."""
    if _clock_went_back(rec.opened_at, now):
        return f"clock went back {(rec.opened_at or now) - now:.0f}s before the break began: the break counts as over"
    break_s = (rec.opened_until or now) - (rec.opened_at or now)
    return f"break of {break_s:g}s elapsed"


def _short(text: str) -> str:
    """One line, at most MAX_REASON_CHARS, so provider error bodies cannot bloat the event log."""
    return clip(" ".join(text.split()), MAX_REASON_CHARS)


class CircuitBreakers:
    """All providers' breakers over one store. Thread-safe and multi-process-safe through the store.

    ``config`` may be replaced at any time (hot config), by assignment or :meth:`configure`.
    """

    def __init__(
        self,
        store: BreakerStore,
        config: BreakerConfig,
        *,
        clock: Callable[[], float] = time.time,
        probe_lease_s: float = DEFAULT_PROBE_LEASE_S,
        probe_leases: Mapping[str, float] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        # A probe whose process died never reports; after its lease its slot is free again. Per provider (see
        # probe_leases()), this one for providers without their own.
        self.probe_lease_s = probe_lease_s
        self.probe_leases: Mapping[str, float] = dict(probe_leases or {})

    def configure(self, config: BreakerConfig, *, probe_leases: Mapping[str, float] | None = None) -> None:
        """Use new thresholds (and, when given, new per-provider probe leases) from now on; stored state is
        kept."""
        self.config = config
        if probe_leases is not None:
            self.probe_leases = dict(probe_leases)  # replaced whole: a reader never sees it half-changed

    def lease_s(self, provider: str) -> float:
        """How long a half-open probe to ``provider`` holds its slot without reporting (see :func:`probe_lease_s`)."""
        return self.probe_leases.get(provider, self.probe_lease_s)

    # -- calls ------------------------------------------------------------------------------------------

    def acquire(self, provider: str) -> Permit | Denial:
        """Ask to call ``provider``. A closed breaker costs one read and no write."""
        now = self.clock()
        current = self.store.get(provider)
        quick = self._decide_without_write(provider, current, now)
        if quick is not None:
            return quick
        decision: list[Permit | Denial] = []

        def step(record: BreakerRecord | None) -> tuple[BreakerRecord, list[Transition]]:
            decision.clear()
            rec = record or BreakerRecord(provider=provider, updated_at=now)
            quick = self._decide_without_write(provider, rec, now)
            if quick is not None:  # another caller changed the state since our read
                decision.append(quick)
                return rec, []
            transitions: list[Transition] = []
            if rec.state == BreakerState.OPEN:
                reason = _break_over_reason(rec, now)
                transitions.append(self._move(rec, BreakerState.HALF_OPEN, reason, now))
                rec.probes_in_flight, rec.probe_successes = [], 0
            rec.probes_in_flight = [*self._live_leases(rec, now), now]
            rec.updated_at = now
            decision.append(Permit(provider, probe=True, token=now))
            return rec, transitions

        self.store.update(provider, step)
        return decision[0]

    def decide_without_write(self, provider: str, record: BreakerRecord | None) -> Permit | Denial | None:
        """The answer :meth:`acquire` would give from ``record`` (as read from the store) when it needs no
        write, else None: for callers that read in place but must not wait for the write lock (an event loop
        over SQLite)."""
        return self._decide_without_write(provider, record, self.clock())

    def _decide_without_write(self, provider: str, rec: BreakerRecord | None, now: float) -> Permit | Denial | None:
        """The answer when it needs no state change, else None (the caller then goes through update)."""
        if rec is None or rec.state in (BreakerState.CLOSED, BreakerState.DISABLED):
            return Permit(provider, probe=False, token=now)
        if rec.state == BreakerState.FORCED_OPEN:
            return Denial(provider, rec.state, None, rec.last_reason)
        if rec.state == BreakerState.OPEN:
            if rec.opened_until is not None and now < rec.opened_until and not _clock_went_back(rec.opened_at, now):
                return Denial(provider, rec.state, rec.opened_until, rec.last_reason)
            return None
        live = self._live_leases(rec, now)
        if len(live) >= self.config.half_open_probes:
            return Denial(provider, rec.state, min(live) + self.lease_s(provider))
        return None

    def _live_leases(self, rec: BreakerRecord, now: float) -> list[float]:
        lease_s = self.lease_s(rec.provider)
        return [ts for ts in rec.probes_in_flight if now - ts < lease_s and not _clock_went_back(ts, now)]

    def record(
        self,
        permit: Permit,
        *,
        outcome: Literal["success", "failure", "ignored"],
        failure_class: FailureClass | None = None,
        detail: str = "",
        at: float | None = None,
    ) -> None:
        """Report how a permitted call ended (``at``: when, on :attr:`clock`; by default now).

        ``ignored`` (a cancelled loser) and failures whose class does not count for the breaker release a
        probe slot without a verdict. A failure without a class counts as the provider's fault.
        """
        step = self.record_step(permit, outcome=outcome, failure_class=failure_class, detail=detail, at=at)
        if step is not None:
            self.store.update(permit.provider, step)

    def record_step(
        self,
        permit: Permit,
        *,
        outcome: Literal["success", "failure", "ignored"],
        failure_class: FailureClass | None = None,
        detail: str = "",
        at: float | None = None,
    ) -> UpdateFn | None:
        """What :meth:`record` applies to the stored record (an :data:`UpdateFn`, free of side effects beyond
        the record it is given), or None when there is nothing to write."""
        if outcome == "failure" and failure_class is not None and not failure_class.counts_for_breaker:
            outcome = "ignored"
        if outcome == "ignored" and not permit.probe:
            return None  # nothing to count and no lease to release: skip the write
        now = self.clock() if at is None else at

        def step(record: BreakerRecord | None) -> tuple[BreakerRecord, list[Transition]]:
            rec = record or BreakerRecord(provider=permit.provider, updated_at=now)
            transitions: list[Transition] = []
            if rec.state == BreakerState.HALF_OPEN and permit.probe:
                if permit.token in rec.probes_in_flight:
                    rec.probes_in_flight.remove(permit.token)
                if outcome == "success":
                    rec.probe_successes += 1
                    if rec.probe_successes >= self.config.half_open_probes:
                        transitions.append(self._close(rec, "probe succeeded", now))
                elif outcome == "failure":
                    transitions.append(self._trip_on_failure(rec, failure_class, detail, now))
            elif rec.state == BreakerState.CLOSED and outcome != "ignored" and not _before_fresh(rec, permit):
                # Outcomes of calls admitted before a trip (non-probes while open or half-open) are stale, and so
                # are those of calls admitted before a reset (QA: a burst's last outcomes, written after an admin's
                # reset, filled the cleared window and opened the breaker again with no new call).
                transitions.extend(self._count(rec, outcome == "failure", failure_class, detail, now))
            rec.updated_at = now
            return rec, transitions

        return step

    def _count(
        self, rec: BreakerRecord, failed: bool, failure_class: FailureClass | None, detail: str, now: float
    ) -> list[Transition]:
        cfg = self.config
        rec.window.append((now, failed))
        oldest = now - cfg.window_duration / 1000
        rec.window = [entry for entry in rec.window if entry[0] > oldest][-cfg.window_size :]
        if not failed:
            return []  # a success never raises the failure ratio enough to matter; trip only on failures
        if failure_class is not None and failure_class.trips_breaker_at_once:
            return [self._trip_on_failure(rec, failure_class, detail, now)]
        failures = sum(1 for _, f in rec.window if f)
        ratio = failures / len(rec.window)
        if len(rec.window) >= cfg.min_calls and ratio >= cfg.failure_ratio:
            reason = f"failure ratio {ratio:.2f} over {len(rec.window)} calls >= {cfg.failure_ratio:.2f}"
            return [self._open(rec, self._grown_break_s(rec), reason, now)]
        return []

    def _trip_on_failure(
        self, rec: BreakerRecord, failure_class: FailureClass | None, detail: str, now: float
    ) -> Transition:
        """Open after an auth/billing failure (any state) or a failed half-open probe."""
        if failure_class is not None and failure_class.trips_breaker_at_once:
            reason = f"{failure_class.value} failure: {detail}" if detail else f"{failure_class.value} failure"
            return self._open(rec, self.config.billing_break_duration / 1000, reason, now)
        reason = f"probe failed: {detail}" if detail else "probe failed"
        return self._open(rec, self._grown_break_s(rec), reason, now)

    def _grown_break_s(self, rec: BreakerRecord) -> float:
        cfg = self.config
        grown = cfg.break_duration * cfg.break_multiplier ** min(rec.trips, 64)  # cap the exponent: no overflow
        return float(min(cfg.max_break_duration, grown)) / 1000

    def _open(self, rec: BreakerRecord, break_s: float, reason: str, now: float) -> Transition:
        transition = self._move(rec, BreakerState.OPEN, reason, now)
        rec.trips += 1
        rec.opened_at, rec.opened_until = now, now + break_s
        rec.probes_in_flight, rec.probe_successes = [], 0
        return transition

    def _close(
        self, rec: BreakerRecord, reason: str, now: float, to_state: BreakerState = BreakerState.CLOSED
    ) -> Transition:
        """Move to ``to_state`` with a clean slate: no window, no trips, no break, no probes."""
        transition = self._move(rec, to_state, reason, now)
        rec.window, rec.trips, rec.fresh_since = [], 0, now
        rec.opened_at = rec.opened_until = None
        rec.probes_in_flight, rec.probe_successes = [], 0
        return transition

    @staticmethod
    def _move(rec: BreakerRecord, to_state: BreakerState, reason: str, now: float) -> Transition:
        reason = _short(reason)
        transition = Transition(rec.provider, rec.state, to_state, reason, now)
        rec.state, rec.last_reason, rec.updated_at = to_state, reason, now
        return transition

    # -- admin ------------------------------------------------------------------------------------------

    def reset(self, provider: str, reason: str = "reset by admin") -> BreakerRecord:
        """Close the breaker with an empty window and no trips. Always logged, even when already closed."""
        return self._admin(provider, BreakerState.CLOSED, reason)

    def reset_all(self, reason: str = "reset by admin") -> list[ResetOutcome]:
        """Reset every provider that has a stored breaker, saying per provider what that did (by name).

        Not closed: closed with a clean slate, a transition logged with ``reason``. Closed with calls counted: the
        window is emptied, which is no state change, so no transition is recorded (QA: "closed → closed" rows
        buried the real ones); the process log says the window was cleared. Closed with nothing counted: left
        as it is."""
        outcomes = []
        for name, record in sorted(self.store.all().items()):
            if _pristine(record):  # read outside the lock: decided again inside it when there is work
                outcomes.append(ResetOutcome(name, ResetKind.CLEAN, record))
            else:
                outcomes.append(self._reset_one(name, reason))
        return outcomes

    def _reset_one(self, provider: str, reason: str) -> ResetOutcome:
        """What :meth:`reset_all` does for one provider, decided on the record read under the store's lock."""
        now = self.clock()
        kind = ResetKind.CLEAN
        counted: list[tuple[float, bool]] = []

        def step(record: BreakerRecord | None) -> tuple[BreakerRecord, list[Transition]]:
            nonlocal kind, counted
            rec = record or BreakerRecord(provider=provider, updated_at=now)
            counted = list(rec.window)
            if _pristine(rec):
                kind = ResetKind.CLEAN
                return rec, []
            if rec.state == BreakerState.CLOSED:  # trips are 0 in a closed breaker: only the window to clear
                kind = ResetKind.CLEARED
                rec.window, rec.updated_at, rec.fresh_since = [], now, now
                return rec, []
            kind = ResetKind.RESET
            return rec, [self._close(rec, reason, now)]

        record = self.store.update(provider, step)
        if kind is ResetKind.CLEARED:  # after the commit, as transitions are logged
            failed = sum(1 for _, f in counted if f)
            TRANSITION_LOG.info(
                "circuit breaker %s: closed; its window of %d counted call(s), %d failed, cleared (%s)",
                provider,
                len(counted),
                failed,
                reason,
            )
        return ResetOutcome(provider, kind, record)

    def force_open(self, provider: str, reason: str = "forced open by admin") -> BreakerRecord:
        """Deny every call until :meth:`reset`."""
        return self._admin(provider, BreakerState.FORCED_OPEN, reason)

    def disable(self, provider: str, reason: str = "disabled by admin") -> BreakerRecord:
        """Admit every call and count nothing until :meth:`reset`."""
        return self._admin(provider, BreakerState.DISABLED, reason)

    def _admin(self, provider: str, to_state: BreakerState, reason: str) -> BreakerRecord:
        now = self.clock()

        def step(record: BreakerRecord | None) -> tuple[BreakerRecord, list[Transition]]:
            rec = record or BreakerRecord(provider=provider, updated_at=now)
            return rec, [self._close(rec, reason, now, to_state)]

        return self.store.update(provider, step)

    # -- reading ----------------------------------------------------------------------------------------

    def state(self, provider: str) -> BreakerRecord:
        """The provider's record; a fresh closed one when nothing is stored."""
        return self.store.get(provider) or BreakerRecord(provider=provider)

    def open_break(self, record: BreakerRecord) -> BreakView | None:
        """:func:`open_break` of ``record`` now, on this breaker's clock (the one admission decides on)."""
        return open_break(record, self.clock())

    def snapshot(self) -> dict[str, BreakerRecord]:
        """Every stored record by provider."""
        return self.store.all()

    def transitions(self, provider: str | None = None, limit: int = 100) -> list[Transition]:
        """Recorded transitions, newest first."""
        return self.store.transitions(provider, limit)


class ResetKind(enum.StrEnum):
    """What :meth:`CircuitBreakers.reset_all` did to one breaker."""

    RESET = "reset"  # it was not closed: closed now, a transition recorded
    CLEARED = "cleared"  # closed with calls counted: the window emptied, no transition (the state did not change)
    CLEAN = "clean"  # closed with nothing counted: nothing to do


@dataclass(frozen=True)
class ResetOutcome:
    """One provider's part of :meth:`CircuitBreakers.reset_all`: what was done and the record after it."""

    provider: str
    kind: ResetKind
    record: BreakerRecord


def reset_summary(outcomes: list[ResetOutcome], known: Iterable[str] = ()) -> dict[ResetKind, list[str]]:
    """Provider names by what :meth:`CircuitBreakers.reset_all` did to them, sorted; ``known`` providers it did
    not see (no stored breaker: never called) count as clean."""
    summary: dict[ResetKind, set[str]] = {kind: set() for kind in ResetKind}
    for outcome in outcomes:
        summary[outcome.kind].add(outcome.provider)
    seen = {outcome.provider for outcome in outcomes}
    summary[ResetKind.CLEAN].update(name for name in known if name not in seen)
    return {kind: sorted(names) for kind, names in summary.items()}


def _before_fresh(record: BreakerRecord, permit: Permit) -> bool:
    """Whether ``permit``'s call was admitted before ``record``'s window was last cleared (wall-clock times,
    as every process stamps them)."""
    return record.fresh_since is not None and permit.token < record.fresh_since


def _pristine(record: BreakerRecord) -> bool:
    """Closed, with no call counted and no trip: what a reset would make of it already."""
    return record.state == BreakerState.CLOSED and not record.window and not record.trips


def denial_text(denial: Denial) -> str:
    """What a skipped attempt says: the state, until when and why, and how to end it early once the cause is
    fixed. "fal: circuit breaker open" alone left a user who had fixed their key failing for an hour."""
    text = f"{denial.provider}: circuit breaker {denial.state}"
    if denial.state in (BreakerState.OPEN, BreakerState.FORCED_OPEN):
        if denial.retry_at is not None:
            text += f" until {time.strftime('%H:%M:%S', time.gmtime(denial.retry_at))} UTC"
        if denial.reason:
            text += f" ({denial.reason})"
        fix = f"imagegen breakers reset {denial.provider}, or the console's Admin page"
        text += f"; once the cause is fixed, reset it ({fix})"
    return text


def log_transitions(record: BreakerRecord, transitions: list[Transition]) -> None:
    """Each transition as a line of the process's log: an opening as a WARNING that says until when, why and
    how to end it early (QA: a provider whose key was refused opened its breaker for an hour, and the server
    log showed only "failed" per request); a closing as INFO. The reasons are redacted before they get here."""
    for transition in transitions:
        if transition.to_state is BreakerState.OPEN:
            TRANSITION_LOG.warning(
                "%s",
                denial_text(Denial(transition.provider, BreakerState.OPEN, record.opened_until, transition.reason)),
            )
        else:
            TRANSITION_LOG.info(
                "circuit breaker %s: %s -> %s (%s)",
                transition.provider,
                transition.from_state,
                transition.to_state,
                transition.reason,
            )
