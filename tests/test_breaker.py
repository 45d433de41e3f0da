"""Circuit-breaker state machine. Every test runs against every store (in-memory, and the log DB on SQLite and
on PostgreSQL) with a fake clock."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from imagegen_core import gates
from imagegen_core.breaker import (
    DEFAULT_PROBE_LEASE_S,
    MAX_REASON_CHARS,
    BreakerRecord,
    BreakerState,
    BreakerStore,
    CircuitBreakers,
    Denial,
    InMemoryBreakerStore,
    Permit,
    ResetKind,
    Transition,
    UpdateFn,
    probe_lease_s,
    probe_leases,
    reset_summary,
)
from imagegen_core.config import BreakerConfig, parse_config
from imagegen_core.errors import FailureClass
from imagegen_core.gates import ThreadedBreakerGate
from imagegen_core.log import LogDB
from imagegen_core.log.writer import LogWriter

T0 = 1_700_000_000.0
Outcome = Literal["success", "failure", "ignored"]


class FakeClock:
    """Wall-clock stand-in: tests move time with ``advance`` instead of sleeping."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_config(**overrides: float) -> BreakerConfig:
    values: dict[str, float] = {
        "window_size": 10,
        "window_duration": 60_000,
        "min_calls": 4,
        "failure_ratio": 0.5,
        "break_duration": 10_000,
        "break_multiplier": 2.0,
        "max_break_duration": 35_000,
        "billing_break_duration": 3_600_000,
        "half_open_probes": 2,
    }
    values.update(overrides)
    return BreakerConfig.model_validate(values)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BreakerStore]:
    if request.param == "memory":
        yield InMemoryBreakerStore()
        return
    url = f"sqlite:///{tmp_path / 'log.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    db = LogDB(url)
    yield db.breaker_store()
    db.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breakers(store: BreakerStore, clock: FakeClock) -> CircuitBreakers:
    return CircuitBreakers(store, make_config(), clock=clock, probe_lease_s=60.0)


def call(cb: CircuitBreakers, outcome: Outcome, failure_class: FailureClass | None = None, detail: str = "") -> None:
    """One admitted call that ends with ``outcome``."""
    permit = cb.acquire("fal")
    assert isinstance(permit, Permit), permit
    cb.record(permit, outcome=outcome, failure_class=failure_class, detail=detail)


def trip(cb: CircuitBreakers) -> None:
    for _ in range(4):
        call(cb, "failure", FailureClass.TRANSIENT)
    assert cb.state("fal").state == BreakerState.OPEN


def test_closed_breaker_admits_with_a_read_only(breakers: CircuitBreakers, store: BreakerStore) -> None:
    permit = breakers.acquire("fal")
    assert permit and isinstance(permit, Permit) and not permit.probe
    assert store.get("fal") is None  # nothing written for a plain closed acquire
    assert breakers.state("fal").state == BreakerState.CLOSED


def test_min_calls_is_respected_before_the_ratio_counts(breakers: CircuitBreakers) -> None:
    for _ in range(3):
        call(breakers, "failure", FailureClass.TIMEOUT)
    assert breakers.state("fal").state == BreakerState.CLOSED
    call(breakers, "failure", FailureClass.TIMEOUT)
    record = breakers.state("fal")
    assert record.state == BreakerState.OPEN
    assert record.last_reason == "failure ratio 1.00 over 4 calls >= 0.50"


def test_opens_when_failure_ratio_reaches_threshold(breakers: CircuitBreakers, clock: FakeClock) -> None:
    for _ in range(3):
        call(breakers, "success")
    call(breakers, "failure", FailureClass.TRANSIENT)
    call(breakers, "failure", FailureClass.TRANSIENT)
    assert breakers.state("fal").state == BreakerState.CLOSED  # 2/5 = 0.40
    call(breakers, "failure", FailureClass.TRANSIENT)  # 3/6 = 0.50
    record = breakers.state("fal")
    assert record.state == BreakerState.OPEN
    assert record.opened_until == pytest.approx(clock.now + 10)
    [transition] = breakers.transitions("fal")
    assert (transition.from_state, transition.to_state) == (BreakerState.CLOSED, BreakerState.OPEN)
    assert transition.reason == "failure ratio 0.50 over 6 calls >= 0.50"
    denial = breakers.acquire("fal")
    assert not denial and isinstance(denial, Denial)
    assert denial.state == BreakerState.OPEN and denial.retry_at == pytest.approx(clock.now + 10)


@pytest.mark.parametrize("failure_class", [FailureClass.AUTH, FailureClass.BILLING])
def test_auth_and_billing_open_at_once(
    breakers: CircuitBreakers, clock: FakeClock, failure_class: FailureClass
) -> None:
    call(breakers, "failure", failure_class, detail="401 invalid token")
    record = breakers.state("fal")
    assert record.state == BreakerState.OPEN
    assert record.opened_until == pytest.approx(clock.now + 3600)
    assert record.last_reason == f"{failure_class.value} failure: 401 invalid token"


