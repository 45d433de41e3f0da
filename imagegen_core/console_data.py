"""Everything the Streamlit console decides, outside Streamlit: size presets, request building, running a
generate or a comparison in a worker thread with live progress, and the admin page's reads and writes.

The console (``console/``) only lays out widgets over these functions, so they are testable without a
browser and usable from a notebook. Nothing here imports Streamlit (a test keeps it that way).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import quote, urlsplit

from .compare import Candidate, CandidateStatus, Comparison
from .config import missing_keys, parse_config
from .errors import ConfigError, UploadFailedError, redact
from .json_text import JsonTextError, parse_json_text
from .models import AttemptOutcome, Attribution, GenerateRequest, GenerateResult
from .race import AttemptEvent

if TYPE_CHECKING:
    from .config import RuntimeConfig
    from .service import ImageGen

T = TypeVar("T")
_log = logging.getLogger(__name__)

#: Characters Markdown (and Streamlit's :colour[…] and $formula$ extensions) gives a meaning to.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~:$<>&=\"'])")
#: Where a renderer would start a link of its own: a scheme before "\:" or "www" before "\." (escaped).
_AUTOLINK = re.compile(r"(?i)\b(https?|ftp|www)(\\[:.])")
#: Unicode's bidirectional embeddings, overrides and isolates (LRE..RLO, LRI..PDI): they reorder what follows.
_BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")


def markdown_literal(text: str, *, limit: int | None = None) -> str:
    """``text`` as literal characters inside Streamlit Markdown (``st.markdown``, ``st.caption``, alerts).

    Prompts, keywords, article ids and provider errors come from outside (any API client can write them),
    so none of their links, colours, headings or formulas may render in the editors' console, nor may their
    bidirectional controls turn the text after them around (a right-to-left override made "gpj.exe" read
    "exe.jpg"). Line breaks become spaces; ``limit`` cuts long text with an ellipsis."""
    flat = " ".join(_BIDI_CONTROLS.sub("", text).split())
    if limit is not None and len(flat) > limit:
        flat = flat[: limit - 1].rstrip() + "…"
    escaped = _MARKDOWN_SPECIAL.sub(r"\\\1", flat)
    # The renderer turns bare "http://…" and "www.…" into links even when escaped: a zero-width space after
    # the scheme keeps the text as it reads, and unclickable.
    return _AUTOLINK.sub("\\1\u200b\\2", escaped)


def credit_markdown(credit: Attribution) -> str:
    """``Photo by [name](url) on [source](url)``: the credit a stock photo must carry, as Markdown links.

    The names are literal text (a photographer's name comes from the stock site's answer: ``](…)`` in it
    must not make a link of its own); a link that is not http(s) is left out, and one whose address holds
    a bracket, a space or a quote is percent-encoded, so it cannot end the link early."""

    def link(text: str, url: str | None) -> str:
        label = markdown_literal(text)
        if not url or urlsplit(url).scheme not in ("http", "https"):
            return label
        return f"[{label}]({quote(url, safe=_LINK_SAFE)})"

    return (
        f"Photo by {link(credit.photographer_name, credit.photographer_url)} "
        f"on {link(credit.source_name, credit.source_url)}"
    )


#: What a link's address keeps as it is (RFC 3986's reserved and unreserved characters but brackets,
#: parentheses and quotes: they, like spaces and angle brackets, could end a Markdown link).
_LINK_SAFE = ":/?#@!$&*+,;=%~-._"


#: Output sizes editors ask for most; ``None`` means "enter width and height".
SIZE_PRESETS: dict[str, tuple[int, int] | None] = {
    "Social card 1200×630": (1200, 630),
    "Hero 1600×900": (1600, 900),
    "Square 1:1 (1080×1080)": (1080, 1080),
    "Portrait 4:5 (1080×1350)": (1080, 1350),
    "Custom": None,
}
#: The style choice that sends the prompt unchanged.
NO_STYLE = "(no style)"


def style_choices(config: RuntimeConfig) -> dict[str, str]:
    """Style presets from the runtime config (name → prompt template), after the "no style" choice; a
    preset that leaves the prompt as it is (the built-in ``none``) would only repeat that choice."""
    return {NO_STYLE: "{prompt}", **{k: v for k, v in sorted(config.styles.items()) if v != "{prompt}"}}


def make_request(
    *,
    prompt: str,
    keyword: str | None = None,
    article_id: str | None = None,
    size: tuple[int, int] | None = None,
    style: str | None = None,
) -> GenerateRequest:
    """A request from form fields: blank fields are left out, ``NO_STYLE`` is no style. Validation
    against the config happens in ``generate`` / ``compare``, so a refusal is logged like any other."""

    def blank_to_none(value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    width, height = size if size is not None else (None, None)
    return GenerateRequest.parse(
        {
            "prompt": prompt,
            "keyword": blank_to_none(keyword),
            "article_id": blank_to_none(article_id),
            "width": width,
            "height": height,
            "style": None if style in (None, NO_STYLE) else style,
        }
    )


# -- work in a thread, progress on the caller's thread ----------------------------------------------------


class Job(Generic[T]):
    """Runs ``work(emit)`` in a worker thread; a caller's thread reads what it emits with :meth:`events`.

    Streamlit may only be called from its script thread, so the worker never touches the UI: its
    callbacks only record plain data, and a script thread draws it. A job outlives the script run that
    started it (a console page keeps it in the session): when the editor leaves the page and comes back,
    the new run reads the same job's events from the start and then its result, instead of asking the
    providers again.
    """

    def __init__(self, work: Callable[[Callable[[Any], None]], T]) -> None:
        self._work = work
        self._events: list[Any] = []
        self._changed = threading.Condition()
        self._finished = False
        self._result: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="imagegen-console-job", daemon=True)
        #: ``time.monotonic()`` when :meth:`start` was called (None before), for a running clock on any page run.
        self.started_at: float | None = None

    def _emit(self, event: Any) -> None:
        with self._changed:
            self._events.append(event)
            self._changed.notify_all()

    def _run(self) -> None:
        try:
            self._result = self._work(self._emit)
        except BaseException as exc:  # handed to the caller's thread by result()
            self._error = exc
        finally:
            with self._changed:
                self._finished = True
                self._changed.notify_all()

    def start(self) -> Job[T]:
        """Start the worker; returns self."""
        self.started_at = time.monotonic()
        self._thread.start()
        return self

    @property
    def done(self) -> bool:
        """Whether the work has finished: :meth:`result` then answers at once."""
        return self._finished

    def events(self, *, poll_s: float = 0.1, ticks: bool = False) -> Iterator[Any]:
        """Everything emitted, in order, until the work has finished; every call starts from the first
        event, so a reader that comes late (a page drawn again) sees the whole progress. With ``ticks``,
        also ``None`` after each ``poll_s`` without news (to redraw running timers)."""
        seen = 0
        while True:
            with self._changed:
                if seen == len(self._events) and not self._finished:
                    self._changed.wait(poll_s)
                fresh = self._events[seen:]
                finished = self._finished
            seen += len(fresh)
            yield from fresh
            if not fresh:
                if finished:
                    return
                if ticks:
                    yield None

    def result(self) -> T:
        """Wait for the work and return its value, or raise its exception here (every call alike)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]


