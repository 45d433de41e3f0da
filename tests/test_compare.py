"""Compare-then-pick: every provider answers on its own, nothing is stored until the editor picks."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from PIL import Image

from imagegen_core import ImageGen, InvalidRequestError
from imagegen_core.compare import Candidate, CandidateStatus
from imagegen_core.log.queries import recent_requests

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
