"""The runtime config document: providers, race, breaker, storage keys, defaults, limits and styles.

Keys and units follow the Cloudflare Worker's ``app-config`` (camelCase, times in milliseconds) so an
existing document keeps working; new keys extend it. A partial document deep-merges over
:data:`DEFAULT_DOCUMENT`. Validation failures raise :class:`ConfigError` naming the field, so the running
config never becomes something invalid. Versions are stored by the log DB (``log/``), not here.
"""

from __future__ import annotations

import copy
import json
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from .errors import (
    MAX_JSON_DEPTH,
    ConfigError,
    FailureClass,
    FieldProblem,
    InvalidRequestError,
    clip,
    closest_name,
    is_finite,
    is_finite_number,
    nested_over,
    non_unicode_at,
    shown_number,
)
from .images import WEBP_MAX_SIDE, too_many_pixels
from .json_text import JsonTextError, parse_json_text


class _Doc(BaseModel):
    """Strict camelCase section: unknown keys are errors (a typo must not be silently ignored), and so are
    values of the wrong JSON type (``"enabled": "yes"`` or ``"timeout": "100"``; whole numbers may be given
    where a fraction goes)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True, strict=True)


class ProviderConfig(_Doc):
    """One provider's entry under ``providers.<name>``."""

    type: str | None = Field(default=None, description="Provider implementation; defaults to the entry name")
    enabled: bool = True
    timeout: int = Field(default=20_000, gt=0, le=600_000, description="Per-attempt timeout, ms")
    retries: int = Field(default=1, ge=0, le=10, description="Extra attempts after the first")
    priority: int = Field(default=5, ge=0, le=1000, description="Lower starts first")
    hedge_delay: int | None = Field(default=None, ge=0, le=600_000, description="Overrides race.hedgeDelay, ms")
    cost_per_image: float = Field(default=0.0, ge=0, le=100, description="Estimated USD per image")
    model: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class RaceConfig(_Doc):
    """How providers are raced."""

    mode: Literal["hedged", "parallel", "sequential"] = "hedged"
    order: Literal["priority", "fastest"] = Field(
        default="priority", description="Start order: by priority, or the recently fastest provider first"
    )
    hedge_delay: int = Field(default=2_000, ge=0, le=600_000, description="Start the next provider after, ms")
    finalize_reserve: int = Field(
        default=1_000, ge=0, le=60_000, description="Part of the deadline kept for storing the winner, ms"
    )
    backoff_initial: int = Field(default=250, ge=0, le=60_000, description="First retry backoff, ms")
    backoff_max: int = Field(default=4_000, ge=0, le=600_000, description="Backoff cap, ms")
    adaptive_hedge: bool = Field(default=True, description="Hedge delay follows each provider's latency quantile")
    hedge_quantile: float = Field(
        default=0.9, ge=0.5, le=0.999, description="Hedge at this latency quantile, or higher if the budget needs"
    )
    hedge_min_samples: int = Field(default=20, ge=1, le=10_000, description="Fixed delay until this many")
    hedge_window: int = Field(default=200, ge=10, le=10_000, description="Recent successes kept per provider")
    hedge_min_delay: int = Field(default=50, ge=0, le=600_000, description="Never hedge earlier than this, ms")
    hedge_budget_share: float = Field(
        default=0.1, ge=0, le=1, description="Hedges allowed per request, on average (0.1 = +10 % calls)"
    )
    hedge_budget_burst: float = Field(default=5, ge=0, le=10_000, description="Unused hedges that may accrue")
    hedge_budget_reserve: float = Field(
        default=2,
        ge=0,
        le=10_000,
        description="Hedges kept for requests that waited 1.25 hedge delays (at most hedgeBudgetBurst - 1)",
    )
    max_extra_cost_per_request: float = Field(
        default=0.01, ge=0, le=100, description="USD that hedges may add to one request"
    )


