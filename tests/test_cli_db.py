"""``imagegen db migrate | check | copy`` as an operator runs them (real subprocesses), and ``db copy`` moving a
seeded SQLite log into PostgreSQL with nothing lost: same rows, same stats, same breakers and config."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from imagegen_core.breaker import BreakerRecord, BreakerState, Transition
from imagegen_core.log import MIGRATIONS, LogDB, provider_stats, request_summary
from imagegen_core.log.catalog import dump_rows
from imagegen_core.log.transfer import BATCH_ROWS, TABLES, copy_log
from imagegen_core.stats import Period, daily_stats, period_stats
from tests.pgcluster import PostgresCluster, free_port

IMAGEGEN = [sys.executable, "-m", "imagegen_core.cli"]
DAY1 = date(2026, 3, 1)
T0 = datetime(2026, 3, 1, tzinfo=UTC).timestamp()


def run(*args: str, home: Path, url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGEN_")}
    env["IMAGEGEN_HOME"] = str(home)
    if url is not None:
        env["IMAGEGEN_DATABASE_URL"] = url
    return subprocess.run([*IMAGEGEN, "db", *args], capture_output=True, text=True, env=env, timeout=60)


def seed(db: LogDB) -> None:
    """Three UTC days of traffic (more requests than one copy batch), failures of several classes, cancelled
    hedges, a pick, breaker transitions and three config versions."""
    providers = ["fal", "replicate", "unsplash"]
    for i in range(BATCH_ROWS + 150):
        rid = f"r{i:05d}"
        at = T0 + (i % 3) * 86_400 + i * 7.25
        db.start_request(
            rid, created_at=at, prompt=f"prompt {i} 100% _x_", keyword="k" if i % 2 else None, article_id=f"a{i}",
            width=512, height=384, style=None, source="api",
        )  # fmt: skip
        winner = providers[i % 3]
        for n, provider in enumerate(providers[: 1 + i % 3]):
            aid = f"{rid}-{n}"
            db.start_attempt(aid, request_id=rid, provider=provider, attempt=1, hedged=n > 0, started_at=at + n)
            if i % 11 == 0:
                continue  # still running: a crash mid-request
            outcome = "success" if provider == winner else ("failed" if i % 5 else "cancelled")
            db.finish_attempt(
                aid, finished_at=at + n + 1.5, outcome=outcome, duration_ms=400 + (i * 37) % 5000,
                failure_class="timeout" if outcome == "failed" and i % 2 else ("rate_limited" if outcome == "failed"
                                                                               else None),
                http_status=429 if outcome == "failed" and not i % 2 else None, cost_usd=0.003 * (n + 1),
            )  # fmt: skip
        if i % 11:
            db.finish_request(
                rid, finished_at=at + 3, status="success" if i % 13 else "failed", provider=winner,
                url=f"https://images.example/{rid}.webp", elapsed_ms=600 + (i * 53) % 7000, cost_usd=0.006,
            )  # fmt: skip
    db.record_pick("r00004", provider="replicate", offered=["fal", "replicate"], article_id="a4", url=None,
                   storage_key="ai/2026/03/x.webp", picked_at=T0 + 50)  # fmt: skip
    store = db.breaker_store()
    for provider, to_state in (("fal", BreakerState.OPEN), ("fal", BreakerState.HALF_OPEN), ("openai", "forced_open")):

        def step(
            record: BreakerRecord | None, provider: str = provider, to_state: Any = to_state
        ) -> tuple[BreakerRecord, list[Transition]]:
            old = record.state if record else BreakerState.CLOSED
            move = Transition(provider, old, BreakerState(to_state), f"to {to_state}", T0 + 60)
            return BreakerRecord(provider, BreakerState(to_state), updated_at=T0 + 60), [move]

        store.update(provider, step)
    for n in range(3):
        db.save_config({"defaults": {"timeout": 10_000 + n}}, source="cli", created_at=T0 + n)


def stats_of(db: LogDB) -> dict[str, Any]:
    return {
        "providers": provider_stats(db, since=0),
        "summary": request_summary(db, since=0, now=T0 + 10 * 86_400),
        "period": period_stats(db, Period(DAY1, date(2026, 3, 4))),
        "day": daily_stats(db, date(2026, 3, 2)),
        "breakers": db.breaker_store().all(),
        "transitions": db.breaker_store().transitions(limit=100),
        "config": (db.latest_config(), db.config_history()),
    }


def sorted_rows(db: LogDB) -> dict[str, list[dict[str, Any]]]:
    keys = {table: key for table, key, _ in TABLES}
    return {t: sorted(rows, key=lambda r: r[keys[t]]) for t, rows in dump_rows(db).items() if t in keys}


def test_copy_moves_a_sqlite_log_into_postgresql_without_loss(tmp_path: Path, postgres_url: str) -> None:
    """Every row arrives unchanged (ids included), and every statistic — provider stats, request summary and
    the Worker-shaped period and daily stats — comes out identical on PostgreSQL."""
    with LogDB(tmp_path / "home" / "imagegen.db") as source:
        seed(source)
        expected_stats, expected_rows = stats_of(source), sorted_rows(source)

    proc = run("copy", "--to", postgres_url, home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split()[:2] for line in proc.stdout.splitlines())
    assert lines["requests"] == str(BATCH_ROWS + 150) and lines["picks"] == "1" and lines["config_versions"] == "3"
    assert "(row counts verified)" in proc.stdout

    with LogDB(postgres_url) as target:
        assert sorted_rows(target) == expected_rows
        assert stats_of(target) == expected_stats
        assert target.save_config({}, source="api") == 4  # numbering continues after the copied versions
        target.breaker_store().update("fal", lambda rec: (rec or BreakerRecord("fal"), []))  # events still append

    again = run("copy", "--to", postgres_url, home=tmp_path / "home")
    assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1
    assert "is not empty" in again.stderr and "--force" in again.stderr
    forced = run("copy", "--to", postgres_url, "--force", home=tmp_path / "home")
    assert forced.returncode == 0, forced.stderr
    with LogDB(postgres_url) as target:
        assert sorted_rows(target) == expected_rows


def test_copy_refuses_the_same_database_and_copies_back(tmp_path: Path, postgres_url: str) -> None:
    with LogDB(tmp_path / "a.db") as source:
        seed(source)
        with pytest.raises(Exception, match="same database"):
            copy_log(source, LogDB(tmp_path / "a.db"))
        copy_log(source, LogDB(postgres_url))
        expected = stats_of(source)
    with LogDB(postgres_url) as middle, LogDB(tmp_path / "b.db") as back:
        copy_log(middle, back)  # and back again: PostgreSQL → SQLite
        assert stats_of(back) == expected


def test_migrate_then_check_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    blank = run("check", home=tmp_path, url=postgres_url)
    assert blank.returncode == 1 and "schema v0" in blank.stderr and "imagegen db migrate" in blank.stderr
    migrated = run("migrate", home=tmp_path, url=postgres_url)
    every = ", ".join(f"v{version}" for version, _, _ in MIGRATIONS)  # "v1, v2, ..."
    assert migrated.returncode == 0 and f"(applied {every})" in migrated.stdout
    assert "nothing to apply" in run("migrate", home=tmp_path, url=postgres_url).stdout
    ok = run("check", home=tmp_path, url=postgres_url)
    latest = MIGRATIONS[-1][0]
    assert ok.returncode == 0 and "ok · PostgreSQL" in ok.stdout and f"schema v{latest}" in ok.stdout


def test_check_an_unreachable_server_is_one_line_without_the_password(tmp_path: Path) -> None:
    url = f"postgresql://imagegen:hunter2-secret@127.0.0.1:{free_port()}/imagegen"
    proc = run("check", home=tmp_path, url=url)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "cannot reach the log database postgresql://imagegen@127.0.0.1:" in proc.stderr
    assert "check that URL" in proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout


def test_check_and_migrate_on_sqlite(tmp_path: Path) -> None:
    missing = run("check", home=tmp_path)
    assert missing.returncode == 1 and "no log database there yet" in missing.stderr
    assert not (tmp_path / "imagegen.db").exists()  # a check creates nothing
    (tmp_path / "blocked").write_text("a file where the home folder should be")
    blocked = run("check", home=tmp_path / "blocked")
    assert blocked.returncode == 1 and "blocked is a file, not a folder: move it away" in blocked.stderr
    assert run("migrate", home=tmp_path).returncode == 0
    ok = run("check", home=tmp_path)
    assert ok.returncode == 0 and "ok · SQLite" in ok.stdout


def test_a_database_with_a_requests_table_but_no_schema_version_is_named_not_an_imagegen_log(
    tmp_path: Path,
) -> None:
    """QA: `db check` said "schema v0 … run `imagegen db migrate`", and migrate (and every command) then failed
    with "migrate failed: table requests already exists"."""
    conn = sqlite3.connect(tmp_path / "imagegen.db")
    conn.execute("CREATE TABLE requests (x)")
    conn.commit()
    conn.close()
    said = "has a requests table but no imagegen schema version: it is not an imagegen log"
    for command in ("check", "migrate"):
        proc = run(command, home=tmp_path)
        assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert said in proc.stderr and "move it away or choose another path" in proc.stderr, proc.stderr
    with closing(sqlite3.connect(tmp_path / "imagegen.db")) as conn:  # migrate wrote nothing (rolled back)
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    assert tables == ["requests"]


def test_check_reads_the_whole_file_and_names_damage_with_what_to_do(tmp_path: Path) -> None:
    """QA: `db check` answered "ok" of a file every other command found malformed (it read the schema only),
    and their message said nothing of what to do."""
    with LogDB(tmp_path / "imagegen.db") as db:
        seed(db)
        db.query("SELECT 1")
    path = tmp_path / "imagegen.db"
    assert run("check", home=tmp_path).returncode == 0
    data = bytearray(path.read_bytes())
    data[8192:] = bytes(random.Random(7).getrandbits(8) for _ in range(len(data) - 8192))  # past the schema
    path.write_bytes(bytes(data))
    proc = run("check", home=tmp_path)
    assert proc.returncode == 1 and proc.stdout == "", proc.stdout
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"imagegen: {path}: ") and len(line) < 400, line
    assert line.endswith(
        ": the file is damaged: restore it from a backup, or move it away (imagegen then starts a new log there)"
    )


def test_a_bad_url_is_a_one_line_error(tmp_path: Path, postgres: PostgresCluster) -> None:
    proc = run("copy", "--to", "mysql://x/y", home=tmp_path)
    assert proc.returncode == 2 and "--to: must start with sqlite:/// or postgresql://" in proc.stderr
    for option in ("--to", "--from"):  # one that does not even parse: was a traceback
        args = (
            ["--to", "sqlite:///t.db", option, "postgresql://u:pw@[::1/x"]
            if option == "--from"
            else [option, "postgresql://u:pw@[::1/x"]
        )
        broken = run("copy", *args, home=tmp_path)
        assert broken.returncode == 2 and "Traceback" not in broken.stderr, broken.stderr
        assert broken.stderr.strip().splitlines() == [
            f"imagegen: {option}: is not a valid URL (Invalid IPv6 URL): postgresql://user:password@host:5432/dbname"
        ]
    wrong_db = run("check", home=tmp_path, url=postgres.url("no_such_database"))
    assert wrong_db.returncode == 1 and 'database "no_such_database" does not exist' in wrong_db.stderr


def test_copy_from_a_sqlite_file_that_does_not_exist_is_refused_and_creates_nothing(tmp_path: Path) -> None:
    """New-user run: a mistyped --from created an empty log, copied its 0 rows and exited 0."""
    missing, target = tmp_path / "typo.db", tmp_path / "copy.db"
    proc = run("copy", "--from", f"sqlite:///{missing}", "--to", f"sqlite:///{target}", home=tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip() == f"imagegen: {missing}: no log database there to copy from (check --from)"
    assert not missing.exists() and not target.exists()


@pytest.mark.parametrize(
    ("password", "fragments"),
    [
        ("TopSecret/x", ["TopSecret"]),  # the parser read "TopSecret" as the port and quoted it
        ("Top#Secret", ["TopSecret", "Top'"]),
        ("Sec@ret", ["ret@", "Sec"]),  # libpq resolved "ret@127.0.0.1" as the host name, and said so
    ],
)
def test_a_password_with_unencoded_reserved_characters_is_never_printed(
    tmp_path: Path, password: str, fragments: list[str]
) -> None:
    """Operator run: a password pasted into the URL as is printed itself, or a piece of itself, in the error;
    the line now says to percent-encode it."""
    url = f"postgresql://app:{password}@127.0.0.1:{free_port()}/imagegen"
    for proc in (run("check", "--url", url, home=tmp_path), run("check", home=tmp_path, url=url)):
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert "percent-encode @ : / ? # %" in proc.stderr
        assert not [piece for piece in fragments if piece in proc.stderr], proc.stderr


def test_check_says_how_many_rows_an_outage_left_waiting_and_the_next_command_writes_them(tmp_path: Path) -> None:
    """Rows kept through an outage longer than the writer's retries are on this machine only: the check, which
    changes nothing, says how many wait and what writes them; `imagegen stats` (any process) then does."""
    from imagegen_core.log.spill import LogSpill, spill_folder

    assert run("migrate", home=tmp_path).returncode == 0
    with LogDB(tmp_path / "imagegen.db") as db:
        spill = LogSpill(spill_folder(tmp_path, db.label), db)
        start = {"created_at": T0, "prompt": "kept", "keyword": None, "article_id": None, "width": 64, "height": 64}
        spill.keep([("start_request", ["kept-1"], {**start, "style": None, "source": "api"})])
    checked = run("check", home=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.splitlines()[1] == (
        f"1 log row(s) kept on this machine through an outage wait for it in {spill.root}: the next imagegen "
        "process started here writes them (`imagegen stats` will do), as does a running one with its next requests"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGEN_")} | {"IMAGEGEN_HOME": str(tmp_path)}
    stats = subprocess.run([*IMAGEGEN, "stats"], capture_output=True, text=True, env=env, timeout=60)
    assert stats.returncode == 0, stats.stderr
    with LogDB(tmp_path / "imagegen.db") as db:
        assert db.query("SELECT id, status FROM requests") == [{"id": "kept-1", "status": "running"}]
    again = run("check", home=tmp_path)
    assert again.returncode == 0 and len(again.stdout.splitlines()) == 1
