"""LogDB: opening, migrations, errors, the write API and sharing one database between connections.

Everything but the SQLite-only file handling runs on both backends (``db_url``: SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagegen_core.errors import LogDatabaseError
from imagegen_core.log import MIGRATIONS, LogDB, attempts_for, request_summary
from imagegen_core.log.catalog import table_columns, table_names
from imagegen_core.log.sqlite import BUSY_TIMEOUT_MS
from tests.log.rows import add_request, apply_migrations_up_to

T0 = 1_700_000_000.0
REQUEST: dict[str, Any] = {
    "prompt": "a lighthouse at dusk",
    "keyword": "coast",
    "article_id": "a-1",
    "width": 1024,
    "height": 768,
    "style": "photo",
    "source": "python",
}


@pytest.fixture
def db(logdb: LogDB) -> Iterator[LogDB]:
    yield logdb


def schema_of(db: LogDB) -> dict[str, list[tuple[str, bool]]]:
    return {table: table_columns(db, table) for table in table_names(db)}


def test_open_creates_the_folder_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "log.db"
    with LogDB(path) as db:
        assert path.exists()
        assert db.query("PRAGMA journal_mode")[0]["journal_mode"] == "wal"
        assert db.query("PRAGMA foreign_keys")[0]["foreign_keys"] == 1
        assert db.query("PRAGMA busy_timeout")[0]["timeout"] == 5000
        assert db.query("PRAGMA synchronous")[0]["synchronous"] == 1  # NORMAL
        assert db.schema_version() == MIGRATIONS[-1][0]


def test_a_new_log_file_and_its_wal_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    """Regression (QA): the log (every prompt, article id and provider error) was created 0644 whatever the
    umask left, readable by every local user; the spill of the same rows is 0600. An existing file keeps its
    mode."""
    path = tmp_path / "log.db"
    old = os.umask(0o022)
    try:
        with LogDB(path) as db:
            add_request(db, "r1", created_at=time.time(), status="success")
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    finally:
        os.umask(old)
    assert {name: mode for name, mode in modes.items() if name.startswith("log.db")} == {
        "log.db": 0o600,
        "log.db-wal": 0o600,
        "log.db-shm": 0o600,
    }
    path.chmod(0o640)  # widened by an operator on purpose
    with LogDB(path) as db:
        db.schema_version()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_migration_list_is_numbered_and_append_only() -> None:
    versions = [version for version, _, _ in MIGRATIONS]
    assert versions == list(range(1, len(MIGRATIONS) + 1))
    assert len({name for _, name, _ in MIGRATIONS}) == len(MIGRATIONS)


def test_reopening_applies_nothing_new(db_url: str) -> None:
    with LogDB(db_url) as db:
        before = db.query("SELECT * FROM schema_migrations")
        schema = schema_of(db)
        assert db.migrate() == []
    with LogDB(db_url) as db:
        assert db.query("SELECT * FROM schema_migrations") == before
        assert schema_of(db) == schema


def test_concurrent_first_openers_apply_each_migration_once(db_url: str) -> None:
    path = db_url
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def open_db() -> None:
        barrier.wait()
        try:
            LogDB(path).open().close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_db) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with LogDB(path) as db:
        assert len(db.query("SELECT * FROM schema_migrations")) == len(MIGRATIONS)


def test_a_database_from_a_newer_version_is_refused(db_url: str) -> None:
    path = db_url
    with LogDB(path) as db, db.transaction() as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (999, 'future', 0)")
    with pytest.raises(LogDatabaseError, match="newer than this imagegen"):
        LogDB(path).open()


def test_opening_a_current_log_does_not_wait_for_another_process_write_lock(tmp_path: Path) -> None:
    """Another process inside a long write (a `db copy`, a stuck tool) must not stop imagegen from opening the
    log and reading it: the schema check is a read, and only the writes wait (in the log writer)."""
    path = tmp_path / "log.db"
    LogDB(path).open().close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # in WAL mode: holds the write lock, readers go on
    try:
        started = time.monotonic()
        with LogDB(path) as db:
            assert len(db.query("SELECT * FROM schema_migrations")) == len(MIGRATIONS)
        # Before, the check took the write lock: it waited the whole 5 s busy timeout, then failed.
        assert time.monotonic() - started < BUSY_TIMEOUT_MS / 1000 / 2
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_file_that_is_not_sqlite_gives_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    path.write_bytes(b"this is a text file, not a database" * 100)
    with pytest.raises(LogDatabaseError) as info:
        LogDB(path).open()
    assert "is not a SQLite database" in str(info.value) and "\n" not in str(info.value)


def test_a_file_where_the_log_folder_should_be_is_named(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(LogDatabaseError) as info:
        LogDB(f"sqlite:///{tmp_path / 'afile' / 'sub' / 'x.db'}").open()
    assert str(info.value).startswith(f"cannot create the log folder {tmp_path / 'afile' / 'sub'}: ")
    assert f"{tmp_path / 'afile'} is a file, not a folder" in str(info.value)
    assert "IMAGEGEN_DATABASE_URL" in str(info.value) and "File exists" not in str(info.value)


def test_a_folder_that_cannot_be_created_gives_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "home"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(LogDatabaseError, match=r"cannot create the log folder .*IMAGEGEN_HOME"):
        LogDB(blocker / "log.db").open()


def test_a_database_path_that_is_a_folder_says_so(tmp_path: Path) -> None:
    with pytest.raises(LogDatabaseError, match=r"is a folder: name a file, e\.g\. sqlite:///.*imagegen\.db$"):
        LogDB(tmp_path).open()


@pytest.mark.parametrize("special", ["/dev/null", "fifo"])
def test_a_database_path_that_is_no_regular_file_says_so(tmp_path: Path, special: str) -> None:
    """QA (embedding): ``sqlite:////dev/null`` (to do without a log) and a FIFO failed with "disk I/O error: make
    the file … writable", an outage: ImageGen went on without its log, keeping every row in the spill for ever."""
    path = Path(special)
    if special == "fifo":
        path = tmp_path / "log.db"
        os.mkfifo(path)
    with pytest.raises(LogDatabaseError, match=r"is not a regular file \(a device, a pipe or a socket\): name a fi"):
        LogDB(f"sqlite:///{path}").open()