#: How many jobs the console's shelf keeps for reloaded pages.
JOB_SHELF_CAPACITY = 32


@dataclass
class ShelvedJob:
    """A job on the :class:`JobShelf`: which page started it (``kind``), the form as it was sent (widget
    key → value) and the page's own notes about it (``meta``, shared by every session that shows it)."""

    token: str
    kind: str
    job: Job[Any]
    form: dict[str, Any]
    meta: dict[str, Any]


class JobShelf:
    """The console's latest jobs, by an unguessable token, shared by every session of the server process.

    A browser reload (or the page's link opened in another tab) starts a new Streamlit session, which would
    not know the job its page was showing: the race went on and was logged, but the page came back empty
    and a comparison's unstored images were lost. A page puts its token in the URL; a new session finds the
    job here by it. Only the last ``capacity`` jobs are kept (a comparison holds its images in memory); an
    older token is simply not found.
    """

    def __init__(self, *, capacity: int = JOB_SHELF_CAPACITY) -> None:
        self._capacity = capacity
        self._jobs: OrderedDict[str, ShelvedJob] = OrderedDict()
        self._lock = threading.Lock()  # sessions run their pages in threads of their own

    def put(self, kind: str, job: Job[Any], *, form: Mapping[str, Any], **meta: Any) -> ShelvedJob:
        """Keep ``job`` (the oldest one goes when the shelf is full); returns its entry and token."""
        entry = ShelvedJob(secrets.token_urlsafe(12), kind, job, dict(form), dict(meta))
        with self._lock:
            self._jobs[entry.token] = entry
            while len(self._jobs) > self._capacity:
                self._jobs.popitem(last=False)
        return entry

    def find(self, kind: str, token: str) -> ShelvedJob | None:
        """The job of page ``kind`` with this token, or None (unknown, dropped, or another page's)."""
        entry = self._entry(token)
        return entry if entry is not None and entry.kind == kind else None

    def kind_of(self, token: str) -> str | None:
        """Which page's job this token names, if the shelf has it."""
        entry = self._entry(token)
        return entry.kind if entry is not None else None

    def _entry(self, token: str) -> ShelvedJob | None:
        with self._lock:
            return self._jobs.get(token)