class BreakerConfig(_Doc):
    """Circuit-breaker thresholds (the same for every provider)."""

    # 50 and 10, not 20 and 5: with those, a provider failing 30 % of calls (healthy enough to keep) opened its
    # breaker within 200 calls in 82 % of simulated runs, by chance alone; now 21 %. A provider failing every
    # call opens it after 10 calls instead of 5 (tests/test_breaker_defaults.py).
    window_size: int = Field(default=50, ge=1, le=1000, description="Calls in the sliding window")
    window_duration: int = Field(default=300_000, gt=0, description="Calls older than this leave the window, ms")
    min_calls: int = Field(default=10, ge=1, le=1000, description="Calls counted before the ratio can open it")
    failure_ratio: float = Field(default=0.5, gt=0, le=1)
    break_duration: int = Field(default=30_000, gt=0, description="First open period, ms")
    break_multiplier: float = Field(default=2.0, ge=1, le=100, description="Growth per repeated trip")
    max_break_duration: int = Field(default=600_000, gt=0, description="Cap of the open period, ms")
    billing_break_duration: int = Field(default=3_600_000, gt=0, description="Open period after auth/billing, ms")
    half_open_probes: int = Field(default=1, ge=1, le=100, description="Trial calls admitted when half-open")

    @model_validator(mode="after")
    def _break_within_cap(self) -> BreakerConfig:
        if self.break_duration > self.max_break_duration:
            raise FieldProblem("breakDuration", "must not exceed maxBreakDuration")
        return self


def path_prefix_problem(prefix: str) -> str | None:
    """Why ``prefix`` cannot be a key prefix (``r2.pathPrefix``, ``imagegen storage stats --prefix``), or None."""
    if not _PATH_PREFIX.fullmatch(prefix):
        return "must be folder names of letters, digits, '-' or '_', joined by single '/' (e.g. news/ai)"
    return None


class R2Config(_Doc):
    """Object keys and HTTP caching of stored images (Worker keys)."""

    path_prefix: str = Field(default="ai", min_length=1, max_length=100)
    cache_control: str = Field(default="public, max-age=31536000, immutable", min_length=1, max_length=200)

    @field_validator("path_prefix")
    @classmethod
    def _folder_names(cls, value: str) -> str:
        # "a//b" would make keys with an empty segment, which every store refuses at the first write (after the
        # provider was paid for the image). A trailing "/" is harmless (keys strip it) and older versions
        # stored it: normalised, not refused.
        value = value.rstrip("/")
        problem = path_prefix_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("cache_control")
    @classmethod
    def _one_header_line(cls, value: str) -> str:
        if not _PRINTABLE_ASCII.fullmatch(value):  # a CR or LF would inject a header; S3 refuses the upload
            raise ValueError("must be printable ASCII on one line, e.g. public, max-age=31536000, immutable")
        return value


_PATH_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*(/[A-Za-z0-9][A-Za-z0-9_\-]*)*")
#: The longest overall deadline a config may set (``defaults.timeout``): no request runs longer.
MAX_DEADLINE_MS = 600_000
#: The shortest: less leaves no time to call anyone.
MIN_DEADLINE_MS = 100


def check_received_at(received_at: object) -> None:
    """Refuse ``ImageGen.generate(received_at=...)`` unless it is a finite number (a time of the running loop's
    clock): InvalidRequestError naming it, before anything is logged. QA: NaN left the request's row ``running``
    for good, after a bare ValueError from inside the service."""
    if not is_finite_number(received_at):
        raise InvalidRequestError(
            "received_at",
            f"must be a time of this loop's clock (asyncio.get_running_loop().time()), not {shown_number(received_at)}",
        )


#: The longest ``source`` a request may be logged under (the built-in ones: ``api``, ``cli``, ``console``, …).
MAX_SOURCE_CHARS = 64
#: The longest name of a style (a key of ``styles``: the console lists them, a request names one).
MAX_STYLE_NAME_CHARS = 64
#: Validation context key: the document is a stored version being read, not a new one being saved.
STORED = "stored"


def source_problem(source: object) -> str | None:
    """Why ``source`` cannot name where requests come from in the log (``ImageGen(source=...)``,
    ``generate(source=...)``), or None: it must be 1 to :data:`MAX_SOURCE_CHARS` printable characters. QA: a
    list or a lone surrogate lost the request's log rows, the caller none the wiser."""
    if (
        isinstance(source, str)
        and 0 < len(source) <= MAX_SOURCE_CHARS
        and source.isprintable()
        and non_unicode_at(source) is None
    ):
        return None
    return f"must be 1 to {MAX_SOURCE_CHARS} printable characters (e.g. 'cms'), not {clip(repr(source), 80)}"


