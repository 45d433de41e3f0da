"""Path-safe keys: the request's fields (articleId with ``../``, NUL, or very long) only ever reach object
metadata and the log, never an object key or a file path — keys are ``<prefix>/YYYY/MM/<uuid4 hex>.webp``."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from imagegen_core import ImageGen, InvalidRequestError
from imagegen_core.errors import CUT_MARK
from imagegen_core.storage import LocalStore
from tests.api.conftest import fakes

KEY = re.compile(r"^ai/\d{4}/\d{2}/[0-9a-f]{32}\.webp$")
TRAVERSAL = "../../../../tmp/owned/../../etc/passwd"


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def log_rows(home: Path) -> list[tuple[str, str | None, str | None]]:
    conn = sqlite3.connect(home / "imagegen.db")
    try:
        return conn.execute("SELECT status, article_id, error FROM requests ORDER BY created_at").fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("article_id", [TRAVERSAL, "/etc/passwd", "..\\..\\windows\\system32", "a/./b/../../c"])
async def test_an_article_id_that_looks_like_a_path_goes_only_into_metadata_and_the_log(
    settings_factory: Any, tmp_path: Path, article_id: str
) -> None:
    settings = settings_factory()
    async with ImageGen.from_settings(settings) as gen:
        gen.set_config(fakes(painter={"latencyMs": 1}), source="test")
        result = await gen.generate({"prompt": "p", "width": 320, "height": 200, "articleId": article_id})
    assert result.success and result.key is not None and KEY.match(result.key), result.key
    images = settings.home / "images"
    written = files_under(tmp_path)
    assert all(p.resolve().is_relative_to(tmp_path.resolve()) for p in written)
    assert {p.relative_to(images).as_posix() for p in files_under(images)} <= {result.key, f"{result.key}.meta.json"}
    meta = await LocalStore(images).read_meta(result.key)
    assert meta["metadata"]["article-id"] == article_id.encode("ascii", "backslashreplace").decode()
    assert log_rows(settings.home) == [("success", article_id, None)]


@pytest.mark.parametrize(
    ("article_id", "reason"),
    [
        ("story\x00../../etc/passwd", "must not contain control characters"),
        ("a" * 10_000, "is 10000 characters; the limit is 200"),
        ("line\nbreak", "must not contain control characters"),
    ],
)
async def test_an_article_id_with_nul_or_too_long_is_refused_and_logged_without_storing_anything(
    settings_factory: Any, article_id: str, reason: str
) -> None:
    settings = settings_factory()
    async with ImageGen.from_settings(settings) as gen:
        gen.set_config(fakes(painter={"latencyMs": 1}), source="test")
        with pytest.raises(InvalidRequestError) as info:
            await gen.generate({"prompt": "p", "articleId": article_id})
        assert info.value.field == "articleId" and reason in str(info.value)
    assert not (settings.home / "images").exists() or files_under(settings.home / "images") == set()
    ((status, logged, error),) = log_rows(settings.home)
    assert status == "rejected" and reason in (error or "")
    # kept, capped, the cut marked
    assert logged is not None and len(logged) <= 2000 and article_id.startswith(logged.removesuffix(CUT_MARK))
