"""Compare-then-pick: every provider answers on its own, nothing is stored until the editor picks."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from imagegen_core import ImageGen, InvalidRequestError, StorageError
from imagegen_core.compare import Candidate, CandidateStatus
from imagegen_core.log.queries import attempts_for, recent_requests

pytestmark = pytest.mark.looptime

OFF = {"enabled": False}


def config(**fakes: dict[str, Any]) -> dict[str, Any]:
    providers: dict[str, Any] = {"replicate": OFF, "fal": OFF, "unsplash": OFF, "openai": OFF}
    for prio, (name, spec) in enumerate(fakes.items(), start=1):
        providers[name] = {"type": "fake", "priority": prio, "retries": 0, "costPerImage": 0.002, **spec}
    return {"providers": providers, "defaults": {"timeout": 5000}}


async def test_every_provider_answers_on_its_own_and_nothing_is_stored_before_the_pick(
    settings_factory: Any, db_url: str
) -> None:
    """On both log backends: the pick lands in the log DB (SQLite or PostgreSQL)."""
    doc = config(
        fast={"options": {"latencyMs": 50}},
        slow={"options": {"latencyMs": 1500}},
        broken={"options": {"latencyMs": 10, "failureRate": 1.0}},
        stuck={"timeout": 800, "options": {"hang": True}},
    )
    updates: list[tuple[str, CandidateStatus]] = []

    def on_update(candidate: Candidate) -> None:
        updates.append((candidate.provider, candidate.status))

    async with ImageGen.from_settings(settings_factory(IMAGEGEN_DATABASE_URL=db_url)) as gen:
        gen.set_config(doc)
        comparison = await gen.compare({"prompt": "harbour", "width": 320, "height": 180}, on_update=on_update)
        statuses = {name: c.status for name, c in comparison.candidates.items()}
        assert statuses == {
            "fast": CandidateStatus.DONE,
            "slow": CandidateStatus.DONE,  # not cancelled by the faster one: this is no race
            "broken": CandidateStatus.FAILED,
            "stuck": CandidateStatus.TIMED_OUT,
        }
        assert [s for n, s in updates if n == "slow"] == [
            CandidateStatus.QUEUED,
            CandidateStatus.RUNNING,
            CandidateStatus.DONE,
        ]
        assert comparison.candidates["slow"].elapsed_ms == 1500
        assert Image.open(io.BytesIO(comparison.candidates["slow"].image or b"")).size == (320, 180)
        assert list((gen.settings.home / "images").rglob("*.webp")) == []  # nothing stored yet
        await gen.flush()
        shown = recent_requests(gen.log, limit=1)[0]
        assert (shown["status"], shown["provider"], shown["url"]) == ("offered", None, None)  # no article image yet

        result = await gen.pick(comparison, "slow")
        await gen.flush()
        assert result.success and result.provider == "slow" and result.key
        assert len(list((gen.settings.home / "images").rglob("*.webp"))) == 1
        picks = gen.log.query("SELECT request_id, provider, offered FROM picks")
        assert picks == [
            {"request_id": comparison.request_id, "provider": "slow", "offered": json.dumps(["fast", "slow"])}
        ]
        row = recent_requests(gen.log, limit=1)[0]
        assert (row["status"], row["provider"], row["storage_key"]) == ("success", "slow", result.key)
        # One image per article: a second pick is refused, stores nothing and logs no second win
        with pytest.raises(InvalidRequestError, match="slow's image is already this article's: compare again"):
            await gen.pick(comparison, "fast")
        await gen.flush()
        assert len(list((gen.settings.home / "images").rglob("*.webp"))) == 1
        assert len(gen.log.query("SELECT provider FROM picks")) == 1


async def test_picking_a_provider_without_an_image_is_refused(settings_factory: Any) -> None:
    async with ImageGen.from_settings(settings_factory()) as gen:
        gen.set_config(config(broken={"options": {"failureRate": 1.0}}))
        comparison = await gen.compare({"prompt": "x"})
        with pytest.raises(InvalidRequestError, match="no image"):
            await gen.pick(comparison, "broken")
        with pytest.raises(InvalidRequestError):
            await gen.pick(comparison, "nobody")
        # QA: an AttributeError about 'NoneType' (a comparison variable never set, in a notebook)
        with pytest.raises(
            InvalidRequestError, match=r"^comparison: expected the Comparison that compare\(\) returned, got NoneType$"
        ):
            await gen.pick(None, "fal")  # type: ignore[arg-type]


async def test_a_pick_names_the_provider_without_regard_to_case_as_generate_does(settings_factory: Any) -> None:
    """QA: ``pick(comparison, "Fast")`` after comparing ``fast`` was refused ("has no image"), while generate's
    provider, the CLI and the admin API read provider names without regard to case."""
    async with ImageGen.from_settings(settings_factory()) as gen:
        gen.set_config(config(fast={"options": {"latencyMs": 5}}))
        comparison = await gen.compare({"prompt": "harbour", "width": 64, "height": 64})
        result = await gen.pick(comparison, " FAST ")
        assert result.success and result.provider == "fast" and comparison.picked == ["fast"]


async def test_compare_rejects_bad_input_like_generate(settings_factory: Any) -> None:
    async with ImageGen.from_settings(settings_factory()) as gen:
        with pytest.raises(InvalidRequestError) as info:
            await gen.compare({"prompt": "x", "width": 99999})
        assert info.value.field == "width"


async def test_two_picks_at_once_store_one_image_and_a_failed_upload_can_be_picked_again(
    settings_factory: Any, tmp_path: Any
) -> None:
    """The pick is reserved before the upload: a second pick while the first uploads is refused (it stored a
    second image and counted a second win); an upload that fails frees the reservation for another try."""
    import asyncio

    from imagegen_core.errors import StorageError
    from imagegen_core.storage import LocalStore, StoredObject

    class SlowThenDown(LocalStore):
        down = False

        async def put(self, key: str, data: bytes, **kwargs: Any) -> StoredObject:
            await asyncio.sleep(0.3)  # an upload takes that long, or longer
            if self.down:
                raise StorageError("the store is down")
            return await super().put(key, data, **kwargs)

    store = SlowThenDown(tmp_path / "bucket")
    async with ImageGen.from_settings(settings_factory(), store=store) as gen:
        gen.set_config(config(alpha={"options": {"latencyMs": 20}}, beta={"options": {"latencyMs": 20}}))
        first, second = await gen.compare({"prompt": "harbour"}), await gen.compare({"prompt": "harbour"})

        outcomes = await asyncio.gather(gen.pick(first, "alpha"), gen.pick(first, "beta"), return_exceptions=True)
        assert [type(o).__name__ for o in outcomes] == ["GenerateResult", "InvalidRequestError"]
        assert "alpha's image is already this article's" in str(outcomes[1]) and first.picked == ["alpha"]

        store.down = True
        with pytest.raises(StorageError, match="the store is down"):
            await gen.pick(second, "beta")
        assert second.picked == []
        store.down = False
        assert (await gen.pick(second, "beta")).success and second.picked == ["beta"]
        await gen.flush()
        picks = [row["provider"] for row in gen.log.query("SELECT provider FROM picks ORDER BY picked_at")]
    assert picks == ["alpha", "beta"]


async def test_a_comparison_cancelled_midway_is_logged_as_cancelled_with_its_attempts(settings_factory: Any) -> None:
    """Regression: a comparison cancelled by its caller (``asyncio.wait_for``, a task's cancel) left its request
    row ``running`` for ever; a cancelled generate was already logged as cancelled."""
    async with ImageGen.from_settings(settings_factory()) as gen:
        gen.set_config(config(slow={"options": {"latencyMs": 5000}}, other={"options": {"latencyMs": 4000}}))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(gen.compare({"prompt": "cancel me"}), 0.7)
        await gen.flush()
        (row,) = recent_requests(gen.log, limit=5)
        assert (row["status"], row["error"]) == ("cancelled", "request cancelled before it finished")
        assert row["finished_at"] is not None
        assert sorted(a["outcome"] for a in attempts_for(gen.log, row["id"])) == ["cancelled", "cancelled"]


async def test_closing_waits_for_a_comparison_under_way_and_its_rows_end(settings_factory: Any) -> None:
    """Regression: ``aclose()`` returned at once under a running comparison, whose next log write then raised a
    bare RuntimeError ("the log writer is closed") and whose rows stayed ``running``. Closing now waits for a
    comparison as it does for a generate."""
    gen = ImageGen.from_settings(settings_factory())
    gen.set_config(config(fast={"options": {"latencyMs": 300}}, broken={"options": {"failureRate": 1.0}}))
    task = asyncio.create_task(gen.compare({"prompt": "closing meanwhile"}))
    await asyncio.sleep(0.1)  # under way
    await gen.aclose()
    comparison = task.result()  # ended, with no error
    assert comparison.offered == ["fast"]
    with ImageGen.from_settings(settings_factory()) as reopened:
        (row,) = recent_requests(reopened.log, limit=5)
        assert row["status"] == "offered"
        assert sorted(a["outcome"] for a in attempts_for(reopened.log, row["id"])) == ["failed", "success"]


async def test_a_raising_on_update_is_logged_and_the_comparison_goes_on(
    settings_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: an exception in the caller's ``on_update`` came out of the race: providers already paid for
    were abandoned, their attempts stayed ``running`` and the request row too."""

    def broken_listener(candidate: Candidate) -> None:
        raise ZeroDivisionError("the caller's bug")

    async with ImageGen.from_settings(settings_factory()) as gen:
        gen.set_config(config(fast={"options": {"latencyMs": 50}}))
        with caplog.at_level(logging.WARNING, logger="imagegen"):
            comparison = await gen.compare({"prompt": "p"}, on_update=broken_listener)
        assert comparison.candidates["fast"].status is CandidateStatus.DONE
        await gen.flush()
        (row,) = recent_requests(gen.log, limit=5)
        assert row["status"] == "offered"
        assert [a["outcome"] for a in attempts_for(gen.log, row["id"])] == ["success"]
    warnings = [r for r in caplog.records if "on_update callback raised" in r.getMessage()]
    assert warnings and warnings[0].exc_info is not None  # the developer sees their traceback in the log


async def test_a_comparison_s_repr_leaves_the_images_out(settings_factory: Any) -> None:
    """QA: ``repr(comparison)`` (a notebook cell, a debugger) dumped each candidate's whole WebP."""
    async with ImageGen.from_settings(settings_factory()) as gen:
        gen.set_config(config(fast={"options": {"latencyMs": 10}}))
        comparison = await gen.compare({"prompt": "p", "width": 640, "height": 360})
    assert (comparison.candidates["fast"].image or b"").startswith(b"RIFF")
    assert "image=" not in repr(comparison) and "RIFF" not in repr(comparison)


async def test_a_card_s_time_is_its_attempts_time_as_its_cost_is_their_cost(settings_factory: Any) -> None:
    """QA: after a retry the card read "snail timed out · 3,001 ms · $0.0400": the last attempt's time beside
    both attempts' cost."""
    doc = config(snail={"timeout": 800, "retries": 1, "costPerImage": 0.02, "options": {"latencyMs": 9000}})
    doc["breaker"] = {"minCalls": 10}
    async with ImageGen.from_settings(settings_factory()) as gen:
        gen.set_config(doc)
        comparison = await gen.compare({"prompt": "harbour"})
        snail = comparison.candidates["snail"]
        await gen.flush()
        attempts = attempts_for(gen.log, comparison.request_id)
    assert [a["outcome"] for a in attempts] == ["failed", "failed"]
    assert snail.elapsed_ms == sum(a["duration_ms"] for a in attempts) == 1600
    assert snail.cost_usd == pytest.approx(sum(a["cost_usd"] for a in attempts))


async def test_a_retry_skipped_by_the_breaker_its_timeout_opened_leaves_the_card_timed_out(
    settings_factory: Any,
) -> None:
    """QA: unsplash's first try timed out (5,003 ms), which opened its breaker, so its retry was skipped; the
    card changed from "timed out" to "skipped: breaker open · 0 ms", hiding the timeout."""
    doc = config(stuck={"timeout": 800, "retries": 1, "options": {"hang": True}})
    doc["breaker"] = {"minCalls": 1, "failureRatio": 0.5}
    updates: list[tuple[CandidateStatus, int]] = []
    async with ImageGen.from_settings(settings_factory()) as gen:
        gen.set_config(doc)
        comparison = await gen.compare(
            {"prompt": "harbour"}, on_update=lambda c: updates.append((c.status, c.elapsed_ms))
        )
        stuck = comparison.candidates["stuck"]
        assert (stuck.status, stuck.elapsed_ms) == (CandidateStatus.TIMED_OUT, 800)
        assert "retry skipped: circuit breaker open" in (stuck.error or "")
        assert updates[-1] == (CandidateStatus.TIMED_OUT, 800)
        await gen.flush()
        outcomes = [a["outcome"] for a in attempts_for(gen.log, comparison.request_id)]
        assert outcomes == ["failed", "skipped"]  # the log keeps both attempts as they were


async def test_a_candidate_can_be_picked_while_the_others_run_and_the_row_ends_a_success_with_every_cost(
    settings_factory: Any,
) -> None:
    """QA: a card said "done" at 0.5 s but could be picked only at 10.7 s, when the provider that hung gave up.
    A done candidate can be picked at once; the others run on, and the comparison's end leaves the row a
    success of the pick (not ``offered``), with every provider's cost."""
    from imagegen_core.compare import compare

    started: list[Any] = []
    async with ImageGen.from_settings(settings_factory()) as gen:
        gen.set_config(config(fast={"options": {"latencyMs": 50}}, slow={"options": {"latencyMs": 1500}}))
        running = asyncio.create_task(compare(gen, {"prompt": "harbour"}, on_start=started.append))
        while not started or started[0].candidates["fast"].output is None:
            await asyncio.sleep(0.01)
        (comparison,) = started
        result = await gen.pick(comparison, "fast")
        assert comparison.candidates["slow"].status is CandidateStatus.RUNNING
        await gen.flush()
        row = recent_requests(gen.log, limit=1)[0]
        assert (row["status"], row["provider"], row["url"]) == ("success", "fast", result.url)

        assert await running is comparison
        await gen.flush()
        row = recent_requests(gen.log, limit=1)[0]
        assert (row["status"], row["provider"], row["url"]) == ("success", "fast", result.url)
        assert row["cost_usd"] == pytest.approx(0.004)  # the slow provider's answer too
        picks = gen.log.query("SELECT provider, offered FROM picks")
        assert picks == [{"provider": "fast", "offered": json.dumps(["fast"])}]  # what was offered when picked


async def test_a_pick_that_fails_after_the_comparison_ended_leaves_the_row_offered(settings_factory: Any) -> None:
    """The comparison ended while a pick's upload ran and left the row to the pick; the upload failed: the row
    is closed as the comparison would have (``offered``), not left ``running``."""
    from imagegen_core.compare import compare

    started: list[Any] = []
    async with ImageGen.from_settings(settings_factory()) as gen:
        gen.set_config(config(fast={"options": {"latencyMs": 50}}, slow={"options": {"latencyMs": 300}}))
        running = asyncio.create_task(compare(gen, {"prompt": "harbour"}, on_start=started.append))
        while not started or started[0].candidates["fast"].output is None:
            await asyncio.sleep(0.01)
        (comparison,) = started

        async def slow_refusal(*args: Any, **kwargs: Any) -> Any:
            await running  # the comparison ends meanwhile
            raise StorageError("the store refused the upload")

        gen.delivery.place = slow_refusal  # type: ignore[method-assign]
        with pytest.raises(StorageError):
            await gen.pick(comparison, "fast")
        await gen.flush()
        row = recent_requests(gen.log, limit=1)[0]
        assert (row["status"], row["provider"]) == ("offered", None)
        assert comparison.picked == []


async def test_a_comparison_cancelled_after_a_pick_leaves_the_row_a_success(settings_factory: Any) -> None:
    """A comparison stopped (the console closing) after an editor picked from it: the picked image went to the
    article, so its row stays the pick's success, not ``cancelled``."""
    from imagegen_core.compare import compare

    started: list[Any] = []
    async with ImageGen.from_settings(settings_factory()) as gen:
        gen.set_config(config(fast={"options": {"latencyMs": 50}}, slow={"options": {"latencyMs": 3000}}))
        running = asyncio.create_task(compare(gen, {"prompt": "harbour"}, on_start=started.append))
        while not started or started[0].candidates["fast"].output is None:
            await asyncio.sleep(0.01)
        result = await gen.pick(started[0], "fast")
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        await gen.flush()
        row = recent_requests(gen.log, limit=1)[0]
        assert (row["status"], row["provider"], row["url"]) == ("success", "fast", result.url)


async def test_a_pick_after_the_log_file_was_deleted_lands_whole_in_the_new_file(
    settings_factory: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """QA: the log file deleted under the console between a comparison's end (its row closed ``offered``) and the
    editor's pick: the pick failed with "FOREIGN KEY constraint failed", an error line, and the close as a success
    updated no row, so the win was lost. The comparison's rows are now written again to the new file before the
    pick: the request is there whole (its attempts, the pick, a success), with no error."""
    import imagegen_core.log.sqlite as sqlite_backend

    monkeypatch.setattr(sqlite_backend, "FILE_CHECK_EVERY_S", 0.0)
    async with ImageGen.from_settings(settings_factory()) as gen:
        gen.set_config(config(fast={"options": {"latencyMs": 50}}, broken={"options": {"failureRate": 1.0}}))
        comparison = await gen.compare({"prompt": "harbour", "width": 320, "height": 180})
        await gen.flush()
        [offered] = recent_requests(gen.log, limit=10)
        assert (offered["id"], offered["status"]) == (comparison.request_id, "offered")
        assert gen.log.path is not None
        for suffix in ("", "-wal", "-shm"):
            Path(f"{gen.log.path}{suffix}").unlink(missing_ok=True)
        with caplog.at_level(logging.WARNING, logger="imagegen"):
            result = await gen.pick(comparison, "fast")
            await gen.flush()
        [row] = recent_requests(gen.log, limit=10)
        assert (row["id"], row["status"], row["provider"], row["url"]) == (
            comparison.request_id,
            "success",
            "fast",
            result.url,
        )
        attempts = sorted((a["provider"], a["outcome"]) for a in attempts_for(gen.log, comparison.request_id))
        assert attempts == [("broken", "failed"), ("fast", "success")]
        picks = gen.log.query("SELECT request_id, provider FROM picks")
        assert picks == [{"request_id": comparison.request_id, "provider": "fast"}]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert "FOREIGN KEY" not in caplog.text
