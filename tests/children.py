"""Forked children in tests: wait for one without hanging the suite."""

from __future__ import annotations

import os
import time

import pytest


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
