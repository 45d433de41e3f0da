"""imagegen vs LiteLLM's ``Router``, side by side, against the same local fake OpenAI-style image server.

The fake server (``bench/_fakeserver.py``) runs in its own process on 127.0.0.1 and serves several fake
providers, each under its own path: ``zero`` (answers at once), ``load`` (50 ms), ``slow`` (1 s),
``instant`` (answers at once; the backup everywhere) and ``failing`` (HTTP 500). Each answers
``POST /v1/images/generations`` with a 64x64 PNG as ``data[0].b64_json``.

- **imagegen** runs in this process (the project venv): ``ImageGen.generate`` with two ``openai``-type
  entries, ``primary`` (priority 1) and ``backup`` (priority 2), base URLs per entry, over
  ``make_http_client()``, with the local store and the SQLite log in a temporary ``IMAGEGEN_HOME``.
- **LiteLLM** runs in a subprocess in its own venv, ``bench/.venv-litellm`` (made on first run with
  ``python -m venv`` and ``pip install litellm==<pinned>``, reused after), and prints its figures as
  JSON: ``litellm.Router`` with two deployments, ``primary`` and ``backup``, ``fallbacks=[{"primary":
  ["backup"]}]``, ``num_retries=1``, ``allowed_fails=1``, ``cooldown_time=30``, and
  ``router.aimage_generation(model="primary", ...)``. LiteLLM runs with ``LITELLM_LOCAL_MODEL_COST_MAP``
  and ``LITELLM_OFFLINE_MODE`` set, so it fetches nothing from outside.
- **raw**: one ``POST`` with a plain ``aiohttp.ClientSession`` (the same body and headers, JSON parsed and
  the image base64-decoded), measured in each process, so each library's overhead is against its own
  process's raw call.

Measured, every scenario on a fresh ImageGen / Router:

a. sequential latency against ``zero``: p50/p99 of raw and of each library, and the overhead; then, to read
   imagegen's overhead, its normalise-to-WebP + store step timed alone (work LiteLLM does not do);
b. ``--concurrency`` in flight against ``load`` (``--upstream-ms``): requests/s, p50, p99, client CPU;
c. ``slow`` primary + ``instant`` backup, sequential: the answer time. imagegen runs it three times: hedged
   (``race.hedgeDelay`` = ``--hedge-ms``, default budget), the same with ``race.order = "fastest"`` (the
   provider that answered fastest recently starts first), and parallel;
d. ``failing`` primary + ``instant`` backup, 20 sequential requests: time per request and calls to the
   failing provider, per request.

Printed (Markdown, stdout): one table with imagegen, LiteLLM, their ratio and the goals of issue 7, then
the per-request details of (c) and (d). Progress goes to stderr. Exits non-zero if any call fails, if
the fake server's counts disagree with the calls expected, if the LiteLLM side fails, or if the server
does not shut down cleanly.

``--rounds N`` runs both sides N times, each going first in turn (the VM's speed drifts within minutes): the
full table is then the round whose (a) overhead ratio is the median, followed by every round's key ratios.

Run from the project root: ``.venv/bin/python bench/vs_litellm.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from _fakeserver import Behaviour, FakeImageServer, ServerError, fetch_stats, provider_url, small_png
from _home import file_create_us, home_parent, temporary_home
from _measure import Op, pct, timed_concurrent, timed_sequential

HERE = Path(__file__).resolve().parent
LITELLM_VENV = HERE / ".venv-litellm"
#: The version measured; pinned so that re-runs compare like with like (``--litellm-spec`` overrides).
LITELLM_SPEC = "litellm==1.110.2"
PROMPT = "a lighthouse at dusk"
IMAGE_SIZE = 64
#: What imagegen's OpenAIProvider sends for a 64x64 request (GPT image models have no smaller size).
OPENAI_SIZE = "1024x1024"
MODEL = "gpt-image-1"
DUMMY_KEY = "bench-dummy-openai-key"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RESULT_MARKER = "BENCH-RESULT "
T = TypeVar("T")

#: The fake providers; each scenario points ``primary`` and ``backup`` at two of them.
BEHAVIOURS = {
    "zero": Behaviour(),
    "load": Behaviour(median_ms=50),  # --upstream-ms replaces it
    "slow": Behaviour(median_ms=1000),
    "instant": Behaviour(),
    "failing": Behaviour(status=500),
}
SCENARIOS = {"a": ("zero", "instant"), "b": ("load", "instant"), "c": ("slow", "instant"), "d": ("failing", "instant")}


class BenchError(Exception):
    """A failed call or a count that does not add up: the figures would be meaningless."""


@dataclass(frozen=True)
class Plan:
    sequential: int
    warmup: int
    requests: int
    concurrency: int
    upstream_ms: float
    slow_requests: int
    failing_requests: int
    hedge_ms: int
    #: The event loop both sides run on: ``asyncio``'s own, or ``uvloop`` (what ``imagegen serve`` uses).
    loop: str = "asyncio"


def run_on(loop: str, coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)``, on uvloop's loop when ``loop`` is ``uvloop``."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


# --------------------------------------------------------------------------------------------------
# Measurement, shared by both sides (standard library only: the LiteLLM side runs in another venv)


async def sequential(op: Op, n: int, warmup: int) -> list[float]:
    """``n`` timed calls one after another (ms), after ``warmup`` untimed ones."""
    for _ in range(warmup):
        await op()
    return await timed_sequential(op, n)


async def concurrent(op: Op, total: int, width: int, settle: Callable[[], Awaitable[None]]) -> dict[str, Any]:
    """``total`` calls with ``width`` in flight, after one untimed round at full width. Wall time runs until
    ``settle`` (imagegen's queued log writes) is done too."""
    await asyncio.gather(*(op() for _ in range(width)))
    await settle()
    cpu0, t0 = time.process_time(), time.perf_counter()
    latencies = await timed_concurrent(op, total, width)
    await settle()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"latencies": latencies, "rps": total / elapsed, "cpu_ms": cpu * 1000 / total}


