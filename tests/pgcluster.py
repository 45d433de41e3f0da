"""A throwaway PostgreSQL server for the tests, and the fixtures that run log tests on both backends.

``postgres`` (session): ``initdb`` in a fresh temp folder and ``postgres`` on a free 127.0.0.1 port, trust auth,
durability off (a test cluster is never recovered), stopped and deleted at the end of the session — or, when the
test process is killed (SIGKILL, SIGTERM: no fixture clean-up runs), by a watchdog process that outlives it
(:data:`WATCHDOG`). PostgreSQL refuses to run as root, so under root (CI) the server runs as the ``postgres`` OS
user that Debian's packages create. Started on first use only: a run without PostgreSQL tests never pays for it.

``postgres_url``: a blank PostgreSQL log for one test — its own schema in the shared ``imagegen_test``
database, chosen through the URL (``?options=-csearch_path=…``, as a deployment sharing a database would):
as isolated as a database for the log's purposes, and created in a millisecond where ``CREATE DATABASE`` takes
a tenth of a second. Tests that want a whole database (the multi-server ones) call ``create_database``.

``db_url`` (parametrised ``sqlite`` / ``postgres``): a blank log per test — a SQLite file in the test's folder,
or ``postgres_url`` — so the same assertions run against both backends. ``logdb`` opens it.

Without the server binaries the PostgreSQL half is skipped, except in CI (``CI`` set), where it must run:
``.ci/run`` installs them.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagegen_core.log import LogDB

#: The OS user the server runs as when the tests run as root.
SERVER_USER = "postgres"
#: The database whose schemas hold the per-test logs.
SHARED_DB = "imagegen_test"

#: A cluster's watchdog: a process of its own (a session of its own too, so that Ctrl-C does not end it first),
#: reading its stdin, a pipe whose other end only the test process holds. The kernel closes that end when the test
#: process ends, however it ends, and the read returns: the watchdog then stops the server (if it still runs: the
#: test process may have stopped it) and deletes the cluster's folder. Arguments: the stop command (JSON), the
#: data folder and the folder to delete.
WATCHDOG = """\
import json, os, shutil, subprocess, sys
stop, data, base = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
sys.stdin.buffer.read()
if os.path.exists(os.path.join(data, "postmaster.pid")):
    subprocess.run(stop, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
shutil.rmtree(base, ignore_errors=True)
"""


def find_bindir() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian: /usr/lib/postgresql/N/bin), or one on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresCluster:
    """A running throwaway server; :meth:`create_database` hands out blank databases."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        # Under root the server user must reach the folder: /tmp is open to all, $TMPDIR may not be.
        self.base = Path(tempfile.mkdtemp(prefix="imagegen-pg-", dir="/tmp" if os.geteuid() == 0 else None))
        self.data = self.base / "data"
        self.port = 0
        self._as_user: list[str] = []
        self._names = itertools.count(1)
        self._admin: Any = None
        self._shared: Any = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self.major = 0

    def _run(self, *args: str) -> None:
        proc = subprocess.run([*self._as_user, *args], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {proc.stderr.strip() or proc.stdout.strip()}")

    def start(self) -> None:
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam(SERVER_USER)
            except KeyError:
                message = f"running as root needs the {SERVER_USER!r} OS user (apt-get install postgresql)"
                raise RuntimeError(message) from None
            os.chown(self.base, user.pw_uid, user.pw_gid)
            self._as_user = ["runuser", "-u", SERVER_USER, "--"]
        self._start_watchdog()  # before anything is made: a process killed while starting leaves nothing either
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
            # C.UTF-8 (in every glibc since 2.35): byte order like C, but ILIKE folds the case of any letter, as
            # on a server set up with a UTF-8 locale.
            "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
        )  # fmt: skip
        for attempt in range(3):  # a free port may be taken between the probe and the bind
            self.port = free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories='' -c max_connections=300"
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            try:
                self._run(
                    str(self.bindir / "pg_ctl"), "start", "-D", str(self.data), "-o", options,
                    "-l", str(self.base / "server.log"), "-w", "-t", "30",
                )  # fmt: skip
                break
            except RuntimeError:
                if attempt == 2:
                    raise RuntimeError((self.base / "server.log").read_text()[-2000:]) from None
        import psycopg

        self._admin = psycopg.connect(self.url("postgres"), autocommit=True)
        self.major = int(self._admin.info.server_version) // 10000
        self._admin.execute(f"CREATE DATABASE {SHARED_DB} TEMPLATE template0")
        self._shared = psycopg.connect(self.url(SHARED_DB), autocommit=True)

    def _stop_command(self) -> list[str]:
        return [*self._as_user, str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data), "-m", "immediate", "-w"]

    def _start_watchdog(self) -> None:
        """Start the :data:`WATCHDOG` that stops the server and deletes its folder once this process ends."""
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", WATCHDOG, json.dumps(self._stop_command()), str(self.data), str(self.base)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def stop(self) -> None:
        for conn in (self._shared, self._admin):
            if conn is not None:
                conn.close()
        if (self.data / "postmaster.pid").exists():
            subprocess.run(self._stop_command(), capture_output=True, timeout=60)
        shutil.rmtree(self.base, ignore_errors=True)
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None and watchdog.stdin is not None:
            watchdog.stdin.close()  # its job is done: it finds nothing left and ends
            watchdog.wait(60)

    def url(self, dbname: str, *, password: str | None = None) -> str:
        secret = f":{password}" if password else ""
        return f"postgresql://postgres{secret}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A new blank database's name. FILE_COPY (PostgreSQL 15+) clones the tiny template fastest."""
        name = f"t{next(self._names)}"
        strategy = " STRATEGY FILE_COPY" if self.major >= 15 else ""
        self._admin.execute(f"CREATE DATABASE {name} TEMPLATE template0{strategy}")
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name``, ending any connection a test left open."""
        self._admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def create_schema(self) -> str:
        """A URL to a new empty schema of the shared database (its tables are created there)."""
        name = f"s{next(self._names)}"
        self._shared.execute(f"CREATE SCHEMA {name}")
        return f"{self.url(SHARED_DB)}?options=-csearch_path%3D{name}"

    def drop_schema(self, url: str) -> None:
        """Drop the schema of a :meth:`create_schema` URL with everything in it."""
        self._shared.execute(f"DROP SCHEMA IF EXISTS {url.rsplit('%3D', 1)[1]} CASCADE")


def running_cluster() -> Iterator[PostgresCluster]:
    """A started throwaway server, stopped when the generator ends (the body of a fixture). Without the
    PostgreSQL binaries the test is skipped, or failed under CI (which installs them)."""
    bindir = find_bindir()
    if bindir is None:
        message = "PostgreSQL server binaries not found (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    cluster = PostgresCluster(bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """The session's PostgreSQL server (started on first use)."""
    yield from running_cluster()


@pytest.fixture
def postgres_url(postgres: PostgresCluster) -> Iterator[str]:
    """A blank PostgreSQL log for this test (a schema of its own), dropped afterwards."""
    url = postgres.create_schema()
    yield url
    postgres.drop_schema(url)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A blank log database URL on each backend: ``sqlite:///…`` in the test's folder, or ``postgresql://…``."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'log.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def logdb(db_url: str) -> Iterator[LogDB]:
    """An open, migrated :class:`LogDB` at ``db_url``, closed afterwards."""
    with LogDB.from_url(db_url) as db:
        yield db
