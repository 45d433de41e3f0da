"""The HTTP/1.1 layer's own answers (api/http11.py: a request it cannot parse, headers that do not arrive in
time) carry an ``X-Request-ID`` and have exactly one request line in the server log, as the app's answers do.
QA: they had neither, so an operator could not tie a client's 400/408 to anything in the log."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from imagegen_core.api import create_app, http11
from imagegen_core.service import ImageGen
from tests.logcapture import redacted_json_log

from .conftest import live_server
from .test_hostile_input import raw_exchange

_ID = re.compile(r"[0-9a-f]{32}")


@contextmanager
def served(gen: ImageGen) -> Iterator[tuple[str, Callable[[], list[dict[str, Any]]]]]:
    """The API over a real socket with ``imagegen serve``'s protocol; the base URL and the request lines logged."""
    with redacted_json_log([]) as log, live_server(create_app(gen), http=http11.http_protocol()) as base:

        def lines() -> list[dict[str, Any]]:
            parsed = [json.loads(line) for line in log.getvalue().splitlines() if line.startswith("{")]
            return [line for line in parsed if line.get("message") == "request" and line["logger"] == "imagegen.api"]

        yield base, lines


def answer(reply: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """Status line, headers (lower-case names) and body of a raw HTTP/1.1 reply."""
    head, _, body = reply.partition(b"\r\n\r\n")
    status, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return status.encode(), {name.lower(): value for name, value in headers.items()}, body


def the_line_of(lines: list[dict[str, Any]], request_id: str) -> dict[str, Any]:
    """The one request line naming ``request_id``; fails when there are none or several."""
    matching = [line for line in lines if line["requestId"] == request_id]
    assert len(matching) == 1, lines
    return matching[0]


@pytest.fixture
def gen(make_gen: Callable[..., ImageGen]) -> ImageGen:
    return make_gen()


def test_a_malformed_request_is_answered_400_with_an_id_and_one_log_line(gen: ImageGen) -> None:
    """A request line h11 cannot parse: uvicorn's 400 (in the API's error shape) names an id, logged once."""
    with served(gen) as (base, lines):
        reply = raw_exchange(base, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n")
        status, headers, body = answer(reply)
        assert status == b"HTTP/1.1 400 Bad Request", reply[:300]
        assert json.loads(body) == {"error": "invalid HTTP request", "field": None}
        request_id = headers.get("x-request-id", "")
        assert _ID.fullmatch(request_id), headers
        line = the_line_of(lines(), request_id)
    assert (line["status"], line["level"], line["outcome"]) == (400, "INFO", "refused")
    assert (line["method"], line["path"], line["client"]) == (None, None, "127.0.0.1")  # no request was parsed
    assert line["elapsedMs"] >= 0


def test_a_body_uvicorn_refuses_while_the_app_runs_has_one_line_under_the_answers_id(gen: ImageGen) -> None:
    """A bad chunk size: the app is already running for the request when uvicorn answers 400. The answer carries
    the app's id and the app's line (the only one for that id) says 400, what the client got."""
    with served(gen) as (base, lines):
        reply = raw_exchange(
            base,
            b"POST /admin/circuit-breaker HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
        )
        status, headers, _ = answer(reply)
        request_id = headers.get("x-request-id", "")
        assert status == b"HTTP/1.1 400 Bad Request" and _ID.fullmatch(request_id), reply[:300]
    logged = lines()  # the app's line is written when it ends: by the server's stop at the latest
    line = the_line_of(logged, request_id)
    assert (line["status"], line["method"], line["path"]) == (400, "POST", "/admin/circuit-breaker")
    assert len(logged) == 1, logged


def test_headers_that_stall_are_answered_408_with_an_id_and_one_log_line(
    gen: ImageGen, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that sends part of its headers and stops: the 408 of the header deadline names an id, logged
    once (the app never saw the request, so no other line exists for it)."""
    monkeypatch.setattr(http11, "HEADER_TIMEOUT_S", 0.5)
    with served(gen) as (base, lines):
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(b"GET /health/live?token=secret HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad")
            reply = b""
            while chunk := conn.recv(65536):
                reply += chunk
        status, headers, body = answer(reply)
        assert status == b"HTTP/1.1 408 Request Timeout", reply[:300]
        assert json.loads(body)["field"] == "headers"
        request_id = headers.get("x-request-id", "")
        assert _ID.fullmatch(request_id), headers
        logged = lines()
    line = the_line_of(logged, request_id)
    assert (line["status"], line["level"], line["outcome"]) == (408, "INFO", "refused")
    assert (line["method"], line["path"]) == ("GET", "/health/live")  # never the query string
    assert line["elapsedMs"] >= 400
    assert len(logged) == 1, logged
