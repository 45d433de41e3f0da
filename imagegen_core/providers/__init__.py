"""Image providers. Built-ins register under the ``imagegen.providers`` entry-point group, exactly as a
third-party package would; :func:`provider_classes` loads them all."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

ENTRY_POINT_GROUP = "imagegen.providers"


def provider_classes() -> dict[str, Any]:
    """Every registered provider class by entry-point name (imports each module on first use)."""
    return {ep.name: ep.load() for ep in entry_points(group=ENTRY_POINT_GROUP)}


def provider_names() -> list[str]:
    """Registered provider names, without importing their modules."""
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
