"""Where an answer's image ends up: the store (or, when the store fails, the local spool, so a paid-for
image is never lost), a provider's hotlink (Unsplash), or the default image drawn locally once per size."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import functools
import hashlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .config import RuntimeConfig
from .errors import StorageError
from .forking import renew_after_fork
from .images import draw_default_image
from .providers.base import ProviderOutput
from .storage import Spool, Store, StoredObject, default_image_key, make_key
from .storage.base import store_destination
from .storage.spool import KEEP_THREADS, UPLOADED_BY_PROCESSES, keep_failed_upload, keep_or_log, keeping
from .validation import ResolvedRequest

_log = logging.getLogger("imagegen")

#: How long storing a default image may take after the answer went out, before it is spooled instead
#: (ImageGen waits up to 10 s for such work when it closes).
_DEFAULT_AFTER_ANSWER_S = 5.0


#: How long a default image that could be neither stored nor kept (a full disk) is answered inline without trying
#: again: each try costs a failing write or two, and the disk may have room again later.
LOST_DEFAULT_RETRY_S = 60.0

#: What an answer's error says when its default image is inline (no path or key: the server log has those).
DEFAULT_INLINE_ERROR = (
    "the default image could not be stored either, so url holds it inline (a data: URI; "
    "set defaults.imageUrl to answer a hosted one)"
)

#: What an answer's notes say when its default image's URL does not serve yet (QA: during an S3 outage the
#: answers pointed at a default image waiting in the spool, and said nothing of the 404 a caller then got).
DEFAULT_SPOOLED_NOTE = (
    "the default image is not in the store yet (storing it failed, it waits in the spool): its URL answers 404"
    " until the spool is uploaded"
)
DEFAULT_STORING_NOTE = (
    "the default image was still being stored when this answer went out: its URL may answer 404 briefly"
)


@dataclass(frozen=True, slots=True)
class DefaultImage:
    """The URL of a request's default image; ``inline`` when it could not be stored, so that ``url`` is the image
    itself (a ``data:`` URI): a stored URL would answer 404, and a caller must always get an image that works."""

    url: str
    inline: bool = False
    #: Set when the URL does not serve yet (the image waits in the spool, or its upload finishes after the answer).
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Placed:
    """Where a delivered image is served from; ``key`` is None for a hotlink."""

    url: str
    key: str | None


#: Kept from a request's deadline, when its answer waits for a default image being drawn, for the rest of the
#: answer (seconds).
ANSWER_RESERVE_S = 0.05
#: Kept from a request's deadline, when an upload does not end, for keeping the image in the spool (its files
#: written and flushed to disk) and answering: an upload given up at the deadline itself answered 70-200 ms
#: late, ten at once (QA: a store that accepts uploads and never answers).
KEEP_RESERVE_S = 0.25


class Delivery:
    """Stores winners and default images; shared by ``generate`` and the console's compare-and-pick."""

    def __init__(
        self,
        store: Store,
        spool: Spool,
        *,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        on_spooled: Callable[[], None] = lambda: None,
        uploaded_by: str = UPLOADED_BY_PROCESSES,
    ) -> None:
        self.store = store
        self.spool = spool
        #: The store's identity, recorded with each image kept for it: only a flush to it uploads them.
        self._destination = store_destination(store)
        #: Who uploads a kept image (said in the error): the commands only for the store the settings describe.
        self._uploaded_by = uploaded_by
        self._spawn = spawn  # runs work after the answer (ImageGen waits for it on close)
        self._on_spooled = on_spooled  # an image was kept in the spool: schedule the background retry
        self._defaults_known: set[str] = set()
        #: Default images being drawn and stored (or spooled), with their loop: the answers that need one wait
        #: for the same drawing (three requests of a new size drew it three times, on a CPU they all needed).
        self._defaults_pending: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}
        self._defaults_spooled: set[str] = set()
        #: Pending default images whose lateness was said: once per store attempt, not once per answer (QA: 5
        #: requests of one new size at once, 5 identical lines).
        self._defaults_late_said: set[str] = set()
        #: Default images neither stored nor kept (a full disk), with when (``time.monotonic()``): answered inline.
        self._defaults_lost: dict[str, float] = {}
        #: Keeps in the spool run on threads of their own, sized for a burst of failed uploads (see KEEP_THREADS).
        self._keepers = _keep_executor()
        renew_after_fork(self)

    def renew_after_fork(self) -> None:
        """In a forked child: threads of its own (the parent's executor counts threads the child has not)."""
        self._keepers = _keep_executor()

    def close(self) -> None:
        """Let the keep threads end once the keeps queued have run (closing waited for them: see ``place``)."""
        self._keepers.shutdown(wait=False)

    async def place(
        self,
        *,
        request_id: str,
        provider: str,
        output: ProviderOutput,
        webp: bytes | None,
        resolved: ResolvedRequest,
        config: RuntimeConfig,
        deadline: float | None = None,
        key: str | None = None,
    ) -> Placed:
        """Store ``webp`` under a fresh ``<prefix>/YYYY/MM/<uuid>.webp`` key, or ``key`` (a second try of an
        upload that failed: the spool already keeps it there), by ``deadline`` (loop time) if given (the upload
        ends :func:`upload_until` it, leaving time to keep the image in the spool); ``webp=None`` means
        ``output.url`` is a verified hotlink, never copied. A failed upload keeps the image in the spool under
        the same key and raises UploadFailedError saying so (with that key)."""
        if webp is None:
            assert output.url is not None
            return Placed(output.url, None)
        key = key or make_key(config.r2.path_prefix, now=datetime.now(UTC))
        metadata = object_metadata(request_id, provider, output, resolved)
        keep = keeping(
            self.spool,
            key,
            webp,
            content_type="image/webp",
            cache_control=config.r2.cache_control,
            metadata=metadata,
            destination=self._destination,
        )
        try:
            async with asyncio.timeout_at(upload_until(deadline)):
                stored = await self.store.put(
                    key, webp, content_type="image/webp", cache_control=config.r2.cache_control, metadata=metadata
                )
            return Placed(_stored_url(self.store, stored), key)
        except asyncio.CancelledError:
            self._keep_on_cancel(keep, key, provider)
            raise
        except Exception as exc:
            # Paid for: keep it for `imagegen storage flush` under the same key. After the deadline, an
            # upload still running in its thread may land too; the flush then rewrites the same bytes to
            # the same key, which is harmless. A store's defect (one's own Store raising something else than
            # StorageError) is a failed upload too: it used to reach the caller and lose the image (QA).
            reason = f"storing the image from {provider} failed: {upload_failure(exc, self.store)}"
            # The answer waits for the keep until just before its deadline; one still under way then is finished
            # after the answer (closing waits for it) and the answer says it is being kept.
            raise await keep_failed_upload(
                keep,
                key,
                reason=reason,
                on_kept=self._on_spooled,
                executor=self._keepers,
                until=None if deadline is None else deadline - ANSWER_RESERVE_S,
                finish_later=self._spawn,
                uploaded_by=self._uploaded_by,
            ) from None

    def _keep_on_cancel(self, keep: Callable[..., object], key: str, provider: str) -> None:
        """The upload of a paid-for image was cancelled (the process is stopping: Ctrl+C, SIGTERM, a forced
        shutdown): keep the image in the spool, where the next process finds it (QA: it was lost, neither
        stored nor kept, with no log line). A blocking local write, since a task being cancelled should not
        await again; if the upload still lands in its thread, the flush rewrites the same bytes to the key."""
        reason = f"storing the image from {provider} was cancelled (the process stopped, or its caller left)"
        if keep_or_log(keep, key, reason) is not None:
            return
        # Said as the failed upload's error says it (QA: "the next imagegen process uploads it" was not so: a
        # `generate` never uploads the spool, only a server or console process, or a flush).
        _log.warning("image %s kept in the spool: %s; %s", key, reason, self._uploaded_by)
        self._on_spooled()  # a caller's cancel (not a stop): this process uploads it in the background

    async def default_image(self, width: int, height: int, config: RuntimeConfig, deadline: float) -> DefaultImage:
        """The configured default image URL, or one drawn locally and stored once per size. Storing it
        is bounded by the request's deadline (a slow bucket must not delay the answer); its URL is
        answered regardless. When it could not be stored in time, that is finished after the answer, and
        if the store still fails the image waits in the spool, so the URL serves after a flush. When it could
        be neither stored nor kept (the disk is full), it is answered inline: its URL would answer 404."""
        if config.defaults.image_url:
            return DefaultImage(config.defaults.image_url)
        key = default_image_key(config.r2.path_prefix, width, height)
        lost_at = self._defaults_lost.get(key)
        if lost_at is not None:
            if time.monotonic() - lost_at < LOST_DEFAULT_RETRY_S:
                return await _inline_default(width, height)
            del self._defaults_lost[key]  # tried again: the disk may have room now
        if key not in self._defaults_known and key not in self._defaults_spooled:
            # (Spooled: it waits for `imagegen storage flush`, whose upload makes the URL serve; asking a
            # store that is down again for every answer would only slow them.)
            loop = asyncio.get_running_loop()
            if key not in self._defaults_pending:
                stored = asyncio.Event()
                self._defaults_pending[key] = (loop, stored)
                self._spawn(self._store_or_spool_default(key, width, height, config, stored))
            owner, stored = self._defaults_pending[key]
            # Until a little before the deadline: what follows (the answer, its log row, the response) takes
            # a few ms too, more on a CPU busy with renders; waiting to the deadline itself answered 4-110 ms
            # past it (QA: 20 requests of new sizes at once).
            until = deadline - ANSWER_RESERVE_S
            if owner is loop and loop.time() < until:  # (an Event serves the loop it was made on only)
                try:
                    async with asyncio.timeout_at(until):
                        await stored.wait()
                except TimeoutError:
                    pass
            if key in self._defaults_lost:
                return await _inline_default(width, height)
            unsaid = key not in self._defaults_late_said
            if key not in self._defaults_known and key not in self._defaults_spooled and unsaid:
                self._defaults_late_said.add(key)
                _log.warning("default image %s not stored before the answer; finishing after it", key)
        if key in self._defaults_known:
            return DefaultImage(self.store.url_for(key))
        note = DEFAULT_SPOOLED_NOTE if key in self._defaults_spooled else DEFAULT_STORING_NOTE
        return DefaultImage(self.store.url_for(key), note=note)

    def uploaded_from_spool(self, keys: list[str]) -> None:
        """``keys`` left the spool for the store: a default image among them is known to be stored now."""
        for key in keys:
            if key in self._defaults_spooled:
                self._defaults_spooled.discard(key)
                self._defaults_known.add(key)

    async def _store_default(self, key: str, width: int, height: int, config: RuntimeConfig) -> None:
        if not await self.store.exists(key):
            data = await asyncio.to_thread(_default_image, width, height)
            await self.store.put(
                key, data, content_type="image/webp", cache_control=config.r2.cache_control, metadata={}
            )
        self._defaults_known.add(key)

    async def _store_or_spool_default(
        self, key: str, width: int, height: int, config: RuntimeConfig, stored: asyncio.Event
    ) -> None:
        try:
            async with asyncio.timeout(_DEFAULT_AFTER_ANSWER_S):
                await self._store_default(key, width, height, config)
        except Exception as exc:
            reason = f"could not store the default image {key}: {upload_failure(exc, self.store)}"
            data = await asyncio.to_thread(_default_image, width, height)
            keep = keeping(
                self.spool,
                key,
                data,
                content_type="image/webp",
                cache_control=config.r2.cache_control,
                metadata={},
                destination=self._destination,
            )
            failed = await keep_failed_upload(
                keep,
                key,
                reason=reason,
                on_kept=self._on_spooled,
                executor=self._keepers,
                uploaded_by=self._uploaded_by,
            )
            # Kept, it serves after a flush: once is enough. Lost too (logged), it is answered inline for a while.
            if failed.kept:
                self._defaults_spooled.add(key)
            else:
                self._defaults_lost[key] = time.monotonic()
        finally:
            self._defaults_pending.pop(key, None)
            self._defaults_late_said.discard(key)
            stored.set()  # stored, kept in the spool, or given up: the answers waiting for it go on


