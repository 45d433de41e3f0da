"""Requests uvicorn itself cannot parse, against both ways of running the API as a process: ``imagegen serve``
and ``uvicorn --factory imagegen_core.cli_serve:server_app``. uvicorn answers them, in the API's error shape,
and neither the app's late answer nor a HEAD request leaves a traceback in the server log."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import httpx
import pytest

from imagegen_core.api.middleware import BOTH_FRAMINGS_ERROR
from tests.pgcluster import free_port

from .serve_process import serve, serve_env
from .test_hostile_input import raw_exchange
from .test_uvicorn_factory import SERVER_APP, uvicorn, wait_live


@contextmanager
def imagegen_serve(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``imagegen serve``: its base URL and log file (complete once the block has ended)."""
    with serve(cwd=tmp_path, env=serve_env(tmp_path / "home", LOG_LEVEL="INFO")) as server:
        yield server.base_url, server.log


@contextmanager
def uvicorn_server_app(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``uvicorn --factory ...:server_app`` (uvicorn's own protocol choice): its base URL and log file."""
    port = free_port()  # free a moment ago: uvicorn binds it itself
    log = tmp_path / "uvicorn.log"
    with log.open("wb") as out:
        command = uvicorn(SERVER_APP, "--port", str(port))
        env = serve_env(tmp_path / "home", LOG_LEVEL="INFO")
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_live(base, proc, log)
        yield base, log
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("server", [imagegen_serve, uvicorn_server_app], ids=["imagegen serve", "uvicorn server_app"])
def test_a_body_uvicorn_refuses_is_a_json_400_without_a_traceback(
    tmp_path: Path, server: Callable[[Path], AbstractContextManager[tuple[str, Path]]]
) -> None:
    """Under ``uvicorn --factory ...:server_app`` the fix for ``imagegen serve`` (api/http11.py) was not in
    force, since uvicorn's command line picks its protocol itself: a HEAD request with a bad chunk size was
    an asyncio "Fatal error" traceback. And uvicorn's 400 was plain text, not ``{"error", "field"}``."""
    with server(tmp_path) as (base_url, log):
        replies = {
            request_line: raw_exchange(
                base_url,
                f"{request_line} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                "Transfer-Encoding: chunked\r\n\r\nzz\r\n".encode(),
            )
            for request_line in ("HEAD /nothing", "HEAD /health", "POST /images/generate", "PUT /files/x")
        }
        assert httpx.get(f"{base_url}/health", timeout=10).status_code == 200
    for request_line, reply in replies.items():
        assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n"), (request_line, reply[:200])
        head, _, body = reply.partition(b"\r\n\r\n")
        assert b"content-type: application/json" in head.lower(), (request_line, head)
        if not request_line.startswith("HEAD"):
            assert json.loads(body) == {"error": "invalid HTTP request", "field": None}
    text = log.read_text()
    assert "Traceback" not in text and '"level": "ERROR"' not in text, text[-3000:]
    assert text.count("Invalid HTTP request received.") == len(replies)


@pytest.mark.parametrize("server", [imagegen_serve, uvicorn_server_app], ids=["imagegen serve", "uvicorn server_app"])
def test_a_request_with_both_content_length_and_transfer_encoding_is_refused_and_the_connection_closed(
    tmp_path: Path, server: Callable[[Path], AbstractContextManager[tuple[str, Path]]]
) -> None:
    """Both framings: the server read the chunks, a proxy in front may read the length, and the rest is taken
    for a next request by one of them (request smuggling). RFC 9112 §6.3: an error, and the connection closed
    after the answer (QA: accepted, the connection kept open). Nothing of it reaches the log database."""
    with server(tmp_path) as (base_url, log):
        body = b'{"prompt": "x"}'
        smuggled = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"  # would be a second request
        reply = raw_exchange(  # reads until the server closes the connection (a timeout fails the test)
            base_url,
            b"POST /images/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + f"{len(body):x}\r\n".encode()
            + body
            + b"\r\n0\r\n\r\n"
            + smuggled,
        )
    head, _, rest = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"connection: close" in head.lower(), head
    assert json.loads(rest) == {"error": f"headers: {BOTH_FRAMINGS_ERROR}", "field": "headers"}
    assert reply.count(b"HTTP/1.1 ") == 1  # the smuggled request got no answer
    assert "Traceback" not in log.read_text()
    assert not (tmp_path / "home" / "imagegen.db").exists() or not logged_generates(tmp_path / "home")


def logged_generates(home: Path) -> int:
    """Generate requests in the log database under ``home`` (read-only)."""
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(f"file:{home / 'imagegen.db'}?mode=ro", uri=True)) as conn:
        return int(conn.execute("SELECT count(*) FROM requests").fetchone()[0])