#: How long a page waits for its request's rows to be written before it shows the answer anyway (seconds).
LOG_FLUSH_WAIT_S = 2.0


def _flush_log(gen: ImageGen) -> None:
    # The log writer is asynchronous; the console's next page (History, stats) should see this request. Bounded:
    # while another process holds the SQLite log's write lock the writer retries for up to two minutes before
    # keeping the rows in the spill, and the page waited that long with its answer in hand (QA: 60-100 s).
    if not gen._writer.flush_sync(timeout_s=LOG_FLUSH_WAIT_S):
        _log.warning(
            "the log database has not taken this request's rows within %g s (locked by another process?); they"
            " are written as soon as it does, and History shows the request then",
            LOG_FLUSH_WAIT_S,
        )


def generate(gen: ImageGen, request: GenerateRequest, *, emit: Callable[[Any], None]) -> GenerateResult:
    """Race ``request`` (source ``console``), emitting each :class:`AttemptEvent`; the log is up to date
    when it returns. Raises InvalidRequestError for bad input."""
    try:
        return gen.generate_sync(request, source="console", on_event=emit)
    finally:
        _flush_log(gen)


@dataclass(frozen=True, slots=True)
class CandidateView:
    """A snapshot of one provider's candidate for display (the candidate itself keeps changing)."""

    provider: str
    status: CandidateStatus
    elapsed_ms: int
    cost_usd: float
    error: str | None
    #: Its image once it has one (the normalised WebP, or for a hotlink its ``url``), with its size and credit:
    #: a card shows it while other providers still run.
    image: bytes | None = field(default=None, repr=False)
    url: str | None = None
    width: int = 0
    height: int = 0
    attribution: Attribution | None = None

    @classmethod
    def of(cls, candidate: Candidate) -> CandidateView:
        """The candidate as it is now (its image bytes are shared, not copied: they never change)."""
        c = candidate
        return cls(
            c.provider, c.status, c.elapsed_ms, c.cost_usd, c.error, c.image, c.url, c.width, c.height, c.attribution
        )

    @property
    def picture(self) -> bytes | str | None:
        """What a page can draw: the WebP, or the hotlink's URL; None until the provider has answered."""
        return self.image if self.image is not None else self.url


