"""The API over a SQLite log that becomes unwritable (QA repro_sqlite_readonly.sh, made real with ``chattr +i``):
answers go on, ``/health`` is 503 with the writes-failing figure, ``/admin/status`` says why, the rows wait in
the log spill and reach the log once the file is writable again; a server started on such a file says so at
start, and production refuses to start on it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from imagegen_core.log import LogDB
from imagegen_core.service import ImageGen
from tests.log.test_read_only import immutable_supported, read_only, writable

from .conftest import ADMIN, ADMIN_TOKEN, api_client, fakes
from .serve_process import run_serve, serve, serve_env, start_warnings


@pytest.fixture(autouse=True)
def _needs_chattr(tmp_path: Path) -> None:
    if not immutable_supported(tmp_path):
        pytest.skip("chattr +i does not work here (needs root and a filesystem with the immutable flag)")


def log_files(path: Path) -> list[Path]:
    return [path, path.with_name(path.name + "-wal")]


async def test_a_read_only_log_is_503_with_the_reason_and_loses_no_row(make_gen: Callable[..., ImageGen]) -> None:
    gen = make_gen(fakes(a={}))
    gen._writer._busy_retry_s = 0.3  # type: ignore[attr-defined]  # 120 s in production
    gen._writer._write_back_every_s = 0.1  # type: ignore[attr-defined]
    assert gen.log.path is not None
    body = {"width": 64, "height": 64}
    async with api_client(gen) as client:
        await client.post("/images/generate", json={"prompt": "before", **body})
        await gen.flush()
        with read_only(*log_files(gen.log.path)):
            for n in range(3):
                made = await client.post("/images/generate", json={"prompt": f"during-{n}", **body})
                assert made.status_code == 200 and made.json()["success"] is True
            await gen.flush()  # retried, then kept in the spill
            health = await client.get("/health")
            status = (await client.get("/admin/status", headers=ADMIN)).json()["logDb"]
            kept = gen.log_spill.waiting()
            writable(*log_files(gen.log.path))
            async with asyncio.timeout(10):
                while gen.log_spill.waiting():
                    await asyncio.sleep(0.05)
        await client.post("/images/generate", json={"prompt": "after", **body})
        await gen.flush()
        healthy = await client.get("/health")
    assert health.status_code == 503 and health.json()["checks"]["logDb"]["ok"] is False
    assert health.json()["checks"]["logDb"]["writesFailingForS"] >= 0 and str(gen.log.path) not in health.text
    assert status["ok"] is False and "readonly database" in status["error"] and "writable" in status["error"]
    assert kept > 0 and status["keptRows"] == kept
    assert healthy.status_code == 200
    prompts = [r["prompt"] for r in gen.log.query("SELECT prompt FROM requests ORDER BY created_at")]
    assert prompts == ["before", "during-0", "during-1", "during-2", "after"]
    assert {r["status"] for r in gen.log.query("SELECT status FROM requests")} == {"success"}


def _unwritable_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    with LogDB(home / "imagegen.db") as log:
        log.open()
    return home


def test_a_server_started_on_a_read_only_log_says_so_at_start(tmp_path: Path) -> None:
    home = _unwritable_home(tmp_path)
    with read_only(*log_files(home / "imagegen.db")), serve(cwd=tmp_path, env=serve_env(home)) as server:
        pass
    lines = [line for line in start_warnings(server.log) if "imagegen.db" in line]
    assert len(lines) == 1, server.log.read_text()
    assert "readonly database" in lines[0] and f"wait in {home / 'log-spill'}" in lines[0]


def test_production_refuses_to_start_on_a_read_only_log(tmp_path: Path) -> None:
    """As with a PostgreSQL it cannot reach: one line, exit 2."""
    home = _unwritable_home(tmp_path)
    env = serve_env(
        home,
        IMAGEGEN_ENV="production",
        FAL_KEY="fal-test-key",
        IMAGEGEN_ADMIN_TOKEN=ADMIN_TOKEN,
        IMAGEGEN_PUBLIC_BASE_URL="https://images.example/files",
    )
    with read_only(*log_files(home / "imagegen.db")):
        proc = run_serve(cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("imagegen: refusing to start in production: log database ")
    assert "readonly database" in proc.stderr and "Traceback" not in proc.stderr
    assert os.access(home / "imagegen.db", os.R_OK)
