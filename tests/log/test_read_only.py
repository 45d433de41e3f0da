"""The SQLite log made unwritable under a running process (a read-only remount, an immutable file, another
owner's file): an outage like a full disk. Writes are retried, then kept in the spill, and written back once the
file is writable again; the writer says why meanwhile (what ``/health`` reports).

The real case uses ``chattr +i`` (root ignores file modes, not the immutable flag); where the filesystem or the
user cannot set it, those tests are skipped and the error codes are checked one by one."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from imagegen_core.errors import LogDatabaseBusy
from imagegen_core.log import LogDB
from imagegen_core.log.spill import LogSpill
from imagegen_core.log.writer import LogWriter
from tests.log.test_spill import start, statuses, until


def _chattr(flag: str, *paths: Path) -> bool:
    chattr = shutil.which("chattr")
    if chattr is None:
        return False
    done = subprocess.run([chattr, flag, *map(str, paths)], capture_output=True, check=False)
    return done.returncode == 0


def immutable_supported(folder: Path) -> bool:
    """Whether ``chattr +i`` works here (root on ext4, xfs, btrfs...; not on tmpfs or overlayfs, nor unprivileged)."""
    probe = folder / "chattr-probe"
    probe.write_text("x")
    try:
        return _chattr("+i", probe)
    finally:
        _chattr("-i", probe)
        probe.unlink()


@contextmanager
def read_only(*paths: Path) -> Iterator[None]:
    """The files cannot be written, not even by root, until the block ends (or :func:`writable` is called)."""
    existing = [p for p in paths if p.exists()]
    assert _chattr("+i", *existing)
    try:
        yield
    finally:
        _chattr("-i", *existing)


def writable(*paths: Path) -> None:
    assert _chattr("-i", *[p for p in paths if p.exists()])


@pytest.fixture
def db(tmp_path: Path) -> Iterator[LogDB]:
    if not immutable_supported(tmp_path):
        pytest.skip("chattr +i does not work here (needs root and a filesystem with the immutable flag)")
    with LogDB(tmp_path / "imagegen.db") as log:
        log.open()
        yield log


def log_files(db: LogDB) -> list[Path]:
    assert db.path is not None
    return [db.path, db.path.with_name(db.path.name + "-wal")]


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (sqlite3.SQLITE_READONLY, "attempt to write a readonly database"),
        (sqlite3.SQLITE_IOERR | (3 << 8), "disk I/O error"),  # SQLITE_IOERR_WRITE
        (sqlite3.SQLITE_CANTOPEN, "unable to open database file"),
        (sqlite3.SQLITE_PERM, "access permission denied"),
    ],
    ids=["readonly", "ioerr-write", "cantopen", "perm"],
)
def test_a_file_that_cannot_be_written_is_an_outage_not_a_bad_row(tmp_path: Path, code: int, message: str) -> None:
    """QA (repro_sqlite_readonly.sh): only locked, busy and a full disk were retried; these dropped each row."""
    log = LogDB(tmp_path / "imagegen.db")
    error = sqlite3.OperationalError(message)
    error.sqlite_errorcode = code  # type: ignore[attr-defined]
    translated = log.backend._error(error, "write")  # type: ignore[attr-defined]
    assert isinstance(translated, LogDatabaseBusy), translated
    assert str(tmp_path / "imagegen.db") in str(translated)
    bad_row = sqlite3.IntegrityError("FOREIGN KEY constraint failed")
    bad_row.sqlite_errorcode = sqlite3.SQLITE_CONSTRAINT  # type: ignore[attr-defined]
    assert not isinstance(log.backend._error(bad_row, "write"), LogDatabaseBusy)  # type: ignore[attr-defined]


def test_rows_written_while_the_file_is_read_only_are_kept_and_written_back_once_it_is_writable(
    db: LogDB, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """QA: a read-only SQLite log lost every row ("attempt to write a readonly database", five ERROR lines per
    request), nothing went to the spill and ``/health`` said ok. Now the rows are retried, kept in the spill,
    and written in order once the file is writable; the writer says why meanwhile."""
    spill = LogSpill(tmp_path / "spill", db)
    writer = LogWriter(batch=db.batch, busy_retry_s=0.3, spill=spill, write_back_every_s=0.1)
    try:
        start(db, writer, "before")
        writer.flush_sync()
        with caplog.at_level(logging.WARNING, logger="imagegen"), read_only(*log_files(db)):
            start(db, writer, "during-1")
            start(db, writer, "during-2")
            writer.flush_sync()
            assert statuses(db) == [("before", "running")] and spill.waiting() == 2
            failure = writer.failing
            assert failure is not None and "make " in failure.message and "writable" in failure.message
            writable(*log_files(db))
            until(lambda: spill.files() == [])
        start(db, writer, "after")
        writer.flush_sync()
        assert [rid for rid, _ in statuses(db)] == ["before", "during-1", "during-2", "after"]
        assert writer.failing is None
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        writer.close()


def test_a_writer_that_connected_to_a_read_only_file_writes_once_it_is_writable(db: LogDB, tmp_path: Path) -> None:
    """SQLite opens a file it cannot write read-only, and such a connection stays read-only: the writer's
    first connection made during the outage must not keep the rows out of the log once the file is fixed."""
    spill = LogSpill(tmp_path / "spill", db)
    writer = LogWriter(batch=db.batch, busy_retry_s=0.3, spill=spill, write_back_every_s=0.1)
    try:
        with read_only(*log_files(db)):
            with pytest.raises(LogDatabaseBusy, match="writable"):
                _check_in_thread(db)
            start(db, writer, "r1")
            writer.flush_sync()
            assert spill.waiting() == 1
        until(lambda: statuses(db) == [("r1", "running")])
    finally:
        writer.close()


def _check_in_thread(db: LogDB) -> None:
    """:meth:`LogDB.check_writable` from a fresh thread (a new connection, as a server's start makes)."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(db.check_writable).result()


def damage(path: Path) -> None:
    """Overwrite every page but the first (the schema) with garbage, as a bad disk or a stray write would, and
    write the header from another connection, so that the running process reads the pages again."""
    other = sqlite3.connect(path)
    try:
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every row into the file itself
        data = path.read_bytes()
        path.write_bytes(data[:4096] + b"\xff" * (len(data) - 4096))
        other.execute("PRAGMA user_version = 7")  # a change other connections see: their cached pages go
    finally:
        other.close()


def test_rows_written_while_the_file_is_damaged_are_kept_and_go_to_the_new_log_once_it_is_moved_away(
    tmp_path: Path,
) -> None:
    """QA chaos: the log truncated under a running server ("database disk image is malformed") dropped every
    row, each batch with an error line, though the advice was to move the file away, after which the process
    starts a new log. The rows are now kept in the spill meanwhile and written to the new log (the damage is
    made here with garbage pages: a truncated file shows only once SQLite reads its pages again)."""
    with LogDB(tmp_path / "imagegen.db") as db:
        db.open()
        spill = LogSpill(tmp_path / "spill", db)
        writer = LogWriter(batch=db.batch, busy_retry_s=0.3, spill=spill, write_back_every_s=0.1)
        try:
            start(db, writer, "before")
            writer.flush_sync()
            damage(tmp_path / "imagegen.db")
            start(db, writer, "during")
            writer.flush_sync()
            assert spill.waiting() == 1, "the row was dropped"
            failure = writer.failing
            assert failure is not None and "damaged" in failure.message
            for path in tmp_path.glob("imagegen.db*"):
                path.rename(tmp_path / f"damaged-{path.name}")
            until(lambda: spill.files() == [])
            start(db, writer, "after")
            writer.flush_sync()
            assert [rid for rid, _ in statuses(db)] == ["during", "after"]
        finally:
            writer.close()


def test_a_damaged_file_is_an_outage_for_writes_only(tmp_path: Path) -> None:
    """A read of a damaged file stays an error that names the file as damaged (``imagegen db check``, stats)."""
    log = LogDB(tmp_path / "imagegen.db")
    for code, message in [
        (sqlite3.SQLITE_CORRUPT, "database disk image is malformed"),
        (sqlite3.SQLITE_NOTADB, "file is not a database"),
    ]:
        error = sqlite3.DatabaseError(message)
        error.sqlite_errorcode = code  # type: ignore[attr-defined]
        assert isinstance(log.backend._error(error, "write"), LogDatabaseBusy)  # type: ignore[attr-defined]
        assert not isinstance(log.backend._error(error, "read"), LogDatabaseBusy)  # type: ignore[attr-defined]