async def per_request(op: Op, n: int, base_url: str, names: tuple[str, str]) -> dict[str, list[Any]]:
    """``n`` sequential calls; for each, its time (ms), what ``op`` returned, and the calls each of
    ``names`` received (the server's counts before and after, read outside the timed region)."""
    times, answers, calls = [], [], []
    for _ in range(n):
        before = await asyncio.to_thread(fetch_stats, base_url)
        start = time.perf_counter()
        answers.append(await op())
        times.append((time.perf_counter() - start) * 1000)
        after = await asyncio.to_thread(fetch_stats, base_url)
        calls.append([after[name] - before[name] for name in names])
    return {"times": times, "answers": answers, "calls": calls}


async def _nothing() -> None:
    return None


def raw_op(session: Any, url: str) -> Op:
    """The baseline: the POST imagegen's OpenAIProvider makes, with a plain aiohttp session."""
    body = {"model": MODEL, "n": 1, "size": OPENAI_SIZE, "prompt": PROMPT}
    headers = {"Authorization": f"Bearer {DUMMY_KEY}"}

    async def op() -> None:
        async with session.post(url, json=body, headers=headers) as response:
            if response.status != 200:
                raise BenchError(f"raw call: HTTP {response.status}")
            answer = await response.json()
        if not base64.b64decode(answer["data"][0]["b64_json"]).startswith(PNG_SIGNATURE):
            raise BenchError("raw call: the image is not a PNG")

    return op


async def measure_raw(base_url: str, plan: Plan) -> dict[str, Any]:
    """Raw sequential (against ``zero``) and concurrent (against ``load``) figures of this process."""
    import aiohttp

    results: dict[str, Any] = {}
    async with aiohttp.ClientSession() as session:
        url = provider_url(base_url, "zero") + "/v1/images/generations"
        results["a"] = await sequential(raw_op(session, url), plan.sequential, plan.warmup)
    async with aiohttp.ClientSession() as session:
        url = provider_url(base_url, "load") + "/v1/images/generations"
        results["b"] = await concurrent(raw_op(session, url), plan.requests, plan.concurrency, _nothing)
    return results


# --------------------------------------------------------------------------------------------------
# imagegen side (this process, project venv)


def imagegen_document(primary_hedge: dict[str, Any] | None = None) -> dict[str, Any]:
    """Two ``openai`` entries; the built-ins off. ``race`` is hedged with a hedge delay that never fires at
    these upstream times (so one request makes one call, as with LiteLLM) unless ``primary_hedge`` says
    otherwise. ``breaker.minCalls`` 2: two failures in a row (ratio 1.0 >= 0.5) open the breaker for 30 s."""
    entry = {"type": "openai", "enabled": True, "timeout": 10_000, "retries": 1, "costPerImage": 0.0}
    race = {"mode": "hedged", "hedgeDelay": 1_000, "adaptiveHedge": False, **(primary_hedge or {})}
    return {
        "providers": {
            **{name: {"enabled": False} for name in ("replicate", "fal", "unsplash", "openai", "offline")},
            "primary": {**entry, "priority": 1},
            "backup": {**entry, "priority": 2},
        },
        "race": race,
        "breaker": {"minCalls": 2, "failureRatio": 0.5, "windowSize": 20, "breakDuration": 30_000},
    }


