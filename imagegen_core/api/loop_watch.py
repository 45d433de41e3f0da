"""A watch on the API process's event loop: when it did not run for a while, the server log says so.

Every request of a process is served by its one event loop. When that loop does not run (the process starved of
CPU by others on the machine, a collection of a large heap, an embedder's blocking call in a coroutine), every
answer due in that time goes out late by as much, and nothing in the request log says why: each request's
``elapsedMs`` starts when the loop reads it, so a request that waited in the socket during the stall looks fast
(QA: a CMS saw answers ~1 s late while the server's own slowest was 1.1 s). The watch wakes every
:data:`TICK_S`; a wake-up :data:`STALL_WARN_S` or more late is a stall, logged as a WARNING with ``blockedMs``
(how late the wake-up was: the stall's length, less up to one tick)
(at most one line per :data:`QUIET_S`, which counts the stalls it stands for) and counted in
``GET /admin/status``'s ``service.eventLoop``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

_log = logging.getLogger("imagegen.api")

#: How often the watch wakes (s). A sleeping task costs nothing between wake-ups.
TICK_S = 0.1
#: A wake-up this late (s) is a stall: well above a busy loop's usual lateness (a few ms), well below what a
#: caller notices as a late answer.
STALL_WARN_S = 0.25
#: At most one log line per this many seconds (s): a machine starved for minutes writes a line a minute, each
#: saying how many stalls it stands for, not one per stall.
QUIET_S = 60.0


@dataclass
class LoopStalls:
    """The stalls this process's loop had since it started."""

    count: int = 0
    longest_ms: float = 0.0
    last_ms: float | None = None
    #: When the last one ended (``time.time()``).
    last_at: float | None = None

    def record(self, blocked_s: float) -> None:
        """Count a stall of ``blocked_s`` seconds that ended now."""
        self.count += 1
        self.last_ms = round(blocked_s * 1000, 1)
        self.longest_ms = max(self.longest_ms, self.last_ms)
        self.last_at = time.time()


async def watch_loop(
    stalls: LoopStalls, *, tick_s: float = TICK_S, warn_s: float = STALL_WARN_S, quiet_s: float = QUIET_S
) -> None:
    """Record each stall of the running loop in ``stalls`` and log it (see the module), until cancelled."""
    loop = asyncio.get_running_loop()
    before = loop.time()
    logged_at: float | None = None
    unlogged = 0
    while True:
        await asyncio.sleep(tick_s)
        now = loop.time()
        blocked_s = now - before - tick_s
        before = now
        if blocked_s < warn_s:
            continue
        stalls.record(blocked_s)
        unlogged += 1
        if logged_at is not None and now - logged_at < quiet_s:
            continue
        also = f" ({unlogged - 1} more since the last such line)" if unlogged > 1 else ""
        _log.warning(
            "the event loop did not run for %d ms (CPU starved, or a blocking call): answers due in that time "
            "were late by as much%s",
            blocked_s * 1000,
            also,
            extra={"blockedMs": round(blocked_s * 1000, 1), "stalls": unlogged},
        )
        logged_at, unlogged = now, 0
