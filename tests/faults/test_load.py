"""Load: 200 concurrent generate requests through the HTTP API — the real ``imagegen serve`` process (uvicorn on
127.0.0.1), racing fakes that fail, stall and straggle. Every request is answered, the p99 answer time measured
by the client is within the deadline + 50 ms, the log holds exactly one finished row per request and per
reported attempt, and "database is locked" appears nowhere (responses, the server's log, the log DB). The client
is a process of its own (``load_client``), as a CMS is."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from imagegen_core import ImageGen
from imagegen_core.settings import Settings
from tests.api.serve_process import serving_url

from .harness import NETWORKED_OFF, read_db
from .table import LOAD, SLACK_MS, LoadFigures

REQUESTS = 200
DEADLINE_MS = 2000


def _fake(priority: int, timeout_ms: int, retries: int, **options: Any) -> dict[str, Any]:
    return {"type": "fake", "priority": priority, "timeout": timeout_ms, "retries": retries, "options": options}


DOCUMENT = {
    "providers": {
        **NETWORKED_OFF,
        # fails a third of the time, usually fast: retries and hedges
        "flaky": _fake(1, 700, 1, latencyMs={"lognormal": {"medianMs": 120, "sigma": 0.6}}, failureRate=0.35, seed=11),
        # anywhere from quick to past the deadline: hedged to, sometimes cut off by the deadline
        "slow": _fake(2, 1500, 0, latencyMs={"uniform": [200, 2500]}, seed=12),
        # always fails: its breaker opens under load and it is skipped
        "broken": _fake(3, 500, 0, latencyMs=5, failureRate=1.0),
    },
    "race": {
        "hedgeDelay": 300,
        "adaptiveHedge": False,
        # race.finalizeReserve stays at its default (1000 ms): 200 requests arriving in the same instant end
        # their races together too, and finishing them (cancel the losers, answer, log) shares one event loop
    },
    "defaults": {"timeout": DEADLINE_MS},
}


def start_server(home: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``imagegen serve --port 0``; its JSON log goes to ``log``, which is read for readiness and the URL."""
    env = {**os.environ, "IMAGEGEN_HOME": str(home), "LOG_LEVEL": "INFO"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "imagegen_core.cli", "serve", "--port", "0"], env=env, stderr=out
        )
    deadline = time.monotonic() + 60
    while "Application startup complete" not in (text := log.read_text()):  # readiness, polled
        assert proc.poll() is None and time.monotonic() < deadline, text
        time.sleep(0.05)
    return proc, serving_url(text.splitlines()[0])


def fire(base: str) -> dict[str, Any]:
    """All requests at once, from a client process of its own (see ``load_client``): its answers, wall time
    and longest loop stall."""
    client = subprocess.run(
        [sys.executable, "-m", "tests.faults.load_client", base, str(REQUESTS)],
        capture_output=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
    )
    assert client.returncode == 0, client.stderr.decode()
    result: dict[str, Any] = json.loads(client.stdout)
    return result


def server_answer_times(log_text: str) -> list[float]:
    """The server's own answer time (ms) of each ``POST /images/generate``, from its JSON request log."""
    times = []
    for line in log_text.splitlines():
        entry = json.loads(line) if line.startswith("{") else {}
        if entry.get("message") == "request" and entry.get("path") == "/images/generate":
            times.append(float(entry["elapsedMs"]))
    return times


def server_stalls(log_text: str) -> list[float]:
    """The stalls of the server's event loop (ms) its log reported (``api/loop_watch.py``)."""
    lines = (json.loads(line) for line in log_text.splitlines() if line.startswith("{"))
    return [float(entry["blockedMs"]) for entry in lines if "blockedMs" in entry]


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def test_200_concurrent_requests_through_the_http_api(tmp_path: Path) -> None:
    home = tmp_path / "load-home"
    with ImageGen.from_settings(Settings(_env_file=None, IMAGEGEN_HOME=str(home))) as gen:
        gen.set_config(DOCUMENT, source="test")  # stored before start-up, as `imagegen config set` would
    server_log = tmp_path / "server.log"
    proc, base = start_server(home, server_log)
    try:
        fired = fire(base)
    finally:
        proc.send_signal(signal.SIGTERM)  # graceful: the lifespan flushes the log writer before exiting
        proc.wait(timeout=60)
    answers = fired["answers"]
    times = [ms for _, _, ms in answers]
    db = home / "imagegen.db"
    reported = sum(len(body.get("attempts", [])) for _, body, _ in answers)
    request_rows = read_db(db, "SELECT count(*) FROM requests WHERE status IN ('success', 'failed')")[0][0]
    attempt_rows = read_db(db, "SELECT count(*) FROM attempts WHERE outcome != 'running'")[0][0]
    texts = [server_log.read_text(), *(str(body) for _, body, _ in answers)]
    texts += [str(row) for row in read_db(db, "SELECT error FROM requests UNION ALL SELECT error FROM attempts")]
    locked = sum(text.count("database is locked") + text.count("log write failed") for text in texts)
    server_times = server_answer_times(server_log.read_text())
    figures = LoadFigures(
        requests=REQUESTS,
        deadline_ms=DEADLINE_MS,
        answered=sum(1 for status, _, _ in answers if status == 200),
        successes=sum(1 for _, body, _ in answers if body.get("success")),
        p50_ms=nearest_rank(times, 0.5),
        p99_ms=nearest_rank(times, 0.99),
        max_ms=max(times),
        wall_s=fired["wallS"],
        request_rows=request_rows,
        attempt_rows=attempt_rows,
        attempts_reported=reported,
        locked_errors=locked,
        server_max_ms=max(server_times, default=0.0),
        client_stall_ms=fired["loopStallMs"],
        server_stall_ms=max(server_stalls(server_log.read_text()), default=0.0),
    )
    LOAD.append(figures)
    assert figures.answered == REQUESTS, [body for status, body, _ in answers if status != 200][:3]
    assert 0 < figures.successes < REQUESTS  # the mix really failed some requests and served others
    assert len(server_times) == REQUESTS, figures  # each answer in the server's request log, once
    assert figures.p99_ms <= DEADLINE_MS + SLACK_MS, figures
    assert (request_rows, attempt_rows) == (REQUESTS, reported), figures
    assert read_db(db, "SELECT count(*) FROM requests")[0][0] == REQUESTS  # no stray or duplicate row either
    assert locked == 0, figures
    assert proc.returncode in (0, -signal.SIGTERM)
