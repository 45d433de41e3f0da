"""Non-blocking writes to the log DB: one writer thread applies calls in order, so the event loop
never waits on the database (another process may hold SQLite's write lock for a while).

The thread drains its queue in batches: with a ``batch`` scope (:meth:`LogDB.batch <.db.LogDB.batch>`), what
has queued up since the last batch commits as one transaction, each call in a savepoint of its own so that a
failing call is undone alone. Under load that turns the five or so writes of a request into a fraction of a
commit; when idle a batch is a single write, applied at once.

A write (or batch) that finds the database locked (or unreachable) for longer than its busy timeout is retried
with backoff (tenacity), holding back the writes queued after it so their order is kept: a lock delays the log,
it does not lose rows. With a :class:`~.spill.LogSpill`, after :data:`SPILL_AFTER_S` of that the request log's
rows are kept on disk (where a killed process does not lose them), and so is every later one until the kept
rows could be written back (tried every :data:`WRITE_BACK_EVERY_S`, and at once when a process finds rows an
earlier one kept): the log stays complete and in order through an outage of any length. Without a spill, rows
are retried in memory for :data:`BUSY_RETRY_S`, then dropped with an error in the log, as are other writes
(breaker transitions) past the retries in either case.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextlib
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    stop_when_event_set,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from ..errors import LogDatabaseBusy, LogDatabaseError
from ..forking import renew_after_fork
from .backend import ItemScope
from .outage import BoundedCalls
from .spill import KEPT_CALLS, BoundCall, LogSpill

_log = logging.getLogger("imagegen.log")

#: How long a write keeps trying while the database stays locked by someone else, when nothing can keep its rows.
BUSY_RETRY_S = 120.0

#: With a spill, how long rows wait in memory for a locked or unreachable database before they are kept on disk
#: instead. Rows in memory are lost to a ``kill -9``, an OOM kill or a power cut; kept ones are not (QA: a process
#: killed while another held SQLite's write lock lost up to two minutes of rows). Two tries of a locked SQLite
#: (5 s each), so a short lock (a ``VACUUM``, a backup's copy) still delays rows rather than moving them to disk.
SPILL_AFTER_S = 10.0

#: While writes wait for a locked database, say so about this often.
BUSY_REPORT_EVERY_S = 10.0

#: How long closing waits for the queued writes: past the retries of a locked database, so only a database
#: that does not answer at all (a server that hangs; nothing is refused) makes a process give up its last rows.
CLOSE_WAIT_S = BUSY_RETRY_S + 10.0

#: Once closing, with a spill, a busy database is retried this long (not :data:`BUSY_RETRY_S`) before the rows
#: are kept: a process ends in seconds during an outage, and the next one on this home writes them back.
CLOSING_RETRY_S = 5.0

#: With ``write_wait_s`` (a server database), each write waits this long at most: a server that hangs, or a network
#: that drops packets, refuses nothing, and the writer would otherwise wait for it for good (its rows lost at exit).
WRITE_WAIT_S = 30.0

#: While rows are kept in the spill, try to write them back this often (newer rows are kept meanwhile).
WRITE_BACK_EVERY_S = 10.0

#: Not spilling, look this often (with the next batch) for rows another process kept here and could not write
#: back (it ended during the outage): they go in with this process's next rows, not at its next start.
LOOK_FOR_KEPT_EVERY_S = 60.0

#: At most this many queued calls share one transaction (bounds how long the write lock is held).
MAX_BATCH = 500

#: How many requests whose first row was lost the writer remembers, to drop their later rows quietly.
LOST_REQUESTS_KEPT = 10_000

#: A write failure counts (:attr:`LogWriter.failing`) this long after the last try that met it: a writer that
#: retries or spills tries again every few seconds and keeps it fresh, while one with nothing left to write has
#: no evidence either way, and a probe must not say "failing" for ever after the rows that met a full disk.
FAILURE_FRESH_S = 60.0

#: Opens one batch: a transaction whose scope factory isolates each call (see :meth:`LogDB.batch`).
BatchScope = Callable[[], AbstractContextManager[ItemScope]]


@dataclass(frozen=True, slots=True)
class WriteFailure:
    """The log database refused writes as a whole (locked, away, its disk full): what it said last (``message``),
    since when no write was taken (``since``) and when a write last met it (``at``), both ``time.time()``."""

    message: str
    since: float
    at: float


@dataclass(slots=True)
class _Call:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)


class LogWriter:
    """Runs write calls on a single dedicated thread, in submission order; with ``batch``, what queues up
    while a transaction commits is applied in the next one. ``busy_retry_s`` is how long a locked or unreachable
    database is retried before rows are kept in the ``spill`` (default :data:`SPILL_AFTER_S`) or, without one,
    dropped (default :data:`BUSY_RETRY_S`)."""

    def __init__(
        self,
        name: str = "imagegen-log-writer",
        *,
        batch: BatchScope | None = None,
        max_batch: int = MAX_BATCH,
        busy_retry_s: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        spill: LogSpill | None = None,
        write_back_every_s: float = WRITE_BACK_EVERY_S,
        write_wait_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._name = name
        self._clock = clock
        #: Set by the writer thread, read by probes: the last refusal since a write was last taken.
        self._failure: WriteFailure | None = None
        #: Writer thread only: requests whose first row was lost (:meth:`_drop_orphans`), the latest ones.
        self._lost_requests: collections.deque[str] = collections.deque(maxlen=LOST_REQUESTS_KEPT)
        self._batch = batch
        self._max_batch = max(1, max_batch)
        if busy_retry_s is None:
            busy_retry_s = SPILL_AFTER_S if spill is not None else BUSY_RETRY_S
        self._busy_retry_s = busy_retry_s
        self._sleep = sleep
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._last_report = 0.0  # writer thread only: seconds into the current wait of the last warning
        self._spill = spill
        self._write_back_every_s = write_back_every_s
        #: Each write on a thread of its own, waited for ``write_wait_s`` at most; one still running past that is
        #: abandoned (it may commit later: rows are written again, inserts skip the ones already there).
        self._bounded = (
            BoundedCalls(wait_s=write_wait_s, threads=1, name=f"{name}-bounded", noun="write")
            if write_wait_s is not None
            else None
        )
        #: Writer thread only: rows are kept in the spill, so every new one goes there too until they are back.
        self._spilling = False
        #: Writer thread only: kept rows the database refused (each said apart) in the write-back under way.
        self._kept_refused = 0
        #: Writer thread only (and :meth:`spill_from_now`): the database was away when last asked, and spilling
        #: ends only once it answers, even with nothing kept yet.
        self._known_away = False
        self._closing = threading.Event()
        #: Writer thread only: closing, a batch was given up after CLOSING_RETRY_S (the database away, and the
        #: spill not taking it either): the batches after it get one try each, not the same wait again.
        self._closing_gave_up = False
        self._next_look = 0.0  # writer thread only: when (monotonic) to look for rows another process kept
        #: Writer thread only, while spilling: when (monotonic) to try writing the kept rows back next. Not
        #: before every batch: each try of a database still away costs its timeout (5 s for a locked SQLite).
        self._next_write_back = 0.0
        #: What :meth:`close_soon` was asked to run after the last write.
        self._then: Callable[[], None] | None = None
        renew_after_fork(self)

    def renew_after_fork(self) -> None:
        """In a forked child: the writer thread is gone, so a new one starts with the child's first write (its
        rows were queued for ever). What the parent had queued is the parent's to write, not written twice."""
        self._queue = queue.SimpleQueue()
        self._lock = threading.Lock()  # may have been held by a thread that is gone
        self._thread = None
        closing, self._closing = self._closing, threading.Event()
        if closing.is_set():
            self._closing.set()

    # -- the caller's side ----------------------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Queue ``fn(*args, **kwargs)``; failures are logged, never raised into the caller. The future
        resolves once the call's transaction has committed."""
        call = self._enqueue(fn, args, kwargs)
        call.future.add_done_callback(_report_failure)
        return call.future

    async def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` on the writer thread and await its result once committed (exceptions propagate)."""
        return await asyncio.wrap_future(self._enqueue(fn, args, kwargs).future)

    async def flush(self) -> None:
        """Wait until everything submitted so far has been applied, kept in the spill, or given up on (each
        loss is logged as it happens): closing must not fail because the database did."""
        await asyncio.wrap_future(self._enqueue(_nothing, (), {}).future)

    def flush_sync(self, *, timeout_s: float | None = None) -> bool:
        """Blocking :meth:`flush` for synchronous code, waiting ``timeout_s`` at most (None: as long as it takes);
        whether everything queued before it was written (or kept in the spill). Past the wait the rows stay
        queued, written as they would have been."""
        future = self._enqueue(_nothing, (), {}).future
        try:
            future.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            return False
        return True

    @property
    def failing(self) -> WriteFailure | None:
        """Why writes fail, while they do: the database refused the last write that reached it as a whole
        (locked, away, its disk full), none was taken since, and that was under :data:`FAILURE_FRESH_S` ago.
        What ``/health`` reports: reads may work while every write is refused (a full disk)."""
        failure = self._failure
        if failure is None or self._clock() - failure.at > FAILURE_FRESH_S:
            return None
        return failure

    def note_refused(self, exc: LogDatabaseError) -> None:
        """Note that the database refused a write as a whole, found outside the writer (a check at start)."""
        self._note_refused(exc)

    def _note_refused(self, exc: LogDatabaseError) -> None:
        now = self._clock()
        earlier = self._failure
        self._failure = WriteFailure(str(exc), earlier.since if earlier is not None else now, now)

    def _note_taken(self, calls: list[_Call]) -> None:
        if any(call.fn is not _nothing for call in calls):  # a flush alone reaches no database
            self._failure = None

    def spill_from_now(self) -> None:
        """The database is known to be away (it could not be opened at start): keep rows in the spill from the
        first one, as after the retries, and try to write them back every :data:`WRITE_BACK_EVERY_S`, rather
        than hold each batch through :data:`BUSY_RETRY_S` of retries (and a command's exit through
        :data:`CLOSING_RETRY_S`) first. Without a spill, nothing changes. Called before the first row is
        submitted: at worst the writer thread, if running, makes one more try of the database."""
        if self._spill is None:
            return
        self._next_write_back = time.monotonic() + self._write_back_every_s
        self._known_away = self._spilling = True

    def write_back_kept(self) -> None:
        """Start writing back the rows an earlier process kept in the spill, if there are any, without waiting
        for this process's first row (an idle server would otherwise leave them there)."""
        with contextlib.suppress(OSError):  # unreadable: said when a row has to be kept there
            if self._spill is not None and self._spill.files():
                self.submit(_nothing)

    def begin_closing(self) -> None:
        """The process is ending: from now on, with a spill, a database that stays away is retried for
        :data:`CLOSING_RETRY_S`, not :data:`BUSY_RETRY_S`, before the rows are kept on disk. For an owner
        that flushes before :meth:`close` (a flush would otherwise wait out the whole retry window)."""
        self._closing.set()

    def close(self, *, timeout: float | None = CLOSE_WAIT_S) -> None:
        """Apply what is queued, then stop the thread; idempotent. Waits ``timeout`` at most (None: for ever):
        longer than a locked database is retried, so only a database that does not answer at all (a server
        that hangs) is given up on, with a warning, rather than keeping the process from ending. With a spill,
        a database still away after :data:`CLOSING_RETRY_S` gets its rows kept on disk instead."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        self._closing.set()
        atexit.unregister(self.close)
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)
            if thread.is_alive():
                _log.warning("the log database did not answer for %g s: the log writes under way are lost", timeout)
            else:
                self._say_what_waits()
        if self._bounded is not None:
            self._bounded.close()

    def close_soon(self, *, then: Callable[[], None] | None = None) -> None:
        """Stop the thread once it has applied what is queued, without waiting for it: from a finaliser, which
        any thread may run (the writer's own included), so nothing here blocks. Later calls are refused.
        ``then`` runs once the writes are done, on the writer's thread (on a thread of its own if none ever
        started): what the owner releases after its last write, such as the log database's connections, whose
        pool has threads of its own that only closing ends."""
        self._closed = True  # no lock: its owner is garbage, so nobody else submits any more
        atexit.unregister(self.close)
        self._then = then
        if self._thread is not None:
            self._queue.put(None)
        elif sys.is_finalizing():
            # Collected as the interpreter ends (a script's global never closed): no thread can start any more,
            # and starting one waited for ever (QA: such a script never exited). The OS releases the files.
            return
        elif then is not None or self._bounded is not None:  # nothing was written: release at once, off this thread
            threading.Thread(target=self._stopped, name=f"{self._name}-closing", daemon=True).start()

    def _say_what_waits(self) -> None:
        """Ending with rows kept in the spill: one warning with their count and folder, and who writes them
        (QA: an outage's shutdown said nothing about them, only "log write failed" lines that read as losses)."""
        if self._spill is None or not self._spilling:
            return
        waiting = self._spill.waiting()
        if waiting:
            _log.warning(
                "%d log row(s) wait in %s for the log database: the next imagegen process started on this "
                "IMAGEGEN_HOME writes them to it once it answers",
                waiting,
                self._spill.root,
            )

    def _enqueue(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Call:
        call = _Call(fn, args, kwargs)
        with self._lock:  # no call may slip in behind close()'s stop marker, where nothing would apply it
            if self._closed:
                # An ImageGenError, as everything imagegen raises on purpose: it reaches the caller of a request
                # that outlived closing (QA: a bare RuntimeError).
                raise LogDatabaseError("the log writer is closed: nothing more is written to the log database")
            if self._thread is None:
                # A daemon thread, drained at exit: an ImageGen nobody closed still applies what it queued.
                self._thread = threading.Thread(target=self._run, name=f"{self._name}_0", daemon=True)
                self._thread.start()
                atexit.register(self.close)
            self._queue.put(call)
        return call

    # -- the writer thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                wait = max(0.0, self._next_write_back - time.monotonic()) if self._spilling else None
                first = self._queue.get(timeout=wait)
            except queue.Empty:
                self._write_back()
                continue
            calls: list[_Call] = []
            stop = first is None
            if first is not None:
                calls.append(first)
            while not stop and len(calls) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                else:
                    calls.append(nxt)
            if calls:
                self._apply(calls)
            if stop:
                self._stopped()
                return

    def _stopped(self) -> None:
        """Once the last write is done: the bounded writes' thread ends, and :meth:`close_soon`'s ``then`` runs."""
        if self._bounded is not None:
            self._bounded.close()
        then, self._then = self._then, None
        if then is not None:
            try:
                then()
            except Exception:  # a finaliser's work: nobody to raise it to
                _log.exception("releasing the log database after the last write failed")

    def _apply(self, calls: list[_Call]) -> None:
        calls = self._drop_orphans(calls)
        if not calls:
            return
        if self._spill is not None and not self._spilling and time.monotonic() >= self._next_look:
            self._next_look = time.monotonic() + LOOK_FOR_KEPT_EVERY_S
            with contextlib.suppress(OSError):
                self._spilling = bool(self._spill.files())
        if self._spilling and (time.monotonic() < self._next_write_back or not self._write_back()):
            self._keep(calls, "the log database is still away")  # after the kept rows, never before them
            return
        try:
            self._write(calls, patient=not (self._closing_gave_up and self._closing.is_set()))
        except _GaveUp as gave_up:
            # QA: `imagegen generate` into a home on a full disk printed its URL, then took 12 s to end, waiting
            # CLOSING_RETRY_S for each of its two batches in turn, the second after the first had been given up.
            self._closing_gave_up = self._closing.is_set()
            self._keep(gave_up.calls, gave_up.error)

    def _write(self, calls: list[_Call], *, patient: bool = True) -> None:
        """Apply ``calls``, settling each one's future; :class:`_GaveUp` with those not applied when the database
        is busy for the whole retry window (``patient``) or at the one try (not ``patient``)."""
        attempt = self._patiently if patient else self._call
        if self._batch is None or len(calls) == 1:
            self._write_each(calls, attempt)
            return
        try:
            try:
                outcomes = attempt(self._apply_batch, calls, isolated=False)
            except _CallFailed:  # rolled back; again with a savepoint around each call, to undo that one alone
                outcomes = attempt(self._apply_batch, calls, isolated=True)
        except LogDatabaseBusy as exc:  # locked or away for the whole retry window
            raise _GaveUp(exc, calls) from None
        except Exception:
            # The batch itself failed (not one call: those are isolated): apply one by one, each with its own
            # error, exactly as without batching. Nothing of the batch was committed.
            self._write_each(calls, attempt)
            return
        self._note_taken([call for call, (error, _) in zip(calls, outcomes, strict=True) if error is None])
        for call, (error, value) in zip(calls, outcomes, strict=True):
            _settle(call.future, error, value)

    def _apply_batch(self, calls: list[_Call], *, isolated: bool) -> list[tuple[BaseException | None, Any]]:
        """One transaction for ``calls``. Not ``isolated`` (the usual case: no call fails), a failing call
        raises :class:`_CallFailed` and rolls the whole batch back; ``isolated``, each call runs in a savepoint
        (two more statements per call) and a failure is that call's outcome."""
        assert self._batch is not None
        outcomes: list[tuple[BaseException | None, Any]] = []
        with self._batch() as scope:
            for call in calls:
                try:
                    with scope() if isolated else nullcontext():
                        outcomes.append((None, call.fn(*call.args, **call.kwargs)))
                except LogDatabaseBusy:
                    raise  # the whole batch is retried: a busy database must delay rows, not drop them
                except Exception as exc:
                    if not isolated:
                        raise _CallFailed from exc
                    outcomes.append((exc, None))
        return outcomes

    def _write_each(self, calls: list[_Call], attempt: Callable[..., Any]) -> None:
        for index, call in enumerate(calls):
            try:
                value = attempt(call.fn, *call.args, **call.kwargs)
            except LogDatabaseBusy as exc:  # the later ones would wait as long: they keep their place behind it
                raise _GaveUp(exc, calls[index:]) from None
            except Exception as exc:
                _settle(call.future, exc, None)
            else:
                self._note_taken([call])
                _settle(call.future, None, value)

    # -- the spill: rows kept on disk through a long outage -------------------------------------------------

    def _keep(self, calls: list[_Call], error: BaseException | str) -> None:
        """Keep the request log's rows among ``calls`` in the spill, in order; the others are lost, with
        ``error`` (as they all are without a spill), said in one line for the batch (:meth:`_lose`)."""
        spill = self._spill
        kept: list[tuple[_Call, str]] = []
        lost: list[_Call] = []
        flushes: list[_Call] = []
        for call in calls:
            name = spill.name_of(call.fn) if spill is not None else None
            if call.fn is _nothing:
                flushes.append(call)
            elif name is not None:
                kept.append((call, name))
            else:
                lost.append(call)
        reason = str(error)
        if spill is not None and kept:
            try:
                spill.keep([(name, call.args, call.kwargs) for call, name in kept])
            except (OSError, TypeError, ValueError) as exc:
                why = getattr(exc, "strerror", None) or exc
                reason = f"{error}; keeping the rows in {spill.root} failed too: {why}"
                lost = [call for call, _ in kept] + lost
                kept = []
            else:
                if not self._spilling:
                    _log.warning(
                        "%s: keeping the log's rows in %s until it answers, then writing them to it in order",
                        error,
                        spill.root,
                    )
                    self._next_write_back = time.monotonic() + self._write_back_every_s
                self._spilling = True
        for call, _ in kept:
            _settle(call.future, None, None)  # kept durably: what was asked is done, later
        for call in flushes:
            _settle(call.future, None, None)  # what came before it is settled now (a loss is logged)
        if lost:
            self._lose(lost, error, reason)

    def _lose(self, lost: list[_Call], error: BaseException | str, reason: str) -> None:
        """Settle the calls the database did not take and nothing kept, saying so in one line for them all
        (QA: a line per call, "log write failed: the log database is still away", read as if rows kept in the
        spill had been lost): an error for the request log's rows, a warning for breaker updates alone, which
        are never kept (replayed later they would describe a state long gone)."""
        rows = [call for call in lost if _row_name(call) is not None]
        others = len(lost) - len(rows)
        if rows:
            also = f" (and {others} circuit-breaker update(s))" if others else ""
            _log.error("the log database did not take %d row(s)%s and they are lost: %s", len(rows), also, reason)
        else:
            _log.warning(
                "%d circuit-breaker update(s) not written (never kept on disk: later they would describe a state "
                "long gone): %s",
                others,
                reason,
            )
        for call in rows:
            if _row_name(call) in _FIRST_ROWS:
                self._lost_requests.append(str(call.args[0]))
        failure = error if isinstance(error, BaseException) else LogDatabaseBusy(error)
        _mark_reported(failure)
        for call in lost:
            _settle(call.future, failure, None)

    def _drop_orphans(self, calls: list[_Call]) -> list[_Call]:
        """``calls`` without the rows of requests whose own row was lost (:meth:`_lose`): written now they
        would each fail with "FOREIGN KEY constraint failed", a line apiece that names neither the request nor
        the cause. They are dropped with one warning for the batch."""
        if not self._lost_requests:
            return calls
        lost = set(self._lost_requests)
        orphans = [call for call in calls if _request_of(call) in lost]
        if not orphans:
            return calls
        _log.warning(
            "%d log row(s) of request(s) whose request row was lost earlier (see the error above) are dropped too",
            len(orphans),
        )
        failure = _mark_reported(LogDatabaseError("the row of its request was lost earlier"))
        for call in orphans:
            _settle(call.future, failure, None)
        dropped = {id(call) for call in orphans}
        return [call for call in calls if id(call) not in dropped]

    def _write_back(self) -> bool:
        """Write the kept rows to the database, oldest first; True when none is left (the spill is over)."""
        assert self._spill is not None
        self._next_write_back = time.monotonic() + self._write_back_every_s
        self._kept_refused = 0
        try:
            written = self._spill.write_back(self._apply_kept)
            if written == 0 and self._known_away:
                # Nothing kept yet, so nothing reached the database: ask it, or the next rows would leave the
                # spill for BUSY_RETRY_S of retries while it is still away.
                self._call(self._reach)
        except LogDatabaseBusy:
            return False  # still away: tried again after a pause, with a batch or by itself when idle
        except Exception as exc:  # the folder unreadable, or a bug: keep the rows (and the order), say why
            _log.error("cannot write back the log rows kept in %s: %s", self._spill.root, exc)
            return False
        if written is None:
            return False  # another process is writing them back: new rows wait behind them
        if self._spilling and written:
            # Those it refused were said one by one, and are not among those written (QA: they were counted).
            refused = self._kept_refused
            also = f" ({refused} could not be, see above)" if refused else ""
            _log.warning("the log database answers again: %d kept row(s) written to it%s", written - refused, also)
        self._spilling = self._known_away = False
        return True

    def _reach(self) -> None:
        """An empty transaction: raises LogDatabaseBusy while the database is still away; else writes work again."""
        if self._batch is not None:
            with self._batch():
                pass
        self._failure = None

    def _apply_kept(self, calls: list[BoundCall]) -> None:
        """Write one file of kept rows as new ones are written, but tried once (the writer tries again after a
        pause); a row that fails alone (not the database being away) is reported and skipped, as it would have
        been when first written. LogDatabaseBusy leaves the file for the next try (what of it was written then
        is written again: inserts skip their rows)."""
        pending = [_Call(fn, tuple(args), kwargs) for fn, args, kwargs in calls]
        try:
            self._write(pending, patient=False)
        except _GaveUp as gave_up:
            raise gave_up.error from None
        for call in pending:
            if (error := call.future.exception()) is not None:
                self._kept_refused += 1
                _log.error("a kept log row (%s) could not be written: %s", getattr(call.fn, "__name__", "?"), error)

    def _patiently(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        stop: stop_base = stop_after_delay(self._busy_retry_s)
        if self._spill is not None:  # closing, the rows are kept after CLOSING_RETRY_S rather than lost at exit
            closing_wait = stop_after_delay(CLOSING_RETRY_S) | _StopForOperator()
            stop = stop | (stop_when_event_set(self._closing) & closing_wait)
        retrying = Retrying(
            retry=retry_if_exception_type(LogDatabaseBusy),
            stop=stop,
            wait=self._back_off,
            before_sleep=self._report_wait,
            sleep=self._sleep,
            reraise=True,
        )
        return retrying(self._call, fn, *args, **kwargs)

    def _back_off(self, state: RetryCallState) -> float:
        """The pause before the next try: exponential with jitter, up to 2 s; while closing with a spill, never
        past the end of the closing window, so that the last try falls at its end, not up to a back-off later
        (CI: closing took 1.89 s for a window of 1 s, the exit as late)."""
        pause = float(_BACK_OFF(state))
        if self._spill is not None and self._closing.is_set():
            pause = min(pause, max(0.0, CLOSING_RETRY_S - (state.seconds_since_start or 0.0)))
        return pause

    def _call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, bounded when the writer was given a ``write_wait_s``; a refusal of the
        database as a whole is noted for :attr:`failing`."""
        try:
            if self._bounded is None:
                return fn(*args, **kwargs)
            return self._bounded.run_sync(lambda: fn(*args, **kwargs))
        except LogDatabaseBusy as exc:
            self._note_refused(exc)
            raise

    def _report_wait(self, state: RetryCallState) -> None:
        """Say once, then about every :data:`BUSY_REPORT_EVERY_S`, that writes are waiting, in words (the
        retries themselves back off to a couple of seconds, so one line per retry would flood the log)."""
        waited = state.seconds_since_start or 0.0
        if state.attempt_number > 1 and waited // BUSY_REPORT_EVERY_S == self._last_report // BUSY_REPORT_EVERY_S:
            return
        self._last_report = waited
        error = state.outcome.exception() if state.outcome is not None else None
        then = "keeping the rows on disk" if self._spill is not None else "giving up"
        _log.warning("%s; the log writes wait (%.0f s so far, %s after %g s)", error, waited, then, self._busy_retry_s)


#: The back-off between tries of a locked or unreachable database: 0.05 s doubling, plus up to 1 s of jitter (so
#: that processes sharing the log do not retry in step), at most 2 s.
_BACK_OFF = wait_exponential_jitter(multiplier=0.05, max=2.0)


class _StopForOperator(stop_base):
    """Stop retrying a failure that only an operator ends (``LogDatabaseBusy.clears_by_itself`` false: a full disk,
    a read-only mount, a damaged file): while closing, waiting :data:`CLOSING_RETRY_S` for it only delays the exit,
    and the spill keeps the rows just the same."""

    def __call__(self, retry_state: RetryCallState) -> bool:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None and outcome.failed else None
        return isinstance(error, LogDatabaseBusy) and not error.clears_by_itself


class _GaveUp(Exception):
    """The database stayed busy past the retry window: ``calls`` (in order) were not applied."""

    def __init__(self, error: LogDatabaseBusy, calls: list[_Call]) -> None:
        super().__init__(str(error))
        self.error = error
        self.calls = calls


class _CallFailed(Exception):
    """A call failed inside a batch run without savepoints: the batch is rolled back and run with them."""


def _nothing() -> None:
    return None


def _settle(future: concurrent.futures.Future[Any], error: BaseException | None, value: Any) -> None:
    # A waiter may cancel the future at any time (asyncio.wrap_future does, when the task awaiting it is
    # cancelled: a Ctrl+C during a flush). Its call was applied all the same, and nobody waits for the answer;
    # raising here killed the writer thread, and every later write of the process waited for ever (QA).
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)


#: The calls that write a request's row: the request's other rows need it (FOREIGN KEY).
_FIRST_ROWS = frozenset({"start_request", "reject_request"})


def _row_name(call: _Call) -> str | None:
    """The request log's method ``call`` runs (:data:`~.spill.KEPT_CALLS`), or None (a breaker update)."""
    name = getattr(call.fn, "__name__", None)
    return name if name in KEPT_CALLS else None


def _request_of(call: _Call) -> str | None:
    """The request a row of the request log belongs to, when the call names it (an attempt's end does not)."""
    name = _row_name(call)
    if name is None:
        return None
    if "request_id" in call.kwargs:
        return str(call.kwargs["request_id"])
    return str(call.args[0]) if name != "finish_attempt" and call.args else None


def _mark_reported(error: BaseException) -> BaseException:
    """Mark ``error`` as said already (one line for a batch): :func:`_report_failure` adds none per call."""
    error.imagegen_reported = True  # type: ignore[attr-defined]
    return error


def _report_failure(future: concurrent.futures.Future[Any]) -> None:
    error = None if future.cancelled() else future.exception()
    if error is not None and not getattr(error, "imagegen_reported", False):
        _log.error("log write failed: %s", error)
