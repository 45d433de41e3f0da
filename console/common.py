"""Pieces every console page shares: the one ImageGen of the server process, the request form, one-line
errors, and the display of a result. Layout only: every decision is in ``imagegen_core``."""

from __future__ import annotations

import time
from typing import Any, Literal

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from imagegen_core import (
    Attribution,
    GenerateResult,
    ImageError,
    ImageGen,
    ImageGenError,
    Settings,
    console_stats,
)
from imagegen_core.console_data import (
    JOB_SHELF_CAPACITY,
    NO_STYLE,
    SIZE_PRESETS,
    Job,
    JobShelf,
    ShelvedJob,
    credit_markdown,
    download_name,
    markdown_literal,
    style_choices,
)
from imagegen_core.history import image_bytes, image_source, thumbnail
from imagegen_core.images import inspect_image
from imagegen_core.log.db import LogDB
from imagegen_core.log.queries import change_marker


def _close(gen: ImageGen) -> None:
    gen.close()


# One ImageGen per server process, shared by every session. Caching it is safe although it does async
# work: it is a sync facade whose HTTP client lives on its own private loop inside (DESIGN §5.5); no
# other async object is cached. on_release closes it when the cache is cleared (tests do).
@st.cache_resource(show_spinner=False, on_release=_close)
def _shared_gen() -> ImageGen:
    gen = ImageGen.from_settings(Settings(), source="console")
    gen.warm_up_sync()  # the first click does not wait for codecs and the HTTP client; the spool resumes
    return gen


@st.cache_resource(show_spinner=False)
def tab_icon() -> Any:
    """The browser tab's icon, drawn here and served by Streamlit: for a named Material icon or an emoji
    the browser would fetch an image from Google, and the console is meant to work offline."""
    from PIL import Image, ImageDraw

    icon = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    draw = ImageDraw.Draw(icon)
    draw.rounded_rectangle((2, 4, 30, 28), radius=4, fill=(0, 121, 140))
    draw.polygon([(6, 24), (13, 13), (19, 20), (22, 16), (27, 24)], fill=(255, 255, 255))
    draw.ellipse((20, 8, 25, 13), fill=(237, 174, 73))
    return icon


def get_gen() -> ImageGen:
    """The process's ImageGen; a bad setting stops the page with one line saying what to fix."""
    try:
        return _shared_gen()
    except ImageGenError as exc:
        st.error(f"imagegen cannot start: {markdown_literal(str(exc))}")
    st.stop()
    raise AssertionError("unreachable")  # st.stop() raises


#: Sends the request form from the keyboard, the prompt's text area included (where Enter is a new line).
#: Not an ``st.form``: there the custom width and height could not appear when "Custom" is chosen.
SUBMIT_SHORTCUT = "Ctrl+Enter"

#: The request form's widgets, as suffixes of their keys (``generate_prompt``, ``compare_size``…).
FORM_FIELDS = ("prompt", "keyword", "article", "size", "style", "width", "height")


