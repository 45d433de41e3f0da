"""The History page: requests from the log newest first, searchable, with thumbnails; surviving a new
session (it is the database); reusing an image for another article is recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from console_helpers import core, open_page, rendered, texts
from streamlit.testing.v1.element_tree import Block

from imagegen_core import Attribution, InvalidRequestError
from imagegen_core.console_data import credit_markdown
from imagegen_core.history import search
from imagegen_core.log.history import count_requests, search_requests
from tests.log.rows import add_request


def seed() -> list[str]:
    """Three offline images (oldest first) and a comparison nobody picked from; returns their URLs."""
    urls = []
    with core() as gen:
        for prompt, keyword, article in (
            ("harbour cranes at dawn", "harbour", "art-1"),
            ("a lighthouse at dusk", None, "art-2"),
            ("city council vote", "politics", "art-3"),
        ):
            result = gen.generate_sync(
                {"prompt": prompt, "keyword": keyword, "articleId": article, "width": 320, "height": 180}
            )
            urls.append(result.url)
        gen.compare_sync({"prompt": "an unpicked comparison", "width": 320, "height": 180})
    return urls


def prompts(at: object) -> list[str]:
    return [text.strip("*") for text in texts(at) if text.startswith("**")]  # type: ignore[arg-type]


def test_lists_requests_newest_first_with_thumbnails_and_survives_a_new_session() -> None:
    urls = seed()
    at = open_page("history").run()

    assert not at.exception
    assert prompts(at) == [
        "an unpicked comparison",
        "city council vote",
        "a lighthouse at dusk",
        "harbour cranes at dawn",
    ]
    assert len(at.get("image")) == 3  # a thumbnail per stored image; the comparison has none
    assert [code.value for code in at.code] == urls[::-1]
    assert "4 requests" in texts(at)

    again = open_page("history").run()  # a new browser session: nothing comes from session state
    assert prompts(again) == prompts(at)


def test_a_damaged_image_file_leaves_its_row_without_a_thumbnail_not_the_page_a_traceback() -> None:
    """QA in Chromium: one stored file cut short (a disk that filled up, a copy interrupted) or overwritten made the
    whole History page Pillow's traceback ("OSError: could not create decoder object"), no row listed. Its row
    says so in place of the thumbnail now; the other rows keep theirs."""
    urls = seed()
    cut = Path(urlsplit(urls[1]).path)
    cut.write_bytes(cut.read_bytes()[:200])
    Path(urlsplit(urls[2]).path).write_bytes(b"not an image")
    at = open_page("history").run()

    assert not at.exception
    assert len(prompts(at)) == 4
    assert len(at.get("image")) == 1  # the first image's, still readable
    assert [caption.value for caption in at.caption].count("image file damaged: cannot be shown") == 2


def test_search_matches_prompt_keyword_and_article_id_in_any_case() -> None:
    seed()
    at = open_page("history").run()
    for query, expected in (
        ("LIGHTHOUSE", ["a lighthouse at dusk"]),
        ("politics", ["city council vote"]),
        ("art-1", ["harbour cranes at dawn"]),
        ("nothing like this", []),
    ):
        at.text_input(key="history_search").input(query).run()
        assert prompts(at) == expected, query
    at.text_input(key="history_search").input("").run()
    at.toggle(key="history_only_images").set_value(True).run()
    assert "an unpicked comparison" not in prompts(at)


def log_prompts(*rows: tuple[str, str | None]) -> None:
    """Requests with these ``(prompt, keyword)``, oldest first (straight into the log: no image needed)."""
    with core() as gen:
        for n, (prompt, keyword) in enumerate(rows):
            gen.log.start_request(
                f"q{n}", created_at=1_700_000_000.0 + n, prompt=prompt, keyword=keyword, article_id=f"art-{n}",
                width=64, height=64, style=None, source="test",
            )  # fmt: skip


def test_search_ignores_accents_on_both_sides() -> None:
    """Regression: "cafe" did not find "Café de Flore", nor "café" "Cafe" (SQLite compared é and e as two
    letters). Accents are now ignored as case is, in the prompt, keyword and article id and in the query."""
    log_prompts(
        ("Café de Flore at night", None),
        ("Cafe racer on a wet road", None),
        ("crème brûlée in a bistro", "Noël"),
        ("a lighthouse at dusk", None),
    )
    at = open_page("history").run()
    for query, expected in (
        ("cafe", ["Cafe racer on a wet road", "Café de Flore at night"]),
        ("café", ["Cafe racer on a wet road", "Café de Flore at night"]),
        ("CAFÉ DE", ["Café de Flore at night"]),
        ("creme brulee", ["crème brûlée in a bistro"]),
        ("NOEL", ["crème brûlée in a bistro"]),  # the keyword
        ("caffe", []),
    ):
        at.text_input(key="history_search").input(query).run()
        assert not at.exception
        assert prompts(at) == expected, query


def test_accent_blind_search_in_the_log_query() -> None:
    """The SQLite query folds both sides alike: composed or decomposed accents (NFC "é" or "e" + U+0301),
    compatibility forms (the "ﬁ" ligature), letters whose stroke is not a combining mark (ł, ø), any case;
    the total counts the same rows; LIKE's wildcards in a query stay literal."""
    log_prompts(
        ("Cafe\u0301 in Łódź", None),
        ("ﬁsh market in Tromsø", "100% cafés"),
        ("plain text", None),
    )
    with core() as gen:
        found = {
            query: [row["prompt"] for row in search_requests(gen.log, text=query)]
            for query in ("CAFÉ", "café in lodz", "fish", "TROMSO", "100% cafe", "1_0")
        }
        assert count_requests(gen.log, text="cafe") == 2
    assert found == {
        "CAFÉ": ["ﬁsh market in Tromsø", "Cafe\u0301 in Łódź"],
        "café in lodz": ["Cafe\u0301 in Łódź"],
        "fish": ["ﬁsh market in Tromsø"],
        "TROMSO": ["ﬁsh market in Tromsø"],
        "100% cafe": ["ﬁsh market in Tromsø"],
        "1_0": [],
    }


