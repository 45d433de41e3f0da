"""The service when the store fails: the answer is the default image with ``success: false`` inside the
deadline, and the paid-for image waits in the spool for ``imagegen storage flush``."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from imagegen_core import ImageGen
from imagegen_core.errors import StorageError
from imagegen_core.images import draw_default_image
from imagegen_core.log.queries import recent_requests
from imagegen_core.storage import LocalStore, Spool, StoredObject
from imagegen_core.storage.base import store_destination
from imagegen_core.storage.spool import UPLOADED_BY_PROCESSES


class RefusingStore(LocalStore):
    """Refuses every upload, like R2 with a revoked token."""

    async def put(self, key: str, data: bytes, **kwargs: Any) -> StoredObject:
        raise StorageError("R2 rejected the credentials (SignatureDoesNotMatch) on upload: check R2_...")


class HangingStore(LocalStore):
    """Never finishes an upload, like R2 behind a dead network path."""

    async def put(self, key: str, data: bytes, **kwargs: Any) -> StoredObject:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_refused_upload_answers_the_default_image_and_keeps_the_image_in_the_spool(
    settings_factory: Any, tmp_path: Path
) -> None:
    store = RefusingStore(tmp_path / "bucket")
    async with ImageGen.from_settings(settings_factory(), store=store) as gen:
        result = await gen.generate({"prompt": "a lighthouse at dusk", "width": 640, "height": 360, "articleId": "a-7"})
        await gen.flush()
        assert not result.success and result.provider == "default" and result.key is None
        assert result.url == store.url_for("ai/defaults/default-640x360.webp")
        error = result.error or ""
        assert error.startswith("storing the image from offline failed: R2 rejected the credentials")
        assert "the image was kept in the spool as ai/" in error and "uploaded again in the background" in error
        assert (result.store_failed, result.image_kept) == (True, True)  # for embedders, without reading the text
        default_key = "ai/defaults/default-640x360.webp"
        # The answer's URL points at the default image, which the store refused too: it waits in the spool.
        spooled = {e.key: e for e in gen.spool.entries()}
        assert default_key in spooled and len(spooled) == 2
        default = spooled.pop(default_key)
        assert Image.open(io.BytesIO(gen.spool.read(default))).size == (640, 360)
        (entry,) = spooled.values()
        assert entry.key in error and entry.content_type == "image/webp"
        assert entry.metadata["provider"] == "offline"
        assert entry.metadata["prompt-sha256"] == hashlib.sha256(b"a lighthouse at dusk").hexdigest()
        assert entry.metadata["article-id"] == "a-7"
        assert Image.open(io.BytesIO(gen.spool.read(entry))).size == (640, 360)
        assert recent_requests(gen.log, limit=1)[0]["error"] == error  # the log row says so too
        # Once the store works again, the flush puts the image where the answer would have pointed.
        healthy = LocalStore(tmp_path / "bucket")
        assert sorted((await gen.spool.flush(healthy)).moved) == sorted([entry.key, default_key])
        assert await healthy.exists(entry.key) and gen.spool.entries() == []
        assert await healthy.exists(default_key)  # the URL answered during the outage serves now


@pytest.mark.looptime
async def test_an_upload_past_the_deadline_is_spooled_and_the_answer_still_comes_in_time(
    settings_factory: Any, tmp_path: Path
) -> None:
    async with ImageGen.from_settings(settings_factory(), store=HangingStore(tmp_path / "bucket")) as gen:
        gen.set_config({"defaults": {"timeout": 4000}})
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        result = await gen.generate({"prompt": "x", "width": 320, "height": 200})
        assert loop.time() - t0 <= 4.1  # the spool write may add a moment past the deadline, never a wait
        # QA: it said only "deadline reached"; a refused connection names the endpoint to check
        assert not result.success and (
            f"failed: the store ({store_destination(gen.store)}) did not answer in time: check that it is reachable"
            " (its endpoint, the network, a hung mount; a store only slow needs a longer defaults.timeout); the image"
            " was kept in the spool"
        ) in (result.error or ""), result.error
        await gen.flush()  # the default image is spooled after the answer
        assert sorted(e.key.startswith("ai/defaults/") for e in gen.spool.entries()) == [False, True]


async def test_the_shortest_deadline_still_stores_an_image_ready_in_time(settings_factory: Any) -> None:
    """QA: with ``defaults.timeout`` 100 ms (the least allowed) the upload's reserve (250 ms) was past before the
    image was ready, so every answer was the default image ("the store did not answer in time") though the local
    folder takes a millisecond. The upload now gets half of what is left."""
    async with ImageGen.from_settings(settings_factory()) as gen:
        gen.set_config({"defaults": {"timeout": 100}})
        await gen.warm_up()
        results = [await gen.generate({"prompt": f"p{i}", "width": 64, "height": 64}) for i in range(3)]
    assert [r.success for r in results] == [True] * 3, [r.error for r in results]


@pytest.mark.looptime
async def test_a_default_image_late_for_many_answers_is_said_once(
    settings_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """QA: 5 requests of one new size at once, the store hanging: 5 identical "not stored before the answer"
    lines. One store attempt, one line."""
    async with ImageGen.from_settings(settings_factory(), store=HangingStore(tmp_path / "bucket")) as gen:
        gen.set_config({"defaults": {"timeout": 2000}})
        with caplog.at_level(logging.WARNING, logger="imagegen"):
            results = await asyncio.gather(
                *(gen.generate({"prompt": f"p{i}", "width": 320, "height": 200}) for i in range(5))
            )
        assert all(not r.success for r in results)
        late = [r for r in caplog.records if "not stored before the answer" in r.getMessage()]
        assert len(late) == 1, [r.getMessage() for r in late]


async def test_a_default_image_the_store_refused_is_spooled_once_and_serves_after_a_flush(
    settings_factory: Any, tmp_path: Path
) -> None:
    """Every provider failing while the store is down: the answers point at the default image, which is kept
    in the spool once (not per request), so its URL serves after ``imagegen storage flush``."""
    store = RefusingStore(tmp_path / "bucket")
    kept: list[str] = []

    class CountingSpool(Spool):
        def keep(self, key: str, data: bytes, **kwargs: Any) -> Any:
            kept.append(key)
            return super().keep(key, data, **kwargs)

    spool = CountingSpool(tmp_path / "spool")
    async with ImageGen.from_settings(settings_factory(), store=store, spool=spool) as gen:
        gen.set_config({"providers": {"broken": {"type": "fake", "options": {"failureRate": 1.0}}}})
        results = []
        for _ in range(4):
            results.append(await gen.generate({"prompt": "x", "width": 320, "height": 200}))
            await gen.flush()
        assert kept == ["ai/defaults/default-320x200.webp"]  # once, not once per answer
        assert {(r.success, r.provider, r.url) for r in results} == {
            (False, "default", store.url_for("ai/defaults/default-320x200.webp"))
        }
        assert [e.key for e in gen.spool.entries()] == ["ai/defaults/default-320x200.webp"]
        healthy = LocalStore(tmp_path / "bucket")
        assert (await gen.spool.flush(healthy)).moved == ["ai/defaults/default-320x200.webp"]
        assert Image.open(io.BytesIO(await healthy.get("ai/defaults/default-320x200.webp"))).size == (320, 200)


@pytest.fixture
def slow_default_drawing(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[float], list[tuple[int, int]]]]:
    """``slow(seconds)``: from then on default images take ``seconds`` to draw (in their worker thread); returns
    the sizes drawn, as they are. The drawings' cache is emptied then and after the test."""
    import imagegen_core.delivery as delivery

    def slow(seconds: float) -> list[tuple[int, int]]:
        drawn: list[tuple[int, int]] = []

        def slow_draw(width: int, height: int) -> bytes:
            drawn.append((width, height))
            time.sleep(seconds)
            return draw_default_image(width, height)

        monkeypatch.setattr(delivery, "draw_default_image", slow_draw)
        delivery._default_image.cache_clear()
        return drawn

    yield slow
    delivery._default_image.cache_clear()


