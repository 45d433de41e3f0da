"""Clients that declare a body and send it slowly or never, over a real socket: they get a 408 in the API's
error shape after ``BODY_TIMEOUT_S``, and cannot hold a server's graceful shutdown (SIGTERM) open; and a
forced shutdown answers the requests it cuts short in the error shape too."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from imagegen_core.api import middleware
from imagegen_core.api.public import CLIENT_LEFT_ERROR
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


def stopping_workers(log: str) -> int:
    """How many of the server's worker processes (uvicorn servers) have begun to stop and got as far as
    waiting for their requests in flight, or finished (one that held none)."""
    return log.count("Waiting for connections to close") + log.count("Finished server process")


@pytest.mark.parametrize(
    ("workers", "first", "second_to_the_main_process"),
    [
        pytest.param(1, signal.SIGINT, False, id="1 worker-Ctrl+C twice"),
        pytest.param(1, signal.SIGTERM, False, id="1 worker-SIGTERM then Ctrl+C"),
        pytest.param(2, signal.SIGINT, False, id="2 workers-Ctrl+C twice"),
        pytest.param(2, signal.SIGTERM, False, id="2 workers-SIGTERM then Ctrl+C"),
        # QA: a second signal to the supervisor alone (docker stop's, systemctl kill --kill-who=main, a script's
        # kill PID) forced nothing: the workers waited for their requests as after the first.
        pytest.param(2, signal.SIGTERM, True, id="2 workers-SIGTERM then SIGINT to the main process"),
    ],
)
def test_a_forced_shutdown_answers_the_requests_in_flight_503_without_tracebacks(
    tmp_path: Path, first: signal.Signals, workers: int, second_to_the_main_process: bool
) -> None:
    """A second Ctrl+C stops uvicorn without waiting: it cancels the requests in flight. Each was a plain-text
    500 from uvicorn with an ERROR traceback ("Exception in ASGI application"), and the cancelled lifespan one
    more. Now each is a 503 in the API's error shape, logged as ``cancelled``, and the shutdown is one line;
    the log DB still says ``cancelled`` for each request (none left ``running``). The same after a SIGTERM
    (a supervisor's stop) then Ctrl+C: the process died of the SIGTERM that uvicorn raises again once it has
    shut down, before the requests were cancelled (QA: no answers, rows left ``running``); it still ends by
    SIGTERM. With ``--workers 2`` each worker died that way after Ctrl+C twice as well (the supervisor's
    SIGTERM came after the terminal's SIGINT), and the supervisor exited 0 whatever stopped it."""
    home = tmp_path / "home"
    env = serve_env(home, LOG_LEVEL="INFO", IMAGEGEN_ADMIN_TOKEN=ADMIN_TOKEN)
    exit_code = EXIT_INTERRUPTED if first == signal.SIGINT else -signal.SIGTERM
    with (
        serve("--workers", str(workers), cwd=tmp_path, env=env, exit_codes=(exit_code,)) as server,
        httpx.Client(base_url=server.base_url, timeout=30) as client,
    ):
        assert client.patch("/admin/config", json=fakes(stuck={"hang": True}), headers=ADMIN).status_code == 200
        with ThreadPoolExecutor(3) as pool:
            answers = [pool.submit(client.post, "/images/generate", json={"prompt": f"p{i}"}) for i in range(3)]
            deadline = time.monotonic() + 20
            while running_rows(home / "imagegen.db") < 3:  # readiness: all three are racing the stuck provider
                assert time.monotonic() < deadline, server.log.read_text()[-3000:]
                time.sleep(0.02)
            if first == signal.SIGINT:
                server.ctrl_c()
            else:
                server.proc.send_signal(signal.SIGTERM)  # a supervisor's stop goes to the main process
            while stopping_workers(server.log.read_text()) < workers:
                assert time.monotonic() < deadline, server.log.read_text()[-3000:]
                time.sleep(0.02)
            if second_to_the_main_process:
                server.proc.send_signal(signal.SIGINT)  # the second: force quit, handed on to every worker
            else:
                server.ctrl_c()  # the second: force quit
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
    # QA run: the 503's X-Request-ID (and the server log's line) named no row; the cancelled row had another id
    with closing(sqlite3.connect(f"file:{home / 'imagegen.db'}?mode=ro", uri=True)) as conn:
        cancelled = {row[0] for row in conn.execute("SELECT id FROM requests WHERE status = 'cancelled'")}
    assert {reply.headers["x-request-id"] for reply in replies} == cancelled


HEADER_DEADLINE_PRELUDE = "import imagegen_core.api.http11 as h; h.HEADER_TIMEOUT_S = 1.0"
HEADERS_408 = {"error": "headers: the request headers did not arrive within 1 s", "field": "headers"}


def connect(base_url: str) -> socket.socket:
    host, port = base_url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=15)


def trickle_headers(conn: socket.socket, *, seconds: float) -> float:
    """Send a request line and then a header a byte every 0.2 s (slowloris) for ``seconds`` at most, or until
    the server closes; the time from the first byte until the server stopped reading."""
    started = time.monotonic()
    conn.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    for byte in b"X-Padding: " + b"a" * 200:
        if time.monotonic() - started > seconds:
            break
        try:
            conn.sendall(bytes([byte]))
        except OSError:  # the server closed: what the test waits for
            break
        time.sleep(0.2)
    return time.monotonic() - started


def read_response(conn: socket.socket) -> bytes:
    """One whole response with a Content-Length, leaving the connection open."""
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += conn.recv(65536)
    head, _, body = reply.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


def answer_of(reply: bytes) -> tuple[bytes, object]:
    head, _, body = reply.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0], json.loads(body)