def test_reusing_an_image_for_an_article_is_recorded_as_a_new_history_row() -> None:
    urls = seed()
    at = open_page("history").run()
    with core() as gen:
        (original,) = search_requests(gen.log, text="lighthouse")

    at.text_input(key=f"reuse_article_{original['id']}").input("art-99")
    at.button(key=f"reuse_{original['id']}").click().run()

    assert not at.exception
    assert any("Article art-99 now uses this image" in rendered(s.value) for s in at.success)
    assert prompts(at)[0] == "a lighthouse at dusk"  # the reuse is the newest row
    with core() as gen:
        (reused,) = search_requests(gen.log, text="art-99")
    assert (reused["status"], reused["url"], reused["article_id"], reused["provider"]) == (
        "reused",
        urls[1],
        "art-99",
        "offline",
    )


def test_the_count_of_requests_leaves_reuses_out_as_the_statistics_do() -> None:
    """QA: after a reuse, History said "5 requests" where Provider stats and `imagegen stats` said 4 (a reuse
    is no request, README): the reuse is counted apart."""
    seed()
    at = open_page("history").run()
    with core() as gen:
        (original,) = search_requests(gen.log, text="lighthouse")
    at.text_input(key=f"reuse_article_{original['id']}").input("art-99")
    at.button(key=f"reuse_{original['id']}").click().run()

    assert "4 requests and 1 reuse of an earlier image" in texts(at)
    at.text_input(key="history_search").input("art-99").run()
    assert "0 requests and 1 reuse of an earlier image matching “art\\-99”" in texts(at)


def test_reuse_without_an_article_id_is_refused_in_one_line() -> None:
    seed()
    at = open_page("history").run()
    with core() as gen:
        (original,) = search_requests(gen.log, text="lighthouse")
    at.button(key=f"reuse_{original['id']}").click().run()
    assert not at.exception
    assert [rendered(e.value) for e in at.error] == ["articleId: enter the article id that should use this image"]


