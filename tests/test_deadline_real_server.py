"""Against a real HTTP server on 127.0.0.1 emulating Replicate: a hang, a slow-drip body and a connection
reset each still get an answer (the default image) by the deadline + 50 ms, measured in real time."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from imagegen_core import ImageGen
from tests.realserver import ScriptedServer, drip, hang, reset, send_json

DEADLINE_MS = 1500
CONFIG = {
    "providers": {
        "replicate": {"enabled": True, "timeout": 10_000, "retries": 2, "priority": 1},
        "fal": {"enabled": False},
        "unsplash": {"enabled": False},
    },
    "defaults": {"timeout": DEADLINE_MS},
    "race": {"finalizeReserve": 300, "backoffInitial": 50},
}


def prediction(base_url: str, status: str = "succeeded", output: Any = None) -> dict[str, Any]:
    pid = "q1w2e3r4t5y6u7i8o9p0asdfgh"
    return {
        "id": pid,
        "status": status,
        "output": output,
        "error": None,
        "urls": {"get": f"{base_url}/v1/predictions/{pid}", "cancel": f"{base_url}/v1/predictions/{pid}/cancel"},
    }


async def answer_in_time(settings_factory: Any, server: ScriptedServer) -> Any:
    settings = settings_factory(REPLICATE_API_TOKEN="r8_test", provider_base_urls={"replicate": server.base_url})
    gen = ImageGen.from_settings(settings)
    gen.set_config(CONFIG, source="test")
    try:
        started = time.perf_counter()
        result = await gen.generate({"prompt": "a lighthouse", "width": 320, "height": 200})
        elapsed_ms = (time.perf_counter() - started) * 1000
    finally:
        await gen.aclose()
    assert elapsed_ms <= DEADLINE_MS + 50, f"answered after {elapsed_ms:.0f} ms"
    assert not result.success and result.provider == "default"
    return result


async def test_a_hanging_provider_still_gets_an_answer_by_the_deadline(settings_factory: Any) -> None:
    async def handler(method: str, path: str, writer: asyncio.StreamWriter) -> None:
        await hang(writer)

    with ScriptedServer(handler) as server:
        result = await answer_in_time(settings_factory, server)
    assert "deadline" in (result.error or "") or "timeout" in (result.error or "").lower()


async def test_a_slow_drip_prediction_body_still_gets_an_answer_by_the_deadline(settings_factory: Any) -> None:
    async def handler(method: str, path: str, writer: asyncio.StreamWriter) -> None:
        await drip(writer, content_type="application/json")

    with ScriptedServer(handler) as server:
        await answer_in_time(settings_factory, server)


async def test_a_slow_drip_image_download_still_gets_an_answer_by_the_deadline(settings_factory: Any) -> None:
    async def handler(method: str, path: str, writer: asyncio.StreamWriter) -> None:
        if path.startswith("/v1/models/"):
            base = f"http://127.0.0.1:{writer.get_extra_info('sockname')[1]}"
            await send_json(writer, 201, prediction(base, output=[f"{base}/files/out-0.webp"]))
        else:
            await drip(writer, content_type="image/webp")

    with ScriptedServer(handler) as server:
        await answer_in_time(settings_factory, server)
        assert ("GET", "/files/out-0.webp") in server.requests


async def test_a_connection_reset_is_retried_then_answered_by_the_deadline(settings_factory: Any) -> None:
    async def handler(method: str, path: str, writer: asyncio.StreamWriter) -> None:
        reset(writer)

    with ScriptedServer(handler) as server:
        result = await answer_in_time(settings_factory, server)
        assert len([r for r in server.requests if r[0] == "POST"]) == 3  # first try + 2 retries
    assert all(a.failure_class == "transient" for a in result.attempts)


@pytest.mark.parametrize("status", [410, 404])
async def test_an_expired_output_url_fails_the_attempt_not_the_request_deadline(
    settings_factory: Any, status: int
) -> None:
    async def handler(method: str, path: str, writer: asyncio.StreamWriter) -> None:
        base = f"http://127.0.0.1:{writer.get_extra_info('sockname')[1]}"
        if path.startswith("/v1/models/"):
            await send_json(writer, 201, prediction(base, output=[f"{base}/files/out-0.webp"]))
        else:
            await send_json(writer, status, {"detail": "gone"})

    with ScriptedServer(handler) as server:
        result = await answer_in_time(settings_factory, server)
    assert result.attempts[0].http_status == status