@pytest.mark.parametrize("failure_class", [FailureClass.CONTENT_REJECTED, FailureClass.INVALID_REQUEST])
def test_failures_that_are_not_the_providers_fault_do_not_count(
    breakers: CircuitBreakers, failure_class: FailureClass
) -> None:
    for _ in range(20):
        call(breakers, "failure", failure_class)
    record = breakers.state("fal")
    assert record.state == BreakerState.CLOSED and record.window == []


def test_open_moves_to_half_open_after_the_break(breakers: CircuitBreakers, clock: FakeClock) -> None:
    trip(breakers)
    clock.advance(9.999)
    assert not breakers.acquire("fal")
    clock.advance(0.001)
    permit = breakers.acquire("fal")
    assert isinstance(permit, Permit) and permit.probe
    assert breakers.state("fal").state == BreakerState.HALF_OPEN
    assert breakers.transitions("fal")[0].reason == "break of 10s elapsed"


def test_half_open_admits_only_the_configured_number_of_probes(breakers: CircuitBreakers, clock: FakeClock) -> None:
    trip(breakers)
    clock.advance(10)
    first, second, third = (breakers.acquire("fal") for _ in range(3))
    assert isinstance(first, Permit) and first.probe
    assert isinstance(second, Permit) and second.probe
    assert isinstance(third, Denial) and third.state == BreakerState.HALF_OPEN


def test_probe_successes_close_the_breaker(breakers: CircuitBreakers, clock: FakeClock) -> None:
    trip(breakers)
    clock.advance(10)
    probes = [breakers.acquire("fal") for _ in range(2)]
    assert all(isinstance(p, Permit) for p in probes)
    breakers.record(probes[0], outcome="success")  # type: ignore[arg-type]
    assert breakers.state("fal").state == BreakerState.HALF_OPEN  # one of two
    breakers.record(probes[1], outcome="success")  # type: ignore[arg-type]
    record = breakers.state("fal")
    assert record.state == BreakerState.CLOSED
    assert (record.window, record.trips, record.probes_in_flight) == ([], 0, [])
    assert breakers.transitions("fal")[0].reason == "probe succeeded"


def test_probe_failure_reopens_with_a_longer_break(breakers: CircuitBreakers, clock: FakeClock) -> None:
    trip(breakers)
    clock.advance(10)
    probe = breakers.acquire("fal")
    assert isinstance(probe, Permit)
    breakers.record(probe, outcome="failure", failure_class=FailureClass.TIMEOUT, detail="no answer in 15s")
    record = breakers.state("fal")
    assert record.state == BreakerState.OPEN
    assert record.opened_until == pytest.approx(clock.now + 20)
    assert record.last_reason == "probe failed: no answer in 15s"


def test_growing_break_is_capped_at_max(breakers: CircuitBreakers, clock: FakeClock) -> None:
    trip(breakers)
    breaks = []
    for _ in range(4):
        record = breakers.state("fal")
        assert record.opened_until is not None
        breaks.append(round(record.opened_until - clock.now, 3))
        clock.advance(record.opened_until - clock.now)
        call(breakers, "failure", FailureClass.TRANSIENT)  # the probe fails
    assert breaks == [10, 20, 35, 35]


def test_ignored_probe_releases_its_slot_without_a_verdict(breakers: CircuitBreakers, clock: FakeClock) -> None:
    trip(breakers)
    clock.advance(10)
    probes = [breakers.acquire("fal") for _ in range(2)]
    assert not breakers.acquire("fal")
    breakers.record(probes[0], outcome="ignored")  # type: ignore[arg-type]
    breakers.record(probes[1], outcome="failure", failure_class=FailureClass.CONTENT_REJECTED)  # type: ignore[arg-type]
    record = breakers.state("fal")
    assert record.state == BreakerState.HALF_OPEN and record.probe_successes == 0
    assert isinstance(breakers.acquire("fal"), Permit)


def test_probe_lease_expires_when_a_probe_never_reports(breakers: CircuitBreakers, clock: FakeClock) -> None:
    trip(breakers)
    clock.advance(10)
    breakers.acquire("fal")
    breakers.acquire("fal")
    denial = breakers.acquire("fal")
    assert isinstance(denial, Denial) and denial.retry_at == pytest.approx(clock.now + 60)
    clock.advance(60)
    assert isinstance(breakers.acquire("fal"), Permit)


@pytest.mark.parametrize(
    ("timeout_ms", "deadline_ms", "lease_s"),
    [(10_000, 30_000, 30.0), (20_000, 30_000, 60.0), (60_000, 30_000, 90.0), (1_000, 30_000, 10.0)],
    ids=["10 s timeout", "20 s timeout", "timeout past the deadline", "floor"],
)
def test_a_probe_lease_is_a_few_times_the_attempts_longest_duration(
    timeout_ms: int, deadline_ms: int, lease_s: float
) -> None:
    """Three times the provider's per-attempt timeout (cut by the request's deadline: no attempt outlives it), and
    never under the floor."""
    assert probe_lease_s(timeout_ms=timeout_ms, deadline_ms=deadline_ms) == lease_s


