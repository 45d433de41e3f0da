"""A second request in a real browser: while it runs, nothing of the first one's answer may stay on the page.

Streamlit keeps the elements of a page's last run on screen until the running script draws over them, and
a container drawn where a container of the same kind stood inherits its children. The race's progress is
drawn from a run that lasts as long as the race, so whatever that run does not draw over stays for the
whole race: the last image with its "Permanent URL" and its download button (QA), which an editor could copy
into the new article. AppTest builds its tree from one run's messages only, so only a browser shows this.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from console_helpers import core, fake_config
from test_console_browser import serve_console

from tests.browser import chromium_page, needs_chromium

pytestmark = needs_chromium


def test_a_new_race_does_not_show_the_last_answer_while_it_runs(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with core() as gen:
        gen.set_config(fake_config(slow={"options": {"latencyMs": 100}}) | {"defaults": {"timeout": 15_000}})
    with serve_console(tmp_path) as base, chromium_page(tmp_path, width=1280, height=1000) as page:
        page.goto(base)
        prompt = page.get_by_label("Prompt")
        go = page.get_by_role("button", name="Generate")
        prompt.fill("first article's picture")
        prompt.press("Tab")  # a text area sends its value when it loses focus
        go.click()
        url = page.get_by_text("file://").first
        expect(url).to_be_visible(timeout=20_000)
        first_url = url.inner_text()
        slow_down(slow={"options": {"latencyMs": 5000}})  # the second race runs long enough to look at

        prompt.fill("second article's picture")
        prompt.press("Tab")  # a text area sends its value when it loses focus
        go.click()
        racing = page.get_by_text("Racing providers…")
        expect(racing).to_be_visible()
        # The first answer is gone while the second race runs ...
        main = page.get_by_test_id("stMain")
        assert first_url not in main.inner_text()
        expect(page.get_by_text("Permanent URL", exact=True)).to_have_count(0, timeout=1000)
        expect(page.get_by_role("button", name="Download")).to_have_count(0, timeout=1000)
        assert racing.is_visible()  # (checked while it ran)
        # ... and the second one comes in its place.
        expect(page.get_by_text("Permanent URL", exact=True)).to_be_visible(timeout=20_000)
        assert first_url not in main.inner_text()


def test_a_new_comparison_does_not_show_the_last_pick_while_it_runs(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with core() as gen:
        gen.set_config(
            fake_config(quick={"options": {"latencyMs": 100}}, slow={"options": {"latencyMs": 200}})
            | {"defaults": {"timeout": 15_000}}
        )
    with serve_console(tmp_path) as base, chromium_page(tmp_path, width=1280, height=1000) as page:
        page.goto(f"{base}/compare")
        prompt = page.get_by_label("Prompt")
        go = page.get_by_role("button", name="Compare")
        prompt.fill("first article's picture")
        page.get_by_label("Article id").fill("article-1")
        prompt.press("Tab")  # a text area sends its value when it loses focus
        go.click()
        page.get_by_role("button", name="Use this image").first.click(timeout=20_000)
        stored = page.get_by_text("Stored as the article's image")
        expect(stored).to_be_visible()
        expect(page.get_by_text("running", exact=True)).to_have_count(0, timeout=20_000)  # the slow card too
        first_url = page.get_by_text("file://").first.inner_text()
        slow_down(quick={"options": {"latencyMs": 100}}, slow={"options": {"latencyMs": 5000}})

        prompt.fill("second article's picture")
        page.get_by_label("Article id").fill("article-2")
        prompt.press("Tab")  # a text area sends its value when it loses focus
        go.click()
        running = page.get_by_text("running", exact=True).last  # the slow card's badge
        expect(running).to_be_visible()
        # Neither the last pick nor its URL, nor the slow card's last image, while the slow card runs.
        expect(stored).to_have_count(0, timeout=1000)
        assert first_url not in page.get_by_test_id("stMain").inner_text()
        expect(page.get_by_role("button", name="Use this image")).to_have_count(1, timeout=1000)  # quick's own
        assert running.is_visible()  # (checked while it ran)


def slow_down(**fakes: dict[str, Any]) -> None:
    """The console's next request runs under these fakes (the console reads the config the log holds)."""
    with core() as gen:
        gen.set_config(fake_config(**fakes) | {"defaults": {"timeout": 15_000}})
