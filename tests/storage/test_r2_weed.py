"""The R2 store against a real S3-compatible server on 127.0.0.1 (SeaweedFS ``weed mini``, which checks
SigV4 signatures), one server for the whole module; errors are injected by a proxy in front of it.

Every test uses a bucket of its own, so tests sharing the server never see each other's objects.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from PIL import Image

from imagegen_core import ImageGen
from imagegen_core.errors import StorageError
from imagegen_core.providers.offline import OFFLINE_MODEL
from imagegen_core.storage import MonthUsage, Usage, make_store
from imagegen_core.storage.r2 import R2Store
from tests.s3server import ACCESS_KEY, SECRET_KEY, FaultProxy, WeedServer, weed

__all__ = ["weed"]  # the module-scoped server fixture, used by every test here

KEY = "ai/2026/11/0123456789abcdef0123456789abcdef.webp"
STORAGE_CLI = [sys.executable, "-m", "imagegen_core.cli_storage"]


def r2_env(server: WeedServer, bucket: str, *, endpoint: str | None = None, secret: str = SECRET_KEY) -> dict[str, str]:
    """R2 settings for ``bucket``: uploads through ``endpoint`` (the server or a proxy in front of it),
    public URLs straight from the server (its bucket policy plays R2's custom domain)."""
    return {
        "R2_ENDPOINT_URL": endpoint or server.endpoint,
        "R2_ACCESS_KEY_ID": ACCESS_KEY,
        "R2_SECRET_ACCESS_KEY": secret,
        "R2_BUCKET": bucket,
        "R2_PUBLIC_BASE_URL": f"{server.endpoint}/{bucket}",
    }


def keys(server: WeedServer, bucket: str) -> list[str]:
    answer = server.client().list_objects_v2(Bucket=bucket)
    return sorted(obj["Key"] for obj in answer.get("Contents", []))


def storage_cli(*args: str, home: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``imagegen storage ...`` as a user runs it: a real subprocess."""
    full_env = {**os.environ, "IMAGEGEN_HOME": str(home), **env}
    return subprocess.run([*STORAGE_CLI, *args], capture_output=True, text=True, env=full_env, timeout=60)


async def test_generate_stores_a_webp_whose_head_and_public_url_are_right(
    weed: WeedServer, settings_factory: Any
) -> None:
    bucket = weed.create_bucket(public=True)
    async with ImageGen.from_settings(settings_factory(**r2_env(weed, bucket))) as gen:
        assert isinstance(gen.store, R2Store)
        gen.set_config({"r2": {"cacheControl": "public, max-age=600"}})
        result = await gen.generate(
            {"prompt": "harbour cranes at dawn", "width": 640, "height": 360, "articleId": "a-42"}
        )
        assert gen.spool.entries() == []
    assert result.success and result.provider == "offline" and result.key is not None, result.error
    assert result.url == f"{weed.endpoint}/{bucket}/{result.key}"
    head = weed.client().head_object(Bucket=bucket, Key=result.key)
    assert (head["ContentType"], head["CacheControl"]) == ("image/webp", "public, max-age=600")
    assert head["Metadata"] == {
        "request-id": result.request_id,
        "provider": "offline",
        "model": OFFLINE_MODEL,
        "prompt-sha256": hashlib.sha256(b"harbour cranes at dawn").hexdigest(),
        "article-id": "a-42",
    }
    public = httpx.get(result.url)  # anonymous: no credentials, only the public-read bucket policy
    assert public.status_code == 200 and public.headers["content-type"] == "image/webp"
    assert public.content == weed.client().get_object(Bucket=bucket, Key=result.key)["Body"].read()
    image = Image.open(io.BytesIO(public.content))
    assert (image.format, image.size) == ("WEBP", (640, 360))


async def test_a_wrong_secret_is_a_clear_error_and_generate_keeps_the_image_in_the_spool(
    weed: WeedServer, settings_factory: Any
) -> None:
    bucket = weed.create_bucket()
    settings = settings_factory(**r2_env(weed, bucket, secret="not-the-real-secret"))
    with pytest.raises(StorageError) as info:
        await make_store(settings).put(KEY, b"x", content_type="image/webp", cache_control="c", metadata={})
    assert str(info.value) == (
        f"R2 rejected the credentials (SignatureDoesNotMatch) on upload of '{KEY}': "
        "check R2_ACCESS_KEY_ID / R2_SECRET_ACCESS_KEY"
    )
    async with ImageGen.from_settings(settings) as gen:
        result = await gen.generate({"prompt": "x", "width": 320, "height": 200})
        # the painter's image; the default image answered waits in the spool too
        (entry,) = [e for e in gen.spool.entries() if "/defaults/" not in e.key]
    error = result.error or ""
    assert not result.success and result.provider == "default"
    assert "R2 rejected the credentials (SignatureDoesNotMatch)" in error
    assert f"the image was kept in the spool as {entry.key}" in error and "not-the-real-secret" not in error
    assert keys(weed, bucket) == []


async def test_a_missing_bucket_is_named(weed: WeedServer, settings_factory: Any) -> None:
    store = make_store(settings_factory(**r2_env(weed, "no-such-bucket")))
    with pytest.raises(StorageError, match=r"R2 bucket 'no-such-bucket' does not exist .*check R2_BUCKET"):
        await store.check()


async def test_check_passes_on_a_real_bucket_empty_or_not(weed: WeedServer, settings_factory: Any) -> None:
    """The check lists the bucket (a HEAD of it proved nothing: any web server answers 200); a real S3
    server's listing passes, whether it holds keys or none."""
    bucket = weed.create_bucket()
    store = make_store(settings_factory(**r2_env(weed, bucket)))
    await store.check()
    await store.put(KEY, b"RIFF", content_type="image/webp", cache_control="c", metadata={})
    await store.check()


async def test_stats_count_objects_and_bytes_over_several_listing_pages(
    weed: WeedServer, settings_factory: Any
) -> None:
    bucket = weed.create_bucket()
    sizes = {
        "ai/2026/10/a.webp": 10,
        "ai/2026/10/b.webp": 20,
        "ai/2026/11/c.webp": 30,
        "ai/2026/11/d.webp": 40,
        "ai/2026/11/e.webp": 50,
        "ai/defaults/default-8x8.webp": 5,
        "ai/readme.txt": 3,
        "archive/2026/11/x.webp": 99,  # outside the prefix
    }
    client = weed.client()
    for key, size in sizes.items():
        client.put_object(Bucket=bucket, Key=key, Body=b"x" * size)
    env = r2_env(weed, bucket)
    store = make_store(settings_factory(**env))
    assert isinstance(store, R2Store)
    pages: list[int] = []
    listing = store.client_for(store.list_wait_s)  # one try per page, list_wait_s each
    listing.meta.events.register("after-call.s3.ListObjectsV2", lambda **kw: pages.append(1))
    stats = await store.stats(prefix="ai", page_size=2)
    assert len(pages) == 4  # 7 keys under ai/, 2 per page
    assert stats.months == (MonthUsage("2026-10", 2, 30), MonthUsage("2026-11", 3, 120))
    assert (stats.defaults, stats.other, stats.total) == (Usage(1, 5), Usage(1, 3), Usage(7, 158))
    proc = storage_cli("stats", "--json", home=settings_factory().home, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) | {"spool": None} == stats.to_dict() | {"spool": None}


async def test_unsplash_results_are_never_copied_into_the_bucket(weed: WeedServer, settings_factory: Any) -> None:
    bucket = weed.create_bucket()
    raw = "https://images.unsplash.com/photo-1500000000000-abc?ixid=TESTIXID&ixlib=rb-4.1.0"
    photo = {
        "id": "Abc123xyz",
        "width": 6000,
        "height": 4000,
        "urls": {"raw": raw},
        "links": {
            "html": "https://unsplash.com/photos/Abc123xyz",
            "download_location": "https://api.unsplash.com/photos/Abc123xyz/download?ixid=TESTIXID",
        },
        "user": {"name": "Ada Lens", "username": "adalens", "links": {"html": "https://unsplash.com/@adalens"}},
    }
    buf = io.BytesIO()
    Image.new("RGB", (800, 450), (20, 90, 160)).save(buf, format="PNG")
    router = respx.Router(assert_all_called=False)
    router.get("https://api.unsplash.com/search/photos").respond(200, json={"total": 1, "results": [photo]})
    router.get(url__startswith=raw.split("?")[0]).respond(
        200, content=buf.getvalue(), headers={"Content-Type": "image/png"}
    )
    ping = router.get("https://api.unsplash.com/photos/Abc123xyz/download").respond(200, json={"url": raw})
    settings = settings_factory(UNSPLASH_ACCESS_KEY="us_test", **r2_env(weed, bucket))
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler)) as client,
        ImageGen.from_settings(settings, http_client=client) as gen,
    ):
        gen.set_config({"providers": {"replicate": {"enabled": False}, "fal": {"enabled": False}}})
        result = await gen.generate({"prompt": "lighthouse on a cliff", "width": 800, "height": 450})
        await gen.flush()
        assert gen.spool.entries() == []
    assert result.success and result.provider == "unsplash" and result.key is None, result.error
    assert result.url.startswith(raw) and ping.called
    assert keys(weed, bucket) == []


