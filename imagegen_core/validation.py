"""Checks of a GenerateRequest against the runtime config's limits and styles."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from .config import RuntimeConfig
from .errors import InvalidRequestError, clip
from .images import too_many_pixels
from .models import GenerateRequest
from .providers.base import ProviderJob

_MAX_TAG_CHARS = 200


@dataclass(frozen=True, slots=True)
class ResolvedRequest:
    """A validated request with defaults filled in and the style template applied to the prompt."""

    prompt: str
    final_prompt: str
    width: int
    height: int
    style: str | None
    keyword: str | None
    article_id: str | None
    provider: str | None = None

    def job(self, request_id: str, timeout_s: float, *, max_image_bytes: int | None = None) -> ProviderJob:
        """The provider job for this request (the race fills in each attempt's budget and options);
        ``max_image_bytes``: ``limits.maxDownloadBytes``."""
        return ProviderJob(
            request_id=request_id,
            prompt=self.final_prompt,
            width=self.width,
            height=self.height,
            timeout_s=timeout_s,
            keyword=self.keyword,
            max_image_bytes=max_image_bytes,
        )


def _check_tag(field: str, value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if len(value) > _MAX_TAG_CHARS:
        raise InvalidRequestError(field, f"is {len(value)} characters; the limit is {_MAX_TAG_CHARS}")
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise InvalidRequestError(field, "must not contain control characters")
    return value or None


#: Unicode categories that show nothing on their own: format characters (zero-width space and joiners,
#: direction marks), controls, separators, surrogates, private-use and unassigned code points.
_INVISIBLE = frozenset({"Cf", "Cc", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})


def resolve_request(req: GenerateRequest, config: RuntimeConfig) -> ResolvedRequest:
    """Validate ``req`` against ``config`` (prompt length, size range, known style) and fill defaults.

    Raises InvalidRequestError naming the wire field, with a message that says what is allowed.
    """
    limits = config.limits
    prompt = req.prompt.strip()
    if not prompt:
        raise InvalidRequestError("prompt", "must not be empty")
    if not any(unicodedata.category(ch) not in _INVISIBLE for ch in prompt):
        raise InvalidRequestError("prompt", "must not be empty (it has no visible character)")
    if len(prompt) > limits.max_prompt_length:
        raise InvalidRequestError(
            "prompt", f"is {len(prompt)} characters; the limit is {limits.max_prompt_length} (limits.maxPromptLength)"
        )
    if "\x00" in prompt:
        raise InvalidRequestError("prompt", "must not contain NUL characters")
    sizes = {"width": req.width or config.defaults.width, "height": req.height or config.defaults.height}
    for field, value in (("width", req.width), ("height", req.height)):
        if value is not None and not limits.min_size <= value <= limits.max_size:
            raise InvalidRequestError(
                # A JSON integer may have thousands of digits: the error shows a few (QA: a 4 KB answer).
                field,
                f"must be between {limits.min_size} and {limits.max_size} pixels, got {clip(str(value), 20)}",
            )
    # No image that large is ever decoded, so no provider could answer it; and the default image drawn for it took
    # 45 s and 6 GB (QA, embedding: limits.maxSize raised to 16383, a request of 16383x16383).
    if (too_many := too_many_pixels(sizes["width"], sizes["height"])) is not None:
        raise InvalidRequestError(*too_many)
    style = req.style.strip().lower() if req.style else None
    final_prompt = prompt
    if style:
        template = config.styles.get(style)
        if template is None:
            raise InvalidRequestError(
                "style", f"unknown style {clip(req.style or '', 60)!r}; known: {', '.join(sorted(config.styles))}"
            )
        final_prompt = template.replace("{prompt}", prompt)
    return ResolvedRequest(
        prompt=prompt,
        final_prompt=final_prompt,
        width=sizes["width"],
        height=sizes["height"],
        style=style,
        keyword=_check_tag("keyword", req.keyword),
        article_id=_check_tag("articleId", req.article_id),
        provider=_check_provider(req.provider, config),
    )


def entry_named(name: str, names: Iterable[str]) -> str | None:
    """The provider entry among ``names`` that ``name`` names, in the entry's own spelling ("FAL" for "fal"),
    or None. Generate, the admin API and the CLI read provider names alike (QA: generate took "OFFLINE", the
    breaker reset refused it)."""
    name = name.strip()
    names = list(names)
    if name in names:  # first: a config stored before names differing only in case were refused may have both
        return name
    return next((entry for entry in names if entry.casefold() == name.casefold()), None)


def _check_provider(name: str | None, config: RuntimeConfig) -> str | None:
    # The Worker's CMSes send "replicate", "fal" or "unsplash"; any entry of this config is allowed.
    if name is None or not name.strip():
        return None
    found = entry_named(name, config.providers)
    if found is not None:
        return found
    known = ", ".join(sorted(config.providers))
    raise InvalidRequestError("provider", f"unknown provider {clip(name, 60)!r}; known: {known}")
