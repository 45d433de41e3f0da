"""Provider stats: charts from the log (the notebooks' analysis functions), for a time range and some
providers, redrawn every few seconds while the page is open."""

from __future__ import annotations

import time
from typing import Any

import streamlit as st

from console.common import get_gen, one_line_error, shared_stats_view
from imagegen_core import ImageGenError
from imagegen_core.console_data import markdown_literal as md
from imagegen_core.console_stats import (
    CHART_TITLES,
    DEFAULT_RANGE,
    MISSING,
    SUMMARY_HELP,
    SUMMARY_LABELS,
    TIME_RANGES,
    dollars,
    provider_choices,
    split_title,
    summary_formats,
)

#: How often the charts reload from the log while the page is open (seconds; None: never).
REFRESH = {"5 s": 5, "10 s": 10, "30 s": 30, "1 min": 60, "off": None}

gen = get_gen()

st.title("Provider stats")
range_col, provider_col, refresh_col = st.columns([2, 4, 1.3])  # "1 min" must fit in a narrow window
labels = list(TIME_RANGES)
# Kept for the session (persist_state): leaving the page (a link, the browser's Back) dropped the editor's
# range and providers, and the charts came back as the defaults drew them.
keep = "session"
range_label = range_col.selectbox(
    "Time range", labels, index=labels.index(DEFAULT_RANGE), key="stats_range", persist_state=keep
)
chosen = provider_col.multiselect(
    "Providers",
    provider_choices(gen.log, list(gen.config.providers)),
    key="stats_providers",
    placeholder="All",
    persist_state=keep,
)
refresh = refresh_col.selectbox("Refresh", list(REFRESH), index=1, key="stats_refresh", persist_state=keep)


def charts(range_label: str, providers: list[str], refresh_s: int | None) -> None:
    """Everything that depends on the log: a fragment, so only this part reruns on the timer (a rerun of its
    own, which the app's error line does not cover: the log database not answering is one line here too).
    Its data is shared by every open tab (see ``shared_stats_view``)."""
    try:
        view, computed_at = shared_stats_view(gen, range_label=range_label, providers=providers, refresh_s=refresh_s)
    except ImageGenError as exc:
        one_line_error(st, str(exc))
        return
    totals = view.totals
    labels = view.labels
    shown = {**totals, "cost_usd": dollars(totals["cost_usd"])}
    for name, column in zip(("requests", "success", "failed", "cost_usd"), st.columns(4), strict=True):
        column.metric(labels[name], shown[name], help=view.help[name])
    if not view.charts and providers:
        # QA: "No requests in this range yet" stood over a busy log whose requests the chosen providers had no part in.
        st.info(
            f"No request in this range called {md(' or '.join(sorted(providers)))}: choose other providers (or All), "
            "or widen the time range."
        )
    elif not view.charts:
        st.info("No requests in this range yet: generate an image, or widen the time range.")
    names = [name for name in CHART_TITLES if name in view.charts]
    for start in range(0, len(names), 2):
        for name, column in zip(names[start : start + 2], st.columns(2), strict=False):
            # The title as page text above the chart, where it wraps (Vega would cut it to the chart's width).
            title, subtitle, chart = split_title(view.charts[name])
            with column.container(key=f"stats_panel_{name}"):
                st.markdown(f"**{md(title)}**")
                if subtitle:
                    st.caption(md(subtitle))
                st.altair_chart(chart, key=f"stats_chart_{name}", alt=CHART_TITLES[name])
    if view.summary is not None:
        st.subheader("Per provider")
        formats = summary_formats(view.summary)
        columns: dict[str, Any] = {
            column: st.column_config.NumberColumn(
                SUMMARY_LABELS[column], help=SUMMARY_HELP[column], format=formats[column]
            )
            if column in formats
            # The provider stays in view when the table scrolls sideways (a 1024 px window is narrower than it).
            else st.column_config.TextColumn(
                SUMMARY_LABELS[column], help=SUMMARY_HELP[column], pinned=column == "provider"
            )
            for column in view.summary.columns
        }
        st.dataframe(view.summary, hide_index=True, column_config=columns, placeholder=MISSING)
    # When the numbers were read (another tab may have read them, up to one refresh interval ago).
    st.caption(f"Updated {time.strftime('%H:%M:%S UTC', time.gmtime(computed_at))}")


st.fragment(charts, run_every=REFRESH[refresh])(range_label, chosen, REFRESH[refresh])
