"""Image providers. Built-ins register under the ``imagegen.providers`` entry-point group, exactly as a
third-party package would; :func:`load_provider_classes` loads them all.

This package is also the plugin author's kit (``__all__``): the base class and types a provider is made of, and
the helpers the built-ins use, so that a plugin's failures are classified as theirs are (QA: a plugin that
classified a 401 itself called it transient, and its breaker never tripped). :func:`send` makes every HTTP call
and turns transport errors and non-2xx answers into :class:`ProviderError` with the right
:class:`FailureClass` (401 ``auth`` and 402 ``billing`` open the breaker at once; 429 ``rate_limited`` with its
Retry-After; 5xx ``transient``; moderation refusals ``content_rejected``); :func:`poll` is the same for a
job's status polls, retried as the official clients do; :func:`json_object` reads an answer's JSON (garbage is
``transient``); :func:`content_rejected` is a refusal on content grounds; the ``check_*`` helpers refuse
options in :meth:`ProviderBase.check_settings`. Loaded on first use: importing this package costs nothing.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from ..lazy import lazy_attributes

_log = logging.getLogger("imagegen")

ENTRY_POINT_GROUP = "imagegen.providers"

#: The plugin author's kit: each name and the module it comes from (imported on first use).
_KIT = {
    "DownloadPolicy": "base",
    "Provider": "base",
    "ProviderBase": "base",
    "ProviderContext": "base",
    "ProviderJob": "base",
    "ProviderOutput": "base",
    "check_choice": "base",
    "check_known_options": "base",
    "check_mapping": "base",
    "check_model_id": "base",
    "check_positive_number": "base",
    "classify_response": "base",
    "content_rejected": "base",
    "expect_mapping": "base",
    "json_body": "base",
    "json_object": "base",
    "looks_like_content_rejection": "base",
    "number_option": "base",
    "parse_retry_after": "base",
    "poll": "base",
    "send": "base",
    "transport_failure": "base",
    "url_path": "base",
    "FailureClass": "..errors",
    "FieldProblem": "..errors",
    "ProviderError": "..errors",
}

__all__ = [
    "ENTRY_POINT_GROUP",
    "DownloadPolicy",
    "FailureClass",
    "FieldProblem",
    "Provider",
    "ProviderBase",
    "ProviderContext",
    "ProviderError",
    "ProviderJob",
    "ProviderOutput",
    "check_choice",
    "check_known_options",
    "check_mapping",
    "check_model_id",
    "check_positive_number",
    "classify_response",
    "content_rejected",
    "expect_mapping",
    "json_body",
    "json_object",
    "load_provider_classes",
    "looks_like_content_rejection",
    "number_option",
    "parse_retry_after",
    "poll",
    "provider_names",
    "send",
    "transport_failure",
    "url_path",
]

if TYPE_CHECKING:
    from ..errors import FailureClass, FieldProblem, ProviderError
    from .base import (
        DownloadPolicy,
        Provider,
        ProviderBase,
        ProviderContext,
        ProviderJob,
        ProviderOutput,
        check_choice,
        check_known_options,
        check_mapping,
        check_model_id,
        check_positive_number,
        classify_response,
        content_rejected,
        expect_mapping,
        json_body,
        json_object,
        looks_like_content_rejection,
        number_option,
        parse_retry_after,
        poll,
        send,
        transport_failure,
        url_path,
    )


__getattr__ = lazy_attributes(__name__, _KIT)


def load_provider_classes() -> tuple[dict[str, Any], dict[str, str]]:
    """The registered provider classes by entry-point name, and why each one that failed to load did (one
    line each, also logged as a warning). QA: one broken plugin's ImportError made every ImageGen fail to
    start, without naming the plugin."""
    classes: dict[str, Any] = {}
    failures: dict[str, str] = {}
    chosen: dict[str, Any] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        first = chosen.setdefault(ep.name, ep)
        if first is ep:
            continue
        # One name registered twice (a plugin taking a built-in's name): the built-in keeps it, else the first
        # found; said once. QA: which one won depended on the order of installation, silently, and a plugin
        # named "fal" would then have been given FAL_KEY.
        built_in = ep.value.startswith("imagegen_core.") and not first.value.startswith("imagegen_core.")
        used, other = (ep, first) if built_in else (first, ep)
        chosen[ep.name] = used
        _log.warning(
            "provider type %r is registered twice (%s and %s): %s is used; give the other entry point another name",
            ep.name,
            used.value,
            other.value,
            used.value,
        )
    for ep in chosen.values():
        try:
            classes[ep.name] = ep.load()
        except Exception as exc:  # anything a third party's import may raise
            failures[ep.name] = f"provider type {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}"
            _log.warning("%s; it cannot race until that is fixed", failures[ep.name])
    return classes, failures


def provider_names() -> list[str]:
    """Registered provider names, without importing their modules."""
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
