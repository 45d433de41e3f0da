"""What editors did before: searching the request log, showing its images, and reusing one for an article.

Used by the console's History and Generate pages (and usable from a notebook). The SQL lives in
:mod:`imagegen_core.log.history`, which also states what a reuse records. Stored images are read back
here, because a browser cannot load the ``file://`` URLs of the local store: the console sends the bytes.
"""

from __future__ import annotations

import asyncio
import io
import unicodedata
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

from .errors import ImageError, InvalidRequestError, StorageError, redact
from .ids import new_id
from .images import inspect_image
from .log.history import WITH_IMAGE, count_rows, get_request, record_reuse, search_requests
from .models import Attribution
from .storage.local import LocalStore

if TYPE_CHECKING:
    from .service import ImageGen

T = TypeVar("T")

#: Longest article id accepted (the same limit as a generate request's ``articleId``).
MAX_ARTICLE_ID_CHARS = 200


def search(
    gen: ImageGen, text: str | None = None, *, with_image: bool = False, limit: int = 20, offset: int = 0
) -> tuple[list[dict[str, Any]], int, int]:
    """A page of requests newest first matching ``text`` (prompt, keyword or article id; case-blind, a run of
    whitespace read as one space, and accent-blind on SQLite: "cafe" finds "Café"), the total of rows, and how
    many of those are reuses (counted apart: no request total counts a reuse, see the README). Each row's
    ``attribution`` is read as in :func:`_read_credit` (with ``credit_missing``). InvalidRequestError (field
    ``search``, saying the limit) when ``text`` is longer than
    :data:`~imagegen_core.log.history.MAX_SEARCH_CHARS` (500) characters.

    Texts are redacted once more for display: rows written by older versions or other tools may hold
    a secret that the service's own redaction never saw."""
    # Counted first: a search that finds nothing (or a page past the end) then costs one scan, not two.
    total, reuses = count_rows(gen.log, text=text, with_image=with_image)
    rows: list[dict[str, Any]] = []
    if total > offset:
        rows = search_requests(gen.log, text=text, with_image=with_image, limit=limit, offset=offset)
    secrets = gen.secret_values()
    for row in rows:
        for column in ("prompt", "keyword", "article_id", "error"):
            if row[column]:
                row[column] = redact(row[column], secrets)
        _read_credit(gen, row)
    return rows, total, reuses


