"""Request ids given to ``ImageGen.generate``: an id already used is refused before it reaches the log.

The log's insert of a request row skips an id it already holds (``ON CONFLICT DO NOTHING``, so that a batch
the writer applies again after an uncertain COMMIT is harmless). A second request under a used id therefore
lost its row, and its end (an ``UPDATE`` by id) overwrote the first request's status, URL and cost; its
attempts were counted as the first's. So an id is taken from the moment its request is admitted:

* while its first row waits in the writer's queue, by an in-memory set (the log cannot see it yet);
* once that row is written, by the log itself: one primary-key lookup, on the event loop for SQLite (a read
  in WAL mode never waits for a writer), on a bounded read thread for a server database.

A call without an id costs a set insertion and a callback on its row's future; the lookup is paid only by calls
that bring an id. Ids this ImageGen made itself (:meth:`RequestIds.new`) skip the lookup: a fresh random id is
in no log. What is not covered: two processes given the same id at the same moment, and an id whose first row
waits in the spill during a log outage (the lookup cannot see it); while the log cannot be read, only this
process's in-memory set is checked.
"""

from __future__ import annotations

import concurrent.futures
from collections import OrderedDict
from typing import Any

from .errors import DuplicateRequestIdError, LogDatabaseError
from .ids import new_id
from .log.db import LogDB
from .log.outage import ReadPause

#: How many ids made by :meth:`RequestIds.new` are remembered until used; past that the oldest are forgotten,
#: which only costs their request the lookup (a route that made one and then failed never uses it).
MAX_UNUSED_NEW_IDS = 10_000


class RequestIds:
    """Which request ids are taken, for one ImageGen (see the module's docstring)."""

    def __init__(self, log: LogDB, reads: ReadPause) -> None:
        self._log = log
        self._reads = reads
        #: Ids admitted whose first row is not written yet (discarded from the writer's thread: a set's
        #: add and discard are atomic).
        self._unwritten: set[str] = set()
        self._unused_new: OrderedDict[str, None] = OrderedDict()

    def new(self) -> str:
        """A new request id, for a caller that must give it out before calling ``generate`` with it (the HTTP
        API's ``X-Request-ID``); ``generate`` takes it without looking it up in the log."""
        request_id = new_id()
        self._unused_new[request_id] = None
        if len(self._unused_new) > MAX_UNUSED_NEW_IDS:
            self._unused_new.popitem(last=False)
        return request_id

    async def claim(self, request_id: str) -> None:
        """Take ``request_id`` for a request about to be admitted, or raise :class:`DuplicateRequestIdError`
        when another request has it. Release it with :meth:`release` when the request is not admitted after
        all; once admitted, :meth:`hold` keeps it until its row is in the log."""
        if request_id in self._unwritten:
            raise DuplicateRequestIdError(request_id)
        fresh = request_id in self._unused_new  # made by new(), never used: in no log
        self._unused_new.pop(request_id, None)
        self._unwritten.add(request_id)  # before the lookup's await: a second claim meanwhile is refused
        try:
            if not fresh and await self._logged(request_id):
                raise DuplicateRequestIdError(request_id)
        except BaseException:
            self._unwritten.discard(request_id)
            raise

    def release(self, request_id: str) -> None:
        """Give back an id :meth:`claim` took, for a request that was not admitted (nothing was logged)."""
        self._unwritten.discard(request_id)

    def hold(self, request_id: str, first_row: concurrent.futures.Future[Any]) -> None:
        """The request's first row is queued as ``first_row``: the id stays taken here until it is written,
        then the log holds it."""
        self._unwritten.add(request_id)
        first_row.add_done_callback(lambda _: self._unwritten.discard(request_id))

    async def _logged(self, request_id: str) -> bool:
        """Whether the log has a request row with this id; False when the log cannot be read now (said once by
        the read pause: requests go on during a log outage, checked against this process's ids only)."""
        if self._reads.paused:
            return False
        try:
            if self._log.reads_never_wait:
                return self._log.request_exists(request_id)
            return await self._reads.read(lambda: self._log.request_exists(request_id))
        except LogDatabaseError as exc:
            self._reads.failed(exc)
            return False
