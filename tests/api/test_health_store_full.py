"""``/health`` notices a local store whose disk is full (SRE fault injection: ``store.ok`` was true while every
write failed with ENOSPC, the check asking only ``os.access``, which a full disk passes). The check writes a
small probe now; its answer is still reused for ``STORE_CHECK_TTL_S``."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imagegen_core.api.probes import STORE_CHECK_TTL_S, StoreCheckCache
from imagegen_core.errors import StorageError
from imagegen_core.service import ImageGen
from imagegen_core.storage.local import LocalStore
from tests.mounts import small_tmpfs

from .test_health_store_check import Clock, client_for


async def test_a_store_whose_writes_fail_is_not_ok_though_its_folder_is_writable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path / "images")
    await store.check()  # a disk with room
    assert not [p for p in store.root.iterdir()]  # the probe leaves nothing behind

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StorageError, match=r"No space left on device \(free some space on that disk"):
        await store.check()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 256 KiB tmpfs (root only: skipped elsewhere), unmounted afterwards."""
    with small_tmpfs(tmp_path / "small", "256k") as mount:
        yield mount


def fill(disk: Path) -> Path:
    """Write a file until the disk refuses more; the file, to free the room again."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(4096))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


async def test_health_says_the_store_is_not_ok_while_its_disk_is_full(
    make_gen: Callable[..., ImageGen], small_disk: Path
) -> None:
    store = LocalStore(small_disk / "images")
    clock = Clock()
    async with client_for(make_gen(store=store), StoreCheckCache(clock=clock)) as client:
        assert (await client.get("/health")).json()["checks"]["store"] == {"ok": True, "kind": "local"}
        filler = fill(small_disk)
        clock.now += STORE_CHECK_TTL_S
        full = await client.get("/health")
        assert full.status_code == 503 and full.json()["checks"]["store"] == {"ok": False, "kind": "local"}
        filler.unlink()
        clock.now += STORE_CHECK_TTL_S
        assert (await client.get("/health")).json()["checks"]["store"] == {"ok": True, "kind": "local"}
