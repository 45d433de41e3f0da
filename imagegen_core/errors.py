"""The one exception tree of imagegen, and the failure classes every provider error maps to.

::

    ImageGenError                  anything imagegen raises on purpose
    ├── ConfigError                a runtime config document, a setting or an argument of a config method
    │                              (``rollback_config("x")``) is invalid (names the field)
    │   ├── ConfigConflictError    the config changed since the version an edit was based on
    │   ├── ConfigVersionError     an edit was based on a config version that was never stored
    │   └── MissingExtraError      a feature's optional dependencies are not installed (names the extra)
    ├── InvalidRequestError        a generate request (its ``request_id`` too) is invalid (names the field);
    │                              nothing is stored
    ├── DuplicateRequestIdError    a request id given to generate names another request (also a ValueError)
    ├── AnalysisError              an analysis function's argument it cannot use (also a ValueError)
    │   └── AnalysisTypeError      one of a type it does not take (also a TypeError)
    ├── StatsWindowError           a statistics window or provider filter that cannot be counted (names the
    │                              option; also a ValueError): ``imagegen stats``, ``GET /admin/stats``
    ├── ProviderError              one provider attempt failed; carries a FailureClass
    │   └── BreakerOpenError       the provider's circuit breaker refused the call
    ├── ImageError                 bytes that are not an acceptable image (size, type, decode)
    │   └── ImageTooLargeError     more pixels than imagegen decodes: made again by a retry, so none
    ├── StorageError               the store could not write or read an object
    │   ├── StoreSetupError        the store refuses this setup (credentials, access, bucket): waiting won't fix it
    │   └── UploadFailedError      a made image the store refused (kept in the spool, being kept, or lost)
    └── LogDatabaseError           the log database cannot be opened, migrated, read or written
        └── LogDatabaseBusy        it stayed locked or busy past the wait limit (or its disk is full): transient

    FieldProblem (a ValueError)    a check's refusal inside validation, naming its field; becomes one of the above

Third-party exceptions (httpx, PIL, sqlite3, pydantic) are translated into this tree in exactly one
place each: ``providers/base.py`` for HTTP, ``images.py`` for image codecs, ``config.py`` for documents.
Messages say what to fix and never contain a secret (see :func:`redact`).
"""

from __future__ import annotations

import difflib
import enum
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeGuard


class FailureClass(enum.StrEnum):
    """Why a provider attempt failed; decides retries and circuit-breaker accounting (providers.md §7)."""

    AUTH = "auth"
    BILLING = "billing"
    RATE_LIMITED = "rate_limited"
    INVALID_REQUEST = "invalid_request"
    CONTENT_REJECTED = "content_rejected"
    TRANSIENT = "transient"
    TIMEOUT = "timeout"

    @property
    def retryable(self) -> bool:
        """Whether the same provider may be tried again within the request."""
        return self in (FailureClass.TRANSIENT, FailureClass.TIMEOUT, FailureClass.RATE_LIMITED)

    @property
    def counts_for_breaker(self) -> bool:
        """Whether the failure is the provider's fault (content and our own bad requests are not)."""
        return self not in (FailureClass.CONTENT_REJECTED, FailureClass.INVALID_REQUEST)

    @property
    def trips_breaker_at_once(self) -> bool:
        """Auth and billing failures will not heal by retrying: open the breaker immediately."""
        return self in (FailureClass.AUTH, FailureClass.BILLING)


