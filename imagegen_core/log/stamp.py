"""A change stamp next to a SQLite log: lets a request skip its reads of what rarely changes.

Before racing, every request needs the config version in force and each provider's breaker state, which any
process on the machine may change (``imagegen config set``, the console's breaker page, another API worker).
Reading both from SQLite costs more CPU than the rest of admission. Instead, a commit that changes either one
writes a new random token into a tiny memory-mapped file beside the database, *after* the commit; a request
compares the token with the one it saw at its last read, a memory access with no system call, and reads the
database only when it moved. The next request after a change, in any process, sees the change.

SQLite only: processes sharing a SQLite file share a machine, hence the file. Where the file cannot be made
(a read-only folder), :meth:`ChangeStamp.token` returns None and callers read every time.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import threading
from pathlib import Path

_log = logging.getLogger("imagegen.log")

#: Bytes of the token.
TOKEN_BYTES = 8


class ChangeStamp:
    """The stamp file of the log at ``db_file`` (``<db_file>-stamp``), mapped on first use."""

    def __init__(self, db_file: Path) -> None:
        self.path = db_file.with_name(db_file.name + "-stamp")
        self._lock = threading.Lock()
        self._map: mmap.mmap | None = None
        self._broken = False

    def token(self) -> bytes | None:
        """The current token, or None when the stamp is unavailable (then nothing may be cached)."""
        mapped = self._mapped()
        if mapped is None:
            return None
        try:
            return mapped[:TOKEN_BYTES]
        except ValueError:  # closed meanwhile by another thread (LogDB.close): nothing may be cached then
            return None

    def bump(self) -> None:
        """Tell every process that something it caches changed: call after the change has committed."""
        mapped = self._mapped()
        if mapped is not None:
            # Random, not a counter: two processes bumping at once still leave a token nobody has seen.
            with contextlib.suppress(ValueError):  # closed meanwhile: the next open maps the file afresh
                mapped[:TOKEN_BYTES] = os.urandom(TOKEN_BYTES)

    def close(self) -> None:
        """Unmap the file (a later call maps it again)."""
        with self._lock:
            mapped, self._map, self._broken = self._map, None, False
        if mapped is not None:
            with contextlib.suppress(BufferError):  # a token slice still referenced: the GC unmaps it later
                mapped.close()

    def _mapped(self) -> mmap.mmap | None:
        # Without the lock once mapped: this runs on every request.
        return self._map if self._map is not None else self._open()

    def _open(self) -> mmap.mmap | None:
        with self._lock:
            if self._map is not None or self._broken:
                return self._map
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                try:
                    _allocate(fd)
                    self._map = mmap.mmap(fd, TOKEN_BYTES)
                finally:
                    os.close(fd)
            except (OSError, ValueError) as exc:
                self._broken = True
                _log.warning("change stamp %s unavailable, reading the log on every request: %s", self.path, exc)
            return self._map


def _allocate(fd: int) -> None:
    """Give the stamp's bytes real disk blocks, or raise OSError (ENOSPC on a full disk).

    Growing the file with ``ftruncate`` alone leaves a hole, and the first write through the mapping then
    needs a block: on a full disk the kernel answers that with SIGBUS, which killed the process without a
    word (CLI and API server alike). Allocated up front, a full disk is an OSError here instead, and the
    stamp is merely unavailable. Existing holes (stamps grown by earlier versions) are filled the same way."""
    try:
        os.posix_fallocate(fd, 0, TOKEN_BYTES)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # ENOSPC and the like: no stamp
            raise
        # A filesystem without fallocate: written bytes have blocks. Only a new or short file is written, so
        # a token another process has set is never overwritten.
        if os.fstat(fd).st_size < TOKEN_BYTES:
            os.pwrite(fd, bytes(TOKEN_BYTES), 0)
