"""Several API server processes on one log database: what one does, the others honour.

Two ``imagegen serve`` processes on separate ports and homes (as on two machines) share one PostgreSQL
database: a breaker forced open through one is open in the other, a config PATCH on one is used by the
other's next request, and 200 concurrent generates split across both leave an exact, complete log. And
``serve --workers 2`` runs on either backend.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from imagegen_core.log import LogDB
from imagegen_core.log.queries import attempts_for
from tests.pgcluster import PostgresCluster

from .conftest import ADMIN, ADMIN_TOKEN, fakes
from .serve_process import ServerProcess, serve, serve_env

SIZE = {"width": 64, "height": 64}


def document() -> dict[str, Any]:
    """Two instant fake providers, ``a`` first; nothing else races."""
    return fakes(a={"latencyMs": 1}, b={"latencyMs": 1})


@pytest.fixture(scope="module")
def two_servers(postgres: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    """Two servers, each with its own home (images) and port, on one fresh PostgreSQL database."""
    url = postgres.url(postgres.create_database())
    with LogDB(url) as db:  # the config is in the shared database before either server starts
        db.save_config(document(), source="test")
    homes = [tmp_path_factory.mktemp(f"machine{i}") for i in (1, 2)]
    env = [serve_env(home / "home", IMAGEGEN_DATABASE_URL=url, IMAGEGEN_ADMIN_TOKEN=ADMIN_TOKEN) for home in homes]
    with serve(cwd=homes[0], env=env[0]) as first, serve(cwd=homes[1], env=env[1]) as second:
        yield [first, second]


@pytest.fixture
def clients(two_servers: list[ServerProcess]) -> Iterator[list[httpx.Client]]:
    """A client per server; the shared config and breakers are back to the start afterwards."""
    made = [httpx.Client(base_url=s.base_url, headers=ADMIN, timeout=30) for s in two_servers]
    yield made
    made[0].put("/admin/config", json=document()).raise_for_status()
    made[0].post("/admin/circuit-breaker", json={"action": "reset-all"}).raise_for_status()
    for client in made:
        client.close()


def test_a_breaker_forced_open_through_one_server_is_open_in_the_other(clients: list[httpx.Client]) -> None:
    one, other = clients
    assert one.post("/admin/circuit-breaker", json={"action": "force-open", "provider": "a"}).status_code == 200
    view = other.get("/admin/circuit-breaker").json()
    assert view["providers"]["a"]["state"] == "forced_open"
    assert view["transitions"][0]["reason"] == "forced open by admin (API)"
    answer = other.post("/images/generate", json={"prompt": "x", **SIZE}).json()
    assert answer.get("provider") == "b", answer
    assert (answer["attempts"][0]["provider"], answer["attempts"][0]["outcome"]) == ("a", "skipped")


def test_a_config_patch_on_one_server_is_used_by_the_others_next_request(clients: list[httpx.Client]) -> None:
    one, other = clients
    assert other.post("/images/generate", json={"prompt": "x", **SIZE}).json()["provider"] == "a"
    patched = one.patch("/admin/config", json={"providers": {"a": {"enabled": False}}})
    assert patched.status_code == 200
    answer = other.post("/images/generate", json={"prompt": "x", **SIZE}).json()
    assert answer["provider"] == "b" and [a["provider"] for a in answer["attempts"]] == ["b"]
    assert other.get("/admin/config").json()["version"] == patched.json()["version"]


def test_200_concurrent_generates_across_both_servers_leave_an_exact_log(
    two_servers: list[ServerProcess], clients: list[httpx.Client]
) -> None:
    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            calls = [
                client.post(f"{two_servers[i % 2].base_url}/images/generate", json={"prompt": f"p{i}", **SIZE})
                for i in range(200)
            ]
            return await asyncio.gather(*calls)

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 200
    bodies = [r.json() for r in responses]
    assert all(b["success"] for b in bodies)
    ids = {b["requestId"] for b in bodies}
    assert len(ids) == 200

    url = f"{_database_url(two_servers[0])}"
    with LogDB(url) as db:
        _wait_for_finished_rows(db, ids)
        rows = {r["id"]: r for r in db.query("SELECT * FROM requests WHERE prompt LIKE 'p%' AND source = 'api'")}
        assert set(rows) == ids  # every request logged once, nothing extra
        for body in bodies:
            row = rows[body["requestId"]]
            assert (row["status"], row["provider"], row["url"]) == ("success", body["provider"], body["url"])
            # The log holds exactly the attempts the answer reports, each finished, the winner's a success.
            logged = sorted((a["provider"], a["attempt"], a["outcome"]) for a in attempts_for(db, body["requestId"]))
            answered = sorted((a["provider"], a["attempt"], a["outcome"]) for a in body["attempts"])
            assert logged == answered
            assert (body["provider"], 1, "success") in logged and all(o != "running" for *_, o in logged)


def _database_url(server: ServerProcess) -> str:
    env_line = Path(f"/proc/{server.proc.pid}/environ").read_bytes().split(b"\0")
    return next(e.decode().split("=", 1)[1] for e in env_line if e.startswith(b"IMAGEGEN_DATABASE_URL="))


def _wait_for_finished_rows(db: LogDB, ids: set[str]) -> None:
    """Responses go out before the log writer thread has applied the last rows: wait (bounded) for them."""
    marks = ", ".join("?" for _ in ids)
    running = (
        f"SELECT (SELECT COUNT(*) FROM attempts WHERE request_id IN ({marks}) AND outcome = 'running')"
        f" + (SELECT COUNT(*) FROM requests WHERE id IN ({marks}) AND status = 'running') AS n"
    )
    for _ in range(200):
        pending = db.query(running, [*ids, *ids])[0]["n"]
        if pending == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"{pending} log rows still running")


def test_serve_with_two_workers_on_either_backend(db_url: str, tmp_path: Path) -> None:
    """``--workers 2``: two worker processes on one port, each with its own ImageGen, one shared log."""
    env = serve_env(tmp_path / "home", IMAGEGEN_DATABASE_URL=db_url, IMAGEGEN_ADMIN_TOKEN=ADMIN_TOKEN, LOG_LEVEL="INFO")
    with LogDB(db_url) as db:
        db.save_config(document(), source="test")
    with serve("--workers", "2", cwd=tmp_path, env=env) as server:
        assert len(server.workers()) == 2

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
                return await asyncio.gather(
                    *(client.post("/images/generate", json={"prompt": f"w{i}", **SIZE}) for i in range(40))
                )

        bodies = [r.json() for r in asyncio.run(burst())]
        assert all(b["success"] for b in bodies)
        # A new connection per request, so the kernel hands them to either worker: wherever it lands, the
        # breaker is open there, because it lives in the log DB.
        with httpx.Client(base_url=server.base_url, headers={**ADMIN, "Connection": "close"}) as client:
            assert client.post("/admin/circuit-breaker", json={"action": "force-open", "provider": "a"}).is_success
            answers = [client.post("/images/generate", json={"prompt": "y", **SIZE}).json() for _ in range(6)]
            assert {a["provider"] for a in answers} == {"b"}
        workers = server.workers()
    # One JSON line per request, from every worker: not uvicorn's access line besides (it was, with workers).
    lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
    generates = [line for line in lines if line["message"] == "request" and line.get("path") == "/images/generate"]
    assert len(generates) == 46 and not [line for line in lines if line["logger"] == "uvicorn.access"]
    with LogDB(db_url) as db:
        _wait_for_finished_rows(db, {b["requestId"] for b in bodies})
        statuses = db.query("SELECT status, COUNT(*) AS n FROM requests WHERE prompt LIKE 'w%' GROUP BY status")
        assert statuses == [{"status": "success", "n": 40}]
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)  # every worker ended with the server
