"""LogBreakerStore: breaker state shared between connections, threads and processes, on both backends.

The state-machine tests in ``tests/test_breaker.py`` also run against this store; here are the parts only a
shared database has: atomicity under concurrency and visibility across processes. Every test runs on SQLite
and on PostgreSQL (``db_url``).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from imagegen_core.breaker import BreakerRecord, BreakerState, CircuitBreakers, Denial, Permit, Transition
from imagegen_core.config import BreakerConfig
from imagegen_core.errors import FailureClass
from imagegen_core.log import LogDB

# Large enough that concurrent failures never trip the breaker: every one must land in the window.
NO_TRIP = BreakerConfig(window_size=1000, min_calls=1000, window_duration=3_600_000)


def test_a_breaker_tripped_in_another_process_denies_here(db_url: str) -> None:
    path = db_url
    child = textwrap.dedent(
        f"""
        from imagegen_core.breaker import CircuitBreakers
        from imagegen_core.config import BreakerConfig
        from imagegen_core.errors import FailureClass
        from imagegen_core.log import LogDB

        with LogDB({path!r}) as db:
            breakers = CircuitBreakers(db.breaker_store(), BreakerConfig())
            permit = breakers.acquire("fal")
            breakers.record(permit, outcome="failure", failure_class=FailureClass.AUTH, detail="401 bad token")
        """
    )
    with LogDB(path) as db:
        breakers = CircuitBreakers(db.breaker_store(), BreakerConfig())
        assert isinstance(breakers.acquire("fal"), Permit)
        subprocess.run([sys.executable, "-c", child], check=True, timeout=60)
        denial = breakers.acquire("fal")
        assert isinstance(denial, Denial) and denial.state == BreakerState.OPEN
        [transition] = breakers.transitions("fal")
        assert transition.reason == "auth failure: 401 bad token"


def test_concurrent_failures_from_two_connections_are_all_counted(db_url: str) -> None:
    path = db_url
    LogDB(path).open().close()
    per_thread = 40
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with LogDB(path) as db:
                breakers = CircuitBreakers(db.breaker_store(), NO_TRIP)
                barrier.wait()
                for _ in range(per_thread):
                    permit = breakers.acquire("fal")
                    assert isinstance(permit, Permit)
                    breakers.record(permit, outcome="failure", failure_class=FailureClass.TRANSIENT)
                    breakers.reset("replicate")  # each reset is one transition
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with LogDB(path) as db:
        store = db.breaker_store()
        record = store.get("fal")
        assert record is not None and len(record.window) == 2 * per_thread
        assert len(store.transitions("replicate", limit=1000)) == 2 * per_thread


def test_two_processes_updating_one_breaker_at_once_lose_nothing(db_url: str, tmp_path: Path) -> None:
    """Separate processes (separate connections, as on separate machines) queue on the breaker's lock: every
    failure lands in the window and every transition is recorded."""
    LogDB(db_url).open().close()
    go = tmp_path / "go"
    per_process = 30
    child = textwrap.dedent(
        f"""
        import pathlib
        from imagegen_core.breaker import CircuitBreakers
        from imagegen_core.config import BreakerConfig
        from imagegen_core.errors import FailureClass
        from imagegen_core.log import LogDB

        no_trip = BreakerConfig(window_size=1000, min_calls=1000, window_duration=3_600_000)
        with LogDB({db_url!r}) as db:
            breakers = CircuitBreakers(db.breaker_store(), no_trip)
            db.schema_version()  # connected before the start line, so both really run at once
            while not pathlib.Path({str(go)!r}).exists():  # readiness: start together
                pass
            for _ in range({per_process}):
                permit = breakers.acquire("fal")
                breakers.record(permit, outcome="failure", failure_class=FailureClass.TRANSIENT)
                breakers.reset("replicate")
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", child]) for _ in range(2)]
    go.touch()
    assert [proc.wait(timeout=60) for proc in procs] == [0, 0]
    with LogDB(db_url) as db:
        store = db.breaker_store()
        record = store.get("fal")
        assert record is not None and len(record.window) == 2 * per_process
        assert len(store.transitions("replicate", limit=1000)) == 2 * per_process


def test_update_is_rolled_back_when_fn_fails(db_url: str) -> None:
    with LogDB(db_url) as db:
        store = db.breaker_store()

        def failing(record: BreakerRecord | None) -> tuple[BreakerRecord, list[Transition]]:
            raise RuntimeError("bug in the state machine")

        with pytest.raises(RuntimeError):
            store.update("fal", failing)
        assert store.get("fal") is None and store.all() == {}


def test_transitions_filter_and_order(db_url: str) -> None:
    with LogDB(db_url) as db:
        store = db.breaker_store()
        for i, provider in enumerate(["fal", "replicate", "fal"]):

            def step(
                record: BreakerRecord | None, provider: str = provider, i: int = i
            ) -> tuple[BreakerRecord, list[Transition]]:
                move = Transition(provider, BreakerState.CLOSED, BreakerState.FORCED_OPEN, f"t{i}", float(i))
                return BreakerRecord(provider, BreakerState.FORCED_OPEN, updated_at=float(i)), [move]

            store.update(provider, step)
        assert [t.reason for t in store.transitions()] == ["t2", "t1", "t0"]
        assert [t.reason for t in store.transitions("fal")] == ["t2", "t0"]
        assert [t.reason for t in store.transitions(limit=1)] == ["t2"]
        assert sorted(store.all()) == ["fal", "replicate"]
