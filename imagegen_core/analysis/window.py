"""The time range and provider filter every analysis function accepts, normalised once."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, time
from typing import Any


def to_epoch(value: Any) -> float | None:
    """Unix seconds from Unix seconds, a datetime, a date (its midnight) or an ISO 8601 string such as
    ``"2026-11-22"`` or ``"2026-11-22T08:00"``; naive times are taken as UTC, like the log's."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"not a date or time: {value!r} (e.g. '2026-11-22' or '2026-11-22T08:00')") from None
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time())
    if not isinstance(value, datetime):
        raise TypeError(
            f"since/until take Unix seconds, a datetime, a date or an ISO 8601 string, not {type(value).__name__}"
        )
    moment: datetime = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return moment.timestamp()


def provider_list(providers: str | Iterable[str] | None) -> list[str] | None:
    """``None`` (every provider), or the names as a list (a single name may be passed as a string)."""
    if providers is None:
        return None
    return [providers] if isinstance(providers, str) else list(providers)
