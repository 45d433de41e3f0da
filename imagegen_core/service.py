"""The ``ImageGen`` façade: validate → race → normalise → store → log.

``await gen.generate(req)`` inside async code; ``gen.generate_sync(req)`` in scripts and Jupyter.
Every request gets a row in the log before any provider is called and a final status after; every
attempt is logged as it starts and ends (through the race's listener and a non-blocking writer).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import re
import threading
import time
import warnings
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Self, TypeVar, cast

import httpx

from .breaker import CircuitBreakers, probe_leases
from .chaos import chaos_active
from .compare import Candidate, Comparison, compare, pick
from .config import (
    RuntimeConfig,
    check_call_deadline,
    check_call_source,
    check_log_call_wait,
    check_received_at,
    newest_valid_config,
    parse_config,
    parse_stored,
    source_problem,
    stored_in_current_form,
)
from .config_history import ConfigVersionInfo, named_error, summarise
from .delivery import DEFAULT_INLINE_ERROR, Delivery
from .errors import (
    ConfigConflictError,
    ConfigError,
    ImageGenError,
    InvalidRequestError,
    LogDatabaseBusy,
    LogDatabaseError,
    StorageError,
    UploadFailedError,
    clip,
)
from .forking import renew_after_fork
from .gates import ThreadedBreakerGate
from .hedging import Hedger
from .http_clients import LoopClients
from .ids import new_id
from .images import (
    check_inline_size,
    draw_default_image,
    fetch_image,
    in_image_worker,
    inspect_image,
    normalize_to_webp,
)
from .listeners import check_callback, notify
from .log.db import LogDB, open_log
from .log.outage import READ_WAIT_S, BoundedCalls, ReadPause
from .log.spill import LogSpill, spill_folder
from .log.writer import WRITE_WAIT_S, LogWriter, WriteFailure
from .models import GenerateRequest, GenerateResult
from .planning import ProviderSet, given_provider_keys, hedge_settings
from .providers.base import Provider, ProviderContext, ProviderOutput, confirms_use
from .race import AttemptEvent, Entrant, Race, RaceResult
from .recording import RequestRecorder
from .request_ids import RequestIds
from .sent_requests import make_transport, noting
from .settings import Settings
from .storage import Spool, Store, make_spool, make_store
from .storage.base import store_destination
from .storage.retry import SpoolRetrier
from .storage.select import settings_destination
from .storage.spool import UPLOADED_BY_OWN_STORE, UPLOADED_BY_PROCESSES
from .sync import SyncPortal
from .validation import ResolvedRequest, resolve_request

_log = logging.getLogger("imagegen")

#: Name reported as ``provider`` when the default image answers.
DEFAULT_PROVIDER = "default"
#: How long closing waits for the requests still being answered before it cancels them.
_REQUESTS_END_S = 10.0
#: How long closing then waits for the cancelled ones to end (in milliseconds, unless one ignores cancellation).
_CANCELLED_END_S = 5.0
#: How long closing waits for another thread's loop to close its HTTP client.
_CLOSE_OTHERS_S = 5.0
#: How long :meth:`ImageGen.log_call` waits for the log database by default.
LOG_CALL_WAIT_S = 10.0
#: What :func:`~.ids.new_id` makes: a request id given to :meth:`ImageGen.generate` must look the same.
_REQUEST_ID = re.compile(r"[0-9a-f]{32}")
#: The share of a request's remaining time it may wait for the config read (READ_WAIT_S at most): the
#: providers need the rest. A healthy server answers in milliseconds; a down one is skipped with the config in
#: force anyway.
CONFIG_READ_SHARE = 0.1
#: ... and at least this, so that a short deadline does not turn a healthy read into a failure.
MIN_CONFIG_READ_WAIT_S = 0.05
#: How many times a config merge is made again over a version another process stored meanwhile.
MERGE_TRIES = 20

T = TypeVar("T")


@dataclass(slots=True)
class _UnderWay:
    """A ``generate`` or ``compare`` call under way (see :meth:`ImageGen._under_way`)."""

    task: asyncio.Task[Any] | None
    request_id: str
    started: float  # time.monotonic()


@dataclass(frozen=True, slots=True)
class _Finished:
    """A verified image: WebP bytes to store, or a verified hotlink (Unsplash)."""

    data: bytes | None
    width: int
    height: int


class RaceSteps(NamedTuple):
    """What the race does with a provider's answer: ``fetch`` its bytes (the provider's part, in its timeout),
    then ``finish`` them (ours: verify, normalise; bounded by the request's deadline only)."""

    fetch: Callable[[Entrant, ProviderOutput], Awaitable[bytes]]
    finish: Callable[[Entrant, ProviderOutput, bytes | None], Awaitable[_Finished]]


def make_http_client() -> httpx.AsyncClient:
    """The shared client for provider calls and downloads. Deadlines are enforced by the race, so the
    client's own timeouts are only a backstop. The aiohttp transport was chosen by ``bench/race_overhead.py``:
    httpx's default pool degrades with ~50 requests in flight (encode/httpx#3215)."""
    # httpx ignores ``limits`` on the client once a transport is given: the transport must get them.
    transport = make_transport(httpx.Limits(max_connections=200, max_keepalive_connections=50))
    timeout = httpx.Timeout(120.0, connect=10.0)
    # Noting what it sends: a timed-out attempt that never sent its request costs nothing (see sent_requests).
    return noting(httpx.AsyncClient(transport=transport, timeout=timeout, headers={"User-Agent": "imagegen/0.1"}))


class ImageGen:
    """Generate article images: race the configured providers, store the winner, log everything.

    Build with :meth:`from_settings`. Close with ``await gen.aclose()`` / ``gen.close()`` or use it as a
    (async) context manager, so queued log writes are applied and connections released.

    ``start_without_log``: when a SQLite log cannot be opened at all (a full disk, a read-only mount), go on
    without it (the default: requests still answer, see :meth:`_start_without_log`); False raises the
    :class:`~imagegen_core.errors.LogDatabaseBusy` instead, for a program that has nothing to do without the log.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        log: LogDB,
        store: Store,
        spool: Spool | None = None,
        http_client: httpx.AsyncClient | None = None,
        providers: Mapping[str, Provider] | None = None,
        source: str = "python",
        breaker_clock: Callable[[], float] = time.time,
        start_without_log: bool = True,
    ) -> None:
        _check_types(settings=settings, log=log, http_client=http_client, breaker_clock=breaker_clock)
        _check_source(source)
        _check_store(store)
        self.settings = settings
        self._may_start_without_log = start_without_log
        self.log = log
        self.store = store
        #: Paid-for images the store refused, waiting to be uploaded again (``spool_retrier``, or
        #: ``imagegen storage flush``).
        self.spool = spool if spool is not None else make_spool(settings)
        #: Uploads the spool again in the background once something was kept in it (``storage/retry.py``).
        self.spool_retrier = SpoolRetrier(self.spool, store, on_moved=self._uploaded_from_spool)
        # A store of one's own (not the one the settings describe): the commands will not upload what it keeps.
        own_store = store_destination(store) != settings_destination(settings)
        self.delivery = Delivery(
            store,
            self.spool,
            spawn=self._spawn,
            on_spooled=self.spool_retrier.wake,
            uploaded_by=UPLOADED_BY_OWN_STORE if own_store else UPLOADED_BY_PROCESSES,
        )
        self.source = source
        #: Rows the log database did not take through an outage wait in this spill (see :mod:`.log.spill`).
        self.log_spill = LogSpill(spill_folder(settings.home, log.label), log)
        # A server database's writes are bounded (a server that hangs refuses nothing); SQLite's wait on a lock
        # is bounded by its busy timeout already.
        write_wait_s = None if log.reads_never_wait else WRITE_WAIT_S
        self._writer = LogWriter(batch=log.batch, spill=self.log_spill, write_wait_s=write_wait_s)
        # Once each (a key given in code may be the settings' own): every secret is replaced in every text redacted.
        self._secrets = list(dict.fromkeys([*settings.secret_values(), *given_provider_keys(providers or {})]))
        self._recorder = RequestRecorder(log, self._writer, self._secrets)
        self._external_client = http_client
        self._external_client_loop: asyncio.AbstractEventLoop | None = None
        self._clients = LoopClients(make_http_client)
        self._portal = SyncPortal()
        self._closed = False
        self._background: set[asyncio.Future[Any]] = set()
        self._lingering: set[asyncio.Future[Any]] = set()  # see _linger
        #: The loop of the last _start_in (weakly: a finished loop must not stay in memory for it).
        self._spawning_loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        #: Each ``generate`` or ``compare`` call under way (``_under_way``): a future done when it ends, and the
        #: call. Closing waits for them, so that cancelled ones clean up first (their providers' server-side
        #: cancels), then cancels those still running: their rows end before the log writer closes.
        self._inflight: dict[asyncio.Future[None], _UnderWay] = {}
        #: Set when closing starts: no new request from then on.
        self._closing = False
        self._provider_set = ProviderSet(settings, overrides=providers or {})
        self._config_version: int | None = -1
        # Reloads and saves come from request tasks and from worker threads (admin calls, the console).
        self._config_lock = threading.RLock()
        #: The stored version whose document is in force (None: the defaults); older than _config_version
        #: while the newest stored one is invalid.
        self._in_force_version: int | None = None
        #: The log's change token when the config version was last read (None: read on every request).
        self._config_token: bytes | None = None
        #: When this process last made sure its config is the newest stored (None: never).
        self._config_checked_at: float | None = None
        #: While the log DB cannot be read, requests keep the config in force (see :meth:`_fresh_config`).
        self._config_reads = ReadPause(
            down="cannot read the config from the log database; keeping the one in force: %s",
            back="the log database answers again; the config in force is read from it",
        )
        #: Request ids taken (in flight, or in the log): a caller's id already used is refused.
        self._request_ids = RequestIds(log, self._config_reads)
        #: Other blocking log work an embedding app waits for (the API's status pages and admin changes).
        self._log_calls = BoundedCalls(wait_s=LOG_CALL_WAIT_S, threads=4, name="imagegen-log-call")
        self._config = self._parse_config(None)
        self.breakers = CircuitBreakers(
            log.breaker_store(), self._config.breaker, clock=breaker_clock, probe_leases=probe_leases(self._config)
        )
        #: Adaptive hedge delays and the hedge budget, shared by this process's requests.
        self.hedger = Hedger(hedge_settings(self._config))
        self._gate = ThreadedBreakerGate(
            self.breakers,
            self._writer,
            redact=lambda text: self._recorder.redact(text) or "",
            read_in_place=log.reads_never_wait,
            change_token=log.change_token,
        )
        #: Why the log database could not be opened when this ImageGen was built (None: it could): it then
        #: started without it (see :meth:`_start_without_log`).
        self.log_unavailable_at_start: LogDatabaseBusy | None = None
        self._load_config_at_start()
        # Only once the log is known to open (or to be away for a while): over a file that is no log at all (a
        # bad restore), the refusal above is the answer, and writing the kept rows back into it first deleted
        # them from the spill, each refused (QA, embedding).
        self._writer.write_back_kept()
        #: In a forked child, the parent's HTTP clients and calls under way (see :meth:`renew_after_fork`).
        self._parents: list[object] = []
        renew_after_fork(self)
        self._built = True  # for __del__: a construction that failed half-way has nothing of this to release

    def renew_after_fork(self) -> None:
        """In a forked child (see :mod:`.forking`; its parts renew their own threads): HTTP clients of its own,
        and none of the parent's calls under way, which closing the child must neither wait for nor log as
        cancelled. The parent's clients and calls are kept, unused: their connections are the parent's sockets,
        and collected they would warn (an unclosed session, a pending task)."""
        self._parents.append((self._clients, self._inflight))
        self._clients = LoopClients(make_http_client)
        self._inflight = {}
        self._config_lock = threading.RLock()  # may have been held by a thread that is gone

    # -- construction -------------------------------------------------------------------------------

    def _load_config_at_start(self) -> None:
        """The config in force from the log database; when a SQLite log cannot be opened now (a read-only
        mount, a full disk: an outage, not a bad path), :meth:`_start_without_log` instead."""
        try:
            self._reload_config_locked()
        except LogDatabaseBusy as exc:
            # A PostgreSQL away at start: refused, as before (no config to go on with).
            if self.log.path is None or not self._may_start_without_log:
                raise
            self._start_without_log(exc)

    def _start_without_log(self, error: LogDatabaseBusy) -> None:
        """Go on while the SQLite log cannot be opened (QA: ``serve`` and ``generate`` exited 2 when the log's
        folder was on a full disk or remounted read-only, because WAL mode must create the -shm file just to
        open it): with the newest valid config stored in the file, read as the file stands, or the built-in
        defaults when none is stored. Rows wait in the spill, reads are retried every few seconds like an
        outage's, ``/health`` says 503, and one warning says all that. A file that cannot even be read that way
        (another owner's), or whose every stored version is invalid here, raises ``error``: going on with the
        defaults could race providers the stored config turns off."""
        try:
            versions = self.log.configs_as_they_stand()
        except LogDatabaseError:
            raise error from None
        found = newest_valid_config(versions, self._parse_config)  # as a normal start picks it
        if found is not None:
            self._apply(found[1], found[0])
            which = f"the config stored in it (version {found[0]}, read from the file as it stands)"
        elif versions:
            # Every stored version is invalid here: going on with the defaults could race providers they turn off.
            raise error from None
        else:
            which = "the built-in default config (none is stored in it)"
        self.log_unavailable_at_start = error
        self._writer.note_refused(error)
        self._writer.spill_from_now()
        self._config_reads.failed(error, said=True)
        _log.warning(
            "%s; going on without it: %s is in force, and the log's rows wait in %s until it can be opened",
            error,
            which,
            self.log_spill.root,
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        store: Store | None = None,
        spool: Spool | None = None,
        http_client: httpx.AsyncClient | None = None,
        providers: Mapping[str, Provider] | None = None,
        source: str = "python",
        breaker_clock: Callable[[], float] = time.time,
        start_without_log: bool = True,
    ) -> ImageGen:
        """An ImageGen over the log DB and store that ``settings`` describe (``Settings()`` by default); the
        other arguments are the constructor's, ``store`` replacing the one ``settings`` describe."""
        if settings is not None and not isinstance(settings, Settings):
            raise TypeError(f"from_settings() takes a Settings, not {type(settings).__name__}: Settings(**values)")
        _check_source(source)  # before the log is opened, which a refusal in the constructor would leave open
        if store is not None:
            _check_store(store)
        settings = settings or Settings()
        # The store first: a half-configured R2 is a ConfigError before anything is opened.
        store = store or make_store(settings)
        log = open_log(settings)  # SQLite or PostgreSQL, from IMAGEGEN_DATABASE_URL
        return cls(
            settings=settings,
            log=log,
            store=store,
            spool=spool,
            http_client=http_client,
            providers=providers,
            source=source,
            breaker_clock=breaker_clock,
            start_without_log=start_without_log,
        )

    # -- runtime config (hot) -----------------------------------------------------------------------

    @property
    def config(self) -> RuntimeConfig:
        """The runtime config in force (each request looks for a newer version in the log DB first)."""
        return self._config

    def reload_config(self) -> RuntimeConfig:
        """Use the newest config version in the log DB if it changed; an invalid stored one is ignored."""
        self._check_open()  # a closed ImageGen's log DB stays closed (it reopened, holding its files until GC)
        return self._reload_config_locked()

    def _reload_config_locked(self) -> RuntimeConfig:
        with self._config_reading():
            return self._reload_config()

    def _newest_in_force(self) -> tuple[RuntimeConfig, int, bool]:
        """The config in force after a reload, the newest stored version's id (0: none) and whether the config
        in force is that version's, read together."""
        with self._config_reading():
            config, newest = self._reload_config(), self.config_version or 0
            return config, newest, newest != 0 and self._in_force_version == newest

    @contextlib.contextmanager
    def _config_reading(self) -> Iterator[None]:
        """Hold the config lock for a read of the log DB, waiting :data:`READ_WAIT_S` at most for it. The lock is
        held across the read, and a read of a server that hangs holds it until TCP gives up: a page waiting for
        the lock without a bound hung with it (an admin save over a hung PostgreSQL froze the console). Past the
        wait it is LogDatabaseError, which pages answer with the config in force."""
        if not self._config_lock.acquire(timeout=READ_WAIT_S):
            raise LogDatabaseBusy(
                "the log database has not answered an earlier read of the config yet (a server that hangs, or a "
                "network that drops packets?)"
            )
        try:
            yield
        finally:
            self._config_lock.release()

    def _reload_config(self) -> RuntimeConfig:
        version = self.log.latest_config_id()
        self._config_checked_at = time.time()
        self._config_reads.worked()  # read by a status page or an admin change: requests read again too
        if version is None and self._in_force_version is not None:
            self._keep_config_without_versions()
        elif version != self._config_version:
            latest = self.log.latest_config() if version is not None else None
            if latest is not None:
                version = latest[0]  # the document's own id: another save may have come between the two reads
            try:
                config = parse_stored(latest[1], self._parse_config) if latest else self._parse_config(None)
            except ConfigError as exc:
                if self._config_version == -1:  # nothing loaded yet: the newest valid version, not the defaults
                    self._apply_newest_valid(version, exc)
                else:
                    _log.error("stored config version %s is invalid, keeping the current one: %s", version, exc)
            else:
                self._apply(config, version)
            self._config_version = version
        return self._config

    def _keep_config_without_versions(self) -> None:
        """The log DB holds no config version any more, though the config in force came from one: the file was
        deleted or replaced under this process, which then makes a new, empty one. The config in force stays
        (one warning), not the built-in defaults (QA chaos: the log moved away under a running server turned
        its stored config back to the defaults: providers it had switched off raced again, and the deadline
        went from 2 s to 30 s). The next version stored is used as usual."""
        if self._config_version is not None:
            _log.warning(
                "the log database holds no config version any more (deleted or replaced?): keeping version %s in"
                " force, not the defaults; store it again (imagegen config set FILE, or PUT /admin/config) so that"
                " a restart uses it too",
                self._in_force_version,
            )
        self._config_version = None

    def _apply_newest_valid(self, version: int | None, error: ConfigError) -> None:
        # E.g. a newer imagegen stored a key this one does not know, in a log DB both share. The version just
        # refused is not parsed again.
        older = ((v, document) for v, document in self.log.recent_configs() if v != version)
        found = newest_valid_config(older, self._parse_config)
        if found is None:
            _log.error("no stored config version is valid (the newest, %s: %s); using the defaults", version, error)
            return
        _log.error("stored config version %s is invalid (%s); using version %s", version, error, found[0])
        self._apply(found[1], found[0])

    @property
    def config_version(self) -> int | None:
        """The id of the newest stored config version this process has read (None: none stored yet): the
        ``based_on`` for an edit of :attr:`config`."""
        return None if self._config_version == -1 else self._config_version

    @property
    def config_in_force_version(self) -> int | None:
        """The id of the stored version :attr:`config` comes from (None: the built-in defaults). Older than
        :attr:`config_version` while the newest stored version is invalid and ignored."""
        return self._in_force_version

    @property
    def config_checked_at(self) -> float | None:
        """When this process last made sure (``time.time()``) that its config is the newest stored version's:
        a request, a status page or an admin change read the log DB for it. None: never."""
        return self._config_checked_at

    @property
    def config_may_be_stale(self) -> bool:
        """Whether the last look for a newer config version failed (the log DB cannot be read): this process
        then goes on with :attr:`config`, which may be older than what another process stored since."""
        return self._config_reads.failing

    def _parse_config(
        self,
        document: Mapping[str, Any] | None,
        *,
        base: Mapping[str, Any] | None = None,
        saving: bool = False,
        known_types_only: bool | None = None,
    ) -> RuntimeConfig:
        # The document's own rules; when it is being saved, also each provider's rules for its entries' model
        # and options. Not when a stored one is loaded: a version saved before those rules must keep working.
        # Nor, when loading, the entries' types: one installed in another process sharing the log DB (a plugin)
        # but not in this one is kept, not racing here ("its type 'x' is not installed"), and the rest of the
        # version stays in force (QA: the whole version was thrown away, rate limit and timeouts with it).
        # Saving (and listing what a save would refuse: ``known_types_only``) refuses a type unknown both here and
        # in the config in force, so a PATCH from this process still works over an entry another one serves.
        known = None
        if saving if known_types_only is None else known_types_only:
            in_force = self._config
            known = self._provider_set.known_types() | {in_force.provider_type(n) for n in in_force.providers}
        config = parse_config(document, base=base, known_providers=known, stored=not saving)
        if saving:
            self._provider_set.check(config)
        return config

    def _apply(self, config: RuntimeConfig, version: int | None) -> None:
        self._config = config
        self._in_force_version = version
        self.breakers.configure(config.breaker, probe_leases=probe_leases(config))
        self.hedger.configure(hedge_settings(config))

    def set_config(
        self,
        document: Mapping[str, Any],
        *,
        source: str = "api",
        merge: bool = False,
        based_on: int | None = None,
    ) -> RuntimeConfig:
        """Validate and store a new config version (``merge=True`` deep-merges over the current one).

        ``based_on``: the version the edit was made from (0: none stored). If another version was stored
        since, nothing is saved and :class:`ConfigConflictError` says so. The log DB work waits
        :data:`LOG_CALL_WAIT_S` at most (see :meth:`log_call_sync`): past that LogDatabaseBusy, and the change
        may still be stored once the server answers. ``source`` (who stored it, as ``config history`` lists it) is
        1 to 64 printable characters, as a request's is: else ConfigError naming ``source``."""
        self._check_open()
        _check_source(source)
        return self._set_config(document, source=source, merge=merge, based_on=based_on)

    def _set_config(
        self, document: Mapping[str, Any], *, source: str, merge: bool = False, based_on: int | None = None
    ) -> RuntimeConfig:
        """:meth:`set_config` of a checked ``source`` (a rollback's names the version it goes back to)."""
        # Each with its field, as the README promises of every refusal of a config method (QA: None here).
        if not isinstance(document, Mapping):  # None included: parse_config reads None as "the defaults"
            raise ConfigError("config document must be a JSON object", field="(root)")
        if based_on is not None and (not isinstance(based_on, int) or isinstance(based_on, bool)):
            raise ConfigError(
                f"based_on must be a version number (an int), got {type(based_on).__name__}", field="based_on"
            )

        def save(
            base: Mapping[str, Any] | None,
            on: int | None,
            newest: int | None = None,
            in_force: Mapping[str, Any] | None = None,
        ) -> RuntimeConfig:
            config = self._parse_config(document, base=base, saving=True)
            stored = config.to_document()
            self._refuse_oversized(stored)
            if newest is not None and on in (None, newest) and stored == in_force:
                # A change that changes nothing stores no version (QA: each empty PATCH stored one, and an editor
                # working from a GET then got a 409 although nothing had changed; `config set` of the document
                # in force stored one every time). Which versions are newest and in force stays as the reload
                # just read it: taking ``newest`` as in force called a log with none stored "version 0", and the
                # next request warned that the log had been deleted; and it called an invalid newest version,
                # ignored, the one in force (QA, embedding: ``set_config({}, merge=True)``).
                return config
            version = self.log.save_config(stored, source=source, based_on=on)
            with self._config_lock:
                self._config_version = version
                self._apply(config, version)
            return config

        def store() -> RuntimeConfig:
            # Stored only over the version it was judged against: two concurrent PATCHes (two processes, or two
            # threads) each used to merge into the same version and answer 200, and the second stored undid the
            # first; ten rollbacks at once (a set of one document) stored four versions for one change (QA). On a
            # conflict the change is judged again over the newer version (a merge made again over it; a set of
            # the document now in force stores nothing), unless the caller named the version its edit is based on
            # (then the conflict is the answer).
            newest = 0
            for _ in range(MERGE_TRIES):
                current, newest, in_force = self._newest_in_force()
                base = current.to_document()
                on = newest if based_on is None else based_on
                try:
                    if merge:
                        return save(base, on, newest, base)
                    # Only the newest version can be kept: while it is invalid, the document in force (an older
                    # version's) must be stored again to be the newest.
                    return save(None, on, newest if in_force else None, base)
                except ConfigConflictError:
                    if based_on is not None:
                        raise
            raise ConfigConflictError(newest, self.log.latest_config_id())

        # Bounded like every other blocking caller's log work: a server that hangs must not hold a command or
        # a console page for as long as TCP takes to give up.
        return self.log_call_sync(store)

    def _refuse_oversized(self, document: Mapping[str, Any]) -> None:
        """ConfigError for a config ``document`` larger than the HTTP API's body limit: it could not be sent back
        through ``PUT /admin/config``, and every process loads it (QA: `config set` of 5,000 styles stored 50 MB,
        and each later generate held 300 MB)."""
        size = len(json.dumps(document, separators=(",", ":")).encode("utf-8"))
        if size > self.settings.max_body_bytes:
            raise ConfigError(
                f"the config document is {size:,} bytes: at most {self.settings.max_body_bytes:,} are stored (the "
                "HTTP API's body limit, IMAGEGEN_MAX_BODY_BYTES, so that it can be sent back through the API)",
                field="(root)",
            )

    def config_history(self, limit: int = 20) -> list[ConfigVersionInfo]:
        """The newest ``limit`` stored config versions, newest first, each with what it changed, whether it
        is valid now and whether it is in force (see :mod:`.config_history`). Blocking log DB reads: callers
        on a loop use :meth:`log_call`. A ``limit`` that is not a whole number of at least 0 is a
        :class:`ConfigError` naming ``limit``, as ``set_config`` refuses a bad ``based_on``."""
        self._check_open()
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:  # QA: an internal TypeError
            raise ConfigError(
                f"limit must be a whole number of versions (0 or more), got {clip(repr(limit), 40)}", field="limit"
            )
        self.reload_config()  # which version is in force, as of now
        # One more: what the oldest listed changed. A limit past what a database's LIMIT holds (a 64-bit integer)
        # lists them all, as any limit past their number does (QA: 10**20 raised OverflowError from sqlite3).
        versions = self.log.config_versions(min(limit, _MAX_LISTED) + 1)
        return summarise(
            versions,
            parse=lambda doc: self._parse_config(doc, known_types_only=True),
            in_force=self._in_force_version,
            limit=limit,
        )

    def rollback_config(self, version: int, *, source: str = "api") -> RuntimeConfig:
        """Store stored version ``version``'s document again, as the newest version, validated like any
        :meth:`set_config` (and, like it, storing nothing when that document is the one in force). A version
        never stored, or one this imagegen refuses now, is a :class:`ConfigError` naming ``version``; nothing
        is stored then; so is a ``version`` that is not an int (QA: an internal TypeError). ``source`` as for
        :meth:`set_config`."""
        self._check_open()
        _check_source(source)
        if isinstance(version, bool) or not isinstance(version, int):
            raise ConfigError(f"must be a version number (an int), got {clip(repr(version), 40)}", field="version")
        found, document = False, cast(Any, None)
        if 1 <= version < 2**63:  # ids are 64-bit: past that the database cannot even be asked (a 500, fuzzed)
            found, document = self.log_call_sync(lambda: self.log.config_document(version))
        if not found:
            latest = self.log_call_sync(self.log.latest_config_id)
            newest = f"the latest is {latest}" if latest else "none is stored yet"
            raise ConfigError(f"{version} does not exist ({newest})", field="version")
        try:
            parse_stored(document, lambda doc: self._parse_config(doc, saving=True))
        except ConfigError as exc:
            raise ConfigError(f"{version} is not valid now ({named_error(exc)})", field="version") from None
        # In the form it was read in: a value an older imagegen stored is brought up to date, not refused.
        return self._set_config(stored_in_current_form(document), source=f"{source} (rollback to {version})")

    def latest_config(self) -> RuntimeConfig:
        """:meth:`reload_config`, or while the log DB cannot be read, the config in force (which requests then
        use too): for what a page shows, which must not fail with the log."""
        self._check_open()
        try:
            return self.reload_config()
        except LogDatabaseError:
            return self._config

    def chaos_active(self) -> bool:
        """Whether fault injection (the config's ``chaos`` section) is on and can fire: consoles and status
        pages show it, so a drill is never left running unnoticed."""
        return chaos_active(self.latest_config())

    # -- providers ----------------------------------------------------------------------------------

    def entrants(self, config: RuntimeConfig | None = None) -> list[Entrant]:
        """Providers that would race now (enabled and configured; offline as last resort), by priority: the start
        order of ``race.order: "priority"``, the default. Under ``"fastest"``, or for a request naming a provider,
        a request starts them in another order."""
        self._check_open()
        return self._provider_set.entrants(config or self._config)

    def needs_credit(self, provider: str | None) -> bool:
        """Whether images of ``provider`` (a log row's provider name) are stock photos that must carry their
        photographer's credit: History flags such a photo logged without one."""
        self._check_open()
        if not provider:  # a request that failed, or is still running
            return False
        return self._provider_set.needs_credit(provider, self._config)

    def no_provider_races(self) -> str | None:
        """Why no provider races with the config in force although one could (production's refusal of the
        offline provider alone, :func:`~.profiles.offline_only_problem`), or None."""
        return self._provider_set.offline_refusal(self.config)

    def provider_status(self, *, read_log: bool = True) -> list[dict[str, Any]]:
        """Every provider in the config: type, enabled, configured, settings and breaker state, and why one
        does not race (``notRacing``, None when it does).
        ``hedgeable``: in ``hedged`` mode, whether it may start as a hedge; one whose ``costPerImage`` is over
        ``race.maxExtraCostPerRequest`` starts only after the providers before it have failed. ``fallback``:
        it races only as the last resort (the offline provider, enabled or not, when no enabled provider is
        configured). Not ``read_log`` (the log database is down): the config in force, without looking for a
        newer one, and ``breaker`` None (breaker states live in the log database)."""
        self._check_open()
        config = self.reload_config() if read_log else self._config
        racing = {e.name for e in self.entrants(config)}
        over_cost_cap = hedge_settings(config).over_cost_cap
        rows = []
        for name, pc in sorted(config.providers.items(), key=lambda kv: kv[1].priority):
            provider = self._provider_set.get(name, config)
            breaker = str(self.breakers.state(name).state) if read_log else None
            rows.append(
                {
                    "name": name,
                    "type": config.provider_type(name),
                    "enabled": pc.enabled,
                    "configured": provider.configured if provider else False,
                    "racing": name in racing,
                    "fallback": name in racing and not pc.enabled,
                    "priority": pc.priority,
                    "timeoutMs": pc.timeout,
                    "retries": pc.retries,
                    "model": pc.model,
                    "costPerImage": pc.cost_per_image,
                    "hedgeable": config.race.mode == "hedged" and not over_cost_cap(pc.cost_per_image),
                    "breaker": breaker,
                    # Why not, in words (e.g. "its type 'x' is not installed": a plugin another process has).
                    "notRacing": None if name in racing else self._provider_set.why_not_racing(name, config),
                }
            )
        return rows

    # -- generate -----------------------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        if self._external_client is not None:
            self._check_external_client_loop()
            return self._external_client
        return self._clients.get()

    def _check_external_client_loop(self) -> None:
        """The ``http_client`` given to the constructor serves the event loop it was first used on only (an
        httpx client's connections belong to one loop). QA: on a second ``asyncio.run`` its calls failed with
        "Event loop is closed", counted as the provider's failures, and its breaker opened."""
        loop = asyncio.get_running_loop()
        if self._external_client_loop is None:
            self._external_client_loop = loop
        elif self._external_client_loop is not loop:
            raise ImageGenError(
                "the http_client given to this ImageGen belongs to the event loop it was first used on: use the "
                "ImageGen on that loop only, or give it no http_client (it then makes one per loop)"
            )

    async def warm_up(self) -> None:
        """Pay the one-time costs before traffic arrives: the HTTP client on this loop (importing its transport
        takes ~0.2 s, on the loop thread), the image codecs (the first WebP encode ~0.1 s) and a log DB
        connection. Otherwise the first burst of requests after a start waits behind them, past its deadline."""
        self._check_open()  # not in the best-effort block below, which would only log it
        try:
            self._client()
            await asyncio.to_thread(draw_default_image, 320, 200)  # WebP encoder, drawing and fonts
            await asyncio.to_thread(self.reload_config)
            # The spool's folder made now, not by the first keep of an outage (under its deadline), and an
            # unusable one said now (an error line), not by the first image it loses.
            if await asyncio.to_thread(self.spool.check) is None:
                await self.resume_spool_retry()
        except Exception as exc:  # best effort: a slow first request beats a server that does not start
            _log.warning("warm-up incomplete: %s", self._recorder.redact(str(exc)))

    def warm_up_sync(self) -> None:
        """Blocking :meth:`warm_up`, on the loop the ``*_sync`` methods use (the console calls it at start)."""
        self._check_open()
        self._portal.run(self.warm_up())

    async def resume_spool_retry(self) -> int:
        """Images an earlier process left in the spool (it stopped during a store outage) are uploaded again in
        the background from now on, the first try at once; returns how many wait for this ImageGen's store (those
        kept for another store wait for a process configured for it, and are only named in the log).
        :meth:`warm_up` calls it: otherwise they waited for this process's own first failed upload, or for
        ``imagegen storage flush``."""
        self._check_open()
        backlog = await asyncio.to_thread(functools.partial(self.spool.backlog, store=self.store))
        waiting = backlog.images
        for destination, count in backlog.elsewhere.items():
            _log.warning(
                "spool: %d image(s) kept for another store (%s) wait in the spool; this process leaves them: "
                "flush from a process configured for that store",
                count,
                destination,
            )
        if waiting:
            _log.info("spool: %d image(s) kept by an earlier process; uploading them again in the background", waiting)
            self.spool_retrier.wake(now=True)
        return waiting

    def _uploaded_from_spool(self, keys: list[str]) -> None:
        self.delivery.uploaded_from_spool(keys)

    def _spawn(self, coro: Any) -> None:
        """Background work that closing waits for (a server-side cancel, a download ping)."""
        self._start_in(self._background, coro)

    def _linger(self, coro: Any) -> None:
        """Background clean-up that closing does not wait for (cancelled then): a race loser's create call left
        to answer so its prediction can be cancelled, which may take seconds; the provider's own server-side
        deadline (Replicate's ``Cancel-After``) covers what closing cuts short."""
        self._start_in(self._lingering, coro)

    def _start_in(self, tasks: set[asyncio.Future[Any]], coro: Any) -> None:
        """Run ``coro`` as a task held in ``tasks`` until it ends (a strong reference), its failure reported."""
        loop = asyncio.get_running_loop()
        if self._spawning_loop is None or self._spawning_loop() is not loop:
            # A loop closed by hand (``loop.close()`` after ``run_until_complete``) never runs the done callbacks
            # still queued on it, nor its tasks still pending: each such task held its loop in memory for good
            # (QA). Looked for when another loop starts spawning, not at every spawn.
            self._spawning_loop = weakref.ref(loop)
            for held in (self._background, self._lingering):
                for stale in [t for t in held if t.done() or t.get_loop().is_closed()]:
                    held.discard(stale)
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        task.add_done_callback(self._report_background_failure)

    def _report_background_failure(self, task: asyncio.Future[Any]) -> None:
        # Clean-up work (a server-side cancel, a download ping) is best effort, but its failure is said once,
        # not left for asyncio's "Task exception was never retrieved" at garbage collection.
        if not task.cancelled() and task.exception() is not None:
            _log.warning("background work failed: %s", self._recorder.redact(str(task.exception())))

    async def generate(
        self,
        request: GenerateRequest | Mapping[str, Any],
        *,
        source: str | None = None,
        on_event: Callable[[AttemptEvent], None] | None = None,
        received_at: float | None = None,
        request_id: str | None = None,
        deadline_s: float | None = None,
    ) -> GenerateResult:
        """Answer one request by the config's deadline (``defaults.timeout``), or by ``deadline_s`` seconds when
        given: this call's own, shorter or longer (an editor's screen that cannot wait 30 s, a batch job that
        can wait minutes), counted the same way and bounded as the config's is (0.1 to 600 s; else
        InvalidRequestError naming ``deadline_s``, nothing logged). Invalid input raises InvalidRequestError (the
        request is logged as rejected, nothing stored); every other failure is a result with
        ``success=False`` and the default image. ``received_at`` (this loop's clock) is when the request
        arrived, if earlier than now: the deadline counts from then (a server under a burst parses requests
        for a while before they get here, and the editor's clock started when they sent it).
        ``request_id``: the id to log the request under, one the caller already gave out (the HTTP API's
        ``X-Request-ID``, which must name the row even when the request is cancelled before it answers);
        32 lower-case hex digits (else InvalidRequestError naming ``requestId``, as any bad request; nothing is
        logged), used by no other request, in flight or in the log (else DuplicateRequestIdError, a ValueError,
        before anything is logged). Default: a new one; see
        :meth:`new_request_id`. ``on_event`` is called with each attempt's
        progress, from the event loop's thread; an exception it raises is logged, and the request goes on."""
        if request_id is not None and (not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id)):
            # QA: a bare ValueError, outside the tree the other bad requests raise from.
            shown = clip(repr(request_id), 80)
            raise InvalidRequestError("requestId", f"must be 32 lower-case hex digits, as ids.new_id() makes: {shown}")
        if deadline_s is not None:
            check_call_deadline(deadline_s)
        if source is not None:
            check_call_source(source)
        check_callback(on_event, name="on_event")
        if received_at is not None:
            check_received_at(received_at)
        self._check_open()
        if self._external_client is not None:  # misused, it is the caller's error: before any row or provider call
            self._check_external_client_loop()
        if request_id is not None:  # released by _admit when the request is not admitted after all
            await self._request_ids.claim(request_id)
        loop = asyncio.get_running_loop()
        started_mono = min(received_at, loop.time()) if received_at is not None else loop.time()
        started_wall = time.time()
        request_id, config, resolved = await self._admit(
            request,
            at=started_wall,
            source=source or self.source,
            request_id=request_id,
            started=started_mono,
            deadline_s=deadline_s,
        )
        deadline = started_mono + _deadline_total_s(config, deadline_s)
        result: GenerateResult | None = None
        broke: Exception | None = None
        with self._under_way(request_id):
            try:
                result = await self._run(request_id, resolved, config, deadline, started_mono, on_event)
                return result
            except Exception as exc:  # a defect of imagegen's own: logged as one, not as a caller's cancel
                broke = exc
                raise
            finally:
                elapsed_ms = round((loop.time() - started_mono) * 1000)
                self._recorder.finished(request_id, result, elapsed_ms=elapsed_ms, broke=broke)

    @contextlib.contextmanager
    def _under_way(self, request_id: str) -> Iterator[_UnderWay]:
        """Count the calling task's request (a generate, a comparison) as under way while in the block: closing
        waits for it to end (and log its end) before the log writer stops, cancelling it past a wait."""
        ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        call = _UnderWay(asyncio.current_task(), request_id, time.monotonic())
        self._inflight[ended] = call
        try:
            yield call
        finally:
            self._inflight.pop(ended, None)
            ended.set_result(None)

    def reject_unreadable(
        self, error: str, *, source: str | None = None, request: Mapping[str, Any] | None = None
    ) -> str:
        """Log a request refused before it could be admitted (a body that is not a JSON object, a request id
        already used) as ``rejected`` with ``error``, like any invalid request, under a new id; returns it.
        ``request``: the fields it had, if any."""
        self._check_open()
        request_id = new_id()
        source = source or self.source
        row = self._recorder.rejected(request_id, request or {}, at=time.time(), source=source, error=error)
        self._request_ids.hold(request_id, row)
        return request_id

    def new_request_id(self) -> str:
        """A new request id to give out before calling :meth:`generate` with it (the HTTP API answers it as
        ``X-Request-ID`` even when the request is cancelled first). Being new, ``generate`` does not look it up
        in the log; any other id it is given, it does."""
        return self._request_ids.new()

    async def _admit(
        self,
        request: GenerateRequest | Mapping[str, Any],
        *,
        at: float,
        source: str,
        request_id: str | None = None,
        started: float | None = None,
        deadline_s: float | None = None,
    ) -> tuple[str, RuntimeConfig, ResolvedRequest]:
        """Validate the request against the config in force and log it under ``request_id`` (default: a new
        one): as ``running``, or as ``rejected`` (then InvalidRequestError propagates; nothing is called or
        stored). ``started``: when the request's deadline started (this loop's clock), which with ``deadline_s``
        (the call's own deadline, if any) bounds the wait for the config read."""
        request_id = request_id or new_id()
        try:
            config = await self._fresh_config(started=started, deadline_s=deadline_s)
            req = GenerateRequest.parse(request)  # an instance too: model_copy(update=...) does not validate
            resolved = self._recorder.redact_request(resolve_request(req, config))
        except InvalidRequestError as exc:
            self._request_ids.hold(
                request_id, self._recorder.rejected(request_id, request, at=at, source=source, error=str(exc))
            )
            exc.request_id = request_id
            raise
        except asyncio.CancelledError:
            # Its caller left while the config was read (an HTTP client that closed with its request): it is
            # still a request, logged as cancelled under its id (the API's answer names it), not lost.
            try:
                row = self._recorder.cancelled_unadmitted(request_id, request, at=at, source=source)
            except LogDatabaseError:  # the log writer closed meanwhile: the cancel goes on, unlogged
                self._request_ids.release(request_id)
            else:
                self._request_ids.hold(request_id, row)
            raise
        except BaseException:
            self._request_ids.release(request_id)  # nothing logged: the id was not used
            raise
        # Taken until its row is written (then the log has it): a caller reusing it meanwhile is refused.
        self._request_ids.hold(request_id, self._recorder.started(request_id, resolved, at=at, source=source))
        return request_id, config, resolved

    async def current_config(self) -> RuntimeConfig:
        """The config in force after looking for a newer version in the log DB, as every ``generate`` does:
        within :data:`~.log.outage.READ_WAIT_S`, and the one in force while the log DB cannot be read."""
        self._check_open()
        return await self._fresh_config()

    async def log_call(self, call: Callable[[], T], *, wait_s: float | None = None) -> T:
        """Await ``call()``, blocking work on the log DB (a status page's queries, an admin change), run on
        threads kept for it rather than the loop's default executor, for ``wait_s`` at most (default
        :data:`LOG_CALL_WAIT_S`). Past that, or at once while an earlier call has not answered yet,
        LogDatabaseError (the API's 503). A server that hangs, or a network that drops packets, refuses nothing:
        each such call held a thread for many minutes, and enough of them took the ones image normalisation
        needs. A change that outlived its wait may still be applied when the server answers."""
        if wait_s is not None:
            check_log_call_wait(wait_s)
        self._check_open()
        return await self._log_calls.run(call, wait_s=wait_s)

    @property
    def log_write_failure(self) -> WriteFailure | None:
        """Why the log database refuses writes, while it does (its disk full, a server away): reads may still
        work, so ``/health`` asks this too (see :attr:`.log.writer.LogWriter.failing`)."""
        return self._writer.failing

    def log_writes_refused(self) -> LogDatabaseError | None:
        """Why the log database refuses writes at this moment (a SQLite file made read-only), checked with one
        write rolled back, or None. A refusal is noted as the writer's (``/health`` says 503 from now on, as it
        does once a row met it): a server checks this at its start."""
        try:
            self.log.check_writable()  # SQLite only (a server database: nothing to check), bounded by its busy timeout
        except LogDatabaseBusy as exc:
            self._writer.note_refused(exc)
            return exc
        return None

    def log_call_sync(self, call: Callable[[], T], *, wait_s: float | None = None) -> T:
        """:meth:`log_call` for a blocking caller (a console page's button, a command): ``call()`` on the same
        threads, waited for ``wait_s`` at most; run in place when already on one of them. A change that outlived
        its wait may still be applied when the server answers."""
        if wait_s is not None:
            check_log_call_wait(wait_s)
        self._check_open()
        return self._log_calls.run_sync(call, wait_s=wait_s)

    def secret_values(self) -> list[str]:
        """Every secret this ImageGen knows, to be redacted wherever text is shown: the settings' (see
        :meth:`.settings.Settings.secret_values`) and the keys of provider instances given in code (QA: those were
        redacted in the log's rows but shown by the admin API's answers and the console's tables)."""
        return list(self._secrets)

    async def _fresh_config(self, *, started: float | None = None, deadline_s: float | None = None) -> RuntimeConfig:
        """The config in force, after looking for a newer version in the log DB (saved by another process:
        each request honours it). On SQLite the look is skipped while the change stamp has not moved (a
        memory read), and otherwise runs here: a read in WAL mode never waits for a writer, and a thread hop
        per request cost more than the read. A server database is read off the loop, every time, waiting
        :meth:`_config_read_wait_s` at most for a request whose deadline started at ``started`` (and lasts
        ``deadline_s``, when the call sets its own)."""
        token = self.log.change_token()
        if token is not None and token == self._config_token:
            self._config_checked_at = time.time()  # the stamp says no version was stored since the last read
            return self._config
        if self._config_reads.paused:
            return self._config  # the log DB failed a moment ago: no request waits for it again so soon
        try:
            # Not the public reload_config: a request admitted just before closing began still reads it.
            if self.log.reads_never_wait:
                config = self._reload_config_locked()
            else:  # bounded: a server that hangs must not hold the request past its deadline
                wait_s = None if started is None else self._config_read_wait_s(started, deadline_s)
                config = await self._config_reads.read(self._reload_config_locked, wait_s=wait_s)
        except LogDatabaseError as exc:
            # The log DB is down (a PostgreSQL restart): requests go on with the config in force, and their
            # rows wait in the writer's queue, rather than every answer failing with the log.
            self._config_reads.failed(exc)
            return self._config
        self._config_reads.worked()
        self._config_token = token  # read before the version: a change committed since moves it again
        return config

    def _config_read_wait_s(self, started: float, deadline_s: float | None = None) -> float:
        """How long a request that started at ``started`` waits for the config read: a share of the time its
        deadline leaves (its own ``deadline_s``, else by the config in force, the only one known before the
        read). QA: during a log DB outage the read waited its full second whatever the deadline, and answers
        came after it."""
        remaining_s = started + _deadline_total_s(self._config, deadline_s) - asyncio.get_running_loop().time()
        return min(READ_WAIT_S, max(MIN_CONFIG_READ_WAIT_S, remaining_s * CONFIG_READ_SHARE))

    async def _run(
        self,
        request_id: str,
        resolved: ResolvedRequest,
        config: RuntimeConfig,
        deadline: float,
        started: float,
        on_event: Callable[[AttemptEvent], None] | None,
    ) -> GenerateResult:
        loop = asyncio.get_running_loop()
        client = self._client()

        steps = self._race_steps(resolved, config, client)

        def listener(event: AttemptEvent) -> None:
            self._recorder.attempt(request_id, event)
            if on_event is not None:
                notify(on_event, self._recorder.redact_event(event), name="on_event")

        race: Race[_Finished] = Race(
            client=client,
            breakers=self._gate,
            fetch=steps.fetch,
            finish=steps.finish,
            listener=listener,
            spawn=self._spawn,
            linger=self._linger,
            hedger=self.hedger,
        )
        plan = self._provider_set.plan(
            config,
            deadline_s=max(0.0, deadline - loop.time()),
            fastest_first=self._fastest_first,
            preferred=resolved.provider,
        )
        outcome = await race.run(
            plan, resolved.job(request_id, plan.deadline_s, max_image_bytes=config.limits.max_download_bytes)
        )
        notes = []
        if not plan.entrants and (refused := self._provider_set.offline_refusal(config)):
            notes.append(f"no provider raced in production: {refused}")
        asked = resolved.provider
        if asked is not None and all(entrant.name != asked for entrant in plan.entrants):
            # Said in the answer: otherwise another provider's image passes for the one asked for.
            why = self._provider_set.why_not_racing(asked, config)
            notes.append(f"provider {asked!r} was asked for but did not race: {why}; the others raced")
        return await self._answer(request_id, resolved, config, outcome, deadline, started, client, notes)

    def _fastest_first(self, entrants: Sequence[Entrant]) -> list[Entrant]:
        """``race.order = "fastest"``: the providers by this process's recent answer times."""
        return self.hedger.answers.fastest_first(entrants, _entrant_name)

    def _race_steps(self, resolved: ResolvedRequest, config: RuntimeConfig, client: httpx.AsyncClient) -> RaceSteps:
        """The race's ``fetch`` step, the provider's part (within its timeout): its image's bytes, downloaded under
        its download policy when it answered a URL; and its ``finish`` step, ours (within the request's deadline
        only): verify, and normalise to WebP at the requested size — or only verify a hotlink."""

        async def fetch(entrant: Entrant, output: ProviderOutput) -> bytes:
            if output.data is not None:
                return check_inline_size(output.data, provider=entrant.name, max_bytes=config.limits.max_download_bytes)
            assert output.url is not None
            fetched = await fetch_image(
                client,
                output.url,
                policy=entrant.provider.download_policy,
                provider=entrant.name,
                max_bytes=config.limits.max_download_bytes,
            )
            return fetched.data

        async def finish(entrant: Entrant, output: ProviderOutput, data: bytes | None) -> _Finished:
            assert data is not None  # fetch always gives the bytes
            if output.hotlink:
                info = await in_image_worker(functools.partial(inspect_image, data))
                return _Finished(None, info.width, info.height)
            image = await in_image_worker(functools.partial(normalize_to_webp, data, resolved.width, resolved.height))
            return _Finished(image.data, image.width, image.height)

        return RaceSteps(fetch, finish)

    async def _answer(
        self,
        request_id: str,
        resolved: ResolvedRequest,
        config: RuntimeConfig,
        outcome: RaceResult[_Finished],
        deadline: float,
        started: float,
        client: httpx.AsyncClient,
        notes: list[str],
    ) -> GenerateResult:
        loop = asyncio.get_running_loop()
        cost = round(sum(a.cost_usd for a in outcome.attempts), 6)
        attempts = [self._recorder.redact_event(a).summary() for a in outcome.attempts]
        won = outcome.winner
        error = outcome.error
        store_failed = image_kept = image_keeping = False
        if won is not None:
            output = won.output
            try:
                placed = await self.delivery.place(
                    request_id=request_id,
                    provider=won.entrant.name,
                    output=output,
                    webp=won.payload.data,
                    resolved=resolved,
                    config=config,
                    deadline=deadline,
                )
            except StorageError as exc:
                error, store_failed = str(exc), True
                image_kept = isinstance(exc, UploadFailedError) and exc.kept
                image_keeping = isinstance(exc, UploadFailedError) and exc.keeping
            else:
                provider = won.entrant.provider
                if confirms_use(provider):
                    self._spawn(provider.confirm_use(output, ProviderContext(client=client, spawn=self._spawn)))
                return GenerateResult(
                    url=placed.url,
                    provider=won.entrant.name,
                    elapsed_ms=round((loop.time() - started) * 1000),
                    success=True,
                    request_id=request_id,
                    width=won.payload.width,
                    height=won.payload.height,
                    key=placed.key,
                    content_type=output.content_type if placed.key is None and output.content_type else "image/webp",
                    model=output.model,
                    cost_usd=cost,
                    attribution=output.attribution,
                    attempts=attempts,
                    notes=notes,
                )
        default = await self.delivery.default_image(resolved.width, resolved.height, config, deadline)
        if default.inline:
            error = f"{error}; {DEFAULT_INLINE_ERROR}" if error else DEFAULT_INLINE_ERROR
        if default.note:
            notes = [*notes, default.note]
        return GenerateResult(
            url=default.url,
            provider=DEFAULT_PROVIDER,
            elapsed_ms=round((loop.time() - started) * 1000),
            success=False,
            error=self._recorder.redact(error),
            default_inline=default.inline,
            request_id=request_id,
            width=resolved.width,
            height=resolved.height,
            cost_usd=cost,
            attempts=attempts,
            notes=notes,
            store_failed=store_failed,
            image_kept=image_kept,
            image_keeping=image_keeping,
        )

    def generate_sync(
        self,
        request: GenerateRequest | Mapping[str, Any],
        *,
        source: str | None = None,
        on_event: Callable[[AttemptEvent], None] | None = None,
        deadline_s: float | None = None,
        request_id: str | None = None,
    ) -> GenerateResult:
        """Blocking :meth:`generate` (its arguments, ``request_id`` included: QA found it missing here); works
        in scripts and inside a running loop (Jupyter)."""
        if deadline_s is not None:
            check_call_deadline(deadline_s)  # here too: a bad value must not start the portal's thread
        if source is not None:
            check_call_source(source)
        check_callback(on_event, name="on_event")
        self._check_open()  # before the portal: a closed ImageGen must not start its thread again
        return self._portal.run(
            self.generate(request, source=source, on_event=on_event, deadline_s=deadline_s, request_id=request_id)
        )

    # -- compare and pick (the console's side-by-side view) -------------------------------------------

    async def compare(
        self,
        request: GenerateRequest | Mapping[str, Any],
        *,
        on_update: Callable[[Candidate], None] | None = None,
        on_start: Callable[[Comparison], None] | None = None,
        source: str = "compare",
    ) -> Comparison:
        """Every racing provider answers ``request`` on its own; see :func:`imagegen_core.compare.compare`
        (``on_start`` gets the comparison before any provider is asked: a done candidate can be picked while
        the others run)."""
        check_call_source(source)
        check_callback(on_update, name="on_update")
        check_callback(on_start, name="on_start")
        self._check_open()
        return await compare(self, request, on_update=on_update, on_start=on_start, source=source)

    async def pick(self, comparison: Comparison, provider: str) -> GenerateResult:
        """Store ``provider``'s image from ``comparison`` and record the editor's pick."""
        self._check_open()
        return await pick(self, comparison, provider)

    def compare_sync(
        self,
        request: GenerateRequest | Mapping[str, Any],
        *,
        on_update: Callable[[Candidate], None] | None = None,
        on_start: Callable[[Comparison], None] | None = None,
        source: str = "compare",
    ) -> Comparison:
        """Blocking :meth:`compare` (``on_update`` and ``on_start`` are then called from the portal's thread)."""
        check_call_source(source)
        check_callback(on_update, name="on_update")
        check_callback(on_start, name="on_start")
        self._check_open()
        return self._portal.run(self.compare(request, on_update=on_update, on_start=on_start, source=source))

    def pick_sync(self, comparison: Comparison, provider: str) -> GenerateResult:
        """Blocking :meth:`pick`."""
        self._check_open()
        return self._portal.run(self.pick(comparison, provider))

    # -- lifecycle ----------------------------------------------------------------------------------

    async def flush(self) -> None:
        """Wait for this loop's background work (server-side cancels, download pings) and queued log writes."""
        self._check_open()
        await self._flush()

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        mine = [task for task in list(self._background) if task.get_loop() is loop]  # others: on their loop
        if mine:
            await asyncio.wait(mine, timeout=10)
        await self._writer.flush()

    async def aclose(self) -> None:
        """Finish requests under way and background work, apply queued log writes, release connections and
        the log DB; idempotent. New requests are refused from the start. A request still under way after
        10 s is cancelled (its row ends ``cancelled``), and so are those of other threads' loops."""
        if self._closing:
            return
        self._closing = True
        # Before the flush below: during a log DB outage it waited out the writer's retries (120 s then) (a
        # supervisor's stop timeout kills the process first, and its rows were lost), not the 5 s of closing.
        self._writer.begin_closing()
        await self._close_loop_side()
        self._shutdown()

    def close(self) -> None:
        """Blocking close for synchronous code (after ``generate_sync``); async code uses :meth:`aclose`.
        Requests under way elsewhere are waited for as :meth:`aclose` does. Called on a running loop (a notebook
        cell), that loop's client closes as soon as the cell ends, and its requests under way, which close
        cannot wait for, are cancelled and logged ``cancelled``."""
        if self._closing:
            return
        if self._portal.is_current_thread():
            # Before anything is changed: closing waits for the portal's loop, which this thread runs. QA: it
            # cancelled the call under way (a bare CancelledError from generate_sync), then failed with the
            # nested-call message and left the ImageGen half-closed, its threads running for good (a later
            # close() returned at once).
            raise ImageGenError(
                "close() cannot run inside a callback (on_event, on_update) of a blocking *_sync call: it would "
                "wait for that call, which waits for the callback; close the ImageGen once the call has returned"
            )
        self._closing = True
        self._writer.begin_closing()  # as in aclose: the flushes of closing wait 5 s, not the retry window, for the log
        for task in self._calls_on_this_loop():
            task.cancel()  # blocking on their loop, close cannot wait for them: their rows are closed for them
        closing = self._clients.close_current_soon()
        if closing is not None:
            self._background.add(closing)  # a strong reference until it has run
            closing.add_done_callback(self._background.discard)
        self._shutdown()

    def _shutdown(self) -> None:
        # Idempotent. The sync portal first (its requests, its background work, then its client), then the
        # clients of other threads' loops, the breaker pool, the log writer (which applies what is queued
        # before stopping) and the DB connections.
        if self._closed:
            return
        self._closed = self._closing = True
        # Calls under way on other threads' loops (``asyncio.run(gen.generate(...))`` in a worker thread) end,
        # or are cancelled, there, meanwhile: the writer must not close under them (their rows stayed running).
        others = self._let_other_loops_requests_end()
        if self._portal.started:
            self._portal.run(self._close_loop_side())
            self._portal.close()
        concurrent.futures.wait(others, timeout=_REQUESTS_END_S + _CANCELLED_END_S + 1)
        concurrent.futures.wait(self._clients.close_others(), timeout=_CLOSE_OTHERS_S)
        self._close_rows_left_running()
        self._gate.close()
        self._config_reads.close()
        self._log_calls.close()
        self._writer.close()
        self.log.close()
        self.delivery.close()

    async def _let_requests_end(self) -> None:
        """``generate`` and ``compare`` calls of this loop still under way end first: a cancelled one (a server
        shutting down cancels them just before closing) only now starts its providers' server-side cancels, which
        the flush after this waits for. Otherwise a paid job kept running, its cancel never sent. Waits for the
        calls, not for the tasks that made them (a worker task may live on after its request)."""
        me = asyncio.current_task()
        under_way = {
            ended: call for ended, call in self._under_way_on(asyncio.get_running_loop()) if call.task is not me
        }
        if not under_way:
            return
        _, late = await asyncio.wait(under_way, timeout=_REQUESTS_END_S)
        if late:
            # Past the wait, as a server's shutdown would: cancelled, each logs its end as ``cancelled`` (and sends
            # its providers' cancels) while the writer still takes rows; otherwise it went on after closing and
            # failed with the closed writer, its row left ``running``.
            _log.warning("closing: cancelling %d request(s) still under way after %g s", len(late), _REQUESTS_END_S)
            for ended in late:
                task = under_way[ended].task
                if task is not None:
                    task.cancel()
            await asyncio.wait(late, timeout=_CANCELLED_END_S)

    def _calls_on_this_loop(self) -> list[asyncio.Task[Any]]:
        """The tasks of the calls under way on the running loop (none when no loop runs here)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return []
        return [call.task for _, call in self._under_way_on(loop) if call.task is not None]

    def _under_way_on(self, loop: asyncio.AbstractEventLoop) -> list[tuple[asyncio.Future[None], _UnderWay]]:
        """The calls still under way on ``loop``, each with the future done when it ends."""
        return [
            (ended, call)
            for ended, call in list(self._inflight.items())
            if not ended.done() and ended.get_loop() is loop
        ]

    def _let_other_loops_requests_end(self) -> list[concurrent.futures.Future[None]]:
        """Run :meth:`_let_requests_end` on every other loop with calls under way that still runs (not this
        thread's, not the portal's, whose closing does it); returns the pending waits."""
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        loops = {ended.get_loop() for ended in list(self._inflight) if not ended.done()}
        loops.discard(current)
        waits = []
        for loop in loops:
            if loop.is_running() and not loop.is_closed() and not self._portal.runs(loop):
                with contextlib.suppress(RuntimeError):  # that loop closed meanwhile
                    waits.append(asyncio.run_coroutine_threadsafe(self._let_requests_end(), loop))
        return waits

    def _close_rows_left_running(self) -> None:
        """Just before the log writer closes: the rows of calls still under way (on this thread's loop, which
        closing blocks; or one that ignored its cancellation) are written as cancelled now, since the calls can
        no longer write them (their rows stayed ``running`` for ever)."""
        for ended, call in list(self._inflight.items()):
            if not ended.done():
                self._recorder.cancelled_by_closing(
                    call.request_id, elapsed_ms=round((time.monotonic() - call.started) * 1000)
                )

    async def _close_loop_side(self) -> None:
        """What closing does on each loop that served requests (the caller's, the sync portal's): let its
        requests end, flush, and close its HTTP client."""
        await self._let_requests_end()
        loop = asyncio.get_running_loop()
        for task in [task for task in self._lingering if task.get_loop() is loop]:
            task.cancel()
        await self._flush()  # closing: the public flush refuses by now
        await self.spool_retrier.aclose()  # what is still kept waits for the next process or a manual flush
        await self._clients.aclose_current()

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        # As an unclosed file or socket does: say so (a ResourceWarning, shown with -X dev or -W default), and
        # let its threads end, which would otherwise live, with their connections, as long as the process (QA:
        # 30 dropped instances left 93 threads and ~300 files). Nothing here waits: any thread may collect it.
        if not getattr(self, "_built", False) or self._closing:
            return
        _warn(
            f"unclosed ImageGen {self!r}: close it with close() or await aclose(), or use `with` / `async with`",
            ResourceWarning,
            source=self,
        )
        self._closing = self._closed = True
        self._clients.close_others()  # other threads' loops close their HTTP clients there (not waited for)
        self._portal.close_soon()  # after that: it waits for the portal's own client closing
        self._gate.close()
        self._config_reads.close()
        self._log_calls.close()
        # Applies what is queued first, then closes the log: PostgreSQL's connection pool has threads of its own,
        # which hold it (they lived on, with its connections); nothing else of this ImageGen uses the log by now.
        self._writer.close_soon(then=self.log.close)

    def _check_open(self) -> None:
        if self._closing:
            raise ImageGenError("this ImageGen is closed: make a new one with ImageGen.from_settings()")

    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __enter__(self) -> Self:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: The most config versions :meth:`ImageGen.config_history` asks the log for: ids are 64-bit, so never fewer than
#: there are.
_MAX_LISTED = 2**62


def _check_source(source: object) -> None:
    """ConfigError naming ``source`` for an ImageGen's default ``source`` that cannot name requests in the log, or a
    config version's (QA: ``set_config(source=...)`` took anything: a lone surrogate raised UnicodeEncodeError, a
    list blamed the log database, and ESC sequences and line breaks reached ``imagegen config history``'s output)."""
    problem = source_problem(source)
    if problem is not None:
        raise ConfigError(f"source: {problem}", field="source")


def _check_types(*, settings: object, log: object, http_client: object, breaker_clock: object) -> None:
    """TypeError naming the constructor argument that is not what it takes, before anything starts (QA: ``log=`` a
    path raised AttributeError "'str' object has no attribute 'label'", and ``breaker_clock=5`` was taken and then
    failed every request, logged as an internal error)."""
    wrong = [
        f"{name}= takes {wanted}, not {type(value).__name__}"
        for name, value, ok, wanted in (
            ("settings", settings, isinstance(settings, Settings), "a Settings"),
            ("log", log, isinstance(log, LogDB), "a LogDB (LogDB(path) or LogDB.from_url(url))"),
            (
                "http_client",
                http_client,
                http_client is None or isinstance(http_client, httpx.AsyncClient),
                "an httpx.AsyncClient or None",
            ),
            ("breaker_clock", breaker_clock, callable(breaker_clock), "a function returning the time (time.time)"),
        )
        if not ok
    ]
    if wrong:
        raise TypeError(f"ImageGen(): {'; '.join(wrong)} (or build one with ImageGen.from_settings())")


#: What storing an answer uses of a :class:`~.storage.base.Store`: a store of one's own may leave out the rest
#: (``name``, ``get``, ``stats``, ``check``: tools, ``/admin/storage`` and health checks).
_STORE_NEEDS = ("put", "exists", "url_for")


def _check_store(store: object) -> None:
    """ConfigError naming ``store`` for one that cannot store an answer (QA: ``store=object()`` was taken, and every
    generate then lost its provider's image to an AttributeError)."""
    if not all(callable(getattr(store, member, None)) for member in _STORE_NEEDS):
        raise ConfigError(
            f"store ({type(store).__name__}) is not a Store (it needs {', '.join(_STORE_NEEDS)}, and for tools and "
            "health checks name, get, stats and check; see imagegen_core.Store)",
            field="store",
        )


def _deadline_total_s(config: RuntimeConfig, deadline_s: float | None) -> float:
    """A request's whole time: the call's own ``deadline_s`` when it set one, else the config's ``defaults.timeout``."""
    return deadline_s if deadline_s is not None else config.defaults.timeout / 1000


def _entrant_name(entrant: Entrant) -> str:
    return entrant.name