def test_a_dead_probe_holds_its_slot_for_its_providers_lease_not_two_minutes(
    store: BreakerStore, clock: FakeClock
) -> None:
    """QA: a probe whose process died kept every process from probing a provider with a 10 s timeout for the
    fixed 120 s. With the leases a config derives, it frees its slot after 30 s; a provider with a longer
    timeout keeps its longer lease, and one the config does not name the default."""
    config = parse_config({"providers": {"fal": {"timeout": 10_000}, "replicate": {"timeout": 30_000}}})
    dying = CircuitBreakers(store, make_config(half_open_probes=1), clock=clock, probe_leases=probe_leases(config))
    other = CircuitBreakers(store, make_config(half_open_probes=1), clock=clock, probe_leases=probe_leases(config))
    for name in ("fal", "replicate", "unnamed"):
        for _ in range(4):
            permit = dying.acquire(name)
            assert isinstance(permit, Permit)
            dying.record(permit, outcome="failure", failure_class=FailureClass.TRANSIENT)
    clock.advance(10)  # the break is over: one process's probes never report (it was killed)
    for name in ("fal", "replicate", "unnamed"):
        assert isinstance(dying.acquire(name), Permit)
    leases = {"fal": 30.0, "replicate": 90.0, "unnamed": DEFAULT_PROBE_LEASE_S}
    for name, lease_s in leases.items():
        denial = other.acquire(name)
        assert isinstance(denial, Denial) and denial.retry_at == pytest.approx(clock.now + lease_s), name
    clock.advance(30)
    assert isinstance(other.acquire("fal"), Permit)
    assert not other.acquire("replicate") and not other.acquire("unnamed")


def test_the_leases_follow_a_config_change(breakers: CircuitBreakers, clock: FakeClock) -> None:
    """Hot config: a provider's new timeout sets its probes' lease from the next call on."""
    assert breakers.lease_s("fal") == 60.0  # the fixture's
    breakers.configure(
        make_config(), probe_leases=probe_leases(parse_config({"providers": {"fal": {"timeout": 4000}}}))
    )
    assert breakers.lease_s("fal") == 12.0
    breakers.configure(make_config())  # thresholds only: the leases stay
    assert breakers.lease_s("fal") == 12.0


def test_a_break_opened_before_the_clock_stepped_back_an_hour_is_over(
    breakers: CircuitBreakers, clock: FakeClock
) -> None:
    """QA chaos (libfaketime): a 10 s break opened while the clock ran an hour fast denied for that hour once NTP
    set the clock right. The break now counts as over: the next call is a half-open probe."""
    trip(breakers)
    clock.advance(-3600)
    permit = breakers.acquire("fal")
    assert isinstance(permit, Permit) and permit.probe
    assert breakers.state("fal").state == BreakerState.HALF_OPEN
    assert breakers.transitions("fal")[0].reason.startswith("clock went back 3600s before the break began")


@pytest.mark.parametrize(
    ("step_s", "over"),
    [(5, False), (10, True), (-30, False), (-3600, True)],
    ids=["break running", "break elapsed", "clock 30 s behind", "clock stepped back an hour"],
)
def test_the_break_shown_is_the_one_admission_honours(
    breakers: CircuitBreakers, clock: FakeClock, step_s: float, over: bool
) -> None:
    """QA: after the clock stepped back an hour, admission counted a 10 s break as over (the next call probed)
    while ``imagegen breakers`` and the admin API read its stored end and showed it open until an hour ahead.
    ``open_break`` decides as admission does: checked against what ``acquire`` then does."""
    trip(breakers)  # at T0: a 10 s break
    clock.advance(step_s)
    view = breakers.open_break(breakers.state("fal"))
    assert view is not None and view.over is over
    if step_s == -3600:  # its stored end is ahead of the clock: not shown as a time the break runs until
        assert view.until is None
        assert view.reason == "clock went back 3600s before the break began: the break counts as over"
    else:
        assert view.until == pytest.approx(T0 + 10) and bool(view.reason) is over
    decision = breakers.acquire("fal")
    assert bool(decision) is over and (not over or (isinstance(decision, Permit) and decision.probe))
    if not over:
        assert isinstance(decision, Denial) and decision.retry_at == view.until


def test_only_an_open_breaker_has_a_break_to_show(breakers: CircuitBreakers) -> None:
    assert breakers.open_break(breakers.state("fal")) is None  # closed, nothing stored
    breakers.force_open("fal")
    assert breakers.open_break(breakers.state("fal")) is None  # no end: denies until reset


