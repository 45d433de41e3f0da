"""A process killed outright (``kill -9``, the OOM killer) while another one holds the SQLite log's write lock
loses no more than :data:`~imagegen_core.log.writer.SPILL_AFTER_S` of rows: past that, its rows are on disk in
the spill, and the next process on the same home writes them to the log. QA: the rows waited in the writer's
memory through 120 s of retries, and a process killed meanwhile lost them all."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from imagegen_core import ImageGen, Settings
from imagegen_core.log.writer import SPILL_AFTER_S

CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    from imagegen_core import ImageGen, Settings

    async def main() -> None:
        gen = ImageGen.from_settings(Settings(_env_file=None))
        await gen.generate({"prompt": "before", "width": 64, "height": 64})
        await gen.flush()
        print(json.dumps({"db": str(gen.log.path), "spill": str(gen.log_spill.root)}), flush=True)
        sys.stdin.readline()  # the parent now holds the log's write lock
        answer = await gen.generate({"prompt": "during", "width": 64, "height": 64})
        print(json.dumps({"success": answer.success}), flush=True)
        await asyncio.sleep(3600)  # killed long before

    asyncio.run(main())
    """
)


def kept_calls(spill: Path) -> list[str]:
    """The names of the calls kept in ``spill``'s files (``start_request``, ``finish_request``, …), oldest first."""
    files = sorted(p for p in spill.glob("*.jsonl") if not p.name.startswith(".")) if spill.is_dir() else []
    return [json.loads(line)["call"] for path in files for line in path.read_text("utf-8").splitlines()]


def test_a_process_killed_during_a_long_lock_loses_no_row(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"IMAGEGEN_HOME": str(home), "PATH": "/usr/bin:/bin"}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        paths = json.loads(child.stdout.readline())
        spill = Path(paths["spill"])
        other = sqlite3.connect(paths["db"], isolation_level=None)  # another process's long write transaction
        try:
            other.execute("BEGIN IMMEDIATE")
            child.stdin.write("go\n")
            child.stdin.flush()
            assert json.loads(child.stdout.readline()) == {"success": True}
            answered = time.monotonic()
            # The rows reach the disk while the lock is still held: the killed process must not be the one that
            # ends the request. Waited for up to its last row (the first file may hold its start alone: the
            # rows queued while that batch waited for the lock follow it into the spill a moment later).
            while "finish_request" not in kept_calls(spill):
                assert time.monotonic() - answered < SPILL_AFTER_S + 20, "the rows never reached the spill"
                time.sleep(0.1)
            took = time.monotonic() - answered
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            other.execute("ROLLBACK")
        finally:
            other.close()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    # The window is the writer's, not two minutes of retries: generous for a loaded machine.
    assert took < SPILL_AFTER_S + 10, took
    with ImageGen.from_settings(Settings(_env_file=None, IMAGEGEN_HOME=str(home))) as following:
        until(lambda: following.log_spill.waiting() == 0)
        rows = following.log.query("SELECT prompt, status FROM requests ORDER BY created_at")
        assert [(r["prompt"], r["status"]) for r in rows] == [("before", "success"), ("during", "success")]
        attempts = following.log.query(
            "SELECT a.outcome FROM attempts a JOIN requests r ON r.id = a.request_id WHERE r.prompt = 'during'"
        )
        assert [r["outcome"] for r in attempts] == ["success"]


def until(condition: Callable[[], bool], *, timeout_s: float = 20.0) -> None:
    """Poll ``condition`` until true; fail after ``timeout_s``."""
    give_up = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < give_up, "timed out"
        time.sleep(0.05)
