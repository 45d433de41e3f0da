"""A real ``imagegen serve`` whose PostgreSQL log stops answering without refusing anything (a server that
hangs, or a network that drops packets; played by a stalling TCP proxy on 127.0.0.1).

Before, every call that read the log waited for TCP to give up, many minutes: a generate past its deadline,
each ``/health`` check of a load balancer holding a thread of the loop's default executor until generates,
which normalise their images on those threads, stalled too. Now a generate answers by its deadline, ``/health``
says 503 within ``PROBE_WAIT_S``, the admin pages 503 at once while an earlier call is unanswered, and the
server is healthy again once the database answers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from imagegen_core.api.probes import PROBE_WAIT_S
from imagegen_core.log import LogDB
from tests.pgcluster import PostgresCluster
from tests.tcpproxy import StallingProxy

from .conftest import ADMIN, ADMIN_TOKEN
from .serve_process import ServerProcess, serve, serve_env

SIZE = {"width": 64, "height": 64}


@pytest.fixture
def proxied_server(postgres: PostgresCluster, tmp_path: Path) -> Iterator[tuple[ServerProcess, StallingProxy]]:
    url = postgres.url(postgres.create_database())
    with LogDB(url) as db:
        db.save_config({"defaults": {"timeout": 5000}}, source="test")
    with StallingProxy(("127.0.0.1", postgres.port)) as proxy:
        proxied = url.replace(f":{postgres.port}/", f":{proxy.port}/")
        env = serve_env(tmp_path / "home", IMAGEGEN_DATABASE_URL=proxied, IMAGEGEN_ADMIN_TOKEN=ADMIN_TOKEN)
        with serve(cwd=tmp_path, env=env) as server:
            yield server, proxy
            proxy.resume()  # the server's shutdown writes what waited in its log writer's queue


def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def test_the_api_answers_in_time_while_its_log_database_hangs(
    proxied_server: tuple[ServerProcess, StallingProxy],
) -> None:
    server, proxy = proxied_server
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        assert client.get("/health").status_code == 200
        assert client.post("/images/generate", json={"prompt": "before", **SIZE}).json()["success"]
        proxy.stall()

        health, took = timed(lambda: client.get("/health"))
        assert health.status_code == 503 and health.json()["checks"]["logDb"]["ok"] is False
        assert took < PROBE_WAIT_S + 1.0, took
        # The check still hangs in its thread: the next ones answer at once, and take no thread.
        checks = [timed(lambda: client.get("/health")) for _ in range(30)]
        assert {response.status_code for response, _ in checks} == {503}
        assert max(took for _, took in checks) < 0.5
        stats, took = timed(lambda: client.get("/admin/stats", headers=ADMIN))
        assert stats.status_code == 503 and took < 0.5, (stats.text, took)
        assert "log database" in stats.json()["error"]

        for n in range(3):  # the default executor's threads are all free: images are stored as ever
            body = {"prompt": f"hung {n}", **SIZE}
            answer, took = timed(lambda: client.post("/images/generate", json=body))  # noqa: B023 (called at once)
            assert answer.status_code == 200 and answer.json()["success"], answer.text
            assert took < 5.0, took
        assert client.get("/health/live").status_code == 200

        proxy.resume()
        give_up = time.monotonic() + 30
        while client.get("/health").status_code != 200:
            assert time.monotonic() < give_up, "not healthy again after the database answered"
            time.sleep(0.1)
        assert client.get("/admin/stats", headers=ADMIN).status_code == 200
    log = server.log.read_text()
    assert "Traceback" not in log, log[-3000:]
