"""``serve --workers N`` whose supervisor is killed outright (``kill -9``, the OOM killer): its workers stop
gracefully by themselves, release the port, and a new server starts on it.

Regression (QA repro_orphan_workers.sh): the workers were re-parented to init and kept serving on the
inherited socket, so a restart failed with "Address already in use" until someone killed them by hand.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from imagegen_core.log import LogDB

from .conftest import fakes
from .serve_process import serve, serve_env

SIZE = {"width": 64, "height": 64}
#: Generous bound for the workers to end and the port to be free (it takes well under a second).
GONE_WITHIN_S = 10


def _wait_until(check: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:  # polling a state another process changes, bounded
        if check():
            return True
        time.sleep(0.05)
    return bool(check())


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no obstacle
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, ended but not yet reaped by init, counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _kill_orphans(pids: list[int]) -> None:
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_killing_the_supervisor_ends_its_workers_gracefully_and_frees_the_port(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'log.db'}"
    with LogDB(db_url) as db:  # a provider slow enough for a request to be in flight at the kill
        db.save_config(fakes(a={"latencyMs": 1500}), source="test")
    env = serve_env(tmp_path / "home", IMAGEGEN_DATABASE_URL=db_url)
    answers: list[httpx.Response] = []

    with serve("--workers", "2", cwd=tmp_path, env=env, exit_codes=(-signal.SIGKILL,)) as server:
        workers = server.workers()
        assert len(workers) == 2
        port = int(server.base_url.rsplit(":", 1)[1])

        def generate() -> None:
            answers.append(httpx.post(f"{server.base_url}/images/generate", json={"prompt": "x", **SIZE}, timeout=30))

        in_flight = threading.Thread(target=generate)
        in_flight.start()
        time.sleep(0.5)  # the request reaches a worker and waits for the slow provider
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
        in_flight.join(timeout=30)

        try:
            gone = _wait_until(lambda: not any(_alive(pid) for pid in workers), GONE_WITHIN_S)
            assert gone, f"workers still running after the supervisor's death: {[p for p in workers if _alive(p)]}"
            assert _wait_until(lambda: _port_is_free(port), GONE_WITHIN_S), f"port {port} still held"
        finally:
            _kill_orphans(workers)  # a failed test must not leave them holding the port

    # The request in flight was answered (graceful shutdown, not a kill) and its row is complete.
    assert len(answers) == 1 and answers[0].status_code == 200 and answers[0].json()["success"], answers
    with LogDB(db_url) as db:
        rows = db.query("SELECT status FROM requests WHERE id = ?", [answers[0].json()["requestId"]])
    assert rows == [{"status": "success"}]
    log = server.log.read_text()
    assert "the server's supervisor process" in log and "Traceback" not in log, log[-3000:]

    # And a new server starts on the very port.
    with serve("--workers", "2", "--port", str(port), cwd=tmp_path, env=env) as again:  # the last --port wins
        assert again.base_url.endswith(f":{port}")
        assert httpx.get(f"{again.base_url}/health/live", timeout=5).status_code == 200
