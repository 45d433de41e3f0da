"""The API while the R2 store hangs: an S3 server that accepts connections and never answers (played by a
listener on 127.0.0.1 that never sends a byte, as ``weed`` stopped with SIGSTOP does).

Before, ``/health`` answered 503 only after a minute (botocore's 4 attempts × 30 s read timeout), too late for a
load balancer, while a hung log DB gave 503 in ~2 s; ``/admin/status`` waited as long, and ``/admin/storage``
30 s or more. Now the store's check is bounded like the log DB's, and the listing tries each page once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imagegen_core.api.probes import PROBE_WAIT_S
from imagegen_core.service import ImageGen
from imagegen_core.storage.r2 import R2Store
from tests.storage.test_r2_hung_server import BlackHole

from .conftest import ADMIN, api_client


@pytest.fixture
def hung_r2() -> Iterator[R2Store]:
    """An R2 store with its default timeouts and attempts, in front of a server that never answers."""
    hole = BlackHole()
    try:
        yield R2Store(
            bucket="images",
            access_key_id="k",
            secret_access_key="s",
            public_base_url="https://img.example",
            endpoint_url=hole.url,
        )
    finally:
        hole.close()


def keep(gen: ImageGen, key: str, *, age_s: float = 0.0) -> None:
    """An image in the spool, as a failed upload leaves it, kept ``age_s`` ago."""
    entry = gen.spool.keep(key, b"x" * 100, content_type="image/webp", cache_control="c", metadata={})
    sidecar = entry.data_path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta["keptAt"] -= age_s
    sidecar.write_text(json.dumps(meta))


async def test_health_is_503_within_seconds_naming_the_store_when_it_hangs(
    make_gen: Callable[..., ImageGen], hung_r2: R2Store
) -> None:
    gen = make_gen(store=hung_r2)
    async with api_client(gen) as client:
        for _ in range(2):  # the first check also loads boto3 and builds the client
            started = time.monotonic()
            health = await client.get("/health")
            took = time.monotonic() - started
            assert health.status_code == 503, health.text
            assert health.json()["checks"]["store"] == {"ok": False, "kind": "r2"}
            assert health.json()["checks"]["logDb"]["ok"] is True  # the store is the problem, nothing else
            assert took < PROBE_WAIT_S + 3, took  # was 60 s and more


async def test_health_waits_for_a_hung_log_db_and_a_hung_store_at_once_not_one_after_the_other(
    make_gen: Callable[..., ImageGen], hung_r2: R2Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With both hanging, checking one after the other took twice the probe's wait: a load balancer that gives
    up after 3 s saw no answer at all. The log DB's cheap query is played by one that blocks until the test
    ends (as a server that never answers does)."""
    gen = make_gen(store=hung_r2)
    released = threading.Event()

    def hung_query() -> int:
        released.wait(30)
        return 1

    async with api_client(gen) as client:
        await client.get("/health")  # the first store check also loads boto3 and builds the client
        monkeypatch.setattr(gen.log, "schema_version", hung_query)
        try:
            started = time.monotonic()
            health = await client.get("/health")
            took = time.monotonic() - started
        finally:
            released.set()
    assert health.status_code == 503, health.text
    checks = health.json()["checks"]
    assert (checks["logDb"]["ok"], checks["store"]["ok"]) == (False, False)
    assert PROBE_WAIT_S <= took < 1.75 * PROBE_WAIT_S, took  # one wait, not two (4 s)


async def test_status_answers_in_seconds_and_counts_the_images_waiting_in_the_spool(
    make_gen: Callable[..., ImageGen], hung_r2: R2Store
) -> None:
    """During a store outage the operator's question is how many paid-for images wait, and since when: only the
    console's Admin page said so."""
    gen = make_gen(store=hung_r2)
    keep(gen, "ai/2026/11/0123456789abcdef0123456789abcdef.webp", age_s=3600)
    keep(gen, "ai/2026/11/fedcba9876543210fedcba9876543210.webp")
    async with api_client(gen) as client:
        started = time.monotonic()
        status = await client.get("/admin/status", headers=ADMIN)
        took = time.monotonic() - started
    assert status.status_code == 200 and took < PROBE_WAIT_S + 3, (status.text, took)
    store = status.json()["store"]
    assert (store["ok"], store["kind"], store["keptImages"]) == (False, "r2", 2)
    assert 3600 <= store["oldestKeptAgeS"] < 3700
    assert status.json()["logDb"]["keptRows"] == 0


async def test_admin_storage_is_503_after_one_bounded_wait_when_the_store_hangs(
    make_gen: Callable[..., ImageGen], hung_r2: R2Store, tmp_path: Path
) -> None:
    gen = make_gen(store=hung_r2)
    async with api_client(gen) as client:
        started = time.monotonic()
        storage = await client.get("/admin/storage", headers=ADMIN)
        took = time.monotonic() - started
    assert storage.status_code == 503 and "image store" in storage.json()["error"], storage.text
    assert took < 15, took  # one try of 10 s (r2.LIST_WAIT_S), not 4 × 30 s
