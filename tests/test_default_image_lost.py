"""A default image that can be neither stored nor kept (IMAGEGEN_HOME on a full disk; SRE fault injection): the
answers were ``success: false`` with the stored URL of a default image that was never written (404), and said
nothing of it. Now the answer carries the image itself (a ``data:`` URI, which works wherever an image URL does)
and its error says why; the full disk is not written to again for every answer, but is tried again later."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from imagegen_core import ImageGen
from imagegen_core.api import create_app
from imagegen_core.errors import StorageError
from imagegen_core.log.queries import recent_requests
from imagegen_core.storage.local import LocalStore
from imagegen_core.storage.spool import Spool
from tests.test_service import fakes

DATA_URI = "data:image/webp;base64,"


class FullDisk(LocalStore):
    """The local store of a full disk: every write is refused, as ENOSPC makes it."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.puts = 0

    async def put(self, key: str, data: bytes, **kwargs: Any) -> Any:
        self.puts += 1
        raise StorageError(f"local store: cannot write {key!r} in {self.root}: No space left on device")


def unusable_spool(tmp_path: Path) -> Spool:
    """A spool that cannot keep anything (a file where its folder should be: the keep fails, as on a full disk)."""
    (tmp_path / "spool").write_text("in the way")
    return Spool(tmp_path / "spool")


def full_disk_gen(settings_factory: Any, tmp_path: Path, document: dict[str, Any]) -> tuple[ImageGen, FullDisk]:
    store = FullDisk(tmp_path / "images")
    gen = ImageGen.from_settings(settings_factory(), store=store, spool=unusable_spool(tmp_path))
    gen.set_config(document, source="test")
    return gen, store


def decoded(url: str) -> Image.Image:
    assert url.startswith(DATA_URI), url[:80]
    return Image.open(io.BytesIO(base64.b64decode(url.removeprefix(DATA_URI))))


async def test_a_default_image_that_cannot_be_stored_is_answered_inline_and_said(
    settings_factory: Any, tmp_path: Path
) -> None:
    document = fakes(broken={"failureRate": 1.0, "latencyMs": 1})
    gen, store = full_disk_gen(settings_factory, tmp_path, document)
    async with gen:
        first = await gen.generate({"prompt": "p", "width": 320, "height": 200})
        puts = store.puts
        second = await gen.generate({"prompt": "p", "width": 320, "height": 200})
        await gen.flush()
        rows = recent_requests(gen.log, limit=5)
    for result in (first, second):
        assert not result.success and result.provider == "default"
        image = decoded(result.url)  # an image that works, not the URL of one never written
        assert (image.format, image.size) == ("WEBP", (320, 200))
        assert "broken: injected" in (result.error or "")  # the providers' reasons stay first
        assert "the default image could not be stored either" in (result.error or "")
        assert str(tmp_path) not in (result.error or "")  # no path for the caller: the server log has it
    assert store.puts == puts  # the full disk is not written again for each answer
    assert all(row["url"] is None for row in rows)  # the log keeps no kB of base64 as an address


async def test_a_made_image_and_its_default_both_refused_say_so_through_the_api(
    settings_factory: Any, tmp_path: Path
) -> None:
    """The SRE's case: the offline provider's image could not be stored, nor the default image answered instead."""
    gen, _ = full_disk_gen(settings_factory, tmp_path, fakes(painter={"latencyMs": 1}))
    async with gen:
        transport = httpx.ASGITransport(app=create_app(gen))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            answer = (await client.post("/images/generate", json={"prompt": "p", "width": 96, "height": 64})).json()
    assert answer["success"] is False and answer["provider"] == "default"
    assert decoded(answer["url"]).size == (96, 64)
    assert answer["error"].startswith("the image was made but could neither be stored nor kept")
    assert answer["error"].endswith("set defaults.imageUrl to answer a hosted one)")


async def test_a_lost_default_image_is_tried_again_later(
    settings_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk may have room again: after LOST_DEFAULT_RETRY_S the store is asked again."""
    from imagegen_core import delivery

    gen, store = full_disk_gen(settings_factory, tmp_path, fakes(broken={"failureRate": 1.0, "latencyMs": 1}))
    async with gen:
        await gen.generate({"prompt": "p", "width": 64, "height": 64})
        puts = store.puts
        monkeypatch.setattr(delivery, "LOST_DEFAULT_RETRY_S", 0.0)
        again = await gen.generate({"prompt": "p", "width": 64, "height": 64})
    assert store.puts == puts + 1 and again.url.startswith(DATA_URI)