def test_prompts_and_tags_show_as_literal_text_not_markdown() -> None:
    """Any API client writes prompts, keywords and article ids: none of their links, colours or headings
    renders in the editors' console, and a very long prompt is cut."""
    hostile = "# BREAKING :red[alert] [click here](https://example.com) *starred* $x$"
    with core() as gen:
        gen.generate_sync({"prompt": hostile, "keyword": "[k](https://k.example)", "width": 320, "height": 180})
        gen.generate_sync({"prompt": "long " * 200, "width": 320, "height": 180})
    at = open_page("history").run()
    assert not at.exception
    shown = texts(at)
    markdown = [t for t in shown if "BREAKING" in t]
    # (a zero-width space after "https": the renderer would make a bare URL a link even when escaped)
    assert markdown == [
        "**\\# BREAKING \\:red\\[alert\\] \\[click here\\]\\(https\u200b\\://example\\.com\\) \\*starred\\* \\$x\\$**"
    ]
    assert any("keyword: \\[k\\]\\(https\u200b\\://k\\.example\\)" in t for t in shown)
    (long_prompt,) = [t for t in shown if t.startswith("**long")]
    assert long_prompt.endswith("…**") and len(long_prompt) < 320


def test_a_right_to_left_override_in_a_prompt_cannot_turn_the_history_around() -> None:
    """Found in a new-user run: U+202E in a prompt reversed everything after it on the History page (a
    prompt could make "gpj.exe" read "exe.jpg", or a row's other facts read backwards)."""
    with core() as gen:
        gen.generate_sync({"prompt": "invoice \u202egpj.exe \u2067isolated\u2069 end", "width": 320, "height": 180})
    at = open_page("history").run()
    assert not at.exception
    (shown,) = [t for t in texts(at) if "invoice" in t]
    assert shown == "**invoice gpj\\.exe isolated end**"


def test_an_article_id_in_the_reuse_notice_shows_literally() -> None:
    with core() as gen:
        gen.generate_sync({"prompt": "harbour", "width": 320, "height": 180})
    at = open_page("history").run()
    (row_id,) = [k.removeprefix("reuse_article_") for k in (w.key for w in at.text_input) if k.startswith("reuse_")]
    at.text_input(key=f"reuse_article_{row_id}").input("**bold** [x](http://evil.example)").run()
    at.button(key=f"reuse_{row_id}").click().run()
    (notice,) = [s.value for s in at.success]
    assert notice.startswith(
        "Article \\*\\*bold\\*\\* \\[x\\]\\(http\u200b\\://evil\\.example\\) now uses this image: "
    )


def row_ids(at: Any) -> list[str]:
    """The request ids of the rows that offer a reuse, top to bottom."""
    return [w.key.removeprefix("reuse_article_") for w in at.text_input if w.key.startswith("reuse_article_")]


def place(at: Any, request_id: str) -> int:
    """Where the row of ``request_id`` is among the page's top-level elements."""
    key = f"reuse_article_{request_id}"
    (found,) = [n for n, node in enumerate(at.main.children.values()) if key in within(node)]
    return found


def within(node: Any) -> list[str]:
    """The keys of a node and of everything in it (a Block iterates over itself and all it holds)."""
    return [getattr(n, "key", None) or "" for n in node] if isinstance(node, Block) else [node.key or ""]


def test_each_row_keeps_its_own_reuse_box_when_a_reuse_adds_a_row_on_top() -> None:
    """Regression: after a reuse (a new row on top, a notice above the rows) the browser showed the next
    row's "Reuse" box open where the editor had typed, with the earlier article id still in it, so the next
    reuse recorded the earlier article again. The rows stay in place whether a notice shows or not, the
    boxes' state belongs to their request id, and a reuse empties its field."""
    seed()
    at = open_page("history").run()
    at.text_input(key="history_search").input("lighthouse").run()
    (original,) = row_ids(at)
    where = place(at, original)

    at.text_input(key=f"reuse_article_{original}").input("dbl-A")
    at.button(key=f"reuse_{original}").click().run()
    copy, again = row_ids(at)
    assert again == original
    assert place(at, copy) == where, "the notice moved the rows down"
    assert at.text_input(key=f"reuse_article_{original}").value == "", "a done reuse is not ready to send again"

    at.text_input(key=f"reuse_article_{copy}").input("dbl-B")
    at.button(key=f"reuse_{copy}").click().run()

    assert not at.exception
    (notice,) = [rendered(s.value) for s in at.success]
    assert notice.startswith("Article dbl-B now uses this image")
    with core() as gen:
        reused = [row["article_id"] for row in search_requests(gen.log, text="lighthouse") if row["status"] == "reused"]
    assert sorted(reused) == ["dbl-A", "dbl-B"]
    assert at.session_state[f"reuse_open_{copy}"] is False  # the box's open state is the row's