def bench_settings(home: Path | str, base_url: str, primary: str, backup: str) -> Any:
    """imagegen's settings for a benchmark: ``home`` as IMAGEGEN_HOME (its SQLite log and local store), no env
    file, the dummy OpenAI key, and the ``primary`` and ``backup`` entries pointed at those fake providers."""
    from imagegen_core import Settings

    return Settings(
        _env_file=None,  # never a stray .env from the working directory
        IMAGEGEN_HOME=str(home),
        IMAGEGEN_DATABASE_URL=None,
        IMAGEGEN_PUBLIC_BASE_URL=None,
        OPENAI_API_KEY=DUMMY_KEY,
        provider_base_urls={"primary": provider_url(base_url, primary), "backup": provider_url(base_url, backup)},
    )


@contextlib.asynccontextmanager
async def load_imagegen(home: Path | str, base_url: str) -> AsyncIterator[tuple[Any, Op]]:
    """Scenario (b)'s ImageGen in ``home`` (the ``load`` primary, the ``instant`` backup, the SQLite log and a
    local store), and an op that generates one image with it (BenchError when it fails); for the benchmarks
    that rerun that scenario (``gil_profile.py``, ``ceiling.py``)."""
    from imagegen_core import ImageGen
    from imagegen_core.service import make_http_client

    settings = bench_settings(home, base_url, "load", "instant")
    request = {"prompt": PROMPT, "width": IMAGE_SIZE, "height": IMAGE_SIZE}
    async with make_http_client() as client, ImageGen.from_settings(settings, http_client=client) as gen:
        gen.set_config(imagegen_document(), source="bench")

        async def op() -> None:
            result = await gen.generate(request)
            if not result.success:
                raise BenchError(f"imagegen: generate failed: {result.error}")

        yield gen, op


def normalise_and_store_op(root: Path) -> Op:
    """What ``generate`` does with the image after the provider answered and LiteLLM does not: decode and
    normalise the server's PNG to WebP at 64x64 on a worker thread, then store it in a local store under a
    fresh key, as ``generate`` does (same functions, same thread hops)."""
    from imagegen_core.images import normalize_to_webp
    from imagegen_core.storage.base import make_key
    from imagegen_core.storage.local import LocalStore

    png, store = small_png(), LocalStore(root)

    async def op() -> None:
        image = await asyncio.to_thread(normalize_to_webp, png, IMAGE_SIZE, IMAGE_SIZE)
        key = make_key("ai", now=datetime.now(UTC))
        meta = {"request-id": "0" * 32, "provider": "primary"}
        await store.put(
            key, image.data, content_type="image/webp", cache_control="public, max-age=31536000", metadata=meta
        )

    return op


async def run_imagegen(base_url: str, plan: Plan, home: Path) -> dict[str, Any]:
    from imagegen_core import ImageGen
    from imagegen_core.service import make_http_client

    request = {"prompt": PROMPT, "width": IMAGE_SIZE, "height": IMAGE_SIZE}
    results: dict[str, Any] = {}

    async def scenario(key: str, label: str, race: dict[str, Any] | None, body: Callable[[Any], Awaitable[Any]]) -> Any:
        settings = bench_settings(home / label, base_url, *SCENARIOS[key])
        async with make_http_client() as client:
            gen = ImageGen.from_settings(settings, http_client=client)
            async with gen:
                gen.set_config(imagegen_document(race), source="bench")
                if [e.name for e in gen.entrants()] != ["primary", "backup"]:
                    raise BenchError(f"unexpected entrants: {[e.name for e in gen.entrants()]}")
                return await body(gen)

    def op_for(gen: Any) -> Op:
        async def op() -> dict[str, Any]:
            result = await gen.generate(request)
            if not result.success or result.provider not in ("primary", "backup"):
                raise BenchError(f"imagegen: generate failed: provider={result.provider} error={result.error}")
            return {"provider": result.provider, "hedged": any(a.hedged for a in result.attempts)}

        return op

    progress("imagegen (a) sequential")
    results["a"] = await scenario("a", "a", None, lambda gen: sequential(op_for(gen), plan.sequential, plan.warmup))
    progress("imagegen (a) its normalise + store step alone")
    results["a_store"] = await sequential(normalise_and_store_op(home / "a-store"), plan.sequential, plan.warmup)
    progress("imagegen (b) concurrent")
    results["b"] = await scenario(
        "b", "b", None, lambda gen: concurrent(op_for(gen), plan.requests, plan.concurrency, gen.flush)
    )
    names = SCENARIOS["c"]
    progress(f"imagegen (c) slow primary, hedged after {plan.hedge_ms} ms")
    results["c"] = await scenario(
        "c",
        "c-hedged",
        {"hedgeDelay": plan.hedge_ms},
        lambda gen: per_request(op_for(gen), plan.slow_requests, base_url, names),
    )
    progress(f"imagegen (c) slow primary, order fastest, hedged after {plan.hedge_ms} ms")
    results["c_fastest"] = await scenario(
        "c",
        "c-fastest",
        {"hedgeDelay": plan.hedge_ms, "order": "fastest"},
        lambda gen: per_request(op_for(gen), plan.slow_requests, base_url, names),
    )
    progress("imagegen (c) slow primary, parallel")
    results["c_parallel"] = await scenario(
        "c",
        "c-parallel",
        {"mode": "parallel"},
        lambda gen: per_request(op_for(gen), plan.slow_requests, base_url, names),
    )
    progress("imagegen (d) failing primary")
    results["d"] = await scenario(
        "d", "d", None, lambda gen: per_request(op_for(gen), plan.failing_requests, base_url, SCENARIOS["d"])
    )
    return results


