"""``imagegen storage stats|flush`` over the local store, as a user runs them (real subprocesses).
The same commands against a real S3 server are in tests/storage/test_r2_weed.py."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagegen_core.delivery import DEFAULT_SPOOLED_NOTE, DEFAULT_STORING_NOTE
from imagegen_core.storage import LocalStore, Spool
from tests.storage.test_r2_hung_server import BlackHole

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


def test_stats_without_a_log_creates_none_and_counts_under_the_built_in_prefix_with_a_note(tmp_path: Path) -> None:
    """QA: with a mistyped IMAGEGEN_HOME, `imagegen storage stats` created the folder and an empty log there (it
    reads the log only for the config's r2.pathPrefix). It creates nothing, counts under the built-in config's
    prefix and says so in one line on stderr, naming the missing log and the variable that chose its path."""
    typo = tmp_path / "typo"
    proc = run("stats", home=typo)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == (
        f"note: no log at {typo / 'imagegen.db'}: check IMAGEGEN_HOME (a log is created by the first image request);"
        " counting under the built-in config's key prefix\n"
    )
    assert proc.stdout.splitlines()[0] == f"store: local, {typo / 'images'}, prefix ai/"
    assert proc.stdout.splitlines()[-1].split() == ["total", "0", "0", "0", "B"]
    given = run("stats", "--prefix", "other", home=typo)
    assert given.returncode == 0 and given.stderr.endswith("; counting under --prefix\n"), given.stderr
    assert not typo.exists()


def test_flush_moves_spooled_images_into_the_store_and_then_has_nothing_left(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.keep("ai/2026/11/d.webp", b"paid", content_type="image/webp", cache_control="c", metadata={"provider": "fal"})
    proc = run("flush", home=tmp_path)
    target = tmp_path / "images" / "ai" / "2026" / "11" / "d.webp"
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"moved ai/2026/11/d.webp -> {target.as_uri()}", "moved 1, failed 0"]
    assert proc.stderr.splitlines() == ["imagegen: uploading ai/2026/11/d.webp (1 of 1)"]  # as it starts
    assert target.read_bytes() == b"paid" and spool.entries() == []
    again = run("flush", home=tmp_path)
    assert (again.returncode, again.stdout) == (0, "spool is empty: nothing to upload\n")


def test_flush_uploads_the_spool_with_the_postgresql_log_unreachable(tmp_path: Path) -> None:
    """QA: with IMAGEGEN_DATABASE_URL naming a PostgreSQL server that is away, `imagegen storage flush` refused
    to run ("cannot reach the log database", exit 2), though moving spooled images to the store needs no
    database. It uploads them, says nothing of the log, and shows no password."""
    spool = Spool(tmp_path / "spool")
    spool.keep("ai/2026/11/d.webp", b"paid", content_type="image/webp", cache_control="c", metadata={})
    away = f"postgresql://imagegen:pg-secret-pw@127.0.0.1:{closed_port()}/imagegen"
    proc = run("flush", home=tmp_path, env={"IMAGEGEN_DATABASE_URL": away})
    target = tmp_path / "images" / "ai" / "2026" / "11" / "d.webp"
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"moved ai/2026/11/d.webp -> {target.as_uri()}", "moved 1, failed 0"]
    assert proc.stderr.splitlines() == ["imagegen: uploading ai/2026/11/d.webp (1 of 1)"]
    assert target.read_bytes() == b"paid" and spool.entries() == []
    assert "pg-secret-pw" not in proc.stdout + proc.stderr


def test_flush_sets_damaged_images_aside_and_uploads_the_healthy_ones(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for name in "abc":
        spool.keep(f"ai/2026/11/{name}.webp", b"paid", content_type="image/webp", cache_control="c", metadata={})
    spool.entries()[0].data_path.write_bytes(b"rot")
    proc = run("flush", home=tmp_path)
    assert proc.returncode == 1  # an operator has to look at the damaged one
    assert proc.stdout.splitlines()[-1] == "moved 2, failed 0, set aside 1 damaged"
    (line,) = [line for line in proc.stderr.splitlines() if "uploading" not in line]
    assert line.startswith("imagegen: spool entry 'ai/2026/11/a.webp' is corrupt") and "damaged" in line
    assert spool.entries() == [] and run("flush", home=tmp_path).returncode == 0


def test_flush_sets_aside_an_entry_whose_record_cannot_be_read_even_when_it_is_the_only_one(tmp_path: Path) -> None:
    """QA: with only such an entry, flush said "spool is empty: nothing to upload", exit 0, its image left for
    ever (and `stats` warned about it twice)."""
    spool = Spool(tmp_path / "spool")
    spool.keep("ai/2026/11/a.webp", b"paid", content_type="image/webp", cache_control="c", metadata={})
    (entry,) = spool.entries()
    entry.data_path.with_suffix(".json").write_text("{broken")
    stats = run("stats", home=tmp_path)
    assert stats.stderr.count("ignoring unreadable spool sidecar") == 1, stats.stderr
    proc = run("flush", home=tmp_path)
    assert proc.returncode == 1 and proc.stdout.splitlines() == ["moved 0, failed 0, set aside 1 damaged"]
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"imagegen: spool entry {entry.data_path.stem}.json cannot be read") and "damaged" in line
    assert (tmp_path / "spool" / "damaged" / entry.data_path.name).read_bytes() == b"paid"
    assert run("flush", home=tmp_path).stdout == "spool is empty: nothing to upload\n"


def test_a_half_configured_r2_exits_2_with_one_line_naming_what_is_missing(tmp_path: Path) -> None:
    proc = run(
        "stats", home=tmp_path, env={"R2_BUCKET": "news-images", "R2_ACCOUNT_ID": "0123abcd0123abcd0123abcd0123abcd"}
    )
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


WITHOUT_ROOTS_OVERRIDE = [
    "setpriv",
    "--bounding-set=-dac_override,-dac_read_search",
    "--inh-caps=-dac_override,-dac_read_search",
]


def test_stats_of_a_store_with_a_folder_it_cannot_list_names_it_instead_of_counting_zero(tmp_path: Path) -> None:
    """QA: with a month folder unreadable (chmod 000), `storage stats` said "total 0 … 0 B" and exit 0: os.walk
    skips what it cannot list without a word. As a user who is not root (root reads any folder: setpriv takes
    that power away from the command)."""
    store = LocalStore(tmp_path / "images")
    put(store, "ai/2026/11/a.webp", 5)
    month = tmp_path / "images" / "ai" / "2026"
    month.chmod(0)
    try:
        full_env = {**os.environ, "IMAGEGEN_HOME": str(tmp_path)}
        command = [*WITHOUT_ROOTS_OVERRIDE, *STORAGE_CLI, "stats"] if os.geteuid() == 0 else [*STORAGE_CLI, "stats"]
        proc = subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=60)
    finally:
        month.chmod(0o755)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.strip().splitlines()[-1] == (
        f"imagegen: local store: cannot list {month}: Permission denied: fix its permissions"
    )


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


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def r2_env(endpoint: str) -> dict[str, str]:
    return {
        "R2_ENDPOINT_URL": endpoint,
        "R2_ACCESS_KEY_ID": "key",
        "R2_SECRET_ACCESS_KEY": "secret-0123456789",
        "R2_BUCKET": "images",
        "R2_PUBLIC_BASE_URL": "https://img.example",
    }


def keep_aged(spool: Spool, key: str, *, size: int, age_s: float) -> None:
    entry = spool.keep(key, b"x" * size, content_type="image/webp", cache_control="c", metadata={})
    sidecar = entry.data_path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta["keptAt"] -= age_s
    sidecar.write_text(json.dumps(meta))


def test_stats_with_the_store_down_still_shows_the_spool_then_the_error(tmp_path: Path) -> None:
    """During an outage, how many paid-for images wait is what matters most: `stats` exited 2 saying only that
    R2 could not be reached."""
    spool = Spool(tmp_path / "spool")
    keep_aged(spool, "ai/2026/11/a.webp", size=1000, age_s=2 * 3600 + 5 * 60 + 10)
    keep_aged(spool, "ai/2026/11/b.webp", size=2048, age_s=0)
    endpoint = f"http://127.0.0.1:{closed_port()}"
    proc = run("stats", home=tmp_path, env=r2_env(endpoint))
    assert proc.returncode == 2
    assert proc.stdout.splitlines() == [
        "spool: 2 image(s), 3.0 KiB waiting for upload (the oldest for 2 h 5 min): run `imagegen storage flush`"
    ]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"imagegen: cannot reach R2 at {endpoint} for the list"), line

    as_json = run("stats", "--json", home=tmp_path, env=r2_env(endpoint))
    assert as_json.returncode == 2
    document = json.loads(as_json.stdout)
    assert document["spool"]["objects"] == 2 and document["spool"]["bytes"] == 3048
    assert 7510 <= document["spool"]["oldestAgeS"] < 7600
    assert document["error"] == line.removeprefix("imagegen: ")


def test_stats_against_a_hung_store_gives_up_after_the_time_it_states(tmp_path: Path) -> None:
    """A server that accepts connections and never answers: `stats` ran 2 minutes (botocore's 4 tries of 30 s),
    then said it had waited 30 s. Now one try of 10 s (``r2.LIST_WAIT_S``), and the message says so."""
    hole = BlackHole()
    try:
        started = time.monotonic()
        proc = run("stats", home=tmp_path, env=r2_env(hole.url))
        took = time.monotonic() - started
    finally:
        hole.close()
    assert proc.returncode == 2 and proc.stdout == ""  # nothing waits in the spool
    assert proc.stderr == (f"imagegen: R2 at {hole.url} did not answer the list in 10 s; try again later\n")
    assert took < 20, took  # one try of 10 s (r2.LIST_WAIT_S), not 4 × 30 s


def test_generate_with_the_store_down_says_which_process_uploads_the_kept_image(tmp_path: Path) -> None:
    """A CLI process ends with its answer: the image waits for a running `serve` or console process, or for
    `imagegen storage flush`; "uploaded again in the background" alone promised an upload nothing would do."""
    env = {**os.environ, "IMAGEGEN_HOME": str(tmp_path), **r2_env(f"http://127.0.0.1:{closed_port()}")}
    proc = subprocess.run(
        [sys.executable, "-m", "imagegen_core.cli", "generate", "harbour cranes at dawn"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    # The answer's note first: the default image it points at is not in the store either (its URL 404s for now).
    note, said = proc.stderr.split("\n", 1)
    assert note in (f"note: {DEFAULT_SPOOLED_NOTE}", f"note: {DEFAULT_STORING_NOTE}"), proc.stderr
    assert said.startswith("imagegen: the image was made but not stored: storing the image from offline")
    assert "the image was kept in the spool as ai/" in proc.stderr
    assert (
        "to be uploaded again in the background by a running `imagegen serve` or console process, or the next one "
        "to start (or at once with `imagegen storage flush`)"
    ) in proc.stderr
    assert len(Spool(tmp_path / "spool").entries()) >= 1