def check_call_source(source: object) -> None:
    """Refuse a call's own ``source`` (:func:`source_problem`): InvalidRequestError naming ``source``, before
    anything is logged or called (as a bad ``deadline_s`` is)."""
    problem = source_problem(source)
    if problem is not None:
        raise InvalidRequestError("source", problem)


def check_call_deadline(deadline_s: object) -> None:
    """Refuse a call's own deadline (``ImageGen.generate(deadline_s=...)``) that the config could not set as
    ``defaults.timeout``: InvalidRequestError naming ``deadline_s`` unless it is a finite number of seconds
    from 0.1 to 600."""
    low, high = MIN_DEADLINE_MS / 1000, MAX_DEADLINE_MS / 1000
    if not is_finite_number(deadline_s) or not low <= deadline_s <= high:
        raise InvalidRequestError(
            "deadline_s", f"must be a number of seconds from {low:g} to {high:g}, not {shown_number(deadline_s)}"
        )


def check_log_call_wait(wait_s: object) -> None:
    """Refuse ``ImageGen.log_call(wait_s=...)`` unless it is a number of seconds above 0 and at most 600 (a
    deadline's longest): InvalidRequestError naming ``wait_s``. QA: NaN and 0 blamed the database ("did not
    answer within nan s") and refused the calls after it, -1 ran the call unbounded, a text raised TypeError."""
    high = MAX_DEADLINE_MS / 1000
    if not is_finite_number(wait_s) or not 0 < wait_s <= high:
        raise InvalidRequestError(
            "wait_s", f"must be a number of seconds above 0 and at most {high:g}, not {shown_number(wait_s)}"
        )


_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]+")


class DefaultsConfig(_Doc):
    """Request defaults (Worker keys plus the default size)."""

    timeout: int = Field(
        default=30_000, ge=MIN_DEADLINE_MS, le=MAX_DEADLINE_MS, description="Overall deadline per request, ms"
    )
    image_url: str = Field(
        default="",
        max_length=2_000,
        description="Fixed default image URL (http or https); empty = drawn and stored locally",
    )
    width: int = Field(default=1024, ge=1)
    height: int = Field(default=768, ge=1)

    @field_validator("image_url")
    @classmethod
    def _image_url_is_web_address(cls, url: str) -> str:
        # It is handed to CMSes as the image to publish: an http(s) URL or a path on the CMS's own site
        # ("/static/default.webp"); any other scheme (javascript:, data:) or text would break their pages.
        if url:
            parts = urlsplit(url)
            site_path = not parts.scheme and not parts.netloc and url.startswith("/")
            web = parts.scheme in ("http", "https") and bool(parts.hostname)
            if not (site_path or web) or any(c.isspace() for c in url):
                raise ValueError(f"must be an http(s) URL, a path starting with /, or empty; got {url!r}")
        return url


class LimitsConfig(_Doc):
    """Input and download limits."""

    max_prompt_length: int = Field(default=2_000, ge=1, le=32_000)
    min_size: int = Field(default=64, ge=1)
    # WebP, which every stored image is, cannot hold more per side: a bigger request paid a provider, then failed.
    max_size: int = Field(default=4_096, ge=1, le=WEBP_MAX_SIDE)
    max_download_bytes: int = Field(default=25_000_000, ge=1_000)


class AlertsConfig(_Doc):
    """Thresholds of the alert rules evaluated over the log (``GET /admin/alerts``, ``imagegen alerts``)."""

    provider_success_rate_min: float = Field(
        default=0.5, ge=0, le=1, description="Fire when a provider's attempt success rate is below this"
    )
    provider_window: int = Field(
        default=600_000, gt=0, le=2_592_000_000, description="Look-back of the provider rule, ms"
    )
    error_rate_max: float = Field(default=0.05, ge=0, le=1, description="Fire when failed/finished requests exceed")
    avg_response_ms_max: int = Field(default=10_000, gt=0, description="Fire when the mean request time exceeds, ms")
    window: int = Field(
        default=600_000, gt=0, le=2_592_000_000, description="Look-back of the error-rate and response-time rules, ms"
    )
    min_samples: int = Field(
        default=5, ge=1, le=1_000_000, description="A rule with fewer observations in its window does not fire"
    )


