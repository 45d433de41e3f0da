"""Over a real socket: uvicorn on a free 127.0.0.1 port, the app building its own ImageGen in the lifespan."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from imagegen_core.api import create_app
from imagegen_core.log.queries import attempts_for, recent_requests
from imagegen_core.service import ImageGen
from imagegen_core.settings import Settings

from .conftest import ADMIN, ADMIN_TOKEN, fakes, live_server
from .serve_process import SERVE, serve_env, serving_url


def test_generate_health_and_admin_over_a_real_socket(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(IMAGEGEN_ADMIN_TOKEN=ADMIN_TOKEN)
    with live_server(create_app(settings=settings)) as base, httpx.Client(base_url=base, timeout=30) as client:
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert health.json()["checks"] == {
            "logDb": {"ok": True, "schemaVersion": health.json()["checks"]["logDb"]["schemaVersion"]},
            "store": {"ok": True, "kind": "local"},
            "spool": {"ok": True},
        }

        made = client.post("/images/generate", json={"prompt": "a lighthouse at dusk", "width": 320, "height": 200})
        assert made.status_code == 200
        body = made.json()
        assert body["success"] is True and body["provider"] == "offline" and body["error"] is None
        assert made.headers["x-request-id"] == body["requestId"]
        image = Image.open(io.BytesIO((settings.home / "images" / body["key"]).read_bytes()))
        assert (image.format, image.size) == ("WEBP", (320, 200))

        assert client.get("/admin/status").status_code == 401
        status = client.get("/admin/status", headers=ADMIN)
        assert status.status_code == 200
        assert {p["name"]: p["breaker"] for p in status.json()["providers"]}["offline"] == "closed"
        assert status.json()["logDb"]["ok"] and status.json()["store"]["ok"]


def test_a_total_failure_answers_200_with_the_default_image_over_a_real_socket(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(IMAGEGEN_ADMIN_TOKEN=ADMIN_TOKEN)
    with ImageGen.from_settings(settings) as gen:  # stored before start-up, like `imagegen config set`
        gen.set_config(fakes(broken={"failureRate": 1.0, "failureClass": "transient"}), source="test")
    with live_server(create_app(settings=settings)) as base, httpx.Client(base_url=base, timeout=30) as client:
        answer = client.post("/images/generate", json={"prompt": "x", "width": 300, "height": 200})
        assert answer.status_code == 200
        body = answer.json()
        assert body["success"] is False and body["provider"] == "default"
        assert body["url"].endswith("defaults/default-300x200.webp")
        assert "broken: injected transient failure" in body["error"]
        assert [(a["provider"], a["outcome"]) for a in body["attempts"]] == [("broken", "failed")]


def test_imagegen_serve_runs_the_api_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """The real command: binds the port it was given (0: any), serves, and shuts down on SIGTERM."""
    env = {**os.environ, "IMAGEGEN_HOME": str(tmp_path / "home"), "LOG_LEVEL": "INFO"}
    code = "from imagegen_core.cli_serve import serve; serve(['--port', '0'], prog_name='imagegen serve')"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        base = serving_url(first)  # a JSON line like every other of the server's (QA: it was plain text)
        assert json.loads(first)["message"].endswith(", uvloop)"), first  # the api extra's event loop (faster)
        started: list[str] = []
        while "Application startup complete" not in (line := proc.stderr.readline()):  # readiness
            assert line, "the server exited during start-up"
            started.append(line)
        # the local store without IMAGEGEN_PUBLIC_BASE_URL: answers carry file:// URLs, and serve says so
        assert all(isinstance(json.loads(line), dict) for line in started)  # JSON lines only, start included
        warning = json.loads(started[0])
        assert warning["level"] == "WARNING", started
        assert warning["message"].startswith("images would be answered as file:// URLs"), started
        assert "/uvloop/loop." in Path(f"/proc/{proc.pid}/maps").read_text(), "uvloop's loop is really loaded"
        with httpx.Client(base_url=base, timeout=30) as client:
            assert client.get("/health/live").json() == {"status": "ok"}
            assert client.get("/admin/status").status_code == 403  # no admin token: admin is off
            for probe in ("/health", "/health/live", "/config"):  # load balancers probe with HEAD
                head = client.head(probe)
                assert (head.status_code, head.content) == (200, b""), probe
                assert int(head.headers["content-length"]) == len(client.get(probe).content), probe
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal it caught: exiting "by SIGTERM" is its clean exit.
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert "Application shutdown complete" in err and "color_message" not in err
    assert '"path": "/health/live"' in err and '"status": 403' in err  # one JSON line per request
    assert "Traceback" not in err


@pytest.mark.parametrize("workers", [1, 2], ids=["1 worker", "2 workers"])
def test_the_port_in_the_start_line_takes_connections_at_once(tmp_path: Path, workers: int) -> None:
    """With ``--port 0`` the start line is the only way to learn the port, and a script connects as soon as it
    reads it: the port refused connections until the server had warmed up (QA: 0.2 s with one worker, 1.3 s
    with two). Now a connection made then waits for the server, and is answered."""
    env = serve_env(tmp_path / "home")
    with (tmp_path / "serve.log").open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, "--workers", str(workers)], cwd=tmp_path, env=env, stderr=err
        )
    try:
        deadline = time.monotonic() + 60
        while "\n" not in (text := (tmp_path / "serve.log").read_text()):  # readiness: the start line, whole
            assert proc.poll() is None and time.monotonic() < deadline, text
            time.sleep(0.005)
        host, port = serving_url(text.splitlines()[0]).removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=60) as conn:  # refused before
            conn.sendall(f"GET /health/live HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            reply = b""
            while chunk := conn.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200 "), reply[:300]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_a_literal_dot_dot_path_is_refused_on_the_wire(settings_factory: Callable[..., Settings]) -> None:
    """HTTP clients normalise ``..`` away; a raw request keeps it, and uvicorn passes it on as sent."""
    settings = settings_factory()
    (settings.home / "images").mkdir(parents=True)
    (settings.home / "secret.txt").write_text("not for you")
    with live_server(create_app(settings=settings)) as base:
        host, port = base.removeprefix("http://").split(":")
        for target in ("/files/../secret.txt", "/files/ai/../../secret.txt", "/files/..%2f..%2fsecret.txt"):
            with socket.create_connection((host, int(port)), timeout=10) as conn:
                conn.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                reply = b""
                while chunk := conn.recv(65536):
                    reply += chunk
            assert reply.startswith(b"HTTP/1.1 400 "), (target, reply[:200])
            assert b"not for you" not in reply and b'"field":"key"' in reply


def test_a_client_that_disconnects_cancels_its_race_and_the_log_says_so(
    settings_factory: Callable[..., Settings],
) -> None:
    """A CMS that gave up waiting (its own timeout) never reads the answer: its race used to go on for the
    provider's whole time, spending for nothing. Now the disconnect cancels it: the request and its attempt
    are logged ``cancelled`` within moments, not after the provider's 20 s."""
    settings = settings_factory()
    document = fakes(slow={"latencyMs": 20_000})
    document["providers"]["slow"]["timeout"] = 30_000
    with ImageGen.from_settings(settings) as gen:
        gen.set_config(document, source="test")
    body = json.dumps({"prompt": "a slow one", "width": 64, "height": 64}).encode()
    with live_server(create_app(settings=settings)) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(
                b"POST /images/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            request_id = _wait_for_row(settings, lambda row: row["status"] == "running")["id"]
        left = time.monotonic()
        row = _wait_for_row(settings, lambda row: row["status"] != "running")
        waited = time.monotonic() - left
    assert (row["id"], row["status"]) == (request_id, "cancelled")
    assert waited < 10, waited  # generous: the provider alone would take 20 s
    with ImageGen.from_settings(settings) as gen:
        assert [(a["provider"], a["outcome"]) for a in attempts_for(gen.log, request_id)] == [("slow", "cancelled")]


def _wait_for_row(settings: Settings, ready: Callable[[dict[str, Any]], bool], timeout_s: float = 15) -> dict[str, Any]:
    """The newest request row, once ``ready`` says so (read from the log the server writes)."""
    deadline = time.monotonic() + timeout_s
    with ImageGen.from_settings(settings) as gen:
        while True:
            rows = recent_requests(gen.log, limit=1)
            if rows and ready(rows[0]):
                return rows[0]
            assert time.monotonic() < deadline, f"no such row within {timeout_s} s: {rows}"
            time.sleep(0.05)
