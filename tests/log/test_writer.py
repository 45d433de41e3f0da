"""The log writer keeps order and does not drop a write when the database stays locked for a while."""

from __future__ import annotations

from imagegen_core.errors import LogDatabaseBusy, LogDatabaseError
from imagegen_core.log.writer import LogWriter


def test_a_busy_write_is_retried_and_later_writes_wait_for_it() -> None:
    applied: list[str] = []
    failures = {"first": 3}

    def write(name: str) -> None:
        if failures.get(name, 0) > 0:
            failures[name] -= 1
            raise LogDatabaseBusy("log database stayed locked")
        applied.append(name)

    waits: list[float] = []
    writer = LogWriter(busy_retry_s=30, sleep=waits.append)
    for name in ("first", "second", "third"):
        writer.submit(write, name)
    writer.flush_sync()
    writer.close()
    assert applied == ["first", "second", "third"]  # nothing lost, order kept
    assert len(waits) == 3 and all(0 < w <= 2.0 for w in waits)  # backed off between tries


def test_other_database_errors_are_not_retried() -> None:
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise LogDatabaseError("log database x is not a SQLite database")

    writer = LogWriter(busy_retry_s=30, sleep=lambda s: None)
    future = writer.submit(broken)
    writer.flush_sync()
    writer.close()
    assert calls == [1] and isinstance(future.exception(), LogDatabaseError)
