"""The tests' throwaway PostgreSQL server (tests/pgcluster.py) ends with the test process, however it ends."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pgcluster import find_bindir

#: A test process that starts a cluster, says where it is (one JSON line), and waits to be killed.
STARTS_A_CLUSTER = """\
import json, sys
from tests.pgcluster import PostgresCluster, find_bindir
cluster = PostgresCluster(find_bindir())
cluster.start()
postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
watchdog = getattr(cluster, "_watchdog", None)  # None: a pgcluster without one (the test fails then)
found = {"postmaster": postmaster, "watchdog": watchdog and watchdog.pid, "base": str(cluster.base)}
print(json.dumps(found), flush=True)
sys.stdin.read()
"""

#: Generous bounds: starting takes a second or two, stopping a fraction of one.
START_WAIT_S = 60.0
GONE_WAIT_S = 30.0


def _read_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """``proc``'s first line of output, waited for ``timeout_s`` at most."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    assert ready, "the cluster did not start in time"
    return proc.stdout.readline()


def _ends_within(pid: int, timeout_s: float) -> bool:
    """Whether process ``pid`` (not a child of ours) ends within ``timeout_s``: its pidfd becomes readable then."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout_s)
        return bool(ready)
    finally:
        os.close(pidfd)


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfd_open (Linux 5.3+)")
@pytest.mark.skipif(find_bindir() is None and not os.environ.get("CI"), reason="no PostgreSQL server binaries")
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_cluster_stops_and_is_deleted_when_its_test_process_is_killed(signum: int) -> None:
    """QA: every test run killed (a CI timeout, Ctrl-C twice, SIGKILL) left its PostgreSQL server running, and
    its folder, for good: no fixture clean-up runs then. A watchdog process now stops it, however the test
    process ends."""
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-c", STARTS_A_CLUSTER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=repo,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])},
    )
    try:
        started = json.loads(_read_line(proc, START_WAIT_S))
    finally:
        proc.send_signal(signum)
        proc.wait(30)
    assert proc.returncode == -signum
    try:
        if started["watchdog"] is not None:
            assert _ends_within(started["watchdog"], GONE_WAIT_S), "the watchdog did not finish"
        assert _ends_within(started["postmaster"], GONE_WAIT_S), "the PostgreSQL server outlived its test process"
        assert not Path(started["base"]).exists()
    finally:
        _stop_what_is_left(started["postmaster"], Path(started["base"]))


def _stop_what_is_left(postmaster: int, base: Path) -> None:
    """Failing, leave no server behind: an immediate shutdown (SIGQUIT), and its folder deleted."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(postmaster, signal.SIGQUIT)
        _ends_within(postmaster, GONE_WAIT_S)
    shutil.rmtree(base, ignore_errors=True)
