"""``GET /files/{key}``: the local store over HTTP, with stored headers, and nothing outside the store."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from imagegen_core.service import ImageGen

from .conftest import ADMIN, api_client

PUBLIC = "http://testserver/files"


async def test_stored_images_are_served_with_their_content_type_and_cache_control(
    make_gen: Callable[..., ImageGen],
) -> None:
    gen = make_gen(IMAGEGEN_PUBLIC_BASE_URL=PUBLIC)
    async with api_client(gen) as client:
        result = (
            await client.post("/images/generate", json={"prompt": "a lighthouse", "width": 96, "height": 64})
        ).json()
        assert result["url"] == f"{PUBLIC}/{result['key']}"  # IMAGEGEN_PUBLIC_BASE_URL points results here
        image = await client.get(result["url"])
        head = await client.head(result["url"])
    stored = (gen.settings.home / "images" / result["key"]).read_bytes()
    assert image.status_code == 200 and image.content == stored
    assert image.headers["content-type"] == "image/webp"
    assert image.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert image.headers["x-content-type-options"] == "nosniff"
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(len(stored))


@pytest.mark.skipif(not hasattr(os, "removexattr"), reason="no extended attributes on this platform")
async def test_an_image_copied_without_its_metadata_is_still_served_with_a_type_from_its_name(
    stored_key: tuple[ImageGen, str],
) -> None:
    """`cp` without --preserve=xattr (or an unpacked archive) drops the metadata: the image stays reachable,
    as an image, but is not promised to anyone's cache for a year."""
    gen, key = stored_key
    path = gen.settings.home / "images" / key
    os.removexattr(path, "user.imagegen.meta")
    async with api_client(gen) as client:
        response = await client.get(f"/files/{key}")
    assert response.status_code == 200 and response.content == path.read_bytes()
    assert response.headers["content-type"] == "image/webp" and response.headers["cache-control"] == "no-cache"


async def test_a_client_with_a_current_copy_gets_304_without_the_image(stored_key: tuple[ImageGen, str]) -> None:
    """QA run: If-None-Match with the ETag just sent, and If-Modified-Since, were answered 200 with the image."""
    gen, key = stored_key
    async with api_client(gen) as client:
        first = await client.get(f"/files/{key}")
        etag, modified = first.headers["etag"], first.headers["last-modified"]
        answers = {
            "same ETag": await client.get(f"/files/{key}", headers={"If-None-Match": etag}),
            "weak, in a list": await client.get(f"/files/{key}", headers={"If-None-Match": f'"x", W/{etag}'}),
            "any": await client.get(f"/files/{key}", headers={"If-None-Match": "*"}),
            "not modified since": await client.get(f"/files/{key}", headers={"If-Modified-Since": modified}),
            "HEAD": await client.head(f"/files/{key}", headers={"If-None-Match": etag}),
        }
        changed = await client.get(f"/files/{key}", headers={"If-None-Match": '"another"'})
        older = await client.get(f"/files/{key}", headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"})
        # If-None-Match decides when both are sent
        both = await client.get(f"/files/{key}", headers={"If-None-Match": '"another"', "If-Modified-Since": modified})
        garbage = await client.get(f"/files/{key}", headers={"If-Modified-Since": "yesterday"})
    for name, answer in answers.items():
        assert (answer.status_code, answer.content) == (304, b""), name
        assert answer.headers["etag"] == etag and answer.headers["cache-control"] == first.headers["cache-control"]
    for answer in (changed, older, both, garbage):
        assert answer.status_code == 200 and answer.content == first.content


@pytest.fixture
async def stored_key(make_gen: Callable[..., ImageGen]) -> tuple[ImageGen, str]:
    gen = make_gen()
    async with api_client(gen) as client:
        result = (await client.post("/images/generate", json={"prompt": "x", "width": 64, "height": 64})).json()
    return gen, str(result["key"])


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/files/%2e%2e/imagegen.db", 400),  # encoded dot-dot: decoded before routing, then refused
        ("/files/ai/%2E%2E/%2E%2E/imagegen.db", 400),
        ("/files/..%2fimagegen.db", 400),
        ("/files/ai/..%5c..%5cimagegen.db", 400),  # backslash
        ("/files//etc/passwd", 400),  # absolute
        ("/files/%2Fetc%2Fpasswd", 400),
        ("/files/ai%00.webp", 400),  # NUL
        ("/files/ai/%2e/x.webp", 400),
        ("/files/", 400),  # empty key
        ("/files/ai/2026/01/nothing-here.webp", 404),
        ("/files/imagegen.db", 404),  # outside the images folder: not a stored object
    ],
)
async def test_keys_outside_the_store_are_refused(stored_key: tuple[ImageGen, str], path: str, status: int) -> None:
    gen, _ = stored_key
    async with api_client(gen) as client:
        response = await client.get(path)
    assert response.status_code == status, response.text
    assert response.json()["field"] in ("key", None) and "SQLite" not in response.text


