"""What keeps a burst of requests inside the deadline: the app warms up before serving (HTTP client, image codecs,
log DB) instead of during its first requests, and generate's deadline counts from when a request reached the
API, not from when the busy event loop got round to it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from imagegen_core.api import create_app
from imagegen_core.service import ImageGen

from .conftest import api_client, fakes, live_server


def note_calls(monkeypatch: pytest.MonkeyPatch, gen: ImageGen, *methods: str) -> list[str]:
    """Wrap ``gen``'s async ``methods`` so that each call appends its name to the list returned."""
    order: list[str] = []

    def noting(name: str) -> Callable[..., Any]:
        real = getattr(gen, name)

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            order.append(name)
            return await real(*args, **kwargs)

        return wrapper

    for name in methods:
        monkeypatch.setattr(gen, name, noting(name))
    return order


def test_the_app_warms_up_before_it_accepts_requests(
    make_gen: Callable[..., ImageGen], monkeypatch: pytest.MonkeyPatch
) -> None:
    gen = make_gen(fakes(painter={"latencyMs": 1}))
    order = note_calls(monkeypatch, gen, "warm_up", "generate")
    with live_server(create_app(gen)) as base:
        assert order == ["warm_up"]  # done during start-up
        answer = httpx.post(f"{base}/images/generate", json={"prompt": "p", "width": 64, "height": 64}, timeout=30)
    assert answer.json()["success"] and order == ["warm_up", "generate"]


async def test_generate_gets_the_time_the_request_reached_the_api(
    make_gen: Callable[..., ImageGen], monkeypatch: pytest.MonkeyPatch
) -> None:
    gen = make_gen(fakes(painter={"latencyMs": 1}))
    seen: list[float | None] = []
    real_generate = gen.generate

    async def generate(*args: Any, received_at: float | None = None, **kwargs: Any) -> Any:
        seen.append(received_at)
        return await real_generate(*args, received_at=received_at, **kwargs)

    monkeypatch.setattr(gen, "generate", generate)
    async with api_client(gen) as client:
        before = asyncio.get_running_loop().time()
        await client.post("/images/generate", json={"prompt": "p", "width": 64, "height": 64})
    (received_at,) = seen
    assert received_at is not None and before <= received_at <= asyncio.get_running_loop().time()


@pytest.mark.looptime
async def test_the_deadline_counts_from_arrival(make_gen: Callable[..., ImageGen]) -> None:
    """A request that waited 1.2 s before generate saw it has only 0.8 s left of its 2 s deadline."""
    gen = make_gen(fakes(stuck={"hang": True}) | {"defaults": {"timeout": 2000}})
    loop = asyncio.get_running_loop()
    arrived = loop.time()
    await asyncio.sleep(1.2)  # parsing, queueing: the editor's clock was running
    result = await gen.generate({"prompt": "p", "width": 64, "height": 64}, received_at=arrived)
    assert not result.success and loop.time() - arrived <= 2.0
    assert result.elapsed_ms >= 1200  # reported from arrival too


@pytest.mark.parametrize("freeze_gc", [True, False])
def test_with_freeze_gc_the_collector_is_frozen_once_after_the_warm_up(
    make_gen: Callable[..., ImageGen], monkeypatch: pytest.MonkeyPatch, freeze_gc: bool
) -> None:
    """What ``imagegen serve`` asks for (``bench/gc_pauses.py``: full collections then skip the start-up objects);
    an app embedded in someone else's process leaves their collector alone."""
    import gc

    gen = make_gen(fakes(painter={"latencyMs": 1}))
    order = note_calls(monkeypatch, gen, "warm_up")
    monkeypatch.setattr(gc, "freeze", lambda: order.append("freeze"))  # the test runner's collector stays as it is
    with live_server(create_app(gen, freeze_gc=freeze_gc)) as base:
        answer = httpx.post(f"{base}/images/generate", json={"prompt": "p", "width": 64, "height": 64}, timeout=30)
    assert answer.json()["success"]
    assert order == (["warm_up", "freeze"] if freeze_gc else ["warm_up"])


def test_the_serve_worker_factory_freezes_the_collector(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    import gc

    from imagegen_core.cli_serve import worker_app

    monkeypatch.setenv("IMAGEGEN_HOME", str(tmp_path))
    frozen: list[bool] = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)  # the worker sets up serve's JSON logging: give pytest its own back
    try:
        with live_server(worker_app()) as base:
            assert httpx.get(f"{base}/health/live", timeout=30).status_code == 200
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert frozen == [True]
