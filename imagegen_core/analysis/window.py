"""The time range and provider filter every analysis function accepts, normalised once."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime


def to_epoch(value: float | datetime | None) -> float | None:
    """Unix seconds from seconds or a datetime (a naive datetime is taken as UTC, like the log's times)."""
    if value is None or isinstance(value, int | float):
        return None if value is None else float(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def provider_list(providers: str | Iterable[str] | None) -> list[str] | None:
    """``None`` (every provider), or the names as a list (a single name may be passed as a string)."""
    if providers is None:
        return None
    return [providers] if isinstance(providers, str) else list(providers)
