"""SQLiteBreakerStore: breaker state shared between connections, threads and processes.

The state-machine tests in ``tests/test_breaker.py`` also run against this store; here are the parts only a
shared database has: atomicity under concurrency and visibility across processes.
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


def test_a_breaker_tripped_in_another_process_denies_here(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    child = textwrap.dedent(
        f"""
        from imagegen_core.breaker import CircuitBreakers
        from imagegen_core.config import BreakerConfig
        from imagegen_core.errors import FailureClass
        from imagegen_core.log import LogDB

        with LogDB({str(path)!r}) as db:
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


def test_concurrent_failures_from_two_connections_are_all_counted(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
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


def test_update_is_rolled_back_when_fn_fails(tmp_path: Path) -> None:
    with LogDB(tmp_path / "log.db") as db:
        store = db.breaker_store()

        def failing(record: BreakerRecord | None) -> tuple[BreakerRecord, list[Transition]]:
            raise RuntimeError("bug in the state machine")

        with pytest.raises(RuntimeError):
            store.update("fal", failing)
        assert store.get("fal") is None and store.all() == {}


def test_transitions_filter_and_order(tmp_path: Path) -> None:
    with LogDB(tmp_path / "log.db") as db:
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