def test_a_refused_size_shows_as_it_was_asked_even_zero() -> None:
    """QA run: a request refused for its size 0×630 showed no size at all (1200×0 and -5×100 did)."""
    with core() as gen:
        for width, height in ((0, 630), (1200, 0)):
            gen.log.reject_request(
                f"zero-{width}", created_at=1.0, prompt=f"refused {width}", keyword=None, article_id=None,
                width=width, height=height, style=None, source="test", error="size",
            )  # fmt: skip
    at = open_page("history").run()
    captions = [rendered(c.value) for c in at.caption]
    assert any("rejected · - · 0×630" in c for c in captions) and any("1200×0" in c for c in captions), captions


def test_a_rows_time_is_shown_in_utc_and_says_so() -> None:
    """QA: the rows showed the server's local time, unnamed, while the stats page's day buckets are UTC days:
    the console has one clock, UTC, and says so."""
    with core() as gen:
        add_request(gen.log, "utc-row", 1_700_000_000.0, "success", prompt="a row at a known time")
    at = open_page("history").run()
    captions = [rendered(c.value) for c in at.caption]
    assert any(c.startswith("2023-11-14 22:13 UTC · success") for c in captions), captions


def test_a_new_search_starts_again_at_one_page_of_rows() -> None:
    """Regression (QA): the pages "Show more" had added stayed for every later search, which drew them all at
    once (140 rows took 5 s)."""
    with core() as gen:
        for n in range(50):
            prompt = f"{'harbour' if n % 2 else 'council'} story {n}"
            add_request(gen.log, f"{n:032x}", created_at=1_790_000_000 + n, prompt=prompt)
    at = open_page("history").run()
    assert len(prompts(at)) == 20
    at.button(key="history_more").click().run()
    assert len(prompts(at)) == 40
    at.text_input(key="history_search").input("harbour").run()
    assert len(prompts(at)) == 20 and all("harbour" in prompt for prompt in prompts(at))
    at.button(key="history_more").click().run()
    assert len(prompts(at)) == 25  # all of them
    at.toggle(key="history_only_images").set_value(True).run()
    at.text_input(key="history_search").input("").run()
    at.toggle(key="history_only_images").set_value(False).run()
    assert len(prompts(at)) == 20


def test_a_search_longer_than_the_limit_shows_the_limit_in_one_line_not_a_traceback() -> None:
    """QA: a History search of more than 50,000 characters failed as a log database error ("LIKE or GLOB
    pattern too complex"). The page now says the limit; the library's ``search`` raises InvalidRequestError."""
    seed()
    with core() as gen:
        with pytest.raises(InvalidRequestError, match=r"^search: is 50,001 characters; the limit is 500"):
            search(gen, "x" * 50_001)
        assert search(gen, "harbour " + "x" * 492)[1] == 0  # 500 characters: searched
    at = open_page("history").run()
    at.text_input(key="history_search").input("harbour " * 6_251).run()
    assert not at.exception
    assert [rendered(e.value) for e in at.error] == [
        "The search is 50,007 characters; the limit is 500: search for a part of the text."
    ]
    assert prompts(at) == []
    at.text_input(key="history_search").input("harbour").run()
    assert not at.error and prompts(at) == ["harbour cranes at dawn"]


