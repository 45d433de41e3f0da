"""Generate: one request raced across the providers, with live progress; the winner large, its URL,
download and credit."""

from __future__ import annotations

import time

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
    show_result,
    start_job,
)
from imagegen_core import GenerateResult, ImageGenError
from imagegen_core.console_data import Job, describe_attempt, generate, make_request

gen = get_gen()
state = st.session_state


def show_answer(result: GenerateResult) -> None:
    """The race's answer: the image with its facts, URL and download, then how the race went."""
    st.divider()
    show_result(gen, result, article_id=state.get("generate_result_article"))
    if result.attempts:
        with st.expander("How the race went"):
            st.dataframe(
                [
                    {
                        "provider": a.provider,
                        "attempt": a.attempt,
                        "outcome": str(a.outcome),
                        "ms": a.elapsed_ms,
                        "hedged": a.hedged,
                        "failure": str(a.failure_class or ""),
                    }
                    for a in result.attempts
                ],
                hide_index=True,
            )


# One click, one race. The race runs in a Job kept in the session, not in this script run: leaving the page
# stops the run (Streamlit then refuses every session write of it, so a "running" flag could not even be
# cleared) while the race goes on. Whichever run finds the job finished takes its result; until then
# every run of this page shows the job's progress. No run but the click's starts a request. A reload
# starts a new session: the job's token in the URL finds it again on the console's shelf.
follow_address("generate")
if state.get("generate_job") is None and (found := job_from_url("generate")) is not None:
    state.update(generate_job=found.job, generate_job_article=found.meta["article_id"], generate_result=None)
keep_job_in_url("generate")
job = current_job("generate", generate_result_article=state.get("generate_job_article"))
running = job is not None

st.title("Generate")
st.caption("The providers race; the first good image is stored and its permanent URL is yours.")
form = request_form("generate", gen, disabled=running)
clicked = st.button(
    "Generate",
    type="primary",
    key="generate_go",
    disabled=running,
    icon=":material/bolt:",
    shortcut=SUBMIT_SHORTCUT,
    on_click=pin_form,
    args=("generate",),
)
error_slot = st.empty()
# One place for the race's progress and then its answer, drawn as blocks of different kinds. The browser keeps
# the last run's elements until a run draws over them, and a block drawn where one of its kind stood inherits
# its children: the race's run lasts the whole race, so the last answer (its image, URL and download button)
# stayed below the progress box until the new one came (QA), for an editor to copy into the new article.
answer_slot = st.empty()

if clicked and not running:
    try:
        request = make_request(**form)
    except ImageGenError as exc:
        state.generate_error = str(exc)
    else:
        new_job: Job = Job(lambda emit: generate(gen, request, emit=emit))
        start_job("generate", new_job, meta={"article_id": form["article_id"]}, generate_job_article=form["article_id"])
        st.rerun()  # so that the form is drawn disabled while the race runs below it

if job is not None:
    with answer_slot.status("Racing providers…", expanded=True) as status:
        lines: dict[str, str] = {}
        progress = st.empty()
        # The worker thread only records events; this (script) thread draws them, from the first one on.
        for event in job.events(ticks=True):
            elapsed_s = time.monotonic() - (job.started_at or time.monotonic())
            # expanded on every update: the per-provider lines below are the point of the box.
            status.update(label=f"Racing providers… {elapsed_s:.1f} s", expanded=True)
            if event is not None:
                lines[event.provider] = describe_attempt(event)
                progress.markdown("\n".join(f"- {line}" for line in lines.values()))
    st.rerun()  # the result, under a form that is usable again

one_line_error(error_slot, state.get("generate_error"))
result = state.get("generate_result")
if result is not None:
    with answer_slot.container():
        show_answer(result)
