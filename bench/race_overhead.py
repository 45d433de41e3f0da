"""What does ``ImageGen.generate`` cost on top of the HTTP calls it makes, and which HTTP transport should
``make_http_client`` use?

A fake fal server (its sync endpoint plus the output file) runs in a separate process on 127.0.0.1, so
its CPU time is not charged to the client. One provider call through imagegen is one ``POST`` to the app
and one ``GET`` of the image, so the baseline ("raw") makes exactly those two calls with a plain client;
the candidate ("imagegen") is ``ImageGen.generate`` with only ``fal`` enabled (sync mode, base URL
overridden to the fake server), a local store and the SQLite log in a temporary ``IMAGEGEN_HOME``, as in
production. Both run on httpx's default transport and on ``httpx_aiohttp.AiohttpTransport``.

Figures printed (Markdown tables, ready to paste into bench/README.md):

1. sequential latency (upstream 0 ms): p50/p99 of raw and imagegen, overhead (imagegen - raw) and ratio;
2. concurrent load (upstream ``--upstream-ms``, ``--concurrency`` in flight, ``--requests`` in all):
   requests/s, p50, p99 and client CPU per request, and the imagegen/raw and aiohttp/httpx ratios;
3. ``import imagegen_core`` and ``import imagegen_core.service`` in a fresh interpreter.

Run from the project root: ``.venv/bin/python bench/race_overhead.py`` (``--quick`` for a smoke run).
Exits non-zero if any call fails (a ``generate`` with ``success=False`` included) or the server's request
counts do not match the calls made.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx
from _home import file_create_us, home_parent, temporary_home
from _measure import Op, pct, timed_concurrent, timed_sequential
from _serverproc import HOST, ServerProcess, bind_loopback, serve_until_stopped

if TYPE_CHECKING:
    from imagegen_core import ImageGen

#: fal's sync endpoint for the default app is ``POST {base}/{app_id}``.
APP_PATH = "/fal-ai/flux/schnell"
IMAGE_PATH = "/files/img.png"
STATS_PATH = "/_stats"
IMAGE_SIZE = 64
PROMPT = "a lighthouse at dusk"
DUMMY_KEY = "bench-dummy-fal-key"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TRANSPORTS = ("httpx", "aiohttp")
PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: Only fal races, in sync mode (one POST, then the image GET), with no retries so that a failure
#: surfaces instead of being absorbed. ``offline`` is off already; listed so that intent is explicit.
CONFIG_DOCUMENT: dict[str, Any] = {
    "providers": {
        "replicate": {"enabled": False},
        "unsplash": {"enabled": False},
        "offline": {"enabled": False},
        "fal": {"enabled": True, "priority": 1, "timeout": 15_000, "retries": 0, "options": {"mode": "sync"}},
    }
}


class BenchError(Exception):
    """A failed call, a failed generate or a misbehaving fake server: the figures would be meaningless."""


# --------------------------------------------------------------------------------------------------
# The fake fal server (runs in its own process)


def _small_png() -> bytes:
    """The output image, made once: a 64x64 PNG (a gradient, so it is not trivially compressible)."""
    import io

    from PIL import Image

    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE))
    img.putdata([(x * 4, y * 4, 128) for y in range(IMAGE_SIZE) for x in range(IMAGE_SIZE)])
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def _server_main(conn: Connection, delay_ms: float) -> None:
    """Entry point of the server process: report the port through ``conn``, serve until SIGTERM."""
    asyncio.run(_serve(conn, delay_ms / 1000))


async def _serve(conn: Connection, delay_s: float) -> None:
    from aiohttp import web

    png = _small_png()
    # Bind before building the handlers: the answer must name this server's origin for the image URL
    # (imagegen only downloads from the overridden base URL's origin).
    sock, port = bind_loopback()
    image_url = f"http://{HOST}:{port}{IMAGE_PATH}"
    counts = {"post": 0, "get": 0}

    async def run_app(request: web.Request) -> web.Response:
        body = await request.json()  # parsed, as the real endpoint would
        counts["post"] += 1
        if delay_s > 0:
            await asyncio.sleep(delay_s)  # the "inference" time
        answer = {
            "images": [{"url": image_url, "width": IMAGE_SIZE, "height": IMAGE_SIZE, "content_type": "image/png"}],
            "seed": 1,
            "has_nsfw_concepts": [False],
            "prompt": body.get("prompt", ""),
        }
        return web.json_response(answer, headers={"x-fal-request-id": f"bench-{counts['post']}"})

    async def image(request: web.Request) -> web.Response:
        counts["get"] += 1
        return web.Response(body=png, content_type="image/png")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(counts)

    app = web.Application()
    app.router.add_post(APP_PATH, run_app)
    app.router.add_get(IMAGE_PATH, image)
    app.router.add_get(STATS_PATH, stats)
    await serve_until_stopped(conn, sock, app)


class FakeFal:
    """The fake fal server process, as a context manager. ``calls`` counts the calls the benchmark made
    against it, each one POST plus one GET; :meth:`check_counts` compares them with the server's."""

    def __init__(self, delay_ms: float) -> None:
        self.delay_ms = delay_ms
        self.base_url = ""
        self.calls = 0
        self._server = ServerProcess(
            _server_main, (delay_ms,), name=f"fake fal server ({delay_ms:g} ms)", error=BenchError
        )

    def __enter__(self) -> FakeFal:
        self.base_url = f"http://{HOST}:{self._server.start()}"
        return self

    def check_counts(self) -> None:
        """Every call made exactly one POST and one GET (no retry, no hedge, nothing lost)."""
        counts = httpx.get(self.base_url + STATS_PATH, timeout=10).json()
        if counts != {"post": self.calls, "get": self.calls}:
            raise BenchError(f"server {self.base_url} saw {counts}, expected {self.calls} POSTs and GETs")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        exitcode = self._server.stop()
        if exc is None and exitcode != 0:
            raise BenchError(f"fake fal server ({self.delay_ms:g} ms) did not shut down cleanly: exit code {exitcode}")


