"""Compare: the same prompt to every racing provider at once, one live card each; the editor picks one
and that image is stored as the article's (the pick is logged for the win-rate statistics)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import streamlit as st

from console.common import (
    SUBMIT_SHORTCUT,
    current_job,
    follow_address,
    get_gen,
    job_from_url,
    keep_job_in_url,
    one_line_error,
    pin_form,
    request_form,
    show_credit,
    start_job,
)
from imagegen_core import GenerateResult, ImageGenError, UploadFailedError
from imagegen_core.compare import Candidate, CandidateStatus, Comparison
from imagegen_core.console_data import (
    PICK_NOT_STORED,
    CandidateView,
    Job,
    compare,
    make_request,
    pick,
    racing_providers,
)
from imagegen_core.console_data import markdown_literal as md

BADGES = {
    CandidateStatus.QUEUED: ":gray-badge[queued]",
    CandidateStatus.RUNNING: ":blue-badge[running]",
    CandidateStatus.DONE: ":green-badge[done]",
    CandidateStatus.FAILED: ":red-badge[failed]",
    CandidateStatus.TIMED_OUT: ":orange-badge[timed out]",
    CandidateStatus.SKIPPED: ":gray-badge[skipped: breaker open]",
}

#: Cards side by side in one row, at most: five in a 1024 px window were too narrow to read.
CARDS_PER_ROW = 3

gen = get_gen()
state = st.session_state

# One click, one comparison: it runs in a Job kept in the session (see the Generate page), so leaving the
# page and coming back shows it running or finished and never asks the providers again.
# A reload finds the job again by the token in the URL, with its picks (one image per comparison, however
# many tabs show it).
follow_address("compare")
if state.get("compare_job") is None and (found := job_from_url("compare")) is not None:
    state.update(
        compare_job=found.job,
        compare_result=None,
        compare_picked=found.meta["picked"],
        compare_own_picks=set(),
        compare_providers=found.meta["providers"],
    )
keep_job_in_url("compare")
job = current_job("compare")
running = job is not None


def card_header(slot: Any, view: CandidateView, *, picture: bool = False) -> Any:
    """Provider, live status, elapsed time and cost (the part that changes while it runs); with ``picture``,
    its image once it has one (while the comparison runs: the other providers may take long). Returns the
    place for the card's pick controls, the card's last (bordered, running or finished alike: see
    :func:`card_slots`).

    Every part has its place, drawn empty when the card has nothing there: a card drawn where the previous
    comparison's stood inherits that card's elements, and the browser showed them (its image, "Use this
    image", "Stored as the article's image") under a new card until the new comparison ended (QA)."""
    with slot.container(border=True):
        st.markdown(f"**{md(view.provider)}** {BADGES[view.status]}")
        st.caption(f"{view.elapsed_ms:,} ms · ${view.cost_usd:.4f}")
        error, image, credit = st.empty(), st.empty(), st.empty()
        if view.error and view.status is not CandidateStatus.DONE:
            error.caption(md(view.error.splitlines()[0], limit=300))
        if picture and view.picture is not None:
            image.image(view.picture, width="stretch", caption=f"{view.width}×{view.height}")
            if view.attribution is not None:
                # Linked, with the word that it must be published, as Generate and History show a credit.
                show_credit(credit.container(), view.attribution)
        return st.empty()


def pick_controls(place: Any, comparison: Comparison, name: str) -> None:
    """A done card's "Use this image" button in ``place``, and what became of a pick. One image per article:
    once one is picked, every button is off (compare again to choose another). The line under the button is
    always drawn, empty or not (see :func:`card_header`)."""
    picked = state.setdefault("compare_picked", {})
    # Without an article id, the pick is stored all the same (History can reuse it for an article later). The
    # article is named: it is the comparison's, which the form's field, usable again once it ends, may no longer say.
    article = comparison.resolved.article_id
    stored_as = (
        f"Stored as the article's image, for article {md(article)}" if article else "Stored, without an article id"
    )
    with place.container():
        clicked = st.button("Use this image", key=f"compare_pick_{name}", disabled=bool(picked), type="primary")
        note = st.empty()
    if clicked:
        try:
            picked[name] = pick(gen, comparison, name)
        except UploadFailedError:  # logged in full by pick(): a card is a third of the page wide
            one_line_error(note, PICK_NOT_STORED)
        except ImageGenError as exc:  # e.g. picked meanwhile in another tab showing this comparison
            one_line_error(note, str(exc))
        else:
            state.setdefault("compare_own_picks", set()).add(name)
            st.rerun()  # redraw with this button disabled and the stored URL shown
    if name in picked and name in state.get("compare_own_picks", ()):
        note.success(stored_as)
    elif name in picked:
        # A click on another card of a tab drawn before that pick lands here with its button now off: without
        # this line, the click seemed ignored.
        note.info(f"{stored_as}: picked in another tab, or before this page was reloaded")


def picked_urls() -> None:
    """The picked image's URL below the cards, at full width: in a card it took a dozen lines. A stock
    photo's credit goes with it: the editor copies both from here into the article. One place, left empty
    before a pick: the last comparison's URL stood there while a new one ran (see :func:`card_header`)."""
    place = st.empty()
    for name, result in state.get("compare_picked", {}).items():
        with place.container():
            st.caption(f"Permanent URL of the image from {md(name)}")
            st.code(result.url, language=None, wrap_lines=True)
            credit = st.empty()
            if result.attribution is not None:
                show_credit(credit.container(), result.attribution)


def card_columns(count: int) -> list[Any]:
    """One column per card, in rows of :data:`CARDS_PER_ROW` equal columns (so one or two cards are not
    blown up to full width, and five are not squeezed into one row)."""
    columns: list[Any] = []
    for _ in range(0, count, CARDS_PER_ROW):
        columns += st.columns(CARDS_PER_ROW)
    return columns[:count]


def card_slots(names: list[str]) -> dict[str, Any]:
    """One place per card (provider name → an ``st.empty`` in its column), the same places whether the
    comparison runs or has ended. The browser keeps a run's elements until the next run draws over them: when
    the finished page drew its cards in blocks of their own, a card's "Stored…" line moved, and for a moment
    the running page's line showed beside the finished page's one (QA). Drawn in the same places, it is
    replaced where it stands."""
    return {name: column.empty() for name, column in zip(names, card_columns(len(names)), strict=True)}


def finished_card(slot: Any, comparison: Comparison, candidate: Candidate) -> None:
    """A card of an ended comparison: as its last running state drew it, with its pick button if it is done."""
    controls = card_header(slot, CandidateView.of(candidate), picture=True)
    if candidate.status is CandidateStatus.DONE:
        pick_controls(controls, comparison, candidate.provider)


st.title("Compare")
providers = racing_providers(gen)
st.caption(f"Asks every racing provider at once ({md(', '.join(providers))}); nothing is stored until you pick.")
form = request_form("compare", gen, disabled=running)
clicked = st.button(
    "Compare",
    type="primary",
    key="compare_go",
    disabled=running,
    icon=":material/compare:",
    shortcut=SUBMIT_SHORTCUT,
    on_click=pin_form,
    args=("compare",),
)
error_slot = st.empty()

if clicked and not running:
    try:
        request = make_request(**form)
    except ImageGenError as exc:
        state.compare_error = str(exc)
    else:
        # Each snapshot with the time it was taken: a page drawn again later keeps the running clocks right.
        # The comparison itself comes first (on_start): a card done while others run can be picked at once.
        new_job: Job = Job(
            lambda emit: compare(
                gen,
                request,
                emit=lambda view: emit((time.monotonic(), view)),
                on_start=lambda comparison: emit((time.monotonic(), comparison)),
            )
        )
        picked: dict[str, GenerateResult] = {}
        start_job(
            "compare",
            new_job,
            meta={"picked": picked, "providers": providers},
            compare_result=None,
            compare_picked=picked,
            compare_own_picks=set(),
            compare_providers=providers,
        )
        st.rerun()

if job is not None:
    # One card per provider this comparison asks, as racing was when it started: the racing providers of now
    # (after an Admin save, say) left a reloaded page without a card, or with a card nobody fills.
    asked = state.get("compare_providers", providers)
    slots = card_slots(asked)
    picked_urls()
    running_since: dict[str, tuple[CandidateView, float]] = {}
    live: Comparison | None = None
    with_button: set[str] = set()  # a widget's key may be drawn once a run: each done card gets its button once
    for timed in job.events(ticks=True):  # drawn by this thread; the worker only records snapshots
        if timed is not None and isinstance(timed[1], Comparison):
            live = timed[1]
        elif timed is not None and timed[1].provider in slots:
            at, view = timed
            controls = card_header(slots[view.provider], view, picture=True)
            # Pickable as soon as it is done: the others run on (their answers and costs are logged, and the
            # editor sees them), but no other image can be picked (one image per article).
            if live is not None and view.picture is not None and view.provider not in with_button:
                with_button.add(view.provider)
                pick_controls(controls, live, view.provider)
            if view.status is CandidateStatus.RUNNING:
                running_since[view.provider] = (view, at)
            else:
                running_since.pop(view.provider, None)
        for name, (last, since) in running_since.items():  # the clock of a running card keeps moving
            # From its earlier attempts' time (a retry's card goes on from there, as the ended card will say).
            ticking = dataclasses.replace(last, elapsed_ms=last.elapsed_ms + round((time.monotonic() - since) * 1000))
            card_header(slots[name], ticking)
    st.rerun()

one_line_error(error_slot, state.get("compare_error"))
comparison: Comparison | None = state.get("compare_result")
if comparison is not None:
    slots = card_slots(list(comparison.candidates))
    for name, candidate in comparison.candidates.items():
        finished_card(slots[name], comparison, candidate)
    picked_urls()
