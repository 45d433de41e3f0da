"""A change stamp next to a SQLite log: lets a request skip its reads of what rarely changes.

Before racing, every request needs the config version in force and each provider's breaker state, which any
process on the machine may change (``imagegen config set``, the console's breaker page, another API worker).
Reading both from SQLite costs more CPU than the rest of admission. Instead, a commit that changes either one
writes a new random token into a tiny file beside the database, *after* the commit; a request compares the
token with the one it saw at its last read, one ``pread`` of 8 bytes (under a microsecond), and reads the
database only when it moved. The next request after a change, in any process, sees the change.

The file is read with ``pread``, not through a memory map: a mapped file that shrinks under its reader
(``: > imagegen.db-stamp``) kills the reader with SIGBUS at its next access, and nothing in the process can
catch that. Read so, a shrunk stamp is a short read, and is written afresh with a new token. A stamp replaced
or deleted under a process is noticed within :data:`IDENTITY_CHECK_S` (the path is checked against the open
file that often, and at every bump), then opened afresh with a new token: every process reads once more.

SQLite only: processes sharing a SQLite file share a machine, hence the file. Where the file cannot be made
(a read-only folder), :meth:`ChangeStamp.token` returns None and callers read every time.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..forking import renew_after_fork

_log = logging.getLogger("imagegen.log")

#: Bytes of the token.
TOKEN_BYTES = 8

#: How often (seconds) a reader checks that the stamp's path still names the file it has open. A stat costs
#: twice a read, so not at every request: a stamp replaced or deleted leaves caches stale that long at most.
IDENTITY_CHECK_S = 1.0


class ChangeStamp:
    """The stamp file of the log at ``db_file`` (``<db_file>-stamp``), opened on first use."""

    def __init__(self, db_file: Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = db_file.with_name(db_file.name + "-stamp")
        self._clock = clock
        self._fd: int | None = None
        #: ``(st_dev, st_ino)`` of the open file, to notice a stamp replaced or deleted under us.
        self._identity: tuple[int, int] | None = None
        self._check_at = 0.0
        self._broken = False
        self._lock = threading.Lock()
        renew_after_fork(self)

    def renew_after_fork(self) -> None:
        """In a forked child: a new lock (the parent's may have been held by a thread that is gone). The open
        file is shared with the parent, which is what the stamp is for."""
        self._lock = threading.Lock()

    def token(self) -> bytes | None:
        """The current token, or None when the stamp is unavailable (then nothing may be cached)."""
        # Without the lock while the file is open and recently checked: this runs on every request.
        fd = self._fd
        if fd is None or self._clock() >= self._check_at:
            fd = self._current(check=False)
            if fd is None:
                return None
        try:
            token = os.pread(fd, TOKEN_BYTES, 0)
        except OSError:  # closed meanwhile by another thread (LogDB.close): nothing may be cached then
            return None
        # A descriptor closed meanwhile and reused for another file reads its bytes: a token that moved, hence
        # one more read, never a wrong cache (tokens are random, so matching a cached one is a 2**-64 chance).
        if len(token) < TOKEN_BYTES:  # shrunk under us (`: > imagegen.db-stamp`): a new token, read again
            return self._write(fd)
        return token

    def bump(self) -> None:
        """Tell every process that something it caches changed: call after the change has committed."""
        fd = self._current(check=True)  # a bump is rare: into the file the path names now, never a stale one
        if fd is not None:
            self._write(fd)

    def close(self) -> None:
        """Close the file (a later call opens it again)."""
        with self._lock:
            fd, self._fd, self._identity, self._broken = self._fd, None, None, False
        if fd is not None:
            os.close(fd)

    def _write(self, fd: int) -> bytes | None:
        """Write a new random token through ``fd`` if it is still the open stamp; the token, or None."""
        # Random, not a counter: two processes bumping at once still leave a token nobody has seen.
        token = os.urandom(TOKEN_BYTES)
        # Under the lock: a descriptor closed by another thread may already name another file (the database
        # itself), and 8 bytes written there would corrupt it.
        with self._lock:
            if fd != self._fd:
                return None
            try:
                os.pwrite(fd, token, 0)
            except OSError as exc:  # a full disk after a shrink: no stamp, as at open
                self._give_up(exc)
                return None
        return token

    def _current(self, *, check: bool) -> int | None:
        """The stamp's descriptor, opened (afresh when the path names another file now); None if unavailable.
        ``check`` checks the path even if it was checked less than :data:`IDENTITY_CHECK_S` ago."""
        with self._lock:
            if self._broken:
                return None
            if self._fd is not None and not check and self._clock() < self._check_at:
                return self._fd  # another thread checked meanwhile
            try:
                if self._fd is None or not self._still_named():
                    self._reopen()
            except (OSError, ValueError) as exc:
                self._give_up(exc)
                return None
            self._check_at = self._clock() + IDENTITY_CHECK_S
            return self._fd

    def _still_named(self) -> bool:
        """Whether the path still names the open file (not deleted, not replaced)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self._identity

    def _reopen(self) -> None:
        """Open the file the path names (made if missing); a replaced stamp gets a new token. Lock held."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            _allocate(fd)
            st = os.fstat(fd)
            if self._fd is not None:  # replaced or deleted: processes still on the old file see a move
                os.pwrite(fd, os.urandom(TOKEN_BYTES), 0)
        except BaseException:
            os.close(fd)
            raise
        old, self._fd, self._identity = self._fd, fd, (st.st_dev, st.st_ino)
        if old is not None:
            os.close(old)

    def _give_up(self, exc: Exception) -> None:
        """No stamp for this process until :meth:`close`: callers read every time. Lock held."""
        self._broken = True
        fd, self._fd, self._identity = self._fd, None, None
        if fd is not None:
            os.close(fd)
        _log.warning("change stamp %s unavailable, reading the log on every request: %s", self.path, exc)


def _allocate(fd: int) -> None:
    """Give the stamp's 8 bytes real disk blocks, a new or short stamp a random token; or raise OSError (ENOSPC
    on a full disk), so that a stamp that cannot be written is known at open (one warning), not at a bump.
    Random, not zeros: a descriptor reused for another file (see :meth:`ChangeStamp.token`) cannot match it."""
    short = os.fstat(fd).st_size < TOKEN_BYTES
    try:
        os.posix_fallocate(fd, 0, TOKEN_BYTES)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # ENOSPC and the like: no stamp
            raise
    # Only a new or short file is written, so a token another process has set is never overwritten.
    if short:
        os.pwrite(fd, os.urandom(TOKEN_BYTES), 0)
