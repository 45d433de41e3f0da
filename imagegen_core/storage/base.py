"""The ``Store`` protocol every image store implements, and the object keys imagegen writes.

Keys are ``{prefix}/YYYY/MM/<uuid4 hex>.webp`` (the Worker's layout) and, for the default image,
``{prefix}/defaults/default-{w}x{h}.webp``. Every key passes :func:`safe_key` before it reaches a store,
so a key can never climb out of a local folder or smuggle control characters into a URL or log line.

A store's *destination* (:func:`store_destination`) names the place its objects go, without a secret: the spool
records it with each image it keeps, so that a flush uploads an image only to the store it was meant for.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from ..errors import StorageError, clip, one_line
from ..ids import new_id
from .stats import StorageStats

#: S3 and R2 refuse longer keys.
MAX_KEY_BYTES = 1024
#: NUL and the other C0 control characters, and DEL. One regex search: a character-by-character check in
#: Python cost ~150 steps per request on the hot path (every key is checked on write and on URL building).
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class StoredObject:
    """An object as written: its key, public URL, size in bytes and content type."""

    key: str
    url: str
    size: int
    content_type: str


@runtime_checkable
class Store(Protocol):
    """Where normalised images go (local folder, R2 / any S3-compatible bucket).

    Implementations raise :class:`~imagegen_core.errors.StorageError`, never a library exception.

    Optional, and so not a member of the protocol (stores written before it still are Stores): a ``destination``
    string naming the place the objects go, the same in every process that writes there and free of secrets
    (``LocalStore``: its folder; ``R2Store``: bucket and endpoint). See :func:`store_destination`.
    """

    #: Short backend name for logs and ``/admin/storage`` (``local``, ``r2``).
    name: str

    async def put(
        self, key: str, data: bytes, *, content_type: str, cache_control: str, metadata: dict[str, str]
    ) -> StoredObject:
        """Write ``data`` under ``key`` (replacing any previous object) and return where it is served."""
        ...

    async def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key`` (used to store the default image once per size)."""
        ...

    def url_for(self, key: str) -> str:
        """The permanent public URL of ``key``; pure computation, no I/O."""
        ...

    async def get(self, key: str) -> bytes:
        """The stored bytes (tests and tools; the service never reads back)."""
        ...

    async def stats(self, *, prefix: str) -> StorageStats:
        """Object count and bytes per ``YYYY-MM`` under ``prefix`` (``imagegen storage stats``,
        ``/admin/storage``); see :mod:`imagegen_core.storage.stats` for the counting rules."""
        ...

    async def check(self) -> None:
        """Raise StorageError (saying what to fix) when the store cannot be used; for health checks."""
        ...


def store_destination(store: object) -> str:
    """Where ``store`` puts its objects, in one line without a secret: what the spool records with an image it keeps
    for ``store`` (a flush uploads it only to a store with the same destination). The store's own ``destination``
    when it has one (``LocalStore``, ``R2Store`` and their subclasses: the same folder or bucket is the same
    place, whichever class writes there), else its class's qualified name (two processes building the same
    class of one's own are taken to write to the same place: give it a ``destination`` when they do not)."""
    own = getattr(store, "destination", None)
    if isinstance(own, str) and own.strip():
        return clip(one_line(own), 300)
    kind = type(store)
    return f"{kind.__module__}.{kind.__qualname__}"


def folder_destination(root: str | os.PathLike[str]) -> str:
    """A local folder's destination: ``local folder <its resolved path>`` (symbolic links followed, so two paths
    to one folder are one destination)."""
    return f"local folder {os.path.realpath(os.path.expanduser(os.fspath(root)))}"


def bucket_destination(bucket: str, endpoint_url: str) -> str:
    """A bucket's destination: ``r2 bucket <name> at <endpoint>``, the endpoint without user, password, query or
    fragment (none of which says where the bucket is, and a password would be a secret)."""
    parts = urlsplit(endpoint_url.strip())
    host = parts.hostname or ""
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not a port number: the address as written, less what precedes an "@"
        port = ":" + parts.netloc.rpartition("@")[2].rpartition(":")[2]
    netloc = (f"[{host}]" if ":" in host else host) + port
    return f"r2 bucket {bucket} at {urlunsplit((parts.scheme, netloc, parts.path.rstrip('/'), '', ''))}"


def safe_key(key: str) -> str:
    """Return ``key`` unchanged if it is a safe relative object key, else raise StorageError.

    Refused: empty keys, keys over 1024 UTF-8 bytes, absolute paths, backslashes, NUL and other control
    characters, and empty, ``.`` or ``..`` segments (``a//b``, ``a/./b``, ``../x``, a trailing ``/``).
    """
    if not key:
        raise StorageError("storage key is empty")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise StorageError(f"storage key longer than {MAX_KEY_BYTES} bytes")
    if key.startswith("/"):
        raise StorageError(f"storage key must be relative, not absolute: {clip(key, 80)!r}")
    if "\\" in key:
        raise StorageError(f"storage key must not contain a backslash: {clip(key, 80)!r}")
    if _CONTROL_CHARACTER.search(key):
        raise StorageError(f"storage key must not contain control characters: {clip(key, 80)!r}")
    if any(segment in ("", ".", "..") for segment in key.split("/")):
        raise StorageError(f"storage key has an empty, '.' or '..' segment: {clip(key, 80)!r}")
    return key


def make_key(prefix: str, *, now: datetime, ext: str = "webp", uid: str | None = None) -> str:
    """A new object key ``{prefix}/YYYY/MM/<uuid4 hex>.{ext}``; ``now`` (UTC) and ``uid`` are injectable
    for tests. The random uid makes keys unguessable and collision-free without coordination."""
    name = uid if uid is not None else new_id()
    return safe_key(f"{prefix.strip('/')}/{now:%Y}/{now:%m}/{name}.{ext}")


def default_image_key(prefix: str, width: int, height: int) -> str:
    """The key of the default image for one size, ``{prefix}/defaults/default-{w}x{h}.webp``: fixed, so
    it is drawn and stored once per size."""
    return safe_key(f"{prefix.strip('/')}/defaults/default-{width}x{height}.webp")
