"""Hostile and odd requests over a real socket (uvicorn on 127.0.0.1), each found by fuzzing the running API:
every one is answered in the API's error shape, logged where the contract says, and leaves no traceback."""

from __future__ import annotations

import io
import json
import select
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from imagegen_core.api import create_app, middleware
from imagegen_core.log.queries import recent_requests
from imagegen_core.service import ImageGen
from imagegen_core.settings import Settings
from tests.logcapture import redacted_json_log

from .conftest import ADMIN, ADMIN_TOKEN, NETWORKED_OFF, live_server
from .serve_process import serve, serve_env

JSON = {"content-type": "application/json"}
ORIGIN = "https://cms.example"


@contextmanager
def served(settings: Settings) -> Iterator[tuple[httpx.Client, io.StringIO]]:
    """The API over a real socket (offline provider only) and everything the server logs meanwhile."""
    with ImageGen.from_settings(settings) as gen:  # stored before start-up, like `imagegen config set`
        gen.set_config({"providers": {**NETWORKED_OFF, "offline": {"enabled": True}}}, source="test")
    with (
        redacted_json_log([ADMIN_TOKEN]) as logs,
        live_server(create_app(settings=settings)) as base,
        httpx.Client(base_url=base, timeout=30) as client,
    ):
        yield client, logs


def logged_requests(settings: Settings) -> dict[str, dict[str, object]]:
    """The log DB's request rows by id (read after the server stopped: its writes are flushed)."""
    with ImageGen.from_settings(settings) as gen:
        return {str(row["id"]): row for row in recent_requests(gen.log, limit=500)}


def no_server_error(logs: io.StringIO) -> None:
    text = logs.getvalue()
    assert "Traceback" not in text and '"level": "ERROR"' not in text, text[-3000:]


def test_the_x_request_id_of_a_refused_request_names_its_rejected_row(
    settings_factory: Callable[..., Settings],
) -> None:
    """A body that parses but fails validation was logged as ``rejected`` under one id and answered with
    another in X-Request-ID, so the answer could not be traced to its row (a malformed body got it right)."""
    settings = settings_factory(IMAGEGEN_ADMIN_TOKEN=ADMIN_TOKEN)
    bodies = [{"prompt": 5}, {"width": 640}, {"prompt": "x", "width": 99999}, {"prompt": "x", "style": "cubist"}]
    with served(settings) as (client, logs):
        answers = [client.post("/images/generate", json=body) for body in bodies]
        answers.append(client.post("/images/generate", content=b'{"prompt": ', headers=JSON))
    assert [a.status_code for a in answers] == [400] * 5
    rows = logged_requests(settings)
    for answer in answers:
        row = rows.get(answer.headers["x-request-id"])
        assert row is not None, (answer.text, sorted(rows))
        assert (row["status"], row["error"]) == ("rejected", answer.json()["error"])
    no_server_error(logs)


def test_a_size_past_64_bits_is_refused_and_still_logged(settings_factory: Callable[..., Settings]) -> None:
    """JSON integers have no size limit; the log's column has 64 bits. The rejected row's write failed
    ("Python int too large to convert to SQLite INTEGER", an ERROR line) and the request was not logged."""
    settings = settings_factory(IMAGEGEN_ADMIN_TOKEN=ADMIN_TOKEN)
    with served(settings) as (client, logs):
        answers = [
            client.post("/images/generate", json={"prompt": "x", "width": 2**70}),
            client.post("/images/generate", json={"prompt": "x", "height": -(2**64)}),
        ]
    assert [(a.status_code, a.json()["field"]) for a in answers] == [(400, "width"), (400, "height")]
    rows = logged_requests(settings)
    for answer in answers:
        row = rows[answer.headers["x-request-id"]]
        assert (row["status"], row["width"], row["height"]) == ("rejected", None, None)
    no_server_error(logs)