# --------------------------------------------------------------------------------------------------
# Clients and the two ways of getting an image


def make_client(transport: str) -> httpx.AsyncClient:
    """The production client (``make_http_client``) or the same settings on httpx's default pool."""
    from imagegen_core.service import make_http_client

    if transport == "aiohttp":
        return make_http_client()
    # Mirrors make_http_client() without its transport; keep the two in step.
    return httpx.AsyncClient(
        timeout=httpx.Timeout(120.0, connect=10.0),
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        headers={"User-Agent": "imagegen/0.1"},
    )


def raw_op(client: httpx.AsyncClient, server: FakeFal) -> Op:
    """The baseline: the POST and the image GET that fal's sync mode makes, with nothing around them."""
    url = server.base_url + APP_PATH
    # The body and headers FalProvider sends, so both sides move the same bytes.
    body = {
        "image_size": {"width": IMAGE_SIZE, "height": IMAGE_SIZE},
        "num_images": 1,
        "num_inference_steps": 4,
        "enable_safety_checker": True,
        "output_format": "jpeg",
        "prompt": PROMPT,
    }
    headers = {"Authorization": f"Key {DUMMY_KEY}", "X-Fal-Request-Timeout": "15"}

    async def op() -> None:
        response = await client.post(url, json=body, headers=headers)
        response.raise_for_status()
        image = await client.get(response.json()["images"][0]["url"])
        image.raise_for_status()
        if not image.content.startswith(PNG_SIGNATURE):
            raise BenchError("raw call: the image is not a PNG")
        server.calls += 1

    return op


