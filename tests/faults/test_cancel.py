"""Cancelled mid-race, while Replicate (a real server on 127.0.0.1) hangs: the caller gets control back at once,
and the request's row says ``cancelled`` — for a task cancelled in-process and for the ``imagegen generate``
process interrupted by Ctrl-C (SIGINT) or stopped by a supervisor (SIGTERM)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from imagegen_core import ImageGen
from tests.realserver import ScriptedServer, hang, send_json

from .harness import assert_row, db_file, judge, prediction, read_db, replicate_config
from .table import FaultRow, record

DEADLINE_MS = 1500


@pytest.fixture
def hanging() -> Any:
    async def handler(method: str, path: str, writer: asyncio.StreamWriter) -> None:
        await hang(writer)

    with ScriptedServer(handler) as server:
        yield server


async def wait_for_call(server: ScriptedServer) -> None:
    while not server.requests:  # readiness: Replicate has been called, the race is under way
        await asyncio.sleep(0.005)


def rows(path: Path) -> tuple[list[Any], list[Any]]:
    return read_db(path, "SELECT status, error FROM requests"), read_db(path, "SELECT outcome FROM attempts")


async def test_a_task_cancelled_mid_race_returns_at_once_and_is_logged_as_cancelled(
    settings_factory: Any, hanging: ScriptedServer
) -> None:
    settings = settings_factory(REPLICATE_API_TOKEN="r8_test", provider_base_urls={"replicate": hanging.base_url})
    async with ImageGen.from_settings(settings) as gen:
        gen.set_config(replicate_config(deadline_ms=DEADLINE_MS), source="test")
        task = asyncio.create_task(gen.generate({"prompt": "p", "width": 320, "height": 200}))
        await wait_for_call(hanging)
        cancelled_at = time.perf_counter()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        back_ms = (time.perf_counter() - cancelled_at) * 1000
        row = await judge(
            gen,
            "task cancelled mid-race",
            [],
            [back_ms],
            deadline_ms=DEADLINE_MS,
            expected_class="-",
            requests=1,
            attempts=1,
            notes="answered = back after the cancel",
        )
        assert rows(db_file(gen)) == ([("cancelled", "request cancelled before it finished")], [("cancelled",)])
    assert_row(row, breaker="closed")
    assert back_ms <= 50  # the caller has control back at once, not at the deadline


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_the_generate_process_interrupted_mid_race_logs_the_request_as_cancelled(
    tmp_path: Path, hanging: ScriptedServer, signum: int
) -> None:
    home = tmp_path / "cli-home"
    env = {**os.environ, "IMAGEGEN_HOME": str(home), "REPLICATE_API_TOKEN": "r8_test"}
    env["IMAGEGEN_REPLICATE_BASE_URL"] = hanging.base_url
    config = tmp_path / "config.json"
    config.write_text(json.dumps(replicate_config(deadline_ms=DEADLINE_MS)))
    cli = [sys.executable, "-m", "imagegen_core.cli"]
    subprocess.run([*cli, "config", "set", str(config)], env=env, check=True, capture_output=True, timeout=60)
    proc = subprocess.Popen([*cli, "generate", "a lighthouse"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not hanging.requests:  # readiness: the process is in the race
            assert proc.poll() is None and time.monotonic() < deadline, "the CLI never called Replicate"
            time.sleep(0.005)
        called_at = time.perf_counter()
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
        exited_ms = (time.perf_counter() - called_at) * 1000
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and err.splitlines()[-1] == "imagegen: interrupted", err  # not 1 (no image)
    assert "Traceback" not in err and "Aborted" not in err, err
    status, attempts = rows(home / "imagegen.db")
    lost = int(status != [("cancelled", "request cancelled before it finished")]) + int(attempts != [("cancelled",)])
    name = signal.Signals(signum).name
    fault = f"process cancelled mid-race ({name})"
    row = record(
        FaultRow(fault, DEADLINE_MS, exited_ms, "-", [], "closed", lost, 0, "answered = exited after the signal")
    )
    assert_row(row, breaker="closed")  # the row says cancelled, and the process was gone before the deadline


@contextlib.asynccontextmanager
async def racing_a_backup(settings_factory: Any, server: ScriptedServer, **options: Any) -> AsyncIterator[ImageGen]:
    """Replicate (the test's server, with ``options``) racing an instant fake backup in parallel."""
    doc = replicate_config(deadline_ms=5000)
    doc["providers"]["replicate"]["options"] = options
    doc["providers"]["backup"] = {"type": "fake", "priority": 2, "options": {"latencyMs": 1}}
    doc["race"]["mode"] = "parallel"
    settings = settings_factory(REPLICATE_API_TOKEN="r8_test", provider_base_urls={"replicate": server.base_url})
    async with ImageGen.from_settings(settings) as gen:
        gen.set_config(doc, source="test")
        yield gen


async def test_a_replicate_loser_cancelled_while_its_create_call_waits_is_cancelled_on_replicate(
    settings_factory: Any,
) -> None:
    """Regression (QA): Replicate holds the create call open (``Prefer: wait``), so a loser cancelled meanwhile
    had no prediction id, sent no cancel, and its prediction ran on (billed) until ``Cancel-After``. Here a
    real server holds the call 0.6 s while a backup wins at once: the answer does not wait for Replicate, and
    Replicate gets ``POST …/cancel`` as soon as the create call answers."""
    server: ScriptedServer

    async def handler(method: str, path: str, writer: asyncio.StreamWriter) -> None:
        if path.endswith("/cancel"):
            await send_json(writer, 200, prediction(server.base_url, status="canceled"))
        else:
            await asyncio.sleep(0.6)  # the hold of Prefer: wait, the prediction still running
            await send_json(writer, 201, prediction(server.base_url, status="processing"))

    with ScriptedServer(handler) as server:
        async with racing_a_backup(settings_factory, server) as gen:
            started = time.perf_counter()
            result = await gen.generate({"prompt": "p", "width": 320, "height": 200})
            answered_ms = (time.perf_counter() - started) * 1000
            assert result.success and result.provider == "backup"
            assert answered_ms < 500, answered_ms  # not held by Replicate's create call
            give_up = time.monotonic() + 5
            while ("POST", "/v1/predictions/q1w2e3r4t5y6u7i8o9p0asdfgh/cancel") not in server.requests:
                assert time.monotonic() < give_up, server.requests
                await asyncio.sleep(0.02)
        assert [method for method, _ in server.requests] == ["POST", "POST"]  # the create, then its cancel


async def test_a_replicate_loser_whose_create_answer_drips_lets_go_of_its_connection(settings_factory: Any) -> None:
    """QA: a loser's create call, left to answer in the background, was bounded only per read, so an answer
    dripping a byte at a time held its connection as long as the drip went on: 200 of them filled the shared
    client's pool, and healthy providers timed out for minutes. Now the call ends ``wait_s + 5`` s after it
    started (``wait_s`` 1 here), whatever trickles in."""
    let_go = threading.Event()

    async def handler(method: str, path: str, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
        try:
            while True:
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(0.2)
        except ConnectionError:
            let_go.set()
            raise

    with ScriptedServer(handler) as server:
        async with racing_a_backup(settings_factory, server, wait_s=1) as gen:
            started = time.monotonic()
            result = await gen.generate({"prompt": "p", "width": 320, "height": 200})
            assert result.success and result.provider == "backup"
            # The bound is 6 s from the call's start; the drip would go on until the process closes.
            freed = await asyncio.to_thread(let_go.wait, 10)
            assert freed, "the loser's create call still holds its connection"
            assert 5.5 < time.monotonic() - started < 9, time.monotonic() - started