def test_a_deeply_nested_body_is_a_400_on_every_json_route(settings_factory: Callable[..., Settings]) -> None:
    """Python's parser takes ~1000 levels, but the config's deep merge ran out of stack near 500: a 500 with
    two tracebacks, and at 700 the connection was reset with no answer at all."""
    settings = settings_factory(IMAGEGEN_ADMIN_TOKEN=ADMIN_TOKEN)
    routes = [
        ("POST", "/images/generate", '{"prompt": %s}'),
        ("PATCH", "/admin/config", '{"providers": {"fal": {"options": %s}}}'),
        ("PUT", "/admin/config", '{"version": null, "config": {"styles": %s}}'),
        ("POST", "/admin/circuit-breaker", '{"action": "reset", "provider": %s}'),
    ]
    with served(settings) as (client, logs):
        for method, path, template in routes:
            for depth in (65, 600, 990):
                body = (template % ("[" * depth + "]" * depth)).encode()
                answer = client.request(method, path, content=body, headers={**JSON, **ADMIN})
                assert answer.status_code == 400, (method, path, depth, answer.text)
                assert answer.json() == {
                    "error": "body: the JSON document is nested too deeply (over 64 levels)",
                    "field": "body",
                }
        # a document deep enough for any real use is read and judged on its content
        shallow = {"prompt": json.loads("[" * 60 + "]" * 60)}
        assert client.post("/images/generate", json=shallow).json()["field"] == "prompt"
        assert client.get("/admin/config", headers=ADMIN).json()["version"] == 1  # nothing was stored
    no_server_error(logs)


def test_a_number_with_thousands_of_digits_is_a_plain_400(settings_factory: Callable[..., Settings]) -> None:
    """Python refuses to parse integers past 4300 digits; the message told the caller to call
    ``sys.set_int_max_str_digits()``."""
    with served(settings_factory()) as (client, logs):
        answer = client.post(
            "/images/generate", content=b'{"prompt": "x", "width": 1' + b"0" * 5000 + b"}", headers=JSON
        )
    assert answer.status_code == 400
    assert answer.json() == {"error": "body: a number in the document has too many digits", "field": "body"}
    no_server_error(logs)


def test_an_error_shows_the_clients_long_texts_shortened(settings_factory: Callable[..., Settings]) -> None:
    """An unknown style, an unknown field's name and a size of thousands of digits came back whole in the
    error (QA: 4-5 KB answers, the field 5000 characters), and into the rejected row; outside texts are cut
    short, marked with an ellipsis, as an unknown provider's name already was (an unknown field is ignored
    now, and named in the answer's notes, cut short as well)."""
    settings = settings_factory()
    bodies = {
        "style": {"prompt": "x", "style": "A" * 5000},
        "field": {"prompt": "x", "B" * 5000: 1},
        "size": {"prompt": "x", "width": 10**4000},
    }
    with served(settings) as (client, logs):
        answers = {name: client.post("/images/generate", json=body) for name, body in bodies.items()}
    ignored = answers.pop("field")  # ignored as the Worker ignored it, and named in the notes, cut short too
    assert ignored.status_code == 200 and ignored.json()["notes"] == [
        f"fields this API does not take were ignored (as the Worker ignored them): '{'B' * 39}…'"
    ]
    for name, answer in answers.items():
        assert answer.status_code == 400, (name, answer.text)
        error, field = answer.json()["error"], answer.json()["field"]
        assert len(error) <= 200 and len(field) <= 60 and "…" in error, (name, error, field)
        row = logged_requests(settings)[answer.headers["x-request-id"]]
        assert (row["status"], row["error"]) == ("rejected", error), name
    assert answers["style"].json()["error"].startswith("style: unknown style 'AAA")
    assert answers["size"].json()["error"].startswith("width: must be between 64 and 4096 pixels, got 1000")
    no_server_error(logs)


def test_a_client_that_hangs_up_before_its_body_arrived_is_no_server_error(
    settings_factory: Callable[..., Settings],
) -> None:
    """A CMS that gives up mid-upload was a 500 in the request log, with two ERROR tracebacks
    (``ClientDisconnect``); now one line, status 499 (nginx's "client closed request"), and no row."""
    settings = settings_factory(IMAGEGEN_ADMIN_TOKEN=ADMIN_TOKEN)
    with served(settings) as (client, logs):
        host, port = str(client.base_url.host), int(client.base_url.port or 80)
        for path, extra in (("/images/generate", ""), ("/admin/config", f"Authorization: Bearer {ADMIN_TOKEN}\r\n")):
            with socket.create_connection((host, port), timeout=10) as conn:
                head = f"PATCH {path}" if path == "/admin/config" else f"POST {path}"
                conn.sendall(
                    f"{head} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{extra}"
                    "Content-Length: 1000\r\n\r\n".encode()
                    + b'{"prompt": "only the start'
                )
            deadline = time.monotonic() + 10  # readiness: the server's line for that request
            while f'"path": "{path}"' not in logs.getvalue():
                assert time.monotonic() < deadline, logs.getvalue()[-2000:]
                time.sleep(0.01)
        assert client.get("/health").status_code == 200
    lines = [json.loads(line) for line in logs.getvalue().splitlines() if '"message": "request"' in line]
    assert [(line["path"], line["status"]) for line in lines if line["status"] != 200] == [
        ("/images/generate", 499),
        ("/admin/config", 499),
    ]
    assert not logged_requests(settings)
    no_server_error(logs)


