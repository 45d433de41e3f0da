"""``/health`` and the store's check (QA): each unauthenticated ``/health`` made one R2 listing (a billed
operation), uncached, on the threads that upload images; 48 looping callers against a slow S3 (1.8 s listings)
made generates take 1.8-2.4 s instead of 56-296 ms. Now an answer is reused for ``STORE_CHECK_TTL_S``,
failures too, and callers that arrive while a check runs share it. The clock is injected: no test sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from imagegen_core.api import create_app
from imagegen_core.api.probes import STORE_CHECK_TTL_S, StoreCheckCache
from imagegen_core.errors import StorageError
from imagegen_core.service import ImageGen
from imagegen_core.storage.local import LocalStore

from .conftest import ADMIN


class CountingStore(LocalStore):
    """A local store whose check counts its calls (an R2 check is one listing), holds each until ``release``
    is set, and fails while ``broken``."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.checks = 0
        self.broken = False
        self.release = asyncio.Event()
        self.release.set()

    async def check(self) -> None:
        self.checks += 1
        await self.release.wait()
        if self.broken:
            raise StorageError("the bucket answered 500")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingCache(StoreCheckCache):
    """The app's cache, also counting the calls that reached it (``arrived`` is set at ``expected``)."""

    def __init__(self, clock: Clock, *, expected: int = 0) -> None:
        super().__init__(clock=clock)
        self.calls, self.expected, self.arrived = 0, expected, asyncio.Event()

    async def check(self, store: Any, *, wait_s: float = 2.0, reveal: bool = False) -> dict[str, Any]:
        self.calls += 1
        if self.calls == self.expected:
            self.arrived.set()
        return await super().check(store, wait_s=wait_s, reveal=reveal)


def client_for(gen: ImageGen, cache: StoreCheckCache) -> httpx.AsyncClient:
    app = create_app(gen)
    app.state.ctx.store_checks = cache
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def test_fifty_concurrent_health_calls_make_one_listing_and_another_only_after_the_interval(
    make_gen: Callable[..., ImageGen], tmp_path: Path
) -> None:
    store = CountingStore(tmp_path / "images")
    clock = Clock()
    cache = CountingCache(clock, expected=50)
    async with client_for(make_gen(store=store), cache) as client:
        store.release.clear()  # the first check stays under way until every call has reached the cache
        calls = [asyncio.create_task(client.get("/health")) for _ in range(50)]
        await asyncio.wait_for(cache.arrived.wait(), timeout=30)
        store.release.set()
        answers = await asyncio.gather(*calls)
        assert [a.status_code for a in answers] == [200] * 50
        assert store.checks == 1
        assert all(a.json()["checks"]["store"] == {"ok": True, "kind": "local"} for a in answers)

        clock.now += STORE_CHECK_TTL_S - 0.1
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/admin/status", headers=ADMIN)).json()["store"]["ok"] is True
        assert store.checks == 1  # within the interval: the same answer, /admin/status included

        clock.now += 0.1
        await asyncio.gather(*(client.get("/health") for _ in range(10)))
        assert store.checks == 2  # one more listing per interval, whatever the number of calls


async def test_a_failed_check_is_reused_for_the_interval_too_but_not_forever(
    make_gen: Callable[..., ImageGen], tmp_path: Path
) -> None:
    store = CountingStore(tmp_path / "images")
    store.broken = True
    clock = Clock()
    async with client_for(make_gen(store=store), StoreCheckCache(clock=clock)) as client:
        failed = await asyncio.gather(*(client.get("/health") for _ in range(20)))
        assert {a.status_code for a in failed} == {503}
        assert failed[0].json()["checks"]["store"] == {"ok": False, "kind": "local"}
        assert store.checks == 1

        store.broken = False  # the store is back: /health says so after the interval, not before
        clock.now += STORE_CHECK_TTL_S / 2
        assert (await client.get("/health")).status_code == 503
        assert store.checks == 1
        clock.now += STORE_CHECK_TTL_S / 2
        assert (await client.get("/health")).status_code == 200
        assert store.checks == 2


async def test_a_caller_that_goes_away_does_not_cancel_the_check_the_others_wait_for(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "images")
    store.release.clear()
    cache = StoreCheckCache(clock=Clock())
    first = asyncio.create_task(cache.check(store))
    while store.checks == 0:
        await asyncio.sleep(0)
    second = asyncio.create_task(cache.check(store))
    await asyncio.sleep(0)
    first.cancel()  # its client disconnected
    store.release.set()
    answer: dict[str, Any] = await second
    assert answer == {"ok": True, "kind": "local"} and store.checks == 1
    assert await cache.check(store) == answer and store.checks == 1


async def test_a_check_that_does_not_answer_in_time_is_a_failure_shared_by_every_caller(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "images")
    store.release.clear()  # never answers
    cache = StoreCheckCache(clock=Clock())
    answers = await asyncio.gather(*(cache.check(store, wait_s=0.05) for _ in range(5)))
    assert answers == [{"ok": False, "kind": "local"}] * 5
    assert store.checks == 1
