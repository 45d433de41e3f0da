"""The R2 store against a server that accepts connections and never answers (a hung R2, a firewall that
swallows packets): a call given up by its caller must not hold anything else up — neither the event loop's
default executor (image work, the spool) nor the end of the process."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from imagegen_core.errors import StorageError
from imagegen_core.storage.r2 import R2Store
from imagegen_core.workers import DaemonWorkers

KEY = "ai/2026/11/0123456789abcdef0123456789abcdef.webp"


class BlackHole:
    """A TCP listener on 127.0.0.1 that accepts every connection and never sends a byte."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed
                return
            self._accepted.append(conn)

    def close(self) -> None:
        """Stop listening and drop every connection, so abandoned calls end (refused) at once."""
        with contextlib.suppress(OSError):  # wakes the blocked accept(); fails harmlessly when closed already
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for conn in self._accepted:
            conn.close()
        self._thread.join(5)


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    try:
        yield hole
    finally:
        hole.close()


def hung_store(endpoint: str, **options: Any) -> R2Store:
    """A store of the hung server: default timeouts and attempts (a single call would hang for minutes), or
    ``options`` (``max_attempts``, ``read_timeout_s``, ``list_wait_s``…)."""
    return R2Store(
        bucket="images",
        access_key_id="k",
        secret_access_key="s",
        public_base_url="https://img",
        endpoint_url=endpoint,
        **options,
    )


async def test_uploads_to_a_hung_server_never_take_the_loops_default_executor(black_hole: BlackHole) -> None:
    loop = asyncio.get_running_loop()
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=2)  # as small as on a 2-core machine's 6
    loop.set_default_executor(executor)
    try:
        store = hung_store(black_hole.url)
        uploads = [
            asyncio.wait_for(store.put(KEY, b"x", content_type="image/webp", cache_control="c", metadata={}), 0.5)
            for _ in range(4)
        ]
        outcomes = await asyncio.gather(*uploads, return_exceptions=True)
        assert all(isinstance(outcome, TimeoutError) for outcome in outcomes), outcomes
        # What a request does next (normalise an image, keep it in the spool) must not queue behind them.
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), 5) == "free"
    finally:
        black_hole.close()
        executor.shutdown(wait=False, cancel_futures=True)


def test_a_process_that_gave_up_on_a_hung_upload_exits_at_once(black_hole: BlackHole) -> None:
    """``imagegen generate`` answered at its deadline, then stayed alive ~2 minutes (4 attempts × 30 s read
    timeout) because ``asyncio.run`` waited for the abandoned upload's thread."""
    script = textwrap.dedent(
        f"""
        import asyncio
        from imagegen_core.storage.r2 import R2Store

        store = R2Store(bucket="images", access_key_id="k", secret_access_key="s", public_base_url="https://img",
                        endpoint_url={black_hole.url!r})

        async def main():
            try:
                await asyncio.wait_for(store.put({KEY!r}, b"x", content_type="image/webp", cache_control="c",
                                                 metadata={{}}), 0.5)
            except TimeoutError:
                print("gave up")

        asyncio.run(main())
        """
    )
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "gave up\n", "")
    assert time.monotonic() - started < 20


async def test_a_call_cancelled_before_it_starts_never_runs() -> None:
    workers = DaemonWorkers(1, name="test")
    release, ran = threading.Event(), []
    first = asyncio.ensure_future(workers.run(release.wait))
    queued = asyncio.ensure_future(workers.run(lambda: ran.append("queued")))
    await asyncio.sleep(0)  # both submitted; the one thread is busy with the first
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    release.set()  # only now is the thread free to take the next call
    assert await first is True
    assert await workers.run(lambda: "after") == "after" and ran == [] and workers.threads == 1


async def test_errors_of_a_hung_server_still_come_back_as_storage_errors(black_hole: BlackHole) -> None:
    store = hung_store(black_hole.url, max_attempts=1, read_timeout_s=0.3)
    with pytest.raises(StorageError, match=r"did not answer the upload of .* in 0.3 s; try again later"):
        await store.put(KEY, b"x", content_type="image/webp", cache_control="c", metadata={})


async def test_a_check_of_a_hung_server_gives_up_after_one_short_try(black_hole: BlackHole) -> None:
    """``check()`` backs ``/health``: with the uploads' 4 attempts × 30 s it held a health check for a minute
    or more. It now tries once and waits ``check_wait_s`` (2 s), connecting included."""
    store = hung_store(black_hole.url)
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        await store.check()
    took = time.monotonic() - started
    assert str(info.value) == f"R2 at {black_hole.url} did not answer the check in 2 s; try again later"
    assert took < 8, took


async def test_a_listing_of_a_hung_server_says_the_time_it_really_waited(black_hole: BlackHole) -> None:
    """``imagegen storage stats`` waited 4 × 30 s (botocore's retries), then said it waited 30 s. Each page of
    the listing is now tried once, for ``list_wait_s``, and the message says that time."""
    store = hung_store(black_hole.url, list_wait_s=0.5)
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        await store.stats(prefix="ai")
    took = time.monotonic() - started
    assert str(info.value) == f"R2 at {black_hole.url} did not answer the list in 0.5 s; try again later"
    assert took < 5, took


async def test_with_retries_a_read_timeout_states_the_whole_wait_and_the_attempts(black_hole: BlackHole) -> None:
    store = hung_store(black_hole.url, max_attempts=2, read_timeout_s=0.3)
    with pytest.raises(StorageError) as info:
        await store.put(KEY, b"x", content_type="image/webp", cache_control="c", metadata={})
    message = str(info.value)
    assert message.startswith(f"R2 at {black_hole.url} did not answer the upload of '{KEY}' in "), message
    assert message.endswith(" s (2 attempts of 0.3 s); try again later"), message
    waited = float(message.split(" in ")[1].split(" s ")[0])
    assert waited >= 0.6, message  # both attempts' waits, not one
