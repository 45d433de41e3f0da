"""The spool: paid-for images that could not be stored wait here until they are uploaded again, in the
background by a running process (:mod:`.retry`) or by ``imagegen storage flush``.

When the store refuses the winner's image (R2 down, wrong credentials, the deadline), the request still
answers with the default image and ``success: false``, but the image — already paid for — is kept under
``<IMAGEGEN_HOME>/spool`` with everything needed to upload it later under the *same key*.

Layout: per entry ``<name>.data`` (the bytes) and ``<name>.json`` (key, content type, Cache-Control,
metadata, size, SHA-256, when and why, and the destination), ``<name>`` being the SHA-256 of the key.

* **Only to the store it was meant for.** Each entry records its *destination*, the identity of the store it
  was kept for (:func:`~.base.store_destination`: an R2 bucket and its endpoint, a local folder, the class of
  a store of one's own; never a secret). A flush uploads only the entries whose destination is its store's,
  and leaves the others untouched, counted in :attr:`FlushReport.elsewhere`: a flush run without the R2
  settings (say, without ``IMAGEGEN_ENV=production``) used to copy R2's images into the local folder and
  remove them from the spool, the URLs already answered never serving. Entries kept before destinations were
  recorded (no ``destination`` in the sidecar) go to whichever store flushes them, as they always did.

* **Atomic.** Each file is written to a temporary file, flushed to disk and ``os.replace``-d into place.
  The sidecar is written first as ``<name>.pending``, then the data, then the sidecar is renamed to
  ``<name>.json``: that rename is the commit mark. A crash before it leaves a pending sidecar, which the next
  flush commits when the data it describes is there whole (its SHA-256 matches) and drops otherwise, so a
  paid image written to disk is never stranded without its key.
* **Exactly once.** :meth:`Spool.flush` holds an exclusive lock (one flush at a time across processes),
  uploads an entry, and only after a successful upload removes it: the sidecar is first renamed
  ``<name>.done`` (the mark "uploaded"), then the data and that mark are removed. A ``.done`` left alone means
  "uploaded, removal interrupted" and is just cleaned up. The one window left — a crash between the upload
  and the rename — makes the next flush upload the same bytes to the same key again, which is idempotent:
  the bucket still holds one object.
* **Damage is set aside, never deleted.** An entry whose data cannot be read, is missing or fails its
  SHA-256, and a sidecar that cannot be read, is moved to ``<spool>/damaged/`` (sidecar first: a crash in
  between leaves the data in the spool, never deleted, and the key in the sidecar) and reported in
  :attr:`FlushReport.set_aside`. It is a fault of the local disk, not of the store: it does not count towards
  the failures that stop a flush, so healthy entries behind it are still uploaded. (QA: a sidecar whose data
  was gone was taken as uploaded and deleted, its image never stored; one that did not parse was skipped
  by every flush, with a warning, its image waiting for ever.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Collection, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import StorageError, UploadFailedError
from .base import Store, StoredObject, safe_key, store_destination
from .files import atomic_write, fsync_folder, is_temporary

_log = logging.getLogger("imagegen.storage")

_DATA = ".data"
_META = ".json"
_PENDING = ".pending"
#: A sidecar renamed so after its upload (see "Exactly once" above).
_DONE = ".done"
_LOCK = ".flush.lock"
#: The subfolder that damaged entries are moved to (see the module docstring).
DAMAGED = "damaged"
#: A pending sidecar younger than this may belong to a keep under way (it takes milliseconds).
PENDING_GRACE_S = 60.0
#: How long a flush waits for the upload of one entry, the store's own retries included: R2's client tries 4
#: times with 30 s read timeouts, so a store that accepts connections and never answers held a flush for two
#: minutes per entry (six before three failures stopped it), saying nothing meanwhile.
FLUSH_PUT_WAIT_S = 45.0


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """One kept image: where it must go (``key``), how to upload it, and why it is here."""

    key: str
    content_type: str
    cache_control: str
    metadata: dict[str, str]
    size: int
    sha256: str
    kept_at: float
    reason: str
    data_path: Path
    #: The store it was kept for (:func:`~.base.store_destination`); None for an entry kept before destinations
    #: were recorded, which any store's flush uploads (as every flush did then).
    destination: str | None = None

    def is_for(self, destination: str) -> bool:
        """Whether a flush to the store of ``destination`` uploads this entry."""
        return self.destination is None or self.destination == destination


@dataclass(frozen=True, slots=True)
class SpoolBacklog:
    """What waits in the spool: ``images`` (as :meth:`Spool.waiting` counts them), the ``bytes`` of the complete
    entries, and when the oldest of them was kept (None when none is); for a backlog of one store's, the entries
    kept for other stores, which a flush to it leaves (``elsewhere``: destination → how many)."""

    images: int
    bytes: int
    oldest_kept_at: float | None
    elsewhere: dict[str, int] = field(default_factory=dict)

    def oldest_age_s(self) -> int | None:
        """How long the oldest entry has waited, in whole seconds (None when none waits)."""
        return None if self.oldest_kept_at is None else max(0, round(time.time() - self.oldest_kept_at))


@dataclass(slots=True)
class FlushReport:
    """What a flush did: keys ``moved`` to the store, keys that ``failed`` (with ``errors[key]``), the number
    ``skipped`` after repeated failures (the store is clearly down; they stay for the next flush), the
    entries ``set_aside`` as damaged (key → one line naming where they went and what to do), and the entries
    kept for another store, left untouched (``elsewhere``: their destination → how many)."""

    moved: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    skipped: int = 0
    set_aside: dict[str, str] = field(default_factory=dict)
    #: The store did not answer an upload in time: the rest was not tried (each would wait as long).
    unanswered: bool = False
    #: Entries kept for another store (by its destination: how many), not this flush's to upload.
    elsewhere: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every entry that was tried was moved (or set aside as damaged) and none was skipped: set
        aside entries wait for an operator, not for the store, so they are no reason to retry; entries kept
        for another store (:attr:`elsewhere`) are not this store's either."""
        return not self.failed and not self.skipped


