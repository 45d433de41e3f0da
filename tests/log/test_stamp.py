"""The change stamp beside a SQLite log: it moves after a commit that changes a config version or a breaker's
state (in any process), never before, and not for the routine counting of calls."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

from imagegen_core.breaker import CircuitBreakers, Permit
from imagegen_core.config import BreakerConfig
from imagegen_core.log import LogDB
from tests.mounts import small_tmpfs


@pytest.fixture
def db(tmp_path: Path) -> Iterator[LogDB]:
    log = LogDB(tmp_path / "log.db").open()
    yield log
    log.close()


def breakers(db: LogDB) -> CircuitBreakers:
    return CircuitBreakers(db.breaker_store(), BreakerConfig.model_validate({"min_calls": 2, "failure_ratio": 0.5}))


def test_the_token_moves_when_a_change_commits_and_not_before(db: LogDB) -> None:
    before = db.change_token()
    assert before is not None and len(before) == 8
    with db.transaction() as tx:
        db.note_change()
        tx.execute("INSERT INTO config_versions (created_at, source, document) VALUES (1, 'test', '{}')")
        assert db.change_token() == before  # not committed yet: a reader must not be told
    assert db.change_token() != before


def test_a_config_saved_through_another_connection_moves_the_token(db: LogDB, tmp_path: Path) -> None:
    before = db.change_token()
    with LogDB(tmp_path / "log.db") as other:
        other.save_config({"providers": {}}, source="other")
    assert db.change_token() != before


def test_a_config_saved_by_another_process_moves_the_token(db: LogDB, tmp_path: Path) -> None:
    before = db.change_token()
    code = (
        "import sys; from imagegen_core.log import LogDB; "
        "db = LogDB(sys.argv[1]); db.save_config({'providers': {}}, source='cli'); db.close()"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "log.db")], check=True, timeout=60)
    assert db.change_token() != before


def test_counting_calls_in_a_closed_breaker_leaves_the_token_but_a_trip_moves_it(db: LogDB) -> None:
    cb = breakers(db)

    def call(outcome: Literal["success", "failure"]) -> None:
        permit = cb.acquire("fal")
        assert isinstance(permit, Permit)
        cb.record(permit, outcome=outcome)

    call("success")
    before = db.change_token()
    call("success")
    assert db.change_token() == before  # acquire decides a closed breaker the same, whatever its window
    call("failure")
    call("failure")
    assert cb.state("fal").state == "open"
    assert db.change_token() != before


def test_inside_a_batch_the_token_moves_at_the_batch_commit(db: LogDB) -> None:
    cb = breakers(db)
    before = db.change_token()
    with db.batch() as scope:
        with scope():
            cb.force_open("fal")
        assert db.change_token() == before
    assert db.change_token() != before


def test_without_a_stamp_file_the_token_is_none_and_says_why(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "log.db-stamp").mkdir()  # something that cannot be mapped where the stamp goes
    with caplog.at_level(logging.WARNING, logger="imagegen.log"), LogDB(tmp_path / "log.db") as db:
        assert db.change_token() is None and db.change_token() is None
        db.save_config({"providers": {}}, source="test")  # writes still work
    warnings = [r.getMessage() for r in caplog.records if "change stamp" in r.getMessage()]
    assert len(warnings) == 1 and "reading the log on every request" in warnings[0]


def test_postgresql_has_no_token(postgres_url: str) -> None:
    """Machines share no memory: on PostgreSQL every request reads."""
    with LogDB(postgres_url) as db:
        assert db.change_token() is None
        db.save_config({"providers": {}}, source="test")
        assert db.change_token() is None


def test_a_closed_log_reopens_its_stamp_and_still_sees_changes(db: LogDB, tmp_path: Path) -> None:
    first = db.change_token()
    db.close()  # the stamp is unmapped with the connections; the next use maps it again
    with LogDB(tmp_path / "log.db") as other:
        other.save_config({"providers": {}}, source="other")
    assert db.change_token() not in (None, first)


def test_the_stamp_has_real_blocks_so_a_full_disk_cannot_fault_its_mapping(tmp_path: Path) -> None:
    """Regression: grown by ftruncate alone, the stamp was a hole; on a full disk the first write through the
    mapping needed a block and the kernel killed the process with SIGBUS, silently. A stamp left as a hole by
    an earlier version is filled too."""
    (tmp_path / "old.db-stamp").write_bytes(b"")
    os.truncate(tmp_path / "old.db-stamp", 8)  # what earlier versions left: 8 bytes, no block
    for name in ("new.db", "old.db"):
        with LogDB(tmp_path / name) as db:
            assert db.change_token() is not None
        assert (tmp_path / f"{name}-stamp").stat().st_blocks > 0


def test_no_room_for_the_stamp_leaves_it_unavailable_and_the_log_working(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    with caplog.at_level(logging.WARNING, logger="imagegen.log"), LogDB(tmp_path / "log.db") as db:
        assert db.change_token() is None
        db.save_config({"providers": {}}, source="test")
    assert any("No space left on device" in r.getMessage() for r in caplog.records)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 120 KiB tmpfs (root only: skipped elsewhere), unmounted afterwards."""
    with small_tmpfs(tmp_path / "small", "120k") as mount:
        yield mount