def _read_credit(gen: ImageGen, row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with its ``attribution`` column read as an :class:`Attribution` (None when it has none: not a
    stock photo, or a row logged before credits were kept), and ``credit_missing``: True for a stock photo
    without one. QA: such a photo (logged before schema v4) was reused with no credit and no word of it, and
    Unsplash's terms require the credit wherever the photo is published."""
    row["attribution"] = Attribution.from_log(row.get("attribution"))
    row["credit_missing"] = (
        row["attribution"] is None
        and row.get("status") in WITH_IMAGE
        and bool(row.get("url"))
        and gen.needs_credit(row.get("provider"))
    )
    return row


def reuse(gen: ImageGen, request_id: str, article_id: str) -> dict[str, Any]:
    """Give ``article_id`` the image of request ``request_id``; returns the new history row, with the
    original's stock-photo credit (``attribution``, an :class:`Attribution` or None), which the article must
    publish as the original's did, and ``credit_missing`` (a stock photo whose credit was never recorded).

    Raises InvalidRequestError when the article id is empty or malformed, or when that request has no
    image to reuse (it failed, or is a comparison nobody picked from, or its image is gone from the store).
    """
    article = article_id.strip()
    if not article:
        raise InvalidRequestError("articleId", "enter the article id that should use this image")
    if len(article) > MAX_ARTICLE_ID_CHARS:
        raise InvalidRequestError("articleId", f"is {len(article)} characters; the limit is {MAX_ARTICLE_ID_CHARS}")
    if any(unicodedata.category(ch) == "Cc" for ch in article):
        raise InvalidRequestError("articleId", "must not contain control characters")
    original = get_request(gen.log, request_id)
    if original is None or original["status"] not in WITH_IMAGE or not original["url"]:
        raise InvalidRequestError("requestId", f"request {request_id!r} has no image to reuse")
    gone = _gone_from_the_store(gen, original)
    if gone:  # QA: recorded, and the editor handed a dead link, though the Generate page hides such URLs
        raise InvalidRequestError("requestId", f"the image of request {request_id!r} {gone}: generate a new one")
    reuse_id = new_id()
    record_reuse(gen.log, original, request_id=reuse_id, article_id=article)
    row = get_request(gen.log, reuse_id)
    assert row is not None
    return _read_credit(gen, row)


def _gone_from_the_store(gen: ImageGen, row: dict[str, Any]) -> str | None:
    """Why the image of a history ``row`` no longer serves, when the store says so: its local file is missing,
    or the store has no object under its key. None when it is there, or when that cannot be told (a hotlink, a
    store that does not answer, a URL of another store than the one configured now)."""
    url, key = row["url"], row.get("storage_key")
    if isinstance(gen.store, LocalStore) and url.startswith("file://"):
        path = local_path(gen, url)
        if path is None:
            return "is no longer in the store (its file is missing)"
        # QA: a file cut short or overwritten since was reused, its URL serving bytes no browser shows. Only here,
        # where reading it is cheap: an object store's copy is not downloaded to be checked.
        try:
            inspect_image(path.read_bytes())
        except (ImageError, OSError):
            return "is damaged in the store (its file no longer reads as an image)"
        return None
    if not key or url != gen.store.url_for(key):
        return None
    there = _ask_store(gen.store.exists(key))
    return None if there is not False else f"is no longer in the store (no object {key!r})"


def _ask_store(call: Coroutine[Any, Any, T]) -> T | None:
    """What a store's ``call`` answers, or None when the store fails (it is down, or refuses). Stores do their
    I/O in worker threads, so a short private loop here is safe (no loop-bound state)."""
    try:
        return asyncio.run(call)
    except StorageError:
        return None


def local_path(gen: ImageGen, url: str | None) -> Path | None:
    """The file behind a ``file://`` URL of the local store, or None: never a file outside the store's
    folder, whatever URL a log row holds."""
    store = gen.store
    if not url or not isinstance(store, LocalStore) or not url.startswith("file://"):
        return None
    path = Path(unquote(urlsplit(url).path)).resolve()
    root = store.root.resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def image_bytes(gen: ImageGen, *, url: str | None, key: str | None = None) -> bytes | None:
    """The stored image's bytes: the local file for a ``file://`` URL, else the store's copy of ``key``;
    None when neither exists (a hotlink, a missing object, an unreachable store)."""
    path = local_path(gen, url)
    if path is not None:
        try:
            return path.read_bytes()
        except OSError:
            return None
    if key is None:
        return None
    return _ask_store(gen.store.get(key))


def image_source(gen: ImageGen, *, url: str | None, key: str | None = None) -> bytes | str | None:
    """What a browser can show: bytes for the local store (``file://`` cannot load in a page), the URL
    itself for http(s) (R2, hotlinks), None when there is no image."""
    if not url:
        return None
    if url.startswith(("https://", "http://")):
        return url
    return image_bytes(gen, url=url, key=key)


def thumbnail(data: bytes, *, width: int = 320) -> bytes:
    """A small WebP of ``data`` for lists (a page of full-size images would be megabytes). Raises ImageError when
    ``data`` cannot be read as an image (a stored file cut short or overwritten)."""
    from PIL import Image  # lazy: keeps `import imagegen_core` light

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.thumbnail((width, width * 4))
            out = io.BytesIO()
            img.convert("RGB").save(out, format="WEBP", quality=80)
    except Exception as exc:  # Pillow raises many types on a damaged file (see images.inspect_image)
        raise ImageError(f"the stored image cannot be read: {type(exc).__name__}") from None
    return out.getvalue()