#: How often :meth:`Spool.problem` checks again, with a write, that a spool found usable still is: a probe every
#: few seconds must not write to the disk each time, and a keep that fails says so at once anyway.
CHECK_EVERY_S = 60.0
_PROBE = ".probe"
#: Errors meaning "the disk (or this user's quota on it) is full": no permission to fix.
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class Spool:
    """Images waiting to be uploaded, in the folder ``root`` (created on first :meth:`keep`, or by :meth:`check`)."""

    def __init__(self, root: Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.root = Path(root).expanduser().absolute()
        self._clock = clock
        #: Why an image could not be kept now, as the last check or keep found (None: it could).
        self._problem: str | None = None
        #: ``clock()`` of the last check or keep (None: never).
        self._checked_at: float | None = None

    def check(self) -> str | None:
        """Whether an image could be kept now: the folder made if missing (as a keep would), a small file written
        in it and removed. Returns why not, in one line, or None; :meth:`problem` remembers it. Blocking."""
        if (in_the_way := self._file_in_place()) is not None:
            return self._noted(in_the_way)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f"{_PROBE}-{os.getpid()}"
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, b"x")
            finally:
                os.close(fd)
                with contextlib.suppress(OSError):
                    probe.unlink()
        except OSError as exc:
            return self._noted(str(self._unusable(exc)))
        return self._noted(None)

    def problem(self, *, check_every_s: float = CHECK_EVERY_S) -> str | None:
        """Why an image could not be kept now, or None; what ``/health`` and ``/admin/status`` report. Cheap: a
        ``stat`` of the folder (a file in its place is seen at once), and a write only when the last check or
        keep is older than ``check_every_s``, or found a problem (which is then looked at again). Blocking."""
        if (in_the_way := self._file_in_place()) is not None:
            return self._noted(in_the_way)
        fresh = self._checked_at is not None and self._clock() - self._checked_at < check_every_s
        if fresh and self._problem is None:
            return None
        return self.check()

    def _file_in_place(self) -> str | None:
        """The problem when something else than a folder is where the spool should be, else None."""
        if self.root.exists() and not self.root.is_dir():
            return str(self._unusable(NotADirectoryError(20, "a file, not a folder, is in its place")))
        return None

    def _noted(self, problem: str | None) -> str | None:
        """Remember what the last check or keep found; say so once when the spool becomes unusable or usable."""
        if problem is not None and self._problem is None:
            _log.error("spool: %s; paid-for images the store refuses would be lost", problem)
        elif problem is None and self._problem is not None:
            _log.warning("spool: %s can keep images again", self.root)
        self._problem, self._checked_at = problem, self._clock()
        return problem

    def __repr__(self) -> str:
        return f"Spool(root={str(self.root)!r})"

    def keep(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str,
        cache_control: str,
        metadata: dict[str, str],
        reason: str = "",
        destination: str | None = None,
    ) -> SpoolEntry:
        """Keep ``data`` for a later upload under ``key`` to the store of ``destination``
        (:func:`~.base.store_destination`; None: to whichever store flushes it) (blocking; async code runs it
        in a thread). Keeping the same key again replaces the earlier entry."""
        safe_key(key)
        digest = hashlib.sha256(data).hexdigest()
        sidecar: dict[str, Any] = {
            "version": 2,  # 2: with "destination" (version 1 had none; read as "any store")
            "key": key,
            "contentType": content_type,
            "cacheControl": cache_control,
            "metadata": dict(metadata),
            "size": len(data),
            "sha256": digest,
            "keptAt": time.time(),
            "reason": reason,
        }
        if destination is not None:
            sidecar["destination"] = destination
        data_path = self.root / (_name(key) + _DATA)
        pending = data_path.with_suffix(_PENDING)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # The sidecar first, under its pending name: a crash after the data leaves both, and the next
            # flush commits them (the data alone would have no key, never to be uploaded).
            _durable_write(pending, json.dumps(sidecar, ensure_ascii=True).encode("ascii"))
            try:
                _durable_write(data_path, data)
                _durable_rename(pending, data_path.with_suffix(_META))  # the commit mark
            except OSError:
                # Not an entry, and the caller is told: nothing of it stays (data without a sidecar is junk).
                pending.unlink(missing_ok=True)
                if not data_path.with_suffix(_META).exists():
                    data_path.unlink(missing_ok=True)
                raise
        except OSError as exc:
            self._noted(str(self._unusable(exc)))
            raise StorageError(
                f"cannot keep {key!r} in the spool {self.root}: {exc.strerror or type(exc).__name__} "
                "(check the folder is writable and the disk not full)"
            ) from None
        self._noted(None)
        return _entry(sidecar, data_path)

    def entries(self, *, store: Store | None = None) -> list[SpoolEntry]:
        """Complete entries (sidecar and data present), oldest first; with ``store``, only those a flush to it
        uploads (:meth:`SpoolEntry.is_for`)."""
        return self.split(store)[0]

    def split(self, store: Store | None) -> tuple[list[SpoolEntry], dict[str, int]]:
        """One read of the entries: those a flush to ``store`` uploads (all, without one), oldest first, and how
        many of the others each destination has."""
        found = []
        for sidecar in self._sidecars():
            meta = _read_sidecar(sidecar)
            data_path = sidecar.with_suffix(_DATA)
            if meta is not None and data_path.is_file():
                found.append(_entry(meta, data_path))
        found.sort(key=lambda e: (e.kept_at, e.key))
        if store is None:
            return found, {}
        destination = store_destination(store)
        elsewhere: dict[str, int] = {}
        for entry in found:
            if not entry.is_for(destination):
                assert entry.destination is not None
                elsewhere[entry.destination] = elsewhere.get(entry.destination, 0) + 1
        return [e for e in found if e.is_for(destination)], elsewhere

    def waiting(self, *, store: Store | None = None) -> int:
        """How many images wait for a flush: the entries, and keeps a crash interrupted after writing the image
        (the next flush settles those; see :meth:`_settle_pending`). With ``store``: the entries a flush to it
        uploads, and those interrupted keeps."""
        return self.backlog(store=store).images

    def elsewhere(self, store: Store) -> dict[str, int]:
        """The entries kept for stores other than ``store``, which a flush to it leaves: destination → how many."""
        return self.split(store)[1]

    def backlog(self, *, store: Store | None = None) -> SpoolBacklog:
        """:meth:`waiting`'s count with the entries' bytes and the oldest one's time: what a status page shows
        while the store is down (one read of the folder; StorageError when it cannot be read). With ``store``:
        of the entries a flush to it uploads (and the interrupted keeps, as :meth:`waiting` counts them), and
        the others' count by destination (:attr:`SpoolBacklog.elsewhere`), from the same read."""
        pendings = self._pendings()
        entries, elsewhere = self.split(store)
        return SpoolBacklog(
            images=len(entries) + pendings,
            bytes=sum(e.size for e in entries),
            oldest_kept_at=entries[0].kept_at if entries else None,
            elsewhere=elsewhere,
        )

    def has_files(self) -> bool:
        """Whether the spool holds anything a flush acts on: entries (readable or not), marks of finished
        uploads, interrupted keeps. A flush of none of these has nothing to do."""
        return bool(self._files(_META, _DONE, _PENDING))

    def _pendings(self) -> int:
        """How many keeps a crash interrupted (pending sidecars), settled by the next flush."""
        return len(self._files(_PENDING))

    def read(self, entry: SpoolEntry) -> bytes:
        """The entry's bytes, verified against the SHA-256 recorded when it was kept."""
        try:
            data = entry.data_path.read_bytes()
        except OSError as exc:
            raise StorageError(
                f"spool entry {entry.key!r} cannot be read: {exc.strerror or type(exc).__name__}"
            ) from None
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise StorageError(
                f"spool entry {entry.key!r} is corrupt: its data fails the SHA-256 recorded when it was kept"
            )
        return data

    async def flush(
        self,
        store: Store,
        *,
        stop_after_failures: int = 3,
        put_wait_s: float | None = FLUSH_PUT_WAIT_S,
        on_try: Callable[[SpoolEntry, int, int], None] = lambda entry, number, count: None,
        adopt: Collection[str] = (),
    ) -> FlushReport:
        """Upload every entry kept for ``store`` (:meth:`SpoolEntry.is_for` its destination) under its key and
        remove it once uploaded; those kept for another store stay as they are, counted in
        :attr:`FlushReport.elsewhere`. After
        ``stop_after_failures`` store failures in a row, or one upload the store did not answer within
        ``put_wait_s`` (the next would wait as long), the rest is skipped (left for the next flush). An entry
        that cannot be read or fails its SHA-256 is set aside (:meth:`_set_aside`), whatever the store does.
        ``on_try(entry, number, count)`` hears each entry as it is tried (a command shows its progress).
        ``adopt``: destinations whose entries go to ``store`` too (an operator's choice: images kept for a
        mistyped endpoint, whose answered URLs ``store`` serves once they are there)."""
        report = FlushReport()
        with self._flush_lock():
            await asyncio.to_thread(self._drop_finished, report)
            streak = 0
            destination = store_destination(store)
            entries = []
            for entry in await asyncio.to_thread(self.entries):
                if entry.is_for(destination) or entry.destination in adopt:
                    entries.append(entry)
                else:  # never read, moved nor set aside: that store's flush does it
                    assert entry.destination is not None
                    report.elsewhere[entry.destination] = report.elsewhere.get(entry.destination, 0) + 1
            for number, entry in enumerate(entries, start=1):
                if streak >= stop_after_failures or report.unanswered:
                    report.skipped += 1
                    continue
                on_try(entry, number, len(entries))
                try:
                    data = await asyncio.to_thread(self.read, entry)
                except StorageError as exc:  # the local disk's fault: no reason to stop trying the store
                    await asyncio.to_thread(self._set_aside, entry, str(exc), report)
                    continue
                try:
                    await self._upload(store, entry, data, put_wait_s, report)
                    await asyncio.to_thread(self._remove, entry)
                except StorageError as exc:
                    streak += 1
                    report.failed.append(entry.key)
                    report.errors[entry.key] = str(exc)
                    continue
                streak = 0
                report.moved.append(entry.key)
        return report

    @staticmethod
    async def _upload(store: Store, entry: SpoolEntry, data: bytes, wait_s: float | None, report: FlushReport) -> None:
        """``store.put`` of one entry, waited for ``wait_s`` at most: past that a StorageError, and the report
        marked :attr:`~FlushReport.unanswered` (the upload is abandoned; the entry stays for the next flush).

        A store of one's own that raises something else than StorageError, or answers something else than a
        :class:`StoredObject`, failed the upload, as when it stores an answer (QA, embedding: its OSError ended
        ``flush``, and the background retry with it, and its ``None`` removed the image from the spool)."""
        try:
            async with asyncio.timeout(wait_s):
                stored = await store.put(
                    entry.key,
                    data,
                    content_type=entry.content_type,
                    cache_control=entry.cache_control,
                    metadata=entry.metadata,
                )
        except TimeoutError:
            report.unanswered = True
            raise StorageError(
                f"the store did not answer the upload of {entry.key!r} in {wait_s:g} s (its retries included); "
                "it stays in the spool: check the store's endpoint and the network, then flush again"
            ) from None
        except StorageError:
            raise
        except Exception as exc:
            raise StorageError(f"the store failed unexpectedly ({type(exc).__name__}: {exc})") from None
        if not isinstance(stored, StoredObject):
            raise StorageError(f"{type(store).__name__}.put answered {type(stored).__name__}, not a StoredObject")

    # -- internals ---------------------------------------------------------------------------------------

    def _sidecars(self) -> list[Path]:
        return self._files(_META)

    def _files(self, *suffixes: str) -> list[Path]:
        """The spool's files of these kinds (by suffix; not the lock, probe or temporary dot-files): none when
        it does not exist yet."""
        try:
            return [p for p in self.root.iterdir() if p.suffix in suffixes and not p.name.startswith(".")]
        except FileNotFoundError:
            return []
        except OSError as exc:  # a file in its place, no permission: one line for the CLI, a postponed retry
            raise self._unusable(exc) from None

    def _unusable(self, exc: OSError) -> StorageError:
        if exc.errno in _DISK_FULL:
            # QA: a full disk was told to fix the folder's permissions, which are fine.
            advice = f"the disk is full: free space on {self.root}"
        else:
            advice = (
                "it must be a folder this user can read and write: fix its permissions, or move away what is in "
                "its place"
            )
        return StorageError(f"cannot use the spool {self.root}: {exc.strerror or type(exc).__name__} ({advice})")

    def _remove(self, entry: SpoolEntry) -> None:
        # The sidecar becomes the mark "uploaded" first: a sidecar alone (.json) means its data was lost.
        done = entry.data_path.with_suffix(_DONE)
        try:
            os.replace(entry.data_path.with_suffix(_META), done)
        except OSError as exc:
            raise StorageError(
                f"uploaded {entry.key!r} but could not mark it uploaded in the spool ({exc.strerror or exc}); "
                "the next flush uploads the same bytes to the same key again, which is harmless"
            ) from None
        with contextlib.suppress(OSError):  # marked: the next flush removes what is left (_drop_finished)
            entry.data_path.unlink(missing_ok=True)
            done.unlink(missing_ok=True)

    def _set_aside(self, entry: SpoolEntry, problem: str, report: FlushReport) -> None:
        """Move a damaged entry to ``damaged/`` so that it no longer stands in the way of the others, with one
        line for the operator in ``report.set_aside``; never deleted (it may be restored from a backup). When
        even the move fails, it is reported as failed (a local fault still: no part of the store's streak)."""
        self._set_aside_files(entry.data_path.with_suffix(_META), entry.key, problem, report)

    def _set_aside_files(self, sidecar: Path, key: str, problem: str, report: FlushReport) -> None:
        """:meth:`_set_aside` of the files of ``sidecar`` (its data, when there is any, too); ``key`` names the
        entry in the report."""
        folder = self.root / DAMAGED
        data_path = sidecar.with_suffix(_DATA)
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            stem = _free_stem(folder, sidecar.stem)
            _durable_rename(sidecar, folder / (stem + _META))  # sidecar first: the key is never lost
            if data_path.exists():
                _durable_rename(data_path, folder / (stem + _DATA))
        except OSError as exc:
            report.failed.append(key)
            report.errors[key] = (
                f"{problem}, and it could not be moved to {folder}: {exc.strerror or type(exc).__name__} "
                "(make the spool folder writable, or move the entry's two files away by hand)"
            )
            return
        report.set_aside[key] = (
            f"{problem}; set aside as {folder / stem}.data/.json, not uploaded: check the disk, then put back a "
            f"good copy of the image and move both files back into {self.root}, or delete them"
        )

    def _drop_finished(self, report: FlushReport) -> None:
        """Remove what uploads left (``.done`` marks, and the data of a removal interrupted after its mark), set
        aside sidecars that cannot be read or whose data is gone, and settle what a crash inside :meth:`keep`
        left (:meth:`_settle_pending`)."""
        self._settle_pending()
        for mark in self._files(_DONE):
            with contextlib.suppress(OSError):  # left for the next flush
                # Its data is the uploaded one unless a new keep of the same key is in place or under way.
                if not mark.with_suffix(_META).exists() and not mark.with_suffix(_PENDING).exists():
                    mark.with_suffix(_DATA).unlink(missing_ok=True)
                mark.unlink()
        for sidecar in self._sidecars():
            meta = _read_sidecar(sidecar, warn=False)
            if meta is None:
                self._set_aside_files(
                    sidecar,
                    f"({sidecar.name})",
                    f"spool entry {sidecar.name} cannot be read (not a record of the spool: damaged or edited)",
                    report,
                )
            elif not sidecar.with_suffix(_DATA).exists():
                self._set_aside_files(
                    sidecar, str(meta["key"]), f"spool entry {meta['key']!r} has lost its image file", report
                )

    def _settle_pending(self) -> None:
        """A pending sidecar older than :data:`PENDING_GRACE_S` is a :meth:`keep` that crashed: committed when
        the data it describes was written whole (its SHA-256 matches), else dropped (the data never was, or
        an older entry of the key is still in place). Younger ones may be a keep under way in another process.
        Temporary files of writes that died half-way go too, once as old."""
        try:
            found = list(self.root.iterdir())
        except OSError:
            return  # no spool yet, or unusable: said by the listing of entries
        for stale in (p for p in found if is_temporary(p.name)):
            with contextlib.suppress(OSError):  # a write that died half-way (atomic_write's temporary file)
                if time.time() - stale.stat().st_mtime >= PENDING_GRACE_S:
                    stale.unlink()
        for pending in (p for p in found if p.suffix == _PENDING):
            with contextlib.suppress(OSError):  # gone meanwhile, or unreadable: left for the next flush
                if time.time() - pending.stat().st_mtime < PENDING_GRACE_S:
                    continue
                meta = _read_sidecar(pending)
                data_path = pending.with_suffix(_DATA)
                if meta is not None and data_path.is_file() and _sha256_of(data_path) == meta["sha256"]:
                    _durable_rename(pending, pending.with_suffix(_META))
                    _log.warning("spool: recovered %s, kept by a process that stopped while keeping it", meta["key"])
                else:
                    pending.unlink()

    @contextlib.contextmanager
    def _flush_lock(self) -> Iterator[None]:
        """One flush at a time, across processes (the CLI, the API); released by the OS on a crash."""
        if sys.platform == "win32":  # pragma: no cover - no flock; single-process use only
            yield
            return
        import fcntl

        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fh = open(self.root / _LOCK, "a+b")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            raise self._unusable(exc) from None
        with fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StorageError(f"another flush of the spool {self.root} is running; try again later") from None
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


