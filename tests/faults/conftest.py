"""Prints the fault suite's table (and the load figures) at the end of every session that ran any of it, through
the terminal reporter, so the figures show in CI output whether or not ``-s`` is given."""

from __future__ import annotations

import pytest

from .table import LOAD, ROWS, fault_table, load_table


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if ROWS:
        terminalreporter.write_sep("=", "fault suite: every fault answered by the deadline, nothing lost")
        terminalreporter.write_line(fault_table())
    if LOAD:
        terminalreporter.write_sep("=", "load: concurrent generate requests through the HTTP API")
        terminalreporter.write_line(load_table())
