"""An upload the deadline cut short says what the store's tries met. QA pointed R2 at a server answering every
request with a 500 and read "did not answer in time: check that it is reachable": the store had answered each
try at once, and botocore's retries (not a silent store) used up the deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from imagegen_core import ImageGen, Settings
from imagegen_core.storage.r2 import R2Store
from tests.realserver import ScriptedServer

INTERNAL_ERROR = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message></Error>"
)


async def internal_error(method: str, path: str, writer: asyncio.StreamWriter) -> None:
    head = b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\nContent-Length: %d\r\n\r\n"
    writer.write(head % len(INTERNAL_ERROR) + INTERNAL_ERROR)
    await writer.drain()


@pytest.fixture
def failing_r2() -> Iterator[ScriptedServer]:
    with ScriptedServer(internal_error) as server:
        yield server


def store_at(endpoint: str, secret: str = "s3cr3t-access-key-0123456789") -> R2Store:
    return R2Store(
        bucket="images",
        access_key_id="AKIDEXAMPLE",
        secret_access_key=secret,
        public_base_url="https://img.example",
        endpoint_url=endpoint,
    )


async def generate_into(store: R2Store, home: Path) -> str:
    async with ImageGen.from_settings(Settings(_env_file=None, IMAGEGEN_HOME=str(home)), store=store) as gen:
        result = await gen.generate({"prompt": "a harbour", "width": 64, "height": 64}, deadline_s=3)
    assert not result.success
    return result.error or ""


async def test_a_store_answering_500_is_said_to_have_answered_500(failing_r2: ScriptedServer, tmp_path: Path) -> None:
    error = await generate_into(store_at(failing_r2.base_url), tmp_path / "home")
    assert (
        f"the store (r2 bucket images at {failing_r2.base_url}) did not take it in time: its last try got HTTP 500"
        " (InternalError), and it was retried until the deadline" in error
    ), error
    assert "check that it is reachable" not in error
    assert sum(1 for method, _ in failing_r2.requests if method == "PUT") >= 2  # botocore's retries, really made


def http(status: int) -> SimpleNamespace:
    return SimpleNamespace(status_code=status)


def test_a_try_that_succeeds_clears_the_trouble_and_old_trouble_is_forgotten() -> None:
    store = store_at("http://127.0.0.1:9")
    store._note_try(response=(http(503), {"Error": {"Code": "SlowDown"}}))
    assert store.recent_trouble() == "got HTTP 503 (SlowDown)"
    assert store.recent_trouble(within_s=-1) is None  # longer ago than asked: not the reason of a timeout now
    store._note_try(response=(http(200), {}))
    assert store.recent_trouble() is None


def test_the_trouble_never_holds_a_credential() -> None:
    secret = "s3cr3t-access-key-0123456789"
    store = store_at("http://127.0.0.1:9", secret=secret)
    store._note_try(caught_exception=ConnectionError(f"proxy said: bad auth {secret}"))
    trouble = store.recent_trouble()
    assert trouble is not None and secret not in trouble and trouble.startswith("failed: ConnectionError: proxy")