#: Said in the error of an image that neither the store nor the spool took: it is lost.
SPOOL_FAILED_TOO = "keeping the image in the spool failed too"
#: Who uploads an image kept for the store the settings describe (what ``imagegen serve`` and ``imagegen storage
#: flush`` build): a command (`imagegen generate`) ends right after its answer, so a process that runs does.
UPLOADED_BY_PROCESSES = (
    "to be uploaded again in the background by a running `imagegen serve` or console process, or the next one "
    "to start (or at once with `imagegen storage flush`)"
)
#: Who uploads an image kept for a store of one's own (``ImageGen.from_settings(store=...)``): only an ImageGen
#: given that store, since the commands build theirs from the settings and leave the images of others.
UPLOADED_BY_OWN_STORE = (
    "to be uploaded again in the background by this ImageGen while it runs, or by `resume_spool_retry()` of an "
    "ImageGen given the same store (or at once with `await gen.spool.flush(gen.store)`); not by `imagegen serve` "
    "or `imagegen storage flush`, which upload only to the store the settings describe"
)


#: Threads that keep images in the spool (an executor of their own, see :func:`keep_failed_upload`). A store that dies
#: mid-traffic fails dozens of uploads at once, and each keep writes and fsyncs three times: on the loop's shared
#: default executor (6 threads on 2 cores, image work too) 30 keeps queued behind each other past their answers'
#: deadlines (QA: 4.3-4.4 s answers for a 4 s deadline).
KEEP_THREADS = 16


