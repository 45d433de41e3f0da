"""Forked children in tests: one request as a child's whole life, and waiting for one without hanging the
suite."""

from __future__ import annotations

import asyncio
import os
import time
import traceback
from typing import TYPE_CHECKING, Literal

import pytest

if TYPE_CHECKING:
    from imagegen_core import ImageGen


def generate_in_child(gen: ImageGen, *, calls: Literal["generate_sync", "generate"] = "generate_sync") -> None:
    """A forked child's body: one request through ``calls``, then close (which writes its rows); reports through
    the exit code (0 answered, 2 failed, 1 raised) and leaves without pytest's clean-up."""
    code = 1
    try:
        request = {"prompt": "child", "width": 64, "height": 64}
        result = gen.generate_sync(request) if calls == "generate_sync" else asyncio.run(gen.generate(request))
        gen.close()
        code = 0 if result.success else 2
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def child_exit_code(pid: int, *, timeout_s: float, what: str) -> int:
    """The exit code of the forked child ``pid``, polled for ``timeout_s`` at most (a generous bound: a child
    that hangs fails the test as ``what`` instead of hanging the suite; it is killed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail(what)
