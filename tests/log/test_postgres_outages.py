"""The PostgreSQL log when its server goes away: a connection the server ends mid-write (a restart, a failover)
is retried by the log writer instead of losing the row; while the server is down an operation says why within
about a second instead of waiting out the pool's 30 s; and once it is back the log works again at once, not
at the pool's next reconnection try (which backs off to a minute and more)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from imagegen_core.errors import LogDatabaseBusy
from imagegen_core.log import LogDB
from imagegen_core.log.writer import LogWriter
from tests.log.rows import add_request
from tests.pgcluster import PostgresCluster, running_cluster
from tests.tcpproxy import StallingProxy


def wait_for(condition: object, *, timeout_s: float = 10.0) -> None:
    """Poll ``condition()`` (a callable) until it is true; fail after ``timeout_s``."""
    give_up = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < give_up, "timed out"
        time.sleep(0.02)


def timed_generates(gen: Any, prompt: str, *, run: Callable[..., Any] | None = None) -> list[float]:
    """Three generates ("<prompt> 0" .. 2), each asserted an offline success; their times in seconds. ``run``
    calls ``gen.generate_sync`` with the request (default: directly)."""
    took = []
    for n in range(3):
        started = time.monotonic()
        request = {"prompt": f"{prompt} {n}", "width": 64, "height": 64}
        result = run(gen.generate_sync, request) if run is not None else gen.generate_sync(request)
        took.append(time.monotonic() - started)
        assert result.success and result.provider == "offline", result.error
    return took


def logged(db: Any) -> list[tuple[str, str]]:
    """``(prompt, status)`` of every logged request, oldest first."""
    return [(r["prompt"], r["status"]) for r in db.query("SELECT prompt, status FROM requests ORDER BY created_at")]


def succeeded(prompt: str) -> list[tuple[str, str]]:
    """The rows :func:`timed_generates` leaves for ``prompt``: three successes."""
    return [(f"{prompt} {n}", "success") for n in range(3)]


def test_a_write_whose_connection_the_server_ends_is_retried_not_lost(postgres_url: str) -> None:
    """A write waiting on a row lock when the server ended its connection (as a restart or failover does)
    failed with 'terminating connection due to administrator command', was not retried, and the request
    stayed 'running' in the log for good."""
    with LogDB(postgres_url) as db, psycopg.connect(postgres_url, autocommit=True) as other:
        add_request(db, "r1", 1.0)
        writer = LogWriter(batch=db.batch, busy_retry_s=30)
        with other.transaction():
            other.execute("SELECT id FROM requests WHERE id = 'r1' FOR UPDATE")
            done = writer.submit(db.finish_request, "r1", finished_at=2.0, status="success", elapsed_ms=5)
            waiting = "application_name = 'imagegen' AND wait_event_type = 'Lock'"
            wait_for(lambda: other.execute(f"SELECT 1 FROM pg_stat_activity WHERE {waiting}").fetchone())
            other.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {waiting}")
        writer.flush_sync()
        writer.close()
        assert done.exception() is None and done.result() is True
        assert db.query("SELECT status FROM requests WHERE id = 'r1'") == [{"status": "success"}]


@pytest.fixture(scope="module")
def own_server() -> Iterator[PostgresCluster]:
    """A server of this module's own, which its tests stop and start (the session's serves the others)."""
    yield from running_cluster()


def pg_ctl(cluster: PostgresCluster, action: str) -> None:
    """Stop (fast: sessions are ended, as a restart does) or start the server again on its port."""
    options = f"-c listen_addresses=127.0.0.1 -p {cluster.port} -c unix_socket_directories=''"
    extra = ["-m", "fast"] if action == "stop" else ["-o", options, "-l", str(cluster.base / "server.log")]
    cluster._run(str(cluster.bindir / "pg_ctl"), action, "-D", str(cluster.data), "-w", *extra)
    if action == "start":  # the stop ended the cluster's own admin session: create_database needs a new one
        cluster._admin = psycopg.connect(cluster.url("postgres"), autocommit=True)


def test_while_the_server_is_down_reads_fail_fast_and_work_again_once_it_is_back(own_server: PostgresCluster) -> None:
    """Operator run (server stopped for 100 s under a running ImageGen): every log read and write waited the
    pool's whole 30 s, then said 'all 10 connections stayed busy' (a generate with a 3 s deadline took 30 s),
    and once the server was back, reads failed 34 s more, until the pool's backed-off reconnection try."""
    with LogDB(own_server.url(own_server.create_database())) as db:
        db.save_config({}, source="test")
        pg_ctl(own_server, "stop")
        try:
            outage_ends = time.monotonic() + 8  # long enough for the pool's retries to back off past 4 s
            while time.monotonic() < outage_ends:  # a steady trickle of requests, as a server has
                started = time.monotonic()
                with pytest.raises(LogDatabaseBusy) as info:
                    db.latest_config_id()
                assert time.monotonic() - started < 2.5
                message = str(info.value)
                assert message.startswith("cannot reach the log database postgresql://postgres@127.0.0.1:")
                assert "Connection refused" in message and "\n" not in message
                time.sleep(0.3)
        finally:
            pg_ctl(own_server, "start")
        started = time.monotonic()
        assert db.latest_config_id() == 1
        assert time.monotonic() - started < 2.5


