"""A burst of requests with large images: when does each answer, with the image work on imagegen's own threads
(one per core, in turn) against the same work on the event loop's default executor (6 threads on 2 cores)?

The scenario: ``--requests`` generates at once whose provider answers at once with a noisy ``--side`` x
``--side`` JPEG (a real photo-sized decode, cover-crop and WebP encode at 1200x630 each), then a late
request sent ``--late-ms`` into the burst, as an editor's click arriving during it. Each round runs in a
fresh ``IMAGEGEN_HOME`` after one warm-up generate.

Rounds alternate between the two ways (``--rounds`` each): "image threads" (imagegen as shipped,
``images.in_image_worker``) and the baseline "default executor" (the same function replaced by
``asyncio.to_thread``, as before 2026-11-30). Printed (Markdown): per way, the medians over rounds of the
burst's mean, first and last answer and of the late request's answer (ms from the burst's start), and the
ratio baseline / image threads.

Run from the project root: ``.venv/bin/python bench/image_burst.py`` (``--requests``, ``--side``,
``--rounds``, ``--late-ms``, ``--home-dir``).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from _home import temporary_home

WAYS = ("image threads", "default executor")
OFF = {name: {"enabled": False} for name in ("replicate", "fal", "unsplash", "openai", "offline")}


def noisy_jpeg(side: int) -> bytes:
    """A photo-sized JPEG that compresses as badly as a real photo (random pixels, quality 90)."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(1).integers(0, 255, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def by_way(way: str) -> Callable[[Callable[[], Any]], Awaitable[Any]]:
    """How the race runs its image work in this round."""
    from imagegen_core.images import in_image_worker

    if way == "image threads":
        return in_image_worker
    return asyncio.to_thread


async def run_round(way: str, image: bytes, requests: int, late_s: float, home_dir: str | None) -> dict[str, float]:
    """One burst: the burst's answer times and the late request's (ms from the burst's start)."""
    import imagegen_core.service as service
    from imagegen_core import ImageGen
    from imagegen_core.providers.base import ProviderOutput
    from imagegen_core.providers.fake import FakeProvider
    from imagegen_core.settings import Settings

    class Photo(FakeProvider):
        async def generate(self, job: Any, ctx: Any) -> ProviderOutput:
            return ProviderOutput(data=image, content_type="image/jpeg", model="photo")

    service.in_image_worker = by_way(way)  # type: ignore[assignment]  # the baseline's swap
    with temporary_home("imagegen-bench-burst-", home_dir) as home:
        settings = Settings(_env_file=None, IMAGEGEN_HOME=home)
        gen = ImageGen.from_settings(settings, providers={"photo": Photo(name="photo")})
        try:
            provider = {"type": "fake", "enabled": True, "priority": 1, "timeout": 120_000}
            gen.set_config({"providers": {**OFF, "photo": provider}, "defaults": {"timeout": 120_000}}, source="bench")
            await gen.generate({"prompt": "warm-up", "width": 1200, "height": 630})
            start = time.perf_counter()

            async def one(prompt: str, after_s: float = 0.0) -> float:
                await asyncio.sleep(after_s)
                result = await gen.generate({"prompt": prompt, "width": 1200, "height": 630})
                assert result.success, result.error
                return (time.perf_counter() - start) * 1000

            late = asyncio.ensure_future(one("late", late_s))
            burst = await asyncio.gather(*(one(f"burst {i}") for i in range(requests)))
            return {
                "mean": statistics.mean(burst),
                "first": min(burst),
                "last": max(burst),
                "late": await late,
            }
        finally:
            await gen.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=8, help="requests in the burst")
    parser.add_argument("--side", type=int, default=2400, help="the provider's image: width and height (px)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each way, alternating")
    parser.add_argument("--late-ms", type=float, default=50, help="the late request starts this long into the burst")
    parser.add_argument("--home-dir", help="folder for the temporary IMAGEGEN_HOME (default: beside the real one)")
    args = parser.parse_args()

    from imagegen_core.workers import usable_cores

    image = noisy_jpeg(args.side)
    figures: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
    for _ in range(args.rounds):
        for way in WAYS:
            figures[way].append(asyncio.run(run_round(way, image, args.requests, args.late_ms / 1000, args.home_dir)))

    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"image_burst: {when}, Python {platform.python_version()}, {platform.machine()} with {usable_cores()} cores; "
        f"{args.requests} requests at once, a {args.side}x{args.side} JPEG ({len(image) // 1024} KiB) each, "
        f"normalised to 1200x630 WebP; a late request after {args.late_ms:.0f} ms; medians of {args.rounds} rounds\n"
    )
    print("| answer, ms from the burst's start | image threads | default executor (baseline) | baseline / ours |")
    print("|---|---:|---:|---:|")
    for measure, label in [
        ("mean", "burst: mean answer"),
        ("first", "burst: first answer"),
        ("last", "burst: last answer"),
        ("late", "the late request"),
    ]:
        ours = statistics.median(r[measure] for r in figures["image threads"])
        base = statistics.median(r[measure] for r in figures["default executor"])
        print(f"| {label} | {ours:.0f} | {base:.0f} | {base / ours:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