async def test_a_500_then_success_stores_exactly_one_object(weed: WeedServer, settings_factory: Any) -> None:
    bucket = weed.create_bucket()
    with FaultProxy(weed.endpoint) as proxy:
        proxy.fail("PUT", status=500, times=1)
        async with ImageGen.from_settings(settings_factory(**r2_env(weed, bucket, endpoint=proxy.url))) as gen:
            result = await gen.generate({"prompt": "x"})
    assert result.success and result.key is not None, result.error
    puts = [entry for entry in proxy.log if entry[0] == "PUT"]
    assert puts == [("PUT", f"/{bucket}/{result.key}", 500), ("PUT", f"/{bucket}/{result.key}", 200)]
    assert keys(weed, bucket) == [result.key]


async def test_a_permanent_failure_spools_the_image_and_storage_flush_uploads_it_exactly_once(
    weed: WeedServer, settings_factory: Any
) -> None:
    bucket = weed.create_bucket()
    with FaultProxy(weed.endpoint) as proxy:
        env = r2_env(weed, bucket, endpoint=proxy.url)
        settings = settings_factory(**env)
        proxy.fail("PUT", status=500, times=None)
        async with ImageGen.from_settings(settings) as gen:
            gen.set_config({"defaults": {"imageUrl": "https://cdn.example.com/default.webp"}})
            result = await gen.generate({"prompt": "x", "width": 320, "height": 200})
            (entry,) = gen.spool.entries()
            spooled = gen.spool.read(entry)
        assert not result.success and result.url == "https://cdn.example.com/default.webp"
        assert "(InternalError, HTTP 500, 4 attempts)" in (result.error or "")
        assert "(or at once with `imagegen storage flush`)" in (result.error or "")
        assert keys(weed, bucket) == []

        still_down = storage_cli("flush", home=settings.home, env=env)
        assert still_down.returncode == 1 and f"imagegen: not moved {entry.key}: R2 failed" in still_down.stderr
        assert "moved 0, failed 1" in still_down.stdout

        proxy.heal()
        seen = len(proxy.log)
        flushed = storage_cli("flush", home=settings.home, env=env)
        assert flushed.returncode == 0, flushed.stderr
        assert flushed.stdout.splitlines() == [
            f"moved {entry.key} -> {weed.endpoint}/{bucket}/{entry.key}",
            "moved 1, failed 0",
        ]
        assert [e for e in proxy.log[seen:] if e[0] == "PUT"] == [("PUT", f"/{bucket}/{entry.key}", 200)]

        seen = len(proxy.log)
        again = storage_cli("flush", home=settings.home, env=env)
        assert (again.returncode, again.stdout.strip()) == (0, "spool is empty: nothing to upload")
        assert [e for e in proxy.log[seen:] if e[0] == "PUT"] == []
    assert keys(weed, bucket) == [entry.key]
    head = weed.client().head_object(Bucket=bucket, Key=entry.key)
    assert head["ContentType"] == "image/webp" and head["Metadata"]["provider"] == "offline"
    assert weed.client().get_object(Bucket=bucket, Key=entry.key)["Body"].read() == spooled