def test_writes_queued_during_an_outage_are_applied_once_the_server_is_back(own_server: PostgresCluster) -> None:
    """The log writer retries a write the unreachable server refused; the rows arrive once, when it returns."""
    with LogDB(own_server.url(own_server.create_database())) as db:
        writer = LogWriter(batch=db.batch, busy_retry_s=60)
        pg_ctl(own_server, "stop")
        restarted = threading.Timer(2.0, pg_ctl, (own_server, "start"))
        restarted.start()
        try:
            for i in range(20):
                writer.submit(add_request, db, f"r{i}", 1.0)
            writer.flush_sync()
        finally:
            restarted.join()
            writer.close()
        assert db.query("SELECT COUNT(*) AS n, COUNT(DISTINCT id) AS ids FROM requests") == [{"n": 20, "ids": 20}]


def test_generate_answers_within_its_deadline_while_the_log_server_is_down_and_logs_it_afterwards(
    own_server: PostgresCluster, settings_factory: Any
) -> None:
    """Helper audit: with PostgreSQL stopped, generate() raised the log's error before its deadline was even
    set (the config read came first), so the API answered 503 and nothing was logged. Now requests go on
    with the config in force (reads pause 5 s after a failure), the answer comes within its deadline, and
    the rows wait in the writer's queue until the server is back."""
    from imagegen_core import ImageGen

    url = own_server.url(own_server.create_database())
    with ImageGen.from_settings(settings_factory(IMAGEGEN_DATABASE_URL=url)) as gen:
        gen.set_config({"defaults": {"timeout": 3000}}, source="test")
        assert gen.generate_sync({"prompt": "before", "width": 64, "height": 64}).success
        gen._writer.flush_sync()
        pg_ctl(own_server, "stop")
        try:
            took = timed_generates(gen, "during")
            assert max(took) < 3.0 + 1.0, took  # the deadline, plus at most one second-long failed read
            assert sorted(took)[1] < 1.0, "after one failed read, the next requests do not wait for the log"
        finally:
            pg_ctl(own_server, "start")
        gen._writer.flush_sync()
        rows = logged(gen.log)
    assert rows == [("before", "success"), *succeeded("during")]


def test_generate_goes_on_while_an_operator_holds_a_lock_on_the_config_and_breaker_tables(
    postgres_url: str, settings_factory: Any
) -> None:
    """A ``LOCK TABLE`` (or a VACUUM FULL, or an ALTER TABLE behind a long query) on the tables every request
    reads held each generate for as long as the lock lasted. Reads now give up after LOCK_TIMEOUT_MS and go
    on as while the server is down; writes wait in the queue until the lock is let go."""
    from imagegen_core import ImageGen
    from imagegen_core.log.postgres import LOCK_TIMEOUT_MS

    with ImageGen.from_settings(settings_factory(IMAGEGEN_DATABASE_URL=postgres_url)) as gen:
        gen.set_config({"defaults": {"timeout": 5000}}, source="test")
        assert gen.generate_sync({"prompt": "before", "width": 64, "height": 64}).success
        with psycopg.connect(postgres_url, autocommit=True) as operator, operator.transaction():
            operator.execute("LOCK TABLE config_versions, breaker_state IN ACCESS EXCLUSIVE MODE")
            took = timed_generates(gen, "locked")
        gen._writer.flush_sync()  # the breakers' records waited for the lock; the writer retried them
        # The first waited for each of the two reads at most; the next ones, within the 5 s pause, for neither.
        assert max(took) < 2 * LOCK_TIMEOUT_MS / 1000 + 1.0, took
        assert sorted(took)[1] < 0.5, took
        rows = logged(gen.log)
    assert rows == [("before", "success"), *succeeded("locked")]


