"""A worker's stop signal that its handler met inside a weakref callback is no traceback in the server's log.

A signal handler runs wherever the main thread happens to be; inside a weakref or ``__del__`` callback an
exception cannot propagate, so Python prints "Exception ignored in: ..." with a traceback. A CI run of
``serve --workers 2`` (SIGTERM, then Ctrl+C) had exactly that among the server's JSON lines: WorkerStopped raised
by the handler inside ``WeakSet._remove``. The handler runs once uvicorn has shut its server down and hands the
signal back, as ``serve`` returns: the event loop's runner still cancels what was left, raised or not.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop

from imagegen_core.api.processes import QuietStopHook, WorkerStopped, _stop_worker


@pytest.fixture(autouse=True)
def sigterm_restored() -> Iterator[None]:
    before = signal.getsignal(signal.SIGTERM)  # _stop_worker ignores later SIGTERMs
    yield
    signal.signal(signal.SIGTERM, before)


class Thing:
    """An object a weakref callback can watch die."""


def stop_signal_in_a_weakref_callback() -> None:
    """Run the worker's handler where the CI run met it: in a weakref callback (there, WeakSet._remove)."""
    thing = Thing()
    watcher = weakref.ref(thing, lambda _: _stop_worker(signal.SIGTERM, None))
    del thing
    assert watcher() is None


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_a_stop_met_in_a_weakref_callback_is_quiet_and_the_requests_left_are_still_cancelled(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], monkeypatch: pytest.MonkeyPatch
) -> None:
    shown: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", QuietStopHook(shown.append))  # as a worker has it
    unwound: list[str] = []

    async def request_in_flight() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            unwound.append("request")  # cancelled: its 503 and its row

    async def serve() -> None:
        asyncio.get_running_loop().create_task(request_in_flight())
        await asyncio.sleep(0)
        stop_signal_in_a_weakref_callback()  # uvicorn's hand-back, as its server returns

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve())
    assert shown == []  # nothing printed
    assert unwound == ["request"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # the supervisor's SIGTERM after it is ignored


def test_any_other_unraisable_goes_to_the_hook_from_before(monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", QuietStopHook(shown.append))

    class Broken:
        def __del__(self) -> None:
            raise ValueError("a real error in a finaliser")

    Broken()
    assert [type(u.exc_value) for u in shown] == [ValueError]


def test_a_stop_anywhere_else_is_raised() -> None:
    with pytest.raises(WorkerStopped):
        _stop_worker(signal.SIGINT, None)


def test_a_worker_process_installs_the_handlers_and_the_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    from imagegen_core.api.processes import WorkerConfig

    installed: dict[int, Any] = {}
    monkeypatch.setattr(signal, "signal", lambda sig, handler: installed.__setitem__(sig, handler))
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # restored after the test
    config = WorkerConfig("imagegen_core.api:create_app", factory=True, log_config=None)
    monkeypatch.setattr(multiprocessing, "parent_process", lambda: object())  # as in a spawned worker
    config.configure_logging()
    assert installed == {signal.SIGINT: _stop_worker, signal.SIGTERM: _stop_worker}
    assert isinstance(sys.unraisablehook, QuietStopHook)
