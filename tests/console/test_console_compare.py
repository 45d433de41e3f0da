"""The Compare page: one card per provider with its final status; picking one stores it and logs the pick."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import respx
from console_helpers import core, fake_config, open_job, open_page, rendered, started, texts
from PIL import Image

from imagegen_core import ImageGen, StorageError, StoredObject, service
from imagegen_core.log.history import get_request
from imagegen_core.storage import LocalStore
from tests.providers.fixtures import UNSPLASH_API, UNSPLASH_RAW, unsplash_photo, unsplash_search


def test_one_card_per_provider_with_final_statuses_then_a_pick_is_stored_and_logged(tmp_path: Path) -> None:
    with core() as gen:
        gen.set_config(
            fake_config(
                alpha={"options": {"latencyMs": 20}},
                beta={"options": {"latencyMs": 150}},
                broken={"options": {"latencyMs": 10, "failureRate": 1.0}},
                stuck={"timeout": 300, "options": {"hang": True}},
            )
        )
    at = open_page("compare").run()
    at.text_area(key="compare_prompt").input("harbour at dawn")
    at.text_input(key="compare_article").input("art-9")
    at.selectbox(key="compare_size").select("Square 1:1 (1080×1080)")
    at.button(key="compare_go").click().run()

    assert not at.exception and not at.error
    shown = texts(at)
    for card in (
        "**alpha** :green-badge[done]",
        "**beta** :green-badge[done]",
        "**broken** :red-badge[failed]",
        "**stuck** :orange-badge[timed out]",
    ):
        assert card in shown
    assert len(at.get("image")) == 2  # the two providers that produced an image
    assert not list((tmp_path / "home" / "images").rglob("*.webp")), "nothing is stored before the pick"

    at.button(key="compare_pick_beta").click().run()

    assert not at.exception
    (url,) = [code.value for code in at.code]
    with Image.open(Path(urlsplit(url).path)) as img:
        assert img.size == (1080, 1080)
    # one image per article: once beta is picked, no button may store a second one (it counted as a second win)
    assert at.button(key="compare_pick_beta").disabled and at.button(key="compare_pick_alpha").disabled
    with core() as gen:
        (pick,) = gen.log.query("SELECT request_id, provider, offered, article_id, url FROM picks")
        assert (pick["provider"], json.loads(pick["offered"]), pick["article_id"], pick["url"]) == (
            "beta",
            ["alpha", "beta"],
            "art-9",
            url,
        )
        request = get_request(gen.log, pick["request_id"])
    assert request is not None
    assert (request["status"], request["provider"], request["url"], request["source"]) == (
        "success",
        "beta",
        url,
        "compare",
    )


def test_a_refused_comparison_is_one_line() -> None:
    at = open_page("compare").run()
    at.button(key="compare_go").click().run()  # empty prompt
    assert not at.exception
    assert [rendered(e.value) for e in at.error] == ["prompt: must not be empty"]


def test_the_form_keeps_what_was_sent_after_the_comparison() -> None:
    """Regression (as on Generate): fields typed just before the click came back empty after the comparison."""
    at = open_page("compare").run()
    at.text_area(key="compare_prompt").input("harbour at dawn")
    at.text_input(key="compare_article").input("art-9")
    at.button(key="compare_go").click().run()
    assert not at.exception and not at.error
    assert (at.text_area(key="compare_prompt").value, at.text_input(key="compare_article").value) == (
        "harbour at dawn",
        "art-9",
    )


def test_a_reloaded_comparison_keeps_its_images_and_its_pick() -> None:
    """A reload (a new session) lost a comparison's unstored images, and with them the editor's choice; a
    pick made before it could be made again, a second stored image and a second win. The page's URL names
    the comparison, and every session that shows it shares its pick."""
    with core() as gen:
        gen.set_config(fake_config(alpha={"options": {"latencyMs": 20}}, beta={"options": {"latencyMs": 40}}))
    first = started("compare", "harbour at dawn")
    first.button(key="compare_pick_alpha").click().run()
    (url,) = [code.value for code in first.code]

    reloaded = open_job("compare", first.query_params["job"])

    assert not reloaded.exception and not reloaded.error
    assert reloaded.text_area(key="compare_prompt").value == "harbour at dawn"
    assert len(reloaded.get("image")) == 2, "both candidates, still unstored but for the pick"
    assert reloaded.button(key="compare_pick_alpha").disabled and reloaded.button(key="compare_pick_beta").disabled
    assert [code.value for code in reloaded.code] == [url]
    with core() as gen:
        assert [row["provider"] for row in gen.log.query("SELECT provider FROM picks")] == ["alpha"]
        assert len(gen.log.query("SELECT id FROM requests")) == 1, "one comparison, not a second"


def test_a_refused_pick_is_one_literal_line_in_its_card(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pick can be refused (another tab picked this comparison first, or the upload failed): its message,
    which quotes a store's answer, was drawn as Markdown (a URL became a link, ``**`` bold) and in full."""
    import imagegen_core.console_data

    def refuse(*args: object) -> None:
        raise StorageError("storing failed: **503** from https://bucket.example/_img_\ntraceback line")

    with core() as gen:
        gen.set_config(fake_config(alpha={"options": {"latencyMs": 20}}))
    at = open_page("compare").run()
    at.text_area(key="compare_prompt").input("harbour at dawn")
    at.button(key="compare_go").click().run()
    monkeypatch.setattr(imagegen_core.console_data, "pick", refuse)
    at.button(key="compare_pick_alpha").click().run()

    assert not at.exception
    (error,) = at.error
    assert rendered(error.value) == "storing failed: **503** from https\u200b://bucket.example/_img_"


