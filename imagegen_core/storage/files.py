"""Atomic file writes, shared by the local store (public images) and the spool (paid-for images kept until
they are uploaded): a reader or a crash never sees half a file."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping

from ..ids import new_id

#: The end of :func:`atomic_write`'s temporary file names (hidden files: ``.<name>.<random>.tmp``).
_TEMPORARY_SUFFIX = ".tmp"


class AttributeNotStored(OSError):
    """The filesystem refused an extended attribute (``errno`` says why); nothing was written."""


def atomic_write(
    folder: str,
    name: str,
    data: bytes,
    *,
    mode: int = 0o644,
    durable: bool = False,
    xattrs: Mapping[str, bytes] | None = None,
) -> None:
    """Write ``folder/name`` via a uniquely named temporary file in the same folder (same filesystem, so
    ``os.replace`` is atomic); the temporary file is removed on any failure. The file gets exactly ``mode``,
    whatever the umask, and the extended attributes ``xattrs`` (set before the rename, so the file never
    appears without them; :class:`AttributeNotStored` when the filesystem refuses one). ``durable``: fsync
    the file before the rename and the folder after it, so the file is whole or absent even after a power
    loss. Plain ``os`` calls: half the system calls of ``mkstemp`` plus ``fdopen``, on every stored image."""
    tmp = os.path.join(folder, f".{name}.{new_id()[:12]}{_TEMPORARY_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)  # O_EXCL: never someone else's
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed it
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            for attribute, value in (xattrs or {}).items():
                try:
                    os.setxattr(fd, attribute, value)
                except OSError as exc:
                    raise AttributeNotStored(exc.errno, f"extended attribute {attribute}: {exc.strerror}") from exc
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, os.path.join(folder, name))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_folder(folder)


def fsync_folder(folder: str) -> None:
    """Make the names in ``folder`` durable (a rename or a new file survives a power loss), where the
    filesystem allows it."""
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be fsync-ed
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def is_temporary(name: str) -> bool:
    """Whether ``name`` is one of :func:`atomic_write`'s temporary files (left behind by a write that died)."""
    return name.startswith(".") and name.endswith(_TEMPORARY_SUFFIX)
