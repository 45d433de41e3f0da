"""The time range and provider filter every analysis function accepts, normalised once."""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time
from typing import Any

from ..errors import AnalysisError, AnalysisTypeError

#: Unix seconds beyond this (the year 5138) are taken for milliseconds: ``time.time() * 1000`` passed by mistake
#: would otherwise select nothing, silently.
MAX_EPOCH_S = 1e11


def to_epoch(value: Any) -> float | None:
    """Unix seconds from Unix seconds, a datetime, a date (its midnight) or an ISO 8601 string such as
    ``"2026-11-22"`` or ``"2026-11-22T08:00"``; naive times are taken as UTC, like the log's. numpy's
    numbers and ``datetime64`` and pandas' ``Timestamp`` count as those (a value taken from a DataFrame is
    one), with the same checks."""
    if value is None:
        return None
    value = _from_numpy(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        seconds = float(value)
        if not math.isfinite(seconds):
            raise AnalysisError(f"since/until must be a finite time in Unix seconds, not {value!r} (None: unbounded)")
        if abs(seconds) >= MAX_EPOCH_S:
            raise AnalysisError(f"since/until take Unix seconds: {value!r} looks like milliseconds (divide by 1000)")
        return seconds
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise AnalysisError(f"not a date or time: {value!r} (e.g. '2026-11-22' or '2026-11-22T08:00')") from None
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time())
    if not isinstance(value, datetime):
        raise AnalysisTypeError(
            f"since/until take Unix seconds, a datetime, a date or an ISO 8601 string, not {type(value).__name__}"
        )
    if value != value:  # pandas' NaT, a datetime that is no time
        raise AnalysisError("since/until must be a time, not NaT (None: unbounded)")
    moment: datetime = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return moment.timestamp()


def _from_numpy(value: Any) -> Any:
    """A numpy ``datetime64`` as a naive datetime (numpy's times have no zone: UTC, as naive ones are here);
    anything else as it is. numpy's numbers are :class:`numbers.Real` already. numpy is looked up, not
    imported: a value cannot be numpy's unless numpy is loaded."""
    numpy = sys.modules.get("numpy")
    if numpy is None or not isinstance(value, numpy.datetime64):
        return value
    if numpy.isnat(value):
        raise AnalysisError("since/until must be a time, not NaT (None: unbounded)")
    moment = value.astype("datetime64[us]").astype(datetime)
    if not isinstance(moment, datetime):  # beyond the years datetime holds (1-9999): numpy gives an int
        raise AnalysisError(f"since/until: {value!r} is out of range")
    return moment


def epoch_range(since: Any, until: Any) -> tuple[float | None, float | None]:
    """``since`` and ``until`` as Unix seconds (:func:`to_epoch`); ValueError when ``since`` is after ``until``
    (the range would select nothing, silently)."""
    start, end = to_epoch(since), to_epoch(until)
    if start is not None and end is not None and start > end:
        raise AnalysisError(f"since ({minutes(start)}) is after until ({minutes(end)}): swap them")
    return start, end


def minutes(epoch_s: float) -> str:
    """A Unix time as ``2026-11-22 18:59 UTC``: what a report's window needs, without its nanoseconds."""
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def window_label(since: Any, until: Any) -> str:
    """The range in words, to the minute: ``2026-11-15 18:59 UTC to 2026-11-22 18:59 UTC``."""
    start, end = epoch_range(since, until)
    return f"{'the beginning' if start is None else minutes(start)} to {'now' if end is None else minutes(end)}"


def provider_list(providers: str | Iterable[str] | None) -> list[str] | None:
    """``None`` (every provider), or the names as a list, each without surrounding spaces (a single name may be
    passed as a string); ValueError, in one line, for anything else (``float("nan")`` ended in a bare TypeError
    deep in the query). An empty list is an error, not "no provider": it returned an empty frame, silently,
    where ``None`` means all of them."""
    if providers is None:
        return None
    if isinstance(providers, str):
        providers = [providers]
    if not isinstance(providers, Iterable) or isinstance(providers, bytes | Mapping):
        raise AnalysisError(f"providers takes a provider name or a list of names (None: every one), not {providers!r}")
    names = list(providers)
    for name in names:
        if not isinstance(name, str):
            raise AnalysisError(f"providers takes provider names (strings), not {name!r}")
        if not name.strip():
            raise AnalysisError(f"providers takes provider names, not a blank one ({name!r})")
    if not names:
        raise AnalysisError("providers is empty: name at least one provider, or pass None for all")
    # " unsplash " (a name pasted from a table, or split from "fal, unsplash") would otherwise match nothing.
    return [name.strip() for name in names]


def same_provider(name: str, other: str) -> bool:
    """Whether two provider names are the same provider: case-insensitively, as the config and the CLI take
    them (``"FAL"`` is ``fal``). The one comparison every filter on provider names uses."""
    return name.casefold() == other.casefold()


def spelled_as_logged(names: Iterable[str], known: Iterable[str]) -> dict[str, list[str]]:
    """Each of ``names`` (from :func:`provider_list`) with the names of ``known`` that are the same provider
    (:func:`same_provider`), the exact spelling first; an empty list for a name that matches none."""
    known = list(known)
    return {
        name: [name] if name in known else [k for k in known if same_provider(k, name)] for name in dict.fromkeys(names)
    }


def match_providers(names: Iterable[str], known: Iterable[str]) -> list[str]:
    """``names`` as the log spells them (:func:`spelled_as_logged`). A name matching none of ``known`` is a
    ValueError naming those: an empty frame for a typo looked like a provider that did nothing."""
    known = list(known)
    matched: list[str] = []
    for name, found in spelled_as_logged(names, known).items():
        if not found:
            have = ", ".join(known) if known else "none yet"
            raise AnalysisError(f"no provider {name!r} in the log (providers with attempts: {have})")
        matched += [k for k in found if k not in matched]
    return matched


def providers_as_logged(names: Iterable[str], known: Iterable[str]) -> list[str]:
    """Like :func:`match_providers`, but a name matching none of ``known`` is kept as it is: for a page
    whose choices include configured providers that have no attempts yet (an empty panel is the truth)."""
    matched: list[str] = []
    for name, found in spelled_as_logged(names, known).items():
        matched += [k for k in (found or [name]) if k not in matched]
    return matched
