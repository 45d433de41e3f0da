"""The editors' console: ``imagegen console`` (or ``streamlit run console/server.py``, with the Host check).

Each page is one module under ``views/``; this entry only sets the page up and picks the page.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from console.common import get_gen, one_line_error, tab_icon
from imagegen_core import ImageGenError
from imagegen_core.chaos import chaos_status
from imagegen_core.console_data import markdown_literal, racing_providers

VIEWS = Path(__file__).parent / "views"

st.set_page_config(page_title="imagegen console", page_icon=tab_icon(), layout="wide")
page = st.navigation(
    [
        st.Page(VIEWS / "generate.py", title="Generate", icon=":material/add_photo_alternate:", default=True),
        st.Page(VIEWS / "compare.py", title="Compare", icon=":material/compare:", url_path="compare"),
        st.Page(VIEWS / "history.py", title="History", icon=":material/history:", url_path="history"),
        st.Page(VIEWS / "stats.py", title="Provider stats", icon=":material/monitoring:", url_path="stats"),
        st.Page(VIEWS / "admin.py", title="Admin", icon=":material/settings:", url_path="admin"),
    ]
)
gen = get_gen()
racing = racing_providers(gen)
st.sidebar.caption(f"Racing: {markdown_literal(', '.join(racing)) or 'nobody'}")
if racing == ["offline"]:
    st.sidebar.caption("No provider key is set: images are drawn locally by the offline provider.")
st.sidebar.caption(f"Store: {gen.store.name}")
if gen.chaos_active():  # a drill must never be left running unnoticed
    faulty = ", ".join(chaos_status(gen.config)["providers"]) or "some providers"
    st.sidebar.warning(f"Fault injection is ON for {faulty} (runtime config `chaos`).", icon=":material/warning:")
try:
    page.run()
except ImageGenError as exc:
    # The log database down or not answering, say, under a page that reads it: one line that says so, not
    # Streamlit's traceback (its reruns and stops are no ImageGenError and pass through).
    one_line_error(st, str(exc))
