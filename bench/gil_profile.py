"""Where imagegen's CPU goes under load, next to a raw client's: time holding the GIL per request, by library.

Issue 7 asks for 850 requests/s at 50 in flight with a 50 ms upstream (scenario (b) of ``vs_litellm.py``).
A Python process runs its Python code on one core at a time, so the ceiling is set by how long each request
holds the GIL, in every thread together. This benchmark measures that, for a plain aiohttp client (the
baseline: the POST imagegen's OpenAI provider makes) and for ``ImageGen.generate``, in one run:

- each side runs in a child process (project venv) against the same fake OpenAI-style server on 127.0.0.1
  (``_fakeserver.py``): one untimed round at full width, then ``--requests`` calls at ``--concurrency`` in
  flight against a ``--upstream-ms`` upstream;
- ``py-spy record --gil`` samples that child at ``--rate`` Hz while, and only while, the timed calls run
  (it attaches after the warm-up; the child waits for it). With ``--gil`` a sample is taken only when some
  thread holds the GIL, so samples / rate is the time the GIL was held;
- printed: requests/s, GIL-held ms per request and its ratio to the raw client's; for ImageGen, that time
  split by the library of the innermost Python frame (the code that held the GIL), and imagegen's own
  functions that held it longest. If one request holds the GIL for g ms, one process cannot pass 1000 / g
  requests/s, whatever its event loop does.

py-spy comes from ``--py-spy``, else ``PATH``, else is installed on the first run into ``bench/.venv-pyspy``
(PyPI). It attaches with ptrace: as root, or where ``/proc/sys/kernel/yama/ptrace_scope`` allows it.

Run from the project root: ``.venv/bin/python bench/gil_profile.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from _fakeserver import Behaviour, FakeImageServer, ServerError, provider_url
from _measure import Op, timed_concurrent
from vs_litellm import BEHAVIOURS, BenchError, load_imagegen, raw_op

HERE = Path(__file__).resolve().parent
PYSPY_VENV = HERE / ".venv-pyspy"
RESULT_MARKER = "GIL-PROFILE-RESULT "
READY, GO, DONE = "READY", "GO", "DONE"

#: Libraries a sampled frame is counted under, by a fragment of its file's path (first match wins).
GROUPS = [
    ("imagegen_core", "imagegen_core/"),
    ("httpx (and its aiohttp transport)", "httpx"),
    ("aiohttp", "aiohttp/"),
    ("asyncio (the event loop)", "asyncio/"),
    ("selectors (the loop's poll)", "selectors.py"),
    ("json", "json/"),
    ("threading, concurrent.futures (thread hops)", "threading.py"),
    ("threading, concurrent.futures (thread hops)", "concurrent/"),
    ("Pillow (decode, resize, encode)", "PIL/"),
    ("tenacity (retries)", "tenacity/"),
    ("sqlite3 (the log's writer)", "sqlite3/"),
    ("base64", "base64.py"),
]


# --------------------------------------------------------------------------------------------------
# The child: one side's calls, timed, with a hand-shake around them for the profiler


def _handshake(out: IO[str], word: str) -> None:
    """Say ``word`` to the parent, then wait for its next line (it attaches or detaches the profiler)."""
    print(word, file=out, flush=True)
    sys.stdin.readline()


async def _measured(op: Op, requests: int, width: int, settle: Callable[[], Any]) -> dict[str, float]:
    await asyncio.gather(*(op() for _ in range(width)))  # warm-up: connections, caches, the log's tables
    await settle()
    await asyncio.to_thread(_handshake, sys.stdout, READY)
    cpu0, t0 = time.process_time(), time.perf_counter()
    await timed_concurrent(op, requests, width)
    await settle()  # imagegen's queued log rows are part of its work
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await asyncio.to_thread(_handshake, sys.stdout, DONE)
    return {"rps": requests / elapsed, "cpu_ms": cpu * 1000 / requests, "seconds": elapsed}


async def _nothing() -> None:
    return None


async def child_raw(base_url: str, requests: int, width: int) -> dict[str, float]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        url = provider_url(base_url, "load") + "/v1/images/generations"
        return await _measured(raw_op(session, url), requests, width, _nothing)


async def child_imagegen(base_url: str, requests: int, width: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="imagegen-gil-profile-") as home:
        async with load_imagegen(home, base_url) as (gen, op):
            return await _measured(op, requests, width, gen.flush)


def child_main(side: str, base_url: str, requests: int, width: int) -> int:
    run = child_raw if side == "raw" else child_imagegen
    result = asyncio.run(run(base_url, requests, width))
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0


# --------------------------------------------------------------------------------------------------
# The parent: py-spy around each child, the samples read back


def find_py_spy(given: str | None) -> str:
    """``given``, else py-spy on PATH, else ``bench/.venv-pyspy``'s (made and installed on first run)."""
    if given:
        return given
    if found := shutil.which("py-spy"):
        return found
    binary = PYSPY_VENV / "bin" / "py-spy"
    if not binary.exists():
        print(f"creating {PYSPY_VENV.relative_to(HERE.parent)} and installing py-spy (once) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(PYSPY_VENV)], check=True)
        pip = [str(PYSPY_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "py-spy"], check=True)
    return str(binary)


def _expect(child: subprocess.Popen[str], word: str) -> None:
    assert child.stdout is not None
    for line in child.stdout:
        if line.strip() == word:
            return
        print(f"  child: {line.rstrip()}", file=sys.stderr)
    raise BenchError(f"the child ended before saying {word} (exit code {child.wait()})")


def profile_side(side: str, py_spy: str, base_url: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Run one side in a child, sampled by py-spy during its timed calls only; its result and raw stacks."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--base-url", base_url]
    command += ["--requests", str(args.requests), "--concurrency", str(args.concurrency)]
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    spy: subprocess.Popen[bytes] | None = None
    try:
        _expect(child, READY)
        spy_command = [py_spy, "record", "--pid", str(child.pid), "--gil", "--threads", "--nonblocking"]
        spy_command += ["--rate", str(args.rate), "--format", "raw", "--output", str(out)]
        spy = subprocess.Popen(spy_command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # py-spy attaching: a sample missed here is a sample of nothing (the child waits)
        if spy.poll() is not None:
            raise BenchError(f"py-spy did not start: {spy.stderr.read().decode().strip() if spy.stderr else ''}")
        child.stdin.write(GO + "\n")
        child.stdin.flush()
        _expect(child, DONE)
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl+C
        if spy.wait(timeout=60) not in (0, -signal.SIGINT):
            raise BenchError(f"py-spy exited with {spy.returncode}")
        child.stdin.write(GO + "\n")
        child.stdin.flush()
        lines = child.stdout.read().splitlines()
        if child.wait(timeout=60) != 0:
            raise BenchError(f"the {side} child exited with {child.returncode}")
    finally:
        for proc in (spy, child):
            if proc is not None and proc.poll() is None:
                proc.kill()
    found = [line for line in lines if line.startswith(RESULT_MARKER)]
    if not found:
        raise BenchError(f"the {side} child printed no result")
    result: dict[str, Any] = json.loads(found[-1].removeprefix(RESULT_MARKER))
    result["stacks"] = read_stacks(out)
    return result


def read_stacks(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's raw format: one ``frame;frame;...;frame count`` line per distinct stack (the thread first)."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^:()]*)(?::\d+)?\)$")


def _where(frame: str) -> tuple[str, str]:
    """(function, file) of one py-spy frame, ``name (path/file.py:line)``."""
    match = _FRAME.match(frame)
    return (match["function"], match["file"]) if match else (frame, "")


def group_of(path: str) -> str:
    for name, fragment in GROUPS:
        if fragment in path:
            return name
    return "other (the standard library, pydantic, the benchmark's own loop)"


def split(stacks: list[tuple[list[str], int]]) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """Samples in all; by library of the innermost frame; by imagegen_core function of the innermost frame."""
    total, groups, own = 0, collections.Counter[str](), collections.Counter[str]()
    for frames, count in stacks:
        total += count
        function, path = _where(frames[-1])
        groups[group_of(path)] += count
        if "imagegen_core/" in path:
            own[f"{function} ({path.split('imagegen_core/')[-1]})"] += count
    return total, groups, own


# --------------------------------------------------------------------------------------------------
# Report


def report(args: argparse.Namespace, raw: dict[str, Any], mine: dict[str, Any]) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"imagegen GIL profile: {now}, Python {platform.python_version()}, {platform.machine()} with "
        f"{os.cpu_count()} cores, {platform.system()} {platform.release()}"
    )
    print(
        f"\n### {args.requests} requests at {args.concurrency} in flight, {args.upstream_ms:g} ms upstream; "
        f"py-spy --gil at {args.rate} Hz during the timed calls only\n"
    )
    print("| side | req/s | CPU ms / request | GIL-held ms / request | samples | req/s ceiling of one process |")
    print("|---|---:|---:|---:|---:|---:|")
    held = {}
    for label, side in (("raw aiohttp client (baseline)", raw), ("ImageGen.generate", mine)):
        samples, _, _ = split(side["stacks"])
        held[label] = samples / args.rate * 1000 / args.requests
        ceiling = 1000 / held[label] if held[label] > 0 else float("inf")
        print(f"| {label} | {side['rps']:.0f} | {side['cpu_ms']:.2f} | {held[label]:.2f} | {samples} | {ceiling:.0f} |")
    base = held["raw aiohttp client (baseline)"]
    ratio = f"{held['ImageGen.generate'] / base:.1f}x" if base > 0 else "n/a"
    print(f"\nImageGen holds the GIL {ratio} as long per request as the raw client.")

    samples, groups, own = split(mine["stacks"])
    print("\n### ImageGen's GIL-held time by the library of the innermost frame\n")
    print("| library | ms / request | share |")
    print("|---|---:|---:|")
    for name, count in groups.most_common():
        print(f"| {name} | {count / args.rate * 1000 / args.requests:.3f} | {count / samples:.1%} |")
    print(
        f"\n### imagegen_core's own functions (innermost frame), the {args.top} longest; {len(own)} functions in all\n"
    )
    print("| function | ms / request | share |")
    print("|---|---:|---:|")
    for name, count in own.most_common(args.top):
        print(f"| {name} | {count / args.rate * 1000 / args.requests:.3f} | {count / samples:.1%} |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run (600 requests)")
    parser.add_argument("--requests", type=int, help="timed requests per side (default 5000; quick 600)")
    parser.add_argument("--concurrency", type=int, default=50, help="requests in flight (default 50)")
    parser.add_argument("--upstream-ms", type=float, default=50.0, help="the fake server's delay (default 50)")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second (default 250)")
    parser.add_argument("--top", type=int, default=15, help="imagegen_core functions listed (default 15)")
    parser.add_argument("--py-spy", metavar="PATH", help="the py-spy binary (default: PATH, else bench/.venv-pyspy)")
    parser.add_argument("--child", choices=("raw", "imagegen"), help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.requests = args.requests or (600 if args.quick else 5000)
    if min(args.requests, args.concurrency, args.rate, args.top) < 1 or args.upstream_ms < 0:
        parser.error("counts and the rate must be positive, --upstream-ms not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child, args.base_url, args.requests, args.concurrency)
    behaviours = {**BEHAVIOURS, "load": Behaviour(median_ms=args.upstream_ms)}
    try:
        py_spy = find_py_spy(args.py_spy)
        with FakeImageServer(behaviours) as server, tempfile.TemporaryDirectory(prefix="gil-profile-") as tmp:
            print(f"fake server at {server.base_url}; py-spy {py_spy}", file=sys.stderr)
            raw = profile_side("raw", py_spy, server.base_url, args, Path(tmp) / "raw.txt")
            mine = profile_side("imagegen", py_spy, server.base_url, args, Path(tmp) / "imagegen.txt")
    except (BenchError, ServerError, OSError, subprocess.SubprocessError) as exc:
        print(f"\nbenchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    report(args, raw, mine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
