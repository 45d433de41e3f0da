"""Answers that are not HTTP, from a real server on 127.0.0.1 through the real (aiohttp-backed) client: an API
call and an image download each fail as a transient ProviderError whose one line says what was wrong, never the
raw bytes received, the URL, or a status no server sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from imagegen_core.errors import FailureClass, ProviderError
from imagegen_core.images import fetch_image
from imagegen_core.providers.base import DownloadPolicy, send
from imagegen_core.service import make_http_client
from tests.realserver import ScriptedServer

MALFORMED = {
    "bad status line": (b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\n{}", "Bad status line"),
    "not HTTP at all": (b"<html>secret-ish page</html>\r\n\r\n", "Bad status line"),
    "a header too long": (
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 20_000 + b"\r\nContent-Length: 2\r\n\r\n{}",
        "Got more than 8190 bytes when reading",
    ),
    "a bad chunk size": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "Invalid character in chunk size",
    ),
}


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    real = make_http_client()
    try:
        yield real
    finally:
        await real.aclose()


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_an_answer_that_is_not_http_is_a_one_line_transient_failure(client: httpx.AsyncClient, case: str) -> None:
    """QA: these escaped as aiohttp's ClientResponseError, whose text (in the answer, the log and the server's
    log) held the raw bytes over several lines, a "400" that no server sent, and the whole URL."""
    raw, reason = MALFORMED[case]

    async def handler(method: str, path: str, writer: asyncio.StreamWriter) -> None:
        writer.write(raw)
        await writer.drain()
        writer.close()

    with ScriptedServer(handler) as server:
        with pytest.raises(ProviderError) as api_call:
            await send("replicate", client, "POST", f"{server.base_url}/v1/predictions", json={})
        policy = DownloadPolicy(hosts=(), test_origin=server.base_url)
        with pytest.raises(ProviderError) as download:
            await fetch_image(client, f"{server.base_url}/out.png", policy=policy, provider="replicate", max_bytes=1000)
    for error in (api_call.value, download.value):
        assert str(error) == f"replicate: malformed HTTP answer ({reason})"
        assert (error.failure_class, error.http_status) == (FailureClass.TRANSIENT, None)
