"""The API process says when its event loop did not run: every answer due in that time went out late by as much,
and no request's ``elapsedMs`` showed it (it starts when the loop reads the request). QA: a CMS saw answers ~1 s
late while the server's own slowest answer was 1.1 s, and nothing on the server said why."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import httpx
import pytest

from imagegen_core.api import create_app
from imagegen_core.api.loop_watch import STALL_WARN_S, LoopStalls, watch_loop
from imagegen_core.service import ImageGen

from .conftest import ADMIN, fakes, live_server


async def block_loop(seconds: float) -> None:
    """Hold the running loop for ``seconds`` (as a blocking call in a coroutine does), then let the watch wake."""
    await asyncio.sleep(0)
    time.sleep(seconds)  # the point: nothing else on this loop runs meanwhile
    await asyncio.sleep(0.1)


async def test_a_stall_is_counted_and_logged_with_how_long_it_was(caplog: pytest.LogCaptureFixture) -> None:
    stalls = LoopStalls()
    caplog.set_level(logging.WARNING, logger="imagegen.api")
    watch = asyncio.create_task(watch_loop(stalls, tick_s=0.02, warn_s=0.15))
    try:
        await asyncio.sleep(0.3)  # an idle loop: wake-ups a few ms late at most
        idle = stalls.count  # 0 but on a machine too loaded to run this loop for 150 ms: that is a stall too
        await block_loop(0.4)
    finally:
        watch.cancel()
    assert stalls.count == idle + 1 and 350 <= stalls.last_ms < 1500  # type: ignore[operator]
    assert stalls.longest_ms >= stalls.last_ms
    assert stalls.last_at is not None and abs(stalls.last_at - time.time()) < 5
    line = caplog.records[-1]
    assert line.levelno == logging.WARNING and "event loop did not run for" in line.getMessage()
    assert 350 <= line.blockedMs < 1500  # type: ignore[attr-defined]


async def test_a_run_of_stalls_is_one_line_per_quiet_period_that_counts_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stalls = LoopStalls()
    caplog.set_level(logging.WARNING, logger="imagegen.api")
    watch = asyncio.create_task(watch_loop(stalls, tick_s=0.02, warn_s=0.1, quiet_s=1.5))
    try:
        await asyncio.sleep(0.1)
        await block_loop(0.2)  # logged
        await block_loop(0.2)  # counted, not logged: within quiet_s of the line
        await block_loop(0.2)
        assert (stalls.count, len(caplog.records)) == (3, 1)
        await asyncio.sleep(1.5)
        await block_loop(0.2)  # logged, saying it stands for the two before it as well
    finally:
        watch.cancel()
    assert stalls.count == 4
    first, second = caplog.records
    assert first.stalls == 1 and second.stalls == 3  # type: ignore[attr-defined]
    assert "(2 more since the last such line)" in second.getMessage()


def test_admin_status_says_how_often_and_how_long_the_servers_loop_stalled(
    make_gen: Callable[..., ImageGen],
) -> None:
    app = create_app(make_gen(fakes(painter={"latencyMs": 1})))

    async def blocking() -> dict[str, str]:  # an embedder's route with a blocking call in a coroutine
        time.sleep(0.5)
        return {"status": "done"}

    app.add_api_route("/blocking", blocking)
    with live_server(app) as base:
        before = httpx.get(f"{base}/admin/status", headers=ADMIN, timeout=30).json()["service"]["eventLoop"]
        assert httpx.get(f"{base}/blocking", timeout=30).status_code == 200
        time.sleep(0.3)  # the watch wakes after the stall
        after = httpx.get(f"{base}/admin/status", headers=ADMIN, timeout=30).json()["service"]["eventLoop"]
    # Before: none, but on a machine too loaded to run the server's loop for 250 ms (that is a stall too).
    assert before["stalls"] == 0 or before["longestStallMs"] >= before["stallThresholdMs"]
    assert before["stallThresholdMs"] == round(STALL_WARN_S * 1000)
    assert after["stalls"] == before["stalls"] + 1 and 400 <= after["lastStallMs"] < 2000  # 500 ms, less up to one tick
    assert after["longestStallMs"] >= after["lastStallMs"] and after["lastStallAt"].endswith("+00:00")