def test_generate_answers_by_its_deadline_while_the_log_server_hangs(
    postgres: PostgresCluster, postgres_url: str, settings_factory: Any
) -> None:
    """A server that hangs, or a network that drops packets, refuses nothing: the config read before each
    request then waited for TCP to give up (many minutes), and a generate with a 5 s deadline had not
    answered after 20 s. Reads now wait READ_WAIT_S at most, and none starts while one is still hung."""
    from imagegen_core import ImageGen
    from imagegen_core.log.outage import READ_WAIT_S

    with StallingProxy(("127.0.0.1", postgres.port)) as proxy:
        url = postgres_url.replace(f":{postgres.port}/", f":{proxy.port}/")
        with ImageGen.from_settings(settings_factory(IMAGEGEN_DATABASE_URL=url)) as gen:
            gen.set_config({"defaults": {"timeout": 5000}}, source="test")
            assert gen.generate_sync({"prompt": "before", "width": 64, "height": 64}).success
            gen._writer.flush_sync()
            proxy.stall()
            # In a thread of its own: without the fix a generate would wait for the proxy, which only the
            # test's own `finally` would release.
            with ThreadPoolExecutor(1) as runner:
                try:
                    took = timed_generates(gen, "hung", run=lambda fn, req: runner.submit(fn, req).result(timeout=20))
                finally:
                    proxy.resume()
            # The first waited for the config read and for the breaker's, READ_WAIT_S each; the next ones for
            # neither, the hung reads still running.
            assert took[0] < 2 * READ_WAIT_S + 1.0, took
            assert max(took[1:]) < 0.5, took
            gen._writer.flush_sync()  # the writes waited in the proxy; they go through now
            rows = logged(gen.log)
    assert rows == [("before", "success"), *succeeded("hung")]


def test_rows_of_an_outage_longer_than_the_retries_are_kept_and_written_by_the_next_process(
    own_server: PostgresCluster, settings_factory: Any
) -> None:
    """Before, a server down for longer than the writer's retries (120 s) lost the rows of every request in
    that time, and a process stopped during the outage lost its queued ones at once after waiting 130 s.
    Now they are kept under IMAGEGEN_HOME, and the next ImageGen on that home writes them in order as soon as
    the server answers, with nothing asked of it."""
    from imagegen_core import ImageGen

    url = own_server.url(own_server.create_database())
    settings = settings_factory(IMAGEGEN_DATABASE_URL=url)
    with ImageGen.from_settings(settings) as gen:
        gen.set_config({"defaults": {"timeout": 3000}}, source="test")
        gen._writer._busy_retry_s = 1.0  # instead of 120 s, the outage this test can afford to wait out
        pg_ctl(own_server, "stop")
        try:
            timed_generates(gen, "during")
            gen._writer.flush_sync()  # kept, not lost: the flush does not raise
            assert gen.log_spill.waiting() == 3 * 4  # per request: its start and end, its attempt's start and end
            started = time.monotonic()
            gen.close()
            assert time.monotonic() - started < 15
        finally:
            pg_ctl(own_server, "start")
    with ImageGen.from_settings(settings) as following:
        wait_for(lambda: following.log_spill.waiting() == 0)
        rows = logged(following.log)
        attempts = following.log.query("SELECT outcome FROM attempts")
    assert rows == succeeded("during")
    assert [row["outcome"] for row in attempts] == ["success"] * 3


def test_rows_written_while_the_server_hangs_are_kept_and_the_process_ends_without_waiting_for_it(
    postgres: PostgresCluster, postgres_url: str, settings_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that hangs refuses nothing: the log writer waited on it for good, and closing gave its rows
    up after 130 s. Now each write waits WRITE_WAIT_S at most; then the rows are retried, kept in the spill,
    and written by the next process once the server answers, each once (the abandoned write may commit too)."""
    from imagegen_core import ImageGen, service

    monkeypatch.setattr(service, "WRITE_WAIT_S", 1.0)  # 30 s in production
    with StallingProxy(("127.0.0.1", postgres.port)) as proxy:
        url = postgres_url.replace(f":{postgres.port}/", f":{proxy.port}/")
        settings = settings_factory(IMAGEGEN_DATABASE_URL=url)
        gen = ImageGen.from_settings(settings)
        gen._writer._busy_retry_s = 1.0  # instead of 120 s
        try:
            gen.set_config({"defaults": {"timeout": 5000}}, source="test")
            assert gen.generate_sync({"prompt": "before", "width": 64, "height": 64}).success
            gen._writer.flush_sync()
            proxy.stall()
            with ThreadPoolExecutor(1) as runner:
                timed_generates(gen, "hung", run=lambda fn, req: runner.submit(fn, req).result(timeout=20))
                runner.submit(gen._writer.flush_sync).result(timeout=20)  # kept: the flush returns
            assert gen.log_spill.waiting() == 3 * 4
        finally:
            started = time.monotonic()
            with ThreadPoolExecutor(1) as runner:
                runner.submit(gen.close).result(timeout=60)
            took = time.monotonic() - started
            proxy.resume()
        assert took < 15, took
        with ImageGen.from_settings(settings) as following:
            wait_for(lambda: following.log_spill.waiting() == 0, timeout_s=20)
            rows = logged(following.log)
            attempts = following.log.query("SELECT COUNT(*) AS n, COUNT(DISTINCT request_id) AS requests FROM attempts")
    assert rows == [("before", "success"), *succeeded("hung")]
    assert attempts == [{"n": 4, "requests": 4}]
