"""What does the HTTP API sustain, and what does a generate cost next to a trivial route of the same app?

The API runs as ``imagegen serve`` would (uvicorn, the app building its ImageGen in the lifespan, JSON request
logs at INFO, written to /dev/null so the terminal stays readable) in a separate process on a free port on
127.0.0.1, so its CPU is not charged to the client. The upstream is the ``fake`` provider with a fixed
``latencyMs`` (50 ms by default): each generate waits for it, then verifies the 64x64 PNG, normalises it
to WebP, stores it in the local store and logs the request and its attempt in SQLite, as in production.

Measured at ``--concurrency`` requests in flight, ``--requests`` in all, after one untimed round at full
width: ``POST /images/generate``, and ``GET /health/live`` (no I/O) and ``GET /health`` (a SQLite read and a
store check) in the same run, against the same server. Printed as Markdown: requests/s, p50 and p99
(nearest rank), and the generate/trivial ratios.

The server runs on ``imagegen serve``'s event loop (uvloop, from the ``api`` extra), then again on asyncio's own
loop as the baseline, and the two are compared per route (``--loops uvloop`` for one).

Run from the project root: ``.venv/bin/python bench/api_throughput.py`` (``--quick`` for a smoke run).
Exits non-zero if any call fails (a generate with ``success: false`` included) or the server does not stop
cleanly. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import multiprocessing
import platform
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
from _home import temporary_home
from _measure import Op, pct, timed_concurrent

HOST = "127.0.0.1"
PROMPT = "a lighthouse at dusk"
GENERATE_BODY = {"prompt": PROMPT, "width": 64, "height": 64}


class BenchError(Exception):
    """A failed call or a misbehaving server: the figures would be meaningless."""


# --------------------------------------------------------------------------------------------------
# The API server (its own process)


def _config(upstream_ms: float) -> dict[str, Any]:
    """Only the fake upstream races: every built-in provider off, no retries, so a failure surfaces."""
    from imagegen_core.config import DEFAULT_DOCUMENT

    providers: dict[str, Any] = {name: {"enabled": False} for name in DEFAULT_DOCUMENT["providers"]}
    providers["upstream"] = {
        "type": "fake",
        "priority": 1,
        "timeout": 10_000,
        "retries": 0,
        "options": {"latencyMs": upstream_ms},
    }
    return {"providers": providers}


def _server_main(conn: Connection, home: str, upstream_ms: float, loop: str) -> None:
    """Entry point of the server process: report the port through ``conn``, serve until SIGTERM."""
    import logging
    import os

    import uvicorn

    from imagegen_core import ImageGen, Settings
    from imagegen_core.api import create_app
    from imagegen_core.api.jsonlog import json_handler

    settings = Settings(_env_file=None, IMAGEGEN_HOME=home)
    with ImageGen.from_settings(settings) as gen:
        gen.set_config(_config(upstream_ms), source="bench")
    # As `imagegen serve` logs (one JSON line per request at INFO), but into /dev/null.
    root = logging.getLogger()
    root.addHandler(json_handler(settings.secret_values(), open(os.devnull, "w")))  # noqa: SIM115
    root.setLevel(logging.INFO)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))
    config = uvicorn.Config(
        create_app(settings=settings), loop=loop, log_config=None, access_log=False, backlog=2048, server_header=False
    )
    server = uvicorn.Server(config)
    conn.send(sock.getsockname()[1])
    conn.close()
    server.run(sockets=[sock])  # uvicorn handles SIGTERM: graceful shutdown, lifespan end


class ApiServer:
    """The API server process, as a context manager."""

    def __init__(self, home: Path, upstream_ms: float, loop: str) -> None:
        self.home = home
        self.upstream_ms = upstream_ms
        self.loop = loop
        self.base_url = ""
        self._ctx = multiprocessing.get_context("spawn")  # a clean child: no inherited threads or loop
        self._proc: Any = None

    def __enter__(self) -> ApiServer:
        receiver, sender = self._ctx.Pipe(duplex=False)
        self._proc = self._ctx.Process(
            target=_server_main,
            args=(sender, str(self.home), self.upstream_ms, self.loop),
            name="imagegen-api",
            daemon=True,
        )
        self._proc.start()
        sender.close()
        if not receiver.poll(60):
            self._stop()
            raise BenchError("the API server did not start")
        try:
            port = receiver.recv()
        except EOFError:
            self._stop()
            raise BenchError("the API server exited during start-up") from None
        finally:
            receiver.close()
        self.base_url = f"http://{HOST}:{port}"
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base_url + "/health/live", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        self._stop()
        raise BenchError("the API server did not answer /health/live")

    def _stop(self) -> int | None:
        self._proc.terminate()  # SIGTERM: uvicorn shuts down gracefully
        self._proc.join(30)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
            return None
        exitcode: int | None = self._proc.exitcode
        return exitcode

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        exitcode = self._stop()
        # uvicorn re-raises the SIGTERM it handled once shutdown is complete: -15 is its clean exit.
        if exc is None and exitcode not in (0, -signal.SIGTERM):
            raise BenchError(f"the API server did not shut down cleanly: exit code {exitcode}")


# --------------------------------------------------------------------------------------------------
# Measurement


def make_client() -> httpx.AsyncClient:
    """An httpx client on aiohttp's transport: httpx's default pool degrades at 50 in flight
    (encode/httpx#3215, see race_overhead.py), which would measure the client instead of the server."""
    from httpx_aiohttp import AiohttpTransport

    transport = AiohttpTransport(limits=httpx.Limits(max_connections=200, max_keepalive_connections=200))
    return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(60.0))


