"""History: every request from the log, newest first (it is the database, so it survives a refresh),
searchable; thumbnails; reuse an earlier image for another article."""

from __future__ import annotations

from typing import Any

import streamlit as st

from console.common import get_gen, one_line_error, show_credit, show_thumbnail, utc_time
from imagegen_core import ImageGenError, InvalidRequestError
from imagegen_core.console_data import credit_markdown
from imagegen_core.console_data import markdown_literal as md
from imagegen_core.history import reuse, search
from imagegen_core.log.history import WITH_IMAGE

#: Characters of a prompt or an error shown per row (the whole text stays in the log).
PROMPT_CHARS = 300

PAGE_SIZE = 20

gen = get_gen()
state = st.session_state

st.title("History")
# The toggle sits level with the search box; its label stays short, so that it fits beside the search box in
# a 1024 px window (the full meaning is in its tooltip).
search_col, filter_col = st.columns([3, 1], vertical_alignment="bottom")


def first_page() -> None:
    """A new search starts at one page of rows: the pages "Show more" added to the last one made every later
    search draw them all at once (140 rows took 5 s)."""
    state.history_pages = 1


# The search and the filter are kept for the session (persist_state): Streamlit forgets a widget's value when
# its page is left, so History came back unfiltered after a visit to another page, the browser's Back too.
text = search_col.text_input(
    "Search",
    key="history_search",
    placeholder="prompt, keyword or article id",
    icon=":material/search:",
    on_change=first_page,
    persist_state="session",
)
only_images = filter_col.toggle(
    "Images only",
    key="history_only_images",
    help="Only requests that delivered an image: a provider's, or an earlier one reused for an article.",
    on_change=first_page,
    persist_state="session",
)
try:
    rows, total, reuses = search(gen, text, with_image=only_images, limit=PAGE_SIZE * state.get("history_pages", 1))
except InvalidRequestError as exc:  # a search too long: the limit in one line under the box, nothing listed
    one_line_error(st, f"The search {exc.reason}.")
    st.stop()
# Reuses apart, as Provider stats and `imagegen stats` count them: "17 requests" over 16 requests and a reuse
# disagreed with the stats page's 16 (QA).
requests = total - reuses
counted = f"{requests} request{'s' if requests != 1 else ''}"
if reuses:
    counted += f" and {reuses} reuse{'s' if reuses != 1 else ''} of an earlier image"
st.caption(counted + (f" matching “{md(text, limit=80)}”" if text.strip() else ""))
# Always drawn, empty or not: a notice that comes and goes would move every row below it by one place, and
# the browser keeps some state by place (it opened the next row's "Reuse" box on the rerun after a reuse).
notice_slot = st.empty()
if notice := state.pop("history_notice", None):
    with notice_slot.container():
        st.success(notice)
        # The reused image is a stock photo with no credit on record: the new article needs one all the same.
        show_credit(st, None, missing=state.pop("history_notice_credit_missing", False))


def use_for_article(request_id: str, url: str) -> None:
    """The reuse button's callback (it runs before the page is drawn again, so it may empty the row's field:
    the reuse is done, and a second click must not record it twice)."""
    article = state.get(f"reuse_article_{request_id}") or ""
    try:
        reused = reuse(gen, request_id, article)
    except ImageGenError as exc:
        state[f"reuse_error_{request_id}"] = str(exc)
    else:
        state[f"reuse_article_{request_id}"] = ""
        notice = f"Article {md(article.strip())} now uses this image: {url}"
        if reused["attribution"] is not None:  # a stock photo: the article must carry its credit too
            notice += f"  \nPublish its credit with it: {credit_markdown(reused['attribution'])}"
        state.history_notice = notice
        state.history_notice_credit_missing = reused["credit_missing"]


def reuse_form(row: dict[str, Any]) -> None:
    """Give another article this image (recorded as a new, ``reused`` history row). Every widget here is
    keyed by the row's request id, the box's open state too, so that it stays with its row when rows move
    (a reuse adds a row on top)."""
    request_id = row["id"]
    with st.expander("Reuse for an article", key=f"reuse_open_{request_id}", on_change="rerun"):
        st.text_input("Article id", key=f"reuse_article_{request_id}")
        one_line_error(st.empty(), state.pop(f"reuse_error_{request_id}", None))
        st.button(
            "Use for this article",
            key=f"reuse_{request_id}",
            on_click=use_for_article,
            args=(request_id, row["url"]),
        )


for row in rows:
    with st.container(border=True, key=f"history_row_{row['id']}"):
        picture, details = st.columns([1, 3])
        with picture:
            show_thumbnail(row["url"], row["storage_key"])
        with details:
            # Prompts and tags come from any API client: shown as literal text, long ones cut.
            st.markdown(f"**{md(row['prompt'], limit=PROMPT_CHARS) or '(empty prompt)'}**")
            facts = [utc_time(row["created_at"]), row["status"], md(row["provider"] or "-")]
            if row["width"] is not None or row["height"] is not None:  # a refused 0×630 shows what was asked
                facts.append("×".join("?" if side is None else str(side) for side in (row["width"], row["height"])))
            facts += [f"style {md(row['style'])}" if row["style"] else "", f"source {md(row['source'])}"]
            st.caption(" · ".join(fact for fact in facts if fact))
            tags = [
                f"keyword: {md(row['keyword'])}" if row["keyword"] else "",
                f"article: {md(row['article_id'] or '-')}",
            ]
            st.caption(" · ".join(tag for tag in tags if tag))
            if row["url"] and row["status"] in WITH_IMAGE:
                st.code(row["url"], language=None, wrap_lines=True)
                show_credit(st, row["attribution"], missing=row["credit_missing"])
                reuse_form(row)
            elif row["error"]:
                st.caption(f"error: {md(row['error'].splitlines()[0], limit=PROMPT_CHARS)}")

if len(rows) < total and st.button("Show more", key="history_more"):
    state.history_pages = state.get("history_pages", 1) + 1
    st.rerun()
