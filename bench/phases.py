"""Where does one ``ImageGen.generate`` spend its time, next to the raw POST it makes?

Issue 7 asks for imagegen's overhead over a raw call to be 10x below LiteLLM's (``vs_litellm.py`` measures
both). This benchmark shows what that overhead is made of, so the goal can be judged against the work a
generate must do. The set-up is scenario (a) of ``vs_litellm.py``: a fake OpenAI-style server on 127.0.0.1
in its own process answers at once with a 64x64 PNG in ``b64_json``; ImageGen races one ``openai`` entry
pointed at it, with a local store and the SQLite log in a temporary ``IMAGEGEN_HOME``.

Printed (Markdown, ready to paste into bench/README.md):

1. sequential generates, each split at the points below (the p50 of each phase over all requests): from
   the call to the end of admission (id, config, validation, the ``running`` row queued); to the provider's
   HTTP call; the call itself; to the start of normalisation (reading the answer, base64, the thread hop);
   normalising to WebP (on the worker thread); to the start of storing; storing (the file, its thread hop);
   to the answer. Next to it the raw POST of the same request with the same kind of client (the baseline), and the
   ratio generate / raw.
2. the floor under the overhead, timed alone in the same process: one ``asyncio.to_thread`` hop of a function
   that does nothing; decoding the PNG and encoding the 64x64 WebP (Pillow, at ``images.WEBP_METHOD`` and at
   effort 0); ``normalize_to_webp`` whole; a local store's write inline and through its thread.

3. under load, scenario (b) of ``vs_litellm.py`` (``--load-requests`` generates at ``--concurrency`` in flight
   against an upstream of ``--upstream-ms``): the p50 and p90 of each phase, each request timed on its own
   marks. At 50 in flight with a 50 ms upstream, requests/s is 50 / (the generate's time): this table shows
   where the time over the upstream's goes, and so what holds requests/s below the 1000 the upstream allows.

The phases are measured by wrapping four functions of this process's ImageGen (its HTTP client's ``send``,
``_admit``, ``delivery.place`` and ``service.normalize_to_webp``): the wrappers add a few microseconds each.

Run from the project root: ``.venv/bin/python bench/phases.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextvars
import io
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _fakeserver import IMAGE_SIZE, Behaviour, FakeImageServer, provider_url, small_png
from _home import temporary_home
from _measure import pct, timed_concurrent
from vs_litellm import DUMMY_KEY, MODEL, OPENAI_SIZE, PNG_SIGNATURE, PROMPT, bench_settings, imagegen_document

#: (mark before, mark after, label) of each phase, in order.
PHASES = [
    ("call", "admitted", "admission: id, config, validation, the running row"),
    ("admitted", "send", "race set-up to the provider's HTTP call"),
    ("send", "sent", "the provider's HTTP call (POST, answer read)"),
    ("sent", "normalise", "answer decoded, hop to a worker thread"),
    ("normalise", "normalised", "normalise to WebP (worker thread)"),
    ("normalised", "place", "hop back, race ends, winner chosen"),
    ("place", "placed", "store the WebP (file write, its thread hop)"),
    ("placed", "answered", "the result and its attempts"),
]


class Marks:
    """Timestamps (perf_counter) per mark name, one per request, appended in request order."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}

    def mark(self, name: str) -> None:
        self.times.setdefault(name, []).append(time.perf_counter())

    def clear(self) -> None:
        self.times.clear()

    def phase_us(self, start: str, end: str) -> list[float]:
        return [(b - a) * 1e6 for a, b in zip(self.times[start], self.times[end], strict=True)]