async def test_a_trailing_slash_redirect_stays_on_the_server_whatever_the_host_header(
    make_gen: Callable[..., ImageGen],
) -> None:
    """QA: Starlette's trailing-slash redirects built their absolute Location from the Host header, so
    ``Host: evil.example`` was sent to ``http://evil.example/files/``; a POST's 307 keeps its body there."""
    async with api_client(make_gen()) as client:
        answers = {
            path: await client.request(method, path, headers={"Host": "evil.example"}, follow_redirects=False)
            for method, path in (("GET", "/files"), ("GET", "/health/"), ("POST", "/images/generate/?a=1"))
        }
    assert {path: (a.status_code, a.headers["location"]) for path, a in answers.items()} == {
        "/files": (307, "/files/"),
        "/health/": (307, "/health"),
        "/images/generate/?a=1": (307, "/images/generate?a=1"),
    }
    assert all(a.headers["x-request-id"] for a in answers.values())


async def test_sidecars_dotfiles_and_symlinks_out_of_the_store_are_not_served(
    stored_key: tuple[ImageGen, str], tmp_path: Path
) -> None:
    gen, key = stored_key
    root = gen.settings.home / "images"
    folder = (root / key).parent
    (folder / ".half-written.webp.tmp").write_bytes(b"partial")
    outside = tmp_path / "secret.txt"
    outside.write_text("not for you")
    os.symlink(outside, folder / "link.webp")
    (folder / "link.webp.meta.json").write_text('{"content_type": "text/plain", "cache_control": "no-cache"}')
    prefix = key.rsplit("/", 1)[0]
    async with api_client(gen) as client:
        for path in (f"{key}.meta.json", f"{prefix}/.half-written.webp.tmp", f"{prefix}/link.webp"):
            response = await client.get(f"/files/{path}")
            assert response.status_code == 404, path
            assert "not for you" not in response.text and "content_type" not in response.text
    # Nor counted as the store's (QA: /admin/storage counted the link's target, the log database's size, say).
    stats = await gen.store.stats(prefix="")
    assert stats.to_dict()["totalObjects"] == 1 and stats.to_dict()["totalBytes"] == (root / key).stat().st_size


