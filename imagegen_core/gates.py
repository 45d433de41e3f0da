"""How the race consults circuit breakers: a small async interface over :class:`CircuitBreakers`, with one
adapter for in-process use and one that keeps SQLite work off the event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, Protocol

from .breaker import BreakerRecord, CircuitBreakers, Denial, Permit, UpdateFn
from .errors import FailureClass, LogDatabaseError
from .forking import renew_after_fork
from .log.outage import ReadPause
from .log.writer import LogWriter
from .outcome_order import OutcomeOrder

#: Without ``read_in_place``, a copy replays at most this many of this process's queued records per acquire;
#: with more (the writer held up for long), acquire decides on the stored record alone, as before the copy.
MAX_REPLAYED_RECORDS = 1000


class BreakerGate(Protocol):
    """The race's view of the circuit breakers."""

    async def acquire(self, provider: str) -> Permit | Denial: ...

    def record(
        self,
        permit: Permit,
        *,
        outcome: Literal["success", "failure", "ignored"],
        failure_class: FailureClass | None,
        detail: str = "",
    ) -> None:
        """Report how a permitted call ended; ``detail`` (the error) explains a resulting transition."""
        ...


def judged_alone(outcome: str, failure_class: FailureClass | None) -> bool:
    """Whether an outcome reaches the breaker at once rather than in start order (:mod:`.outcome_order`): a
    failure that opens it by itself (auth, billing) does not wait for the calls started before it."""
    return outcome == "failure" and failure_class is not None and failure_class.trips_breaker_at_once


class DirectBreakerGate:
    """A BreakerGate calling :class:`CircuitBreakers` in the event-loop thread (in-memory store, tests).
    Outcomes reach the breakers in the order their calls started (:mod:`.outcome_order`)."""

    def __init__(self, breakers: CircuitBreakers) -> None:
        self.breakers = breakers
        self.order = OutcomeOrder(breakers.clock, lease_s=breakers.probe_lease_s)

    async def acquire(self, provider: str) -> Permit | Denial:
        decision = self.breakers.acquire(provider)
        if isinstance(decision, Permit):
            self.order.started(decision)
        return decision

    def record(
        self,
        permit: Permit,
        *,
        outcome: Literal["success", "failure", "ignored"],
        failure_class: FailureClass | None,
        detail: str = "",
    ) -> None:
        at = self.breakers.clock()  # when it ended, though it may reach the breaker later

        def deliver() -> None:
            self.breakers.record(permit, outcome=outcome, failure_class=failure_class, detail=detail, at=at)

        self.order.ended(permit, deliver, at_once=judged_alone(outcome, failure_class))


