"""Does a long-running ImageGen slow down or grow as it serves more requests?

One ImageGen (SQLite log and local store in a temporary ``IMAGEGEN_HOME``, ``_home.py``) serves ``--requests``
generates at ``--concurrency`` in flight, in blocks of ``--block``. The providers are two in-process fakes (no
sockets, so the figures are imagegen's own work): ``f1`` answers in ~5 ms (lognormal) and fails 5 % of its
calls (retried, and each failure keeps the breaker gate's provisional copy alive for a while), ``f2`` in
~8 ms. Every request validates, races, normalises a 64x64 PNG to WebP, stores it and logs the request and
its attempts, as in production.

Printed (Markdown, stdout): per block, requests/s, process CPU ms per request (all threads), resident memory
and the log's size on disk; then the last blocks against the first ones (medians of a quarter of the blocks
each, the first block left out as warm-up): a ratio near 1.0 means no slowdown. A per-request cost that
grew with the requests served (the breaker gate's rescan of the writer's backlog, fixed in b8a97ad, was one)
shows as a CPU ratio well above 1.

Run from the project root: ``.venv/bin/python bench/soak.py`` (``--quick`` for a smoke run). Exits non-zero
if any request fails. Nothing is contacted over the network.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _home import file_create_us, home_parent, temporary_home

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Block:
    """One block of requests: its throughput, CPU per request and the process's state after it."""

    served: int
    rps: float
    cpu_ms: float
    rss_mib: float
    log_mib: float


def rss_mib() -> float:
    """Resident memory now (not the peak): from /proc/self/statm."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_BYTES / 2**20


def log_mib(home: Path) -> float:
    """The SQLite log with its WAL and shared-memory files."""
    return sum(p.stat().st_size for p in home.glob("imagegen.db*")) / 2**20


def config_document() -> dict[str, Any]:
    from imagegen_core.config import DEFAULT_DOCUMENT

    providers: dict[str, Any] = {name: {"enabled": False} for name in DEFAULT_DOCUMENT["providers"]}
    lognormal = {"sigma": 0.6}
    providers["f1"] = {
        "type": "fake",
        "retries": 1,
        "options": {"latencyMs": {"lognormal": {"medianMs": 5, **lognormal}}, "failureRate": 0.05},
    }
    providers["f2"] = {
        "type": "fake",
        "retries": 1,
        "options": {"latencyMs": {"lognormal": {"medianMs": 8, **lognormal}}},
    }
    return {"providers": providers}


async def soak(home: Path, *, requests: int, block: int, concurrency: int) -> list[Block]:
    from imagegen_core import ImageGen, Settings

    settings = Settings(_env_file=None, IMAGEGEN_HOME=str(home), IMAGEGEN_DATABASE_URL=None)
    blocks: list[Block] = []
    async with ImageGen.from_settings(settings) as gen:
        gen.set_config(config_document(), source="bench")
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with gate:
                result = await gen.generate({"prompt": f"soak {i}", "width": 64, "height": 64})
            if not result.success:
                raise SystemExit(f"request {i} failed: {result.error}")

        served = 0
        while served < requests:
            size = min(block, requests - served)
            wall0, cpu0 = time.perf_counter(), time.process_time()
            await asyncio.gather(*(one(served + i) for i in range(size)))
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            await gen.flush()  # the log as it stands after the block
            served += size
            blocks.append(Block(served, size / wall, cpu / size * 1000, rss_mib(), log_mib(home)))
            print(f"{served} requests ...", file=sys.stderr, flush=True)
    return blocks


def report(blocks: list[Block], args: argparse.Namespace, create_us: float) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"imagegen soak: {now}, Python {platform.python_version()}, {os.cpu_count()} cores")
    print(f"\nIMAGEGEN_HOME under {home_parent(args.home_dir)} (creating a file there: {create_us:.0f} µs).")
    print(f"{args.requests} requests, {args.concurrency} in flight, blocks of {args.block}.\n")
    print("| served | req/s | CPU ms/request | RSS MiB | log MiB |")
    print("|---:|---:|---:|---:|---:|")
    for b in blocks:
        print(f"| {b.served} | {b.rps:.0f} | {b.cpu_ms:.2f} | {b.rss_mib:.0f} | {b.log_mib:.1f} |")
    timed = blocks[1:]  # the first block pays the imports, PIL's first use, the default image
    quarter = max(1, len(timed) // 4)
    first, last = timed[:quarter], timed[-quarter:]

    def median(rows: list[Block], attr: str) -> float:
        return statistics.median(getattr(b, attr) for b in rows)

    print(f"\n| last {quarter} blocks / first {quarter} (after the warm-up block) | ratio |")
    print("|---|---:|")
    for label, attr in (("req/s", "rps"), ("CPU ms/request", "cpu_ms"), ("RSS", "rss_mib")):
        print(f"| {label} | {median(last, attr) / median(first, attr):.2f}x |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2000 requests in blocks of 400")
    parser.add_argument("--requests", type=int, help="requests in all (default 20000)")
    parser.add_argument("--block", type=int, help="requests per block (default 2000)")
    parser.add_argument("--concurrency", type=int, default=50, help="requests in flight (default 50)")
    parser.add_argument("--home-dir", metavar="PATH", help="where the temporary IMAGEGEN_HOME goes")
    args = parser.parse_args(argv)
    args.requests = args.requests or (2000 if args.quick else 20_000)
    args.block = args.block or (400 if args.quick else 2000)
    if min(args.requests, args.block, args.concurrency) < 1 or args.requests < 2 * args.block:
        parser.error("counts must be positive, with at least two blocks of requests")
    create_us = file_create_us(home_parent(args.home_dir))
    with temporary_home("imagegen-soak-", args.home_dir) as home:
        blocks = asyncio.run(soak(Path(home), requests=args.requests, block=args.block, concurrency=args.concurrency))
    report(blocks, args, create_us)
    return 0


if __name__ == "__main__":
    sys.exit(main())