def _restore(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> BaseException:
    """An error as :func:`_reduce` saw it, rebuilt without calling its constructor (see there)."""
    error = cls.__new__(cls, *args)
    error.args = args
    for key, value in state.items():
        setattr(error, key, value)  # setattr, not __dict__: ImportError's name and path are slots
    return error


def _reduce(error: BaseException) -> tuple[Any, ...]:
    """Pickle (and ``copy``) an error by its message arguments and attributes. Exceptions are unpickled as
    ``cls(*args)``, and the constructors of this tree take other arguments than the message (``field``,
    ``failure_class``, ...): QA found ``InvalidRequestError`` raised in a worker process breaking the pool
    (``BrokenProcessPool``) instead of reaching the caller."""
    state = dict(vars(error))
    if isinstance(error, ImportError):
        state.update(name=error.name, path=error.path)
    return (_restore, (type(error), error.args, state))


class ImageGenError(Exception):
    """Base of every error imagegen raises on purpose."""

    __reduce__ = _reduce

    def _render_traceback_(self) -> list[str]:
        """What IPython (a notebook, the console's ``ipython``) shows for it: its one line, as the commands do, not
        a traceback through imagegen's internals (QA: a notebook over a damaged log, or given a ``REPORT_END``
        that is no date, showed a traceback whose last line was the message). Errors of another kind keep theirs."""
        return [f"{type(self).__name__}: {self}"]


class ConfigError(ImageGenError):
    """A runtime config document or a setting is invalid; the message names the field."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ConfigConflictError(ConfigError):
    """An edit based on config version ``expected`` arrived after version ``current`` was stored: saving it
    would silently undo someone else's change."""

    def __init__(self, expected: int | None, current: int | None) -> None:
        since = f"version {expected}" if expected else "it was read (no version was stored then)"
        super().__init__(
            f"the config changed since {since}, now version {current}: read it again and re-apply your change",
            field="version",
        )
        self.expected = expected
        self.current = current


class ConfigVersionError(ConfigError):
    """An edit was based on config version ``expected``, which was never stored (past the newest,
    ``current``, or below 0): a wrong version, not a stale one (reading the config again would not help)."""

    def __init__(self, expected: int, current: int) -> None:
        newest = f"the latest is {current}" if current else "none is stored yet"
        super().__init__(
            f"{expected} does not exist ({newest}); base the edit on the version you read (0: none)",
            field="version",
        )
        self.expected = expected
        self.current = current


class MissingExtraError(ConfigError, ImportError):
    """A feature needs an optional dependency of imagegen that is not installed (a plain ``pip install``
    without the extra). ``extra`` is the name of the extra that installs it (``api``, ``postgres``, …),
    ``module`` (and ImportError's ``name``) the module that is missing; the message says the command that
    installs it. An ImportError too, so that ``except ImportError`` around an optional import still works."""

    def __init__(self, message: str, *, extra: str, module: str) -> None:
        super().__init__(message)
        self.extra = extra
        self.module = module
        self.name = module


class FieldProblem(ValueError):
    """A value a check refuses, naming its field relative to what was checked: a config section's cross-field
    rule (``limits.minSize``) or a provider's rule for its entry (``options.mode``, which the config layer
    prefixes with ``providers.<name>.``). Raised inside validation and turned into a :class:`ConfigError`
    (or a provider error) with the full field; not an error of the tree by itself."""

    __reduce__ = _reduce

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class InvalidRequestError(ImageGenError):
    """A generate request failed validation; ``field`` uses the HTTP wire name (e.g. ``width``).

    ``request_id``: the id of the ``rejected`` row the service logged for it (None until it is logged), so
    that an answer can point at that row."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message
        self.request_id: str | None = None


class AnalysisError(ImageGenError, ValueError):
    """An argument an ``imagegen_core.analysis`` function cannot use, said in one line (also a ValueError, as
    these were before: QA found them outside the tree)."""


class AnalysisTypeError(AnalysisError, TypeError):
    """An argument of ``imagegen_core.analysis`` of a type it does not take (also a TypeError, as before)."""


class StatsWindowError(ImageGenError, ValueError):
    """A window (``since``, ``until``, ``days``) or provider filter the statistics cannot count, said in one line
    that names the option as its surface spells it (``--since`` for ``imagegen stats``, ``since`` for ``GET
    /admin/stats``); ``field``: the option's wire name. :mod:`imagegen_core.stats_window` raises it, and each
    surface turns it into its refusal (exit 2, a 400)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class DuplicateRequestIdError(ImageGenError, ValueError):
    """``ImageGen.generate(request_id=...)`` was given an id that another request already has (in flight, or in
    the log): refused before anything is logged or called. Logged under it, the second request's row was lost
    (the insert found the id taken) and its end overwrote the first request's. A ValueError too, as the
    neighbouring check of the id's form is: a caller's mistake, not a failure of the service."""

    def __init__(self, request_id: str) -> None:
        super().__init__(
            f"request_id {request_id!r} is already used by another request: give each request a new id "
            "(ids.new_id()), or none and one is made"
        )
        self.request_id = request_id


#: The longest provider wait hint kept (one day): longer ones say "not today" as well, and stay a number that
#: the log's integer column and the breaker's clock can hold.
MAX_RETRY_AFTER_S = 86_400.0


def _bounded_wait(seconds: float | None) -> float | None:
    if seconds is None or seconds != seconds:  # NaN: no usable hint
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class ProviderError(ImageGenError):
    """One provider attempt failed.

    ``retry_after_s`` is the provider's own hint (Retry-After header or body) when it gave one, kept within
    0 .. :data:`MAX_RETRY_AFTER_S` (a provider's "Retry-After: 999…9" became infinity, whose conversion to ms
    failed the whole request). ``billed``: the provider charges for the attempt all the same (a Replicate
    prediction cancelled while it ran); the attempt then costs ``costPerImage`` in the log, as a timed-out
    one does.
    """

    def __init__(
        self,
        message: str,
        *,
        failure_class: FailureClass,
        http_status: int | None = None,
        retry_after_s: float | None = None,
        billed: bool = False,
    ) -> None:
        # Messages carry text the provider chose (an error body, a prediction's error): never a control character.
        super().__init__(one_line(message))
        self.failure_class = failure_class
        self.http_status = http_status
        self.retry_after_s = _bounded_wait(retry_after_s)
        self.billed = billed


class BreakerOpenError(ProviderError):
    """The provider's circuit breaker is open (or forced open); the provider was not called."""

    def __init__(self, provider: str, state: str) -> None:
        super().__init__(
            f"{provider}: circuit breaker is {state}; not called",
            failure_class=FailureClass.TRANSIENT,
        )
        self.provider = provider
        self.state = state


class ImageError(ImageGenError):
    """Bytes that are not an acceptable image: too big, wrong type, or undecodable."""


class ImageTooLargeError(ImageError):
    """An image of more pixels than imagegen decodes (a decompression bomb, or a provider's absurd size). Unlike
    a garbled image, which a retry may fix, the same request makes the same size again: a provider's attempt
    that answered one fails as ``invalid_request`` (not retried, its breaker not counting it), as an image over
    ``limits.maxDownloadBytes`` does."""


class StorageError(ImageGenError):
    """The image store failed to write or read an object."""


class StoreSetupError(StorageError):
    """The store refused the setup itself (credentials rejected, access denied, no such bucket), not a passing
    outage: production refuses to start with it. The message names the setting to fix."""


class UploadFailedError(StorageError):
    """A made image the store refused. ``kept``: whether the spool holds it for a later upload; ``keeping``:
    whether keeping it was still under way when the answer had to go (neither kept nor lost yet); else it is
    lost. The message says which, for operators. ``key``: the key it was to be stored (and is kept) under."""

    def __init__(self, message: str, *, kept: bool, key: str | None = None, keeping: bool = False) -> None:
        super().__init__(message)
        self.kept = kept
        self.keeping = keeping
        self.key = key


class LogDatabaseError(ImageGenError):
    """The log database could not be opened, migrated or written."""


class LogDatabaseBusy(LogDatabaseError):
    """The log database stayed locked (SQLite) or its connections busy (PostgreSQL) past the wait limit, or
    its disk is full (SQLite): a transient condition, so queued log writes are retried rather than dropped.

    ``clears_by_itself``: False for a condition only an operator ends (a full disk, a read-only mount, a damaged
    file), which no wait of a few seconds outlasts: a process that is closing keeps its last rows in the spill at
    once instead of retrying them first (QA: ``imagegen generate`` on a full disk printed its answer, then sat
    5 s before exiting)."""

    def __init__(self, message: str, *, clears_by_itself: bool = True) -> None:
        super().__init__(message)
        self.clears_by_itself = clears_by_itself


def non_unicode_at(text: str) -> int | None:
    """The 1-based position of the first character of ``text`` that is not real Unicode (a lone surrogate:
    JSON's "\\ud800", or the bytes of a command-line argument that were not UTF-8), else None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start + 1
    return None


#: Deepest nesting of objects and arrays a JSON document (a request body, a config document) may have. A
#: config document is ~4 levels deep and a generate request 1; the parser itself manages ~1000, but what
#: reads the document afterwards (the config's deep merge, pydantic, the log) recurses too and ran out of
#: stack near 500.
MAX_JSON_DEPTH = 64


def nested_over(document: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether objects and arrays in ``document`` nest more than ``limit`` levels deep (a loop, not
    recursion: it must not itself run out of stack on what it is checking)."""
    level: list[tuple[Any, int]] = [(document, 1)]
    while level:
        value, depth = level.pop()
        children = value.values() if isinstance(value, Mapping) else value if isinstance(value, list | tuple) else ()
        for child in children:
            if isinstance(child, Mapping | list | tuple):
                if depth + 1 > limit:
                    return True
                level.append((child, depth + 1))
    return False


def secret_forms(secrets: Iterable[str]) -> list[str]:
    """Each secret as it may appear in text or JSON output, longest first (so no form is half-replaced)."""
    forms: set[str] = set()
    for secret in secrets:
        if secret:
            forms.update({secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]})
    return sorted(forms, key=len, reverse=True)


