"""Clients that declare a body and send it slowly or never, over a real socket: they get a 408 in the API's
error shape after ``BODY_TIMEOUT_S``, and cannot hold a server's graceful shutdown (SIGTERM) open; and a
forced shutdown answers the requests it cuts short in the error shape too."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from imagegen_core.api import middleware
from imagegen_core.cli import EXIT_INTERRUPTED
from imagegen_core.settings import Settings

from .conftest import ADMIN, ADMIN_TOKEN, fakes
from .serve_process import serve, serve_env
from .test_hostile_input import logged_requests, no_server_error, served

JSON_HEAD = "Content-Type: application/json\r\n"


def open_request(base_url: str, head: str, body_start: bytes) -> socket.socket:
    """A connection that sent ``head`` (request line and headers, without the blank line) and the start of
    its body, and sends nothing more."""
    host, port = base_url.removeprefix("http://").split(":")
    conn = socket.create_connection((host, int(port)), timeout=15)
    conn.sendall(f"{head}Host: {host}\r\n\r\n".encode() + body_start)
    return conn


def read_until_closed(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a timeout here fails the test)."""
    reply = b""
    while chunk := conn.recv(65536):
        reply += chunk
    return reply


def test_a_body_that_never_arrives_is_a_408_and_the_connection_is_closed(
    settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request whose body stopped coming (a declared length, a chunk size no body follows) waited for it
    forever: no answer, the connection and the request held for as long as the client liked."""
    monkeypatch.setattr(middleware, "BODY_TIMEOUT_S", 0.5)
    settings = settings_factory(IMAGEGEN_ADMIN_TOKEN=ADMIN_TOKEN)
    stalled = {
        "generate": (f"POST /images/generate HTTP/1.1\r\n{JSON_HEAD}Content-Length: 1000\r\n", b'{"prompt": '),
        "config": (
            f"PATCH /admin/config HTTP/1.1\r\n{JSON_HEAD}Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: 99\r\n",
            b"{",
        ),
        "huge chunk": (
            f"POST /images/generate HTTP/1.1\r\n{JSON_HEAD}Transfer-Encoding: chunked\r\n",
            b"ffffffff\r\n{",
        ),
    }
    with served(settings) as (client, logs):
        replies: dict[str, tuple[bytes, float]] = {}
        for name, (head, body_start) in stalled.items():
            started = time.monotonic()
            with open_request(str(client.base_url), head, body_start) as conn:
                replies[name] = (read_until_closed(conn), time.monotonic() - started)
    for name, (reply, waited) in replies.items():
        assert reply.startswith(b"HTTP/1.1 408 "), (name, reply[:300])
        assert json.loads(reply.split(b"\r\n\r\n", 1)[1]) == {
            "error": "body: the request body did not arrive within 0.5 s",
            "field": "body",
        }, name
        assert 0.4 <= waited < 4, (name, waited)  # closed with the answer, not after a keep-alive timeout
    assert not logged_requests(settings)  # refused unread: the server log only, as a 413
    no_server_error(logs)


def test_sigterm_is_not_held_up_by_a_client_that_never_sends_its_body(tmp_path: Path) -> None:
    """uvicorn's graceful shutdown waits for every request in flight: one whose body never came kept a real
    ``imagegen serve`` from stopping on SIGTERM until the client left (systemd then kills it, skipping the
    app's shutdown). Now the request ends with its 408 and the server stops."""
    env = serve_env(tmp_path / "home", LOG_LEVEL="INFO")
    prelude = "import imagegen_core.api.middleware as m; m.BODY_TIMEOUT_S = 1.0"
    with serve(cwd=tmp_path, env=env, prelude=prelude) as server:
        # Expect: 100-continue, so that uvicorn's "100 Continue" says the app is waiting for the body.
        head = f"POST /images/generate HTTP/1.1\r\n{JSON_HEAD}Content-Length: 1000\r\nExpect: 100-continue\r\n"
        with open_request(server.base_url, head, b"") as conn:
            assert conn.recv(4096).startswith(b"HTTP/1.1 100 ")
            conn.sendall(b'{"prompt": ')
            server.proc.send_signal(signal.SIGTERM)
            try:
                server.proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                pytest.fail("the server did not stop on SIGTERM while a request waited for its body")
            reply = read_until_closed(conn)
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:300]
    log = server.log.read_text()
    assert '"status": 408' in log and "Traceback" not in log, log[-3000:]


def running_rows(db: Path) -> int:
    """Request rows still ``running`` in the server's SQLite log (read-only: the server is writing it)."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return int(conn.execute("SELECT count(*) FROM requests WHERE status = 'running'").fetchone()[0])


def test_a_forced_shutdown_answers_the_requests_in_flight_503_without_tracebacks(tmp_path: Path) -> None:
    """A second Ctrl+C stops uvicorn without waiting: it cancels the requests in flight. Each was a plain-text
    500 from uvicorn with an ERROR traceback ("Exception in ASGI application"), and the cancelled lifespan one
    more. Now each is a 503 in the API's error shape, logged as ``cancelled``, and the shutdown is one line;
    the log DB still says ``cancelled`` for each request (none left ``running``)."""
    home = tmp_path / "home"
    env = serve_env(home, LOG_LEVEL="INFO", IMAGEGEN_ADMIN_TOKEN=ADMIN_TOKEN)
    with (
        serve(cwd=tmp_path, env=env, exit_codes=(EXIT_INTERRUPTED,)) as server,
        httpx.Client(base_url=server.base_url, timeout=30) as client,
    ):
        assert client.patch("/admin/config", json=fakes(stuck={"hang": True}), headers=ADMIN).status_code == 200
        with ThreadPoolExecutor(3) as pool:
            answers = [pool.submit(client.post, "/images/generate", json={"prompt": f"p{i}"}) for i in range(3)]
            deadline = time.monotonic() + 20
            while running_rows(home / "imagegen.db") < 3:  # readiness: all three are racing the stuck provider
                assert time.monotonic() < deadline, server.log.read_text()[-3000:]
                time.sleep(0.02)
            server.proc.send_signal(signal.SIGINT)
            while "Waiting for connections to close" not in server.log.read_text():
                assert time.monotonic() < deadline, server.log.read_text()[-3000:]
                time.sleep(0.02)
            server.proc.send_signal(signal.SIGINT)  # the second: force quit
            replies = [answer.result() for answer in answers]
        server.proc.wait(timeout=20)
    for reply in replies:
        assert reply.status_code == 503, reply.text
        assert reply.json() == {"error": "the server is shutting down and cancelled this request; retry", "field": None}
    log = server.log.read_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
    assert log.count('"outcome": "cancelled"') == 3
    assert "imagegen: forced shutdown: the requests in flight were cancelled (answered 503)" in log
    assert running_rows(home / "imagegen.db") == 0