# --------------------------------------------------------------------------------------------------
# LiteLLM side (a subprocess in bench/.venv-litellm)


def litellm_router_kwargs() -> dict[str, Any]:
    """Router settings besides the model list: LiteLLM's documented fallbacks, retries and cooldowns."""
    return {
        "fallbacks": [{"primary": ["backup"]}],
        "num_retries": 1,  # as imagegen's "retries": 1
        "allowed_fails": 1,  # a deployment failing more than once in a minute cools down ...
        "cooldown_time": 30,  # ... for 30 s (imagegen: two failures open the breaker for 30 s)
    }


async def run_litellm(base_url: str, plan: Plan) -> dict[str, Any]:
    import litellm

    litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banners on the fallback path
    from litellm import Router

    def make_router(key: str) -> Any:
        primary, backup = SCENARIOS[key]
        deployments = [
            {
                "model_name": name,
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_base": provider_url(base_url, upstream) + "/v1",
                    "api_key": DUMMY_KEY,
                },
            }
            for name, upstream in (("primary", primary), ("backup", backup))
        ]
        return Router(model_list=deployments, **litellm_router_kwargs())

    def op_for(router: Any) -> Op:
        async def op() -> dict[str, Any]:
            response = await router.aimage_generation(model="primary", prompt=PROMPT, n=1, size=OPENAI_SIZE)
            if not base64.b64decode(response.data[0].b64_json or "").startswith(PNG_SIGNATURE):
                raise BenchError("litellm: the image is not a PNG")
            return {"hedged": False}

        return op

    results: dict[str, Any] = {}
    progress("LiteLLM (a) sequential")
    results["a"] = await sequential(op_for(make_router("a")), plan.sequential, plan.warmup)
    progress("LiteLLM (b) concurrent")
    results["b"] = await concurrent(op_for(make_router("b")), plan.requests, plan.concurrency, _nothing)
    progress("LiteLLM (c) slow primary")
    results["c"] = await per_request(op_for(make_router("c")), plan.slow_requests, base_url, SCENARIOS["c"])
    progress("LiteLLM (d) failing primary")
    results["d"] = await per_request(op_for(make_router("d")), plan.failing_requests, base_url, SCENARIOS["d"])
    return results


def worker_main(params: dict[str, Any]) -> int:
    """The LiteLLM side's entry point: raw and LiteLLM figures as one JSON line on stdout."""
    plan = Plan(**params["plan"])

    async def both() -> dict[str, Any]:
        raw = await measure_raw(params["base_url"], plan)
        return {"raw": raw, "side": await run_litellm(params["base_url"], plan)}

    results = run_on(plan.loop, both())
    print(RESULT_MARKER + json.dumps(results), flush=True)
    return 0


def ensure_litellm_venv(spec: str, loop: str) -> Path:
    """``bench/.venv-litellm``'s interpreter, with LiteLLM installed (made and installed on first run), and
    uvloop when the run uses it."""
    python = LITELLM_VENV / "bin" / "python"
    if not (python.exists() and _imports(python, "litellm")):
        progress(f"creating {LITELLM_VENV.relative_to(HERE.parent)} and installing {spec} (once) ...")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(LITELLM_VENV)], check=True)
        _pip_install(python, spec)
    if loop == "uvloop" and not _imports(python, "uvloop"):
        progress(f"installing uvloop into {LITELLM_VENV.relative_to(HERE.parent)} (once) ...")
        _pip_install(python, "uvloop")
    return python


