"""Storage statistics: objects and bytes per YYYY-MM under the prefix; default images and other objects
counted apart; the same rules for the local folder (R2 listings are tested against weed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagegen_core.errors import StorageError
from imagegen_core.storage import LocalStore
from imagegen_core.storage.stats import MonthUsage, Usage, listing_prefix, tally


def test_tally_counts_months_defaults_and_other_objects_apart() -> None:
    items = [
        ("ai/2026/10/a.webp", 100),
        ("ai/2026/11/b.webp", 10),
        ("ai/2026/11/c.webp", 20),
        ("ai/defaults/default-1200x630.webp", 5),
        ("ai/notes.txt", 7),
        ("ai/2026/13/bad-month.webp", 1),
        ("ai-archive/2026/11/elsewhere.webp", 999),  # another prefix: not counted
    ]
    stats = tally(items, prefix="ai", backend="r2", location="bucket b")
    assert stats.months == (MonthUsage("2026-10", 1, 100), MonthUsage("2026-11", 2, 30))
    assert stats.defaults == Usage(1, 5) and stats.other == Usage(2, 8)
    assert stats.total == Usage(6, 143)
    document = stats.to_dict()
    assert document["months"][1] == {"month": "2026-11", "objects": 2, "bytes": 30}
    assert (document["totalObjects"], document["totalBytes"], document["prefix"]) == (6, 143, "ai")


def test_listing_prefix_never_matches_a_longer_sibling() -> None:
    assert listing_prefix("ai") == listing_prefix("/ai/") == "ai/"
    assert listing_prefix("news/img") == "news/img/" and listing_prefix("") == ""


async def test_local_store_stats_walk_the_folder_skipping_sidecars_and_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for key, size in [("ai/2026/11/a.webp", 3), ("ai/2026/11/b.webp", 4), ("ai/defaults/default-8x8.webp", 2)]:
        await store.put(key, b"x" * size, content_type="image/webp", cache_control="c", metadata={})
    (tmp_path / "ai" / "2026" / "11" / ".a.webp.123.tmp").write_bytes(b"partial")
    (tmp_path / "other-prefix").mkdir()
    (tmp_path / "other-prefix" / "z.webp").write_bytes(b"zz")
    stats = await store.stats(prefix="ai")
    assert stats.months == (MonthUsage("2026-11", 2, 7),) and stats.defaults == Usage(1, 2)
    assert stats.other == Usage() and stats.backend == "local" and stats.location == str(tmp_path)
    assert (await LocalStore(tmp_path / "missing").stats(prefix="ai")).total == Usage()


async def test_local_store_check_reports_an_unusable_folder(tmp_path: Path) -> None:
    await LocalStore(tmp_path / "new").check()
    assert (tmp_path / "new").is_dir()
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StorageError, match="cannot create"):
        await LocalStore(tmp_path / "file").check()
