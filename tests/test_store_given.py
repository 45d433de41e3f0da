"""A ``store=`` that is not a Store is refused when the ImageGen is made, naming what a Store needs, as a provider
instance that is not a Provider is (QA: ``from_settings(store=object())`` was taken; every generate then had its
provider make (and bill) an image, and raised ``AttributeError: … no attribute 'url_for'``, the image lost)."""

from __future__ import annotations

from typing import Any

import pytest

from imagegen_core import ConfigError, ImageGen, StorageStats, StoredObject


class HalfStore:
    """A store written against an older protocol: ``put`` only."""

    name = "half"

    async def put(
        self, key: str, data: bytes, *, content_type: str, cache_control: str, metadata: dict[str, str]
    ) -> StoredObject:
        return StoredObject(key=key, url=f"mem://{key}", size=len(data), content_type=content_type)


class MemoryStore(HalfStore):
    """A whole Store of one's own."""

    async def exists(self, key: str) -> bool:
        return False

    def url_for(self, key: str) -> str:
        return f"mem://{key}"

    async def get(self, key: str) -> bytes:
        return b""

    async def stats(self, *, prefix: str) -> StorageStats:
        raise NotImplementedError

    async def check(self) -> None:
        return None


@pytest.mark.parametrize("store", [object(), HalfStore(), "s3://bucket"], ids=lambda s: type(s).__name__)
def test_a_store_that_is_not_a_store_is_refused_at_once(settings_factory: Any, store: Any) -> None:
    with pytest.raises(ConfigError, match=rf"^store \({type(store).__name__}\) is not a Store \(it needs") as refused:
        ImageGen.from_settings(settings_factory(), store=store)
    assert refused.value.field == "store"


def test_a_whole_store_of_one_s_own_is_used(settings_factory: Any) -> None:
    with ImageGen.from_settings(settings_factory(), store=MemoryStore()) as gen:
        result = gen.generate_sync({"prompt": "a lighthouse", "width": 64, "height": 64})
    assert result.success and result.url.startswith("mem://ai/")
