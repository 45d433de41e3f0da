"""The spool's background retry: pauses that grow while the store refuses, everything uploaded once it is
back, then it stops; a flush held by another process only postpones it; closing stops it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from imagegen_core.errors import StorageError
from imagegen_core.storage import LocalStore, Spool
from imagegen_core.storage.base import StoredObject
from imagegen_core.storage.retry import SpoolRetrier


class Flaky(LocalStore):
    """A local store that refuses uploads while ``down``."""

    down = True

    async def put(self, key: str, data: bytes, **kwargs: Any) -> StoredObject:
        if self.down:
            raise StorageError("the store is down")
        return await super().put(key, data, **kwargs)


class Pauses:
    """A sleep that records its pauses and brings the store back after ``heal_after`` of them."""

    def __init__(self, store: Flaky, heal_after: int) -> None:
        self.store, self.heal_after, self.seen = store, heal_after, []

    async def __call__(self, seconds: float) -> None:
        self.seen.append(seconds)
        if len(self.seen) > self.heal_after:
            self.store.down = False
        await asyncio.sleep(0)


async def until_idle(retrier: SpoolRetrier, timeout_s: float = 10) -> None:
    """Until the retry has ended (flushes run in worker threads: real time passes)."""
    async with asyncio.timeout(timeout_s):
        while retrier.running:
            await asyncio.sleep(0.01)


def keep(spool: Spool, key: str) -> None:
    spool.keep(key, b"webp bytes", content_type="image/webp", cache_control="public", metadata={})


async def test_pauses_grow_while_the_store_refuses_and_it_stops_once_all_is_uploaded(tmp_path: Path) -> None:
    store, spool = Flaky(tmp_path / "images"), Spool(tmp_path / "spool")
    pauses = Pauses(store, heal_after=4)
    moved: list[str] = []
    retrier = SpoolRetrier(spool, store, on_moved=moved.extend, sleep=pauses)
    retrier.first_pause_s, retrier.max_pause_s = 30, 200
    keep(spool, "ai/2026/11/a.webp")
    keep(spool, "ai/2026/11/b.webp")
    retrier.wake()
    retrier.wake()  # a second image kept meanwhile: still one retry
    await until_idle(retrier)
    assert not retrier.running and pauses.seen == [30, 60, 120, 200, 200]
    assert sorted(moved) == ["ai/2026/11/a.webp", "ai/2026/11/b.webp"] and spool.entries() == []
    assert (tmp_path / "images" / "ai" / "2026" / "11" / "a.webp").read_bytes() == b"webp bytes"


async def test_a_flush_held_by_another_process_only_postpones_the_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, spool = Flaky(tmp_path / "images"), Spool(tmp_path / "spool")
    store.down = False
    held = [2]  # the first two tries find another process's flush under way

    real_flush = Spool.flush

    async def flush(self: Spool, target: Any, **kwargs: Any) -> Any:
        if held[0]:
            held[0] -= 1
            raise StorageError("another flush of the spool is running; try again later")
        return await real_flush(self, target, **kwargs)

    monkeypatch.setattr(Spool, "flush", flush)
    pauses = Pauses(store, heal_after=0)
    retrier = SpoolRetrier(spool, store, sleep=pauses)
    keep(spool, "ai/2026/11/a.webp")
    retrier.wake()
    await until_idle(retrier)
    assert len(pauses.seen) == 3 and spool.entries() == []


async def test_closing_stops_the_retry_and_leaves_the_spool_as_it_is(tmp_path: Path) -> None:
    store, spool = Flaky(tmp_path / "images"), Spool(tmp_path / "spool")
    retrier = SpoolRetrier(spool, store)  # the real sleep: 30 s before the first try
    keep(spool, "ai/2026/11/a.webp")
    retrier.wake()
    assert retrier.running
    await retrier.aclose()
    assert not retrier.running and [e.key for e in spool.entries()] == ["ai/2026/11/a.webp"]


async def test_a_spool_folder_that_cannot_be_used_only_postpones_the_retry(tmp_path: Path) -> None:
    """A file in the spool folder's place (or no permission) used to end the background retry for good with
    an OSError, so kept images waited for a manual flush even after the folder was put right."""
    store, spool = Flaky(tmp_path / "images"), Spool(tmp_path / "spool")
    store.down = False
    keep(spool, "ai/2026/11/a.webp")
    (tmp_path / "spool").rename(tmp_path / "moved-away")
    (tmp_path / "spool").write_bytes(b"not a folder")

    class PutRightAfterTwo(Pauses):
        async def __call__(self, seconds: float) -> None:
            if len(self.seen) == 2:  # an operator fixes the folder
                (tmp_path / "spool").unlink()
                (tmp_path / "moved-away").rename(tmp_path / "spool")
            await super().__call__(seconds)

    pauses = PutRightAfterTwo(store, heal_after=0)
    moved: list[str] = []
    retrier = SpoolRetrier(spool, store, on_moved=moved.extend, sleep=pauses)
    retrier.wake()
    await until_idle(retrier)
    assert len(pauses.seen) == 3 and moved == ["ai/2026/11/a.webp"] and spool.entries() == []


async def test_damaged_entries_are_named_once_and_not_blamed_on_the_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression (QA): the retrier logged "the store still refuses kept images" every pause while a healthy
    store waited behind three damaged entries."""
    store, spool = Flaky(tmp_path / "images"), Spool(tmp_path / "spool")
    store.down = False
    for name in "abcde":
        keep(spool, f"ai/2026/11/{name}.webp")
    for entry in spool.entries()[:3]:
        entry.data_path.write_bytes(b"rot")
    retrier = SpoolRetrier(spool, store, sleep=Pauses(store, heal_after=0))
    with caplog.at_level("INFO", logger="imagegen.storage"):
        retrier.wake(now=True)
        await until_idle(retrier)
    messages = [r.getMessage() for r in caplog.records]
    assert not any("refuses" in m for m in messages)
    assert sum("set aside" in m for m in messages) == 3 and spool.entries() == []
