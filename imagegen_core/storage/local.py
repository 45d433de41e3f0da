"""The local-folder store: the default, so imagegen works on a fresh machine with no cloud account.

Objects are files under ``root/<key>``. Each object's content type, Cache-Control and metadata (JSON,
which the HTTP API uses when it serves the folder) live in its extended attribute ``user.imagegen.meta``
(``getfattr -n user.imagegen.meta FILE`` shows it), set before the file appears. Where the filesystem
has no user extended attributes (or the platform, e.g. macOS, has no ``os.setxattr``), they go to a
sidecar ``<file>.meta.json`` written first instead. Why not always the sidecar: creating a file is the
dearest thing a store does on many disks. On this project's ext4 VM the second file cost 40–60 µs of CPU
per image when the disk was quick and 1.2–2 ms per request (10–20 % of throughput) when it was slow.
A file whose metadata is lost (copied by a tool that drops extended attributes) is still served, with a
content type guessed from its name.

Writes are atomic (a temporary file in the same folder, then ``os.replace``), so a reader or a crash never
sees half an image. File I/O runs in a worker thread to keep the event loop free.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import mimetypes
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import StorageError, clip
from .base import StoredObject, folder_destination, safe_key
from .files import AttributeNotStored, atomic_write
from .stats import StorageStats, listing_prefix, tally

#: Suffix of the metadata sidecar next to each object; keys ending in it are refused.
META_SUFFIX = ".meta.json"
#: The extended attribute that holds an object's metadata.
META_XATTR = "user.imagegen.meta"
#: Errors meaning "this filesystem keeps no user extended attributes" (not "this one did not fit").
_NO_XATTRS = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM})
#: Errors meaning "no metadata in an extended attribute here": read the sidecar instead.
_NO_ATTRIBUTE = frozenset({errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP})
#: Errors meaning "the disk (or this user's quota on it) is full".
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
#: Bytes :meth:`LocalStore.check` writes: about a small image, so a disk with room for nothing else fails it.
PROBE_BYTES = 4096
#: The probe's name ends as a temporary file's does: the usage walk skips it like one.
_PROBE_SUFFIX = ".tmp"

_log = logging.getLogger(__name__)


class LocalStore:
    """A :class:`~imagegen_core.storage.base.Store` over a local folder.

    ``url_for`` gives ``public_base_url + '/' + key`` when the folder is served over HTTP (the API's
    static route, a reverse proxy), else the file's ``file://`` URI.
    """

    name = "local"

    def __init__(self, root: Path, *, public_base_url: str | None = None) -> None:
        self.root = Path(root).expanduser().absolute()
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        #: Whether metadata goes to an extended attribute; turned off for good by a filesystem without them.
        self.metadata_in_xattr = hasattr(os, "setxattr")

    @property
    def destination(self) -> str:
        """``local folder <root, resolved>``: what the spool records with an image kept for this store."""
        return folder_destination(self.root)

    def __repr__(self) -> str:
        return f"LocalStore(root={str(self.root)!r}, public_base_url={self.public_base_url!r})"

    def path_for(self, key: str) -> Path:
        """The file that holds ``key`` (StorageError for an unsafe key)."""
        safe_key(key)
        if key.endswith(META_SUFFIX):
            raise StorageError(
                f"storage key must not end in {META_SUFFIX!r} (reserved for metadata): {clip(key, 80)!r}"
            )
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
        """Write ``data`` and its metadata atomically, replacing any previous object under ``key``."""
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
        """The metadata (``content_type``, ``cache_control``, ``metadata``) of ``key``: from its extended
        attribute, else its sidecar, else (a copy that lost both) the content type its name suggests."""
        raw = await asyncio.to_thread(self._read_meta, key, self.path_for(key))
        if raw is None:
            guessed, _ = mimetypes.guess_type(key)
            return {"content_type": guessed or "application/octet-stream", "cache_control": None, "metadata": {}}
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
        """StorageError unless the folder exists (or can be created) and takes a write (``/health`` asks every
        few seconds at most: its answer is reused)."""
        await asyncio.to_thread(self._check)

    def _stats(self, prefix: str) -> StorageStats:
        if self.root.exists() and not self.root.is_dir():  # os.walk would report an empty store
            raise StorageError(f"local store: {self.root} is a file, not a folder: move it away")
        start = listing_prefix(prefix)
        top = self.root.joinpath(*start.strip("/").split("/")) if start else self.root
        root = self.root.resolve()
        if not top.resolve().is_relative_to(root):  # "../.." would count the folders around it
            raise StorageError(f"local store: prefix {prefix!r} leads outside {self.root}")
        items: list[tuple[str, int]] = []

        def unreadable(exc: OSError) -> None:
            # os.walk skips a folder it cannot list without a word: the sizes then left it out and the command
            # said exit 0 (QA: a month folder made unreadable showed "total 0").
            if isinstance(exc, FileNotFoundError):
                return  # no store yet, or removed while walking: nothing there to count
            raise StorageError(f"local store: cannot list {exc.filename}: {exc.strerror}: fix its permissions")

        for folder, _dirs, files in os.walk(top, onerror=unreadable):
            for name in files:
                if name.endswith(META_SUFFIX) or (name.startswith(".") and name.endswith(".tmp")):
                    continue
                path = Path(folder, name)
                try:
                    # A link out of the folder is no image of the store: /files answers 404 for it, and its
                    # target's size (the log database's, say) was counted (QA).
                    if path.is_symlink() and not path.resolve().is_relative_to(root):
                        continue
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
        # A write, not just the permission: a full disk passes os.access, and then every image was refused
        # while /health said the store was ok (SRE). A small image's size, in a dot-file nothing serves or counts.
        probe = os.path.join(self.root, f".check-{os.getpid()}{_PROBE_SUFFIX}")
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, bytes(PROBE_BYTES))
            finally:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(probe)
        except OSError as exc:
            raise StorageError(self._message("write", ".", exc)) from None

    def _write(self, key: str, path: Path, data: bytes, meta: bytes) -> None:
        folder = str(path.parent)
        try:
            try:
                self._write_object(folder, path.name, data, meta)
            except FileNotFoundError:  # a month's first object (or a deleted folder): create it, once
                os.makedirs(folder, exist_ok=True)
                self._write_object(folder, path.name, data, meta)
        except OSError as exc:
            raise StorageError(self._message("write", key, exc)) from None

    def _write_object(self, folder: str, name: str, data: bytes, meta: bytes) -> None:
        sidecar = os.path.join(folder, name + META_SUFFIX)
        if self.metadata_in_xattr:
            try:
                atomic_write(folder, name, data, xattrs={META_XATTR: meta})
            except AttributeNotStored as exc:
                if exc.errno in _NO_XATTRS:
                    self.metadata_in_xattr = False
                    _log.info("local store %s: no extended attributes (%s); metadata goes to sidecars", self.root, exc)
                # else this one did not fit (too large for the filesystem): a sidecar for this object only
            else:
                # An older object's sidecar would be stale; one that cannot go is harmless (the attribute wins).
                with contextlib.suppress(OSError):
                    os.unlink(sidecar)
                return
        # Sidecar first: every visible image then has its metadata (an orphan sidecar is harmless).
        atomic_write(folder, name + META_SUFFIX, meta)
        atomic_write(folder, name, data)

    def _read_meta(self, key: str, path: Path) -> bytes | None:
        """The raw metadata of ``key``, or None when the object exists without any."""
        if hasattr(os, "getxattr"):
            try:
                return os.getxattr(path, META_XATTR)
            except FileNotFoundError:
                raise self._no_object(key) from None
            except OSError as exc:
                if exc.errno not in _NO_ATTRIBUTE:
                    raise StorageError(self._message("read", key, exc)) from None
        try:
            return self.meta_path_for(key).read_bytes()
        except FileNotFoundError:
            if path.is_file():
                return None
            raise self._no_object(key) from None
        except OSError as exc:
            raise StorageError(self._message("read", key, exc)) from None

    def _read(self, key: str, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise self._no_object(key) from None
        except OSError as exc:
            raise StorageError(self._message("read", key, exc)) from None

    def _no_object(self, key: str) -> StorageError:
        return StorageError(f"local store: no object {key!r} in {self.root}")

    def _message(self, verb: str, key: str, exc: OSError) -> str:
        reason = exc.strerror or type(exc).__name__
        if exc.errno in _DISK_FULL:  # the folder is fine: telling the user to check it sends them the wrong way
            fix = "free some space on that disk, or point IMAGEGEN_HOME at another one"
        else:
            fix = "check the folder exists and is writable"
        return f"local store: cannot {verb} {key!r} in {self.root}: {reason} ({fix})"