def instrument(gen: Any, client: Any, mark: Callable[[str], None]) -> Callable[[], None]:
    """Wrap the four functions whose entry and exit split a generate into :data:`PHASES`; ``mark(name)`` notes
    the time of each boundary. Returns what takes the wrapper off ``normalize_to_webp`` (a module's function,
    unlike the other three: the next ImageGen of the process would call it too)."""
    import imagegen_core.service as service

    def around_async(name: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            mark(name)
            result = await fn(*args, **kwargs)
            mark(name + "_end")
            return result

        return wrapped

    client.send = around_async("send", client.send)
    gen._admit = around_async("admit", gen._admit)
    gen.delivery.place = around_async("place", gen.delivery.place)
    normalize = service.normalize_to_webp

    def normalize_marked(*args: Any, **kwargs: Any) -> Any:
        mark("normalise")
        result = normalize(*args, **kwargs)
        mark("normalised")
        return result

    service.normalize_to_webp = normalize_marked  # type: ignore[assignment]

    def undo() -> None:
        service.normalize_to_webp = normalize

    return undo


def alias(marks: Marks) -> None:
    """Name the wrappers' marks after the phase boundaries."""
    renames = {"admit_end": "admitted", "send_end": "sent", "place_end": "placed"}
    for old, new in renames.items():
        marks.times[new] = marks.times.pop(old)
    marks.times.pop("admit")


async def measure_generate(base_url: str, home: Path, n: int, warmup: int) -> tuple[Marks, list[float]]:
    """``n`` instrumented sequential generates, and ``n`` raw POSTs of the same request (a client made the same
    way), alternating."""
    from imagegen_core import ImageGen
    from imagegen_core.service import make_http_client

    settings = bench_settings(home, base_url, "zero", "zero")
    request = {"prompt": PROMPT, "width": IMAGE_SIZE, "height": IMAGE_SIZE}
    raw_url = provider_url(base_url, "zero") + "/v1/images/generations"
    raw_body = {"model": MODEL, "n": 1, "size": OPENAI_SIZE, "prompt": PROMPT}  # what the provider sends
    marks = Marks()
    raw: list[float] = []
    # The raw POSTs go through a client of their own (made the same way): the generate's is instrumented.
    async with make_http_client() as client, make_http_client() as raw_client:
        gen = ImageGen.from_settings(settings, http_client=client)
        async with gen:
            gen.set_config(imagegen_document(None), source="bench")
            undo = instrument(gen, client, marks.mark)
            for i in range(warmup + n):
                if i == warmup:
                    marks.clear()
                    raw.clear()
                marks.mark("call")
                result = await gen.generate(request)
                marks.mark("answered")
                if not result.success:
                    raise SystemExit(f"generate failed: {result.error}")
                started = time.perf_counter()
                answer = await raw_client.post(raw_url, json=raw_body, headers={"Authorization": f"Bearer {DUMMY_KEY}"})
                image = base64.b64decode(answer.json()["data"][0]["b64_json"])
                raw.append((time.perf_counter() - started) * 1e6)
                if answer.status_code != 200 or not image.startswith(PNG_SIGNATURE):
                    raise SystemExit(f"raw POST answered {answer.status_code} without a PNG")
            undo()
    alias(marks)
    return marks, raw


#: (mark before, mark after, label) of each phase under load. The normalising runs on an image thread, which
#: does not see the request's context: its own marks are not taken, and its time is in the third phase.
LOAD_PHASES = [
    ("call", "send", "admission and race set-up to the provider's HTTP call"),
    ("send", "send_end", "the provider's HTTP call (its upstream takes the set delay)"),
    ("send_end", "place", "answer decoded, normalised on an image thread (hop and queue included), race ends"),
    ("place", "place_end", "store the WebP (file write, its thread hop)"),
    ("place_end", "answered", "the result and its attempts"),
]

#: The marks of the request whose task (or a task it started) is running.
_request_marks: contextvars.ContextVar[dict[str, float]] = contextvars.ContextVar("request_marks")


def mark_request(name: str) -> None:
    """Note the time of ``name`` in the current request's marks (outside a request, or on a thread that does
    not carry the request's context, nothing)."""
    if (marks := _request_marks.get(None)) is not None:
        marks[name] = time.perf_counter()


async def measure_under_load(base_url: str, home: Path, n: int, width: int) -> list[dict[str, float]]:
    """``n`` instrumented generates with ``width`` in flight against the server's ``load`` provider (scenario
    (b) of ``vs_litellm.py``), after one untimed round at full width; each request's marks."""
    from imagegen_core import ImageGen
    from imagegen_core.service import make_http_client

    settings = bench_settings(home, base_url, "load", "zero")
    request = {"prompt": PROMPT, "width": IMAGE_SIZE, "height": IMAGE_SIZE}
    done: list[dict[str, float]] = []

    async def one() -> None:
        marks = {"call": time.perf_counter()}
        _request_marks.set(marks)  # this task's context; the race's tasks copy it
        result = await gen.generate(request)
        marks["answered"] = time.perf_counter()
        if not result.success:
            raise SystemExit(f"generate failed: {result.error}")
        done.append(marks)

    async with make_http_client() as client, ImageGen.from_settings(settings, http_client=client) as gen:
        gen.set_config(imagegen_document(None), source="bench")
        undo = instrument(gen, client, mark_request)
        await asyncio.gather(*(one() for _ in range(width)))
        await gen.flush()
        done.clear()
        await timed_concurrent(one, n, width)
        undo()
    return done


def timed_us(fn: Callable[[], Any], n: int) -> float:
    """Median of ``n`` calls of ``fn``, in microseconds, after a tenth as many unmeasured."""
    for _ in range(max(1, n // 10)):
        fn()
    times = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1e6)
    return statistics.median(times)


async def hop_us(n: int) -> float:
    """Median time of one ``asyncio.to_thread`` round trip of a function that does nothing."""

    def nothing() -> None:
        return None

    times = []
    for _ in range(n):
        started = time.perf_counter()
        await asyncio.to_thread(nothing)
        times.append((time.perf_counter() - started) * 1e6)
    return statistics.median(times[n // 10 :])


async def store_put_us(home: Path, n: int) -> tuple[float, float]:
    """A local store's write of a 300-byte object: inline (its ``_write``) and through ``put`` (its hop)."""
    from imagegen_core.storage.local import LocalStore

    store = LocalStore(home / "store-alone")
    data = b"R" * 300

    def inline(i: list[int] = [0]) -> None:  # noqa: B006 (a counter: each write under a new key)
        i[0] += 1
        key = f"ai/2026/11/inline-{i[0]}.webp"
        store._write(key, store.path_for(key), data, b"{}")

    inline_us = timed_us(inline, n)
    times = []
    for i in range(n):
        started = time.perf_counter()
        await store.put(f"ai/2026/11/put-{i}.webp", data, content_type="image/webp", cache_control="c", metadata={})
        times.append((time.perf_counter() - started) * 1e6)
    return inline_us, statistics.median(times[n // 10 :])


def floor_rows(n: int) -> list[tuple[str, float]]:
    """The codec's share, timed alone: PNG decode, WebP encode (two efforts), normalize_to_webp whole."""
    from PIL import Image

    from imagegen_core.images import WEBP_METHOD, normalize_to_webp

    png = small_png()
    with Image.open(io.BytesIO(png)) as opened:
        decoded = opened.convert("RGB")

    def decode() -> None:
        with Image.open(io.BytesIO(png)) as img:
            img.load()

    return [
        ("decode the 64x64 PNG (Pillow)", timed_us(decode, n)),
        (
            f"encode 64x64 WebP, effort {WEBP_METHOD} (as imagegen)",
            timed_us(lambda: decoded.save(io.BytesIO(), "WEBP", quality=82, method=WEBP_METHOD), n),
        ),
        ("encode 64x64 WebP, effort 0", timed_us(lambda: decoded.save(io.BytesIO(), "WEBP", quality=82, method=0), n)),
        ("normalize_to_webp whole (decode, fit, encode)", timed_us(lambda: normalize_to_webp(png, 64, 64), n)),
    ]


def report_under_load(done: list[dict[str, float]], args: argparse.Namespace) -> None:
    print(
        f"\n### Under load: {args.load_requests} generates at {args.concurrency} in flight, upstream "
        f"{args.upstream_ms:g} ms (p50 and p90 of each phase, ms)\n"
    )
    print("| phase | p50 ms | p90 ms |")
    print("|---|---:|---:|")
    rows = [(label, [(marks[end] - marks[start]) * 1000 for marks in done]) for start, end, label in LOAD_PHASES]
    rows.append(("**generate, whole**", [(marks["answered"] - marks["call"]) * 1000 for marks in done]))
    for label, times in rows:
        print(f"| {label} | {statistics.median(times):.2f} | {pct(times, 90):.2f} |")


def report(marks: Marks, raw: list[float], floors: list[tuple[str, float]], n: int) -> None:
    total = marks.phase_us("call", "answered")
    total_p50 = statistics.median(total)
    raw_p50 = statistics.median(raw)
    print(f"\n### One generate, phase by phase ({n} sequential requests, upstream 0 ms; p50 of each phase, µs)\n")
    print("| phase | p50 µs | share of the generate |")
    print("|---|---:|---:|")
    for start, end, label in PHASES:
        p50 = statistics.median(marks.phase_us(start, end))
        print(f"| {label} | {p50:.0f} | {p50 / total_p50:.0%} |")
    print(f"| **generate, whole** (p99 {pct(total, 99):.0f}) | **{total_p50:.0f}** | 100% |")
    print(f"| raw POST of the same request, same kind of client (p99 {pct(raw, 99):.0f}) | {raw_p50:.0f} | |")
    print(f"| overhead (generate - raw) | {total_p50 - raw_p50:.0f} | |")
    print(f"| ratio generate / raw | {total_p50 / raw_p50:.2f}x | |")
    print("\n### The floor under the overhead, timed alone in this process (median, µs)\n")
    print("| step | µs |")
    print("|---|---:|")
    for label, value in floors:
        print(f"| {label} | {value:.0f} |")


async def main_async(args: argparse.Namespace) -> None:
    with temporary_home("imagegen-phases-", args.home_dir) as home_dir:
        home = Path(home_dir)
        with FakeImageServer({"zero": Behaviour()}) as server:
            print(f"fake server at {server.base_url}", file=sys.stderr)
            marks, raw = await measure_generate(server.base_url, home / "gen", args.requests, args.warmup)
        floors = floor_rows(args.requests)
        hop = await hop_us(args.requests)
        inline_us, put_us = await store_put_us(home, args.requests)
        with FakeImageServer({"load": Behaviour(median_ms=args.upstream_ms), "zero": Behaviour()}) as server:
            done = await measure_under_load(server.base_url, home / "load", args.load_requests, args.concurrency)
    floors.append(("asyncio.to_thread round trip of a function doing nothing", hop))
    floors.append(("local store: write a 300-byte object inline (file + metadata)", inline_us))
    floors.append(("local store: the same through put (its thread hop)", put_us))
    report(marks, raw, floors, args.requests)
    report_under_load(done, args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--requests", type=int, default=None, help="timed sequential requests (default 500)")
    parser.add_argument("--load-requests", type=int, help="timed generates under load (default 3000; quick 300)")
    parser.add_argument("--concurrency", type=int, default=50, help="generates in flight under load (default 50)")
    parser.add_argument("--upstream-ms", type=float, default=50.0, help="the upstream's delay under load (default 50)")
    parser.add_argument("--home-dir", metavar="PATH", help="where the temporary IMAGEGEN_HOME goes")
    args = parser.parse_args(argv)
    args.requests = args.requests or (50 if args.quick else 500)
    args.load_requests = args.load_requests or (300 if args.quick else 3000)
    if min(args.requests, args.load_requests, args.concurrency) < 1 or args.upstream_ms < 0:
        parser.error("counts must be positive and --upstream-ms not negative")
    args.warmup = 10 if args.quick else 50
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