def test_a_refused_cors_preflight_answers_in_the_error_shape(settings_factory: Callable[..., Settings]) -> None:
    """Starlette answers a refused preflight with plain text ("Disallowed CORS origin"); every error of this
    API is ``{"error", "field"}`` JSON. An allowed preflight is unchanged."""
    settings = settings_factory(IMAGEGEN_CORS_ORIGINS=ORIGIN)
    with served(settings) as (client, logs):

        def preflight(origin: str, method: str = "POST", headers: str = "content-type") -> httpx.Response:
            return client.options(
                "/images/generate",
                headers={
                    "Origin": origin,
                    "Access-Control-Request-Method": method,
                    "Access-Control-Request-Headers": headers,
                },
            )

        refused = {
            "Disallowed CORS origin": preflight("https://evil.example"),
            "Disallowed CORS method": preflight(ORIGIN, method="DELETE"),
            "Disallowed CORS headers": preflight(ORIGIN, headers="x-evil"),
        }
        allowed = preflight(ORIGIN)
    for message, answer in refused.items():
        assert answer.status_code == 400 and answer.headers["content-type"] == "application/json", answer.text
        assert answer.json() == {"error": message, "field": None}
        assert "access-control-allow-origin" not in answer.headers or message != "Disallowed CORS origin"
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in allowed.headers["access-control-allow-methods"]
    no_server_error(logs)


def test_a_range_that_cannot_be_served_is_an_error_in_the_api_shape(settings_factory: Callable[..., Settings]) -> None:
    """``GET /files/{key}`` serves ranges (Starlette's FileResponse); one past the end is a 416 in the API's
    shape (Starlette's had an empty body), and one that is not valid is ignored, as the RFC says."""
    settings = settings_factory(IMAGEGEN_PUBLIC_BASE_URL="http://127.0.0.1/files")
    with served(settings) as (client, logs):
        key = client.post("/images/generate", json={"prompt": "x", "width": 64, "height": 64}).json()["key"]
        size = len(client.get(f"/files/{key}").content)

        def ranged(value: str) -> httpx.Response:
            return client.get(f"/files/{key}", headers={"Range": value})

        assert (ranged("bytes=0-9").status_code, len(ranged("bytes=0-9").content)) == (206, 10)
        # Another unit than bytes, and byte ranges that are not valid, are ignored (RFC 9110 §14.2 "MUST
        # ignore"): the whole image. They were 400s (QA: Starlette's plain text, then this API's error).
        ignored = {value: ranged(value) for value in ("items=0-1", "bytes=abc", "bytes=5-1", "bytes", "garbage")}
        # QA: 50 one-byte ranges answered 4.6 times the image in multipart headers; past 8, the whole image
        many = "bytes=" + ",".join(f"{2 * n}-{2 * n}" for n in range(9))
        ignored[many] = ranged(many)
        eight = ranged("bytes=" + ",".join(f"{2 * n}-{2 * n}" for n in range(8)))
        past_end = ranged(f"bytes={size}-")
    for value, answer in ignored.items():
        assert (answer.status_code, len(answer.content)) == (200, size), value
        assert answer.headers["content-type"] == "image/webp", value
    assert eight.status_code == 206 and eight.headers["content-type"].startswith("multipart/byteranges")
    assert past_end.status_code == 416 and past_end.headers["content-type"] == "application/json", past_end.text
    message = f"Range: the range starts past the end of the image ({size} bytes)"
    assert past_end.json() == {"error": message, "field": "Range"}
    assert past_end.headers["content-range"] == f"bytes */{size}"
    no_server_error(logs)


