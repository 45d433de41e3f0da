"""The spool of paid-for images the store refused: atomic entries, flush moves each entry exactly once,
failures keep entries, interrupted removals and keeps are handled, one flush at a time."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from imagegen_core.errors import StorageError
from imagegen_core.storage import LocalStore, Spool, StoredObject

CACHE = "public, max-age=31536000, immutable"


def keep(spool: Spool, key: str, data: bytes = b"RIFF-image-bytes") -> None:
    spool.keep(
        key, data, content_type="image/webp", cache_control=CACHE, metadata={"provider": "fal"}, reason="R2 down"
    )


class RecordingStore(LocalStore):
    """A local store that counts uploads and can be told to refuse them."""

    def __init__(self, root: Path, *, refuse: bool = False) -> None:
        super().__init__(root)
        self.refuse = refuse
        self.puts: list[str] = []

    async def put(self, key: str, data: bytes, **kwargs: Any) -> StoredObject:
        self.puts.append(key)
        if self.refuse:
            raise StorageError("R2 failed the upload (InternalError, HTTP 500, 4 attempts)")
        return await super().put(key, data, **kwargs)


def test_keep_writes_data_and_a_sidecar_and_lists_the_entry(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    assert spool.entries() == []  # the folder does not exist yet
    keep(spool, "ai/2026/11/a.webp", b"abc")
    (entry,) = spool.entries()
    assert (entry.key, entry.size, entry.content_type, entry.cache_control) == (
        "ai/2026/11/a.webp",
        3,
        "image/webp",
        CACHE,
    )
    assert entry.metadata == {"provider": "fal"} and entry.reason == "R2 down"
    assert entry.sha256 == hashlib.sha256(b"abc").hexdigest() and spool.read(entry) == b"abc"
    assert sorted(p.suffix for p in (tmp_path / "spool").iterdir()) == [".data", ".json"]


def test_a_failed_sidecar_write_leaves_no_entry_and_no_stray_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path)
    real_replace = os.replace

    def failing_replace(src: str, dst: str | Path) -> None:
        if str(dst).endswith(".json"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(StorageError, match="No space left on device") as info:
        keep(spool, "ai/2026/11/a.webp")
    assert "\n" not in str(info.value)
    assert spool.entries() == [] and list(tmp_path.iterdir()) == []


async def test_flush_moves_every_entry_once_and_a_second_flush_moves_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    keep(spool, "ai/2026/11/a.webp", b"aaa")
    keep(spool, "ai/2026/11/b.webp", b"bbb")
    store = RecordingStore(tmp_path / "bucket")
    report = await spool.flush(store)
    assert sorted(report.moved) == ["ai/2026/11/a.webp", "ai/2026/11/b.webp"] and report.ok
    assert await store.get("ai/2026/11/b.webp") == b"bbb"
    assert (await store.read_meta("ai/2026/11/a.webp"))["metadata"] == {"provider": "fal"}
    assert spool.entries() == [] and [p.name for p in (tmp_path / "spool").iterdir()] == [".flush.lock"]
    again = await spool.flush(store)
    assert (again.moved, again.failed) == ([], []) and len(store.puts) == 2


async def test_a_refused_upload_keeps_the_entry_and_reports_why(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    keep(spool, "ai/2026/11/a.webp")
    report = await spool.flush(RecordingStore(tmp_path / "bucket", refuse=True))
    assert report.failed == ["ai/2026/11/a.webp"] and not report.ok
    assert "HTTP 500" in report.errors["ai/2026/11/a.webp"]
    assert [e.key for e in spool.entries()] == ["ai/2026/11/a.webp"]


class OwnStore(RecordingStore):
    """A store of one's own that breaks the protocol: raises an OSError, or answers None."""

    def __init__(self, root: Path, *, fails_with: BaseException | None) -> None:
        super().__init__(root)
        self.fails_with = fails_with

    async def put(self, key: str, data: bytes, **kwargs: Any) -> StoredObject:
        self.puts.append(key)
        if self.fails_with is not None:
            raise self.fails_with
        return None  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("fails_with", "said"),
    [
        (OSError(5, "EIO"), "the store failed unexpectedly (OSError: [Errno 5] EIO)"),
        (None, "OwnStore.put answered NoneType"),
    ],
)
async def test_a_store_of_one_s_own_that_breaks_the_protocol_fails_the_upload_and_keeps_the_entry(
    tmp_path: Path, fails_with: BaseException | None, said: str
) -> None:
    """QA (embedding): ``await gen.spool.flush(gen.store)`` with a store of one's own raising OSError raised it (the
    background retry died with it), and one answering None had its image removed from the spool as uploaded; storing
    an answer calls both a failed upload."""
    spool = Spool(tmp_path / "spool")
    keep(spool, "ai/2026/11/a.webp")
    report = await spool.flush(OwnStore(tmp_path / "bucket", fails_with=fails_with))
    assert report.failed == ["ai/2026/11/a.webp"] and report.moved == [] and not report.ok
    assert said in report.errors["ai/2026/11/a.webp"]
    assert [e.key for e in spool.entries()] == ["ai/2026/11/a.webp"]


