"""Read-only looks at the service's parts for ``/health``, ``/admin/status`` and ``/admin/storage``: is the log
DB answering, can the store write, what does the store hold. Blocking work runs in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..breaker import CircuitBreakers
from ..errors import ImageGenError, StorageError
from ..log.writer import WriteFailure
from ..storage.local import META_SUFFIX, LocalStore
from ..storage.spool import Spool

if TYPE_CHECKING:
    from ..service import ImageGen
    from ..storage.base import Store

_log = logging.getLogger("imagegen.api")

#: How long ``/health`` and ``/admin/status`` wait for the log DB, and for the store: a load balancer's health
#: check gives up after a few seconds, and a server that hangs would hold each check (and a thread) for minutes.
PROBE_WAIT_S = 2.0
#: How long a store check's answer, ok or not, is given again to ``/health`` and ``/admin/status``. An R2 check
#: is one listing, a billed operation run on the threads that upload images; unauthenticated ``/health`` calls
#: then cost at most one listing per interval (QA: 48 looping callers slowed generates from 56-296 ms to 1.8-2.4
#: s). Short, so that a store that breaks or comes back shows within seconds.
STORE_CHECK_TTL_S = 5.0
_MONTH_DIRS = re.compile(r"^(\d{4})/(\d{2})/")


async def _call(fn: Any, **kwargs: Any) -> Any:
    """Await an async capability; run a blocking one (boto3) in a thread, off the event loop."""
    if inspect.iscoroutinefunction(fn):
        return await fn(**kwargs)
    result = await asyncio.to_thread(fn, **kwargs)
    return await result if inspect.isawaitable(result) else result


async def check_db(gen: ImageGen, *, reveal: bool = False) -> dict[str, Any]:
    """``{ok, schemaVersion}`` from one cheap query, waited for :data:`PROBE_WAIT_S` at most; the reason goes to
    the server log only (it names paths), and with ``reveal`` (an admin's page) to ``error`` too. Not ok either
    while the log writer's writes are refused (a full disk leaves reads working): then ``writesFailingForS``
    too, and with ``reveal`` the ``error`` that says what to fix."""
    try:
        version = await gen.log_call(gen.log.schema_version, wait_s=PROBE_WAIT_S)
    except ImageGenError as exc:
        _log.error("health: log database: %s", exc)
        down: dict[str, Any] = {"ok": False, "schemaVersion": None}
        return {**down, "error": str(exc)} if reveal else down
    failure = gen.log_write_failure
    if failure is None:
        return {"ok": True, "schemaVersion": version}
    failing: dict[str, Any] = {"ok": False, "schemaVersion": version, "writesFailingForS": failure_age_s(failure)}
    return {**failing, "error": f"log writes fail: {failure.message}"} if reveal else failing


def failure_age_s(failure: WriteFailure) -> int:
    """How long the log's writes have been refused, in whole seconds."""
    return max(0, round(time.time() - failure.since))


async def read_breakers(gen: ImageGen) -> dict[str, Any] | None:
    """:func:`breaker_summary` of the racing providers, or None when the log DB did not answer in time."""
    try:
        return await gen.log_call(lambda: breaker_summary(gen.breakers, gen.config.providers), wait_s=PROBE_WAIT_S)
    except ImageGenError as exc:
        _log.error("health: circuit breakers: %s", exc)
        return None


def _local_writable(root: Path) -> bool:
    # The folder appears with the first image; until then its nearest existing parent must let us create it.
    path = root
    while not path.exists() and path != path.parent:
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


async def check_store(store: Any, *, wait_s: float = PROBE_WAIT_S) -> dict[str, Any]:
    """``{ok, kind}``: the store's own ``check()`` (raises when unusable) when it has one, else for the local
    store whether its folder is writable; not ok when it has not answered within ``wait_s`` (an S3 server that
    accepts connections and never answers held ``/health`` for a minute). The reason goes to the server log
    only."""
    kind = getattr(store, "name", type(store).__name__)
    error: str | None = None
    try:
        async with asyncio.timeout(wait_s):
            check = getattr(store, "check", None)
            if check is not None:
                await _call(check)
                ok = True
            elif isinstance(store, LocalStore):
                ok = await asyncio.to_thread(_local_writable, store.root)
                error = None if ok else f"the folder {store.root} cannot be written to"
            else:
                ok = True  # nothing to ask
    except TimeoutError:
        error = f"the store did not answer the check in {wait_s:g} s"
        _log.error("health: store %s did not answer the check in %g s", kind, wait_s)
        ok = False
    except Exception as exc:  # a probe must answer, whatever the backend raised
        error = str(exc) or type(exc).__name__
        _log.error("health: store %s: %s", kind, exc)
        ok = False
    return {"ok": ok, "kind": kind, "error": error}


class StoreCheckCache:
    """:func:`check_store`'s answers, each given again for ``ttl_s`` (failures too), with one check at a time:
    callers that arrive while one runs share its answer. One per app (``ApiContext``); ``clock`` is injected so
    tests need not sleep."""

    def __init__(self, *, ttl_s: float = STORE_CHECK_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._answer: tuple[Any, float, dict[str, Any]] | None = None  # (store, when, answer)
        self._running: tuple[Any, asyncio.Task[dict[str, Any]]] | None = None  # (store, its check)

    async def check(self, store: Any, *, wait_s: float = PROBE_WAIT_S, reveal: bool = False) -> dict[str, Any]:
        """:func:`check_store` of ``store``, or its answer of less than ``ttl_s`` ago; at most ``wait_s`` long.
        With ``reveal`` (an admin's page), ``error`` too: why it is not ok (QA: ``/admin/status`` said
        ``store.ok: false`` and no more, where ``logDb`` and ``spool`` say why); ``/health`` says only ok."""
        if self._answer is not None:
            checked, when, answer = self._answer
            if checked is store and self._clock() - when < self.ttl_s:
                return _shown(answer, reveal)
        running = self._running
        if running is None or running[0] is not store or running[1].get_loop() is not asyncio.get_running_loop():
            task = asyncio.get_running_loop().create_task(self._check(store, wait_s))
            running = self._running = (store, task)
        # Shielded: a caller that goes away (its client disconnected) does not cancel the others' check.
        return _shown(await asyncio.shield(running[1]), reveal)

    async def _check(self, store: Any, wait_s: float) -> dict[str, Any]:
        try:
            answer = await check_store(store, wait_s=wait_s)
            self._answer = (store, self._clock(), answer)
            return answer
        finally:
            if self._running is not None and self._running[1] is asyncio.current_task():
                self._running = None


def _shown(answer: dict[str, Any], reveal: bool) -> dict[str, Any]:
    """A copy of a store check's ``answer``, its ``error`` only when ``reveal``."""
    return dict(answer) if reveal else {key: value for key, value in answer.items() if key != "error"}


async def check_spool(spool: Spool, *, reveal: bool = False) -> dict[str, Any]:
    """``{ok}``: whether the upload spool could keep an image now (:meth:`Spool.problem`: a ``stat`` per probe, a
    write now and then); with ``reveal`` (an admin's page) ``error`` too, which names the folder. An unusable spool
    turns the next store outage into lost paid-for images, so it counts for ``/health`` like the store."""
    problem = await asyncio.to_thread(spool.problem)
    checked: dict[str, Any] = {"ok": problem is None}
    return {**checked, "error": problem} if reveal else checked


def spool_backlog(spool: Spool, store: Store) -> dict[str, Any]:
    """``{keptImages, oldestKeptAgeS, keptForOtherStores}``: images waiting in the upload spool for ``store``
    (it refused them; this process uploads them) and how long the oldest has waited (None when none waits), and
    the images kept there for other stores, which it never uploads (``{destination: count}``; QA: counted as
    waiting, an alert on them fired for ever); blocking, run it in a thread. None when the spool cannot be read
    (the reason goes to the server log)."""
    try:
        backlog = spool.backlog(store=store)
    except StorageError as exc:
        _log.error("status: %s", exc)
        return {"keptImages": None, "oldestKeptAgeS": None, "keptForOtherStores": None}
    return {
        "keptImages": backlog.images,
        "oldestKeptAgeS": backlog.oldest_age_s(),
        "keptForOtherStores": backlog.elsewhere,
    }


def breaker_summary(breakers: CircuitBreakers, providers: Iterable[str]) -> dict[str, Any]:
    """Breaker state per provider and the count per state."""
    states = {name: str(breakers.state(name).state) for name in sorted(providers)}
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    return {"states": states, "counts": counts}


def _walk_local(root: Path, prefix: str) -> dict[str, Any]:
    """Fallback for a local store without ``stats``: objects and bytes per ``YYYY-MM`` under ``root/prefix``
    (sidecars and dot-files skipped), in the shape of ``StorageStats.to_dict()``."""
    months: dict[str, list[int]] = {}
    base = root.joinpath(*prefix.strip("/").split("/"))
    for folder, dirs, names in os.walk(base):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        match = _MONTH_DIRS.match(Path(folder).relative_to(base).as_posix() + "/")
        for name in names:
            if name.startswith(".") or name.endswith(META_SUFFIX):
                continue
            with contextlib.suppress(OSError):  # removed while we walked
                entry = months.setdefault(f"{match[1]}-{match[2]}" if match else "other", [0, 0])
                entry[1] += os.stat(os.path.join(folder, name)).st_size
                entry[0] += 1
    return {
        "backend": "local",
        "prefix": prefix.strip("/"),
        "months": [{"month": m, "objects": n, "bytes": b} for m, (n, b) in sorted(months.items())],
        "totalObjects": sum(n for n, _ in months.values()),
        "totalBytes": sum(b for _, b in months.values()),
    }


async def storage_summary(store: Any, prefix: str) -> dict[str, Any]:
    """Objects and bytes per ``YYYY-MM`` under ``prefix``: the store's ``stats(prefix=...)`` when it has one
    (local folder walk or R2 listing), else a walk of a local store's folder."""
    stats = getattr(store, "stats", None)
    if stats is not None:
        found = await _call(stats, prefix=prefix)
        return dict(found.to_dict() if hasattr(found, "to_dict") else found)
    if isinstance(store, LocalStore):
        return await asyncio.to_thread(_walk_local, store.root, prefix)
    return {"backend": getattr(store, "name", "unknown"), "prefix": prefix, "months": [], "totalObjects": None}
