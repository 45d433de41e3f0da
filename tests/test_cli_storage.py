"""``imagegen storage stats|flush`` over the local store, as a user runs them (real subprocesses).
The same commands against a real S3 server are in tests/storage/test_r2_weed.py."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imagegen_core.storage import LocalStore, Spool

STORAGE_CLI = [sys.executable, "-m", "imagegen_core.cli_storage"]


def run(*args: str, home: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "IMAGEGEN_HOME": str(home), **(env or {})}
    return subprocess.run([*STORAGE_CLI, *args], capture_output=True, text=True, env=full_env, timeout=60)


def put(store: LocalStore, key: str, size: int) -> None:
    asyncio.run(store.put(key, b"x" * size, content_type="image/webp", cache_control="c", metadata={}))


def test_stats_prints_a_table_per_month_with_defaults_apart_and_the_spool(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "images")
    put(store, "ai/2026/10/a.webp", 1000)
    put(store, "ai/2026/11/b.webp", 2048)
    put(store, "ai/2026/11/c.webp", 2048)
    put(store, "ai/defaults/default-1200x630.webp", 300)
    Spool(tmp_path / "spool").keep(
        "ai/2026/11/d.webp", b"x" * 10, content_type="image/webp", cache_control="c", metadata={}
    )
    proc = run("stats", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"store: local, {tmp_path / 'images'}, prefix ai/",
        "month        objects           bytes       size",
        "2026-10            1            1000     1000 B",
        "2026-11            2            4096    4.0 KiB",
        "defaults           1             300      300 B",
        "total              4            5396    5.3 KiB",
        "spool: 1 image(s), 10 B waiting for upload: run `imagegen storage flush`",
    ]


def test_flush_moves_spooled_images_into_the_store_and_then_has_nothing_left(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.keep("ai/2026/11/d.webp", b"paid", content_type="image/webp", cache_control="c", metadata={"provider": "fal"})
    proc = run("flush", home=tmp_path)
    target = tmp_path / "images" / "ai" / "2026" / "11" / "d.webp"
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"moved ai/2026/11/d.webp -> {target.as_uri()}", "moved 1, failed 0"]
    assert target.read_bytes() == b"paid" and spool.entries() == []
    again = run("flush", home=tmp_path)
    assert (again.returncode, again.stdout) == (0, "spool is empty: nothing to upload\n")


def test_a_half_configured_r2_exits_2_with_one_line_naming_what_is_missing(tmp_path: Path) -> None:
    proc = run("stats", home=tmp_path, env={"R2_BUCKET": "news-images", "R2_ACCOUNT_ID": "0123abcd"})
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(
        "imagegen: R2 is partly configured; missing: R2_ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY, R2_PUBLIC_BASE_URL."
    )


def test_stats_of_a_store_folder_that_is_a_file_says_so_instead_of_zero(tmp_path: Path) -> None:
    (tmp_path / "images").write_text("not a folder")
    proc = run("stats", home=tmp_path)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout
    assert proc.stderr.strip().splitlines() == [
        f"imagegen: local store: {tmp_path / 'images'} is a file, not a folder: move it away"
    ]


@pytest.mark.parametrize("prefix", ["../../", "ai/../..", "", "/etc"])
def test_stats_refuses_a_prefix_that_is_no_key_prefix(tmp_path: Path, prefix: str) -> None:
    """New-user run: `--prefix ../../` counted the whole work folder (venv included) as "other"."""
    proc = run("stats", "--prefix", prefix, home=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == (
        f"imagegen: --prefix {prefix!r} must be folder names of letters, digits, '-' or '_', joined by single '/'"
        " (e.g. news/ai)"
    )


@pytest.mark.parametrize("command", ["stats", "flush"])
def test_a_spool_that_is_a_file_is_one_line_naming_it_not_a_traceback(tmp_path: Path, command: str) -> None:
    (tmp_path / "spool").write_bytes(b"not a folder")
    proc = run(command, home=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (
        f"imagegen: cannot use the spool {tmp_path / 'spool'}: Not a directory (it must be a folder this user "
        "can read and write: fix its permissions, or move away what is in its place)\n"
    )