def request_form(prefix: str, gen: ImageGen, *, disabled: bool) -> dict[str, Any]:
    """Prompt, keyword, article id, size preset (or custom size) and style; returns the values as the
    keywords of :func:`imagegen_core.console_data.make_request`.

    The fields keep their values for the session (``persist_state``): an editor who looks at History while
    a request runs finds the form as it was sent when coming back."""
    config = gen.config
    keep = "session"
    prompt = st.text_area(
        "Prompt",
        key=f"{prefix}_prompt",
        disabled=disabled,
        persist_state=keep,
        height=90,
        placeholder="What the picture shows, e.g. a lighthouse at dusk above a stormy sea",
    )
    left, right = st.columns(2)
    keyword = left.text_input(
        "Keyword",
        key=f"{prefix}_keyword",
        disabled=disabled,
        help="Search term for stock photos (Unsplash)",
        persist_state=keep,
    )
    article_id = right.text_input("Article id", key=f"{prefix}_article", disabled=disabled, persist_state=keep)
    left, right = st.columns(2)
    preset = left.selectbox("Size", list(SIZE_PRESETS), key=f"{prefix}_size", disabled=disabled, persist_state=keep)
    styles = style_choices(config)
    chosen = st.session_state.get(f"{prefix}_style")
    if chosen is not None and chosen not in styles:
        # Removed from the config since the editor chose it (an admin's save): the select box fell back to "no
        # style" without a word, and the next image came out in no style (QA). Said, then shown as it is.
        st.session_state[f"{prefix}_style"] = NO_STYLE
        right.warning(
            f"The style {markdown_literal(str(chosen), limit=60)} was removed from the config: this form now has "
            "no style; choose another."
        )
    style = right.selectbox("Style", list(styles), key=f"{prefix}_style", disabled=disabled, persist_state=keep)
    right.caption(f"Prompt template: {markdown_literal(styles[style], limit=200)}")  # a template may hold backticks
    size = SIZE_PRESETS[preset]
    if size is None:
        limits = config.limits
        left, right = st.columns(2)
        # No min/max on the widgets: out of range, a number input silently keeps its previous value. The
        # request's own check refuses it instead, in one line naming width or height.
        allowed = f"{limits.min_size}–{limits.max_size} px (limits.minSize, limits.maxSize)"
        options = {"step": 10, "disabled": disabled, "help": allowed, "persist_state": keep}
        # First values through the session state, not value=: once pin_form has set the key, a value= too made
        # Streamlit log a warning with a stack of twenty lines at every run (QA).
        st.session_state.setdefault(f"{prefix}_width", 1200)
        st.session_state.setdefault(f"{prefix}_height", 630)
        width = left.number_input("Width (px)", key=f"{prefix}_width", **options)
        height = right.number_input("Height (px)", key=f"{prefix}_height", **options)
        size = (int(width), int(height))
    return {"prompt": prompt, "keyword": keyword, "article_id": article_id, "size": size, "style": style}


def pin_form(prefix: str) -> None:
    """The submit button's ``on_click``: the form's values as they were sent become its session values.

    The field typed last reaches the server with the click itself, as a fresh browser value; the rerun that
    draws the form disabled while the request runs drops fresh values of disabled widgets (Streamlit refuses
    them as forged), so that field came back empty after the race although the request used its value. A
    value set through the session state is kept."""
    state = st.session_state
    for field in FORM_FIELDS:
        key = f"{prefix}_{field}"
        if key in state:
            state[key] = state[key]


@st.cache_resource(show_spinner=False)
def job_shelf() -> JobShelf:
    """The process's recent Generate and Compare jobs, which a reloaded page finds by its URL."""
    return JobShelf()


#: The URL parameter naming the job a Generate or Compare page shows: a reload keeps it.
JOB_PARAM = "job"
#: What a page says when its URL names a job the shelf no longer has.
JOB_GONE = (
    "The request in this page's address is no longer in the console's memory (the console restarted, or "
    f"it is older than the last {JOB_SHELF_CAPACITY}); History lists every request."
)
#: ... and when it names another page's job (a Generate address opened under /compare, say).
JOB_ELSEWHERE = "The request in this page's address was made on the {page} page: open it there."


def start_job(prefix: str, job: Job[Any], *, meta: dict[str, Any], **session: Any) -> None:
    """Start a new job of page ``prefix``: put it on the shelf with the form as it was sent and ``meta``
    (the page keeps the entry as ``{prefix}_shelved``), clear ``{prefix}_error``, set the page's ``session``
    keys, then ``{prefix}_job`` last, and start it. No Streamlit call in between: a click's run may be
    stopped at any such call, and a job must be started wherever the next run, or a reloaded page, finds it
    (the URL gets its token on the next run)."""
    state = st.session_state
    form = {key: state[key] for field in FORM_FIELDS if (key := f"{prefix}_{field}") in state}
    state[f"{prefix}_shelved"] = job_shelf().put(prefix, job, form=form, **meta)
    state.update({f"{prefix}_error": None, **session, f"{prefix}_job": job})
    job.start()


