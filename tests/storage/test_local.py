"""Object keys and the local-folder store: layout, URLs, metadata (extended attribute or sidecar), atomic writes,
refused keys."""

from __future__ import annotations

import errno
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pytest

from imagegen_core.errors import StorageError
from imagegen_core.storage import LocalStore, Store, default_image_key, make_key, safe_key
from imagegen_core.storage.local import META_XATTR

CACHE = "public, max-age=31536000, immutable"
KEY = "ai/2025/03/0123456789abcdef0123456789abcdef.webp"


async def put(store: LocalStore, key: str = KEY, data: bytes = b"RIFF....WEBP") -> None:
    await store.put(key, data, content_type="image/webp", cache_control=CACHE, metadata={"provider": "offline"})


needs_xattrs = pytest.mark.skipif(not hasattr(os, "setxattr"), reason="no extended attributes on this platform")
META = {"content_type": "image/webp", "cache_control": CACHE, "metadata": {"provider": "offline"}}


def refuse_xattrs(monkeypatch: pytest.MonkeyPatch, code: int, *, times: int | None = None) -> list[str]:
    """Make ``os.setxattr`` fail with ``code`` (a filesystem without them, or a value too large), for the
    next ``times`` calls or for good; returns the attributes asked for."""
    real = os.setxattr
    asked: list[str] = []

    def setxattr(target: int, attribute: str, value: bytes) -> None:
        asked.append(attribute)
        if times is None or len(asked) <= times:
            raise OSError(code, os.strerror(code))
        real(target, attribute, value)

    monkeypatch.setattr(os, "setxattr", setxattr)
    return asked


def leftovers(folder: Path) -> list[str]:
    """Temporary files a failed write may have left behind."""
    return sorted(p.name for p in folder.rglob("*.tmp"))


# ------------------------------------------------------------------------------------------------
# Keys


def test_make_key_has_worker_layout_with_injected_clock_and_uid() -> None:
    now = datetime(2025, 3, 7, 23, 59, tzinfo=UTC)
    assert make_key("ai", now=now, uid="abc") == "ai/2025/03/abc.webp"
    assert make_key("news/img/", now=now, ext="png", uid="x") == "news/img/2025/03/x.png"


def test_make_key_uses_fresh_uuid4_hex_by_default() -> None:
    now = datetime(2024, 12, 1, tzinfo=UTC)
    first, second = make_key("ai", now=now), make_key("ai", now=now)
    assert re.fullmatch(r"ai/2024/12/[0-9a-f]{32}\.webp", first)
    assert first != second


def test_default_image_key_is_fixed_per_size() -> None:
    assert default_image_key("ai", 1024, 768) == "ai/defaults/default-1024x768.webp"


@pytest.mark.parametrize(
    "key",
    [
        "",
        "../x",
        "ai/../../etc/passwd",
        "/abs/x.webp",
        "a//b",
        "a/",
        "./a",
        "a\\b",
        "a\x00b",
        "a\nb",
        "a\x7fb",
        "k" * 2000,
    ],
)
def test_safe_key_refuses_unsafe_keys(key: str) -> None:
    with pytest.raises(StorageError, match="storage key"):
        safe_key(key)


@pytest.mark.parametrize("key", [KEY, "ai/defaults/default-1x1.webp", "ai/é ü/x.webp", "a..b/c", "k" * 1024])
def test_safe_key_accepts_ordinary_keys(key: str) -> None:
    assert safe_key(key) == key


# ------------------------------------------------------------------------------------------------
# LocalStore


def test_local_store_satisfies_store_protocol(tmp_path: Path) -> None:
    assert isinstance(LocalStore(tmp_path), Store)