#: How :func:`clip` marks where it cut a text (and :func:`redact` finds the cuts; ``reprlib`` marks with "...").
CUT_MARK = "…"
_CUT_MARKS = (CUT_MARK, "...")
#: A secret of at least this many characters is also hidden when a cut leaves a piece of it ...
PARTIAL_SECRET_MIN = 10
#: ... a piece at least this long, next to the cut: what :func:`clip` left before it, or a repr after it.
SECRET_PIECE_MIN = 4


#: Characters outside text must not bring into a message, a log row or a terminal: the C0 and C1 controls (ESC
#: starts terminal sequences that clear the screen or set the window title; CR and LF forge lines), the line
#: and paragraph separators, and the bidirectional controls that reorder what a reader sees (U+061C, U+200E,
#: U+200F, U+202A-U+202E, U+2066-U+2069).
_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def is_finite(value: float) -> bool:
    """Whether ``value`` (an int or a float) is a finite number a float can hold: not inf, not NaN, and not an
    integer too large to convert (JSON reads 1 followed by 400 zeros as one, whose float() raises)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def is_finite_number(value: object) -> TypeGuard[int | float]:
    """Whether ``value`` is an int or a float (not a bool, which Python counts as an int) and :func:`is_finite`:
    the first test of every number a caller or a document gives (a timeout, a time, a wait)."""
    return not isinstance(value, bool) and isinstance(value, int | float) and is_finite(value)


def shown_number(value: Any) -> str:
    """``value`` for a message: its repr, or for an integer of many digits, how many (not hundreds of them)."""
    text = repr(value)
    if isinstance(value, int) and len(text) > 40:
        return f"an integer of {len(text.lstrip('-'))} digits"
    return text


def one_line(text: str) -> str:
    """``text`` as one printable line: each control or bidi-override character becomes a space and whitespace
    runs become one space (QA: a provider's 500 body with ESC sequences and ``\\r\\nimagegen: success`` was
    printed as is by ``imagegen generate``, clearing the screen and forging a line). Use it wherever text a
    provider (or any outside party) chose goes into an error message or a log row."""
    return " ".join(_UNSAFE_CHARS.sub(" ", text).split())


def closest_name(
    name: str, known: Iterable[str], *, fold: Callable[[str], str] = str.lower, cutoff: float = 0.6
) -> str | None:
    """The ``known`` name closest to ``name``, as ``known`` spells it, for a "did you mean" (None when none is
    close): compared as ``fold`` makes both (case-blind by default; a common prefix left out, say)."""
    by_folded = {fold(k): k for k in known}
    found = difflib.get_close_matches(fold(name), list(by_folded), n=1, cutoff=cutoff)
    return by_folded[found[0]] if found else None


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, the cut marked with ``…`` (so :func:`redact` can hide
    what is left of a secret the cut fell inside). Use it wherever outside text is shortened."""
    return text if len(text) <= limit else text[: max(0, limit - 1)] + CUT_MARK


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each non-empty secret in ``text`` with ``***``, in any case (a provider's
    error text may echo a key lower-cased).

    Texts are cut short in many places (a provider's error body to 300 characters, a refused prompt to
    2000, a repr in the middle), and a cut can fall inside a secret. So, for a secret of at least
    ``PARTIAL_SECRET_MIN`` characters, a piece of at least ``SECRET_PIECE_MIN`` that begins it right before
    a cut mark (``…``, or ``...`` from a repr), or ends it right after one, is replaced too.
    """
    cut = any(mark in text for mark in _CUT_MARKS)  # once per text, not per secret (a log line meets dozens)
    folded = text.casefold()
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
            if secret.casefold() in folded:  # the cheap test first: most texts hold no secret in any case
                text = re.sub(re.escape(secret), "***", text, flags=re.IGNORECASE)
            if cut and len(secret) >= PARTIAL_SECRET_MIN:
                text = _redact_cut_pieces(text, secret)
    return text


def _redact_cut_pieces(text: str, secret: str) -> str:
    sizes = range(len(secret) - 1, SECRET_PIECE_MIN - 1, -1)  # longest piece first
    for mark in _CUT_MARKS:
        parts = text.split(mark)
        for i in range(len(parts) - 1):
            before = next((n for n in sizes if parts[i].endswith(secret[:n])), 0)
            if before:
                parts[i] = parts[i][:-before] + "***"
            after = next((n for n in sizes if parts[i + 1].startswith(secret[-n:])), 0)
            if after:
                parts[i + 1] = "***" + parts[i + 1][after:]
        text = mark.join(parts)
    return text
