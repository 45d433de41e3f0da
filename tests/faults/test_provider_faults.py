"""Provider faults against a real HTTP server on 127.0.0.1 standing in for Replicate (its API and its output
files): each request is answered by the deadline + 50 ms in real time, the right failure class is logged, the
breaker moves as specified, and no log row or paid-for image is lost."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from imagegen_core import ImageGen
from tests.realserver import ScriptedServer, drip, hang, reset, send_bytes, send_json, stream_body

from .harness import assert_row, judge, png_bytes, prediction, replicate_config, run_concurrently

DEADLINE_MS = 1500
Reply = Callable[[str, str, asyncio.StreamWriter, str], Awaitable[None]]


def output_at(serve: Reply) -> Reply:
    """A prediction that succeeds at once with an output URL on the test server, whose file ``serve`` answers."""

    async def reply(method: str, path: str, writer: asyncio.StreamWriter, base: str) -> None:
        if path.startswith("/v1/models/"):
            await send_json(writer, 201, prediction(base, output=f"{base}/files/out-0.png"))
        else:
            await serve(method, path, writer, base)

    return reply


async def _500(method: str, path: str, writer: asyncio.StreamWriter, base: str) -> None:
    await send_json(writer, 500, {"detail": "Internal server error"})


async def _hang(method: str, path: str, writer: asyncio.StreamWriter, base: str) -> None:
    await hang(writer)


async def _reset(method: str, path: str, writer: asyncio.StreamWriter, base: str) -> None:
    reset(writer)


async def _malformed(method: str, path: str, writer: asyncio.StreamWriter, base: str) -> None:
    await send_bytes(writer, 201, b'{"id": "abc", "status": "succ', content_type="application/json")


async def _html(method: str, path: str, writer: asyncio.StreamWriter, base: str) -> None:
    await send_bytes(writer, 200, b"<html><body>Sign in to continue</body></html>", content_type="image/png")


SENT: list[int] = []


async def _50mb(method: str, path: str, writer: asyncio.StreamWriter, base: str) -> None:
    await stream_body(writer, 50_000_000, content_type="image/png", sent=SENT)


async def _drip(method: str, path: str, writer: asyncio.StreamWriter, base: str) -> None:
    await drip(writer, content_type="image/png")


def _gone(status: int) -> Reply:
    async def reply(method: str, path: str, writer: asyncio.StreamWriter, base: str) -> None:
        await send_json(writer, status, {"detail": "the file has expired"})

    return reply


@dataclass(frozen=True)
class Case:
    fault: str
    reply: Reply
    expected_class: str
    breaker: str = "closed"
    retries: int = 0
    timeout_ms: int = 10_000
    requests: int = 1
    status: int | None = None


CASES = [
    # three 500s within one request reach minCalls at a 100 % failure ratio: the breaker opens, and the
    # second request is answered at once without calling Replicate
    Case("provider 500s", _500, "transient", "closed→open", retries=2, requests=2, status=500),
    Case("hang", _hang, "timeout", timeout_ms=800),
    Case("connection reset", _reset, "transient", "closed→open", retries=2, requests=2),
    Case("malformed JSON", _malformed, "transient", status=201),
    Case("200 whose body is not an image", output_at(_html), "transient"),
    Case("oversized body (50 MB, streamed)", output_at(_50mb), "invalid_request"),
    Case("slow-drip body", output_at(_drip), "timeout", timeout_ms=800),
    Case("expired output URL (404)", output_at(_gone(404)), "transient", status=404),
    Case("expired output URL (410)", output_at(_gone(410)), "transient", status=410),
]


def served(reply: Reply) -> ScriptedServer:
    async def handler(method: str, path: str, writer: asyncio.StreamWriter) -> None:
        await reply(method, path, writer, f"http://127.0.0.1:{writer.get_extra_info('sockname')[1]}")

    return ScriptedServer(handler)


async def run_case(settings_factory: Any, server: ScriptedServer, case: Case, *, deadline_ms: int) -> Any:
    settings = settings_factory(REPLICATE_API_TOKEN="r8_test", provider_base_urls={"replicate": server.base_url})
    config = replicate_config(deadline_ms=deadline_ms, timeout_ms=case.timeout_ms, retries=case.retries)
    async with ImageGen.from_settings(settings) as gen:
        gen.set_config(config, source="test")
        results, times = [], []
        for _ in range(case.requests):  # one after the other: the breaker sees the first one's failures
            batch, ms = await run_concurrently(gen, 1)
            results += batch
            times += ms
        row = await judge(gen, case.fault, results, times, deadline_ms=deadline_ms, expected_class=case.expected_class)
    return row, results


@pytest.mark.parametrize("case", CASES, ids=[c.fault for c in CASES])
async def test_a_provider_fault_is_answered_in_time_logged_and_loses_nothing(settings_factory: Any, case: Case) -> None:
    with served(case.reply) as server:
        row, results = await run_case(settings_factory, server, case, deadline_ms=DEADLINE_MS)
    assert_row(row, breaker=case.breaker)
    assert all(not r.success and r.provider == "default" for r in results)
    first = results[0].attempts
    assert len(first) == case.retries + 1 and all(a.failure_class == case.expected_class for a in first)
    if case.status is not None:
        assert first[0].http_status == case.status
    if case.breaker.endswith("open") and case.requests > 1:
        assert [a.outcome for a in results[1].attempts] == ["skipped"]  # not called while open
    if "50 MB" in case.fault:
        assert "larger than 25000000 bytes" in (first[0].error or "")
        assert SENT and SENT[-1] < 50_000_000  # the download stopped at the cap, long before the end


async def test_429_with_retry_after_is_honoured_then_succeeds(settings_factory: Any) -> None:
    """Retry-After: 1 fits the 3 s deadline: the retry waits at least 1 s, then gets the image."""
    posts: list[float] = []

    async def reply(method: str, path: str, writer: asyncio.StreamWriter, base: str) -> None:
        if path.startswith("/v1/models/"):
            posts.append(asyncio.get_running_loop().time())
            if len(posts) == 1:
                throttled = b'{"detail": "Request was throttled."}'
                await send_bytes(writer, 429, throttled, content_type="application/json", headers={"Retry-After": "1"})
                return
            await send_json(writer, 201, prediction(base, output=f"{base}/files/out-0.png"))
        else:
            await send_bytes(writer, 200, png_bytes(), content_type="image/png")

    case = Case("429 with Retry-After: 1", reply, "rate_limited", retries=1)
    with served(reply) as server:
        row, results = await run_case(settings_factory, server, case, deadline_ms=3000)
    assert_row(row, breaker="closed")
    (result,) = results
    assert result.success and result.provider == "replicate"
    assert [(a.outcome, a.failure_class) for a in result.attempts] == [("failed", "rate_limited"), ("success", None)]
    assert posts[1] - posts[0] >= 1.0  # the provider's Retry-After, not our 50 ms backoff


async def test_a_redirect_to_a_host_outside_the_allow_list_is_never_followed(settings_factory: Any) -> None:
    """The output URL redirects to another server on 127.0.0.1 (an internal service, from the provider's point
    of view): refused before any connection, though loopback is where the test provider itself lives."""

    async def canary_handler(method: str, path: str, writer: asyncio.StreamWriter) -> None:
        await send_json(writer, 200, {"secret": "internal"})

    with ScriptedServer(canary_handler) as canary:

        async def redirect(method: str, path: str, writer: asyncio.StreamWriter, base: str) -> None:
            location = {"Location": f"{canary.base_url}/latest/meta-data/"}
            await send_bytes(writer, 302, b"", content_type="text/plain", headers=location)

        case = Case("redirect to a non-allowed host", output_at(redirect), "transient")
        with served(case.reply) as server:
            row, results = await run_case(settings_factory, server, case, deadline_ms=DEADLINE_MS)
        assert canary.requests == []
    assert_row(row, breaker="closed")
    assert "output URL host not allowed: 127.0.0.1" in (results[0].attempts[0].error or "")