def every_provider_failing(*, timeout_ms: int) -> dict[str, Any]:
    """Only a fake provider that always fails races: every answer is the default image."""
    return {
        "providers": {"broken": {"type": "fake", "options": {"failureRate": 1.0}}},
        "defaults": {"timeout": timeout_ms},
    }


async def test_concurrent_answers_of_a_new_size_draw_its_default_image_once_and_keep_their_deadline(
    settings_factory: Any, slow_default_drawing: Callable[[float], list[tuple[int, int]]]
) -> None:
    """QA run: requests answered with the default image of a size not stored yet each drew it (a 12 Mpx WebP
    takes 0.6 s), on a CPU they all needed: answers came 0.2-0.3 s past their deadline. Now one drawing is
    shared; the answers wait for it within their deadline, and its URL is answered either way."""
    drawn = slow_default_drawing(0.3)  # a big image's drawing, in its worker thread
    async with ImageGen.from_settings(settings_factory()) as gen:
        gen.set_config(every_provider_failing(timeout_ms=2000))
        results = await asyncio.gather(
            *(gen.generate({"prompt": f"p{i}", "width": 333, "height": 222}) for i in range(4))
        )
        key = "ai/defaults/default-333x222.webp"
        assert drawn == [(333, 222)]  # once, for all four
        assert {(r.success, r.url) for r in results} == {(False, gen.store.url_for(key))}
        assert await gen.store.exists(key)  # stored before the answers: they had time to wait for it
        assert max(r.elapsed_ms for r in results) < 2000 + 50


