"""``imagegen db prune`` as an operator runs it (real subprocesses): the summary line and ``--json``, a dry run
that changes nothing, ``--vacuum``, both backends, and bad input, a missing or locked log and Ctrl-C each
answered in one line with the documented status, never a traceback."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest

from imagegen_core.log import LogDB
from imagegen_core.log.retention import BATCH_REQUESTS
from imagegen_core.log.transfer import table_counts

IMAGEGEN = [sys.executable, "-m", "imagegen_core.cli"]
CUT = datetime(2026, 9, 1, tzinfo=UTC).timestamp()
#: Requests to prune in the Ctrl-C test: some 80 batches, so that the interrupt lands while it runs.
OLD = 20_000


def env_for(home: Path, url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGEN_")}
    env["IMAGEGEN_HOME"] = str(home)
    if url is not None:
        env["IMAGEGEN_DATABASE_URL"] = url
    return env


def prune(*args: str, home: Path, url: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*IMAGEGEN, "db", "prune", *args], capture_output=True, text=True, env=env_for(home, url), timeout=60
    )


def seed(db: LogDB, *, old: int = 30, new: int = 5) -> None:
    """``old`` requests a month before the cut (two attempts each, a pick on the first), ``new`` after it, one
    running request before it, and a config version."""
    for i in range(old + new):
        rid = f"r{i:05d}"
        at = CUT - 30 * 86_400 + i if i < old else CUT + 86_400 + i
        db.start_request(rid, created_at=at, prompt="p", keyword=None, article_id=None, width=512, height=512,
                         style=None, source="api")  # fmt: skip
        for n in range(2):
            db.start_attempt(f"{rid}-{n}", request_id=rid, provider="fal", attempt=1, hedged=n > 0, started_at=at)
            db.finish_attempt(f"{rid}-{n}", finished_at=at + 1, outcome="success" if n == 0 else "cancelled")
        db.finish_request(rid, finished_at=at + 2, status="success", provider="fal")
    if old:
        db.record_pick("r00000", provider="fal", offered=["fal"], article_id=None, url=None, storage_key=None,
                       picked_at=CUT - 30 * 86_400 + 5)  # fmt: skip
    db.start_request("live", created_at=CUT - 86_400, prompt="p", keyword=None, article_id=None, width=512,
                     height=512, style=None, source="api")  # fmt: skip
    db.save_config({"defaults": {"timeout": 9000}}, source="cli", created_at=CUT - 60 * 86_400)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    with LogDB(tmp_path / "home" / "imagegen.db") as db:
        seed(db)
    return tmp_path / "home"


def counts(home: Path) -> dict[str, int]:
    with LogDB(home / "imagegen.db") as db:
        return table_counts(db)


def test_prune_prints_one_summary_line_and_deletes_only_the_old_rows(home: Path) -> None:
    proc = prune("--before", "2026-09-01", home=home)
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    assert line.startswith("pruned 30 requests, 60 attempts, 1 pick started before 2026-09-01T00:00:00Z in 1 batch")
    assert "kept 1 still running" in line and proc.stderr == ""
    after = counts(home)
    assert (after["requests"], after["attempts"], after["picks"], after["config_versions"]) == (6, 10, 0, 1)


def test_dry_run_says_what_would_go_and_changes_nothing(home: Path) -> None:
    before = counts(home)
    proc = prune("--before", "2026-09-01T00:00:00Z", "--dry-run", home=home)
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    assert line.startswith("would prune 30 requests, 60 attempts, 1 pick started before 2026-09-01T00:00:00Z")
    assert line.endswith("(dry run: nothing changed)")
    assert counts(home) == before


def test_json_answers_one_object_with_the_counts_and_the_vacuum(home: Path) -> None:
    proc = prune("--before", "2026-09-01", "--vacuum", "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert document["deleted"] == {"requests": 30, "attempts": 60, "picks": 1}
    assert document["cut"] == "2026-09-01T00:00:00Z" and document["dryRun"] is False
    assert document["keptRunning"] == 1 and document["batches"] == 1 and document["interrupted"] is False
    vacuum = document["vacuum"]
    assert vacuum["sizeBefore"] > 0 and vacuum["sizeAfter"] <= vacuum["sizeBefore"]


def test_vacuum_reports_the_size_before_and_after(home: Path) -> None:
    proc = prune("--older-than", "0", "--vacuum", home=home)
    assert proc.returncode == 0, proc.stderr
    summary, vacuum = proc.stdout.splitlines()
    assert summary.startswith("pruned 35 requests, 70 attempts, 1 pick")
    assert re.match(r"vacuum: [\d.,]+ (MB|kB) → [\d.,]+ (MB|kB) in [\d.]+ s \(", vacuum), vacuum


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--before", "2026-13-01"), "is not an ISO 8601 date"),
        (("--before", "yesterday"), "is not an ISO 8601 date"),
        ((), "give one of --before DATE and --older-than DAYS"),
        (("--before", "2026-09-01", "--older-than", "3"), "give one of --before DATE and --older-than DAYS"),
        (("--older-than", "-3"), "is negative"),
        (("--older-than", "ninety"), "is not a whole number of days"),
        (("--older-than", "999999999"), "before the year 1"),
        (("--before", "2999-01-01"), "is in the future"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_and_changes_nothing(home: Path, args: tuple[str, ...], says: str) -> None:
    before = counts(home)
    proc = prune(*args, home=home)
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith("imagegen: ") and says in line and "Traceback" not in proc.stderr
    assert counts(home) == before


def test_with_json_a_refusal_is_also_the_apis_error_shape_on_stdout(home: Path) -> None:
    proc = prune("--older-than", "-1", "--json", home=home)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert "is negative" in json.loads(proc.stdout)["error"]


def test_a_missing_log_is_one_line_exit_1_and_none_is_created(tmp_path: Path) -> None:
    proc = prune("--older-than", "30", home=tmp_path / "nowhere")
    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()
    assert "no log database there to prune" in line and not (tmp_path / "nowhere").exists()


def test_an_unreachable_server_is_one_line_exit_1(tmp_path: Path) -> None:
    proc = prune("--older-than", "30", "--url", "postgresql://imagegen@127.0.0.1:9/imagegen", home=tmp_path)
    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()
    assert "cannot reach the log database" in line


def test_a_locked_log_is_one_line_exit_1_and_nothing_deleted(home: Path) -> None:
    """Another process holds the write lock longer than a writer waits (5 s): the prune gives up in one line."""
    before = counts(home)
    with closing(sqlite3.connect(home / "imagegen.db", isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        proc = prune("--before", "2026-09-01", home=home)
        other.execute("ROLLBACK")
    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()
    assert "stayed locked" in line and "Traceback" not in proc.stderr
    assert counts(home) == before


def test_ctrl_c_leaves_whole_batches_and_says_how_far_it_got(tmp_path: Path) -> None:
    """Interrupted at whatever moment, the prune ends 130 in one line and the log holds whole requests only:
    each batch went whole or not at all, and the count it reports is what is gone."""
    home = tmp_path / "home"
    with LogDB(home / "imagegen.db") as db:
        seed(db, old=0, new=0)
    with closing(sqlite3.connect(home / "imagegen.db")) as conn, conn:  # 20 000 old requests, quickly
        rows = [(f"o{i:05d}", CUT - 86_400 + i, CUT - 86_400 + i + 1) for i in range(OLD)]
        conn.executemany(
            "INSERT INTO requests (id, created_at, finished_at, status, prompt, source) VALUES (?, ?, ?, 'success',"
            " 'p', 'api')",
            rows,
        )
        conn.executemany(
            "INSERT INTO attempts (id, request_id, provider, attempt, started_at, outcome) VALUES (?, ?, 'fal', 1, ?,"
            " 'success')",
            [(f"{rid}-{n}", rid, at) for rid, at, _ in rows for n in range(2)],
        )
    proc = subprocess.Popen(
        [*IMAGEGEN, "db", "prune", "--before", "2026-09-01"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_for(home),
    )  # fmt: skip
    db_file = str(home / "imagegen.db")
    give_up = time.monotonic() + 30
    while time.monotonic() < give_up:  # until it has the log open: its handler is in place by then
        fds = Path(f"/proc/{proc.pid}/fd")
        try:
            if any(os.readlink(fd) == db_file for fd in fds.iterdir()):
                break
        except OSError:
            pass
        if proc.poll() is not None:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    after = counts(home)
    if proc.returncode == 0:  # it finished before the signal came: nothing to check but the whole prune
        pytest.skip("the prune ended before the interrupt")
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("imagegen: interrupted") and "Traceback" not in err
    gone = OLD - (after["requests"] - 1)  # the running request stays
    assert after["attempts"] == 2 * (after["requests"] - 1)  # no request without its attempts, and none orphaned
    assert gone % BATCH_REQUESTS == 0  # whole batches
    if out:
        assert out.startswith(f"pruned {gone:,} requests, {2 * gone:,} attempts")


def test_prune_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    with LogDB(postgres_url) as db:
        seed(db)
    dry = prune("--before", "2026-09-01", "--dry-run", "--json", home=tmp_path, url=postgres_url)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["deleted"] == {"requests": 30, "attempts": 60, "picks": 1}
    proc = prune("--before", "2026-09-01", "--vacuum", "--json", home=tmp_path, url=postgres_url)
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert document["deleted"] == {"requests": 30, "attempts": 60, "picks": 1} and document["keptRunning"] == 1
    assert "VACUUM (ANALYZE)" in document["vacuum"]["note"]
    with LogDB(postgres_url) as db:
        assert table_counts(db)["requests"] == 6 and table_counts(db)["config_versions"] == 1