class ThreadedBreakerGate:
    """The race's BreakerGate over breakers persisted in the log DB. Acquiring runs on a small thread
    pool — except, with ``read_in_place``, the plain read of a breaker that needs no state change (SQLite in
    WAL mode: a read never waits for writers, and is cheaper than the hop). With a ``change_token`` (the
    log's :meth:`~imagegen_core.log.db.LogDB.change_token`), a record read in place is reused until the token
    moves, which every process does after committing a state change. Recording is queued on the log writer.
    So nothing here blocks the event loop when another process holds the database's write lock.

    With ``read_in_place``, this process's own verdicts count at once: each record is also applied to a
    provisional copy of the breaker's record, which acquire consults while the writer has not yet applied
    the real one. Otherwise the request right after the one whose failure tripped the breaker could still
    call the provider, its verdict waiting in the writer's queue (seen in CI). Only a denial is taken from
    the copy: anything else is decided on the stored record, as before.

    Without ``read_in_place`` (PostgreSQL: a read is a network round trip, never on the loop) the same holds,
    worked out on the gate's thread instead: while a failure of this process is still queued, acquire reads
    the stored record there and replays this process's queued records on it, and honours a denial. Nothing
    is kept between acquires, so a reset committed meanwhile by another process is seen at once. A record
    the writer applies during that read makes the copy ambiguous (is it in the record or not?): the copy is
    then not used, which errs towards admitting, as the gate did before it had one."""

    def __init__(
        self,
        breakers: CircuitBreakers,
        writer: LogWriter,
        *,
        redact: Callable[[str], str],
        read_in_place: bool = False,
        change_token: Callable[[], bytes | None] = lambda: None,
    ) -> None:
        self.breakers = breakers
        self._writer = writer
        self._redact = redact  # transition reasons are stored and shown: no secret may reach them
        self._read_in_place = read_in_place
        self._change_token = change_token
        #: provider -> (token when read, record). Replaced whole, never mutated: safe across loops.
        self._records: dict[str, tuple[bytes, BreakerRecord | None]] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="imagegen-breaker")
        #: provider -> (the writer's future of this process's last record, the record as it will then be, the
        #: change token then). Replaced whole: safe across loops. Ignored once the future is done (the store
        #: has caught up) or the token moved (a change committed meanwhile, an admin's reset from another
        #: process perhaps, which the copy does not hold).
        self._provisional: dict[str, tuple[concurrent.futures.Future[Any], BreakerRecord, bytes | None]] = {}
        #: provider -> this process's records queued while no provisional copy was kept (successes; every record
        #: without ``read_in_place``), which the stored record may not hold yet: a copy started on it replays
        #: them. Oldest first; the writer applies records in order, so the applied ones are dropped from the
        #: front, at O(1) per record (rescanning the whole backlog on each success cost O(backlog): 450 scans
        #: per request under load).
        self._unapplied: dict[str, deque[tuple[concurrent.futures.Future[Any], UpdateFn]]] = {}
        self._unapplied_lock = threading.Lock()  # the gate serves every loop of the process (sync portal too)
        #: provider -> the writer's future of this process's latest failure (without ``read_in_place``).
        self._last_failure: dict[str, concurrent.futures.Future[Any]] = {}
        #: While the log DB cannot be read, calls go through unchecked (see :meth:`acquire`).
        self._store_down = ReadPause(
            down="circuit breakers cannot be read from the log database; calls go unchecked: %s",
            back="circuit breakers are read from the log database again",
            name="imagegen-breaker-read",
        )
        #: Outcomes reach the breakers in the order their calls started (see :mod:`.outcome_order`).
        self.order = OutcomeOrder(breakers.clock, lease_s=breakers.probe_lease_s)
        renew_after_fork(self)

    def renew_after_fork(self) -> None:
        """In a forked child: the pool's threads are gone (its acquires waited for ever), and the parent's queued
        records are the parent's writer's, settled there, never here: decide on the stored records."""
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="imagegen-breaker")
        self._unapplied_lock = threading.Lock()
        self._provisional, self._unapplied, self._last_failure = {}, {}, {}

    def _queued_copy(self, provider: str, token: bytes | None) -> BreakerRecord | None:
        """The provisional copy of ``provider``'s record, while it is still ahead of the stored one."""
        ahead = self._provisional.get(provider)
        if ahead is None or ahead[0].done() or ahead[2] != token:
            return None
        return ahead[1]

    async def acquire(self, provider: str) -> Permit | Denial:
        """Ask the breaker; while the log DB cannot be read (a PostgreSQL restart, a server that does not answer
        within :data:`~.log.outage.READ_WAIT_S`), the call is let through unchecked: the breakers protect the
        providers, and an outage of the log must not stop every request. The outcome is still recorded (queued
        on the writer, which retries)."""
        decision = await self._checked(provider)
        if isinstance(decision, Permit):
            self.order.started(decision)
        return decision

    async def _checked(self, provider: str) -> Permit | Denial:
        if self._store_down.paused:
            return self._unchecked(provider)
        try:
            decision = await self._acquire(provider)
        except LogDatabaseError as exc:
            self._store_down.failed(exc)
            return self._unchecked(provider)
        self._store_down.worked()
        return decision

    def _unchecked(self, provider: str) -> Permit:
        return Permit(provider, probe=False, token=self.breakers.clock())

    async def _acquire(self, provider: str) -> Permit | Denial:
        if not self._read_in_place:
            failure = self._last_failure.get(provider)
            if failure is not None and not failure.done():
                with self._unapplied_lock:
                    queued = self._unapplied.get(provider, deque())
                    snapshot = tuple(queued) if len(queued) <= MAX_REPLAYED_RECORDS else None
                if snapshot is not None:
                    return await self._store_down.read(lambda: self._acquire_after_own_failure(provider, snapshot))
            # Bounded: a server that hangs must not hold the call (and its request) past the deadline.
            return await self._store_down.read(lambda: self.breakers.acquire(provider))
        ahead = self._queued_copy(provider, self._change_token())
        if ahead is not None:
            early = self.breakers.decide_without_write(provider, ahead)
            if isinstance(early, Denial):
                return early
        decision = self.breakers.decide_without_write(provider, self._record(provider))
        if decision is not None:
            return decision
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.breakers.acquire, provider)

    def _acquire_after_own_failure(
        self, provider: str, queued: tuple[tuple[concurrent.futures.Future[Any], UpdateFn], ...]
    ) -> Permit | Denial:
        """Acquire on the gate's thread, first denying what the stored record plus this process's queued
        records (``queued``, oldest first) deny; see the class docstring."""
        pending = [(future, step) for future, step in queued if not future.done()]
        record = self.breakers.store.get(provider)
        if pending and not any(future.done() for future, _ in pending):  # none applied during the read
            for _, step in pending:
                record, _ = step(record)
            early = self.breakers.decide_without_write(provider, record)
            if isinstance(early, Denial):
                return early
        return self.breakers.acquire(provider)

    def _remember(self, provider: str, applied: concurrent.futures.Future[Any], step: UpdateFn) -> None:
        """Keep a queued record for a later copy, letting go of those the writer has applied."""
        with self._unapplied_lock:
            queued = self._unapplied.setdefault(provider, deque())
            while queued and queued[0][0].done():
                queued.popleft()
            queued.append((applied, step))

    def _record(self, provider: str) -> BreakerRecord | None:
        token = self._change_token()
        known = self._records.get(provider)
        if token is not None and known is not None and known[0] == token:
            return known[1]
        record = self.breakers.store.get(provider)
        if token is not None:  # the token read before the record: a change committed since moves it again
            self._records[provider] = (token, record)
        return record

    def record(
        self,
        permit: Permit,
        *,
        outcome: Literal["success", "failure", "ignored"],
        failure_class: FailureClass | None,
        detail: str = "",
    ) -> None:
        # Stamped now, not when it reaches the breaker (after the calls started before it, see .outcome_order)
        # nor when the writer thread gets to it (later, if another process holds the database's write lock): a
        # break runs from the failure that opened it, and the window holds the calls' own times.
        at = self.breakers.clock()
        self.order.ended(
            permit,
            lambda: self._deliver(permit, outcome, failure_class, detail, at),
            at_once=judged_alone(outcome, failure_class),
        )

    def _deliver(
        self,
        permit: Permit,
        outcome: Literal["success", "failure", "ignored"],
        failure_class: FailureClass | None,
        detail: str,
        at: float,
    ) -> None:
        """Queue an outcome for the stored breaker and keep this process's copy of it ahead of the store."""
        step = self.breakers.record_step(
            permit, outcome=outcome, failure_class=failure_class, detail=self._redact(detail), at=at
        )
        if step is None:
            return
        applied = self._writer.submit(self.breakers.store.update, permit.provider, step)
        if not self._read_in_place:
            self._remember(permit.provider, applied, step)
            if outcome == "failure":
                self._last_failure[permit.provider] = applied
            return
        token = self._change_token()  # before the store is read: a change committed since moves it again
        ahead = self._queued_copy(permit.provider, token)
        if outcome != "failure" and ahead is None:
            # Only a failure can open a breaker: the healthy path reads nothing, it only remembers the step.
            self._remember(permit.provider, applied, step)
            return
        # The copy builds on the previous one while that is still queued (records apply in order), else on the
        # stored record plus this process's records still queued before this one (successes left out, the copy
        # would overstate the failure ratio and deny what the stored record will admit). Which are still queued
        # is looked at before the read: one applied in between counts twice (a success: errs towards admitting).
        base: BreakerRecord | None
        if ahead is not None:
            base = ahead.copy()
        else:
            with self._unapplied_lock:
                queued = self._unapplied.pop(permit.provider, deque())
            earlier_steps = [fn for future, fn in queued if not future.done()]
            base = self.breakers.store.get(permit.provider)
            for earlier_step in earlier_steps:
                base, _ = earlier_step(base)
        provisional, _ = step(base)
        self._provisional[permit.provider] = (applied, provisional, token)

    def close(self) -> None:
        """Stop the acquire pool and the read threads."""
        self._pool.shutdown(wait=False)
        self._store_down.close()
