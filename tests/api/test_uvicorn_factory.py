"""uvicorn run directly (``uvicorn --factory ...``), not through ``imagegen serve``: a bad setting or log folder
is one line that says what to fix, not a traceback, and ``server_app`` serves with several workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.pgcluster import free_port

from .serve_process import serve, serve_env

CREATE_APP = "imagegen_core.api:create_app"
SERVER_APP = "imagegen_core.cli_serve:server_app"


def uvicorn(factory: str, *args: str) -> list[str]:
    """``python -m uvicorn --factory FACTORY`` on 127.0.0.1, port 0 unless ARGS say otherwise."""
    return [sys.executable, "-m", "uvicorn", "--factory", factory, "--host", "127.0.0.1", *(args or ("--port", "0"))]


def run_uvicorn(factory: str, *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """uvicorn expected to exit by itself (a refusal)."""
    command = uvicorn(factory)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_create_app_over_a_log_folder_blocked_by_a_file_fails_in_one_line(tmp_path: Path) -> None:
    """Regression: uvicorn logged the whole traceback Starlette hands it for a failed startup."""
    (tmp_path / "blocker").write_text("a file where the log folder should be")
    proc = run_uvicorn(CREATE_APP, cwd=tmp_path, env=serve_env(tmp_path / "blocker" / "home"))

    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and 'File "' not in proc.stderr, proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if "imagegen" in line]
    assert line.startswith("ERROR:    imagegen cannot start: cannot create the log folder "), line
    assert "is a file, not a folder; set IMAGEGEN_HOME" in line


def test_server_app_refuses_a_bad_setting_in_one_line_with_status_2(tmp_path: Path) -> None:
    env = serve_env(tmp_path / "home", IMAGEGEN_PUBLIC_BASE_URL="ftp://images.example")
    proc = run_uvicorn(SERVER_APP, cwd=tmp_path, env=env)

    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "imagegen: invalid setting IMAGEGEN_PUBLIC_BASE_URL: must be an http:// or https:// URL with a host, "
        "got 'ftp://images.example'"
    ]


def test_server_app_makes_the_production_checks_of_imagegen_serve(tmp_path: Path) -> None:
    proc = run_uvicorn(SERVER_APP, cwd=tmp_path, env=serve_env(tmp_path / "home", IMAGEGEN_ENV="production"))

    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 3, proc.stderr
    assert all(line.startswith("imagegen: refusing to start in production: ") for line in lines)


def test_server_app_serves_the_api_with_two_workers(tmp_path: Path) -> None:
    port = free_port()  # free a moment ago: uvicorn binds it itself
    env = serve_env(tmp_path / "home")
    command = uvicorn(SERVER_APP, "--port", str(port), "--workers", "2")
    log = tmp_path / "uvicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_live(base, proc, log)
        answer = httpx.post(f"{base}/images/generate", json={"prompt": "harbour cranes at dawn"}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["success"] is True and answer.json()["provider"] == "offline"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def test_server_app_prints_its_setup_warnings_as_json_lines(tmp_path: Path) -> None:
    """Regression (last leftover of the QA's "serve's start lines are JSON"): under ``uvicorn --factory`` the
    setup warnings came as plain ``imagegen: warning: …`` text among the server's JSON lines, because logging
    was set up only after them."""
    port = free_port()
    env = serve_env(tmp_path / "home", LOG_LEVEL="WARNING")  # the local store without a public URL: a warning
    log = tmp_path / "uvicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(uvicorn(SERVER_APP, "--port", str(port)), cwd=tmp_path, env=env, stderr=out)
    try:
        wait_live(f"http://127.0.0.1:{port}", proc, log)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lines = log.read_text().splitlines()
    warned = [line for line in lines if "file:// URLs that only this machine can open" in line]
    assert len(warned) == 1, lines
    entry = json.loads(warned[0])
    assert entry["level"] == "WARNING" and entry["message"].startswith("images would be answered as file:// URLs")
    assert not [line for line in lines if line.startswith("imagegen:")], lines


def broken_plugin_path(root: Path) -> str:
    """A folder holding an installed distribution whose ``imagegen.providers`` entry point does not import (as
    pip would leave it: a ``.dist-info`` with ``entry_points.txt``), for ``PYTHONPATH``."""
    dist = root / "site" / "broken_imagegen_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-imagegen-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[imagegen.providers]\nbroken = broken_plugin_not_there:Provider\n")
    return str(root / "site")


def test_serve_s_start_is_json_lines_with_a_plugin_that_does_not_load(tmp_path: Path) -> None:
    """QA: with a provider plugin that fails to load, ``imagegen serve``'s first line was a plain ``imagegen:
    warning: provider type 'broken' …`` before the JSON ones (logging was set up after the ImageGen was built)."""
    paths = [broken_plugin_path(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = serve_env(tmp_path / "home", PYTHONPATH=os.pathsep.join(paths))
    with serve(cwd=tmp_path, env=env) as server:  # its helper reads every line up to the serving one as JSON
        assert httpx.get(f"{server.base_url}/health/live", timeout=10).status_code == 200
    lines = server.log.read_text().splitlines()
    (warned,) = [line for line in lines if "provider type 'broken'" in line]
    assert json.loads(warned)["level"] == "WARNING", warned
    assert not [line for line in lines if line.startswith("imagegen:")], lines


def wait_live(base: str, proc: subprocess.Popen[bytes], log: Path, *, ready_s: float = 60) -> None:
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"uvicorn exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(f"{base}/health/live", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError(f"uvicorn was not ready within {ready_s} s:\n{log.read_text()[-3000:]}")
