"""Headless Chromium for the browser tests (the console's and the API docs'): Debian's system Chromium
driven by Playwright, as ``docs/tooling.md`` says (never ``playwright install``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = Path("/usr/bin/chromium")
# From docs/tooling.md: Playwright drives the system Chromium (never `playwright install`).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

#: Skips a browser test where Debian's Chromium is missing, except in CI (which installs it).
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"),
    reason="needs Debian's chromium (/usr/bin/chromium); CI installs it, so there it always runs",
)


@contextmanager
def chromium_page(tmp_path: Path, *, width: int, height: int, timezone_id: str | None = None) -> Iterator[Page]:
    """A page of the system Chromium (headless, a fresh profile under ``tmp_path``) in a ``width`` x
    ``height`` window, waiting up to 30 s for what a step expects; in the time zone ``timezone_id`` (an IANA
    name) when given, else the machine's."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height},
            timezone_id=timezone_id,
        )
        try:
            page = ctx.new_page()
            page.set_default_timeout(30_000)
            yield page
        finally:
            ctx.close()
