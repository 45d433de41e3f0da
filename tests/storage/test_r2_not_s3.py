"""R2_ENDPOINT_URL mistyped so that it names some other web server on 127.0.0.1 (the bucket's public URL, a
website, another port of the same host): the store must say which variable to fix, and an upload must never
count as stored — otherwise the answer's URL serves nothing and the paid-for image is lost, not spooled."""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from imagegen_core import ImageGen
from imagegen_core.errors import StorageError
from imagegen_core.storage.r2 import R2Store

KEY = "ai/2026/11/0123456789abcdef0123456789abcdef.webp"
NOT_S3 = "but is not an S3 server: check R2_ENDPOINT_URL (the bucket's S3 API endpoint, not its public URL)"


class WebServer:
    """An HTTP server on 127.0.0.1 that answers every request with ``status`` and ``body`` (no S3 in sight)."""

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.requests.append(self.command)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_HEAD = answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def website() -> Iterator[WebServer]:
    """A web site that answers any path (an SPA, a catch-all proxy) with 200 and an HTML page."""
    server = WebServer(200, b"<html><body>Welcome</body></html>", "text/html")
    yield server
    server.close()


def r2_at(website: WebServer, settings_factory: Any) -> Any:
    """Settings whose R2 endpoint is ``website``."""
    return settings_factory(
        R2_ENDPOINT_URL=website.url,
        R2_ACCESS_KEY_ID="k",
        R2_SECRET_ACCESS_KEY="s",
        R2_BUCKET="images",
        R2_PUBLIC_BASE_URL="https://img.example.com",
    )


def store_at(endpoint: str) -> R2Store:
    return R2Store(
        bucket="images",
        access_key_id="k",
        secret_access_key="s",
        public_base_url="https://img.example.com",
        endpoint_url=endpoint,
        max_attempts=1,
    )


async def test_an_upload_that_a_web_page_answered_is_not_stored(website: WebServer) -> None:
    with pytest.raises(StorageError) as info:
        await store_at(website.url).put(KEY, b"RIFF", content_type="image/webp", cache_control="c", metadata={})
    assert str(info.value) == f"{website.url} answered the upload of '{KEY}' {NOT_S3}"
    assert website.requests == ["PUT"]


async def test_a_web_page_is_not_an_existing_object(website: WebServer) -> None:
    """Else the default image was never uploaded and every default URL served nothing."""
    with pytest.raises(StorageError, match=re.escape(NOT_S3)):
        await store_at(website.url).exists(KEY)


async def test_an_answer_that_is_no_s3_document_names_the_endpoint_variable() -> None:
    server = WebServer(201, b'{"name": "a.webp", "size": 4}', "application/json")  # a file server's own API
    try:
        with pytest.raises(StorageError) as info:
            await store_at(server.url).put(KEY, b"RIFF", content_type="image/webp", cache_control="c", metadata={})
    finally:
        server.close()
    assert str(info.value) == f"{server.url} answered the upload of '{KEY}' {NOT_S3}"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (404, "R2 bucket 'images' does not exist at {url}: check R2_BUCKET (and R2_ENDPOINT_URL)"),
        (405, "R2 refused the upload of '{key}' (405, HTTP 405): the answer had no S3 error; check R2_ENDPOINT_URL"),
    ],
)
async def test_an_upload_refused_by_a_web_server_says_what_to_check(status: int, expected: str) -> None:
    """A 404 to an upload used to read "R2 has no object" (of the object being written), a 405 ended in ':'."""
    server = WebServer(status, b"<html><body>Nope</body></html>", "text/html")
    try:
        with pytest.raises(StorageError) as info:
            await store_at(server.url).put(KEY, b"RIFF", content_type="image/webp", cache_control="c", metadata={})
    finally:
        server.close()
    assert str(info.value) == expected.format(url=server.url, key=KEY)


async def test_generate_keeps_the_image_in_the_spool_instead_of_answering_a_url_that_serves_nothing(
    website: WebServer, settings_factory: Any
) -> None:
    settings = r2_at(website, settings_factory)
    async with ImageGen.from_settings(settings) as gen:
        gen.set_config({"defaults": {"imageUrl": "https://cdn.example.com/default.webp"}})
        result = await gen.generate({"prompt": "x", "width": 320, "height": 200})
        (entry,) = gen.spool.entries()
    assert not result.success and result.url == "https://cdn.example.com/default.webp"
    assert NOT_S3 in (result.error or "") and f"kept in the spool as {entry.key}" in (result.error or "")


async def test_check_does_not_call_a_web_page_a_healthy_bucket(website: WebServer) -> None:
    """`/health` and `imagegen drill` ran HEAD bucket, which any web server answers 200."""
    with pytest.raises(StorageError) as info:
        await store_at(website.url).check()
    assert str(info.value) == f"{website.url} answered the check {NOT_S3}"
    assert website.requests == ["GET"]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"status": "ok"}', "application/json"),
        (b"<?xml version='1.0'?><status>ok</status>", "application/xml"),  # well-formed XML, not a listing
    ],
)
async def test_check_needs_an_s3_listing_not_any_document(body: bytes, content_type: str) -> None:
    server = WebServer(200, body, content_type)
    try:
        with pytest.raises(StorageError) as info:
            await store_at(server.url).check()
    finally:
        server.close()
    assert str(info.value) == f"{server.url} answered the check {NOT_S3}"


async def test_health_is_unhealthy_when_the_r2_endpoint_is_a_web_page(
    website: WebServer, settings_factory: Any
) -> None:
    from imagegen_core.api import create_app

    settings = r2_at(website, settings_factory)
    async with ImageGen.from_settings(settings) as gen:
        app = create_app(gen)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://imagegen.test") as client:
            health = await client.get("/health")
    assert health.status_code == 503
    assert health.json()["checks"]["store"] == {"ok": False, "kind": "r2"}
