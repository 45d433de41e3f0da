"""``imagegen serve`` as a real subprocess on a free 127.0.0.1 port, for tests that need separate server
processes (several API servers on one database, worker processes, production refusals)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

SERVE = "from imagegen_core.cli import main; main(['serve', '--port', '0', *__import__('sys').argv[1:]])"


def with_sigint_ignored(command: list[str]) -> list[str]:
    """``command`` started as a shell without job control starts a background command (``imagegen serve &`` in a
    script): with SIGINT ignored, which its exec keeps."""
    return ["sh", "-c", "trap '' INT; exec \"$@\"", "sh", *command]


def serve_env(home: Path, **env: str) -> dict[str, str]:
    """The environment of a server: the test runner's, minus any IMAGEGEN_* of the developer's, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGEGEN_", "R2_"))}
    return {**base, "IMAGEGEN_HOME": str(home), "LOG_LEVEL": "WARNING", **env}


def serving_url(line: str) -> str:
    """The URL in the server's first line, a JSON log line ``{"message": "serving on http://… (…)", "url": …}``
    (a plain ``imagegen: serving on …`` line among the JSON ones before, QA)."""
    entry = json.loads(line)
    assert entry["logger"] == "imagegen.serve" and entry["message"].startswith(f"serving on {entry['url']} ("), line
    assert entry["url"].startswith("http://127.0.0.1:"), line
    return str(entry["url"])


def start_warnings(log: Path) -> list[str]:
    """The messages of the server's warnings about its setup (JSON lines of logger ``imagegen.serve``)."""
    found = []
    for line in log.read_text().splitlines():
        entry = json.loads(line) if line.startswith("{") else {}
        if entry.get("logger") == "imagegen.serve" and entry.get("level") == "WARNING":
            found.append(str(entry["message"]))
    return found


def run_serve(*args: str, cwd: Path, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``imagegen serve`` expected to exit by itself (a refusal): its exit code and output."""
    return subprocess.run(
        [sys.executable, "-c", SERVE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


class ServerProcess:
    """A started server: its base URL and process; stderr goes to a file (a pipe could fill and block it)."""

    def __init__(self, proc: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
        self.proc = proc
        self.base_url = base_url
        self.log = log

    def workers(self) -> list[int]:
        """The pids of the server's uvicorn worker processes (multiprocessing's spawned children; its resource
        tracker, also a child, left out)."""
        found: list[int] = []
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(int(pid))
        return found

    def ctrl_c(self) -> None:
        """Ctrl+C as a terminal sends it: SIGINT to the whole process group (the server started one), so to
        ``--workers N``'s worker processes as well as their supervisor."""
        os.killpg(self.proc.pid, signal.SIGINT)


@contextmanager
def serve(
    *args: str,
    cwd: Path,
    env: dict[str, str],
    ready_s: float = 60,
    prelude: str = "",
    exit_codes: tuple[int, ...] = (0, -signal.SIGTERM),
    sigint_ignored: bool = False,
) -> Iterator[ServerProcess]:
    """Start ``imagegen serve --port 0 ARGS``, wait until it answers ``/health/live``, stop it with SIGTERM
    (graceful shutdown of every worker) on exit, and fail if it does not end within 30 s, or ends with another
    status than ``exit_codes``. ``prelude``: Python statements run in the server process first (e.g. a shorter
    timeout than the real one). ``sigint_ignored``: started as a shell without job control starts a background
    command (``imagegen serve &`` in a script), SIGINT ignored."""
    log = cwd / f"serve-{time.monotonic_ns()}.log"
    with log.open("wb") as stderr:
        code = f"{prelude}\n{SERVE}" if prelude else SERVE
        command = [sys.executable, "-c", code, *args]
        if sigint_ignored:
            command = with_sigint_ignored(command)
        # Its own process group, as a shell gives a command: see ServerProcess.ctrl_c
        proc = subprocess.Popen(command, cwd=cwd, env=env, stderr=stderr, start_new_session=True)
    try:
        base = _wait_ready(proc, log, ready_s)
        yield ServerProcess(proc, base, log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"the server did not stop on SIGTERM:\n{log.read_text()[-3000:]}") from None
    # uvicorn shuts down gracefully, then re-raises the signal it caught: exiting "by SIGTERM" is its clean exit.
    assert code in exit_codes, f"server exited with {code}:\n{log.read_text()[-3000:]}"
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def _serving_line_url(text: str) -> str:
    """The URL of the server's serving line, once it is written ("" before). Lines before it may only be JSON
    warnings from building the service (a provider plugin that does not load): every line is JSON."""
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # still being written
        entry = json.loads(line)
        if entry.get("logger") == "imagegen.serve" and str(entry.get("message", "")).startswith("serving on"):
            return serving_url(line)
        assert entry.get("level") == "WARNING", line
    return ""


def _wait_ready(proc: subprocess.Popen[bytes], log: Path, ready_s: float) -> str:
    deadline = time.monotonic() + ready_s
    base = ""
    while time.monotonic() < deadline:  # readiness, not timing: the first line names the port, then /health/live
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if not base:
            base = _serving_line_url(log.read_text())
        if base:
            try:
                if httpx.get(f"{base}/health/live", timeout=2).status_code == 200:
                    return base
            except httpx.TransportError:
                pass
        time.sleep(0.05)
    raise AssertionError(f"the server was not ready within {ready_s} s:\n{log.read_text()[-3000:]}")
