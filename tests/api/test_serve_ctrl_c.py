"""Ctrl+C stops ``imagegen serve`` gracefully with status 130, and its last line is a JSON line like the rest of
its log. QA: the server's JSON log ended with a plain "imagegen: interrupted" (and an empty line), which a log
shipper parsing JSON drops or mangles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagegen_core.cli import EXIT_INTERRUPTED

from .serve_process import serve, serve_env


@pytest.mark.parametrize(
    ("workers", "sigint_ignored"),
    [(1, False), (2, False), (1, True)],
    # QA: started by a script in the background (SIGINT ignored), SIGINT stopped it with status 0 and no line
    ids=["1 worker", "2 workers", "started with SIGINT ignored"],
)
def test_ctrl_c_ends_the_servers_log_with_a_json_line_and_status_130(
    tmp_path: Path, workers: int, sigint_ignored: bool
) -> None:
    with serve(
        "--workers",
        str(workers),
        cwd=tmp_path,
        env=serve_env(tmp_path / "home"),
        exit_codes=(EXIT_INTERRUPTED,),
        sigint_ignored=sigint_ignored,
    ) as server:
        server.ctrl_c()
        server.proc.wait(timeout=30)
    lines = server.log.read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line, the last included: not one plain line
    assert entries[-1]["logger"] == "imagegen.serve", lines[-3:]
    assert entries[-1]["message"] == "interrupted (Ctrl+C): the server has stopped"