def _keep_executor() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(KEEP_THREADS, thread_name_prefix="imagegen-spool-keep")


def upload_until(deadline: float | None) -> float | None:
    """When an upload due by ``deadline`` (loop time) is given up: :data:`KEEP_RESERVE_S` before it, or halfway
    there when less than twice that is left. QA: with ``defaults.timeout`` 100 ms the whole reserve was already
    past when the image was ready, so every upload, even to a local folder taking a millisecond, failed at once
    and the answer was the default image."""
    if deadline is None:
        return None
    left = deadline - asyncio.get_running_loop().time()
    return deadline - min(KEEP_RESERVE_S, max(0.0, left) / 2)


def upload_failure(exc: Exception, store: Store) -> str:
    """What a failed upload to ``store`` says: a StorageError its message; the deadline, which store did not
    answer and what to check (QA: "deadline reached" alone, where a refused connection names the endpoint to
    check); any other exception is a defect of the store (a Store of one's own) and is named with its type."""
    if isinstance(exc, TimeoutError):
        if str(exc):
            return str(exc)
        recent = getattr(store, "recent_trouble", None)  # R2Store: what its retried tries met
        trouble = recent() if callable(recent) else None
        if isinstance(trouble, str):
            return (
                f"the store ({store_destination(store)}) did not take it in time: its last try {trouble}, and it was"
                " retried until the deadline"
            )
        return (
            f"the store ({store_destination(store)}) did not answer in time: check that it is reachable (its"
            " endpoint, the network, a hung mount; a store only slow needs a longer defaults.timeout)"
        )
    if isinstance(exc, StorageError):
        return str(exc)
    return f"the store failed unexpectedly ({type(exc).__name__}: {exc})"