def test_a_clock_slightly_behind_the_one_that_opened_the_break_still_honours_it(
    breakers: CircuitBreakers, clock: FakeClock
) -> None:
    """Machines sharing a log disagree by seconds: such a clock still sees the break."""
    trip(breakers)
    clock.advance(-30)
    denial = breakers.acquire("fal")
    assert isinstance(denial, Denial) and denial.state == BreakerState.OPEN


def test_a_probe_lease_taken_before_the_clock_stepped_back_frees_its_slot(
    breakers: CircuitBreakers, clock: FakeClock
) -> None:
    """A probe whose process died after the clock ran an hour fast held its slot for that hour plus the lease."""
    trip(breakers)
    clock.advance(10)
    breakers.acquire("fal")
    breakers.acquire("fal")
    assert not breakers.acquire("fal")
    clock.advance(-3600)
    assert isinstance(breakers.acquire("fal"), Permit)


def test_outcome_of_a_call_admitted_before_the_trip_is_ignored(breakers: CircuitBreakers) -> None:
    late = breakers.acquire("fal")
    trip(breakers)
    breakers.record(late, outcome="success")  # type: ignore[arg-type]
    assert breakers.state("fal").state == BreakerState.OPEN


def test_forced_open_denies_until_reset(breakers: CircuitBreakers, clock: FakeClock) -> None:
    breakers.force_open("fal")
    clock.advance(10 * 86_400)
    denial = breakers.acquire("fal")
    assert isinstance(denial, Denial) and denial.state == BreakerState.FORCED_OPEN and denial.retry_at is None
    assert breakers.transitions("fal")[0].reason == "forced open by admin"
    breakers.reset("fal")
    assert isinstance(breakers.acquire("fal"), Permit)


def test_disabled_admits_everything_and_records_nothing(breakers: CircuitBreakers) -> None:
    breakers.disable("fal")
    for _ in range(10):
        call(breakers, "failure", FailureClass.AUTH)
    record = breakers.state("fal")
    assert record.state == BreakerState.DISABLED and record.window == []
    assert len(breakers.transitions("fal")) == 1


def test_reset_closes_with_an_empty_window(breakers: CircuitBreakers) -> None:
    trip(breakers)
    assert breakers.state("fal").trips == 1
    breakers.reset("fal")
    record = breakers.state("fal")
    assert (record.state, record.window, record.trips) == (BreakerState.CLOSED, [], 0)
    latest = breakers.transitions("fal")[0]
    assert (latest.from_state, latest.to_state, latest.reason) == (
        BreakerState.OPEN,
        BreakerState.CLOSED,
        "reset by admin",
    )


@pytest.mark.parametrize("reset", ["reset", "reset_all of an open breaker", "reset_all of a closed one"])
def test_calls_admitted_before_a_reset_do_not_count_after_it(store: BreakerStore, clock: FakeClock, reset: str) -> None:
    """QA (a PostgreSQL log, two workers): the outcomes of a burst's last calls reached the log after an admin's
    reset, filled the cleared window and opened the breaker again with no new call; the 200 requests after the
    reset all got the default image. A call admitted before a reset says nothing about the provider after it."""
    cb = CircuitBreakers(store, make_config(), clock=clock)
    under_way = []
    for _ in range(4):  # admitted before the reset, they end after it, all failed: min_calls at a ratio of 1.0
        permit = cb.acquire("fal")
        assert isinstance(permit, Permit)
        under_way.append(permit)
    if reset == "reset_all of an open breaker":
        trip(cb)
    if reset == "reset_all of a closed one":
        call(cb, "failure", FailureClass.TRANSIENT)  # something to clear
    clock.advance(1)
    cb.reset("fal") if reset == "reset" else cb.reset_all()
    clock.advance(1)
    for permit in under_way:
        cb.record(permit, outcome="failure", failure_class=FailureClass.TRANSIENT, detail="boom")
    record = cb.state("fal")
    assert (record.state, record.window) == (BreakerState.CLOSED, [])
    trip(cb)  # calls admitted after it count as ever


def test_reset_all_resets_every_stored_breaker(store: BreakerStore, clock: FakeClock) -> None:
    cb = CircuitBreakers(store, make_config(), clock=clock)
    cb.force_open("fal")
    cb.force_open("replicate")
    cb.reset_all()
    assert {name: r.state for name, r in cb.snapshot().items()} == {
        "fal": BreakerState.CLOSED,
        "replicate": BreakerState.CLOSED,
    }


def test_reset_all_leaves_a_breaker_with_nothing_to_reset_alone(store: BreakerStore, clock: FakeClock) -> None:
    """New-user run: "Reset all" wrote a closed → closed transition for every breaker, burying real ones."""
    cb = CircuitBreakers(store, make_config(), clock=clock)
    cb.force_open("fal")
    cb.reset("fal")  # closed again, nothing counted
    before = len(cb.transitions("fal"))
    outcomes = cb.reset_all()
    assert len(cb.transitions("fal")) == before
    assert [(o.provider, o.kind) for o in outcomes] == [("fal", ResetKind.CLEAN)]