def test_a_click_in_a_tab_drawn_before_another_tabs_pick_says_where_the_pick_came_from() -> None:
    """Two tabs show one comparison; the first picks alpha; the second, drawn before that, clicks beta. Its
    button is off by then, and the click seemed ignored: nothing said that another tab had picked."""
    with core() as gen:
        gen.set_config(fake_config(alpha={"options": {"latencyMs": 20}}, beta={"options": {"latencyMs": 40}}))
    first = started("compare", "harbour at dawn")
    second = open_job("compare", first.query_params["job"])
    assert not second.button(key="compare_pick_beta").disabled

    first.button(key="compare_pick_alpha").click().run()
    second.button(key="compare_pick_beta").click().run()

    assert not second.exception and not second.error
    assert [rendered(info.value) for info in second.info] == [
        "Stored, without an article id: picked in another tab, or before this page was reloaded"
    ]
    assert not second.success
    # no article id was given (QA run: it said "the article's image" all the same)
    assert [rendered(s.value) for s in first.success] == ["Stored, without an article id"]
    assert not first.info
    assert [code.value for code in second.code] == [code.value for code in first.code]
    with core() as gen:
        assert [row["provider"] for row in gen.log.query("SELECT provider FROM picks")] == ["alpha"]


class FlakyStore(LocalStore):
    """Refuses uploads while ``refusing`` (a store folder made immutable, then writable again)."""

    refusing = False

    async def put(self, key: str, data: bytes, **kwargs: Any) -> StoredObject:
        if self.refusing:
            raise StorageError(f"[Errno 1] Operation not permitted: '{self.root}/{key}' " + "(a long OS text) " * 20)
        return await super().put(key, data, **kwargs)


