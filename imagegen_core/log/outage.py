"""Going on without the log database while it cannot be read (a PostgreSQL restart, a lost network).

The config read before each request and the circuit breakers' reads both use it: after a read failed, they
keep what they have (the config in force; calls let through unchecked) for :data:`READ_PAUSE_S` before the
next read is tried, since each read of a server that is down costs its caller about a second; and each says
so once when the outage starts and once when a read works again, not once per request.
"""

from __future__ import annotations

import logging
import time

_log = logging.getLogger("imagegen")

#: How long callers go on without the log database after one of its reads failed.
READ_PAUSE_S = 5.0


class ReadPause:
    """One kind of log read (the config's, the breakers') going on without the database during an outage.

    ``down`` is the warning when a read first fails (``%s`` is the error), ``back`` the one when a read
    works again."""

    def __init__(self, *, down: str, back: str, pause_s: float = READ_PAUSE_S) -> None:
        self._down = down
        self._back = back
        self._pause_s = pause_s
        #: ``time.monotonic()`` before which reads are skipped after one failed (0: reads work).
        self._resume_at = 0.0

    @property
    def paused(self) -> bool:
        """Whether a read failed less than ``pause_s`` ago: skip the database for now."""
        return time.monotonic() < self._resume_at

    def failed(self, exc: Exception) -> None:
        """A read failed: pause reads, and warn if this starts an outage."""
        if not self._resume_at:
            _log.warning(self._down, exc)
        self._resume_at = time.monotonic() + self._pause_s

    def worked(self) -> None:
        """A read worked: warn if that ends an outage."""
        if self._resume_at:
            _log.warning(self._back)
            self._resume_at = 0.0
