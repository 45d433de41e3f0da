"""A race's image work (decode, fit, encode) runs in the process's image threads, one per core, apart from the
event loop's default executor: a burst of large images neither starves the answers of requests already decided
nor shares the cores so that every image finishes late (measured: bench/image_burst.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest

import imagegen_core.service as service
from imagegen_core.images import in_image_worker
from imagegen_core.workers import usable_cores
from tests.children import child_exit_code
from tests.test_service import fakes, make_gen

BURST = 8


class BlockedImageWork:
    """Stands in for ``normalize_to_webp``: counts the calls that start and how many run at once, and holds
    each until released (so the image threads stay busy as with large images)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = 0
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()
        self._real = service.normalize_to_webp

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.started += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            self.release.wait(timeout=30)
            return self._real(*args, **kwargs)
        finally:
            with self._lock:
                self.running -= 1


async def test_a_burst_of_image_work_runs_one_per_core_and_leaves_the_answers_their_threads(
    settings_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight requests whose images are still being normalised at the deadline: at most one image per core was
    worked on at a time, each request answered in time with the default image already stored (its drawing and
    its file write did not wait behind the images), and the images of requests whose deadline passed before
    their turn were never worked on. In the default executor (6 threads here) six ran at once and the default
    image was answered before it was stored."""
    work = BlockedImageWork()
    monkeypatch.setattr(service, "normalize_to_webp", work)
    doc = fakes(a={"latencyMs": 0})
    doc["defaults"] = {"timeout": 1500}
    doc["race"] = {"finalizeReserve": 500}
    default_file = Path("images", "ai", "defaults", "default-300x200.webp")
    try:
        async with make_gen(settings_factory, doc) as gen:
            loop = asyncio.get_running_loop()

            async def one(i: int) -> tuple[float, bool]:
                t0 = loop.time()
                result = await gen.generate({"prompt": f"burst {i}", "width": 300, "height": 200})
                assert not result.success and result.provider == "default", result
                return loop.time() - t0, (gen.settings.home / default_file).is_file()

            answers = await asyncio.gather(*(one(i) for i in range(BURST)))
            work.release.set()
            assert all(elapsed <= 1.5 for elapsed, _ in answers), answers
            assert all(stored for _, stored in answers), "a default image was answered before it was stored"
        cores = usable_cores()
        assert work.most_at_once == min(cores, BURST)
        await asyncio.sleep(0.3)  # the released calls end; one still queued would start now
        assert work.started == min(cores, BURST)
    finally:
        work.release.set()


async def test_image_work_cancelled_before_its_turn_never_runs_and_the_next_call_does() -> None:
    """The image threads are shared by the process: while every one is busy, a call waits; cancelling the wait
    drops the call (it never starts), and the threads go on with the calls after it."""
    cores = usable_cores()
    release = threading.Event()
    ran: list[str] = []

    def busy() -> None:
        release.wait(timeout=30)

    def record(name: str) -> str:
        ran.append(name)
        return name

    try:
        holding = [asyncio.ensure_future(in_image_worker(busy)) for _ in range(cores)]
        dropped = asyncio.ensure_future(in_image_worker(lambda: record("dropped")))
        kept = asyncio.ensure_future(in_image_worker(lambda: record("kept")))
        await asyncio.sleep(0.1)
        assert not dropped.done() and not kept.done()  # every thread busy: both wait their turn
        dropped.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dropped  # its call is withdrawn by then (the withdrawal runs as a callback of the loop)
        release.set()
        assert await asyncio.wait_for(kept, timeout=10) == "kept"
        await asyncio.gather(*holding)
        assert ran == ["kept"]
    finally:
        release.set()


def test_a_forked_child_gets_image_threads_of_its_own(tmp_path: Path) -> None:
    """A child forked after the parent used its image threads has none of them: it gets a new pool, so its
    image work runs instead of waiting forever."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    asyncio.run(in_image_worker(lambda: None))  # the parent's threads exist now
    marker = tmp_path / "child-ran"
    pid = os.fork()
    if pid == 0:  # the child: report through a file, leave without pytest's clean-up
        code = 1
        try:
            asyncio.run(asyncio.wait_for(in_image_worker(marker.touch), timeout=5))
            code = 0
        finally:
            os._exit(code)
    code = child_exit_code(pid, timeout_s=20, what="the forked child's image work never ran")
    assert code == 0 and marker.is_file()
