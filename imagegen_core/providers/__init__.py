"""Image providers. Built-ins register under the ``imagegen.providers`` entry-point group, exactly as a
third-party package would; :func:`load_provider_classes` loads them all."""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Any

_log = logging.getLogger("imagegen")

ENTRY_POINT_GROUP = "imagegen.providers"


def load_provider_classes() -> tuple[dict[str, Any], dict[str, str]]:
    """The registered provider classes by entry-point name, and why each one that failed to load did (one
    line each, also logged as a warning). QA: one broken plugin's ImportError made every ImageGen fail to
    start, without naming the plugin."""
    classes: dict[str, Any] = {}
    failures: dict[str, str] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            classes[ep.name] = ep.load()
        except Exception as exc:  # anything a third party's import may raise
            failures[ep.name] = f"provider type {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}"
            _log.warning("%s; it cannot race until that is fixed", failures[ep.name])
    return classes, failures


def provider_names() -> list[str]:
    """Registered provider names, without importing their modules."""
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