async def test_an_answer_waiting_for_a_default_image_still_drawing_comes_inside_its_deadline(
    settings_factory: Any, slow_default_drawing: Callable[[float], list[tuple[int, int]]]
) -> None:
    """QA run: an answer waited for the default image's drawing until its deadline itself, and then answered a
    few ms past it (up to 110 ms with 20 new sizes at once). It now stops waiting ANSWER_RESERVE_S before."""
    slow_default_drawing(2.0)  # slower than the deadline
    async with ImageGen.from_settings(settings_factory()) as gen:
        gen.set_config(every_provider_failing(timeout_ms=1000))
        started = time.perf_counter()
        result = await gen.generate({"prompt": "p", "width": 334, "height": 222})
        took_ms = (time.perf_counter() - started) * 1000
        assert not result.success and result.url == gen.store.url_for("ai/defaults/default-334x222.webp")
        assert result.elapsed_ms < 1000 and took_ms < 1000, (result.elapsed_ms, took_ms)


async def test_when_the_spool_fails_too_the_error_says_the_image_is_lost(settings_factory: Any, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the spool folder should be")
    store = RefusingStore(tmp_path / "bucket")
    async with ImageGen.from_settings(settings_factory(), store=store, spool=Spool(blocked)) as gen:
        result = await gen.generate({"prompt": "x"})
    assert not result.success
    assert "keeping the image in the spool failed too: cannot keep" in (result.error or "")
    assert (result.store_failed, result.image_kept) == (True, False)


async def test_a_process_starting_over_a_spool_an_earlier_one_left_uploads_it_without_an_operator(
    settings_factory: Any, tmp_path: Path
) -> None:
    """Regression: only a process's own failed upload started the background retry. `imagegen serve` restarted
    during an outage left the earlier process's paid images waiting for `imagegen storage flush`, and the
    answers' URLs dead. Now warming up (serve does, at start; the console too) resumes the upload at once."""
    store = RefusingStore(tmp_path / "bucket")
    async with ImageGen.from_settings(settings_factory(), store=store) as earlier:
        earlier.spool_retrier.first_pause_s = 3600  # this process stops before its own retry
        result = await earlier.generate({"prompt": "a lighthouse at dusk", "width": 320, "height": 200})
        assert not result.success
        await earlier.flush()  # the default image is kept in the background
        kept = sorted(e.key for e in earlier.spool.entries())
    assert len(kept) == 2  # the paid image and the default image the answer points at

    healthy = LocalStore(tmp_path / "bucket")
    async with ImageGen.from_settings(settings_factory(), store=healthy) as gen:
        assert await gen.resume_spool_retry() == 2 and gen.spool_retrier.running
        async with asyncio.timeout(10):  # the first try at once: no 30 s pause (flushes run in threads)
            while gen.spool_retrier.running:
                await asyncio.sleep(0.01)
        assert gen.spool.entries() == []
        assert all((tmp_path / "bucket" / key).is_file() for key in kept)
        assert await gen.resume_spool_retry() == 0 and not gen.spool_retrier.running


async def test_warm_up_resumes_the_spool(settings_factory: Any, tmp_path: Path) -> None:
    Spool(settings_factory().home / "spool").keep(
        "ai/2026/11/left.webp", b"webp", content_type="image/webp", cache_control="public", metadata={}
    )
    async with ImageGen.from_settings(settings_factory(), store=HangingStore(tmp_path / "bucket")) as gen:
        await gen.warm_up()
        assert gen.spool_retrier.running


async def test_an_upload_cancelled_by_a_stopping_process_keeps_the_image_in_the_spool(
    settings_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """QA: Ctrl+C or SIGTERM while the winner's image was being uploaded lost it (paid for, neither stored nor
    kept, no log line): only a failed or late upload was spooled. Now a cancelled one is kept too."""
    started = asyncio.Event()

    class SlowStore(LocalStore):
        async def put(self, key: str, data: bytes, **kwargs: Any) -> StoredObject:
            started.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    async with ImageGen.from_settings(settings_factory(), store=SlowStore(tmp_path / "bucket")) as gen:
        uploading = asyncio.ensure_future(gen.generate({"prompt": "a lighthouse", "width": 320, "height": 200}))
        await asyncio.wait_for(started.wait(), 10)
        uploading.cancel()  # what a stopping process does to the requests in flight
        with pytest.raises(asyncio.CancelledError):
            await uploading
        (entry,) = gen.spool.entries()
    assert entry.key.startswith("ai/") and entry.metadata["provider"] == "offline"
    assert Image.open(io.BytesIO(gen.spool.read(entry))).size == (320, 200)
    assert f"image {entry.key} kept in the spool: storing the image from offline was cancelled" in caplog.text
    # A store of one's own (another folder than the settings'): only an ImageGen given it uploads the image.
    assert "by `resume_spool_retry()` of an ImageGen given the same store" in caplog.text


async def test_an_upload_cancelled_says_who_uploads_the_kept_image_as_a_failed_one_does(
    settings_factory: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the settings' store, the warning said "the next imagegen process uploads it": a `generate` never
    does (QA: neither the next `generate` nor `providers` emptied the spool). It says what a failed upload's
    error says: a server or console process, or `imagegen storage flush`."""
    started = asyncio.Event()

    async def hanging_put(key: str, data: bytes, **kwargs: Any) -> StoredObject:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async with ImageGen.from_settings(settings_factory()) as gen:
        monkeypatch.setattr(gen.store, "put", hanging_put)
        uploading = asyncio.ensure_future(gen.generate({"prompt": "a lighthouse", "width": 320, "height": 200}))
        await asyncio.wait_for(started.wait(), 10)
        uploading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await uploading
        (entry,) = gen.spool.entries()
    said = f"image {entry.key} kept in the spool: storing the image from offline was cancelled"
    assert f"{said} (the process stopped, or its caller left); {UPLOADED_BY_PROCESSES}" in caplog.text
    assert "the next imagegen process uploads it" not in caplog.text


class DiskFullStore(LocalStore):
    """A Store of one's own that lets an OSError out instead of a StorageError (its contract)."""

    async def put(self, key: str, data: bytes, **kwargs: Any) -> StoredObject:
        raise OSError(28, "No space left on device")


class ForgetfulStore(LocalStore):
    """A Store of one's own whose put answers None instead of a StoredObject."""

    async def put(self, key: str, data: bytes, **kwargs: Any) -> Any:
        await super().put(key, data, **kwargs)
        return None


@pytest.mark.parametrize(
    ("store_class", "says"),
    [
        (DiskFullStore, "the store failed unexpectedly (OSError: [Errno 28] No space left on device)"),
        (ForgetfulStore, "ForgetfulStore.put answered NoneType, not a StoredObject"),
    ],
)
async def test_a_store_that_breaks_its_contract_loses_no_image_and_no_answer(
    settings_factory: Any, tmp_path: Path, store_class: type[LocalStore], says: str
) -> None:
    """QA: a Store of one's own raising something other than StorageError, or answering garbage, made
    ``generate`` raise that exception: no default-image answer, and the paid-for image not in the spool. It is a
    failed upload like any other now: the default image is answered and the image is kept."""
    async with ImageGen.from_settings(settings_factory(), store=store_class(tmp_path / "bucket")) as gen:
        result = await gen.generate({"prompt": "a lighthouse at dusk", "width": 320, "height": 200})
        await gen.flush()
        assert (result.success, result.provider, result.store_failed, result.image_kept) == (
            False,
            "default",
            True,
            True,
        )
        assert says in (result.error or "")
        kept = [e.key for e in gen.spool.entries() if not e.key.startswith("ai/defaults/")]
        assert len(kept) == 1 and kept[0] in (result.error or "")


async def test_answers_whose_uploads_hang_still_come_by_the_deadline_with_their_images_kept(
    settings_factory: Any, tmp_path: Path
) -> None:
    """QA: with the store accepting uploads and never answering, ten requests at once answered 70-110 ms past
    their deadline: each upload was given up at the deadline itself, and keeping its image in the spool (files
    written and flushed to disk) came after. The upload now ends early enough for that keep."""
    async with ImageGen.from_settings(settings_factory(), store=HangingStore(tmp_path / "bucket")) as gen:
        gen.set_config({"defaults": {"timeout": 2000}})
        await gen.generate({"prompt": "warm-up", "width": 320, "height": 200})  # the default image drawn once

        async def one(n: int) -> tuple[float, bool]:
            t0 = time.perf_counter()
            result = await gen.generate({"prompt": f"request {n}", "width": 320, "height": 200})
            return time.perf_counter() - t0, "the image was kept in the spool" in (result.error or "")

        answers = await asyncio.gather(*(one(n) for n in range(10)))
    assert all(kept for _, kept in answers), answers
    assert max(elapsed for elapsed, _ in answers) <= 2.05, answers  # the deadline, with the suite's 50 ms