def test_two_instances_on_one_database_see_each_others_writes(db_url: str) -> None:
    path = db_url
    with LogDB(path) as first, LogDB(path) as second:
        first.start_request("r1", created_at=T0, **REQUEST)
        second.finish_request("r1", finished_at=T0 + 2, status="success", provider="fal", elapsed_ms=2000)
        [row] = first.query("SELECT status, provider, elapsed_ms FROM requests")
        assert row == {"status": "success", "provider": "fal", "elapsed_ms": 2000}
        assert second.save_config({"a": 1}, source="cli") == first.latest_config_id()


def test_an_unfinished_attempt_stays_visibly_running(db: LogDB) -> None:
    """A crash mid-request leaves rows that say so."""
    db.start_request("r1", created_at=T0, **REQUEST)
    db.start_attempt("a1", request_id="r1", provider="fal", attempt=1, hedged=False, started_at=T0 + 0.1)
    [attempt] = attempts_for(db, "r1")
    assert attempt["outcome"] == "running" and attempt["finished_at"] is None
    summary = request_summary(db, since=T0, now=T0 + 3600)
    assert summary["running"] == 1 and summary["incomplete"] == 1
    assert request_summary(db, since=T0, now=T0 + 5)["incomplete"] == 0


def test_finishing_an_attempt_records_everything(db: LogDB) -> None:
    db.start_request("r1", created_at=T0, **REQUEST)
    db.start_attempt("a1", request_id="r1", provider="fal", attempt=2, hedged=True, started_at=T0)
    assert db.finish_attempt(
        "a1",
        finished_at=T0 + 1.5,
        outcome="failed",
        failure_class="rate_limited",
        http_status=429,
        duration_ms=1500,
        cost_usd=0.0,
        error="slow down",
    )
    [row] = attempts_for(db, "r1")
    assert {k: row[k] for k in ("attempt", "hedged", "outcome", "failure_class", "http_status", "duration_ms")} == {
        "attempt": 2,
        "hedged": True,
        "outcome": "failed",
        "failure_class": "rate_limited",
        "http_status": 429,
        "duration_ms": 1500,
    }