def generate_op(client: httpx.AsyncClient, base_url: str) -> Op:
    async def op() -> None:
        response = await client.post(base_url + "/images/generate", json=GENERATE_BODY)
        body = response.json()
        if response.status_code != 200 or body.get("success") is not True or body.get("provider") != "upstream":
            raise BenchError(f"generate failed: {response.status_code} {str(body)[:200]}")

    return op


def get_op(client: httpx.AsyncClient, url: str) -> Op:
    async def op() -> None:
        response = await client.get(url)
        if response.status_code != 200:
            raise BenchError(f"GET {url}: {response.status_code} {response.text[:200]}")

    return op


@dataclass(frozen=True)
class Sample:
    """Per-request latencies (ms) and the wall time of one measured run."""

    latencies_ms: list[float]
    elapsed_s: float

    def pct(self, p: float) -> float:
        """Nearest-rank percentile of the latencies (an observed value)."""
        return pct(self.latencies_ms, p)

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.elapsed_s


async def measure(op: Op, total: int, concurrency: int) -> Sample:
    """``total`` calls with at most ``concurrency`` in flight, after one untimed round at full width."""
    await asyncio.gather(*(op() for _ in range(concurrency)))
    t0 = time.perf_counter()
    latencies = await timed_concurrent(op, total, concurrency)
    return Sample(latencies, time.perf_counter() - t0)


async def run_all(base_url: str, total: int, concurrency: int) -> dict[str, Sample]:
    """Each route on a fresh client, one after another, against the same server."""
    results: dict[str, Sample] = {}
    routes: list[tuple[str, Callable[[httpx.AsyncClient], Op]]] = [
        ("GET /health/live", lambda c: get_op(c, base_url + "/health/live")),
        ("GET /health", lambda c: get_op(c, base_url + "/health")),
        ("POST /images/generate", lambda c: generate_op(c, base_url)),
    ]
    for name, make_op in routes:
        print(f"  {name:<22} ...", end="", flush=True, file=sys.stderr)
        async with make_client() as client:
            sample = await measure(make_op(client), total, concurrency)
        results[name] = sample
        print(f" {sample.rps:.0f} req/s, p50 {sample.pct(50):.1f} ms", file=sys.stderr)
    return results


