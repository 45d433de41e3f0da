"""A fake OpenAI-style image server for the benchmarks, in its own process on 127.0.0.1.

One ``aiohttp.web`` process serves several fake providers on one port, each under its own path prefix:
``POST /<name>/v1/images/generations`` answers like OpenAI's Images API (``data[0].b64_json`` holding a
64x64 PNG) after that provider's latency, or with an HTTP error. A provider's base URL for imagegen is
``{base_url}/<name>``; for the OpenAI SDK (LiteLLM) it is ``{base_url}/<name>/v1``.

Latency models (``Behaviour``): a fixed delay, or a lognormal (median, sigma) with a share of stragglers
that take a fixed long time instead. Each provider draws from its own seeded generator, so runs repeat.

``GET /_stats`` returns ``{name: calls}``: how many generation requests each provider received (counted
on arrival, so a request the client cancelled while it waited counts too). The benchmarks compare these
counts with the calls they believe they made, so a hidden retry or hedge shows up.

This module imports only the standard library at the top: the LiteLLM side of ``vs_litellm.py`` runs in
another venv and imports :func:`small_png_b64` and the path helpers from here. The server itself needs
``aiohttp`` (both venvs have it); the PNG is written with ``zlib``, so Pillow is not needed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import random
import struct
import time
import urllib.request
import zlib
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

from _serverproc import HOST, ServerProcess, bind_loopback, serve_until_stopped

STATS_PATH = "/_stats"
IMAGE_SIZE = 64
GENERATIONS = "/v1/images/generations"


class ServerError(Exception):
    """The fake server did not start, misbehaved or did not shut down cleanly."""


@dataclass(frozen=True)
class Behaviour:
    """How one fake provider answers.

    ``median_ms`` with ``sigma == 0`` is a fixed delay; with ``sigma > 0`` the delay is lognormal with that
    median. A share ``straggler_p`` of calls takes ``straggler_ms`` instead. ``status`` other than 200
    answers with that HTTP status and an OpenAI-style error body (after the delay).
    """

    median_ms: float = 0.0
    sigma: float = 0.0
    straggler_p: float = 0.0
    straggler_ms: float = 0.0
    status: int = 200
    seed: int = 1

    def draw_s(self, rng: random.Random) -> float:
        """One delay in seconds."""
        if self.straggler_p > 0 and rng.random() < self.straggler_p:
            return self.straggler_ms / 1000
        if self.sigma > 0 and self.median_ms > 0:
            return self.median_ms * math.exp(rng.gauss(0.0, self.sigma)) / 1000
        return self.median_ms / 1000


def small_png(size: int = IMAGE_SIZE) -> bytes:
    """A ``size`` x ``size`` RGB PNG (a gradient, so it is not trivially compressible), made with zlib."""
    rows = b"".join(
        b"\x00" + bytes(c for x in range(size) for c in (x * 4 % 256, y * 4 % 256, 128)) for y in range(size)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 6)) + chunk(b"IEND", b"")


def small_png_b64() -> str:
    """The image the server sends, base64-encoded as in ``data[0].b64_json``."""
    return base64.b64encode(small_png()).decode("ascii")


# --------------------------------------------------------------------------------------------------
# The server process


def _server_main(conn: Connection, behaviours: dict[str, dict[str, Any]]) -> None:
    """Entry point of the server process: report the port through ``conn``, serve until SIGTERM."""
    asyncio.run(_serve(conn, {name: Behaviour(**b) for name, b in behaviours.items()}))


async def _serve(conn: Connection, behaviours: dict[str, Behaviour]) -> None:
    from aiohttp import web

    # The answer body is the same for every success: built once, so the server's CPU per call stays small.
    ok_body = json.dumps(
        {
            "created": int(time.time()),
            "data": [{"b64_json": small_png_b64(), "revised_prompt": None}],
            "usage": {"input_tokens": 10, "output_tokens": 100, "total_tokens": 110},
        }
    ).encode()
    rngs = {name: random.Random(b.seed) for name, b in behaviours.items()}
    counts = dict.fromkeys(behaviours, 0)

    async def generate(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        behaviour = behaviours.get(name)
        if behaviour is None:
            return web.json_response({"error": {"message": f"no fake provider {name!r}"}}, status=404)
        counts[name] += 1
        await request.json()  # parsed, as the real endpoint would
        delay = behaviour.draw_s(rngs[name])
        if delay > 0:
            await asyncio.sleep(delay)  # the "inference" time
        if behaviour.status != 200:
            error = {"error": {"message": "fake upstream failure", "type": "server_error", "code": None}}
            return web.json_response(error, status=behaviour.status)
        return web.Response(body=ok_body, content_type="application/json")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(counts)

    sock, _port = bind_loopback()
    app = web.Application()
    app.router.add_post("/{name}" + GENERATIONS, generate)
    app.router.add_get(STATS_PATH, stats)
    await serve_until_stopped(conn, sock, app)


class FakeImageServer:
    """The fake server process, as a context manager: ``base_url``, :meth:`url`, :meth:`stats`."""

    def __init__(self, behaviours: dict[str, Behaviour]) -> None:
        self.behaviours = behaviours
        self.base_url = ""
        payload = {name: asdict(b) for name, b in behaviours.items()}
        self._server = ServerProcess(_server_main, (payload,), name="fake image server", error=ServerError)

    def __enter__(self) -> FakeImageServer:
        self.base_url = f"http://{HOST}:{self._server.start()}"
        return self

    def url(self, name: str) -> str:
        """Provider ``name``'s base URL in imagegen's sense (it appends ``/v1/images/generations``)."""
        return provider_url(self.base_url, name)

    def stats(self) -> dict[str, int]:
        """Generation requests received so far, per provider."""
        return fetch_stats(self.base_url)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        exitcode = self._server.stop()
        if exc is None and exitcode != 0:
            raise ServerError(f"fake image server did not shut down cleanly: exit code {exitcode}")


def provider_url(base_url: str, name: str) -> str:
    """Provider ``name``'s base URL without ``/v1`` (imagegen's ``provider_base_urls``)."""
    return f"{base_url}/{name}"


def fetch_stats(base_url: str) -> dict[str, int]:
    """``GET /_stats`` with the standard library (usable from either venv, outside timed regions)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    with opener.open(base_url + STATS_PATH, timeout=10) as response:
        data: dict[str, int] = json.loads(response.read())
    return data