async def test_after_repeated_failures_the_rest_is_left_for_the_next_flush(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for name in "abcde":
        keep(spool, f"ai/2026/11/{name}.webp")
    store = RecordingStore(tmp_path / "bucket", refuse=True)
    report = await spool.flush(store, stop_after_failures=2)
    assert (len(report.failed), report.skipped, len(store.puts)) == (2, 3, 2)
    assert len(spool.entries()) == 5


async def test_a_crash_between_upload_and_removal_reuploads_the_same_key_harmlessly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path / "spool")
    keep(spool, "ai/2026/11/a.webp", b"paid")
    store = RecordingStore(tmp_path / "bucket")

    real_replace = os.replace

    def crash_on_the_mark(source: Any, target: Any) -> None:
        if str(target).endswith(".done"):  # the mark "uploaded" cannot be made
            raise OSError(5, "Input/output error")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", crash_on_the_mark)
    report = await spool.flush(store)
    assert report.failed == ["ai/2026/11/a.webp"] and "same key again" in report.errors["ai/2026/11/a.webp"]
    monkeypatch.undo()
    assert (await spool.flush(store)).moved == ["ai/2026/11/a.webp"]
    # Two uploads of the same bytes to the same key: still exactly one object.
    assert store.puts == ["ai/2026/11/a.webp"] * 2
    assert [p.name for p in (tmp_path / "bucket").rglob("*.webp")] == ["a.webp"]
    assert list((tmp_path / "spool").iterdir()) == [tmp_path / "spool" / ".flush.lock"]


async def test_a_removal_interrupted_after_the_upload_mark_is_finished_without_uploading_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path / "spool")
    keep(spool, "ai/2026/11/a.webp", b"paid")
    store = RecordingStore(tmp_path / "bucket")

    def crash(*args: Any, **kwargs: Any) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Path, "unlink", crash)  # marked uploaded, then neither file could be removed
    assert (await spool.flush(store)).moved == ["ai/2026/11/a.webp"]
    monkeypatch.undo()
    assert spool.entries() == [] and spool.waiting() == 0
    report = await spool.flush(store)
    assert (report.moved, report.set_aside, store.puts) == ([], {}, ["ai/2026/11/a.webp"])
    assert list((tmp_path / "spool").iterdir()) == [tmp_path / "spool" / ".flush.lock"]


async def test_a_sidecar_whose_data_is_gone_is_set_aside_never_deleted(tmp_path: Path) -> None:
    """QA: a sidecar without data was taken as "uploaded, removal interrupted" and deleted without a word, though
    the image had never been stored; uploads now leave their own mark (``.done``)."""
    spool = Spool(tmp_path / "spool")
    keep(spool, "ai/2026/11/a.webp")
    keep(spool, "ai/2026/11/b.webp")
    lost = next(e for e in spool.entries() if e.key.endswith("a.webp"))
    lost.data_path.unlink()  # a disk fault, a hand that cleaned up
    store = RecordingStore(tmp_path / "bucket")
    report = await spool.flush(store)
    assert (report.moved, store.puts) == (["ai/2026/11/b.webp"], ["ai/2026/11/b.webp"])
    (line,) = report.set_aside.values()
    assert line.startswith("spool entry 'ai/2026/11/a.webp' has lost its image file; set aside as ")
    (kept,) = (tmp_path / "spool" / "damaged").glob("*.json")
    assert json.loads(kept.read_text())["key"] == "ai/2026/11/a.webp"