def imagegen_op(gen: ImageGen, server: FakeFal) -> Op:
    """The candidate: one ``generate`` (validate, race, download, WebP, store, log)."""
    request = {"prompt": PROMPT, "width": IMAGE_SIZE, "height": IMAGE_SIZE}

    async def op() -> None:
        result = await gen.generate(request)
        if not result.success or result.provider != "fal":
            raise BenchError(f"generate failed: provider={result.provider} error={result.error}")
        server.calls += 1

    return op


@asynccontextmanager
async def open_imagegen(server: FakeFal, client: httpx.AsyncClient, home: Path) -> AsyncIterator[ImageGen]:
    """An ImageGen racing only fal against ``server``, over ``client``, in a private home."""
    from imagegen_core import ImageGen, Settings

    settings = Settings(
        _env_file=None,  # never a stray .env from the working directory
        IMAGEGEN_HOME=str(home),
        IMAGEGEN_DATABASE_URL=None,
        IMAGEGEN_PUBLIC_BASE_URL=None,
        FAL_KEY=DUMMY_KEY,
        provider_base_urls={"fal": server.base_url},
    )
    gen = ImageGen.from_settings(settings, http_client=client)
    gen.set_config(CONFIG_DOCUMENT, source="bench")
    async with gen:  # closes the log; the client is ours and closed by the caller
        yield gen


# --------------------------------------------------------------------------------------------------
# Measurement


@dataclass(frozen=True)
class Sample:
    """Per-request latencies (ms), wall time and process CPU time (all threads) of one measured run."""

    latencies_ms: list[float]
    elapsed_s: float
    cpu_s: float
    #: CPU seconds by thread role (event loop, log writer, ...), where the OS tells (Linux).
    cpu_by_role: dict[str, float] | None = None

    def pct(self, p: float) -> float:
        """Nearest-rank percentile of the latencies (an observed value)."""
        return pct(self.latencies_ms, p)

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.elapsed_s

    @property
    def cpu_ms_per_request(self) -> float:
        return self.cpu_s * 1000 / len(self.latencies_ms)


async def measure_sequential(op: Op, n: int, warmup: int, settle: Callable[[], Awaitable[None]]) -> Sample:
    """``n`` calls one after another, after ``warmup`` untimed ones (connections, caches, lazy imports)."""
    for _ in range(warmup):
        await op()
    await settle()
    cpu0, t0 = time.process_time(), time.perf_counter()
    latencies = await timed_sequential(op, n)
    await settle()  # deferred work (queued log writes) is part of the cost
    return Sample(latencies, time.perf_counter() - t0, time.process_time() - cpu0)


async def measure_concurrent(op: Op, total: int, concurrency: int, settle: Callable[[], Awaitable[None]]) -> Sample:
    """``total`` calls with at most ``concurrency`` in flight, after one untimed round at full width
    (which opens the pool's connections). Throughput counts until the deferred work is done too."""
    await asyncio.gather(*(op() for _ in range(concurrency)))
    await settle()
    roles0 = cpu_by_role()
    cpu0, t0 = time.process_time(), time.perf_counter()
    latencies = await timed_concurrent(op, total, concurrency)
    await settle()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    roles1 = cpu_by_role()
    by_role = None
    if roles0 is not None and roles1 is not None:
        by_role = {role: roles1[role] - roles0.get(role, 0.0) for role in roles1}
    return Sample(latencies, elapsed, cpu, by_role)


#: Thread-name prefixes and what the threads do (names from ImageGen and asyncio).
THREAD_ROLES = (
    ("MainThread", "event loop (race, HTTP client, log calls)"),
    ("imagegen-log-writer", "log writer (SQLite)"),
    ("asyncio_", "worker threads (WebP, file writes)"),
    ("imagegen-breaker", "breaker threads"),
)


