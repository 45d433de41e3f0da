"""The SQLite log's folder on a full disk or a read-only mount when a process starts (QA, SRE fault injection):
in WAL mode SQLite must create or grow the -shm file just to open the log, so opening fails. ``serve`` and
``generate`` exited 2 with "make the file … writable" (the full disk blamed on permissions) and no image.
Now that is an outage like a locked database: the process starts with the config stored in the file (read as
it stands), the rows wait in the spill and are written back once the log opens again; one warning names the
real cause; production's ``serve`` refuses to start, in one line; a log that was never there is refused.

Real mounts: a 2 MB tmpfs filled up, and a read-only bind mount. They need root and a working ``mount``;
elsewhere the tests are skipped, saying so."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from imagegen_core.errors import LogDatabaseBusy, LogDatabaseError
from imagegen_core.log import LogDB
from imagegen_core.service import ImageGen
from imagegen_core.settings import Settings

from .conftest import ADMIN_TOKEN
from .serve_process import run_serve, serve, serve_env

STORED_TIMEOUT_MS = 4321  # the stored config's, to tell it from the built-in defaults


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True, check=False).returncode == 0


def _umount(folder: Path) -> None:
    if subprocess.run(["umount", str(folder)], capture_output=True, check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)  # busy: detach it anyway


def _needs_mounts(probe: Path) -> None:
    """Skip unless this process may mount (root, ``mount`` installed, and allowed here: not in every container)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) for a real tmpfs and read-only bind mount")
    probe.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)):
        pytest.skip("mount does not work here (a container without CAP_SYS_ADMIN?)")
    _umount(probe)


