"""How far could imagegen's throughput go if it did less work per request? Scenario (b) of ``vs_litellm.py``
with parts of a generate's work taken away, next to the raw client, in one run.

Issue 7 asks for 850 requests/s at 50 in flight with a 50 ms upstream; imagegen reaches about half that. Its
profile (``gil_profile.py``) is flat, so this benchmark asks the question the other way round: with the image
work (decode, fit, encode WebP) replaced by a cached result, or with the log rows dropped instead of written,
or both, what does the same scenario reach? What is left in "both" is the engine and the HTTP stack on the
event loop, which no redistribution of the image work or the log (another process, say) can take away.

Variants, each in its own child process (project venv) against one fake OpenAI-style server on 127.0.0.1
(``_fakeserver.py``), one untimed round at full width, then ``--requests`` calls at ``--concurrency`` in
flight against a ``--upstream-ms`` upstream; ``--rounds`` rounds, the variants interleaved in each:

- ``raw``: the POST imagegen's OpenAI provider makes, with a plain aiohttp session (the baseline);
- ``imagegen``: ``ImageGen.generate`` as shipped (local store and SQLite log in a temporary home);
- ``no-image-work``: the same, ``normalize_to_webp`` answering from a cache (the thread hop stays);
- ``no-log``: the same, the log writer's ``submit`` dropping its call (flushes still run);
- ``neither``: both at once.

The cached image and the dropped rows are what-ifs for measurement only: imagegen never does either.
Printed: the median over rounds of requests/s and the process's CPU ms per request, each variant's ratio to
``imagegen``, and its share of the 850 req/s goal.

Run from the project root: ``.venv/bin/python bench/ceiling.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _fakeserver import Behaviour, FakeImageServer, provider_url
from _measure import Op, timed_concurrent
from vs_litellm import BenchError, load_imagegen, raw_op

HERE = Path(__file__).resolve().parent
RESULT_MARKER = "CEILING-RESULT "
VARIANTS = ("raw", "imagegen", "no-image-work", "no-log", "neither")
GOAL_RPS = 850
#: Where the temporary homes go: tmpfs when there is one, as ``vs_litellm.py --home-dir /dev/shm`` runs.
HOME_PARENT = "/dev/shm" if Path("/dev/shm").is_dir() else None


async def _measured(op: Op, requests: int, width: int, settle: Any) -> dict[str, float]:
    await asyncio.gather(*(op() for _ in range(width)))  # warm-up: connections, caches, the log's tables
    await settle()
    cpu0, t0 = time.process_time(), time.perf_counter()
    await timed_concurrent(op, requests, width)
    await settle()  # queued log rows are part of the work
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"rps": requests / elapsed, "cpu_ms": cpu * 1000 / requests}


async def _nothing() -> None:
    return None


def _without_image_work() -> None:
    """``normalize_to_webp`` answers from a cache: the first call per input does the work."""
    import imagegen_core.service as service

    real = service.normalize_to_webp
    cache: dict[tuple[int, int, int], Any] = {}

    def cached(data: bytes, width: int, height: int, *args: Any, **kwargs: Any) -> Any:
        key = (len(data), width, height)
        if key not in cache:
            cache[key] = real(data, width, height, *args, **kwargs)
        return cache[key]

    service.normalize_to_webp = cached  # type: ignore[assignment]


def _without_log_rows() -> None:
    """The log writer drops what is submitted to it (a done future, as after a commit)."""
    from imagegen_core.log.writer import LogWriter

    def dropped(self: Any, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.set_result(None)
        return future

    LogWriter.submit = dropped  # type: ignore[method-assign]


async def child(variant: str, base_url: str, requests: int, width: int) -> dict[str, float]:
    if variant == "raw":
        import aiohttp

        async with aiohttp.ClientSession() as session:
            url = provider_url(base_url, "load") + "/v1/images/generations"
            return await _measured(raw_op(session, url), requests, width, _nothing)
    if variant in ("no-image-work", "neither"):
        _without_image_work()
    if variant in ("no-log", "neither"):
        _without_log_rows()
    with tempfile.TemporaryDirectory(prefix="imagegen-ceiling-", dir=HOME_PARENT) as home:
        async with load_imagegen(home, base_url) as (gen, op):
            return await _measured(op, requests, width, gen.flush)


def run_child(variant: str, base_url: str, args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--base-url", base_url]
    command += ["--requests", str(args.requests), "--concurrency", str(args.concurrency)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=HERE.parent)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :])
    raise BenchError(f"{variant}: the child failed (exit {done.returncode}): {done.stderr.strip()[-600:]}")


def report(args: argparse.Namespace, results: dict[str, list[dict[str, float]]]) -> None:
    shipped = statistics.median(r["rps"] for r in results["imagegen"])
    print(
        f"\n## ceiling.py: scenario (b) with work taken away ({args.requests} requests at {args.concurrency} in "
        f"flight, {args.upstream_ms} ms upstream, median of {args.rounds} round(s))\n"
    )
    print("| variant | req/s (each round) | req/s | CPU ms / request | vs imagegen | of the 850 goal |")
    print("|---|---|---:|---:|---:|---:|")
    for variant in VARIANTS:
        rps = [r["rps"] for r in results[variant]]
        cpu = statistics.median(r["cpu_ms"] for r in results[variant])
        median = statistics.median(rps)
        each = " / ".join(f"{value:.0f}" for value in rps)
        print(
            f"| {variant} | {each} | {median:.0f} | {cpu:.2f} | {median / shipped:.2f}x | "
            f"{100 * median / GOAL_RPS:.0f}% |"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run (400 requests, one round)")
    parser.add_argument("--requests", type=int, default=None, help="timed requests per variant (default 3000)")
    parser.add_argument("--concurrency", type=int, default=50, help="requests in flight (default 50)")
    parser.add_argument("--upstream-ms", type=int, default=50, help="the fake server's delay (default 50)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of all variants (default 3)")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.requests = args.requests or (400 if args.quick else 3000)
    args.rounds = args.rounds or (1 if args.quick else 3)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        result = asyncio.run(child(args.child, args.base_url, args.requests, args.concurrency))
        print(RESULT_MARKER + json.dumps(result), flush=True)
        return 0
    behaviours = {"load": Behaviour(median_ms=args.upstream_ms), "instant": Behaviour()}
    results: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
    with FakeImageServer(behaviours) as server:
        for round_number in range(1, args.rounds + 1):
            for variant in VARIANTS:
                print(f"round {round_number}: {variant} ...", file=sys.stderr, flush=True)
                results[variant].append(run_child(variant, server.base_url, args))
    report(args, results)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"ceiling.py: {exc}", file=sys.stderr)
        sys.exit(1)
