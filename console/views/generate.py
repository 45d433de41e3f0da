"""Generate: one request raced across the providers, with live progress; the winner large, its URL,
download and credit."""

from __future__ import annotations

import time

import streamlit as st

from console.common import get_gen, one_line_error, request_form, show_result
from imagegen_core import ImageGenError
from imagegen_core.console_data import Job, describe_attempt, generate, make_request

gen = get_gen()
state = st.session_state
running = bool(state.get("generate_running"))

st.title("Generate")
st.caption("The providers race; the first good image is stored and its permanent URL is yours.")
form = request_form("generate", gen, disabled=running)
clicked = st.button("Generate", type="primary", key="generate_go", disabled=running, icon=":material/bolt:")
error_slot = st.empty()

if clicked:
    try:
        state.generate_request = make_request(**form)
    except ImageGenError as exc:
        state.generate_error = str(exc)
    else:
        # Rerun first, so the form is drawn disabled while the race runs below it.
        state.generate_error = None
        state.generate_running = True
        state.generate_result_article = form["article_id"]
        st.rerun()

if running:
    try:
        with st.status("Racing providers…", expanded=True) as status:
            lines: dict[str, str] = {}
            progress = st.empty()
            request = state.generate_request  # read here: the worker thread must not touch st.*
            started = time.monotonic()
            job = Job(lambda emit: generate(gen, request, emit=emit)).start()
            # The worker thread only queues events; this (script) thread draws them as they come.
            for event in job.events(ticks=True):
                # expanded on every update: the per-provider lines below are the point of the box.
                status.update(label=f"Racing providers… {time.monotonic() - started:.1f} s", expanded=True)
                if event is not None:
                    lines[event.provider] = describe_attempt(event)
                    progress.markdown("\n".join(f"- {line}" for line in lines.values()))
            try:
                state.generate_result = job.result()
            except ImageGenError as exc:
                status.update(label="Refused", state="error")
                state.generate_error = str(exc)
                state.generate_result = None
    finally:
        state.generate_running = False
    st.rerun()

one_line_error(error_slot, state.get("generate_error"))
result = state.get("generate_result")
if result is not None:
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