def test_reset_all_clears_a_closed_breakers_window_without_a_transition(
    store: BreakerStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """QA: a closed breaker with failures counted got a "closed → closed" transition row from reset-all. Its
    window is cleared (a real action, said in the process log) but its state does not change: no transition
    row, and the outcome says "cleared", not "reset"."""
    cb = CircuitBreakers(store, make_config(), clock=clock)
    cb.record(Permit("replicate", probe=False, token=T0), outcome="failure", failure_class=FailureClass.TRANSIENT)
    cb.record(Permit("replicate", probe=False, token=T0), outcome="success")
    cb.force_open("fal")
    cb.force_open("unsplash")
    cb.reset("unsplash")  # closed, nothing counted
    before = {name: len(cb.transitions(name)) for name in ("fal", "replicate", "unsplash")}
    with caplog.at_level(logging.INFO, logger="imagegen.breaker"):
        outcomes = cb.reset_all()
    assert {name: len(cb.transitions(name)) for name in before} == {
        "fal": before["fal"] + 1,  # forced_open → closed: a transition
        "replicate": before["replicate"],  # closed all along: none
        "unsplash": before["unsplash"],
    }
    assert all(t.from_state != t.to_state for t in cb.transitions())
    assert {o.provider: o.kind for o in outcomes} == {
        "fal": ResetKind.RESET,
        "replicate": ResetKind.CLEARED,
        "unsplash": ResetKind.CLEAN,
    }
    assert cb.state("replicate").window == [] and cb.state("replicate").state == BreakerState.CLOSED
    messages = [r.getMessage() for r in caplog.records]
    assert "circuit breaker replicate: closed; its window of 2 counted call(s), 1 failed, cleared (reset by admin)" in (
        messages
    )
    assert not any("closed -> closed" in m for m in messages), messages
    summary = reset_summary(outcomes, ["fal", "offline", "replicate", "unsplash"])
    assert summary == {
        ResetKind.RESET: ["fal"],
        ResetKind.CLEARED: ["replicate"],
        ResetKind.CLEAN: ["offline", "unsplash"],  # offline has no stored breaker: clean
    }


def test_transitions_are_newest_first_with_reasons(breakers: CircuitBreakers, clock: FakeClock) -> None:
    trip(breakers)
    clock.advance(10)
    for _ in range(2):
        call(breakers, "success")
    reasons = [t.reason for t in breakers.transitions("fal")]
    assert reasons == ["probe succeeded", "break of 10s elapsed", "failure ratio 1.00 over 4 calls >= 0.50"]
    assert breakers.transitions("fal", limit=1)[0].reason == "probe succeeded"
    assert breakers.transitions("replicate") == []


def test_old_calls_leave_the_window_by_duration(breakers: CircuitBreakers, clock: FakeClock) -> None:
    for _ in range(3):
        call(breakers, "failure", FailureClass.TRANSIENT)
    clock.advance(60)  # window_duration: the three failures are now too old
    call(breakers, "failure", FailureClass.TRANSIENT)
    record = breakers.state("fal")
    assert record.state == BreakerState.CLOSED and len(record.window) == 1


def test_window_keeps_at_most_window_size_calls(breakers: CircuitBreakers) -> None:
    for _ in range(25):
        call(breakers, "success")
    assert len(breakers.state("fal").window) == 10


def test_config_can_be_replaced_at_runtime(breakers: CircuitBreakers) -> None:
    breakers.configure(make_config(min_calls=1, failure_ratio=1.0))
    call(breakers, "failure", FailureClass.TRANSIENT)
    assert breakers.state("fal").state == BreakerState.OPEN


def test_long_details_are_cut_to_one_short_line(breakers: CircuitBreakers) -> None:
    call(breakers, "failure", FailureClass.AUTH, detail="bad\nkey " * 200)
    reason = breakers.state("fal").last_reason
    assert len(reason) <= MAX_REASON_CHARS and "\n" not in reason
    assert len(breakers.transitions("fal")[0].reason) <= MAX_REASON_CHARS


def test_breakers_are_per_provider(breakers: CircuitBreakers) -> None:
    trip(breakers)
    assert isinstance(breakers.acquire("replicate"), Permit)


def test_record_json_round_trip() -> None:
    record = BreakerRecord(
        provider="fal",
        state=BreakerState.HALF_OPEN,
        window=[(1.0, True), (2.0, False)],
        trips=2,
        opened_at=3.0,
        opened_until=4.0,
        probes_in_flight=[5.0],
        probe_successes=1,
        updated_at=6.0,
        last_reason="x",
    )
    assert BreakerRecord.from_json(record.to_json()) == record


def test_record_copy_is_independent_of_the_original() -> None:
    record = BreakerRecord(provider="fal", window=[(1.0, True)], probes_in_flight=[5.0])
    copied = record.copy()
    assert copied == record
    copied.window.append((2.0, False))
    copied.probes_in_flight.remove(5.0)
    copied.trips = 3
    assert (record.window, record.probes_in_flight, record.trips) == ([(1.0, True)], [5.0], 0)


# ------------------------------------------------------------------------------------------------
# The race's gate: in-place reads where the store allows them


def hold(writer: LogWriter) -> threading.Event:
    """Keep ``writer`` busy elsewhere (another process holding SQLite's write lock, say) until the returned
    event is set: what is queued meanwhile waits."""
    held, release = threading.Event(), threading.Event()
    writer.submit(lambda: (held.set(), release.wait(10)))
    held.wait(10)
    return release


class CountingStore:
    """Wraps a store; notes which thread each read and write ran on."""

    def __init__(self, inner: BreakerStore) -> None:
        self.inner = inner
        self.reads: list[str] = []
        self.writes: list[str] = []

    def get(self, provider: str) -> BreakerRecord | None:
        self.reads.append(threading.current_thread().name)
        return self.inner.get(provider)

    def all(self) -> dict[str, BreakerRecord]:
        return self.inner.all()

    def update(self, provider: str, fn: UpdateFn) -> BreakerRecord:
        self.writes.append(threading.current_thread().name)
        return self.inner.update(provider, fn)

    def transitions(self, provider: str | None = None, limit: int = 100) -> list[Transition]:
        return self.inner.transitions(provider, limit)


#: The gate's own verdicts count at once both where it reads in place (SQLite) and where it reads on its
#: threads (PostgreSQL); the store fixture runs each on all three stores.
IN_PLACE_OR_ON_THE_POOL = pytest.mark.parametrize("in_place", [True, False], ids=["in place", "on its threads"])


async def test_gate_reading_in_place_admits_a_closed_breaker_and_denies_an_open_one_on_the_loop(
    store: BreakerStore, clock: FakeClock
) -> None:
    """No thread hop when the read decides: the pool is shut down, yet acquire answers (fresh, every time)."""
    counting = CountingStore(store)
    cb = CircuitBreakers(counting, make_config(), clock=clock)
    gate = ThreadedBreakerGate(cb, LogWriter(), redact=str, read_in_place=True)
    gate.close()
    assert isinstance(await gate.acquire("a"), Permit)
    cb.force_open("a")  # as another process would: the very next acquire sees it
    denial = await gate.acquire("a")
    assert isinstance(denial, Denial) and denial.state == BreakerState.FORCED_OPEN
    assert counting.reads == [threading.current_thread().name] * 2


async def test_gate_reading_in_place_still_writes_the_half_open_step_off_the_loop(
    store: BreakerStore, clock: FakeClock
) -> None:
    """An elapsed break is a state change (a write, which may wait for another process's lock): never on the
    loop, even when reads are."""
    counting = CountingStore(store)
    cb = CircuitBreakers(counting, make_config(), clock=clock)
    writer = LogWriter()
    gate = ThreadedBreakerGate(cb, writer, redact=str, read_in_place=True)
    trip(cb)
    assert cb.state("fal").state == BreakerState.OPEN
    clock.advance(11)
    counting.writes.clear()
    permit = await gate.acquire("fal")
    assert isinstance(permit, Permit) and permit.probe
    assert cb.state("fal").state == BreakerState.HALF_OPEN
    assert len(counting.writes) == 1 and counting.writes[0].startswith("imagegen-breaker")
    gate.close()
    writer.close()


async def test_gate_stamps_a_verdict_when_it_happened_not_when_the_writer_applies_it(
    store: BreakerStore, clock: FakeClock
) -> None:
    """The writer may be held up (another process holding SQLite's write lock): the break still runs from
    the failure that opened it, so it ends when it should."""
    cb = CircuitBreakers(store, make_config(), clock=clock)
    writer = LogWriter()
    gate = ThreadedBreakerGate(cb, writer, redact=str)
    release = hold(writer)
    for _ in range(4):  # min_calls failures: the breaker trips
        permit = await gate.acquire("fal")
        assert isinstance(permit, Permit)
        gate.record(permit, outcome="failure", failure_class=FailureClass.TRANSIENT, detail="boom")
    clock.advance(7)  # the writer gets to them 7 s later
    release.set()
    await writer.flush()
    record = cb.state("fal")
    assert record.state == BreakerState.OPEN
    assert (record.opened_at, record.opened_until) == (T0, T0 + 10)  # not T0 + 7 and T0 + 17
    gate.close()
    writer.close()


@IN_PLACE_OR_ON_THE_POOL
async def test_gate_denies_at_once_after_its_own_tripping_failure_though_the_writer_lags(
    store: BreakerStore, clock: FakeClock, in_place: bool
) -> None:
    """Regression (a CI flake of the fault suite): the failure that trips the breaker was still in the
    writer's queue when the next request asked, so that request called the failing provider once more. The
    process's own verdicts now count at once; the stored record catches up when the writer gets to them."""
    cb = CircuitBreakers(store, make_config(), clock=clock)
    writer = LogWriter()
    gate = ThreadedBreakerGate(cb, writer, redact=str, read_in_place=in_place)
    release = hold(writer)
    permits = [await gate.acquire("fal") for _ in range(4)]  # four calls in flight at once
    for permit in permits[:3]:
        assert isinstance(permit, Permit)
        gate.record(permit, outcome="failure", failure_class=FailureClass.TRANSIENT, detail="boom")
    assert isinstance(await gate.acquire("fal"), Permit)  # three of the four min_calls: still closed
    gate.record(permits[3], outcome="failure", failure_class=FailureClass.TRANSIENT, detail="boom")
    denial = await gate.acquire("fal")  # the fourth trips it, though nothing is stored yet
    assert isinstance(denial, Denial) and denial.state == BreakerState.OPEN
    assert cb.state("fal").state == BreakerState.CLOSED
    release.set()
    await writer.flush()
    assert cb.state("fal").state == BreakerState.OPEN
    assert isinstance(await gate.acquire("fal"), Denial)  # from the stored record now
    gate.close()
    writer.close()


@IN_PLACE_OR_ON_THE_POOL
async def test_gate_provisional_copy_counts_successes_still_queued_before_the_failure(
    store: BreakerStore, clock: FakeClock, in_place: bool
) -> None:
    """Regression: a failure's provisional copy was built on the stored record alone, without this process's
    successes still in the writer's queue, so it overstated the failure ratio and denied calls that the stored
    record, once the writer caught up, admitted."""
    cb = CircuitBreakers(store, make_config(), clock=clock)
    for outcome in ("failure", "failure", "success"):  # stored: 2 failures in 3 calls
        cb.record(Permit("fal", probe=False, token=T0), outcome=outcome, failure_class=FailureClass.TRANSIENT)
    writer = LogWriter()
    gate = ThreadedBreakerGate(cb, writer, redact=str, read_in_place=in_place)
    release = hold(writer)
    for _ in range(4):
        gate.record(Permit("fal", probe=False, token=T0), outcome="success", failure_class=None)
    gate.record(Permit("fal", probe=False, token=T0), outcome="failure", failure_class=FailureClass.TRANSIENT)
    assert isinstance(await gate.acquire("fal"), Permit)  # 3 failures in 8 calls: under the 0.5 ratio
    release.set()
    await writer.flush()
    assert cb.state("fal").state == BreakerState.CLOSED
    assert isinstance(await gate.acquire("fal"), Permit)
    gate.close()
    writer.close()


@IN_PLACE_OR_ON_THE_POOL
async def test_gate_provisional_copy_gives_way_to_a_reset_committed_meanwhile(
    store: BreakerStore, clock: FakeClock, in_place: bool
) -> None:
    """Regression: with a tripping failure still queued, an admin's reset from another process (which moves
    the change token) left the copy denying calls that the stored record admitted, until the writer caught up
    (up to minutes, with the database locked). The copy only holds while the token has not moved."""
    cb = CircuitBreakers(store, make_config(), clock=clock)
    for _ in range(3):  # stored: 3 failures, one short of min_calls
        cb.record(Permit("fal", probe=False, token=T0), outcome="failure", failure_class=FailureClass.TRANSIENT)
    token = [b"one"]
    writer = LogWriter()
    gate = ThreadedBreakerGate(cb, writer, redact=str, read_in_place=in_place, change_token=lambda: token[0])
    release = hold(writer)
    gate.record(Permit("fal", probe=False, token=T0), outcome="failure", failure_class=FailureClass.TRANSIENT)
    assert isinstance(await gate.acquire("fal"), Denial)  # the queued fourth failure trips it
    CircuitBreakers(store, make_config(), clock=clock).reset("fal")  # `imagegen breakers reset fal`
    token[0] = b"two"  # ... whose commit moves the stamp
    assert isinstance(await gate.acquire("fal"), Permit)
    release.set()
    await writer.flush()
    gate.close()
    writer.close()


async def test_gate_on_its_threads_replays_no_more_than_its_cap_and_then_decides_on_the_stored_record(
    store: BreakerStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replaying is O(backlog) per acquire: with the writer held up for long, past MAX_REPLAYED_RECORDS queued
    records the gate decides on the stored record alone (admitting here), as it did before it replayed."""
    monkeypatch.setattr(gates, "MAX_REPLAYED_RECORDS", 3)
    cb = CircuitBreakers(store, make_config(), clock=clock)
    writer = LogWriter()
    gate = ThreadedBreakerGate(cb, writer, redact=str, read_in_place=False)
    release = hold(writer)
    for _ in range(3):
        gate.record(Permit("fal", probe=False, token=T0), outcome="failure", failure_class=FailureClass.TRANSIENT)
    assert isinstance(await gate.acquire("fal"), Permit)  # 3 failures queued: one short of min_calls
    gate.record(Permit("fal", probe=False, token=T0), outcome="failure", failure_class=FailureClass.TRANSIENT)
    assert isinstance(await gate.acquire("fal"), Permit)  # 4 queued would trip it, but 4 are over the cap
    release.set()
    await writer.flush()
    assert isinstance(await gate.acquire("fal"), Denial)  # the stored record has them now
    gate.close()
    writer.close()


def test_gate_remembers_queued_successes_at_constant_cost_however_long_the_backlog(
    store: BreakerStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (found profiling the load bench, 248 req/s against 312 after the fix): each success rescanned
    every record still in the writer's queue, so a backlog of n cost n checks per request, quadratic in all:
    hundreds per request under load, millions while another process holds the database's write lock."""
    checks = 0
    done = concurrent.futures.Future.done

    def counting_done(future: concurrent.futures.Future[Any]) -> bool:
        nonlocal checks
        checks += 1
        return done(future)

    cb = CircuitBreakers(store, make_config(), clock=clock)
    writer = LogWriter()
    gate = ThreadedBreakerGate(cb, writer, redact=str, read_in_place=True)
    release = hold(writer)
    monkeypatch.setattr(concurrent.futures.Future, "done", counting_done)
    backlog = 2000
    for _ in range(backlog):
        gate.record(Permit("fal", probe=False, token=T0), outcome="success", failure_class=None)
    assert checks <= 2 * backlog  # rescanning: about backlog**2 / 2, two million
    release.set()
    writer.flush_sync()
    gate.record(Permit("fal", probe=False, token=T0), outcome="success", failure_class=None)
    assert len(gate._unapplied["fal"]) == 1  # the applied ones are let go, the new one kept
    gate.close()
    writer.close()


def test_gate_keeps_no_provisional_record_on_the_healthy_path(store: BreakerStore, clock: FakeClock) -> None:
    """Successes with nothing queued before them cost no extra read: only a failure can open a breaker."""
    counting = CountingStore(store)
    cb = CircuitBreakers(counting, make_config(), clock=clock)
    writer = LogWriter()
    gate = ThreadedBreakerGate(cb, writer, redact=str, read_in_place=True)
    for _ in range(3):
        gate.record(Permit("fal", probe=False, token=T0), outcome="success", failure_class=None)
    writer.flush_sync()
    assert counting.reads == []
    gate.close()
    writer.close()


async def test_gate_without_in_place_reads_reads_on_its_pool(store: BreakerStore, clock: FakeClock) -> None:
    """The PostgreSQL setting: every read is a network round trip, so it runs on the gate's threads."""
    counting = CountingStore(store)
    gate = ThreadedBreakerGate(CircuitBreakers(counting, make_config(), clock=clock), LogWriter(), redact=str)
    assert isinstance(await gate.acquire("a"), Permit)
    assert len(counting.reads) == 1 and counting.reads[0].startswith("imagegen-breaker")
    gate.close()


async def test_gate_reuses_a_record_read_in_place_until_the_change_token_moves(
    store: BreakerStore, clock: FakeClock
) -> None:
    counting = CountingStore(store)
    cb = CircuitBreakers(counting, make_config(), clock=clock)
    token = [b"one"]
    gate = ThreadedBreakerGate(cb, LogWriter(), redact=str, read_in_place=True, change_token=lambda: token[0])
    gate.close()  # every answer below comes from the loop thread
    for _ in range(5):
        assert isinstance(await gate.acquire("a"), Permit)
    assert len(counting.reads) == 1
    cb.force_open("a")  # another process commits a change, then moves the token
    token[0] = b"two"
    assert isinstance(await gate.acquire("a"), Denial)
    assert isinstance(await gate.acquire("a"), Denial)
    assert len(counting.reads) == 2


def test_a_store_hands_out_records_no_caller_can_change_behind_its_back(store: BreakerStore) -> None:
    """Every store keeps its records apart from its callers: what ``get``, ``all`` and ``update`` return, and
    the record ``fn`` is given, may be changed freely without changing what is stored (the in-memory store
    copies records in and out instead of keeping JSON, for the replay's speed)."""
    given_windows: list[list[tuple[float, bool]]] = []
    answered: list[BreakerRecord] = []

    def add_failure(record: BreakerRecord | None) -> tuple[BreakerRecord, list[Transition]]:
        given_windows.append(list(record.window) if record else [])
        record = record or BreakerRecord(provider="fal")
        record.window.append((1.0, True))
        answered.append(record)
        return record, []

    returned = store.update("fal", add_failure)
    returned.window.append((2.0, True))
    got = store.get("fal")
    assert got is not None
    got.window.append((3.0, True))
    got.probes_in_flight.append(4.0)
    store.all()["fal"].window.clear()
    store.update("fal", add_failure)
    assert given_windows == [[], [(1.0, True)]]
    answered[-1].window.append((5.0, True))  # the store already kept its copy of fn's answer
    stored = store.get("fal")
    assert stored is not None and stored.window == [(1.0, True), (1.0, True)] and stored.probes_in_flight == []