def _imports(python: Path, module: str) -> bool:
    return subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode == 0


def _pip_install(python: Path, spec: str) -> None:
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", spec], check=True)


def litellm_version(python: Path) -> str:
    probe = "from importlib.metadata import version; print(version('litellm'))"
    return subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()


def run_litellm_side(python: Path, base_url: str, plan: Plan) -> dict[str, Any]:
    """Run the LiteLLM side in its venv; its stderr passes through, its stdout is searched for the result."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # the bundled cost map, not a download at import
    env["LITELLM_OFFLINE_MODE"] = "true"  # nothing fetched on LiteLLM's own initiative
    params = json.dumps({"base_url": base_url, "plan": asdict(plan)})
    proc = subprocess.run(
        [python, str(Path(__file__).resolve()), "--litellm-worker", params],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        timeout=600,
    )
    lines = proc.stdout.splitlines()
    for line in lines:
        if not line.startswith(RESULT_MARKER):
            print(f"  litellm stdout: {line}", file=sys.stderr)
    found = [line for line in lines if line.startswith(RESULT_MARKER)]
    if proc.returncode != 0 or not found:
        raise BenchError(f"the LiteLLM side failed (exit code {proc.returncode})")
    result: dict[str, Any] = json.loads(found[-1].removeprefix(RESULT_MARKER))
    return result


# --------------------------------------------------------------------------------------------------
# Checks and report


def check_calls(side: str, plan: Plan, results: dict[str, Any]) -> None:
    """(c) and (d): every request made the calls expected of it, as the server counted them."""
    for key in ("c", "c_parallel"):
        for request, (slow, instant) in enumerate(results.get(key, {}).get("calls", []), start=1):
            if slow != 1 or instant > 1:
                raise BenchError(f"{side} ({key}) request {request}: calls (slow, instant) = ({slow}, {instant})")
    for request, (slow, instant) in enumerate(results.get("c_fastest", {}).get("calls", []), start=1):
        if slow > 1 or instant != 1:  # the instant backup answers every request, first or as the hedge
            raise BenchError(f"{side} (c_fastest) request {request}: calls (slow, instant) = ({slow}, {instant})")
    for request, (failing, instant) in enumerate(results["d"]["calls"], start=1):
        if instant != 1 or failing > 2:
            raise BenchError(f"{side} (d) request {request}: calls (failing, instant) = ({failing}, {instant})")


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def _yes(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def filesystem_note(parent: Path, *, chosen: bool) -> str:
    """One line: where imagegen's home is, and what creating a file costs there and in the temporary folder
    (each stored image creates one; on this VM either may cost 15 µs or 800 µs, depending on the moment)."""
    temp = Path(tempfile.gettempdir())
    return (
        f"imagegen's IMAGEGEN_HOME: a temporary folder under {parent} "
        f"({'`--home-dir`' if chosen else 'beside the default home; `--home-dir` chooses'}). "
        f"Creating a file there: {file_create_us(parent):.0f} µs; under {temp}: {file_create_us(temp):.0f} µs "
        "(medians of 200)."
    )


def report(plan: Plan, version: str, mine: dict[str, Any], theirs: dict[str, Any]) -> None:
    ig, ll = mine["side"], theirs["side"]
    ig_raw, ll_raw = mine["raw"], theirs["raw"]
    from imagegen_core.workers import usable_cores

    cores = usable_cores()
    print(
        f"\nimagegen vs LiteLLM {version}: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python "
        f"{platform.python_version()}, {platform.machine()} with {cores} cores, "
        f"{platform.system()} {platform.release()}, both sides on the {plan.loop} event loop"
    )
    print(f"\n{mine['fs']}")
    # (a)
    over = {name: {p: overhead_ms(result, p) for p in (50, 99)} for name, result in (("ig", mine), ("ll", theirs))}
    backup_ms = pct(ig_raw["a"], 50)  # a raw call to an instant server, in imagegen's process
    # (c)
    c_ig, c_par, c_ll = ig["c"]["times"], ig["c_parallel"]["times"], ll["c"]["times"]
    c_fast = ig["c_fastest"]["times"]
    c_fast_slow_calls = sum(slow for slow, _ in ig["c_fastest"]["calls"])
    c_hedged = [t for t, a in zip(c_ig, ig["c"]["answers"], strict=True) if a["hedged"]]
    # (d): from the 3rd request on
    d_ig, d_ll = ig["d"]["times"][2:], ll["d"]["times"][2:]
    d_ig_calls = [failing for failing, _ in ig["d"]["calls"]]
    d_ll_calls = [failing for failing, _ in ll["d"]["calls"]]

    print(
        f"\n### imagegen vs LiteLLM Router (ms unless stated; a: {plan.sequential} sequential after {plan.warmup} "
        f"warm-up; b: {plan.requests} requests at {plan.concurrency} in flight, upstream {plan.upstream_ms:g} ms; "
        f"c: {plan.slow_requests} sequential; d: {plan.failing_requests} sequential)\n"
    )
    print("| measure | imagegen | LiteLLM | LiteLLM / imagegen | goal (issue 7) | goal |")
    print("|---|---:|---:|---:|---|---|")
    rows = [
        ("a. raw POST p50 / p99", ig_raw["a"], ll_raw["a"]),
        ("a. library p50 / p99", ig["a"], ll["a"]),
    ]
    for label, a, b in rows:
        print(
            f"| {label} | {pct(a, 50):.2f} / {pct(a, 99):.2f} | {pct(b, 50):.2f} / {pct(b, 99):.2f} "
            f"| {_ratio(pct(b, 50), pct(a, 50))} | | |"
        )
    ratio50 = over["ll"][50] / over["ig"][50] if over["ig"][50] > 0 else math.inf
    print(
        f"| a. overhead p50 (library - raw) | {over['ig'][50]:+.2f} | {over['ll'][50]:+.2f} "
        f"| {_ratio(over['ll'][50], over['ig'][50])} | ≥ 10x lower | {_yes(ratio50 >= 10)} |"
    )
    print(
        f"| a. overhead p99 | {over['ig'][99]:+.2f} | {over['ll'][99]:+.2f} "
        f"| {_ratio(over['ll'][99], over['ig'][99])} | | |"
    )
    # For reading the overhead, not for the goal: the part of it that is imagegen's product work.
    store_ms = pct(ig["a_store"], 50)
    routing = over["ig"][50] - store_ms
    print(f"| a. … of which normalise to WebP + store, timed alone (p50) | {store_ms:.2f} | (none) | | | |")
    print(
        f"| a. … overhead p50 without it (routing, validation, log) | {routing:+.2f} | {over['ll'][50]:+.2f} "
        f"| {_ratio(over['ll'][50], routing)} | (for reference) | |"
    )
    b_ig, b_ll = ig["b"], ll["b"]
    print(
        f"| b. requests/s (raw: {ig_raw['b']['rps']:.0f} / {ll_raw['b']['rps']:.0f}) | {b_ig['rps']:.0f} "
        f"| {b_ll['rps']:.0f} | {_ratio(b_ll['rps'], b_ig['rps'])} | ≥ 850 req/s | {_yes(b_ig['rps'] >= 850)} |"
    )
    for p in (50, 99):
        print(
            f"| b. p{p} | {pct(b_ig['latencies'], p):.1f} | {pct(b_ll['latencies'], p):.1f} "
            f"| {_ratio(pct(b_ll['latencies'], p), pct(b_ig['latencies'], p))} | | |"
        )
    print(
        f"| b. client CPU ms/request (raw: {ig_raw['b']['cpu_ms']:.2f} / {ll_raw['b']['cpu_ms']:.2f}) "
        f"| {b_ig['cpu_ms']:.2f} | {b_ll['cpu_ms']:.2f} | {_ratio(b_ll['cpu_ms'], b_ig['cpu_ms'])} | | |"
    )
    limit_c = backup_ms + 15
    print(
        f"| c. slow primary: answer p50; imagegen hedged after {plan.hedge_ms} ms, default budget "
        f"({len(c_hedged)} of {len(c_ig)} hedged) "
        f"| {pct(c_ig, 50):.1f} | {pct(c_ll, 50):.1f} | {_ratio(pct(c_ll, 50), pct(c_ig, 50))} "
        f"| ≤ backup + 15 = {limit_c:.1f} | {_yes(pct(c_ig, 50) <= limit_c)} |"
    )
    if c_hedged:
        print(
            f"| c. … the hedged requests only: p50 / max | {pct(c_hedged, 50):.1f} / {max(c_hedged):.1f} | | "
            f"| ≤ {limit_c:.1f} | {_yes(pct(c_hedged, 50) <= limit_c)} |"
        )
    print(
        f"| c. … imagegen with order fastest (same hedging; {c_fast_slow_calls} of {len(c_fast)} requests called "
        f"the slow primary): p50 / max | {pct(c_fast, 50):.1f} / {max(c_fast):.1f} | | "
        f"{_ratio(pct(c_ll, 50), pct(c_fast, 50))} | ≤ {limit_c:.1f} | {_yes(pct(c_fast, 50) <= limit_c)} |"
    )
    print(
        f"| c. … imagegen parallel: p50 / max | {pct(c_par, 50):.1f} / {max(c_par):.1f} | | "
        f"{_ratio(pct(c_ll, 50), pct(c_par, 50))} | ≤ {limit_c:.1f} | {_yes(pct(c_par, 50) <= limit_c)} |"
    )
    limit_d = backup_ms + 20
    print(
        f"| d. failing primary: time/request from the 3rd, p50 / max | {pct(d_ig, 50):.1f} / {max(d_ig):.1f} "
        f"| {pct(d_ll, 50):.1f} / {max(d_ll):.1f} | {_ratio(pct(d_ll, 50), pct(d_ig, 50))} "
        f"| ≤ backup + 20 = {limit_d:.1f} | {_yes(max(d_ig) <= limit_d)} |"
    )
    print(
        f"| d. calls to the failing provider: all / from the 3rd | {sum(d_ig_calls)} / {sum(d_ig_calls[2:])} "
        f"| {sum(d_ll_calls)} / {sum(d_ll_calls[2:])} | | 0 from the 3rd | {_yes(sum(d_ig_calls[2:]) == 0)} |"
    )
    print(
        f"\n(backup = a raw POST to the instant server, p50 {backup_ms:.2f} ms in imagegen's process; "
        "raw figures are \"imagegen's process / LiteLLM's process\"; goal c is judged on the p50 of each row, "
        "goal d on the slowest request from the 3rd on)"
    )

    print("\n### Per request: (c) slow primary and (d) failing primary (ms)\n")
    print(
        "| request | c. imagegen hedged | c. imagegen fastest | c. imagegen parallel | c. LiteLLM "
        "| d. imagegen (calls to failing) | d. LiteLLM (calls to failing) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for i in range(max(plan.slow_requests, plan.failing_requests)):
        cells = []
        columns = ((c_ig, ig["c"]["answers"]), (c_fast, ig["c_fastest"]["answers"]), (c_par, None), (c_ll, None))
        for seq, hedge in columns:
            mark = " (h)" if hedge is not None and i < len(hedge) and hedge[i]["hedged"] else ""
            cells.append(f"{seq[i]:.1f}{mark}" if i < len(seq) else "")
        for seq, calls in ((ig["d"]["times"], d_ig_calls), (ll["d"]["times"], d_ll_calls)):
            cells.append(f"{seq[i]:.1f} ({calls[i]})" if i < len(seq) else "")
        print(f"| {i + 1} | " + " | ".join(cells) + " |")
    print("\n((h): imagegen started the backup as a hedge in that request)")


# --------------------------------------------------------------------------------------------------
# Entry point


def parse_args(argv: list[str] | None = None) -> tuple[Plan, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--sequential", type=int, help="timed sequential requests in (a) (default 300; quick 50)")
    parser.add_argument("--requests", type=int, help="requests under load in (b) (default 1000; quick 200)")
    parser.add_argument("--concurrency", type=int, default=50, help="requests in flight in (b) (default 50)")
    parser.add_argument("--upstream-ms", type=float, default=50.0, help="server delay in (b) (default 50)")
    parser.add_argument("--slow-requests", type=int, help="sequential requests in (c) (default 20; quick 4)")
    parser.add_argument("--hedge-ms", type=int, default=5, help="imagegen's race.hedgeDelay in (c) (default 5)")
    parser.add_argument(
        "--home-dir", metavar="PATH", help="where imagegen's IMAGEGEN_HOME goes (default: beside the default home)"
    )
    parser.add_argument(
        "--loop", choices=("asyncio", "uvloop"), default="asyncio", help="event loop of both sides (default asyncio)"
    )
    parser.add_argument("--litellm-spec", default=LITELLM_SPEC, help=f"pip spec (default {LITELLM_SPEC})")
    parser.add_argument(
        "--rounds", type=int, default=1, help="rounds of both sides, each going first in turn (default 1)"
    )
    parser.add_argument("--litellm-worker", metavar="JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    plan = Plan(
        sequential=args.sequential or (50 if args.quick else 300),
        warmup=5 if args.quick else 20,
        requests=args.requests or (200 if args.quick else 1000),
        concurrency=args.concurrency,
        upstream_ms=args.upstream_ms,
        slow_requests=args.slow_requests or (4 if args.quick else 20),
        failing_requests=20,
        hedge_ms=args.hedge_ms,
        loop=args.loop,
    )
    if (
        min(plan.sequential, plan.requests, plan.concurrency, plan.slow_requests, args.rounds) < 1
        or plan.upstream_ms < 0
    ):
        parser.error("counts must be positive and --upstream-ms not negative")
    return plan, args


def main(argv: list[str] | None = None) -> int:
    plan, args = parse_args(argv)
    if args.litellm_worker:
        return worker_main(json.loads(args.litellm_worker))
    behaviours = {**BEHAVIOURS, "load": Behaviour(median_ms=plan.upstream_ms)}
    try:
        python = ensure_litellm_venv(args.litellm_spec, plan.loop)
        version = litellm_version(python)
        parent = home_parent(args.home_dir)
        with temporary_home("imagegen-vs-litellm-", args.home_dir) as tmp, FakeImageServer(behaviours) as server:
            fs = filesystem_note(parent, chosen=bool(args.home_dir))
            rounds = []
            for number in range(1, args.rounds + 1):
                # Each side goes first in every other round: the VM's speed drifts within minutes, and one
                # side always measured first would carry that drift into every ratio (bench/README.md).
                home = Path(tmp) / f"round-{number}"
                home.mkdir()
                ours = functools.partial(measure_imagegen, server.base_url, plan, home, fs)
                other = functools.partial(measure_litellm, python, version, server.base_url, plan)
                progress(f"round {number} of {args.rounds}")
                if number % 2:
                    rounds.append((ours(), other()))
                else:
                    theirs = other()
                    rounds.append((ours(), theirs))
    except (BenchError, ServerError, OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        print(f"\nbenchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    # The full table of the round whose overhead ratio is the median; every round's key ratios after it.
    ordered = sorted(rounds, key=lambda pair: overhead_ratio(*pair))
    report(plan, version, *ordered[(len(ordered) - 1) // 2])
    if len(rounds) > 1:
        report_rounds(rounds)
    return 0


def measure_imagegen(base_url: str, plan: Plan, home: Path, fs: str) -> dict[str, Any]:
    """imagegen's side of one round, in this process, with its own raw calls."""
    progress(f"raw calls in this process; fake server at {base_url}")
    mine: dict[str, Any] = {"raw": run_on(plan.loop, measure_raw(base_url, plan)), "fs": fs}
    mine["side"] = run_on(plan.loop, run_imagegen(base_url, plan, home))
    check_calls("imagegen", plan, mine["side"])
    return mine


