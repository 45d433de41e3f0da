"""The local-folder store: the default, so imagegen works on a fresh machine with no cloud account.

Objects are files under ``root/<key>``; each has a sidecar ``<file>.meta.json`` with its content type,
Cache-Control and metadata, which the HTTP API uses when it serves the folder. Writes are atomic
(a temporary file in the same folder, then ``os.replace``), so a reader or a crash never sees half an
image. File I/O runs in a worker thread to keep the event loop free.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import StorageError
from .base import StoredObject, safe_key
from .files import atomic_write
from .stats import StorageStats, listing_prefix, tally

#: Suffix of the metadata sidecar next to each object; keys ending in it are refused.
META_SUFFIX = ".meta.json"


class LocalStore:
    """A :class:`~imagegen_core.storage.base.Store` over a local folder.

    ``url_for`` gives ``public_base_url + '/' + key`` when the folder is served over HTTP (the API's
    static route, a reverse proxy), else the file's ``file://`` URI.
    """

    name = "local"

    def __init__(self, root: Path, *, public_base_url: str | None = None) -> None:
        self.root = Path(root).expanduser().absolute()
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None

    def __repr__(self) -> str:
        return f"LocalStore(root={str(self.root)!r}, public_base_url={self.public_base_url!r})"

    def path_for(self, key: str) -> Path:
        """The file that holds ``key`` (StorageError for an unsafe key)."""
        safe_key(key)
        if key.endswith(META_SUFFIX):
            raise StorageError(f"storage key must not end in {META_SUFFIX!r} (reserved for metadata): {key[:80]!r}")
        return self.root.joinpath(*key.split("/"))

    def meta_path_for(self, key: str) -> Path:
        """The metadata sidecar of ``key``."""
        path = self.path_for(key)
        return path.with_name(path.name + META_SUFFIX)

    def url_for(self, key: str) -> str:
        """The public URL of ``key`` (percent-encoded), or its ``file://`` URI without a public base."""
        path = self.path_for(key)
        if self.public_base_url:
            return f"{self.public_base_url}/{quote(key, safe='/')}"
        return path.as_uri()

    async def put(
        self, key: str, data: bytes, *, content_type: str, cache_control: str, metadata: dict[str, str]
    ) -> StoredObject:
        """Write ``data`` and its sidecar atomically, replacing any previous object under ``key``."""
        path = self.path_for(key)
        meta = {"content_type": content_type, "cache_control": cache_control, "metadata": dict(metadata)}
        encoded = json.dumps(meta, ensure_ascii=True, sort_keys=True).encode("ascii")
        await asyncio.to_thread(self._write, key, path, data, encoded)
        return StoredObject(key=key, url=self.url_for(key), size=len(data), content_type=content_type)

    async def exists(self, key: str) -> bool:
        """Whether ``key`` is stored. A single ``stat``: cheap enough to run on the event loop."""
        path = self.path_for(key)
        try:
            return path.is_file()
        except OSError as exc:
            raise StorageError(self._message("check", key, exc)) from None

    async def get(self, key: str) -> bytes:
        """The stored bytes; StorageError when missing or unreadable."""
        return await asyncio.to_thread(self._read, key, self.path_for(key))

    async def read_meta(self, key: str) -> dict[str, Any]:
        """The sidecar (``content_type``, ``cache_control``, ``metadata``) of ``key``."""
        raw = await asyncio.to_thread(self._read, key, self.meta_path_for(key))
        try:
            meta = json.loads(raw)
        except ValueError:
            raise StorageError(f"local store: corrupt metadata for {key!r} in {self.root}") from None
        if not isinstance(meta, dict):
            raise StorageError(f"local store: corrupt metadata for {key!r} in {self.root}")
        return meta

    async def stats(self, *, prefix: str) -> StorageStats:
        """Usage per month under ``prefix``, from a walk of the folder (sidecars and temp files skipped)."""
        return await asyncio.to_thread(self._stats, prefix)

    async def check(self) -> None:
        """StorageError unless the folder exists (or can be created) and is writable."""
        await asyncio.to_thread(self._check)

    def _stats(self, prefix: str) -> StorageStats:
        start = listing_prefix(prefix)
        top = self.root.joinpath(*start.strip("/").split("/")) if start else self.root
        items: list[tuple[str, int]] = []
        for folder, _dirs, files in os.walk(top):
            for name in files:
                if name.endswith(META_SUFFIX) or (name.startswith(".") and name.endswith(".tmp")):
                    continue
                path = Path(folder, name)
                try:
                    size = path.stat().st_size
                except OSError:  # removed while walking
                    continue
                items.append((path.relative_to(self.root).as_posix(), size))
        return tally(items, prefix=prefix, backend=self.name, location=str(self.root))

    def _check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(self._message("create", ".", exc)) from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageError(
                f"local store: folder {self.root} is not writable (fix its permissions or IMAGEGEN_HOME)"
            )

    def _write(self, key: str, path: Path, data: bytes, meta: bytes) -> None:
        folder = str(path.parent)
        try:
            # Sidecar first: every visible image then has its metadata (an orphan sidecar is harmless).
            try:
                atomic_write(folder, path.name + META_SUFFIX, meta)
            except FileNotFoundError:  # a month's first object (or a deleted folder): create it, once
                os.makedirs(folder, exist_ok=True)
                atomic_write(folder, path.name + META_SUFFIX, meta)
            atomic_write(folder, path.name, data)
        except OSError as exc:
            raise StorageError(self._message("write", key, exc)) from None

    def _read(self, key: str, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise StorageError(f"local store: no object {key!r} in {self.root}") from None
        except OSError as exc:
            raise StorageError(self._message("read", key, exc)) from None

    def _message(self, verb: str, key: str, exc: OSError) -> str:
        reason = exc.strerror or type(exc).__name__
        return f"local store: cannot {verb} {key!r} in {self.root}: {reason} (check the folder exists and is writable)"
