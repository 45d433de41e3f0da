"""The window and provider filter the statistics count over, read once for ``imagegen stats`` and ``GET
/admin/stats``: ``since`` / ``until`` (ISO 8601 dates or date-times, UTC unless they carry an offset), ``days``
and ``provider`` mean the same on both, and are refused for the same reasons.

The window is half-open, ``[since, until)``, as every range of the log's queries and of
:mod:`imagegen_core.analysis` is: an ``until`` of 2026-12-01 ends with November, and one window's ``until`` is
the next one's ``since`` without a row counted twice. A refusal is a :class:`~imagegen_core.errors.StatsWindowError`
naming the option as the surface spells it (``spell``: ``--since`` on the command line, ``since`` in a query
string), which each surface turns into its own (exit 2, a 400).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from .errors import StatsWindowError, clip

if TYPE_CHECKING:
    from .log.db import LogDB

#: The window's length when neither ``days`` nor ``since`` gives its start.
DEFAULT_DAYS = 7

_DAY_S = 86_400


def cli_option(option: str) -> str:
    """An option as ``imagegen stats`` spells it in a message: ``--since``."""
    return f"--{option}"


def query_parameter(option: str) -> str:
    """An option as ``GET /admin/stats`` spells it in a message: ``since``."""
    return option


@dataclass(frozen=True, slots=True)
class StatsWindow:
    """The times counted: Unix seconds ``since`` (included) to ``until`` (excluded); ``days``, the number of days
    counted back from ``until`` when ``days`` (or its default) set the start, None when ``since`` did;
    ``until_now``: ``until`` is the default end (the time the command ran), not one the caller gave."""

    since: float
    until: float
    days: int | None
    until_now: bool

    def heading(self) -> str:
        """The window as ``imagegen stats``' first line says it, to the second, the end marked as left out."""
        span = f"window: {utc_text(self.since)} to {utc_text(self.until)} UTC, end excluded"
        if self.days is None:
            return span
        days = f"{self.days} day{'s' if self.days != 1 else ''}"
        return f"{span} ({'last ' if self.until_now else ''}{days})"


def utc_text(epoch_s: float) -> str:
    """A Unix time as messages and headings show it: ``2026-11-22 08:00:00`` (UTC, to the second)."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d %H:%M:%S")


def stats_window(
    days: int | None,
    since: str | None,
    until: str | None,
    *,
    now: float,
    spell: Callable[[str], str] = cli_option,
    end: str = "now",
) -> StatsWindow:
    """The window the options ask for, ``now`` its end when ``until`` is not given (``end``: what a message calls
    that end); or a :class:`~imagegen_core.errors.StatsWindowError` that says what to change: a time that is no
    ISO 8601 date or date-time, ``days`` with ``since`` (both would set the start), a start not before the end
    (an empty window would read as a log with no requests), or a window beyond the calendar's years 1 to 9999
    (it could not be shown)."""
    if days is not None and since is not None:
        raise StatsWindowError(
            f"{spell('days')} and {spell('since')} both set where the window starts: give one of them", field="days"
        )
    stop = now if until is None else _option_time("until", until, spell)
    if since is None:
        count = DEFAULT_DAYS if days is None else days
        window = StatsWindow(stop - count * _DAY_S, stop, count, until_now=until is None)
    else:
        window = StatsWindow(_option_time("since", since, spell), stop, None, until_now=until is None)
    if not _in_calendar(window.until):
        raise StatsWindowError(
            f"the window ends outside the years 1 to 9999 (UTC): give an {spell('until')} within them", field="until"
        )
    if not _in_calendar(window.since):
        fix = (
            f"give fewer {spell('days')} or a later {spell('until')}"
            if since is None
            else f"give a {spell('since')} within them"
        )
        raise StatsWindowError(
            f"the window starts outside the years 1 to 9999 (UTC): {fix}", field="days" if since is None else "since"
        )
    if window.since >= window.until:
        bound = end if until is None else spell("until")
        later = "" if until is None else f", or a later {spell('until')}"
        raise StatsWindowError(
            f"{spell('since')} ({utc_text(window.since)} UTC) is not before {bound} ({utc_text(window.until)} UTC):"
            f" give a {spell('since')} before {bound}{later}",
            field="since",
        )
    return window


def _in_calendar(epoch_s: float) -> bool:
    """Whether a Unix time is a UTC date-time Python can show (years 1 to 9999)."""
    try:
        datetime.fromtimestamp(epoch_s, UTC)
    except (ValueError, OverflowError, OSError):
        return False
    return True


def _option_time(option: str, text: str, spell: Callable[[str], str]) -> float:
    """``since`` / ``until`` as Unix seconds, read as the analysis layer reads a time
    (:func:`~imagegen_core.analysis.window.to_epoch`: ``datetime.fromisoformat``, UTC unless the text has an
    offset), so that a window means the same in a notebook, on the command line and over HTTP."""
    from .analysis.window import to_epoch
    from .errors import AnalysisError

    try:
        seconds = to_epoch(text)
    except (AnalysisError, OverflowError):
        raise StatsWindowError(
            f"{spell(option)}: {clip(text, 60)!r} is not an ISO 8601 date or date-time: give e.g. 2026-11-22 or"
            " 2026-11-22T08:00 (UTC unless it ends with an offset such as +01:00 or Z)",
            field=option,
        ) from None
    assert seconds is not None  # None is what to_epoch gives for no value, never for a text
    return seconds


def provider_filter(db: LogDB, names: Sequence[str], *, spell: Callable[[str], str] = cli_option) -> list[str] | None:
    """The ``provider`` names as the log spells them (any case, as the config and the analysis layer take them);
    None for every provider (no name given). A name the log has no attempt of is refused, naming those it has:
    an empty answer for a typo would read as a provider that did nothing. One name per value: a comma is part
    of a name, as on the command line."""
    if not names:
        return None
    from .analysis.window import match_providers
    from .errors import AnalysisError
    from .log.history import logged_providers

    if any(not name.strip() for name in names):
        raise StatsWindowError(f"{spell('provider')} takes a provider name, not a blank one", field="provider")
    try:
        return match_providers([name.strip() for name in names], logged_providers(db))
    except AnalysisError as exc:
        raise StatsWindowError(f"{spell('provider')}: {exc}", field="provider") from None