def test_a_failed_pick_is_one_short_line_and_picking_again_stores_one_image(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """QA: a pick whose upload failed filled some forty lines of its card with the store's text, and picking
    again once the store worked stored a second copy (the spool uploaded the first one too). The card says it
    in one short line, the server log has the whole text, and the second try stores the image where the spool
    keeps it: one image."""
    store = FlakyStore(tmp_path / "bucket")
    built = ImageGen.from_settings
    monkeypatch.setattr(ImageGen, "from_settings", lambda settings=None, **kw: built(settings, store=store, **kw))
    with core() as gen:
        gen.set_config(fake_config(alpha={"options": {"latencyMs": 20}}))
    at = started("compare", "harbour at dawn")
    store.refusing = True
    at.button(key="compare_pick_alpha").click().run()

    assert not at.exception
    assert [rendered(e.value) for e in at.error] == [
        "Not stored: the upload failed (the server log says why). Try again: it is stored once."
    ]
    assert "Operation not permitted" in caplog.text and "the pick of alpha was not stored" in caplog.text
    store.refusing = False
    at.button(key="compare_pick_alpha").click().run()

    assert not at.exception and not at.error
    (url,) = [code.value for code in at.code]
    with core() as gen:
        asyncio.run(gen.spool.flush(store))  # what the background retry does with the first try's image
        stored = [p.relative_to(store.root).as_posix() for p in store.root.rglob("*.webp") if "defaults" not in p.parts]
        assert len(stored) == 1 and url.endswith(stored[0]), (stored, url)
        assert [row["provider"] for row in gen.log.query("SELECT provider FROM picks")] == ["alpha"]


def stored_lines(tree: Any) -> list[tuple[tuple[tuple[int, str], ...], str]]:
    """Every "Stored…" line of a page run's element tree, each with its place: the path of child indexes from
    the root, with the type of each node on the way (the browser replaces an element in place only when the
    next run draws one at the same place, in the same kind of blocks)."""
    found = []

    def walk(node: Any, path: tuple[tuple[int, str], ...]) -> None:
        for index, child in getattr(node, "children", {}).items():
            here = (*path, (index, child.type))
            value = getattr(child, "value", None) if child.type in ("success", "info") else None
            if isinstance(value, str) and value.startswith("Stored"):
                found.append((here, value))
            walk(child, here)

    walk(tree, ())
    return found


@pytest.fixture
def page_runs(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The element tree of every script run AppTest makes, internal reruns (``st.rerun``) included, in order:
    AppTest itself keeps only the last one, while the browser shows each run's elements until the next run
    replaces them."""
    import streamlit.testing.v1.local_script_runner as runner
    from streamlit.runtime.forward_msg_queue import ForwardMsgQueue
    from streamlit.testing.v1.element_tree import parse_tree_from_messages

    trees: list[Any] = []
    clear = ForwardMsgQueue.clear

    def clear_after_keeping(self: ForwardMsgQueue, *args: Any, **kwargs: Any) -> None:
        deltas = [msg for msg in self._queue if msg.HasField("delta")]
        if deltas:  # a run's elements, dropped as the next run starts
            trees.append(parse_tree_from_messages(deltas))
        clear(self, *args, **kwargs)

    def last_run(messages: list[Any]) -> Any:
        tree = parse_tree_from_messages(messages)
        trees.append(tree)
        return tree

    monkeypatch.setattr(ForwardMsgQueue, "clear", clear_after_keeping)
    monkeypatch.setattr(runner, "parse_tree_from_messages", last_run)
    return trees


def test_a_pick_made_while_others_run_is_one_stored_line_when_the_comparison_ends(page_runs: list[Any]) -> None:
    """QA: when a comparison picked from while another provider still ran came to its end, its card showed two
    "Stored…" lines for a moment. The finished page drew its cards in a layout of their own, so the line moved
    to another place in the page, and the browser kept the running page's line there until the run was over.
    Now the cards are the same blocks running and finished: the line is redrawn in place, one at every moment."""
    import console.common
    from imagegen_core.console_data import Job, compare, make_request, pick

    with core() as setup:
        setup.set_config(
            fake_config(fast={"options": {"latencyMs": 20}}, slow={"options": {"latencyMs": 1500}})
            | {"defaults": {"timeout": 8000}}
        )
    gen = console.common._shared_gen()  # the console's own, as the page's pick button uses it
    comparisons: list[Any] = []
    # What the page's Compare button starts (see console/views/compare.py), and a pick of the fast card as soon
    # as it is done, as its "Use this image" button makes it, while the slow provider still runs.
    job: Job[Any] = Job(
        lambda emit: compare(
            gen,
            make_request(prompt="harbour at dawn"),
            emit=lambda view: emit((0.0, view)),
            on_start=lambda comparison: (comparisons.append(comparison), emit((0.0, comparison))),
        )
    )
    picked: dict[str, Any] = {}
    entry = console.common.job_shelf().put(
        "compare", job, form={"compare_prompt": "harbour at dawn"}, picked=picked, providers=["fast", "slow"]
    )
    job.start()
    for _, event in job.events():
        if not isinstance(event, list) and getattr(event, "provider", None) == "fast" and event.picture is not None:
            break
    picked["fast"] = pick(gen, comparisons[0], "fast")
    assert not job.done, "the slow provider must still run when the page is drawn"

    at = open_job("compare", entry.token)  # drawn running, then finished (its own rerun)

    assert not at.exception and not at.error
    at_the_end = [line.value for line in (*at.success, *at.info) if line.value.startswith("Stored")]
    assert len(at_the_end) == 1 and len(stored_lines(page_runs[-1])) == 1
    assert len(page_runs) >= 2, "drawn running, then finished"
    places = {place for tree in page_runs for place, _ in stored_lines(tree)}
    assert len(places) == 1, f"the line moved between page runs, so the browser showed it twice: {places}"


def png_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (20, 90, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


#: What the console says under a stock photo's credit (Generate and History say the same).
CREDIT_NOTE = "Stock photo: publish this credit with the image."


def test_a_stock_photos_card_and_its_pick_give_the_linked_credit_to_publish(monkeypatch: pytest.MonkeyPatch) -> None:
    """QA: Compare showed a stock photo's credit as plain text ("Photo by Ada Lens on Unsplash"), without the
    links Unsplash's terms require or the word that it must be published, and said nothing of it once the
    photo was picked. Its card and the picked image's URL now carry the credit as Generate and History show
    it: linked, with "publish this credit with the image". (Unsplash through respx: the real provider.)"""
    router = respx.Router(assert_all_called=False)
    router.get(f"{UNSPLASH_API}/search/photos").respond(200, json=unsplash_search(unsplash_photo()))
    router.get(url__startswith=UNSPLASH_RAW.split("?")[0]).respond(
        200, content=png_bytes(800, 450), headers={"Content-Type": "image/png"}
    )
    ping = router.get(f"{UNSPLASH_API}/photos/Abc123xyz/download").respond(200, json={"url": UNSPLASH_RAW})
    monkeypatch.setattr(
        service, "make_http_client", lambda: httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler))
    )
    monkeypatch.setenv("UNSPLASH_ACCESS_KEY", "us_test")
    with core() as gen:
        gen.set_config(fake_config(alpha={"options": {"latencyMs": 20}}, unsplash={"type": "unsplash"}))
    at = started("compare", "lighthouse on a cliff")
    assert not at.exception and not at.error

    credit = "Photo by [Ada Lens](https://unsplash.com/@adalens?utm_source="
    assert [text for text in texts(at) if text.startswith(credit)], texts(at)
    assert texts(at).count(CREDIT_NOTE) == 1, "the stock photo's card only, not the generated image's"

    at.button(key="compare_pick_unsplash").click().run()

    assert not at.exception and not at.error and ping.called
    (url,) = [code.value for code in at.code]
    assert url.startswith("https://images.unsplash.com/photo-1500000000000-abc")
    shown = texts(at)
    assert len([text for text in shown if text.startswith(credit)]) == 2, "on its card and with its URL"
    assert shown.count(CREDIT_NOTE) == 2
    in_order = [node.value for node in at.main if node.type in ("markdown", "caption")]
    with_url = in_order[in_order.index("Permanent URL of the image from unsplash") :]
    assert any(text.startswith(credit) for text in with_url) and CREDIT_NOTE in with_url, in_order


def test_a_pick_names_the_article_it_was_stored_for_when_the_field_says_another() -> None:
    """QA in Chromium: an editor compared for art-1, then typed art-2 in the (usable again) Article id field and
    picked. The image went to art-1, the comparison's article, as it must; but the card said only "Stored as the
    article's image", under a field that read art-2. It names the article now."""
    with core() as gen:
        gen.set_config(fake_config(alpha={"options": {"latencyMs": 20}}))
    at = open_page("compare").run()
    at.text_area(key="compare_prompt").input("harbour at dawn")
    at.text_input(key="compare_article").input("art-1")
    at.button(key="compare_go").click().run()
    at.text_input(key="compare_article").input("art-2").run()
    at.button(key="compare_pick_alpha").click().run()

    assert not at.exception and not at.error
    assert [rendered(s.value) for s in at.success] == ["Stored as the article's image, for article art-1"]
    with core() as gen:
        assert [row["article_id"] for row in gen.log.query("SELECT article_id FROM picks")] == ["art-1"]