class RateLimitConfig(_Doc):
    """Per-client token bucket on ``POST /images/generate`` (off by default)."""

    enabled: bool = False
    requests_per_minute: int = Field(default=60, ge=1, le=1_000_000, description="Steady refill rate")
    burst: int = Field(default=10, ge=1, le=1_000_000, description="Bucket size: calls allowed back to back")


class ChaosFault(_Doc):
    """Faults injected into one provider's calls (``chaos.providers.<name>``); each rate is a probability."""

    latency_ms: int = Field(default=0, ge=0, le=600_000, description="Extra delay before the call, ms")
    latency_rate: float = Field(default=1.0, ge=0, le=1, description="Share of calls delayed by latencyMs")
    error_rate: float = Field(default=0.0, ge=0, le=1, description="Share of calls failing with errorClass")
    # Not strict: JSON gives the class by its name, which strict mode reads as "not a FailureClass".
    error_class: FailureClass = Field(default=FailureClass.TRANSIENT, strict=False)
    retry_after_ms: int | None = Field(default=None, ge=0, le=600_000, description="Retry-After of injected errors")
    hang_rate: float = Field(default=0.0, ge=0, le=1, description="Share of calls that never answer")
    corrupt_rate: float = Field(default=0.0, ge=0, le=1, description="Share of calls answering a non-image")


class ChaosConfig(_Doc):
    """Fault injection for drills (``imagegen drill``, :mod:`imagegen_core.chaos`); off by default."""

    enabled: bool = False
    seed: int | None = Field(default=None, description="Makes the injected faults reproducible")
    providers: dict[str, ChaosFault] = Field(default_factory=dict)


DEFAULT_STYLES: dict[str, str] = {
    "photo": "{prompt}, editorial photograph, natural light, sharp focus",
    "illustration": "{prompt}, clean editorial illustration, flat colours",
    "watercolor": "{prompt}, watercolor painting, soft edges",
    "3d": "{prompt}, 3D render, soft studio lighting",
    "none": "{prompt}",
}


