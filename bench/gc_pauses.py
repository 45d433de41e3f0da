"""How long do Python's garbage-collector pauses stall ``ImageGen.generate``, and what does ``gc.freeze()``
after warm-up (what ``imagegen serve`` does) change?

The same fake fal server as ``race_overhead.py`` (a separate process on 127.0.0.1, answering at once)
serves ``--requests`` sequential ``generate`` calls per round, after a warm-up; rounds alternate between
the interpreter's defaults and ``gc.freeze()`` (every object alive after the warm-up moved to the
permanent generation, which collections skip; ``gc.unfreeze()`` before the next default round). Each
collection is timed through ``gc.callbacks``.

Printed (Markdown, stdout): per mode, collections and their longest pause per generation, and the
request latency p50 / p99 / p99.9 / max, with the ratio of the longest full (generation 2) pause. A
generation-2 collection walks every tracked object (about 65,000 after start-up here), so it comes
rarely but stalls every request in flight while it runs.

Run from the project root: ``.venv/bin/python bench/gc_pauses.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import race_overhead as ro
from _home import temporary_home
from _measure import pct

MODES = ("defaults", "gc.freeze() after warm-up")


class PauseClock:
    """Times every collection, by generation, while installed in ``gc.callbacks``."""

    def __init__(self) -> None:
        self.pauses_ms: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses_ms[info["generation"]].append((time.perf_counter() - self._started) * 1000)


async def run(requests: int, rounds: int, warmup: int) -> dict[str, tuple[list[float], PauseClock]]:
    results: dict[str, tuple[list[float], PauseClock]] = {mode: ([], PauseClock()) for mode in MODES}
    with ro.FakeFal(0) as server, temporary_home("imagegen-gc-") as home:
        client = ro.make_client("aiohttp")
        try:
            async with ro.open_imagegen(server, client, Path(home)) as gen:
                op = ro.imagegen_op(gen, server)
                for _ in range(warmup):
                    await op()
                await gen.flush()
                for round_no in range(rounds):
                    for mode in MODES:
                        latencies, clock = results[mode]
                        print(f"round {round_no + 1}: {mode}", file=sys.stderr, flush=True)
                        if mode != MODES[0]:
                            gc.freeze()
                        gc.callbacks.append(clock)
                        try:
                            for _ in range(requests):
                                start = time.perf_counter()
                                await op()
                                latencies.append((time.perf_counter() - start) * 1000)
                        finally:
                            gc.callbacks.remove(clock)
                            gc.unfreeze()
                server.check_counts()
        finally:
            await client.aclose()
    return results


def report(requests: int, rounds: int, results: dict[str, tuple[list[float], PauseClock]]) -> None:
    print(
        f"\nimagegen GC pauses: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; {rounds} rounds of {requests} sequential requests per mode, "
        f"modes alternating; {len(gc.get_objects())} objects tracked at the end\n"
    )
    print("| mode | gen0: n / max ms | gen1: n / max ms | gen2: n / max ms | p50 ms | p99 ms | p99.9 ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    longest: dict[str, float] = {}
    for mode, (latencies, clock) in results.items():
        cells = []
        for generation in (0, 1, 2):
            pauses = clock.pauses_ms[generation]
            cells.append(f"{len(pauses)} / {max(pauses):.2f}" if pauses else "0 / —")
        longest[mode] = max(clock.pauses_ms[2], default=0.0)
        print(
            f"| {mode} | {' | '.join(cells)} | {pct(latencies, 50):.2f} | {pct(latencies, 99):.2f} "
            f"| {pct(latencies, 99.9):.2f} | {max(latencies):.2f} |"
        )
    base, frozen = longest[MODES[0]], longest[MODES[1]]
    if base and frozen:
        print(
            f"\nlongest generation-2 pause: {base:.1f} ms with the defaults, {frozen:.1f} ms frozen "
            f"({base / frozen:.0f}x)"
        )
    else:
        print("\nno generation-2 collection in at least one mode: run more requests to compare them")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--requests", type=int, help="sequential requests per round and mode (default 1500)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    args = parser.parse_args(argv)
    requests = args.requests or (200 if args.quick else 1500)
    if min(requests, args.rounds) < 1:
        parser.error("--requests and --rounds must be positive")
    try:
        results = asyncio.run(run(requests, args.rounds, warmup=20 if args.quick else 50))
    except ro.BenchError as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        return 1
    report(requests, args.rounds, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