@pytest.mark.parametrize(
    ("content_type", "size", "status", "next_answered"),
    [("text/plain", 60_000, 415, True), ("application/json", 70_000, 413, False)],
    ids=["refused unread within the cap", "over the cap"],
)
def test_a_refused_body_is_read_before_the_refusal_so_no_reset_loses_it(
    settings_factory: Callable[..., Settings], content_type: str, size: int, status: int, next_answered: bool
) -> None:
    """A refusal sent before the body had arrived (a 415 here, as a 401 or 429 would be; a 413 for a declared
    size over the cap) made uvicorn close the connection with the rest of the body still coming, and the
    kernel reset it: under load, fuzzing saw clients lose the answer ("connection reset by peer"). Now the body
    is read (and dropped) first: within the cap the connection even stays open for the next request."""
    with served(settings_factory()) as (client, logs):
        host, port = str(client.base_url.host), int(client.base_url.port or 80)
        body = b'{"prompt": "' + b"x" * size + b'"}'
        with socket.create_connection((host, port), timeout=10) as conn:
            conn.sendall(
                f"POST /images/generate HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body[:1000]
            )
            early, _, _ = select.select([conn], [], [], 0.5)  # the refusal must wait for the body
            assert not early, conn.recv(65536)[:300]
            conn.sendall(
                body[1000:] + f"GET /health/live HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            )
            reply = b""
            while chunk := conn.recv(65536):  # a reset would raise here
                reply += chunk
    assert reply.startswith(f"HTTP/1.1 {status} ".encode()), reply[:300]
    assert reply.split(b"\r\n\r\n", 1)[1].startswith(b'{"error":"body: '), reply[:500]
    assert (reply.count(b"HTTP/1.1 ") == 2 and b'{"status":"ok"}' in reply) is next_answered, reply[-300:]
    no_server_error(logs)


def test_a_refusal_waits_for_a_body_that_never_comes_only_so_long(
    settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading a refused body first must not let a client hold the connection open by declaring a body and
    sending none: after DRAIN_TIMEOUT_S the refusal goes out, and the connection is closed."""
    monkeypatch.setattr(middleware, "DRAIN_TIMEOUT_S", 0.5)
    with served(settings_factory()) as (client, logs):
        host, port = str(client.base_url.host), int(client.base_url.port or 80)
        with socket.create_connection((host, port), timeout=10) as conn:
            started = time.monotonic()
            conn.sendall(
                f"POST /images/generate HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain\r\n"
                "Content-Length: 5000\r\n\r\n".encode()
            )
            reply = conn.recv(65536)  # before the fix: nothing, ever (a timeout here)
            waited = time.monotonic() - started
            while chunk := conn.recv(65536):  # then the server closes it (after its keep-alive timeout)
                reply += chunk
    assert reply.startswith(b"HTTP/1.1 415 "), reply[:300]
    assert 0.4 <= waited < 4, waited
    no_server_error(logs)


def raw_exchange(base_url: str, request: bytes) -> bytes:
    """Send ``request`` as it is and read the answer until the server closes the connection."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    return reply


def test_a_body_uvicorn_itself_refuses_leaves_no_traceback(tmp_path: Path) -> None:
    """Headers that parse and a body that does not (a bad chunk size): uvicorn answers 400 itself and closes.
    The app, already running, answered too: h11 raised (MUST_CLOSE), two ERROR tracebacks and a 500 in the
    request log per such request; for HEAD, uvicorn's own 400 failed too (an asyncio "Fatal error"). Run
    through the real ``imagegen serve``, whose clean exit also checks its log for tracebacks."""
    env = serve_env(tmp_path / "home", LOG_LEVEL="INFO")
    with serve(cwd=tmp_path, env=env) as server:
        for request_line in ("PUT /files/x", "POST /images/generate", "GET /health", "HEAD /nothing"):
            reply = raw_exchange(
                server.base_url,
                f"{request_line} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                "Transfer-Encoding: chunked\r\n\r\nzz\r\n".encode(),
            )
            assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n"), (request_line, reply[:200])
        assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200
    log = server.log.read_text()  # complete: the server has stopped
    assert '"level": "ERROR"' not in log and "Traceback" not in log, log[-3000:]
    assert log.count("Invalid HTTP request received.") == 4