async def keep_failed_upload(
    keep: Callable[..., object],
    key: str,
    *,
    reason: str,
    on_kept: Callable[[], None] = lambda: None,
    executor: concurrent.futures.Executor | None = None,
    until: float | None = None,
    finish_later: Callable[[Coroutine[Any, Any, None]], None] | None = None,
    uploaded_by: str = UPLOADED_BY_PROCESSES,
) -> UploadFailedError:
    """Keep an image whose upload failed and return the error for the answer and the log row, saying whether
    it was kept. ``keep`` keeps it given the reason (``Spool.keep`` with the image's other arguments bound,
    see :func:`keeping`); ``on_kept`` runs once it is kept (the background retry, :mod:`.retry`).

    The keep runs on ``executor`` (default: the loop's own) and is awaited until ``until`` (loop time) at most: a
    keep still under way then goes on, ``finish_later`` awaits it after the answer (so that closing waits for it,
    and it is logged how it ended), and the error says it is being kept, neither kept nor lost (the answer must
    come by its deadline, and must not claim what is not done yet). Its threads are no daemons: a process that
    ends lets a keep under way finish (a local write of milliseconds) rather than lose the image.
    ``uploaded_by`` says who uploads a kept image (:data:`UPLOADED_BY_PROCESSES`, :data:`UPLOADED_BY_OWN_STORE`)."""
    running = asyncio.get_running_loop().run_in_executor(executor, keep_or_log, keep, key, reason)
    if until is None:
        lost = await running
    else:
        # Shielded: the deadline must never cancel a keep still queued (the image would be lost unsaid).
        try:
            async with asyncio.timeout_at(until):
                lost = await asyncio.shield(running)
        except TimeoutError:
            (finish_later or asyncio.ensure_future)(_kept_after_the_answer(running, key, on_kept))
            return UploadFailedError(
                f"{reason}; keeping the image in the spool as {key} was still under way at the answer's deadline "
                "(the server log says once it is kept)",
                kept=False,
                keeping=True,
                key=key,
            )
    if lost is not None:
        return UploadFailedError(f"{reason}; {SPOOL_FAILED_TOO}: {lost}", kept=False, key=key)
    on_kept()
    return UploadFailedError(
        f"{reason}; the image was kept in the spool as {key}, {uploaded_by}",
        kept=True,
        key=key,
    )


