"""The Provider protocol, what a provider returns, and the single httpx → ProviderError translation.

A provider is one module and one stateless class. It receives its ``httpx.AsyncClient`` through a
:class:`ProviderContext` on every call, never owns it, and reports every failure as a
:class:`~imagegen_core.errors.ProviderError` with a :class:`~imagegen_core.errors.FailureClass`. All HTTP
calls go through :func:`send` so that transport errors and status codes are classified here only.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, ClassVar, Protocol, runtime_checkable
from urllib.parse import quote, urlsplit

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential

from ..errors import (
    FailureClass,
    FieldProblem,
    ProviderError,
    clip,
    closest_name,
    is_finite_number,
    one_line,
    shown_number,
)
from ..models import Attribution
from .addresses import is_internal_address

#: How much of an error body is kept in a message.
_MAX_DETAIL_CHARS = 300


@dataclass(frozen=True, slots=True)
class ProviderJob:
    """One attempt's input. ``prompt`` already has the style applied; ``timeout_s`` is this attempt's
    budget, to be passed on as a provider-side deadline where the API has one (Cancel-After, ...).
    ``max_image_bytes`` (``limits.maxDownloadBytes``; None: no limit) lets a provider that answers the image
    inline (base64) refuse a bigger one before decoding it; the race checks the bytes it gets in any case."""

    request_id: str
    prompt: str
    width: int
    height: int
    timeout_s: float
    attempt: int = 1
    keyword: str | None = None
    model: str | None = None
    seed: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    max_image_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class ProviderOutput:
    """What a provider produced. Exactly one of ``data`` (inline bytes) or ``url`` is set.

    ``url`` may be an ``https://`` link (downloaded under the provider's :class:`DownloadPolicy`) or a
    ``data:`` URI. With ``hotlink=True`` the URL itself is the result (Unsplash): it is verified but
    never copied to storage, and ``use_ping_url`` is requested when the image becomes the answer.

    ``billed``: the provider charges for this output (it made the image), so an attempt that then fails on our
    side (the download, our size limit, a broken image) still costs ``costPerImage`` in the log. False only for
    an output the provider never made (chaos's corrupt payload).
    """

    url: str | None = None
    data: bytes | None = None
    content_type: str | None = None
    hotlink: bool = False
    model: str | None = None
    seed: int | None = None
    attribution: Attribution | None = None
    use_ping_url: str | None = None
    provider_ref: str | None = None  # prediction / request id, for the log
    billed: bool = True

    def __post_init__(self) -> None:
        if (self.url is None) == (self.data is None):
            raise ValueError("ProviderOutput needs exactly one of url or data")
        # Ids and model names the provider answered go into the log and the result: one printable line each.
        for name in ("model", "provider_ref"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, one_line(value))


def image_too_large(provider: str, max_bytes: int, *, billed: bool = False) -> ProviderError:
    """The failure of an image over ``limits.maxDownloadBytes``, however it came (download, ``data:`` URI,
    inline base64). ``billed`` when the provider answered it from its own generate call (inline base64).

    ``invalid_request``, not ``transient``: the limit is ours, so a retry pays for the same size again (the
    provider makes what the request asks), and the provider is not failing, so its breaker does not count it.
    Counting it would stop paying for a provider whose every image is too large, but would report a healthy
    provider as down, and open/half-open cycles fix nothing: the fix is the limit, which the message names."""
    return ProviderError(
        f"{provider}: image larger than {max_bytes} bytes, over limits.maxDownloadBytes",
        failure_class=FailureClass.INVALID_REQUEST,
        billed=billed,
    )


def base64_over(text: str, max_bytes: int | None) -> bool:
    """Whether base64 ``text`` (no whitespace) surely decodes to more than ``max_bytes``: ``max_bytes`` bytes
    take at most ``4 * ceil(max_bytes / 3)`` characters, so a longer answer is refused before decoding it."""
    return max_bytes is not None and len(text) > 4 * -(-max_bytes // 3)


def origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url``, lower-cased: what "same server" means for keys and redirects."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


@dataclass(frozen=True, slots=True)
class DownloadPolicy:
    """Where a provider's output images may be downloaded from (no SSRF).

    ``hosts`` are exact host names or ``*.suffix`` wildcards, always over https. ``test_origin`` is the
    origin of an overridden base URL (``IMAGEGEN_<NAME>_BASE_URL``): a whole provider can then be
    emulated on 127.0.0.1, outputs included, over http too. Apart from that one origin, a literal internal
    address (loopback, private, link-local...) is refused even if an allow-list entry names it; host names
    are trusted through the allow-list alone (they are the provider's own CDN names).
    """

    hosts: tuple[str, ...]
    test_origin: str | None = None

    def allows(self, url: str) -> bool:
        """Whether ``url`` may be fetched."""
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
        except ValueError:
            return False
        if self.test_origin is not None and origin(url) == self.test_origin.lower():
            return True
        if parts.scheme != "https" or not host or parts.username or parts.password:
            return False
        if is_internal_address(host):
            return False
        for allowed in self.hosts:
            if allowed.startswith("*.") and host.endswith(allowed[1:]):
                return True
            if host == allowed:
                return True
        return False


@dataclass(slots=True)
class ProviderContext:
    """What a provider call may use: the shared HTTP client, a way to start clean-up work that must
    outlive a cancelled attempt (e.g. cancelling a prediction server-side), and the clock's sleep.

    ``linger`` starts clean-up that may first wait for seconds (a create call's answer, to learn what to
    cancel) and that closing does not wait for: it is cancelled then, so a Ctrl-C or a server's stop is not
    held up by it. None: ``spawn``."""

    client: httpx.AsyncClient
    spawn: Callable[[Coroutine[Any, Any, Any]], None]
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    linger: Callable[[Coroutine[Any, Any, Any]], None] | None = None

    def start_lingering(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Start ``coro`` through ``linger``, or ``spawn`` without one."""
        (self.linger or self.spawn)(coro)


@runtime_checkable
class Provider(Protocol):
    """An image source. Implementations are stateless apart from their construction arguments.

    A class registered under the ``imagegen.providers`` entry-point group (as the built-ins are) is built once
    per config entry as ``cls(name=<entry name>, api_key=<its key or None>, base_url=<its base URL or None>,
    app_name=<Settings.app_name>)``; subclassing :class:`ProviderBase` gives that constructor. An instance
    given to ``ImageGen(providers={...})`` is used as it is."""

    #: Entry-point name of the implementation.
    kind: ClassVar[str]
    #: Whether a credential is required; providers without one (offline, fake) are always configured.
    requires_key: ClassVar[bool]
    #: Config entry name this instance serves (``providers.<name>``).
    name: str

    @property
    def configured(self) -> bool:
        """True when the provider has what it needs to be called (e.g. its API key)."""
        ...

    @property
    def download_policy(self) -> DownloadPolicy:
        """Where this provider's output URLs may be fetched from."""
        ...

    async def generate(self, job: ProviderJob, ctx: ProviderContext) -> ProviderOutput:
        """Produce one image for ``job`` or raise ProviderError. When cancelled (a loser of the race),
        cancel any server-side work through ``ctx.spawn`` and re-raise."""
        ...

    async def confirm_use(self, output: ProviderOutput, ctx: ProviderContext) -> None:
        """Called once when ``output`` becomes the answer (Unsplash download tracking)."""
        ...


def confirms_use(provider: Provider) -> bool:
    """Whether ``provider.confirm_use`` may do anything: :class:`ProviderBase`'s own does nothing, and a task
    spawned per answer just to run it cost the event loop a task, its step and two callbacks per request
    (``bench/vs_litellm.py``'s scenario (b))."""
    return getattr(type(provider), "confirm_use", None) is not ProviderBase.confirm_use


def check_known_options(options: Mapping[str, Any], kind: str, known: Sequence[str]) -> None:
    """Refuse an option name a ``kind`` provider does not use: a typo (``waitS`` for ``wait_s``) was stored and
    then ignored at every call (QA). A model's own parameters go under ``options.input``, where any name is
    passed on to it."""
    for key in options:
        if key in known:
            continue
        near = closest_name(str(key), known)  # case-blind: "failrate" is near "failureRate" only so
        said = f"did you mean {near}? known: " if near else "known: "
        said += ", ".join(known) if known else "none"
        inputs = "; a model's own parameters go under options.input" if "input" in known else ""
        raise FieldProblem(f"options.{clip(str(key), 60)}", f"unknown {kind} option ({said}){inputs}")


def check_positive_number(options: Mapping[str, Any], key: str) -> None:
    """Refuse ``options[key]`` unless it is absent or a positive finite number (inf would wait forever, NaN
    passes every comparison)."""
    value = options.get(key)
    if value is not None and (not is_finite_number(value) or value <= 0):
        raise FieldProblem(f"options.{key}", f"must be a positive number, got {shown_number(value)}")


def check_mapping(options: Mapping[str, Any], key: str) -> None:
    """Refuse ``options[key]`` unless it is absent or a JSON object."""
    value = options.get(key)
    if value is not None and not isinstance(value, Mapping):
        raise FieldProblem(f"options.{key}", f"must be an object, got {value!r}")


def check_choice(options: Mapping[str, Any], key: str, choices: Sequence[str]) -> None:
    """Refuse ``options[key]`` unless it is absent or one of ``choices``."""
    value = options.get(key)
    if value is not None and value not in choices:
        raise FieldProblem(f"options.{key}", f"must be one of {', '.join(choices)}, got {value!r}")


#: The longest ``model`` id a provider accepts (real ones are well under 100 characters).
MAX_MODEL_ID_CHARS = 200


def check_model_id(model: str | None, pattern: re.Pattern[str], expected: str) -> None:
    """Refuse ``model`` (absent means the provider's default) unless ``pattern`` matches all of it.

    Model ids go into request URLs and bodies: each provider's pattern admits the real id formats only, with
    no character that could change the URL called (``?``, ``#``, ``%``, ``\\``, whitespace, ``..``)."""
    if model is not None and (len(model) > MAX_MODEL_ID_CHARS or not pattern.fullmatch(model)):
        shown = repr(clip(model, 80)) + (f" ({len(model)} characters)" if len(model) > 80 else "")
        raise FieldProblem("model", f"must be {expected}, got {shown}")


def url_path(provider: str, *segments: str) -> str:
    """``segments`` as one URL path, each segment percent-encoded: whatever reaches a URL builder (a model id
    that bypassed :meth:`ProviderBase.check_settings`), it can add no segment, query or fragment."""
    for segment in segments:
        if segment in ("", ".", ".."):  # left as they are by encoding, and resolved away by httpx
            raise ProviderError(
                f"{provider}: {segment!r} cannot be a URL path segment", failure_class=FailureClass.INVALID_REQUEST
            )
    return "/".join(quote(segment, safe="") for segment in segments)


class ProviderBase:
    """Convenience base: stores the construction arguments and gives the protocol's defaults."""

    kind: ClassVar[str] = ""
    requires_key: ClassVar[bool] = True
    #: The variable a plugin's key is read from (environment or env file) and passed as ``api_key``; None:
    #: ``IMAGEGEN_<KIND>_API_KEY`` for the entry-point name it is registered under. It must have that form,
    #: ``IMAGEGEN_<SOMETHING>_API_KEY``, so that the settings find it and redact it. Built-ins have their own.
    key_variable: ClassVar[str | None] = None
    #: Made on this machine (the offline drawing): its failures are the machine's load, not a service's health,
    #: and never count for its circuit breaker (QA: four 4096x4096 drawings at once timed it out and opened its
    #: breaker, so every later request of a machine without keys got the default image).
    local: ClassVar[bool] = False
    #: Serves stock photos whose photographer must be credited wherever they are published (Unsplash's terms):
    #: a photo of it whose log row holds no credit (logged before credits were kept) is flagged, not shown bare.
    needs_credit: ClassVar[bool] = False
    #: Known https hosts of output images (exact or ``*.suffix``).
    output_hosts: ClassVar[tuple[str, ...]] = ()
    #: The real API base URL.
    default_base_url: ClassVar[str] = ""

    def __init__(
        self,
        *,
        name: str | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        app_name: str = "imagegen",
    ) -> None:
        self.name = name or self.kind
        self._api_key = api_key
        self._base_url_override = base_url.rstrip("/") if base_url else None
        self.base_url = self._base_url_override or self.default_base_url
        self.app_name = app_name

    @property
    def api_key(self) -> str | None:
        """The key the settings hold for this provider (see :attr:`key_variable`), for its requests' headers.
        Redacted from errors and the log, as every key is; never log it yourself."""
        return self._api_key

    def __repr__(self) -> str:  # never show the key
        return f"{type(self).__name__}(name={self.name!r}, base_url={self.base_url!r})"

    @property
    def configured(self) -> bool:
        """True when it can be called: it needs no key (:attr:`requires_key` False), or its key is set."""
        return not self.requires_key or bool(self._api_key)

    @property
    def download_policy(self) -> DownloadPolicy:
        """Output URLs may be fetched over https from :attr:`output_hosts`, and from the origin of an overridden
        base URL (``IMAGEGEN_<NAME>_BASE_URL``: a test server on 127.0.0.1, say), over http too."""
        test_origin = origin(self._base_url_override) if self._base_url_override else None
        return DownloadPolicy(hosts=self.output_hosts, test_origin=test_origin)

    async def confirm_use(self, output: ProviderOutput, ctx: ProviderContext) -> None:
        """Nothing by default; override it when the provider must be told that its output was used (Unsplash's
        download tracking): called once, when ``output`` becomes the answer."""
        return None

    @classmethod
    def check_settings(cls, model: str | None, options: Mapping[str, Any]) -> None:
        """Refuse (:class:`FieldProblem`) a ``model`` or ``options`` this provider can never use.

        Runs when a config document is validated, so a typo is refused when it is saved rather than
        failing every call; and before each call (:meth:`checked`), for instances built in code."""

    def checked(self, job: ProviderJob) -> None:
        """:meth:`check_settings` for one job, as the provider error a call reports (our config's fault)."""
        try:
            self.check_settings(job.model, job.options)
        except FieldProblem as exc:
            raise ProviderError(f"{self.name}: {exc}", failure_class=FailureClass.INVALID_REQUEST) from None
        except Exception as exc:  # a plugin's check raising ValueError & co.: the same refusal
            message = clip(str(exc) or type(exc).__name__, _MAX_DETAIL_CHARS)
            raise ProviderError(f"{self.name}: {message}", failure_class=FailureClass.INVALID_REQUEST) from None


# --------------------------------------------------------------------------------------------------
# The one translation of httpx exceptions and HTTP statuses into failure classes.

_CONTENT_MARKERS = (
    "content_policy_violation",
    "nsfw",
    "flagged as sensitive",
    "(e005)",
    "content_filtered",
    "moderated",
    "moderation_blocked",
    "safety system",
)
_BILLING_MARKERS = ("insufficient credit", "exhausted balance", "insufficient_quota", "billing", "top up")


#: What parsing (and describing) a provider's JSON can raise on a hostile body: RecursionError for one nested
#: thousands deep (QA: a 401 with such a body became a "transient" RecursionError, retried, its breaker not
#: tripped), ValueError for malformed JSON or an integer past Python's 4300 digits.
_BAD_JSON = (ValueError, UnicodeDecodeError, RecursionError)


def _detail_text(response: httpx.Response) -> str:
    """A short human description from an error body (JSON ``detail``/``title``/``errors``/``error``)."""
    try:
        return clip(one_line(_describe(response.json())), _MAX_DETAIL_CHARS)
    except _BAD_JSON:
        return clip(one_line(response.text), _MAX_DETAIL_CHARS)


def _describe(body: Any) -> str:
    if isinstance(body, str):
        return body
    if isinstance(body, list):
        return "; ".join(_describe(item) for item in body[:3])
    if isinstance(body, dict):
        if "error" in body and isinstance(body["error"], dict | str):
            inner = body["error"]
            if isinstance(inner, dict):
                return " ".join(str(inner.get(k, "")) for k in ("type", "code", "message") if inner.get(k)).strip()
            return inner
        if "errors" in body:
            return _describe(body["errors"])
        if "detail" in body:
            detail = body["detail"]
            if isinstance(detail, list):
                return "; ".join(
                    " ".join(str(d.get(k, "")) for k in ("type", "msg") if d.get(k)) if isinstance(d, dict) else str(d)
                    for d in detail[:3]
                )
            title = body.get("title")
            return f"{title}: {detail}" if title else str(detail)
        if "title" in body:
            return str(body["title"])
        if "msg" in body:
            return str(body["msg"])
    return clip(json.dumps(body), _MAX_DETAIL_CHARS)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):  # delta-seconds; float() alone would accept "inf" and "nan"
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # asctime form or "-0000": HTTP dates are GMT, never the server's local time
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration_s(value: str | None) -> float | None:
    """Seconds from a Go-style duration (``6ms``, ``12s``, ``1m30s``, ``2h0m0s``), as OpenAI's
    ``x-ratelimit-reset-*`` headers give them; None when absent or not one."""
    text = (value or "").strip()
    if not text or _DURATION_PART.sub("", text):
        return None
    return sum(float(number) * _DURATION_UNIT_S[unit] for number, unit in _DURATION_PART.findall(text))


def _openai_reset_s(headers: httpx.Headers) -> float | None:
    """OpenAI's wait after a 429 (providers.md §4.1): ``x-ratelimit-reset-<kind>`` of the limit whose
    ``x-ratelimit-remaining-<kind>`` is 0. The other limit's reset is the time to refill it *completely*
    (minutes for tokens) and says nothing about this refusal. Without remaining counts: the sooner reset."""
    resets = {kind: _duration_s(headers.get(f"x-ratelimit-reset-{kind}")) for kind in ("requests", "tokens")}
    exhausted = [
        reset
        for kind, reset in resets.items()
        if reset is not None and headers.get(f"x-ratelimit-remaining-{kind}", "").strip() == "0"
    ]
    if exhausted:
        return max(exhausted)
    known = [reset for reset in resets.values() if reset is not None]
    return min(known) if known else None


def _flags_content_policy(response: httpx.Response) -> bool:
    """Whether a FastAPI-style error list (fal's 422) has a ``content_policy_violation`` entry anywhere in
    it: the description keeps only the first entries, and a long one before it would hide the flag."""
    try:
        body = response.json()
    except _BAD_JSON:
        return False
    detail = body.get("detail") if isinstance(body, dict) else None
    return isinstance(detail, list) and any(
        isinstance(entry, dict) and entry.get("type") == "content_policy_violation" for entry in detail
    )


_RESET_IN_BODY = re.compile(r"(?:available in|resets in)\s*~?\s*(\d+(?:\.\d+)?)\s*(?:s\b|sec|second)", re.I)


def classify_response(provider: str, response: httpx.Response) -> ProviderError:
    """The ProviderError for a non-2xx response, per providers.md §7."""
    status = response.status_code
    detail = _detail_text(response)
    lowered = detail.lower()
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    if retry_after is None:
        match = _RESET_IN_BODY.search(detail)
        retry_after = float(match.group(1)) if match else None
    if retry_after is None and status == 429:
        retry_after = _openai_reset_s(response.headers)
    fal_type = (response.headers.get("x-fal-error-type") or "").lower()

    if status == 401:
        cls = FailureClass.AUTH
    elif status == 402:
        cls = FailureClass.BILLING
    elif status == 403:
        if response.headers.get("x-ratelimit-remaining") == "0" or "rate limit" in lowered:
            cls = FailureClass.RATE_LIMITED  # Unsplash signals an exhausted quota with 403
        elif any(m in lowered for m in _BILLING_MARKERS):
            cls = FailureClass.BILLING  # fal: "User is locked. Reason: Exhausted balance"
        elif any(m in lowered for m in _CONTENT_MARKERS):
            cls = FailureClass.CONTENT_REJECTED  # Stability moderation
        else:
            cls = FailureClass.AUTH
    elif status == 429:
        cls = FailureClass.BILLING if "insufficient_quota" in lowered else FailureClass.RATE_LIMITED
    elif status in (408, 504) or "timeout" in fal_type:
        cls = FailureClass.TIMEOUT
    elif status >= 500:
        cls = FailureClass.TRANSIENT
    elif status == 400 and any(m in lowered for m in _BILLING_MARKERS):
        cls = FailureClass.BILLING  # OpenAI: 400 billing_hard_limit_reached, a spending limit and not our request
    elif any(m in lowered for m in _CONTENT_MARKERS) or _flags_content_policy(response):
        cls = FailureClass.CONTENT_REJECTED
    elif status in (400, 404, 405, 413, 415, 422):  # not 409: a conflict passes (fal's client retries it)
        cls = FailureClass.INVALID_REQUEST
    else:
        cls = FailureClass.TRANSIENT
    message = f"{provider}: HTTP {status}" + (f" {detail}" if detail else "")
    return ProviderError(message, failure_class=cls, http_status=status, retry_after_s=retry_after)


def transport_error(provider: str, exc: httpx.HTTPError) -> ProviderError:
    """The ProviderError for an httpx exception raised before a complete response arrived.

    A timeout counts as ``timeout`` only when it really was one: the aiohttp transport reports a reset
    connection as ``ConnectTimeout`` (chained from the aiohttp error), which is a ``transient`` failure.
    """
    causes: list[BaseException] = []
    cause = exc.__cause__
    while cause is not None and len(causes) < 10:
        causes.append(cause)
        cause = cause.__cause__
    broken = next(
        (c for c in causes if isinstance(c, ConnectionError) or type(c).__module__.startswith("aiohttp")), None
    )
    if any(isinstance(c, TimeoutError) for c in causes) or (isinstance(exc, httpx.TimeoutException) and not broken):
        return ProviderError(f"{provider}: timed out ({type(exc).__name__})", failure_class=FailureClass.TIMEOUT)
    what = type(causes[-1]).__name__ if broken is not None else type(exc).__name__
    return ProviderError(f"{provider}: connection failed ({what})", failure_class=FailureClass.TRANSIENT)


def transport_failure(provider: str, exc: Exception) -> ProviderError | None:
    """The ProviderError for an exception of the HTTP stack (httpx, or the aiohttp transport beneath it), or
    None for any other. The aiohttp transport leaves its parser's errors unmapped (a bad status line, too many
    or too long headers, a broken chunk size): their text held the raw bytes received, over several lines, a
    "400" that no server sent and the URL (QA); only their first words are kept."""
    if isinstance(exc, httpx.HTTPError):
        return transport_error(provider, exc)
    if isinstance(exc, httpx.InvalidURL):  # not an HTTPError subclass
        return ProviderError(f"{provider}: invalid URL ({exc})", failure_class=FailureClass.TRANSIENT)
    if type(exc).__module__.startswith("aiohttp"):
        what = str(getattr(exc, "message", "") or "").split(":", 1)[0].strip() or type(exc).__name__
        return ProviderError(
            f"{provider}: malformed HTTP answer ({clip(what, 60)})", failure_class=FailureClass.TRANSIENT
        )
    return None


#: The most of an API answer :func:`send` reads (decoded). The largest real ones are OpenAI's base64 images,
#: a few MB; anything far past that is a broken or hostile server, not to be held in memory whole.
MAX_ANSWER_BYTES = 32 << 20
#: The most of an *error* answer that is read: classification needs the status and the body's beginning.
_MAX_ERROR_BODY_BYTES = 64 << 10
#: Headers that describe the wire form of a body, wrong for the decoded copy :func:`send` hands back.
_FRAMING_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


async def send(
    provider: str,
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    ok_statuses: tuple[int, ...] = (),
    total_s: float | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """Send one request; transport errors and non-2xx statuses become ProviderError.

    ``ok_statuses`` lists extra non-2xx statuses the caller handles itself. The answer's body is read up to
    :data:`MAX_ANSWER_BYTES` (past that: a transient failure); an error's body only up to a few KB.
    ``total_s`` bounds the whole exchange, for calls nobody else bounds (a race loser's clean-up): httpx's
    timeouts are per read, and an answer dripping a byte a second never trips them (QA: 200 such calls held
    the shared client's every connection for minutes). Past it, a TIMEOUT ProviderError.
    """
    if total_s is None:
        return await _send(provider, client, method, url, ok_statuses, kwargs)
    try:
        async with asyncio.timeout(total_s):
            return await _send(provider, client, method, url, ok_statuses, kwargs)
    except TimeoutError:
        raise ProviderError(
            f"{provider}: no whole answer within {total_s:g}s", failure_class=FailureClass.TIMEOUT
        ) from None


async def _send(
    provider: str,
    client: httpx.AsyncClient,
    method: str,
    url: str,
    ok_statuses: tuple[int, ...],
    kwargs: dict[str, Any],
) -> httpx.Response:
    read_whole = False
    try:
        # client.send(stream=True), not client.stream(): with its context manager a call measured ~35 µs
        # slower; this way it measures as client.request() did (A/B of 6 x 1500 calls, interleaved).
        streamed = await client.send(client.build_request(method, url, **kwargs), stream=True)
        try:
            read_whole = _declared_small(streamed)
            # The common case is read as client.request() would; capped reading costs ~40 µs more per call.
            body = await streamed.aread() if read_whole else await _read_capped(streamed)
        finally:
            await streamed.aclose()
    except Exception as exc:
        if (failure := transport_failure(provider, exc)) is None:
            raise
        raise failure from None
    response = streamed
    if not read_whole:
        if body is None:
            raise ProviderError(
                f"{provider}: answer larger than {MAX_ANSWER_BYTES} bytes (HTTP {streamed.status_code})",
                failure_class=FailureClass.TRANSIENT,
                http_status=streamed.status_code,
            )
        # The body is decoded already: drop the headers that would make httpx decode or frame it again.
        headers = [(k, v) for k, v in streamed.headers.multi_items() if k.lower() not in _FRAMING_HEADERS]
        response = httpx.Response(streamed.status_code, headers=headers, content=body, request=streamed.request)
    if not response.is_success and response.status_code not in ok_statuses:
        raise classify_response(provider, response)
    return response


def _declared_small(response: httpx.Response) -> bool:
    """A 2xx answer whose declared length is within :data:`MAX_ANSWER_BYTES` and not compressed (compressed,
    the decoded body could be far larger): read whole, like any answer before the cap."""
    length = response.headers.get("content-length")
    plain = response.headers.get("content-encoding", "identity") == "identity"
    return response.is_success and plain and length is not None and length.isdigit() and int(length) <= MAX_ANSWER_BYTES


async def _read_capped(response: httpx.Response) -> bytes | None:
    """The decoded body of a 2xx answer, or None once it passes :data:`MAX_ANSWER_BYTES`; of any other answer
    (an error, or a redirect we do not follow) the first :data:`_MAX_ERROR_BODY_BYTES`, the rest left unread."""
    limit = MAX_ANSWER_BYTES if response.is_success else _MAX_ERROR_BODY_BYTES
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            if response.is_success:
                return None
            break
    return b"".join(chunks)[:limit]


#: A status poll (an idempotent GET) that meets a 429 or a transient error is sent again, this many times in
#: all, before the attempt gives up on a job that is running and paid for.
POLL_TRIES = 4

#: A 408 or 504 answer to a poll is the timeout of a gateway in front of the status endpoint, not the job's:
#: both official clients send the GET again (providers.md §1.7: 429/503/504; §2.3: 408, ingress 502/503/504).
_GATEWAY_TIMEOUTS = (408, 504)
#: ...except a 504 carrying this header: the job's own X-Fal-Request-Timeout has passed (providers.md §2.3).
_JOB_DEADLINE_HEADER = "x-fal-request-timeout-type"


class _GatewayTimeout(ProviderError):
    """A poll's 408/504 that is worth sending again (see :data:`_GATEWAY_TIMEOUTS`); still a ``timeout``."""


async def _poll_once(provider: str, client: httpx.AsyncClient, url: str, headers: Mapping[str, str]) -> httpx.Response:
    response = await send(provider, client, "GET", url, headers=headers, ok_statuses=_GATEWAY_TIMEOUTS)
    if response.status_code not in _GATEWAY_TIMEOUTS:
        return response
    error = classify_response(provider, response)
    if _JOB_DEADLINE_HEADER in response.headers:
        raise error
    raise _GatewayTimeout(
        str(error), failure_class=error.failure_class, http_status=error.http_status, retry_after_s=error.retry_after_s
    )


async def poll(
    provider: str,
    ctx: ProviderContext,
    url: str,
    *,
    headers: Mapping[str, str],
    max_wait_s: float | None = None,
) -> httpx.Response:
    """GET ``url`` as :func:`send` does, but sent again (up to :data:`POLL_TRIES` in all) after a rate limit, a
    transient failure or a gateway's timeout: after ``Retry-After`` when the answer has one, else after 0.5, 1,
    2 s. For status polls and result fetches only: the job is already running, and one 429 or 503 on a poll
    must not cancel it and pay for a new one (providers.md §1.7, §2.3: the official clients retry these, never
    the create). The attempt's own timeout still bounds the whole wait; a ``Retry-After`` longer than
    ``max_wait_s`` (what is left of the attempt's budget) is not waited out: the error is raised at once, so
    the attempt ends as ``rate_limited`` with the provider's hint instead of sleeping into a timeout."""

    def retryable(exc: BaseException) -> bool:
        if not isinstance(exc, ProviderError):
            return False
        if exc.retry_after_s is not None and max_wait_s is not None and exc.retry_after_s > max_wait_s:
            return False
        return isinstance(exc, _GatewayTimeout) or exc.failure_class in (
            FailureClass.RATE_LIMITED,
            FailureClass.TRANSIENT,
        )

    backoff = wait_exponential(multiplier=0.5, max=2.0)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, ProviderError) and exc.retry_after_s is not None:
            return exc.retry_after_s
        return float(backoff(state))

    retrying = AsyncRetrying(
        stop=stop_after_attempt(POLL_TRIES),
        wait=wait,
        retry=retry_if_exception(retryable),
        sleep=ctx.sleep,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await _poll_once(provider, ctx.client, url, headers)
    raise AssertionError("unreachable")  # tenacity either returns or re-raises


def json_body(provider: str, response: httpx.Response) -> Any:
    """The JSON body; a malformed one is a transient failure (the provider answered garbage)."""
    try:
        return response.json()
    except _BAD_JSON:
        raise ProviderError(
            f"{provider}: malformed JSON in HTTP {response.status_code} response",
            failure_class=FailureClass.TRANSIENT,
            http_status=response.status_code,
        ) from None


def expect_mapping(provider: str, body: Any, what: str) -> Mapping[str, Any]:
    """``body`` as a JSON object, or a transient ProviderError naming what was expected."""
    if not isinstance(body, Mapping):
        raise ProviderError(f"{provider}: unexpected {what} (not a JSON object)", failure_class=FailureClass.TRANSIENT)
    return body


def json_object(provider: str, response: httpx.Response, what: str) -> Mapping[str, Any]:
    """The response's JSON body as an object: transient ProviderErrors for malformed JSON or another shape."""
    return expect_mapping(provider, json_body(provider, response), what)


def number_option(options: Mapping[str, Any], key: str, default: float) -> float:
    """A number option (``check_positive_number`` has vetted it) or ``default`` when it is absent."""
    value = options.get(key)
    return default if value is None else float(value)


def missing_key(provider: str, variable: str, *, what: str = "API key") -> ProviderError:
    """The failure of a provider called without its key (or token): ``auth``, naming the variable to set."""
    return ProviderError(f"{provider}: no {what} configured (set {variable})", failure_class=FailureClass.AUTH)


def content_rejected(provider: str, reason: str) -> ProviderError:
    """A refusal on content grounds (not the provider's fault: no breaker hit, no retry)."""
    return ProviderError(
        clip(f"{provider}: content rejected: {reason}", _MAX_DETAIL_CHARS), failure_class=FailureClass.CONTENT_REJECTED
    )


def looks_like_content_rejection(text: str) -> bool:
    """Whether a provider's failure text is a moderation refusal."""
    lowered = text.lower()
    return any(m in lowered for m in _CONTENT_MARKERS)