def report(results: dict[str, Sample], total: int, concurrency: int, upstream_ms: float, loop: str) -> str:
    lines = [
        f"#### Through the API on {loop} ({concurrency} concurrent, fake upstream {upstream_ms:g} ms,"
        f" {total} requests per route)",
        "",
        "| route | req/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|",
    ]
    for name, s in results.items():
        lines.append(f"| `{name}` | {s.rps:.0f} | {s.pct(50):.1f} | {s.pct(99):.1f} |")
    gen = results["POST /images/generate"]
    lines += ["", "| ratio | req/s | p50 | p99 |", "|---|---:|---:|---:|"]
    for name in ("GET /health/live", "GET /health"):
        base = results[name]
        lines.append(
            f"| generate / `{name.split()[1]}` | {gen.rps / base.rps:.2f}x | {gen.pct(50) / base.pct(50):.1f}x"
            f" | {gen.pct(99) / base.pct(99):.1f}x |"
        )
    floor_rps = concurrency / (upstream_ms / 1000)
    lines += [
        "",
        f"(ms; the upstream alone caps generate at {concurrency} / {upstream_ms:g} ms = {floor_rps:.0f} req/s;"
        f" generate reached {gen.rps / floor_rps * 100:.0f}% of that, with p50 {gen.pct(50) - upstream_ms:+.1f} ms"
        " over the upstream's delay)",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 200 requests per route")
    parser.add_argument("--requests", type=int, default=1000, help="timed requests per route (default 1000)")
    parser.add_argument("--concurrency", type=int, default=50, help="requests in flight (default 50)")
    parser.add_argument("--upstream-ms", type=float, default=50.0, help="fake upstream latency (default 50)")
    parser.add_argument(
        "--loops",
        default=",".join(DEFAULT_LOOPS),
        help="the server's event loops, each measured in turn (default: imagegen serve's, then asyncio's)",
    )
    args = parser.parse_args()
    loops = [name.strip() for name in args.loops.split(",") if name.strip()]
    if not loops or set(loops) - {"asyncio", "uvloop"}:
        parser.error("--loops takes asyncio and/or uvloop, comma-separated")
    total = 200 if args.quick else args.requests
    print(
        f"{datetime.now(UTC):%Y-%m-%d}, Python {platform.python_version()}, {platform.system()} "
        f"{platform.release()}, {multiprocessing.cpu_count()} cores",
        file=sys.stderr,
    )
    by_loop: dict[str, dict[str, Sample]] = {}
    try:
        for loop in loops:
            print(f"server on {loop}:", file=sys.stderr)
            with (
                temporary_home("imagegen-bench-api-") as tmp,
                ApiServer(Path(tmp) / "home", args.upstream_ms, loop) as server,
            ):
                by_loop[loop] = asyncio.run(run_all(server.base_url, total, args.concurrency))
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    reports = [report(results, total, args.concurrency, args.upstream_ms, loop) for loop, results in by_loop.items()]
    print("\n\n".join(reports))
    if {"asyncio", "uvloop"} <= set(by_loop):
        print("\n" + loop_ratios(by_loop["uvloop"], by_loop["asyncio"]))
    return 0


#: imagegen serve's loop first (uvloop when installed), then asyncio's own as the baseline.
DEFAULT_LOOPS = ("uvloop", "asyncio") if importlib.util.find_spec("uvloop") else ("asyncio",)


def loop_ratios(uv: dict[str, Sample], plain: dict[str, Sample]) -> str:
    """uvloop against asyncio's own loop, per route (same run, same machine state)."""
    lines = ["| uvloop / asyncio | req/s | p50 | p99 |", "|---|---:|---:|---:|"]
    for name, fast in uv.items():
        base = plain[name]
        lines.append(
            f"| `{name}` | {fast.rps / base.rps:.2f}x | {fast.pct(50) / base.pct(50):.2f}x"
            f" | {fast.pct(99) / base.pct(99):.2f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