def current_job(prefix: str, **on_finish: Any) -> Job[Any] | None:
    """The page's job still running (``{prefix}_job``), or None. A finished job's result, or its refusal's
    message, goes to ``{prefix}_result`` / ``{prefix}_error`` with the keys ``on_finish``, and the job is
    dropped last: a run stopped halfway through these writes leaves it for the next run."""
    state = st.session_state
    job: Job[Any] | None = state.get(f"{prefix}_job")
    if job is None or not job.done:
        return job
    try:
        outcome = {f"{prefix}_result": job.result(), f"{prefix}_error": None}
    except ImageGenError as exc:
        outcome = {f"{prefix}_result": None, f"{prefix}_error": str(exc)}
    state.update({**outcome, **on_finish, f"{prefix}_job": None})
    return None


def job_from_url(prefix: str) -> ShelvedJob | None:
    """The job this page's URL names, when the session shows none (after a browser reload, the link opened in
    another tab, or Back and Forward: see :func:`follow_address`): it becomes the session's, with its form. An
    unknown token is dropped from the URL, and ``{prefix}_error`` says so. A session showing a job keeps it:
    an address naming another one is stale there (a double-click's second run carried the token of the job
    before, whose form then replaced the one just typed, and a second request was sent with it)."""
    state = st.session_state
    token = st.query_params.get(JOB_PARAM)
    if not token or state.get(f"{prefix}_shelved") is not None:
        return None
    entry = job_shelf().find(prefix, token)
    if entry is None:
        other = job_shelf().kind_of(token)
        del st.query_params[JOB_PARAM]
        state[f"{prefix}_error"] = JOB_ELSEWHERE.format(page=other.title()) if other else JOB_GONE
        return None
    state.update(entry.form)  # before the form's widgets are drawn, so they show the request as it was sent
    state[f"{prefix}_shelved"] = entry
    return entry


def keep_job_in_url(prefix: str) -> None:
    """Put the token of the job this page shows in the URL (going to another page clears the URL's
    parameters; coming back, this puts it there again)."""
    entry = st.session_state.get(f"{prefix}_shelved")
    if entry is not None and st.query_params.get(JOB_PARAM) != entry.token:
        st.query_params[JOB_PARAM] = entry.token


def follow_address(prefix: str) -> None:
    """After the browser's Back or Forward (a history navigation), show what the address names: when it lost,
    or changed, the token of the job this page shows, the page stops showing that job (it goes on, on the
    shelf), so :func:`job_from_url` draws the address's job, or none. Putting the token back instead (as
    :func:`keep_job_in_url` does) swallowed the first Back: the address and the page stayed the same. Only on
    a history navigation: a click's run may carry an address that is merely stale (the token of the job the
    click before it started has not reached the browser yet: a double-click), and must keep its job. Run
    before :func:`job_from_url`."""
    ctx = get_script_run_ctx()
    if ctx is None or not ctx.is_history_navigation:
        return
    state = st.session_state
    shown = state.get(f"{prefix}_shelved")
    if shown is not None and st.query_params.get(JOB_PARAM) != shown.token:
        state.update({f"{prefix}_{key}": None for key in ("shelved", "job", "result", "error")})


def one_line_error(slot: Any, message: str | None) -> None:
    """A refusal as one line next to the form (never a traceback)."""
    if message:
        slot.error(markdown_literal(message.splitlines()[0]), icon=":material/error:")


@st.cache_data(max_entries=500, show_spinner=False)
def _thumbnail(url: str, key: str | None) -> bytes | str | None:
    source = image_source(get_gen(), url=url, key=key)
    return thumbnail(source) if isinstance(source, bytes) else source


#: What stands in a list for the thumbnail of a stored file that is no image (any more).
THUMBNAIL_UNREADABLE = "image file damaged: cannot be shown"
#: What stands on the Generate page in place of such a file's picture (its URL is still shown: it is what is stored).
DAMAGED_IMAGE = "The stored image file is damaged (it no longer reads as an image): generate again for this article."


def readable_image(data: bytes) -> bool:
    """Whether stored bytes still read as a whole image (``images.inspect_image``: header, checksums, a decode)."""
    try:
        inspect_image(data)
    except ImageError:
        return False
    return True


