"""Does an answer with the default image keep its deadline while the CPU is saturated by image work?

The scenario the QA run of 2026-11-29 found: several requests at once, at a large size no default image has
been stored for yet, each given a short deadline that the offline provider's large render cannot meet. The
renders that lost keep running in their worker threads (a thread cannot be stopped), and the answers must
draw and store the default image of that size on a CPU those renders hold. Each request is timed against
its own deadline (``defaults.timeout`` after it entered ``generate``), so the lateness printed is imagegen's
alone, not the queueing of one request behind another in this process.

Two rounds, each in a fresh ``IMAGEGEN_HOME``: "new size" (the default image must be drawn at answer time)
and the baseline "stored size" (the same requests after that default image was stored). Printed (Markdown):
per round, each request's lateness past its deadline (ms; negative: early) and the worst; then the worst of
both rounds side by side (a ratio of two lateness figures near zero would say nothing).

Run from the project root: ``.venv/bin/python bench/deadline_under_load.py`` (``--size``, ``--requests``,
``--timeout-ms``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
from datetime import UTC, datetime

from _home import temporary_home


async def run_round(size: int, requests: int, timeout_ms: int, *, prestored: bool) -> list[float]:
    """Each request's answer time minus its deadline (ms), in a fresh home."""
    from imagegen_core import ImageGen
    from imagegen_core.settings import Settings

    with temporary_home("imagegen-bench-deadline-") as home:
        gen = ImageGen.from_settings(Settings(_env_file=None, IMAGEGEN_HOME=home))
        try:
            gen.set_config({"defaults": {"timeout": timeout_ms}}, source="bench")
            await gen.warm_up()
            loop = asyncio.get_running_loop()
            if prestored:
                await gen.delivery.default_image(size, size, gen.config, loop.time() + 120)

            async def one(i: int) -> float:
                entered = loop.time()
                result = await gen.generate({"prompt": f"harbour {i}", "width": size, "height": size})
                assert not result.success, "the render met the deadline: use a larger --size or shorter --timeout-ms"
                return (loop.time() - (entered + timeout_ms / 1000)) * 1000

            return list(await asyncio.gather(*(one(i) for i in range(requests))))
        finally:
            await gen.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=3500, help="width and height of each request (px)")
    parser.add_argument("--requests", type=int, default=3, help="requests at once")
    parser.add_argument("--timeout-ms", type=int, default=1000, help="defaults.timeout: each request's deadline")
    args = parser.parse_args()
    rounds = {}
    for name, prestored in (("new size", False), ("stored size (baseline)", True)):
        rounds[name] = asyncio.run(run_round(args.size, args.requests, args.timeout_ms, prestored=prestored))
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"deadline under load: {now}, Python {platform.python_version()}, {os.cpu_count()} cores; "
        f"{args.requests} requests at once of {args.size}x{args.size}, deadline {args.timeout_ms} ms, "
        "offline provider only\n"
    )
    print("| round | lateness past each request's deadline (ms) | worst |")
    print("|---|---|---:|")
    for name, late in rounds.items():
        print(f"| {name} | {', '.join(f'{x:.0f}' for x in late)} | {max(late):.0f} |")
    new, base = max(rounds["new size"]), max(rounds["stored size (baseline)"])
    print(f"\nworst lateness, new size / stored size: {new:.0f} / {base:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
