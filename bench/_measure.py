"""Measurement helpers shared by the benchmarks (standard library only: ``vs_litellm.py`` also runs them in
LiteLLM's own venv)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

Op = Callable[[], Awaitable[Any]]


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: always an observed value (with 300 samples, p99 is the 297th)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


async def timed_sequential(op: Op, n: int) -> list[float]:
    """``n`` calls of ``op`` one after another; their times in ms."""
    latencies = []
    for _ in range(n):
        start = time.perf_counter()
        await op()
        latencies.append((time.perf_counter() - start) * 1000)
    return latencies


async def timed_concurrent(op: Op, total: int, width: int) -> list[float]:
    """``total`` calls of ``op`` with at most ``width`` in flight; their times in ms (each from when it got a
    slot, so waiting for one is not counted)."""

    async def timed(gate: asyncio.Semaphore, out: list[float]) -> None:
        async with gate:
            start = time.perf_counter()
            await op()
            out.append((time.perf_counter() - start) * 1000)

    gate = asyncio.Semaphore(width)
    latencies: list[float] = []
    await asyncio.gather(*(timed(gate, latencies) for _ in range(total)))
    return latencies