class RuntimeConfig(_Doc):
    """The whole validated runtime config."""

    providers: dict[str, ProviderConfig]
    race: RaceConfig = RaceConfig()
    breaker: BreakerConfig = BreakerConfig()
    r2: R2Config = R2Config()
    defaults: DefaultsConfig = DefaultsConfig()
    limits: LimitsConfig = LimitsConfig()
    styles: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_STYLES))
    alerts: AlertsConfig = AlertsConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()
    chaos: ChaosConfig = ChaosConfig()

    @field_validator("styles", mode="before")
    @classmethod
    def _drop_removed_styles(cls, styles: Any) -> Any:
        # Styles merge over the built-in ones like every section; ``"photo": null`` removes one.
        if isinstance(styles, Mapping):
            return {name: template for name, template in styles.items() if template is not None}
        return styles

    @field_validator("styles")
    @classmethod
    def _styles_have_placeholder(cls, styles: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        # A version stored before the names' limit (2026-12-01) keeps working after an upgrade (QA: it was
        # "invalid now", and an older version with a provider since removed came back in force).
        stored = bool(info.context and info.context.get(STORED))
        for name, template in styles.items():
            if not name.strip():
                raise ValueError("a style needs a name (an empty or blank one cannot be chosen)")
            if not stored and (len(name) > MAX_STYLE_NAME_CHARS or not name.isprintable()):
                # QA: a 300-character name was taken, then printed whole in the console's lists and messages.
                raise ValueError(
                    f"a style name is 1 to {MAX_STYLE_NAME_CHARS} printable characters, not {clip(repr(name), 60)}"
                )
            if "{prompt}" not in template:
                raise FieldProblem(name, "must contain {prompt}")
        return styles

    @model_validator(mode="after")
    def _sizes_consistent(self) -> RuntimeConfig:
        lim = self.limits
        if lim.min_size > lim.max_size:
            raise FieldProblem("limits.minSize", f"must not exceed limits.maxSize ({lim.max_size})")
        for side in ("width", "height"):
            value = getattr(self.defaults, side)
            if not lim.min_size <= value <= lim.max_size:
                raise FieldProblem(f"defaults.{side}", f"must be within limits.minSize..limits.maxSize, got {value}")
        # As a request of that size is refused (validation.resolve_request): such defaults refused every request
        # that names no size (QA, embedding: limits.maxSize raised to 16383 allows the sides).
        if (too_many := too_many_pixels(self.defaults.width, self.defaults.height)) is not None:
            side, why = too_many
            raise FieldProblem(f"defaults.{side}", why)
        unknown = sorted(set(self.chaos.providers) - set(self.providers))
        if unknown:
            raise FieldProblem(f"chaos.providers.{unknown[0]}", "no such entry under providers")
        # Names are read without regard to case (generate's "provider", the breakers' commands): two entries
        # "mine" and "MINE" made "force-open MINE" open mine's breaker (QA).
        by_folded: dict[str, str] = {}
        for name in self.providers:
            first = by_folded.setdefault(name.casefold(), name)
            if first != name:
                raise FieldProblem(
                    f"providers.{name}",
                    f"differs from providers.{first} only in case, and provider names are read without regard to "
                    "case: rename one",
                )
        return self

    def provider_type(self, name: str) -> str:
        """The implementation (entry-point name) behind the entry ``providers.<name>``."""
        return self.providers[name].type or name

    def to_document(self) -> dict[str, Any]:
        """The full document with wire (camelCase) keys, as stored and served. A built-in style that was
        removed appears as ``null``: documents merge over the defaults, which would bring it back."""
        document = self.model_dump(mode="json", by_alias=True)
        for name in DEFAULT_STYLES.keys() - self.styles.keys():
            document["styles"][name] = None
        return document


DEFAULT_DOCUMENT: dict[str, Any] = {
    "providers": {
        "replicate": {
            "enabled": True,
            "timeout": 20_000,
            "retries": 1,
            "priority": 1,
            "costPerImage": 0.003,
            "model": "black-forest-labs/flux-schnell",
        },
        "fal": {
            "enabled": True,
            "timeout": 15_000,
            "retries": 1,
            "priority": 2,
            "costPerImage": 0.003,
            "model": "fal-ai/flux/schnell",
            "options": {"mode": "queue"},
        },
        "unsplash": {"enabled": True, "timeout": 5_000, "retries": 1, "priority": 3, "costPerImage": 0.0},
        # GPT image generation is slow (tens of seconds): a late fallback, and only with OPENAI_API_KEY set.
        "openai": {
            "enabled": True,
            "timeout": 60_000,
            "retries": 0,
            "priority": 4,
            "costPerImage": 0.04,
            "model": "gpt-image-1",
        },
        # Black Forest Labs' own API, only with BFL_API_KEY set. FLUX.2 [pro] bills per megapixel, about 0.03 USD
        # for the sizes asked: over what a hedge may add, so it only fails over; and its tasks cannot be cancelled.
        "bfl": {
            "enabled": True,
            "timeout": 30_000,
            "retries": 0,
            "priority": 5,
            "costPerImage": 0.03,
            "model": "flux-2-pro",
        },
        # Stability AI's Stable Image Core, only with STABILITY_API_KEY set: 3 credits (0.03 USD) an image, so
        # it only fails over too. The image comes inline: nothing to download.
        "stability": {
            "enabled": True,
            "timeout": 20_000,
            "retries": 0,
            "priority": 6,
            "costPerImage": 0.03,
            "model": "core",
        },
        # Drawn locally; switched on automatically when no networked provider has credentials.
        "offline": {"enabled": False, "timeout": 5_000, "retries": 0, "priority": 9, "costPerImage": 0.0},
    },
    # Here too, so that a document adding a style keeps the built-in ones (partial documents merge).
    "styles": dict(DEFAULT_STYLES),
}


def deep_merge(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``patch`` merged in: nested mappings merge, everything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _field_and_message(err: Any) -> tuple[str, str]:
    """The dotted wire path of one pydantic error and its message (a FieldProblem adds its own field)."""
    loc = [str(p) for p in err["loc"]]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, FieldProblem):
        return ".".join([*loc, cause.field]), cause.message
    if err["type"] == "model_type":  # "Input should be a valid dictionary or instance of ProviderConfig" (QA)
        said = "must be a JSON object"
        if len(loc) == 2 and loc[0] == "providers":  # {"providers": {"x": null}}, meant to remove it
            # QA: a built-in left out of a document comes back with its defaults, so "leave it out" alone misled.
            said += (
                ' (a provider\'s settings: to turn one off, give it {"enabled": false}; one you added is removed by'
                " leaving it out of a whole config: PUT, or imagegen config set)"
            )
        return ".".join(loc), said
    return ".".join(loc), err["msg"].removeprefix("Value error, ")


def _format_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field, msg = _field_and_message(err)
        parts.append(f"{field}: {msg}" if field else msg)
    return "; ".join(parts)


def _options_follow_the_type(base: Mapping[str, Any], document: Mapping[str, Any], merged: dict[str, Any]) -> None:
    """Options belong to an implementation: an entry whose ``type`` the document changes keeps only the
    options the document gives, not the old type's (fal's ``mode`` means nothing to a fake provider)."""
    patch = document.get("providers")
    if not isinstance(patch, Mapping) or not isinstance(merged.get("providers"), dict):
        return
    before = base.get("providers") if isinstance(base.get("providers"), Mapping) else {}
    for name, entry in patch.items():
        old = before.get(name) if isinstance(before, Mapping) else None
        if not isinstance(entry, Mapping) or "type" not in entry or not isinstance(old, Mapping):
            continue
        if (entry["type"] or name) != (old.get("type") or name) and isinstance(merged["providers"].get(name), dict):
            merged["providers"][name]["options"] = copy.deepcopy(entry.get("options") or {})


def missing_keys(document: Mapping[str, Any], *, whole: Mapping[str, Any] | None = None) -> list[str]:
    """The keys of the built-in defaults (as a whole document) that ``document`` lacks, dotted, outermost
    only: in a document meant as the whole config, each is a key removed that would come back with its
    default value, since documents merge over the defaults. With ``whole`` (the document an editor started
    from), its keys too: a custom style or provider left out would silently be gone instead."""

    def walk(full: Mapping[str, Any], given: Mapping[str, Any], prefix: str) -> list[str]:
        missing = []
        for key, value in full.items():
            if key not in given:
                missing.append(prefix + key)
            elif isinstance(value, Mapping) and isinstance(given[key], Mapping):
                missing += walk(value, given[key], f"{prefix}{key}.")
        return missing

    missing = walk(parse_config(None).to_document(), document, "")
    if whole is not None:
        missing += [key for key in walk(whole, document, "") if key not in missing]
    return missing


def removed_entries(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, list[str]]:
    """Per top-level section (``providers``, ``styles``, …), the names ``before`` has and ``after`` lacks, in
    ``before``'s order; sections that lose nothing are left out. Sections of fixed fields (``race``) never lose
    one once parsed, so this finds the named entries a replacing document dropped: custom providers and styles,
    which the defaults do not bring back."""
    removed: dict[str, list[str]] = {}
    for section, old in before.items():
        new = after.get(section)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            gone = [str(name) for name in old if name not in new]
            if gone:
                removed[str(section)] = gone
    return removed


def changed_keys(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two documents (added and removed ones included)."""

    def walk(old: Any, new: Any, prefix: str) -> list[str]:
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            return [
                path
                for key in dict.fromkeys([*old, *new])
                for path in walk(old.get(key), new.get(key), prefix + str(key) + ".")
            ]
        return [] if old == new else [prefix.rstrip(".")]

    return walk(before, after, "")


def parse_config(
    document: Mapping[str, Any] | None = None,
    *,
    base: Mapping[str, Any] | None = None,
    known_providers: Iterable[str] | None = None,
    stored: bool = False,
) -> RuntimeConfig:
    """Deep-merge ``document`` over ``base`` (default: the built-in defaults) and validate it.

    ``known_providers`` (entry-point names) lets unknown provider types be refused by name. ``stored``: the
    document is a stored version being read, which rules added after it was stored do not refuse where they
    only keep new documents tidy (a style name's length); a new document gets every rule.
    """
    if document is not None and not isinstance(document, Mapping):
        raise ConfigError("config document must be a JSON object", field="(root)")
    if document is not None:
        if nested_over(document):  # before anything below recurses into it
            raise ConfigError(f"config document is nested too deeply (over {MAX_JSON_DEPTH} levels)", field="(root)")
        _refuse_bad_values(document)
    base = base if base is not None else DEFAULT_DOCUMENT
    merged = deep_merge(base, document or {})
    _options_follow_the_type(base, document or {}, merged)
    try:
        config = RuntimeConfig.model_validate(merged, context={STORED: stored})
    except ValidationError as exc:
        raise ConfigError(
            f"invalid config: {_format_errors(exc)}", field=_field_and_message(exc.errors()[0])[0] or None
        ) from None
    if known_providers is not None:
        known = set(known_providers)
        for name in config.providers:
            kind = config.provider_type(name)
            if kind not in known:
                near = closest_name(kind, known, cutoff=0.75)
                maybe = f"did you mean {near!r}? " if near else ""  # QA: "FAL" got no hint
                raise ConfigError(
                    f"invalid config: providers.{name}: unknown provider type {kind!r} "
                    f"({maybe}known: {', '.join(sorted(known))})",
                    field=f"providers.{name}",
                )
    return config


def _refuse_bad_values(document: Mapping[str, Any]) -> None:
    """Every string of the document (keys too) must be real Unicode: JSON's "\ud800" is a lone surrogate, which a
    style would pass on to every provider (each call failing) and no response can encode. Every number must be
    finite: Python's JSON reads ``1e400`` as inf and ``NaN`` as nan, which passed every range check, were stored
    as JSON null and then failed every later change or every generate (QA). One walk; a string's problem is
    said before a number's, wherever they stand."""
    non_finite: tuple[str, Any] | None = None
    for path, value, is_key in _leaves(document, ""):
        if isinstance(value, str) and (position := non_unicode_at(value)) is not None:
            field = _shown_path(path)
            raise ConfigError(
                f"invalid config: {field}: character {position} is not valid Unicode (a lone surrogate)", field=field
            )
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if non_finite is None and not is_key and numeric and not is_finite(value):
            non_finite = (path, value)
    if non_finite is not None:
        field = _shown_path(non_finite[0])
        raise ConfigError(
            f"invalid config: {field}: must be a finite number, got {shown_number(non_finite[1])}", field=field
        )


def _leaves(value: Any, path: str) -> Iterator[tuple[str, Any, bool]]:
    """Each key and each value that is neither an object nor an array, with its path and whether it is a key
    (a key has the path of its item), depth first."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            yield where, key, True
            yield from _leaves(item, where)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}[{index}]")
    else:
        yield path, value, False


def _shown_path(path: str) -> str:
    """A path as a message's field: printable (a lone surrogate escaped), ``(root)`` for the document."""
    return path.encode("utf-8", "backslashreplace").decode("utf-8") or "(root)"


def parse_stored(document: Any, parse: Callable[[Mapping[str, Any]], RuntimeConfig] = parse_config) -> RuntimeConfig:
    """A stored version's document through ``parse``. It must be a JSON object: ``null``, a list, or text
    that is not JSON (a row written by hand) is refused, never read as "the defaults"."""
    if not isinstance(document, Mapping):
        what = "not JSON" if isinstance(document, str) else f"JSON {json.dumps(document)[:40]}, not an object"
        raise ConfigError(f"the stored document is {what}", field="(root)")
    return parse(stored_in_current_form(document))


#: The highest ``limits.maxSize`` an imagegen before 2026-11-30 accepted: one past what WebP holds.
_OLD_MAX_SIZE = 16_384


def stored_in_current_form(document: Mapping[str, Any]) -> Mapping[str, Any]:
    """A stored version's document with the values an older imagegen stored that this one spells differently
    brought up to date: ``limits.maxSize`` 16384 (the old bound) is :data:`~imagegen_core.images.WEBP_MAX_SIDE`.

    Why: refused, it made every version stored with it invalid after an upgrade (QA), so the config in force fell
    back to an older version or to the defaults, losing custom providers and styles, over a size no request ever
    got an image at (WebP cannot hold it). New documents are still refused with it (``config set``, the API)."""
    limits = document.get("limits")
    if not isinstance(limits, Mapping) or type(limits.get("maxSize")) is not int:
        return document
    if limits["maxSize"] != _OLD_MAX_SIZE:
        return document
    return {**document, "limits": {**limits, "maxSize": WEBP_MAX_SIDE}}


def newest_valid_config(
    versions: Iterable[tuple[int, Any]],
    parse: Callable[[Mapping[str, Any]], RuntimeConfig] = parse_config,
) -> tuple[int, RuntimeConfig] | None:
    """The first of ``versions`` (stored documents with their ids, newest first) that ``parse`` accepts, as
    ``(id, config)``; None when none does. A newer imagegen sharing the log DB may store one this refuses."""
    for version, document in versions:
        try:
            return version, parse_stored(document, parse)
        except ConfigError:
            continue
    return None


#: The keys of ``GET /admin/config``'s answer, none of which a config document has.
_EDIT_KEYS = frozenset({"version", "config", "inForceVersion"})


def unwrap_edited(document: Mapping[str, Any]) -> tuple[Mapping[str, Any], int | None]:
    """A document and the version it is based on (None: not said). ``GET /admin/config``'s answer,
    ``{version, config, inForceVersion}``, edited and sent back (to the API, or saved to a file for
    ``imagegen config set``), is its ``config`` based on its ``version`` (0: none was stored); any other
    document is itself, based on nothing."""
    if not _EDIT_KEYS & set(document):  # no config document has those keys: it is itself
        return document, None
    # Part of GET's answer (QA: a forgotten version, or a stray key beside them, was a config document with
    # unknown sections: "config: Extra inputs are not permitted").
    if "version" not in document:
        raise ConfigError(
            "missing: an edit of GET /admin/config's answer keeps its version (null when none was stored); or send"
            " the config document alone",
            field="version",
        )
    if "config" not in document:
        raise ConfigError(
            "missing: the config document, beside the version it is based on; or send the document alone",
            field="config",
        )
    if stray := sorted(set(document) - _EDIT_KEYS):
        raise ConfigError(
            f"unknown key beside version and config (GET /admin/config answers {', '.join(sorted(_EDIT_KEYS))})",
            field=clip(str(stray[0]), 60),
        )
    version, config = document["version"], document["config"]
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise ConfigError(f"must be the version GET answered (a number or null), got {version!r}", field="version")
    if not isinstance(config, Mapping):
        raise ConfigError("must be a JSON object", field="config")
    return config, version or 0


#: What :func:`load_document_file` reads at most: the largest body the HTTP API can be set to take
#: (``IMAGEGEN_MAX_BODY_BYTES``); what may be stored is checked when storing (``ImageGen.set_config``).
MAX_CONFIG_FILE_BYTES = 16 * 1024 * 1024


def load_document_file(path: Path) -> dict[str, Any]:
    """Read a JSON config document from ``path`` (UTF-8, with or without a byte-order mark); a missing file
    or bad JSON is a one-line ConfigError."""
    try:
        info = path.stat()
        # Before opening: a FIFO blocks the open itself, and /dev/zero is read for ever (QA: `config set /dev/zero`
        # never returned); a 50 MB document was read, stored and loaded by every process after it.
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file (a device, a FIFO or a socket)"
            raise ConfigError(f"config file {path} is {kind}: name a JSON file")
        if info.st_size > MAX_CONFIG_FILE_BYTES:
            raise ConfigError(
                f"config file {path} holds {info.st_size:,} bytes: a config document is a few KiB (at most "
                f"{MAX_CONFIG_FILE_BYTES // 1024 // 1024} MiB are read)"
            )
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid UTF-8 (byte {exc.start}): save it as UTF-8") from None
    try:
        data = parse_json_text(text)
    except JsonTextError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    return data