def compare(
    gen: ImageGen,
    request: GenerateRequest,
    *,
    emit: Callable[[Any], None],
    on_start: Callable[[Comparison], None] | None = None,
) -> Comparison:
    """Ask every racing provider at once, emitting a :class:`CandidateView` at each status change; ``on_start``
    gets the :class:`Comparison` first, so that a done candidate can be picked while the others run."""

    def views(candidate: Candidate) -> None:
        emit(CandidateView.of(candidate))

    try:
        return gen.compare_sync(request, on_update=views, on_start=on_start)
    finally:
        _flush_log(gen)


#: What a Compare card says when its pick's upload failed (the full text, with paths and the store's answer,
#: went to the server log: in a third of the page it took some forty lines).
PICK_NOT_STORED = "Not stored: the upload failed (the server log says why). Try again: it is stored once."


def pick(gen: ImageGen, comparison: Comparison, provider: str) -> GenerateResult:
    """Store ``provider``'s image as the article's and record the pick; the log is up to date on return.
    The second of two simultaneous picks of one comparison (two tabs showing it) is refused by the core. A
    failed upload is logged in full here (the page shows :data:`PICK_NOT_STORED`); a second try stores the
    image under the key the spool keeps it under, so it is never stored twice."""
    try:
        return gen.pick_sync(comparison, provider)
    except UploadFailedError as exc:
        _log.error("request %s: the pick of %s was not stored: %s", comparison.request_id, provider, exc)
        raise
    finally:
        _flush_log(gen)


def racing_providers(gen: ImageGen) -> list[str]:
    """The providers a generate or a comparison would ask now, in start order (one card each): by the newest
    stored config, or while the log database cannot be read, by the one in force (which requests then use)."""
    return [entrant.name for entrant in gen.entrants(gen.latest_config())]


def describe_attempt(event: AttemptEvent) -> str:
    """One progress line for an attempt event, e.g. ``fal: failed (timeout) after 15000 ms``."""
    hedge = " (hedge)" if event.hedged else ""
    retry = f", attempt {event.attempt}" if event.attempt > 1 else ""
    if event.outcome is AttemptOutcome.RUNNING:
        return f"{event.provider}: running{hedge}{retry}"
    if event.outcome is AttemptOutcome.SUCCESS:
        return f"{event.provider}: image in {event.duration_ms} ms{retry}"
    if event.outcome is AttemptOutcome.FAILED:
        return f"{event.provider}: failed ({event.failure_class or 'error'}) after {event.duration_ms} ms{retry}"
    if event.outcome is AttemptOutcome.SKIPPED:
        return f"{event.provider}: skipped (circuit breaker open)"
    return f"{event.provider}: cancelled after {event.duration_ms} ms (another provider won)"


def download_name(result: GenerateResult, article_id: str | None = None) -> str:
    """A file name for the download button: the article id when there is one, and the request id. Only
    letters, digits, ``-`` and ``_``; runs of anything else are one ``-``, none at either end."""
    stem = re.sub(r"[^\w-]+", "-", (article_id or "").strip()).strip("-_")[:60].strip("-_")
    stem = stem or "image"
    ext = "webp" if result.content_type == "image/webp" else result.content_type.rsplit("/", 1)[-1]
    return f"{stem}-{result.request_id[:8]}.{ext}"


# -- admin ------------------------------------------------------------------------------------------------


def breaker_rows(gen: ImageGen) -> list[dict[str, Any]]:
    """Every provider (configured or with a stored breaker): state, since when, until when (``openedUntil`` and
    ``breakOver`` as admission treats the break now: see :func:`~imagegen_core.breaker.open_break`), why
    (redacted: an admin may have typed anything into a reason)."""
    status = {row["name"]: row for row in gen.provider_status()}
    secrets = gen.secret_values()
    rows = []
    for name in sorted(set(status) | set(gen.breakers.snapshot())):
        record = gen.breakers.state(name)
        brk = gen.breakers.open_break(record)  # as admission treats it (a break may be over: clock went back)
        info: Mapping[str, Any] = status.get(name, {})
        rows.append(
            {
                "provider": name,
                "state": str(record.state),
                "enabled": info.get("enabled", False),
                "configured": info.get("configured", False),
                "racing": info.get("racing", False),
                "trips": record.trips,
                "openedAt": record.opened_at,
                "openedUntil": brk.until if brk else None,
                "breakOver": brk.over if brk else False,
                "reason": redact(record.last_reason, secrets),
            }
        )
    return rows


