"""Fixtures for the HTTP API: an injected ImageGen with an in-process client (``httpx.ASGITransport``), and a
real uvicorn server on a free 127.0.0.1 port, run in a thread and stopped cleanly."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from imagegen_core.api import create_app
from imagegen_core.config import DEFAULT_DOCUMENT
from imagegen_core.service import ImageGen
from imagegen_core.settings import Settings

ADMIN_TOKEN = "admin-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
OFF = {"enabled": False}
#: Every networked provider of the defaults switched off (the offline one is off by default).
NETWORKED_OFF = {name: OFF for name in DEFAULT_DOCUMENT["providers"] if name != "offline"}


def fakes(**entries: dict[str, Any]) -> dict[str, Any]:
    """A config document racing only the given fake providers (options per name), in the given order."""
    providers: dict[str, Any] = dict(NETWORKED_OFF)
    for priority, (name, options) in enumerate(entries.items(), start=1):
        providers[name] = {"type": "fake", "priority": priority, "timeout": 5000, "retries": 0, "options": options}
    return {"providers": providers}


@asynccontextmanager
async def api_client(
    gen: ImageGen, *, client_ip: str = "127.0.0.1", **app_kwargs: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client for ``create_app(gen)``; the ImageGen stays the caller's to close."""
    app = create_app(gen, **app_kwargs)
    transport = httpx.ASGITransport(app=app, client=(client_ip, 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.fixture
async def make_gen(settings_factory: Callable[..., Settings]) -> AsyncIterator[Callable[..., ImageGen]]:
    """Build ImageGens (settings by env name, an optional config document). All are closed at teardown, on
    the test's loop, so their HTTP clients close with them."""
    made: list[ImageGen] = []

    def make(document: dict[str, Any] | None = None, *, admin: bool = True, **env: Any) -> ImageGen:
        if admin:
            env.setdefault("IMAGEGEN_ADMIN_TOKEN", ADMIN_TOKEN)
        store, spool = env.pop("store", None), env.pop("spool", None)
        gen = ImageGen.from_settings(settings_factory(**env), source="api", store=store, spool=spool)
        if document is not None:
            gen.set_config(document, source="test")
        made.append(gen)
        return gen

    yield make
    for gen in made:
        await gen.aclose()


@contextmanager
def live_server(app: FastAPI, *, http: Any = "auto") -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free 127.0.0.1 port in a thread (lifespan on); yields the base URL and
    stops the server (graceful shutdown, lifespan end) on exit. ``http``: uvicorn's protocol (``imagegen serve``
    passes ``api.http11.http_protocol()``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", http=http))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:  # readiness, not timing: uvicorn flips this once it listens
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"
