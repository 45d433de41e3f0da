"""Times as imagegen's JSON answers give them: the HTTP API's, ``imagegen stats --json`` and ``alerts --json``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload


@overload
def iso(ts: float) -> str: ...
@overload
def iso(ts: None) -> None: ...
def iso(ts: float | None) -> str | None:
    """Unix seconds as an ISO 8601 UTC timestamp to the second (None stays None)."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