async def _kept_after_the_answer(
    running: asyncio.Future[StorageError | None], key: str, on_kept: Callable[[], None]
) -> None:
    """A keep that outlived its answer's deadline, awaited to its end: kept, it is said and the background retry
    woken; lost, :func:`keep_or_log` said so already."""
    if await running is None:
        _log.warning("image %s kept in the spool after its answer went out; it is uploaded again later", key)
        on_kept()


def keeping(
    spool: Spool,
    key: str,
    data: bytes,
    *,
    content_type: str,
    cache_control: str,
    metadata: dict[str, str],
    destination: str,
) -> Callable[..., SpoolEntry]:
    """``spool.keep`` of this image for the store of ``destination``, waiting for the reason it is kept."""
    return functools.partial(
        spool.keep,
        key,
        data,
        content_type=content_type,
        cache_control=cache_control,
        metadata=metadata,
        destination=destination,
    )


def keep_or_log(keep: Callable[..., object], key: str, reason: str) -> StorageError | None:
    """Run ``keep(reason=reason)`` (blocking); when the spool refuses, log that the image is lost and return
    the spool's error."""
    try:
        keep(reason=reason)
    except StorageError as exc:
        _log.error("image %s lost (neither stored nor kept in the spool): %s; %s", key, reason, exc)
        return exc
    return None