async def test_an_unreadable_sidecar_is_set_aside_with_its_data_and_warned_about_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """QA: a sidecar that did not parse was skipped by every flush (its image waiting for ever, "spool is
    empty") with its warning twice per command."""
    spool = Spool(tmp_path / "spool")
    keep(spool, "ai/2026/11/a.webp", b"paid")
    (entry,) = spool.entries()
    entry.data_path.with_suffix(".json").write_text("{broken")
    with caplog.at_level(logging.WARNING, logger="imagegen.storage"):
        assert spool.entries() == [] and spool.waiting() == 0 and spool.entries() == []
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "ignoring unreadable spool sidecar" in warning and "the next flush sets it aside" in warning
    report = await spool.flush(RecordingStore(tmp_path / "bucket"))
    (line,) = report.set_aside.values()
    assert line.startswith(f"spool entry {entry.data_path.stem}.json cannot be read") and "set aside as" in line
    damaged = sorted(p.name for p in (tmp_path / "spool" / "damaged").iterdir())
    assert damaged == [f"{entry.data_path.stem}.data", f"{entry.data_path.stem}.json"]
    assert (tmp_path / "spool" / "damaged" / f"{entry.data_path.stem}.data").read_bytes() == b"paid"


async def test_data_without_sidecar_is_an_interrupted_keep_left_alone(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    keep(spool, "ai/2026/11/a.webp")
    (entry,) = spool.entries()
    entry.data_path.with_suffix(".json").unlink()
    store = RecordingStore(tmp_path / "bucket")
    assert spool.entries() == [] and (await spool.flush(store)).moved == []
    assert entry.data_path.exists()  # a paid image is never deleted unless uploaded


async def test_corrupt_data_is_reported_and_kept_in_the_damaged_folder(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    keep(spool, "ai/2026/11/a.webp", b"good")
    (entry,) = spool.entries()
    entry.data_path.write_bytes(b"evil")
    store = RecordingStore(tmp_path / "bucket")
    report = await spool.flush(store)
    line = report.set_aside["ai/2026/11/a.webp"]
    assert "corrupt" in line and str(tmp_path / "spool" / "damaged") in line and "\n" not in line
    assert report.failed == [] and report.ok and store.puts == [] and spool.entries() == []
    damaged = tmp_path / "spool" / "damaged"
    assert (damaged / entry.data_path.name).read_bytes() == b"evil"  # never deleted
    assert Spool(damaged).entries()[0].key == "ai/2026/11/a.webp"  # the key stays with it


async def test_damaged_entries_do_not_stop_the_healthy_ones_behind_them(tmp_path: Path) -> None:
    """Regression (QA): three damaged entries, the oldest, counted as three store failures in a row, so every
    flush stopped there ("moved 0, failed 3, 2 not tried") and the healthy images were never uploaded."""
    spool = Spool(tmp_path / "spool")
    for name in "abcde":
        keep(spool, f"ai/2026/11/{name}.webp", name.encode())
    for entry in spool.entries()[:3]:
        with open(entry.data_path, "ab") as fh:
            fh.write(b"x")  # bit rot
    store = RecordingStore(tmp_path / "bucket")
    report = await spool.flush(store, stop_after_failures=3)
    assert sorted(report.set_aside) == ["ai/2026/11/a.webp", "ai/2026/11/b.webp", "ai/2026/11/c.webp"]
    assert (report.moved, report.failed, report.skipped) == (["ai/2026/11/d.webp", "ai/2026/11/e.webp"], [], 0)
    assert spool.entries() == [] and len(list((tmp_path / "spool" / "damaged").iterdir())) == 6


async def test_unreadable_data_is_set_aside_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool")
    keep(spool, "ai/2026/11/a.webp")
    keep(spool, "ai/2026/11/b.webp")
    bad = spool.entries()[0].data_path
    real_read = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == bad:
            raise OSError(5, "Input/output error")
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    report = await spool.flush(RecordingStore(tmp_path / "bucket"))
    assert "cannot be read: Input/output error" in report.set_aside["ai/2026/11/a.webp"]
    assert report.moved == ["ai/2026/11/b.webp"] and report.ok


async def test_the_same_key_damaged_twice_keeps_both_copies(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for data in (b"first", b"second"):
        keep(spool, "ai/2026/11/a.webp", data)
        (entry,) = spool.entries()
        entry.data_path.write_bytes(data + b"!")
        await spool.flush(RecordingStore(tmp_path / "bucket"))
    damaged = tmp_path / "spool" / "damaged"
    assert sorted(p.read_bytes() for p in damaged.glob("*.data")) == [b"first!", b"second!"]


async def test_an_entry_that_cannot_be_set_aside_is_reported_as_failed_not_as_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path / "spool")
    for name in "abcd":
        keep(spool, f"ai/2026/11/{name}.webp")
    for entry in spool.entries()[:3]:
        entry.data_path.write_bytes(b"rot")
    read_only = OSError(30, "Read-only file system")

    def refuse(*args: Any) -> None:
        raise read_only

    from imagegen_core.storage import spool as spool_module

    monkeypatch.setattr(spool_module, "_durable_rename", refuse)
    report = await spool.flush(RecordingStore(tmp_path / "bucket"), stop_after_failures=3)
    assert len(report.failed) == 3 and report.moved == ["ai/2026/11/d.webp"] and report.skipped == 0
    assert "could not be moved" in report.errors["ai/2026/11/a.webp"]


class SilentStore(RecordingStore):
    """A store that accepts the upload and never answers (a server that hangs)."""

    async def put(self, key: str, data: bytes, **kwargs: Any) -> StoredObject:
        self.puts.append(key)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_an_upload_the_store_does_not_answer_stops_the_flush_at_once(tmp_path: Path) -> None:
    """QA (flush_hanging_store.sh): each entry waited R2's 4 tries of 30 s, three in a row before the flush
    stopped, 4-6 minutes in silence. Now one upload is waited for ``put_wait_s``, and the rest is left."""
    spool = Spool(tmp_path / "spool")
    for name in "abc":
        keep(spool, f"ai/2026/11/{name}.webp")
    store = SilentStore(tmp_path / "bucket")
    tried: list[tuple[str, int, int]] = []
    async with asyncio.timeout(5):
        report = await spool.flush(
            store, put_wait_s=0.1, on_try=lambda entry, number, count: tried.append((entry.key, number, count))
        )
    assert report.failed == ["ai/2026/11/a.webp"] and report.skipped == 2 and report.unanswered
    assert "did not answer the upload of 'ai/2026/11/a.webp' in 0.1 s" in report.errors["ai/2026/11/a.webp"]
    assert store.puts == ["ai/2026/11/a.webp"] and tried == [("ai/2026/11/a.webp", 1, 3)]
    assert len(spool.entries()) == 3


async def test_each_entry_is_announced_as_it_is_tried(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for name in "ab":
        keep(spool, f"ai/2026/11/{name}.webp")
    tried: list[tuple[str, int, int]] = []
    report = await spool.flush(
        RecordingStore(tmp_path / "bucket"),
        on_try=lambda entry, number, count: tried.append((entry.key, number, count)),
    )
    assert report.ok and not report.unanswered
    assert tried == [("ai/2026/11/a.webp", 1, 2), ("ai/2026/11/b.webp", 2, 2)]


async def test_only_one_flush_runs_at_a_time(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    keep(spool, "ai/2026/11/a.webp")
    with spool._flush_lock(), pytest.raises(StorageError, match="another flush"):
        await spool.flush(RecordingStore(tmp_path / "bucket"))


def test_keep_refuses_unsafe_keys(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        keep(Spool(tmp_path), "../escape.webp")


class Crash(BaseException):
    """The process dying at that point (nothing after it runs; no ``except OSError`` catches it)."""


def crash_at(monkeypatch: pytest.MonkeyPatch, name: str, *, suffix: str = "") -> None:
    """Make the spool module's ``name`` (a write or rename) kill the keep, for paths ending in ``suffix``."""
    from imagegen_core.storage import spool as spool_module

    real = getattr(spool_module, name)

    def dying(path: Path, *args: Any) -> None:
        if str(path).endswith(suffix):
            raise Crash
        real(path, *args)

    monkeypatch.setattr(spool_module, name, dying)


def age(folder: Path, pattern: str, seconds: float) -> None:
    """Make the files matching ``pattern`` look ``seconds`` old."""
    for path in folder.glob(pattern):
        then = path.stat().st_mtime - seconds
        os.utime(path, (then, then))


async def test_a_keep_that_died_after_writing_the_image_is_uploaded_by_the_next_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the data went first and the sidecar (with the key) after it; a process killed between the
    two left a paid image no flush could upload, nor ever reported. The sidecar now goes first, pending."""
    spool = Spool(tmp_path / "spool")
    crash_at(monkeypatch, "_durable_rename")
    with pytest.raises(Crash):
        keep(spool, "ai/2026/11/a.webp", b"paid image")
    monkeypatch.undo()
    assert spool.entries() == [] and spool.waiting() == 1  # not an entry yet, but counted as waiting

    store = RecordingStore(tmp_path / "bucket")
    assert (await spool.flush(store)).moved == [], "a young pending keep may still be under way: left alone"
    age(tmp_path / "spool", "*.pending", 120)
    report = await spool.flush(store)

    assert report.moved == ["ai/2026/11/a.webp"] and report.ok
    assert (tmp_path / "bucket" / "ai" / "2026" / "11" / "a.webp").read_bytes() == b"paid image"
    assert spool_files(tmp_path / "spool") == [] and spool.waiting() == 0


async def test_a_keep_that_died_before_the_image_was_whole_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path / "spool")
    crash_at(monkeypatch, "_durable_write", suffix=".data")
    with pytest.raises(Crash):
        keep(spool, "ai/2026/11/a.webp")
    monkeypatch.undo()
    age(tmp_path / "spool", "*.pending", 120)

    store = RecordingStore(tmp_path / "bucket")
    assert (await spool.flush(store)).moved == [] and store.puts == []
    assert spool_files(tmp_path / "spool") == [] and spool.waiting() == 0


async def test_a_write_that_died_half_way_leaves_no_temporary_file_for_ever(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    folder.mkdir()
    (folder / ".abc.data.0123456789ab.tmp").write_bytes(b"half an image")
    (folder / ".def.data.0123456789ab.tmp").write_bytes(b"a write under way")
    age(folder, ".abc*", 120)
    await Spool(folder).flush(RecordingStore(tmp_path / "bucket"))
    assert spool_files(folder) == [".def.data.0123456789ab.tmp"]


def spool_files(folder: Path) -> list[str]:
    """Everything in the spool folder but its flush lock."""
    return sorted(p.name for p in folder.iterdir() if p.name != ".flush.lock")


async def test_a_pending_keep_over_an_older_entry_of_the_key_keeps_the_older_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keeping a key again died before its new image was written: the pending sidecar does not match the data
    (the earlier image), so it is dropped and the earlier entry is uploaded as it was."""
    spool = Spool(tmp_path / "spool")
    keep(spool, "ai/2026/11/a.webp", b"first")
    crash_at(monkeypatch, "_durable_write", suffix=".data")
    with pytest.raises(Crash):
        keep(spool, "ai/2026/11/a.webp", b"second")
    monkeypatch.undo()
    age(tmp_path / "spool", "*.pending", 120)

    store = RecordingStore(tmp_path / "bucket")
    assert (await spool.flush(store)).moved == ["ai/2026/11/a.webp"]
    assert (tmp_path / "bucket" / "ai" / "2026" / "11" / "a.webp").read_bytes() == b"first"


def test_a_failed_keep_makes_the_spool_unusable_until_a_check_finds_it_usable_again(tmp_path: Path) -> None:
    """What /health reports: a keep that fails says so at once (no wait for the next periodic check), and the
    check after the operator's fix clears it; a usable spool is checked again with a write only once a minute."""
    now = [100.0]
    spool = Spool(tmp_path / "spool", clock=lambda: now[0])
    assert spool.problem() is None and spool.root.is_dir()  # the first look writes (and makes the folder)
    spool.root.rmdir()
    spool.root.write_text("in the way")
    with pytest.raises(StorageError):
        keep(spool, "ai/2026/11/a.webp")
    assert (problem := spool.problem()) is not None and problem.startswith(f"cannot use the spool {spool.root}")
    spool.root.unlink()
    assert spool.problem() is None  # looked at again while it had a problem: fixed
    spool.root.rmdir()
    assert spool.problem() is None and not spool.root.exists()  # fresh: no write (nor folder made) for a minute
    now[0] += 61
    assert spool.problem() is None and spool.root.is_dir()  # checked again: the folder made anew


def test_a_spool_on_a_full_disk_is_told_to_free_space_not_to_fix_permissions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA: with IMAGEGEN_HOME on a full disk, /admin/status said "No space left on device (it must be a folder
    this user can read and write: fix its permissions, …)": the advice of a permission problem, for a full disk."""
    spool = Spool(tmp_path / "spool")
    real_open = os.open

    def full_disk(path: Any, *args: Any, **kwargs: Any) -> int:
        if str(path).startswith(str(spool.root)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", full_disk)
    problem = spool.check()
    assert problem == (
        f"cannot use the spool {spool.root}: No space left on device (the disk is full: free space on {spool.root})"
    )
