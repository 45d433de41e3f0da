"""Requests a process left ``running`` when it died (``kill -9``, the OOM killer, a power cut) are closed by
the servers that come after it.

A process that ends normally finishes every request it started (closing waits for them, or cancels them and
logs that). One killed outright leaves their rows ``running`` for ever, even a request whose client got its
answer (its last row was still queued in the log writer); stats counted them as ``incomplete`` and nothing
ever ended them. Every API server therefore closes, at start and then every :data:`SWEEP_EVERY_S`, the rows
that have been ``running`` for longer than any request can run: :data:`ABANDONED_AFTER_S`, the longest
deadline a config allows plus a margin. Only age decides, because on a shared PostgreSQL log other live
processes have rows ``running`` too: theirs are younger than their deadline, which no config makes longer
than :data:`~imagegen_core.config.MAX_DEADLINE_MS`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from .config import MAX_DEADLINE_MS
from .errors import redact

if TYPE_CHECKING:
    from .service import ImageGen

_log = logging.getLogger("imagegen")

#: Beyond the longest deadline: clocks of machines sharing a PostgreSQL log disagree (rows carry the writer's
#: wall clock), and a live process's last rows may trail its answer by a log DB outage's retries. A row closed
#: too early anyway is set right when its process writes its real end (``finish_request`` overwrites).
MARGIN_S = 300.0
#: How long a request must have been ``running`` to count as abandoned by a dead process.
ABANDONED_AFTER_S = MAX_DEADLINE_MS / 1000 + MARGIN_S
#: How often a server looks again: a restart right after a kill finds the dead process's rows still young.
SWEEP_EVERY_S = 300.0


def abandoned_before(now: float) -> float:
    """The creation time before which a request still ``running`` at ``now`` was abandoned."""
    return now - ABANDONED_AFTER_S


async def end_abandoned_requests(gen: ImageGen, *, now: float | None = None) -> int:
    """Close the abandoned requests of the log (see :meth:`LogDB.end_abandoned_requests`), through the
    ImageGen's bounded log calls (a log DB that hangs must not hold the caller); how many were closed."""
    at = time.time() if now is None else now
    closed = await gen.log_call(lambda: gen.log.end_abandoned_requests(created_before=abandoned_before(at), now=at))
    if closed:
        _log.warning(
            "closed %d request(s) left running by a process that ended before they did (crash or kill)", closed
        )
    return closed


async def sweep_abandoned_requests(gen: ImageGen, *, every_s: float = SWEEP_EVERY_S) -> None:
    """:func:`end_abandoned_requests` now and every ``every_s`` until cancelled. A failure (the log DB away) is
    logged and tried again next time: it is housekeeping, never a reason to stop serving."""
    secrets = gen.secret_values()
    while True:
        try:
            await end_abandoned_requests(gen)
        except Exception as exc:  # housekeeping: any failure is only logged
            _log.warning("could not close abandoned requests in the log: %s", redact(str(exc), secrets))
        await asyncio.sleep(every_s)