async def test_put_get_exists_with_file_urls(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    assert not await store.exists(KEY)
    stored = await store.put(KEY, b"abc", content_type="image/webp", cache_control=CACHE, metadata={"seed": "7"})
    assert (stored.key, stored.size, stored.content_type) == (KEY, 3, "image/webp")
    assert await store.exists(KEY)
    assert await store.get(KEY) == b"abc"
    assert (tmp_path / KEY).read_bytes() == b"abc"
    assert stored.url == store.url_for(KEY) == (tmp_path / KEY).as_uri()
    assert Path(url2pathname(urlsplit(stored.url).path)) == tmp_path / KEY


async def test_public_base_url_mode(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, public_base_url="https://img.example.com/files/")
    stored = await store.put("ai/x y.webp", b"1", content_type="image/webp", cache_control=CACHE, metadata={})
    assert stored.url == "https://img.example.com/files/ai/x%20y.webp"
    assert store.url_for(KEY) == f"https://img.example.com/files/{KEY}"


@needs_xattrs
async def test_metadata_is_an_extended_attribute_of_the_image_and_no_second_file_is_written(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    await put(store)
    assert json.loads(os.getxattr(tmp_path / KEY, META_XATTR)) == META
    assert sorted(p.name for p in (tmp_path / KEY).parent.iterdir()) == [KEY.rsplit("/", 1)[1]]
    assert await store.read_meta(KEY) == META


@needs_xattrs
async def test_without_extended_attributes_the_metadata_goes_to_a_sidecar_from_then_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = refuse_xattrs(monkeypatch, errno.ENOTSUP)
    store = LocalStore(tmp_path)
    await put(store)
    await put(store, key="ai/2025/03/second.webp")
    assert asked == [META_XATTR]  # the first refusal settles it for this store
    assert not store.metadata_in_xattr
    assert json.loads((tmp_path / (KEY + ".meta.json")).read_text()) == META
    assert await store.read_meta(KEY) == META and await store.get(KEY) == b"RIFF....WEBP"
    assert leftovers(tmp_path) == []


@needs_xattrs
async def test_an_attribute_the_filesystem_cannot_fit_sends_only_that_object_to_a_sidecar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refuse_xattrs(monkeypatch, errno.E2BIG, times=1)
    store = LocalStore(tmp_path)
    await put(store)
    await put(store, key="ai/2025/03/second.webp")
    assert store.metadata_in_xattr
    assert (tmp_path / (KEY + ".meta.json")).is_file()
    assert not (tmp_path / "ai/2025/03/second.webp.meta.json").exists()
    assert await store.read_meta(KEY) == META == await store.read_meta("ai/2025/03/second.webp")


@needs_xattrs
async def test_rewriting_an_object_with_an_attribute_removes_its_stale_sidecar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        refuse_xattrs(patch, errno.ENOTSUP)
        await put(LocalStore(tmp_path))
    assert (tmp_path / (KEY + ".meta.json")).is_file()
    store = LocalStore(tmp_path)
    await store.put(KEY, b"v2", content_type="image/webp", cache_control="no-cache", metadata={})
    assert not (tmp_path / (KEY + ".meta.json")).exists()
    assert await store.read_meta(KEY) == {"content_type": "image/webp", "cache_control": "no-cache", "metadata": {}}


@needs_xattrs
async def test_a_copy_that_lost_its_metadata_reads_with_a_content_type_from_its_name(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    await put(store)
    os.removexattr(tmp_path / KEY, META_XATTR)  # as `cp` without --preserve=xattr leaves it
    assert await store.read_meta(KEY) == {"content_type": "image/webp", "cache_control": None, "metadata": {}}
    with pytest.raises(StorageError, match="no object"):
        await store.read_meta("ai/2025/03/missing.webp")


async def test_put_replaces_previous_object(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    await put(store, data=b"v1")
    await put(store, data=b"v2")
    assert await store.get(KEY) == b"v2"
    assert leftovers(tmp_path) == []


async def test_failed_write_leaves_no_partial_file_and_keeps_old_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path)
    await put(store, data=b"old")
    real_replace = os.replace

    def failing_replace(src: str, dst: str | Path) -> None:
        if not str(dst).endswith(".meta.json"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(StorageError) as info:
        await put(store, data=b"new-and-longer")
    message = str(info.value)
    assert "No space left on device" in message and str(tmp_path) in message and "\n" not in message
    assert await store.get(KEY) == b"old"
    assert leftovers(tmp_path) == []


async def test_a_full_disk_says_to_free_space_not_to_check_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(StorageError) as info:
        await put(LocalStore(tmp_path), data=b"image")
    assert str(info.value) == (
        f"local store: cannot write {KEY!r} in {tmp_path}: No space left on device (free some space on that disk, "
        "or point IMAGEGEN_HOME at another one)"
    )
    assert leftovers(tmp_path) == []


async def test_new_object_never_appears_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up after part of the image's bytes are in its temporary file: no object, no leftovers."""
    real_write = os.write
    image = b"RIFF....WEBP" * 100
    partial: list[int] = []

    def filling_write(fd: int, data: bytes | memoryview) -> int:
        if partial:
            raise OSError(28, "No space left on device")
        if len(data) != len(image):
            return real_write(fd, data)  # the sidecar
        partial.append(fd)
        return real_write(fd, data[:100])  # a short write: the rest must follow, and cannot

    monkeypatch.setattr(os, "write", filling_write)
    store = LocalStore(tmp_path)
    with pytest.raises(StorageError, match="No space left on device"):
        await put(store, data=image)
    assert not await store.exists(KEY)
    assert leftovers(tmp_path) == []


async def test_unwritable_root_is_a_one_line_storage_error_naming_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "not-a-folder"
    root.write_text("a file where the folder should be")
    with pytest.raises(StorageError) as info:
        await put(LocalStore(root))
    assert str(root) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
async def test_read_only_folder_is_refused_cleanly(tmp_path: Path) -> None:
    (tmp_path / "ai").mkdir()
    (tmp_path / "ai").chmod(0o555)
    try:
        with pytest.raises(StorageError, match="cannot write"):
            await put(LocalStore(tmp_path), key="ai/x.webp")
        assert list((tmp_path / "ai").iterdir()) == []
    finally:
        (tmp_path / "ai").chmod(0o755)


async def test_get_missing_object_is_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no object"):
        await LocalStore(tmp_path).get(KEY)


@pytest.mark.parametrize("key", ["../escape.webp", "/etc/passwd", "a//b", "ai/x.webp.meta.json"])
async def test_every_operation_refuses_unsafe_keys(tmp_path: Path, key: str) -> None:
    store = LocalStore(tmp_path / "root")
    with pytest.raises(StorageError):
        await put(store, key=key)
    with pytest.raises(StorageError):
        await store.get(key)
    with pytest.raises(StorageError):
        await store.exists(key)
    with pytest.raises(StorageError):
        store.url_for(key)
    assert not (tmp_path / "escape.webp").exists()


async def test_written_files_are_readable_by_others(tmp_path: Path) -> None:
    """mkstemp creates 0600 files; a web server running as another user must still read images."""
    store = LocalStore(tmp_path)
    await put(store)
    assert (tmp_path / KEY).stat().st_mode & 0o777 == 0o644


async def test_stats_never_walks_outside_the_store(tmp_path: Path) -> None:
    """Whatever prefix reaches it (the CLI and the config refuse these first), the walk stays in the store."""
    (tmp_path / "outside.webp").write_bytes(b"x")
    store = LocalStore(tmp_path / "images")
    with pytest.raises(StorageError, match=r"prefix '\.\./\.\.' leads outside"):
        await store.stats(prefix="../..")