def test_finishing_unknown_rows_reports_false(db: LogDB) -> None:
    assert db.finish_request("nope", finished_at=T0, status="failed") is False
    assert db.finish_attempt("nope", finished_at=T0, outcome="cancelled") is False


def test_finish_request_refuses_an_unknown_status(db: LogDB) -> None:
    with pytest.raises(ValueError, match="status must be one of"):
        db.finish_request("r1", finished_at=T0, status="running")


def test_an_attempt_needs_its_request(db: LogDB) -> None:
    with pytest.raises(LogDatabaseError, match="FOREIGN KEY"):
        db.start_attempt("a1", request_id="missing", provider="fal", attempt=1, hedged=False, started_at=T0)


def test_a_rejected_request_is_one_finished_row(db: LogDB) -> None:
    db.reject_request("r1", created_at=T0, error="width: too large", **REQUEST)
    [row] = db.query("SELECT status, finished_at, error FROM requests")
    assert row == {"status": "rejected", "finished_at": T0, "error": "width: too large"}


def test_config_versions(db: LogDB) -> None:
    assert db.latest_config() is None and db.latest_config_id() is None
    first = db.save_config({"race": {"mode": "parallel"}}, source="cli", created_at=T0)
    second = db.save_config({"race": {"mode": "sequential"}}, source="api", created_at=T0 + 1)
    assert second > first
    assert db.latest_config() == (second, {"race": {"mode": "sequential"}})
    assert db.latest_config_id() == second
    assert db.config_history(10) == [(second, T0 + 1, "api"), (first, T0, "cli")]
    assert db.config_history(1) == [(second, T0 + 1, "api")]


def test_writes_from_another_thread_are_visible_to_readers(db: LogDB) -> None:
    """The writer thread and the event-loop thread each use their own connection."""

    def write() -> None:
        for i in range(50):
            db.start_request(f"r{i}", created_at=T0 + i, **REQUEST)

    writer = threading.Thread(target=write)
    writer.start()
    while writer.is_alive():
        db.query("SELECT COUNT(*) FROM requests")  # reads never fail while the other thread writes
    writer.join()
    assert db.query("SELECT COUNT(*) AS n FROM requests")[0]["n"] == 50


def test_close_then_use_reopens(db_url: str) -> None:
    db = LogDB(db_url)
    db.save_config({}, source="cli")
    db.close()
    assert db.latest_config_id() == 1
    db.close()


def test_a_failed_transaction_is_rolled_back(db: LogDB) -> None:
    with pytest.raises(RuntimeError), db.transaction() as conn:
        conn.execute("INSERT INTO config_versions (created_at, source, document) VALUES (0, 'x', '{}')")
        raise RuntimeError("boom")
    assert db.latest_config_id() is None
    # No transaction left open, no trace of the rolled-back row. (PostgreSQL never hands out a sequence
    # number twice, even a rolled-back one, so the new id is not necessarily 1: count the rows instead.)
    saved = db.save_config({}, source="cli")
    assert [version for version, _, _ in db.config_history()] == [saved]


def test_writing_a_start_row_again_is_harmless(db: LogDB) -> None:
    """The writer applies a batch again when the connection was lost during its COMMIT, which may have gone
    through: the second INSERT of a request or attempt finds its row and changes nothing (no error)."""
    db.start_request("r1", **REQUEST, created_at=T0)
    db.start_attempt("a1", request_id="r1", provider="fal", attempt=1, hedged=False, started_at=T0)
    db.finish_attempt("a1", finished_at=T0 + 1, outcome="success", duration_ms=1000, cost_usd=0.003)
    db.start_request("r1", **REQUEST, created_at=T0 + 50)  # the batch, again
    db.start_attempt("a1", request_id="r1", provider="fal", attempt=1, hedged=False, started_at=T0 + 50)
    [attempt] = attempts_for(db, "r1")
    assert (attempt["outcome"], attempt["started_at"]) == ("success", T0)
    assert len(db.query("SELECT id FROM requests")) == 1


