"""An S3 outage during upload, against a real S3-compatible server (SeaweedFS ``weed mini`` on 127.0.0.1) behind a
proxy that fails every upload: the request is answered by the deadline, the paid-for image waits in the spool,
and once the bucket is back a flush moves it there under the same key."""

from __future__ import annotations

import asyncio
from typing import Any

from imagegen_core import ImageGen
from imagegen_core.delivery import DEFAULT_SPOOLED_NOTE, DEFAULT_STORING_NOTE
from tests.api.conftest import fakes
from tests.s3server import ACCESS_KEY, SECRET_KEY, FaultProxy, WeedServer, weed

from .harness import BREAKER, assert_row, judge, run_concurrently, timed

__all__ = ["weed"]  # the module-scoped server fixture

DEADLINE_MS = 2000
#: One fake provider answering in 20 ms, the deadline above, the fault suite's breaker.
DOCUMENT = fakes(painter={"latencyMs": 20}) | {"defaults": {"timeout": DEADLINE_MS}, "breaker": BREAKER}


def behind(proxy: FaultProxy, weed: WeedServer, bucket: str, settings_factory: Any) -> Any:
    """Settings storing in ``bucket`` of the weed server through ``proxy`` (which can fail its uploads)."""
    return settings_factory(
        R2_ENDPOINT_URL=proxy.url,
        R2_ACCESS_KEY_ID=ACCESS_KEY,
        R2_SECRET_ACCESS_KEY=SECRET_KEY,
        R2_BUCKET=bucket,
        R2_PUBLIC_BASE_URL=f"{weed.endpoint}/{bucket}",
    )


async def test_an_s3_outage_during_upload_keeps_the_image_in_the_spool(weed: WeedServer, settings_factory: Any) -> None:
    bucket = weed.create_bucket()
    with FaultProxy(weed.endpoint) as proxy:
        settings = behind(proxy, weed, bucket, settings_factory)
        async with ImageGen.from_settings(settings) as gen:
            gen.set_config(DOCUMENT, source="test")
            proxy.fail("PUT", status=503, times=None)  # every upload refused, retries included
            results, times = await run_concurrently(gen, 3)
            row = await judge(
                gen,
                "S3 outage during upload",
                results,
                times,
                deadline_ms=DEADLINE_MS,
                expected_class="-",
                provider="painter",
                notes="image spooled",
            )
            await gen.flush()  # the default image the answers point at is spooled after them
            entries = gen.spool.entries()
            paid = [e for e in entries if not e.key.startswith("ai/defaults/")]
            assert {e.metadata["request-id"] for e in paid} == {r.request_id for r in results}
            assert {r.url for r in results} == {gen.store.url_for(e.key) for e in entries if e not in paid}
            assert all(not r.success and "kept in the spool" in (r.error or "") for r in results)
            assert [p for p in proxy.log if p[0] == "PUT" and p[2] == 503], "the uploads did reach the failing S3"

            proxy.heal()
            report = await gen.spool.flush(gen.store)
            assert report.ok and sorted(report.moved) == sorted(e.key for e in entries)
            assert gen.spool.entries() == []
    listed = weed.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    # The paid-for images made it to S3, and so did the default image the answers pointed at.
    assert {e.key for e in entries} <= {obj["Key"] for obj in listed}
    assert_row(row, breaker="closed")  # a storage failure is not the provider's fault


async def test_kept_images_reach_the_bucket_by_themselves_once_it_is_back(
    weed: WeedServer, settings_factory: Any
) -> None:
    """No operator: after an outage, the background retry (storage/retry.py) uploads what the spool kept,
    the paid-for images and the default image the answers pointed at, and then stops."""
    bucket = weed.create_bucket()
    with FaultProxy(weed.endpoint) as proxy:
        settings = behind(proxy, weed, bucket, settings_factory)
        async with ImageGen.from_settings(settings) as gen:
            gen.spool_retrier.first_pause_s = gen.spool_retrier.max_pause_s = 0.3  # seconds, not minutes
            gen.set_config(DOCUMENT, source="test")
            proxy.fail("PUT", status=503, times=None)
            results, _ = await run_concurrently(gen, 2)
            # The answers point at a default image that is not in the bucket, and say so (QA: they did not).
            assert all(r.notes in ([DEFAULT_STORING_NOTE], [DEFAULT_SPOOLED_NOTE]) for r in results), results
            await gen.flush()
            kept = {e.key for e in gen.spool.entries()}
            assert len(kept) == 3 and gen.spool_retrier.running  # two paid-for images and the default one
            during, _ = await timed(gen)  # the default image now waits in the spool: said as such
            assert not during.success and during.notes == [DEFAULT_SPOOLED_NOTE], during
            await gen.flush()
            kept = {e.key for e in gen.spool.entries()}
            await asyncio.sleep(1.0)  # retries meet the outage: nothing moves
            assert {e.key for e in gen.spool.entries()} == kept
            proxy.heal()
            for _ in range(100):  # the next retry, at most 0.3 s away
                if not gen.spool.entries() and not gen.spool_retrier.running:
                    break
                await asyncio.sleep(0.1)
            assert gen.spool.entries() == [] and not gen.spool_retrier.running
            after, _ = await timed(gen)  # a store failing no more: the image is stored, no note
            assert after.success and after.notes == [], after
    listed = {obj["Key"] for obj in weed.client().list_objects_v2(Bucket=bucket).get("Contents", [])}
    # What the outage's answers pointed at is in the bucket now (the default image included).
    assert kept <= listed and {gen.store.url_for(key) for key in kept} >= {r.url for r in [*results, during]}
