"""Calling the progress callbacks a caller hands to ``generate`` (``on_event``) and ``compare``
(``on_update``): the caller's code, run inside the race."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_log = logging.getLogger("imagegen")


def notify(callback: Callable[[T], object] | None, value: T, *, name: str) -> None:
    """Call ``callback(value)``; an exception it raises is logged (with its traceback, for the developer who
    wrote it) and goes no further. Raised into the race, it abandoned providers already paid for, left their
    attempts ``running`` in the log, and logged the request as cancelled though nobody cancelled it."""
    if callback is None:
        return
    try:
        callback(value)
    except Exception:
        _log.warning("the %s callback raised; the request goes on without it", name, exc_info=True)