def test_writing_a_pick_again_is_harmless(logdb: LogDB) -> None:
    """The same pick applied twice (a batch whose COMMIT was lost, rows kept through an outage and written back,
    a write abandoned to a hung server that commits after all) counted the editor's choice twice. On both
    backends the second write now finds it, and a different pick of the request is still its own row."""
    logdb.start_request("r1", **REQUEST, created_at=T0)
    pick = {"offered": ["fal", "replicate"], "article_id": "a1", "url": "https://img/x.webp", "storage_key": "k"}
    for _ in range(2):
        logdb.record_pick("r1", provider="fal", **pick, picked_at=T0 + 10.123456)
    logdb.record_pick("r1", provider="replicate", **pick, picked_at=T0 + 20.5)
    rows = logdb.query("SELECT provider, offered, article_id, url, storage_key, picked_at FROM picks ORDER BY id")
    assert rows == [
        {
            "provider": "fal",
            "offered": '["fal", "replicate"]',
            "article_id": "a1",
            "url": "https://img/x.webp",
            "storage_key": "k",
            "picked_at": T0 + 10.123456,  # to the microsecond: a double, not a float4
        },
        {
            "provider": "replicate",
            "offered": '["fal", "replicate"]',
            "article_id": "a1",
            "url": "https://img/x.webp",
            "storage_key": "k",
            "picked_at": T0 + 20.5,
        },
    ]


def test_a_log_file_deleted_under_the_process_is_made_anew_and_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """QA: the log deleted under a running console, every later request went into the deleted file (still held
    open) and was lost without a word, while a command made a new log beside it. The file is checked once a
    second (here at every call), and the next write goes to a new file, tables and all, with one warning."""
    import imagegen_core.log.sqlite as sqlite_backend

    monkeypatch.setattr(sqlite_backend, "FILE_CHECK_EVERY_S", 0.0)
    path = tmp_path / "imagegen.db"
    with LogDB(path) as log:
        log.start_request("before", created_at=T0, **REQUEST)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        reading = threading.Thread(target=lambda: log.query("SELECT 1"))  # another thread's connection, renewed too
        reading.start()
        reading.join()
        log.start_request("after", created_at=T0 + 1, **REQUEST)
        assert [r["id"] for r in log.query("SELECT id FROM requests")] == ["after"]
    with LogDB(path) as reopened:
        assert [r["id"] for r in reopened.query("SELECT id FROM requests")] == ["after"]
    (warning,) = [r.getMessage() for r in caplog.records if "deleted or replaced" in r.getMessage()]
    assert warning.startswith(f"log database {path} was deleted or replaced under this process")


def test_a_log_file_deleted_during_a_batch_is_made_anew_once_the_batch_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write inside the log writer's batch noticed the file gone, and "made the new one" on the batch's
    connection, still on the deleted file: the next batch went to a new, empty file, and every later write of
    the process failed with "no such table: requests". The file is looked at between batches only (the rows of
    a batch go to the file it began on), and the next batch finds the new file with its tables."""
    import imagegen_core.log.sqlite as sqlite_backend

    monkeypatch.setattr(sqlite_backend, "FILE_CHECK_EVERY_S", 0.0)
    path = tmp_path / "imagegen.db"
    with LogDB(path) as log:
        with log.batch():
            log.start_request("before", created_at=T0, **REQUEST)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            log.start_request("during", created_at=T0 + 1, **REQUEST)  # into the file its batch began on
        with log.batch():
            log.start_request("after", created_at=T0 + 2, **REQUEST)
        assert [r["id"] for r in log.query("SELECT id FROM requests")] == ["after"]


def test_a_thread_waits_while_another_makes_a_deleted_log_file_anew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread that read while another was making the new file for one deleted under the process went on, its
    connection renewed onto the new file before its tables were made: "no such table". It now waits for them."""
    import imagegen_core.log.sqlite as sqlite_backend

    monkeypatch.setattr(sqlite_backend, "FILE_CHECK_EVERY_S", 0.0)
    path = tmp_path / "imagegen.db"
    outcome: list[Any] = []
    reading = threading.Event()  # the reader finished, or asked for the log's lock (and waits for it)

    def read() -> None:
        try:
            outcome.append(log.query("SELECT COUNT(*) AS n FROM breaker_state"))
        except Exception as exc:
            outcome.append(exc)
        finally:
            reading.set()

    reader = threading.Thread(target=read)

    class WatchedLock:
        """The log's lock, saying when the reader asks for it."""

        def __init__(self, lock: Any) -> None:
            self.lock = lock

        def __enter__(self) -> None:
            if threading.current_thread() is reader:
                reading.set()
            self.lock.acquire()

        def __exit__(self, *exc: object) -> None:
            self.lock.release()

    with LogDB(path) as log:
        found_replaced = log.backend.replaced

        def replaced_then_read() -> bool:
            """The file is found replaced: the reader reads now, before this thread has made the new file."""
            found = found_replaced()
            if found:
                reader.start()
                assert reading.wait(30)
            return found

        monkeypatch.setattr(log.backend, "replaced", replaced_then_read)
        monkeypatch.setattr(log, "_lock", WatchedLock(log._lock))
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        log.start_request("after", created_at=T0, **REQUEST)
        reader.join(30)
    assert outcome == [[{"n": 0}]]