def _stored_url(store: Store, stored: object) -> str:
    """The URL of what ``store.put`` answered, which must be a StoredObject (a Store of one's own may err)."""
    if not isinstance(stored, StoredObject):
        raise StorageError(f"{type(store).__name__}.put answered {type(stored).__name__}, not a StoredObject")
    return stored.url


async def _inline_default(width: int, height: int) -> DefaultImage:
    """The default image as a ``data:`` URI (drawn off the event loop the first time)."""
    return DefaultImage(await asyncio.to_thread(_default_data_uri, width, height), inline=True)


@functools.lru_cache(maxsize=16)
def _default_data_uri(width: int, height: int) -> str:
    return "data:image/webp;base64," + base64.b64encode(_default_image(width, height)).decode("ascii")


@functools.lru_cache(maxsize=16)
def _default_image(width: int, height: int) -> bytes:
    """The default image for a size, drawn once per process (the same bytes every time)."""
    return draw_default_image(width, height)


def object_metadata(
    request_id: str, provider: str, output: ProviderOutput, resolved: ResolvedRequest
) -> dict[str, str]:
    """ASCII-safe object metadata (R2 allows 8 KB in all; these stay far below)."""
    meta = {
        "request-id": request_id,
        "provider": provider,
        "prompt-sha256": hashlib.sha256(resolved.prompt.encode()).hexdigest(),
    }
    if output.model:
        meta["model"] = output.model
    if output.seed is not None:
        meta["seed"] = str(output.seed)
    if resolved.article_id:
        meta["article-id"] = resolved.article_id
    return {k: v.encode("ascii", "backslashreplace").decode("ascii")[:512] for k, v in meta.items()}