def test_a_full_disk_is_reported_not_a_silent_crash(full_disk: Path) -> None:
    """The new-user run that found the SIGBUS: three generates into a home on a full disk. Each now ends with
    exit status 1 and says the disk is full (before the fix: status 135, SIGBUS, nothing printed)."""
    env = {**os.environ, "IMAGEGEN_HOME": str(full_disk / "home")}
    for _ in range(3):
        proc = subprocess.run(
            [sys.executable, "-m", "imagegen_core.cli", "generate", "x", "--width", "2000", "--height", "2000"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
        assert "No space left on device" in proc.stderr or "disk is full" in proc.stderr
        assert "Traceback" not in proc.stderr


_SURVIVOR = """
import os, sys
from pathlib import Path
from imagegen_core.log import LogDB

db_file = Path(sys.argv[1])
stamp = db_file.with_name(db_file.name + "-stamp")
with LogDB(db_file) as db:
    before = db.change_token()
    os.truncate(stamp, 0)  # `: > imagegen.db-stamp` while this process reads it
    after = db.change_token()  # with the stamp memory-mapped, this read was SIGBUS: the process died
    assert after is not None and after != before, (before, after)
    assert len(stamp.read_bytes()) == 8  # written afresh
    with LogDB(db_file) as other:  # and it still carries changes from another writer
        other.save_config({"providers": {}}, source="other")
    assert db.change_token() not in (None, after)
print("survived")
"""


def test_a_stamp_truncated_under_a_live_reader_is_written_afresh_not_a_crash(tmp_path: Path) -> None:
    """Regression (SRE fault injection): `: > imagegen.db-stamp` under `imagegen serve` killed it with SIGBUS
    (exit 135) at the next request, the mapped page being past the file's end. The reader runs in a child, as a
    SIGBUS kills the process it hits."""
    proc = subprocess.run(
        [sys.executable, "-c", _SURVIVOR, str(tmp_path / "log.db")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "survived" in proc.stdout, (proc.returncode, proc.stderr[-2000:])


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_stamp_deleted_or_replaced_is_followed_within_the_identity_check(tmp_path: Path, how: str) -> None:
    """A process that opens the stamp after it was deleted or replaced bumps the new file: a reader still on the
    old one follows it within IDENTITY_CHECK_S, and sees a moved token (so it reads once more)."""
    from imagegen_core.log.stamp import IDENTITY_CHECK_S, ChangeStamp  # here: the SIGBUS test above runs alone

    clock = _Clock()
    reader, writer = ChangeStamp(tmp_path / "log.db", clock=clock), ChangeStamp(tmp_path / "log.db")
    first = reader.token()
    if how == "deleted":
        reader.path.unlink()
    else:
        (tmp_path / "other").write_bytes(b"abc")  # shorter than a token, as a stray copy might be
        os.replace(tmp_path / "other", reader.path)
    writer.bump()  # e.g. `imagegen config set` started after the deletion
    clock.now += IDENTITY_CHECK_S
    moved = reader.token()
    assert moved not in (None, first) and moved == reader.path.read_bytes()
    reader.bump()  # and bumps go to the file the path names now
    assert reader.path.read_bytes() == writer.token() != moved
    reader.close()
    writer.close()


def test_reading_the_stamp_costs_one_pread_between_identity_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hot path: no stat, no lock, no open between checks (a stat costs twice a read)."""
    from imagegen_core.log.stamp import ChangeStamp

    clock = _Clock()
    stamp = ChangeStamp(tmp_path / "log.db", clock=clock)
    stamp.token()
    calls: list[str] = []
    monkeypatch.setattr(os, "stat", lambda *a, **k: calls.append("stat"))
    monkeypatch.setattr(os, "open", lambda *a, **k: calls.append("open"))
    for _ in range(3):
        assert stamp.token() is not None
    assert calls == []
    stamp.close()