def cpu_by_role() -> dict[str, float] | None:
    """CPU seconds so far of this process's live threads, summed by role; None off Linux. Threads that ended
    take their time with them, so read this while the ImageGen is open."""
    import os
    import threading

    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return None
    names = {t.native_id: t.name for t in threading.enumerate()}
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for task in tasks.iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        name = names.get(int(task.name), "")
        role = next((label for prefix, label in THREAD_ROLES if name.startswith(prefix)), "other threads")
        totals[role] = totals.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / ticks_per_s
    return totals


def webp_cost_ms(runs: int) -> float:
    """CPU ms of one ``normalize_to_webp`` of the server's 64x64 PNG (the decode and WebP encode every stored
    image needs), median of ``runs``: a floor under imagegen's CPU per request that no router pays."""
    from imagegen_core.images import normalize_to_webp

    png = _small_png()
    times = []
    for _ in range(runs):
        start = time.process_time()
        normalize_to_webp(png, IMAGE_SIZE, IMAGE_SIZE)
        times.append((time.process_time() - start) * 1000)
    return statistics.median(times)


async def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Plan:
    sequential: int
    warmup: int
    requests: int
    concurrency: int
    upstream_ms: float
    import_runs: int
    #: Where the temporary IMAGEGEN_HOME goes (None: beside the default home).
    home_dir: str | None = None


async def run_all(
    plan: Plan, seq_server: FakeFal, load_server: FakeFal, home: Path
) -> dict[tuple[str, str, str], Sample]:
    """Every (phase, transport, path) measurement; each on a fresh client, so no pool state carries over."""
    results: dict[tuple[str, str, str], Sample] = {}
    for transport in TRANSPORTS:
        for phase, server in (("seq", seq_server), ("load", load_server)):
            for path in ("raw", "imagegen"):
                print(f"  {phase:<4} {transport:<8} {path:<8} ...", end="", flush=True, file=sys.stderr)
                async with make_client(transport) as client:
                    if path == "raw":
                        sample = await _measure(plan, phase, raw_op(client, server), _nothing)
                    else:
                        async with open_imagegen(server, client, home / f"{transport}-{phase}") as gen:
                            sample = await _measure(plan, phase, imagegen_op(gen, server), gen.flush)
                results[(phase, transport, path)] = sample
                print(f" p50 {sample.pct(50):.2f} ms, {sample.rps:.0f} req/s", file=sys.stderr)
    return results


async def _measure(plan: Plan, phase: str, op: Op, settle: Callable[[], Awaitable[None]]) -> Sample:
    if phase == "seq":
        return await measure_sequential(op, plan.sequential, plan.warmup, settle)
    return await measure_concurrent(op, plan.requests, plan.concurrency, settle)


# --------------------------------------------------------------------------------------------------
# Import time


def _top_level_ms(importtime_log: str, root: str) -> float:
    """Cumulative ms of the imports the ``-c`` statement itself triggered under package ``root``.

    ``-X importtime`` lines read ``import time: self | cumulative | <indent>name``; nested imports are
    indented under their importer, so the un-indented ``root*`` lines together cover the whole statement
    (``import a.b`` shows ``a`` and ``a.b`` at top level).
    """
    total_us = 0
    for line in importtime_log.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name_field = parts[2]
        name = name_field.strip()
        nested = len(name_field) - len(name_field.lstrip(" ")) > 1
        if not nested and (name == root or name.startswith(root + ".")):
            total_us += int(parts[1])
    return total_us / 1000


def import_times(runs: int) -> dict[str, tuple[float, float]]:
    """Per module: (median ``-X importtime`` cumulative ms, median wall ms over ``python -c pass``)."""
    modules = ("imagegen_core", "imagegen_core.service")
    statements = {"": "pass", **{m: f"import {m}" for m in modules}}
    wall: dict[str, list[float]] = {key: [] for key in statements}
    cumulative: dict[str, list[float]] = {m: [] for m in modules}

    def run(statement: str) -> tuple[float, str]:
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", statement],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return (time.perf_counter() - start) * 1000, proc.stderr

    for statement in statements.values():  # untimed: bytecode caches, page cache
        run(statement)
    for _ in range(runs):
        for key, statement in statements.items():  # interleaved, so drift hits all alike
            ms, log = run(statement)
            wall[key].append(ms)
            if key:
                cumulative[key].append(_top_level_ms(log, "imagegen_core"))
    base = statistics.median(wall[""])
    return {m: (statistics.median(cumulative[m]), statistics.median(wall[m]) - base) for m in modules}