def show_thumbnail(url: str | None, key: str | None) -> None:
    """A small picture of a stored image (bytes for the local store, the URL for http(s) ones)."""
    try:
        source = _thumbnail(url, key) if url else None
    except ImageError:  # QA: one damaged file made all of History a traceback
        st.caption(THUMBNAIL_UNREADABLE)
        return
    if source is None:
        st.caption("no image")
    else:
        st.image(source, width="stretch")


#: The tallest the Generate page draws a portrait result ...
PREVIEW_HEIGHT_PX = 520
#: ... and its widest: under the picture column's width in a 1024 px window with the sidebar open.
PREVIEW_MAX_WIDTH_PX = 440


#: How a fact beside the result (provider, elapsed time, cost) names itself, above its value.
FACT_LABEL = ":gray[{label}]"


#: What the Generate page says over a result whose image could not be stored, by whether the spool kept it.
STORE_FAILED = {
    True: "An image was made but could not be stored: it is kept and will be uploaded later. Until then this "
    "request has no image for the article (the default image stands in).",
    False: "An image was made but could neither be stored nor kept for a later upload: it is lost. Generate "
    "again once storage works.",
}
#: ... and when keeping it was still under way as the answer was due.
STORE_KEEPING = (
    "An image was made but could not be stored: keeping it for a later upload was still under way when the "
    "answer was due (the server log says once it is kept). Until then this request has no image for the article."
)
#: The label over the URL of a result, by whether a provider's image is stored there.
URL_LABEL = {True: "Permanent URL", False: "URL of the default image (a stand-in, not an image of this article)"}
#: What stands in for that URL when nothing is stored there (the store refused the default image too).
NO_URL = "No URL to use: the default image could not be stored either."


def show_result(gen: ImageGen, result: GenerateResult, *, article_id: str | None = None) -> None:
    """The image large; provider, time and cost; the permanent URL (copy button); download; credit. A failed
    result says why, and its URL is never called the article's permanent one."""
    reason = markdown_literal(result.error or "", limit=500)  # provider and store texts: shown literally
    if result.store_failed:
        said = STORE_KEEPING if result.image_keeping else STORE_FAILED[result.image_kept]
        st.warning(f"{said} Details: {reason}")
    elif not result.success:
        st.warning(f"No provider produced an image, so this is the default image. Why: {reason}")
    for note in result.notes:  # QA: never shown here (the provider asked for did not race; a URL not serving yet)
        st.info(markdown_literal(note, limit=500), icon=":material/info:")
    picture, facts = st.columns([3, 1])
    source = image_source(gen, url=result.url, key=result.key)
    damaged = isinstance(source, bytes) and not readable_image(source)
    if source is None:
        picture.caption("No picture to show: nothing is stored at this request's URL.")
    elif damaged:
        # QA: a file cut short or overwritten since made the whole page Streamlit's traceback of Pillow's error.
        picture.caption(DAMAGED_IMAGE)
    else:
        # A portrait at the column's width was a screen tall and pushed the URL and the download button out of
        # view: it is drawn PREVIEW_HEIGHT_PX tall at most (its full-screen button shows it whole). Not a wider
        # one: a fixed width over the column's overflows it (Streamlit sizes the img, not only its box).
        width: int | Literal["stretch"] = "stretch"
        if result.height > result.width:
            width = max(1, min(PREVIEW_MAX_WIDTH_PX, round(PREVIEW_HEIGHT_PX * result.width / result.height)))
        picture.image(source, width=width, caption=f"{result.width}×{result.height}")
    # Text that wraps, not st.metric: the facts column is 133 px wide in a 1024 px window, where a metric's
    # large one-line value cut "unsplash" to "unspl…" and "10,155 ms" to "10,155…".
    facts = facts.container(key="result_facts")
    for label, value in (
        ("Provider", result.provider),
        ("Elapsed", f"{result.elapsed_ms:,} ms"),
        ("Cost estimate", f"${result.cost_usd:.4f}"),
    ):
        facts.markdown(f"{FACT_LABEL.format(label=label)}  \n**{markdown_literal(value)}**")
    show_credit(facts, result.attribution)
    # A local URL with nothing behind it (the store and the spool both refused, QA) is not shown at all: the
    # editor would paste a dead link into the article. (An http URL cannot be checked here: it is shown.)
    if source is None:
        st.caption(NO_URL if not result.success else "No URL to use: the image is not in the store.")
    else:
        st.caption(URL_LABEL[result.success])
        st.code(result.url, language=None, wrap_lines=True)
    data = source if isinstance(source, bytes) else image_bytes(gen, url=result.url, key=result.key)
    if data is not None and not damaged:
        st.download_button(
            "Download",
            data,
            file_name=download_name(result, article_id),
            mime=result.content_type,
            icon=":material/download:",
            key="download",
            on_click="ignore",
        )
    elif result.url.startswith(("https://", "http://")):
        st.link_button("Open image", result.url, icon=":material/open_in_new:")