def _make_log(path: Path) -> None:
    """A log with one stored config version, closed as a process leaves it (its -wal and -shm files gone)."""
    with LogDB(path) as log:
        log.save_config({"defaults": {"timeout": STORED_TIMEOUT_MS}}, source="test")


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """The log in a 2 MB tmpfs, which is then filled up: the log's path."""
    _needs_mounts(tmp_path / "probe")
    disk = tmp_path / "disk"
    disk.mkdir()
    assert _mount("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk))
    try:
        _make_log(disk / "imagegen.db")
        with (disk / "filler").open("wb") as filler, contextlib.suppress(OSError):
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        yield disk / "imagegen.db"
    finally:
        _umount(disk)


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """The log in a folder seen through a bind mount that is then remounted read-only: the log's path there."""
    _needs_mounts(tmp_path / "probe")
    real, seen = tmp_path / "real", tmp_path / "ro"
    real.mkdir()
    seen.mkdir()
    assert _mount("--bind", str(real), str(seen))
    try:
        _make_log(seen / "imagegen.db")
        assert _mount("-o", "remount,bind,ro", str(seen))
        yield seen / "imagegen.db"
    finally:
        _umount(seen)


def _free_space(log_path: Path) -> None:
    (log_path.parent / "filler").unlink()


def _make_writable(log_path: Path) -> None:
    assert _mount("-o", "remount,bind,rw", str(log_path.parent))


def _env(home: Path, log_path: Path, **extra: str) -> dict[str, str]:
    return serve_env(home, IMAGEGEN_DATABASE_URL=f"sqlite:///{log_path}", **extra)


def _generate(cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "imagegen_core.cli", "generate", "a lighthouse", "--width", "64", "--height", "64"]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def _requests(log_path: Path) -> list[str]:
    with LogDB(log_path) as log:
        return [row["prompt"] for row in log.query("SELECT prompt FROM requests")]


@pytest.mark.parametrize(
    ("case", "cause"),
    [("full_disk", "the disk is full: free space on"), ("read_only_folder", "is on a read-only mount: remount it")],
)
def test_opening_names_the_real_cause(case: str, cause: str, request: pytest.FixtureRequest) -> None:
    """QA: both said "make the file, its -wal and -shm files and its folder writable" (or "check that the folder
    is writable"): an operator then looked at permissions. It is an outage (LogDatabaseBusy), not a bad path."""
    log_path: Path = request.getfixturevalue(case)
    with pytest.raises(LogDatabaseBusy) as raised, LogDB(log_path) as log:
        log.open()
    assert cause in str(raised.value) and str(log_path.parent) in str(raised.value)
    assert "make the file" not in str(raised.value)


def test_a_log_that_was_never_there_is_refused_not_waited_for(read_only_folder: Path) -> None:
    """A path that cannot work (nothing to keep rows for): a LogDatabaseError, not an outage."""
    with pytest.raises(LogDatabaseError) as raised, LogDB(read_only_folder.with_name("other.db")) as log:
        log.open()
    assert not isinstance(raised.value, LogDatabaseBusy) and "read-only mount" in str(raised.value)


@pytest.mark.parametrize(
    ("case", "cause", "recover"),
    [
        ("full_disk", "the disk is full", _free_space),
        ("read_only_folder", "read-only mount", _make_writable),
    ],
)
def test_generate_makes_its_image_and_keeps_its_rows_until_the_log_opens(
    case: str, cause: str, recover: Callable[[Path], None], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """QA: exit 2 and no image. Now the image, one warning naming the cause and the config in force (the one
    stored in the file), the rows in the spill; the next process after the fix writes them to the log."""
    log_path: Path = request.getfixturevalue(case)
    env = _env(tmp_path / "home", log_path)
    during = _generate(tmp_path, env)
    assert during.returncode == 0, during.stderr
    assert during.stdout.startswith("file://") and "Traceback" not in during.stderr
    (line,) = [line for line in during.stderr.splitlines() if "going on without it" in line]
    assert cause in line and "config stored in it (version 1" in line and str(tmp_path / "home" / "log-spill") in line
    assert "wait in" in during.stderr.splitlines()[-1]  # the rows kept, said once at exit
    recover(log_path)
    after = _generate(tmp_path, env)
    assert after.returncode == 0 and "going on without it" not in after.stderr, after.stderr
    assert _requests(log_path) == ["a lighthouse", "a lighthouse"]


def test_the_config_in_force_is_the_stored_one(
    read_only_folder: Path, settings_factory: Callable[..., Settings]
) -> None:
    """Not the built-in defaults, which may race providers the stored config turned off."""
    gen = ImageGen.from_settings(settings_factory(IMAGEGEN_DATABASE_URL=f"sqlite:///{read_only_folder}"))
    try:
        assert gen.log_unavailable_at_start is not None
        assert gen.config.defaults.timeout == STORED_TIMEOUT_MS and gen.config_in_force_version == 1
        assert gen.log_write_failure is not None  # /health says 503 from the start
    finally:
        gen.close()


def test_serve_starts_with_one_warning_outside_production(full_disk: Path, tmp_path: Path) -> None:
    """QA: exit 2. Now it serves; ``/health`` is 503 while the log cannot be written."""
    with serve(cwd=tmp_path, env=_env(tmp_path / "home", full_disk)) as server:
        health = httpx.get(f"{server.base_url}/health", timeout=10)
    lines = [line for line in server.log.read_text().splitlines() if "going on without it" in line]
    assert len(lines) == 1 and "the disk is full" in lines[0], server.log.read_text()
    assert health.status_code == 503


def test_production_refuses_to_start_in_one_line(read_only_folder: Path, tmp_path: Path) -> None:
    env = _env(
        tmp_path / "home",
        read_only_folder,
        IMAGEGEN_ENV="production",
        FAL_KEY="fal-test-key",
        IMAGEGEN_ADMIN_TOKEN=ADMIN_TOKEN,
        IMAGEGEN_PUBLIC_BASE_URL="https://images.example/files",
    )
    proc = run_serve(cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith("imagegen: refusing to start in production: log database ")
    assert "read-only mount" in proc.stderr


def _command(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imagegen_core.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_commands_that_need_the_log_say_so_in_one_line_and_the_storage_commands_go_on(
    full_disk: Path, tmp_path: Path
) -> None:
    """QA: `providers`, `config show` and `storage stats` printed "…; going on without it: …" and then failed with
    a second line, exit 2. A command that needs the log now fails in one line; the storage commands, which need
    only the config's key prefix (read from the file as it stands), go on: what an operator needs on a full disk."""
    env = _env(tmp_path / "home", full_disk)
    for args in (["providers"], ["config", "show"], ["stats"], ["breakers"]):
        proc = _command(tmp_path, env, *args)
        assert (proc.returncode, proc.stdout) == (2, ""), (args, proc.stdout, proc.stderr)
        (line,) = proc.stderr.splitlines()
        assert line.startswith(f"imagegen: log database {full_disk}: open failed") and "the disk is full" in line
    stats = _command(tmp_path, env, "storage", "stats")
    assert stats.returncode == 0, stats.stderr
    (line,) = stats.stderr.splitlines()
    assert "going on without it: the config stored in it (version 1" in line
    assert stats.stdout.splitlines()[0].startswith("store: local, ")
    flush = _command(tmp_path, env, "storage", "flush")
    assert (flush.returncode, flush.stdout) == (0, "spool is empty: nothing to upload\n"), flush.stderr