def check_header_deadline(base_url: str) -> None:
    """Against a server whose header deadline is 1 s: slow headers get a 408 and are closed within a few
    seconds; an idle connection is closed without a word; a kept-alive connection's next request has the same
    deadline; a normal request is answered."""
    with connect(base_url) as conn:
        trickle_headers(conn, seconds=6)
        conn.settimeout(6)
        status, body = answer_of(read_until_closed(conn))
    assert status == b"HTTP/1.1 408 Request Timeout" and body == HEADERS_408

    started = time.monotonic()
    with connect(base_url) as conn:
        conn.settimeout(6)
        assert read_until_closed(conn) == b""  # connected, never sent anything: closed silently
    assert time.monotonic() - started < 5

    with connect(base_url) as conn:
        conn.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = read_response(conn)
        assert first.startswith(b"HTTP/1.1 200 "), first[:200]
        conn.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the next request, never finished
        conn.settimeout(6)
        status, body = answer_of(read_until_closed(conn))
    assert status == b"HTTP/1.1 408 Request Timeout" and body == HEADERS_408

    assert httpx.get(f"{base_url}/health/live", timeout=10).status_code == 200


def test_request_headers_have_a_deadline_under_imagegen_serve(tmp_path: Path) -> None:
    """uvicorn has no header timeout: a client sending its headers a byte at a time (slowloris), or nothing
    at all, held its connection for ever (enough of them use up the server's file descriptors)."""
    env = serve_env(tmp_path / "home", LOG_LEVEL="INFO")
    with serve(cwd=tmp_path, env=env, prelude=HEADER_DEADLINE_PRELUDE) as server:
        check_header_deadline(server.base_url)
    assert "Traceback" not in server.log.read_text(), server.log.read_text()[-3000:]