def measure_litellm(python: Path, version: str, base_url: str, plan: Plan) -> dict[str, Any]:
    """LiteLLM's side of one round, in a subprocess of its venv."""
    progress(f"LiteLLM {version} in {python.parent.parent.name} (a subprocess)")
    theirs = run_litellm_side(python, base_url, plan)
    check_calls("LiteLLM", plan, theirs["side"])
    return theirs


def overhead_ms(result: dict[str, Any], p: float) -> float:
    """One side's (a) overhead at percentile ``p`` (ms): its library's call less its own process's raw call."""
    return pct(result["side"]["a"], p) - pct(result["raw"]["a"], p)


def overhead_ratio(mine: dict[str, Any], theirs: dict[str, Any]) -> float:
    """How many times lower imagegen's (a) p50 overhead is than LiteLLM's."""
    ours = overhead_ms(mine, 50)
    return overhead_ms(theirs, 50) / ours if ours > 0 else math.inf


def report_rounds(rounds: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    """One line per round: (a)'s overheads and (b)'s requests/s, each side's and their ratio; then the medians."""
    print(f"\n### Every round ({len(rounds)}; odd rounds imagegen first, even rounds LiteLLM first)\n")
    print(
        "| round | a. overhead p50 imagegen / LiteLLM | LiteLLM / imagegen | b. req/s imagegen / LiteLLM "
        "| imagegen / LiteLLM |"
    )
    print("|---:|---:|---:|---:|---:|")
    ratios_a, ratios_b = [], []
    for number, (mine, theirs) in enumerate(rounds, 1):
        ours, other = overhead_ms(mine, 50), overhead_ms(theirs, 50)
        rps_ours, rps_other = mine["side"]["b"]["rps"], theirs["side"]["b"]["rps"]
        ratios_a.append(overhead_ratio(mine, theirs))
        ratios_b.append(rps_ours / rps_other)
        print(
            f"| {number} | {ours:+.2f} / {other:+.2f} ms | {ratios_a[-1]:.2f}x | {rps_ours:.0f} / {rps_other:.0f} "
            f"| {ratios_b[-1]:.2f}x |"
        )
    print(f"| median | | {statistics.median(ratios_a):.2f}x | | {statistics.median(ratios_b):.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