async def test_only_raster_image_types_are_served_as_such_never_a_page_a_browser_would_run(
    stored_key: tuple[ImageGen, str],
) -> None:
    """QA: a file in the images folder without metadata (copied in by hand, an unpacked archive) was served with
    the type its name suggests: ``page.html`` as text/html and ``logo.svg`` as image/svg+xml, whose scripts a
    browser runs on the API's origin; so was a sidecar naming text/html. imagegen stores only raster images: any
    other type is served as application/octet-stream (with nosniff: downloaded, never rendered)."""
    gen, key = stored_key
    folder = (gen.settings.home / "images" / key).parent
    prefix = key.rsplit("/", 1)[0]
    script = b"<script>alert(document.domain)</script>"
    (folder / "page.html").write_bytes(script)
    (folder / "logo.svg").write_bytes(b'<svg xmlns="http://www.w3.org/2000/svg">' + script + b"</svg>")
    (folder / "labelled.webp").write_bytes(script)
    (folder / "labelled.webp.meta.json").write_text('{"content_type": "text/html", "cache_control": "no-cache"}')
    (folder / "photo.jpg").write_bytes(b"\xff\xd8\xff")
    async with api_client(gen) as client:
        types = {
            name: (await client.get(f"/files/{prefix}/{name}")).headers["content-type"]
            for name in ("page.html", "logo.svg", "labelled.webp", "photo.jpg")
        }
        stored = (await client.get(f"/files/{key}")).headers["content-type"]
    assert types == {
        "page.html": "application/octet-stream",
        "logo.svg": "application/octet-stream",
        "labelled.webp": "application/octet-stream",
        "photo.jpg": "image/jpeg",
    }
    assert stored == "image/webp"


class RemoteStore:
    """Stands in for a store that is not the local folder (R2): a Store's members, none of them used here."""

    name = "r2"

    async def put(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("the /files route must not store anything")

    async def exists(self, key: str) -> bool:
        raise AssertionError("the /files route must not ask a remote store")

    def url_for(self, key: str) -> str:
        return f"https://img.example.com/{key}"


async def test_files_are_served_only_from_the_local_store(make_gen: Callable[..., ImageGen]) -> None:
    gen = make_gen(store=RemoteStore())
    async with api_client(gen) as client:
        response = await client.get("/files/ai/2026/01/x.webp")
    assert response.status_code == 404 and "only from the local store" in response.json()["error"]


async def test_a_wrong_method_is_405_naming_every_method_of_the_path(make_gen: Callable[..., ImageGen]) -> None:
    """QA run: Allow named the first route's method only (DELETE /admin/config: "GET"; not PUT, PATCH)."""
    async with api_client(make_gen()) as client:
        answers = {
            "/admin/config": await client.delete("/admin/config"),
            "/admin/circuit-breaker": await client.put("/admin/circuit-breaker"),
            "/files/x.webp": await client.post("/files/x.webp"),
            "/images/generate": await client.get("/images/generate"),
        }
    allowed = {path: answer.headers["allow"] for path, answer in answers.items()}
    assert allowed == {
        "/admin/config": "GET, HEAD, PATCH, PUT",
        "/admin/circuit-breaker": "GET, HEAD, POST",
        "/files/x.webp": "GET, HEAD",
        "/images/generate": "POST",
    }
    for answer in answers.values():
        assert answer.status_code == 405 and answer.json() == {"error": "Method Not Allowed", "field": None}


async def test_every_path_that_answers_get_answers_head_as_its_allow_header_says(
    make_gen: Callable[..., ImageGen],
) -> None:
    """QA: ``HEAD /admin/status`` answered 405 with ``Allow: GET, HEAD``. Monitors probe with HEAD: every GET
    route answers it, with GET's status and headers and no body, behind the same auth. The app's own routes
    too: fastapi-offline's doc pages (QA: ``HEAD /docs`` and ``HEAD /redoc`` were 405)."""
    from fastapi.routing import APIRoute

    from imagegen_core.api import admin, admin_ops, create_app, public

    gen = make_gen()
    routers = [module.router for module in (public, admin, admin_ops)] + [create_app(gen).router]
    paths = sorted(
        route.path
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute) and "GET" in route.methods and "{" not in route.path
    )
    assert {"/admin/status", "/admin/config", "/admin/stats", "/health", "/config", "/docs", "/redoc"} <= set(paths)
    async with api_client(gen) as client:
        for path in paths:
            get, head = await client.get(path, headers=ADMIN), await client.head(path, headers=ADMIN)
            assert (head.status_code, head.content) == (get.status_code, b""), path
            assert head.headers["content-type"] == get.headers["content-type"], path
        assert (await client.head("/admin/status")).status_code == 401  # the same auth