def test_request_headers_have_a_deadline_under_uvicorns_command_line(tmp_path: Path) -> None:
    """``uvicorn --factory imagegen_core.cli_serve:server_app`` chose uvicorn's own protocol class before the
    factory ran: the factory gives that class the deadline."""
    from tests.pgcluster import free_port

    from .test_uvicorn_factory import SERVER_APP, uvicorn, wait_live

    port = free_port()
    argv = uvicorn(SERVER_APP, "--port", str(port))[3:]  # after `python -m uvicorn`
    code = (
        f"{HEADER_DEADLINE_PRELUDE}; import sys, uvicorn.main; sys.argv = ['uvicorn', *{argv!r}]; uvicorn.main.main()"
    )
    log = tmp_path / "uvicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", code], cwd=tmp_path, env=serve_env(tmp_path / "home"), stdout=out, stderr=out
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_live(base, proc, log)
        check_header_deadline(base)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def generate_request(prompt: str) -> bytes:
    """A whole ``POST /images/generate`` of a 64x64 image, as bytes on the wire."""
    body = json.dumps({"prompt": prompt, "width": 64, "height": 64}).encode()
    head = f"POST /images/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n{JSON_HEAD}Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def request_statuses(db: Path) -> list[str]:
    """The status of each request row in the server's SQLite log, oldest first (read-only)."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return [row[0] for row in conn.execute("SELECT status FROM requests ORDER BY created_at")]


def wait_for_statuses(db: Path, ready: Callable[[list[str]], bool], timeout_s: float = 20) -> list[str]:
    """:func:`request_statuses` once ``ready`` says so (the server writes them; readiness, not timing)."""
    deadline = time.monotonic() + timeout_s
    while not ready(statuses := request_statuses(db)):
        assert time.monotonic() < deadline, statuses
        time.sleep(0.02)
    return statuses


def test_a_generate_whose_client_closes_its_connection_is_cancelled_at_once(tmp_path: Path) -> None:
    """A CMS whose own timeout ran out closes its connection: an end-of-file, as a client that only shuts its
    sending side sends. ``imagegen serve`` took both for a client still waiting, so the race went on for the
    provider's whole time, paid for, and was logged a success (QA: 8 s, 200, costUsd 0.01). Now it is cancelled
    at once, and logged so. A client that only shut its sending side reads why in the 499."""
    home = tmp_path / "home"
    env = serve_env(home, LOG_LEVEL="INFO", IMAGEGEN_ADMIN_TOKEN=ADMIN_TOKEN)
    slow = fakes(slow={"latencyMs": 20_000})
    slow["providers"]["slow"]["timeout"] = 30_000
    with serve(cwd=tmp_path, env=env) as server:
        assert httpx.patch(f"{server.base_url}/admin/config", json=slow, headers=ADMIN).status_code == 200
        with connect(server.base_url) as conn:
            conn.sendall(generate_request("given up on"))
            wait_for_statuses(home / "imagegen.db", lambda statuses: statuses == ["running"])
        closed = time.monotonic()
        statuses = wait_for_statuses(home / "imagegen.db", lambda statuses: "running" not in statuses)
        waited = time.monotonic() - closed
        with connect(server.base_url) as conn:
            conn.sendall(generate_request("half-closed"))
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(30)
            half_closed = read_until_closed(conn)
        after_both = wait_for_statuses(
            home / "imagegen.db", lambda statuses: len(statuses) == 2 and "running" not in statuses
        )
    assert statuses == ["cancelled"] and waited < 10, (statuses, waited)  # the provider alone takes 20 s
    assert after_both == ["cancelled", "cancelled"]
    assert half_closed.startswith(b"HTTP/1.1 499 "), half_closed[:300]
    # The 499's X-Request-ID names the cancelled row, also when the end-of-file came before the race began.
    request_id = next(
        line.split(b":", 1)[1].strip().decode()
        for line in half_closed.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        if line.lower().startswith(b"x-request-id:")
    )
    with closing(sqlite3.connect(f"file:{home / 'imagegen.db'}?mode=ro", uri=True)) as conn:
        assert conn.execute("SELECT status FROM requests WHERE id = ?", (request_id,)).fetchall() == [("cancelled",)]
    assert json.loads(half_closed.split(b"\r\n\r\n", 1)[1]) == {"error": CLIENT_LEFT_ERROR, "field": None}
    log = server.log.read_text()
    assert log.count('"status": 499') == 2 and "Traceback" not in log, log[-3000:]


def test_a_client_that_half_closes_after_its_request_still_gets_the_answer(tmp_path: Path) -> None:
    """A client may shut its side of the connection once its request is sent (HTTP/1.0-style scripts, `nc -N`,
    some health checkers): uvicorn took that end-of-file for a hang-up, dropped the answer and closed the
    connection. (A generate takes it for the client leaving: the test above.)"""
    env = serve_env(tmp_path / "home", LOG_LEVEL="INFO")
    requests = {
        "live": b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        "health": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    }
    with serve(cwd=tmp_path, env=env) as server:
        replies = {}
        for name, request in requests.items():
            with connect(server.base_url) as conn:
                conn.sendall(request)
                conn.shutdown(socket.SHUT_WR)
                conn.settimeout(30)
                replies[name] = read_until_closed(conn)
        # A body that stops short, then the end of the client's sending: a 400 at once, not the body's deadline.
        short = f"POST /images/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n{JSON_HEAD}Content-Length: 1000\r\n\r\n"
        started = time.monotonic()
        with connect(server.base_url) as conn:
            conn.sendall(short.encode() + b'{"prompt": ')
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(30)
            cut = read_until_closed(conn)
        cut_took = time.monotonic() - started
    for name, reply in replies.items():
        assert reply.startswith(b"HTTP/1.1 200 "), (name, reply[:300])
    assert json.loads(replies["health"].split(b"\r\n\r\n", 1)[1])["status"] == "ok"
    assert cut.startswith(b"HTTP/1.1 400 ") and cut_took < 3, (cut[:300], cut_took)
    assert json.loads(cut.split(b"\r\n\r\n", 1)[1]) == {"error": "invalid HTTP request", "field": None}
    assert "Traceback" not in server.log.read_text()