def config_text(gen: ImageGen) -> str:
    """The runtime config in force as an indented JSON document, for editing."""
    return editable_config(gen)[0]


def editable_config(gen: ImageGen) -> tuple[str, int]:
    """The runtime config in force as an indented JSON document, and the stored version an edit of it is
    based on (0 when none is stored): pass that to :func:`save_config_text` as ``based_on``."""
    config = gen.reload_config()
    return json.dumps(config.to_document(), indent=2), gen.config_version or 0


def save_config_text(gen: ImageGen, text: str, *, source: str = "console", based_on: int | None = None) -> int:
    """Validate ``text`` as a whole config document and store it as a new version; returns its id.

    Raises ConfigError (with ``field``) for bad JSON or an invalid document; then nothing is stored. With
    ``based_on`` (the version the text was loaded from, see :func:`editable_config`), raises
    ConfigConflictError instead of storing when another version was stored since: saving would silently
    undo that change."""
    try:
        document = parse_json_text(text)
    except JsonTextError as exc:
        raise ConfigError(str(exc), field="(document)") from None
    if not isinstance(document, dict):
        raise ConfigError("the config must be a JSON object", field="(root)")
    parse_config(document)  # an invalid document: its own error first (a partial one is refused below)
    # Against the config in force too: a custom style left out was deleted with only "changed: styles.…" to
    # say so (QA), where the page promises that a key left out is refused (remove one with null). Not when the
    # text is based on an older version: set_config refuses it as a conflict, which says what happened. (The
    # config in memory, not read again here: set_config's own read says when the log database does not answer.)
    stale = based_on is not None and based_on != (gen.config_version or 0)
    missing = missing_keys(document, whole=None if stale else gen.config.to_document())
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConfigError(
            f"missing from the document{more}: the editor holds the whole config, and a key left out would come "
            "back with its built-in default, or be lost. Put it back (Discard edits reloads the document); to remove "
            "a style, set it to null; to stop a provider, set its enabled to false",
            field=missing[0],
        )
    gen.set_config(document, source=source, merge=False, based_on=based_on)
    version = gen.config_version  # the id this save got (another process may have saved since)
    assert version is not None
    return version


def config_error_parts(exc: ConfigError) -> tuple[str, str]:
    """The field a refused config document names, and what is wrong with it, each said once.

    For the CLI and the API a ConfigError's message names the field itself (``invalid config:
    race.hedgeDelay: Input should be …``); the Admin page shows the field apart, in bold, so the message
    loses that lead-in. Further problems after the first keep their own fields."""
    field = exc.field or "(document)"
    message = str(exc)
    if exc.field:
        for lead in (f"invalid config: {exc.field}: ", f"{exc.field}: "):
            if message.startswith(lead):
                return field, message.removeprefix(lead)
    return field, message


def storage_summary(gen: ImageGen) -> dict[str, Any]:
    """Store usage under the configured key prefix (``StorageStats.to_dict()``) plus the spool's: the images
    waiting there for this store (``objects``, ``bytes``) and those kept for other stores, which this console never
    uploads (``otherStores``: destination → count). Raises StorageError when the store cannot be listed."""
    import asyncio

    prefix = gen.reload_config().r2.path_prefix
    # Stores do their I/O in worker threads: a short private loop is safe (nothing loop-bound is kept).
    summary = asyncio.run(gen.store.stats(prefix=prefix)).to_dict()
    waiting, elsewhere = gen.spool.split(gen.store)
    summary["spool"] = {
        "objects": len(waiting),
        "bytes": sum(entry.size for entry in waiting),
        "otherStores": elsewhere,
    }
    return summary


def human_bytes(size: float) -> str:
    """``1536`` → ``1.5 KiB``."""
    if size < 1024:
        return f"{int(size)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            break
    return f"{size:.1f} {unit}"