def _name(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _entry(meta: dict[str, Any], data_path: Path) -> SpoolEntry:
    return SpoolEntry(
        key=str(meta["key"]),
        content_type=str(meta["contentType"]),
        cache_control=str(meta["cacheControl"]),
        metadata={str(k): str(v) for k, v in dict(meta.get("metadata") or {}).items()},
        size=int(meta["size"]),
        sha256=str(meta["sha256"]),
        kept_at=float(meta["keptAt"]),
        reason=str(meta.get("reason", "")),
        data_path=data_path,
        # Absent in a sidecar written before destinations were recorded: such an entry goes to any store.
        destination=None if meta.get("destination") is None else str(meta["destination"]),
    )


#: The unreadable sidecars already warned about: a command lists the spool more than once (QA: each warning
#: came twice). By path and modification time, so that one damaged again after a repair is told again.
_warned: set[tuple[Path, int]] = set()


def _read_sidecar(path: Path, *, warn: bool = True) -> dict[str, Any] | None:
    try:
        meta = json.loads(path.read_bytes())
        _entry(meta, path)  # every field present and well-typed
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        with contextlib.suppress(OSError):
            seen = (path, path.stat().st_mtime_ns)
            if warn and seen not in _warned:
                _warned.add(seen)
                _log.warning(
                    "ignoring unreadable spool sidecar %s: %s (the next flush sets it aside in %s)",
                    path,
                    exc,
                    path.parent / DAMAGED,
                )
        return None
    return meta if isinstance(meta, dict) else None


def _free_stem(folder: Path, stem: str) -> str:
    """``stem``, or ``stem-2``, ``stem-3``…: the same key damaged twice never overwrites what was set aside."""
    candidate, n = stem, 1
    while (folder / (candidate + _META)).exists() or (folder / (candidate + _DATA)).exists():
        n += 1
        candidate = f"{stem}-{n}"
    return candidate


def _sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _durable_rename(source: Path, target: Path) -> None:
    """``os.replace`` made durable: the folder is fsync-ed, so the new name survives a power loss."""
    os.replace(source, target)
    fsync_folder(str(source.parent))


def _durable_write(path: Path, data: bytes) -> None:
    """Whole or absent, even on power loss (the image was paid for); private to this user until uploaded."""
    atomic_write(str(path.parent), path.name, data, mode=0o600, durable=True)