#: What the console says under a stock photo's credit.
CREDIT_NOTE = "Stock photo: publish this credit with the image."
CREDIT = Attribution(
    photographer_name="Ada Lens",
    photographer_url="https://unsplash.com/@adalens?utm_source=imagegen&utm_medium=referral",
    source_name="Unsplash",
    source_url="https://unsplash.com/?utm_source=imagegen&utm_medium=referral",
)


def log_stock_photo(request_id: str, *, credit: Attribution | None, provider: str = "unsplash") -> None:
    """A stock photo finished as the service logs it (a hotlink, with its credit when given)."""
    with core() as gen:
        gen.log.start_request(
            request_id, created_at=1_700_000_000.0, prompt=f"lighthouse ({request_id})", keyword="coast",
            article_id="art-1", width=800, height=450, style=None, source="api",
        )  # fmt: skip
        extra = {"attribution": credit.to_log()} if credit is not None else {}
        gen.log.finish_request(
            request_id, finished_at=1_700_000_001.0, status="success", provider=provider,
            url=f"https://images.unsplash.com/{request_id}?w=800&h=450", elapsed_ms=900, **extra,
        )  # fmt: skip


def test_reusing_a_stock_photo_shows_the_credit_it_must_be_published_with() -> None:
    """QA: the log kept no credit, so History showed none for a stock photo, and its reuse for another article
    said nothing of the credit Unsplash's terms require. Now the row shows it, the reuse's notice repeats it,
    and the reused row carries it too."""
    log_stock_photo("photo-1", credit=CREDIT)
    at = open_page("history").run()
    credit = credit_markdown(CREDIT)
    assert not at.exception
    assert [text for text in texts(at) if text == credit] == [credit]
    assert CREDIT_NOTE in texts(at)

    at.text_input(key="reuse_article_photo-1").input("art-7")
    at.button(key="reuse_photo-1").click().run()

    assert not at.exception
    (notice,) = at.success
    assert "Article art\\-7 now uses this image" in notice.value and credit in notice.value
    assert [text for text in texts(at) if text == credit] == [credit, credit]  # the reused row and the original
    with core() as gen:
        (reused,) = search_requests(gen.log, text="art-7")
    assert reused["status"] == "reused" and Attribution.from_log(reused["attribution"]) == CREDIT


#: What History says of a stock photo whose credit the log does not hold (rows logged before credits were kept).
CREDIT_MISSING = "photographer credit was not recorded"


def test_a_stock_photo_logged_without_its_credit_warns_on_its_row_and_on_reuse() -> None:
    """QA: a stock photo logged before credits were kept (schema v4) was shown, and reused for another article,
    with no credit and no word of it. Unsplash's terms require the credit: its row and the reuse's notice now
    say, in one warning line each, that it was not recorded and must be found before publishing."""
    log_stock_photo("photo-old", credit=None)
    at = open_page("history").run()
    assert not at.exception and not at.error and CREDIT_NOTE not in texts(at)
    (warning,) = at.warning
    assert CREDIT_MISSING in warning.value and "before publishing" in warning.value

    at.text_input(key="reuse_article_photo-old").input("art-8")
    at.button(key="reuse_photo-old").click().run()

    assert not at.exception and not at.error
    (notice,) = at.success
    assert "Article art\\-8 now uses this image" in notice.value and "Photo by" not in notice.value
    # The notice's own warning, then the reused row's and the original's.
    assert [CREDIT_MISSING in w.value and "before publishing" in w.value for w in at.warning] == [True] * 3


def test_a_generated_image_has_no_credit_and_no_credit_warning() -> None:
    """Only a stock provider's photos need a credit: a generated image shows none, and no warning either."""
    log_stock_photo("drawn-1", credit=None, provider="offline")
    at = open_page("history").run()
    assert not at.exception and CREDIT_NOTE not in texts(at) and not at.warning
    at.text_input(key="reuse_article_drawn-1").input("art-8")
    at.button(key="reuse_drawn-1").click().run()
    assert not at.exception and not at.error and not at.warning
    (notice,) = at.success
    assert "Article art\\-8 now uses this image" in notice.value and "Photo by" not in notice.value