#: Under a stock photo's credit, wherever the console shows one (Unsplash's terms require it next to the image).
CREDIT_NOTE = "Stock photo: publish this credit with the image."


#: For a stock photo whose log row holds no credit (logged before credits were kept, schema v4).
CREDIT_MISSING = (
    "Stock photo: its photographer credit was not recorded. Find it (on the photo's page at the stock site) "
    "before publishing, and publish it with the image: Unsplash's terms require it."
)


def show_credit(slot: Any, credit: Attribution | None, *, missing: bool = False) -> None:
    """A stock photo's credit as links, and that it must be published (nothing for any other image).
    ``missing``: a stock photo whose credit the log does not hold, said in one warning line instead."""
    if credit is not None:
        slot.markdown(credit_markdown(credit))
        slot.caption(CREDIT_NOTE)
    elif missing:
        slot.warning(CREDIT_MISSING, icon=":material/warning:")


def utc_time(epoch: float | None, *, seconds: bool = False) -> str:
    """``2026-11-28 18:30 UTC`` (``18:30:05 UTC`` with ``seconds``): the console's one clock, that of its
    charts (whose day buckets are UTC days). The server's own time zone, unnamed, disagreed with them."""
    return "-" if epoch is None else time.strftime(f"%Y-%m-%d %H:%M{':%S' if seconds else ''} UTC", time.gmtime(epoch))


#: The interval shared stats are kept for when the page does not refresh by itself (seconds).
STATS_INTERVAL_S = 10
#: How long a shared stats result stays in memory at most: past the longest refresh interval it can only be
#: an old interval's or an older log's.
STATS_KEEP_S = 120


def stats_clock() -> float:
    """The time shared stats are keyed by (a function of its own: tests move it)."""
    return time.time()


@st.cache_data(ttl=STATS_KEEP_S, max_entries=64, show_spinner=False)
def _stats_for(
    _db: LogDB,
    log_label: str,
    range_label: str,
    providers: tuple[str, ...],
    marker: tuple[Any, ...],
    interval: tuple[int, int],
) -> tuple[console_stats.StatsView, float]:
    """The stats view and when it was computed, once per key for every session (``_db`` is not part of the
    key: ``log_label`` names it)."""
    view = console_stats.stats_view(_db, range_label=range_label, providers=list(providers) or None)
    return view, time.time()


def shared_stats_view(
    gen: ImageGen, *, range_label: str, providers: list[str], refresh_s: int | None
) -> tuple[console_stats.StatsView, float]:
    """The Provider stats page's data and when it was computed, shared by every session (tab) of the server.

    QA: each open tab recomputed everything on every refresh tick (3 s per call on a 200k-request log; three
    tabs took 92 % of a core) though the log had not changed. Now one computation serves every tab for one
    refresh interval, unless the log's change marker moves (a new request shows at the next tick); the next
    interval computes again, as a time range's start moves with the clock."""
    interval_s = refresh_s or STATS_INTERVAL_S
    interval = (interval_s, int(stats_clock() // interval_s))
    marker = change_marker(gen.log)
    return _stats_for(gen.log, gen.log.label, range_label, tuple(providers), marker, interval)
