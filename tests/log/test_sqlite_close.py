"""Closing a SQLite log while another thread is in the middle of a statement (an app shutting down while an admin
change runs on a log-call thread) waits for that statement: it must not crash the interpreter (QA: closing an
ImageGen during a ``set_config`` of another thread ended the process with a segmentation fault)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from imagegen_core.log.sqlite import SQLiteBackend

#: A read that keeps SQLite busy for a good fraction of a second, started before the close.
_SCRIPT = textwrap.dedent(
    """
    import sys, threading, time
    from pathlib import Path
    from imagegen_core.log.sqlite import SQLiteBackend

    backend = SQLiteBackend(Path(sys.argv[1]))
    backend.open()
    found = {}

    def slow_read():
        sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) "
        sql += "SELECT count(*) AS n FROM c"
        found["rows"] = backend.query(sql, ())

    reader = threading.Thread(target=slow_read)
    reader.start()
    time.sleep(0.1)
    backend.close()
    reader.join()
    print(found["rows"][0]["n"])
    """
)


def test_closing_waits_for_another_thread_s_statement_instead_of_crashing(tmp_path: Path) -> None:
    for run in range(3):  # the crash came in about two runs of three
        proc = subprocess.run(
            [sys.executable, "-c", _SCRIPT, str(tmp_path / f"log{run}.db")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
        assert proc.stdout.strip() == "2000000", proc.stdout


def test_a_closed_log_leaves_no_connection_open(tmp_path: Path) -> None:
    """Connections of other threads, idle or busy at the close, are closed by it (none left for the GC)."""
    backend = SQLiteBackend(tmp_path / "log.db")
    backend.open()
    started, release = threading.Event(), threading.Event()

    def idle_reader() -> None:
        backend.query("SELECT 1", ())
        started.set()
        release.wait(10)

    reader = threading.Thread(target=idle_reader)
    reader.start()
    started.wait(10)
    connections = [conn for _, conn, _ in backend._connections]  # type: ignore[attr-defined]
    backend.close()
    release.set()
    reader.join()
    assert len(connections) == 2
    for conn in connections:
        try:
            conn.execute("SELECT 1")
        except Exception as exc:  # sqlite3.ProgrammingError: Cannot operate on a closed database
            assert "closed" in str(exc)
        else:
            raise AssertionError("a connection was left open")
