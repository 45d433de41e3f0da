"""Calling the progress callbacks a caller hands to ``generate`` (``on_event``) and ``compare``
(``on_update``): the caller's code, run inside the race."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import TypeVar

from .errors import InvalidRequestError

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


def check_callback(callback: object, *, name: str) -> None:
    """Refuse a callback that could never run (InvalidRequestError naming ``name``), before anything is logged:
    one that is not callable, or an ``async def`` one, whose coroutine ``notify`` would create and drop unrun (QA,
    embedding: ``on_event=async_fn`` did nothing but a "coroutine was never awaited" warning, ``on_event=5`` a
    traceback per event)."""
    if callback is None:
        return
    if not callable(callback):
        raise InvalidRequestError(name, f"must be a function taking one argument, not {type(callback).__name__}")
    # An object whose __call__ is ``async def`` too (type(...).__call__: the method, not a bound wrapper).
    if inspect.iscoroutinefunction(callback) or inspect.iscoroutinefunction(type(callback).__call__):
        raise InvalidRequestError(
            name,
            "is an async function, whose coroutine would never run: pass a plain function (it is called on the "
            "event loop's thread; start async work from it with asyncio.get_running_loop().create_task(...))",
        )