# --------------------------------------------------------------------------------------------------
# Report


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def report(
    plan: Plan,
    results: dict[tuple[str, str, str], Sample],
    imports: dict[str, tuple[float, float]],
    creates: dict[str, float],
) -> None:
    """Print the Markdown tables and the transport verdict; ``creates``: µs to create a file beside the
    default home and in the temporary folder."""
    from imagegen_core.workers import usable_cores

    print(
        f"\nimagegen race overhead: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, "
        f"{platform.machine()} with {usable_cores()} cores, {platform.system()} {platform.release()}"
    )
    print(
        f"\nIMAGEGEN_HOME: a temporary folder under {home_parent(plan.home_dir)} "
        f"({'`--home-dir`' if plan.home_dir else 'beside the default home; `--home-dir` chooses'}). Creating a file "
        f"there: {creates['home']:.0f} µs; under {tempfile.gettempdir()}: {creates['temp']:.0f} µs (medians of 200)."
    )
    print(f"\n### Sequential latency (upstream 0 ms, {plan.sequential} requests after {plan.warmup} warm-up)\n")
    print("| transport | raw p50 | raw p99 | imagegen p50 | imagegen p99 | overhead p50 | overhead p99 | ratio p50 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for transport in TRANSPORTS:
        raw, gen = results[("seq", transport, "raw")], results[("seq", transport, "imagegen")]
        print(
            f"| {transport} | {raw.pct(50):.2f} | {raw.pct(99):.2f} | {gen.pct(50):.2f} | {gen.pct(99):.2f} "
            f"| {gen.pct(50) - raw.pct(50):+.2f} | {gen.pct(99) - raw.pct(99):+.2f} "
            f"| {_ratio(gen.pct(50), raw.pct(50))} |"
        )
    print("\n(ms; overhead = imagegen - raw)")

    print(
        f"\n### Under load ({plan.concurrency} concurrent, upstream {plan.upstream_ms:g} ms, "
        f"{plan.requests} requests)\n"
    )
    print("| transport | path | req/s | p50 ms | p99 ms | client CPU ms/req |")
    print("|---|---|---:|---:|---:|---:|")
    for transport in TRANSPORTS:
        for path in ("raw", "imagegen"):
            s = results[("load", transport, path)]
            print(
                f"| {transport} | {path} | {s.rps:.0f} | {s.pct(50):.1f} | {s.pct(99):.1f} "
                f"| {s.cpu_ms_per_request:.2f} |"
            )
    print("\n| ratio | req/s | p50 | p99 | CPU/req |")
    print("|---|---:|---:|---:|---:|")
    pairs = [(f"imagegen / raw ({t})", ("load", t, "imagegen"), ("load", t, "raw")) for t in TRANSPORTS]
    pairs += [(f"aiohttp / httpx ({p})", ("load", "aiohttp", p), ("load", "httpx", p)) for p in ("raw", "imagegen")]
    for label, a_key, b_key in pairs:
        a, b = results[a_key], results[b_key]
        print(
            f"| {label} | {_ratio(a.rps, b.rps)} | {_ratio(a.pct(50), b.pct(50))} | {_ratio(a.pct(99), b.pct(99))} "
            f"| {_ratio(a.cpu_ms_per_request, b.cpu_ms_per_request)} |"
        )

    loaded = results[("load", "aiohttp", "imagegen")]
    if loaded.cpu_by_role:
        n = len(loaded.latencies_ms)
        print("\n#### Where imagegen's CPU goes under load (aiohttp)\n")
        print("| threads | CPU ms/request | share |")
        print("|---|---:|---:|")
        total = sum(loaded.cpu_by_role.values())
        for role, seconds in sorted(loaded.cpu_by_role.items(), key=lambda kv: -kv[1]):
            print(f"| {role} | {seconds * 1000 / n:.2f} | {seconds / total:.0%} |")
        print(
            f"\n(one `normalize_to_webp` of the 64x64 PNG alone, in this process: {webp_cost_ms(200):.2f} ms CPU; "
            "the fake server runs in another process)"
        )

    print(f"\n### Import time (fresh interpreter, median of {plan.import_runs})\n")
    print("| statement | -X importtime cumulative ms | wall ms over `python -c pass` |")
    print("|---|---:|---:|")
    for module, (cumulative, wall) in imports.items():
        print(f"| `import {module}` | {cumulative:.1f} | {wall:.1f} |")

    best = max(TRANSPORTS, key=lambda t: results[("load", t, "imagegen")].rps)
    other = next(t for t in TRANSPORTS if t != best)
    win, lose = results[("load", best, "imagegen")], results[("load", other, "imagegen")]
    seq_win, seq_lose = results[("seq", best, "imagegen")], results[("seq", other, "imagegen")]
    print(
        f"\nVerdict: under load imagegen on {best} does {win.rps:.0f} req/s vs {lose.rps:.0f} on {other} "
        f"({_ratio(win.rps, lose.rps)}), p99 {win.pct(99):.0f} vs {lose.pct(99):.0f} ms, "
        f"CPU {win.cpu_ms_per_request:.2f} vs {lose.cpu_ms_per_request:.2f} ms/request; "
        f"sequential p50 {seq_win.pct(50):.2f} vs {seq_lose.pct(50):.2f} ms."
    )


# --------------------------------------------------------------------------------------------------
# Entry point


def parse_args(argv: list[str] | None = None) -> Plan:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run in well under 30 s")
    parser.add_argument("--sequential", type=int, help="timed sequential requests (default 300; quick 30)")
    parser.add_argument("--requests", type=int, help="requests under load (default 1000; quick 200)")
    parser.add_argument("--concurrency", type=int, default=50, help="requests in flight under load (default 50)")
    parser.add_argument("--upstream-ms", type=float, default=50.0, help="server delay under load (default 50)")
    parser.add_argument(
        "--home-dir", metavar="PATH", help="where the temporary IMAGEGEN_HOME goes (default: beside the default home)"
    )
    args = parser.parse_args(argv)
    plan = Plan(
        sequential=args.sequential or (30 if args.quick else 300),
        warmup=5 if args.quick else 20,
        requests=args.requests or (200 if args.quick else 1000),
        concurrency=args.concurrency,
        upstream_ms=args.upstream_ms,
        import_runs=3 if args.quick else 5,
        home_dir=args.home_dir,
    )
    if min(plan.sequential, plan.requests, plan.concurrency) < 1 or plan.upstream_ms < 0:
        parser.error("counts must be positive and --upstream-ms not negative")
    return plan


def main(argv: list[str] | None = None) -> int:
    plan = parse_args(argv)
    try:
        print("import times ...", file=sys.stderr, flush=True)
        imports = import_times(plan.import_runs)
        temp = Path(tempfile.gettempdir())
        creates = {"home": file_create_us(home_parent(plan.home_dir)), "temp": file_create_us(temp)}
        with temporary_home("imagegen-bench-", plan.home_dir) as tmp, FakeFal(0) as seq_server:
            with FakeFal(plan.upstream_ms) as load_server:
                results = asyncio.run(run_all(plan, seq_server, load_server, Path(tmp)))
                load_server.check_counts()
            seq_server.check_counts()
    except (BenchError, httpx.HTTPError, subprocess.CalledProcessError) as exc:
        print(f"\nbenchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    report(plan, results, imports, creates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
