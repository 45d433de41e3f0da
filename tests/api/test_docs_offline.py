"""The API's interactive docs work on a machine without internet: ``imagegen serve`` on a free 127.0.0.1 port,
opened in headless Chromium with every request to another host refused. FastAPI's default pages load Swagger
UI and ReDoc from cdn.jsdelivr.net (and fonts from Google) and stayed blank offline (a new-user run)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from tests.browser import chromium_page, needs_chromium

from .serve_process import serve, serve_env

if TYPE_CHECKING:
    from playwright.sync_api import Route

pytestmark = needs_chromium


def test_swagger_ui_and_redoc_render_from_the_server_alone(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    elsewhere: list[str] = []

    def only_loopback(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:  # as on a machine without internet, and noted: the docs must not need it
            elsewhere.append(route.request.url)
            route.abort()

    with (
        serve(cwd=tmp_path, env=serve_env(tmp_path / "home")) as server,
        chromium_page(tmp_path, width=1280, height=900) as page,
    ):
        page.route("**/*", only_loopback)
        page.goto(f"{server.base_url}/docs")
        # Swagger UI drew the operations from /openapi.json: its script ran
        expect(page.locator(".opblock-summary-path", has_text="/images/generate")).to_be_visible()
        page.goto(f"{server.base_url}/redoc")
        expect(page.get_by_role("heading", name="imagegen").first).to_be_visible()
        expect(page.get_by_text("/images/generate").first).to_be_attached()
    # Refused and not missed: the "API docs by Redocly" footer logo, which the ReDoc bundle itself links to.
    assert set(elsewhere) <= {"https://cdn.redoc.ly/redoc/logo-mini.svg"}