def test_a_request_under_way_is_written_again_to_a_log_file_made_anew_even_after_a_rollback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rows of a request under way when its log file was deleted are written again to the new file before its
    next row, and again if the batch that wrote them was rolled back (the log writer then applies it anew); a
    request that ended before the deletion is not written again."""
    import imagegen_core.log.sqlite as sqlite_backend

    monkeypatch.setattr(sqlite_backend, "FILE_CHECK_EVERY_S", 0.0)
    path = tmp_path / "imagegen.db"
    with LogDB(path) as log:
        log.start_request("ended", created_at=T0, **REQUEST)
        log.finish_request("ended", finished_at=T0 + 1, status="success")
        log.start_request("r1", created_at=T0, **REQUEST)
        log.start_attempt("a1", request_id="r1", provider="fal", attempt=1, hedged=False, started_at=T0)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        with pytest.raises(RuntimeError), log.batch():
            assert log.finish_attempt("a1", finished_at=T0 + 2, outcome="success", duration_ms=2000)
            raise RuntimeError("a later call of the batch failed: the batch is rolled back")
        assert log.query("SELECT id FROM requests") == []
        assert log.finish_attempt("a1", finished_at=T0 + 2, outcome="success", duration_ms=2000)
        assert log.finish_request("r1", finished_at=T0 + 3, status="success", provider="fal")
        rows = log.query("SELECT id, status, prompt, provider FROM requests")
        assert rows == [{"id": "r1", "status": "success", "prompt": REQUEST["prompt"], "provider": "fal"}]
        assert [(a["id"], a["outcome"]) for a in attempts_for(log, "r1")] == [("a1", "success")]


def test_a_log_opened_without_migrating_refuses_an_older_schema_at_open_saying_what_to_run(db_url: str) -> None:
    """An embedding developer may open the log with ``migrate=False``: on a log of an older schema that opened,
    wrote rows, and failed later at some statement with the database's own "no such column". Opening it now
    refuses in one line naming the schema and what to run; a write is refused the same way without ``open()``,
    and a read that meets a missing column says it too. Inspecting (what ``migrate=False`` is for) still works,
    and once migrated the log is used as usual."""
    from imagegen_core.log.history import search_requests

    known, old = MIGRATIONS[-1][0], MIGRATIONS[-1][0] - 1
    builder = LogDB(db_url, migrate=False)
    try:
        with builder.backend.transaction() as tx:
            apply_migrations_up_to(builder, tx, old, recorded_at=T0)
    finally:
        builder.close()
    log = LogDB(db_url, migrate=False)
    try:
        advice = (
            f"log database {log.label}: schema v{old}, this imagegen needs v{known}; run `imagegen db migrate`"
            " (--url names a log other than the environment's), or open it with migrate=True"
        )
        with pytest.raises(LogDatabaseError) as refused:
            log.open()
        assert str(refused.value) == advice
        with pytest.raises(LogDatabaseError) as write_refused:
            log.start_request("r1", created_at=T0, **REQUEST)
        assert str(write_refused.value) == advice
        with pytest.raises(LogDatabaseError) as read_failed:
            search_requests(log)
        assert str(read_failed.value).endswith(f": {advice}") and "attribution" in str(read_failed.value)
        assert log.schema_version() == old and not log.has_unversioned_tables()  # inspecting answers
        assert log.migrate() == [known]
        log.open().start_request("r1", created_at=T0, **REQUEST)
        assert [row["id"] for row in search_requests(log)] == ["r1"]
    finally:
        log.close()
