"""``GET /files/{key}``: the local store's images over HTTP, with their stored Content-Type and Cache-Control.

Point ``IMAGEGEN_PUBLIC_BASE_URL`` at ``http(s)://<host>/files`` and result URLs lead here. Only keys inside
the store are served: traversal (``..``, absolute paths, encoded ``%2e%2e``, NUL, backslashes) is refused by
:func:`~imagegen_core.storage.base.safe_key`, symlinks leading out of the folder are not followed, and the
``.meta.json`` sidecars and dot-files (half-written temporaries) are not served at all. ``Range`` requests are
served (206); one that is not valid, or that asks for more than :data:`MAX_RANGES` ranges, is ignored (the whole
image), one past the end is a 416 in the API's error shape. Only raster image types are served as such
(:data:`SERVED_TYPES`), any other as application/octet-stream. A client whose copy is current
(``If-None-Match``, ``If-Modified-Since``) gets a 304.
"""

from __future__ import annotations

import stat
from email.utils import parsedate_to_datetime

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, MalformedRangeHeader, RangeNotSatisfiable, Response

from ..errors import StorageError
from ..storage.base import safe_key
from ..storage.local import META_SUFFIX, LocalStore
from .context import Gen
from .errors import ApiError, error_responses

router = APIRouter()


#: Byte ranges served in one answer; a Range header asking for more gets the whole image (200).
MAX_RANGES = 8

#: The types imagegen stores (WebP; a provider's raster image as it came). Anything else in the folder, say an HTML
#: page or an SVG copied in by hand, would run its scripts on the API's origin if served as its name suggests.
SERVED_TYPES = frozenset({"image/webp", "image/png", "image/jpeg", "image/gif", "image/avif"})


def _not_found() -> ApiError:
    return ApiError(404, "no such image", field="key")


class StoredFileResponse(FileResponse):
    """Starlette's FileResponse (ranges included), except for the ``Range`` headers it refuses. One in another
    unit than bytes, or whose byte ranges are not valid (``bytes=5-1``, ``bytes=abc``), is ignored: the whole
    image, 200, as RFC 9110 §14.2 requires ("MUST ignore"; Starlette answered 400 in plain text, QA). A range
    that starts past the end is a 416 in the API's error shape (Starlette's had an empty body)."""

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        try:
            ranges = super()._parse_range_header(http_range, file_size)
        except MalformedRangeHeader:
            return []  # no range: the whole file
        except RangeNotSatisfiable:
            raise ApiError(
                416,
                f"the range starts past the end of the image ({file_size} bytes)",
                field="Range",
                headers={"Content-Range": f"bytes */{file_size}"},
            ) from None
        # Many small ranges cost a multipart header each: 50 one-byte ranges answered 4.6 times the image (QA).
        # No image viewer asks for more than a few; RFC 9110 §14.2 lets a server ignore the header.
        return ranges if len(ranges) <= MAX_RANGES else []


@router.get(
    "/files/{key:path}",
    summary="An image from the local store",
    response_class=FileResponse,
    responses=error_responses(400, 404, 416),
)
@router.head("/files/{key:path}", include_in_schema=False)
async def serve_file(key: str, gen: Gen, request: Request) -> Response:
    """The stored bytes with the object's Content-Type and Cache-Control; 400 for a key that could escape
    the store, 404 for anything not stored (or when the store is not the local folder); 304 when the
    client's copy is current (``If-None-Match`` with the ETag, or ``If-Modified-Since``)."""
    store = gen.store
    if not isinstance(store, LocalStore):
        raise ApiError(404, "images are served here only from the local store", field="key")
    try:
        safe_key(key)
    except StorageError as exc:
        raise ApiError(400, str(exc).removeprefix("storage key "), field="key") from None
    if key.endswith(META_SUFFIX) or any(part.startswith(".") for part in key.split("/")):
        raise _not_found()
    path = store.path_for(key)
    root = store.root.resolve()
    try:
        real = path.resolve(strict=True)
        stat_result = real.stat()  # one stat: whether it is a file, and the ETag and Last-Modified
    except (OSError, RuntimeError):  # missing, or a symlink loop
        raise _not_found() from None
    if not real.is_relative_to(root) or not stat.S_ISREG(stat_result.st_mode):
        raise _not_found()
    try:
        meta = await store.read_meta(key)
    except StorageError:
        raise _not_found() from None  # gone since the checks above, or its metadata is unreadable
    headers = {
        "Cache-Control": str(meta.get("cache_control") or "no-cache"),
        "X-Content-Type-Options": "nosniff",  # never let a browser reinterpret a stored object
    }
    content_type = str(meta.get("content_type") or "")
    if content_type.split(";")[0].strip().lower() not in SERVED_TYPES:
        content_type = "application/octet-stream"  # with nosniff: downloaded, never rendered
    response = StoredFileResponse(real, media_type=content_type, headers=headers, stat_result=stat_result)
    if _client_copy_is_current(request, response.headers["etag"], stat_result.st_mtime):
        kept = ("etag", "last-modified", "cache-control", "x-content-type-options")
        return Response(status_code=304, headers={name: response.headers[name] for name in kept})
    return response


def _client_copy_is_current(request: Request, etag: str, modified: float) -> bool:
    """RFC 9110 §13.1.2-3: If-None-Match decides when given (a weak comparison; ``*`` matches any image);
    else If-Modified-Since, to the second."""
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return "*" in tags or etag.removeprefix("W/") in tags
    if_modified_since = request.headers.get("if-modified-since")
    if if_modified_since is None:
        return False
    try:
        since = parsedate_to_datetime(if_modified_since)
    except (TypeError, ValueError):  # not an HTTP date: ignored, as the RFC says
        return False
    return since.tzinfo is not None and int(modified) <= since.timestamp()
