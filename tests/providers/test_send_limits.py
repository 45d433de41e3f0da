"""What :func:`~imagegen_core.providers.base.send` reads of an API's answer, against a real server on 127.0.0.1:
an answer of any size must not be held in memory whole (the image download has its own cap, the API calls too)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from imagegen_core.errors import FailureClass, ProviderError
from imagegen_core.providers import base
from imagegen_core.providers.base import send
from tests.realserver import ScriptedServer

TOTAL = 50_000_000  # what the server would send: far more than any cap below
CHUNK = b"x" * 65536


def _streaming(status: int, sent: list[int]) -> ScriptedServer:
    """A server answering every request with ``status`` and a body of TOTAL bytes without a Content-Length, one
    chunk at a time (so it is never held whole); ``sent`` gets the running count handed to the socket."""

    async def handler(method: str, path: str, writer: asyncio.StreamWriter) -> None:
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n".encode())
        writer.write(b'{"detail": "')
        sent.append(0)
        while sent[-1] < TOTAL:
            writer.write(CHUNK)
            await writer.drain()  # raises once the client has hung up
            sent[-1] += len(CHUNK)
        writer.close()

    return ScriptedServer(handler)


@pytest.fixture
def small_cap(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """The answer cap lowered to 1 MiB, so the test moves little data."""
    monkeypatch.setattr(base, "MAX_ANSWER_BYTES", 1 << 20)
    yield 1 << 20


async def test_an_answer_larger_than_the_cap_is_refused_without_reading_it_all(small_cap: int) -> None:
    """A 200 whose body never ends (a broken proxy, a hostile server) fails as TRANSIENT once it passes the cap,
    instead of being read into memory until the attempt's time runs out."""
    error, sent = await send_to_endless_answer(200)
    assert error.failure_class is FailureClass.TRANSIENT and error.http_status == 200
    assert str(error) == f"p: answer larger than {small_cap} bytes (HTTP 200)"
    assert sent and sent[-1] < TOTAL // 4


async def test_a_huge_error_body_is_classified_from_its_beginning(small_cap: int) -> None:
    """An error answer is classified by status and the start of its body: the rest is never read."""
    error, sent = await send_to_endless_answer(503)
    assert error.failure_class is FailureClass.TRANSIENT and error.http_status == 503
    assert len(str(error)) < 400
    assert sent and sent[-1] < TOTAL // 4


async def send_to_endless_answer(status: int) -> tuple[ProviderError, list[int]]:
    """:func:`send` a GET to a real server streaming a huge body with ``status``: the error it raised, and the
    byte counts the server had sent as it went."""
    sent: list[int] = []
    with _streaming(status, sent) as server:
        async with httpx.AsyncClient() as client:
            with pytest.raises(ProviderError) as err:
                await asyncio.wait_for(send("p", client, "GET", f"{server.base_url}/x"), 10)
    return err.value, sent
