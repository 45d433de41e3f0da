"""The console's Provider stats page as data: which time ranges it offers, and its charts and table built
from the log with :mod:`imagegen_core.analysis` (the notebooks' functions), for a range and providers.

pandas and altair are imported inside the functions (through the analysis package), so importing this
module stays cheap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

# MISSING: what a cell of the per-provider table shows for a missing value (no success yet: no latency, no
# win) instead of Streamlit's grey "None" (``st.dataframe(placeholder=...)``), as the notebooks' tables do.
from .analysis.tables import MISSING as MISSING
from .log.db import LogDB
from .log.history import logged_providers
from .log.queries import counted_as_request
from .rounding import whole

if TYPE_CHECKING:
    import pandas as pd

#: Label → (look-back in seconds or None for everything, bucket of the requests-over-time chart).
TIME_RANGES: dict[str, tuple[float | None, str]] = {
    "Last hour": (3_600.0, "5min"),
    "Last 24 hours": (86_400.0, "1h"),
    "Last 7 days": (7 * 86_400.0, "6h"),
    "Last 30 days": (30 * 86_400.0, "1D"),
    "All time": (None, "1D"),
}
DEFAULT_RANGE = "Last 7 days"
#: The win chart's title: a win is an image delivered to an article (a pick in Compare included), the same
#: count the cost per winning image divides by.
WIN_CHART_TITLE = "Win rate: share of the images delivered"

#: The order the page shows its charts in, with their headings.
CHART_TITLES: dict[str, str] = {
    "requests": "Requests over time by outcome",
    "success": "Success and timeout rate",
    "latency": "Latency p50 / p95",
    "failures": "Failure classes",
    "wins": WIN_CHART_TITLE,
    "cost": "Cost per winning image",
}

#: How the per-provider table formats each numeric column (``st.column_config.NumberColumn`` formats, printf
#: style: the cells stay numbers, so a column sorts by value). Latencies are rounded ("%d" cut 3099.9999 ms
#: to 3099 where ``imagegen stats`` shows 3100); the sums in dollars are set by :func:`summary_formats`.
SUMMARY_FORMATS: dict[str, str] = {
    "calls": "%d",
    "success_rate": "percent",
    "failure_rate": "percent",
    "timeout_rate": "percent",
    "skipped": "%d",
    "p50_ms": "%.0f",
    "p95_ms": "%.0f",
    "wins": "%d",
    "win_rate": "percent",
    "cost_usd": "$%.2f",
    "cost_per_win": "$%.2f",
}
#: The columns in dollars: to the hundredth of a cent while any of their sums is below a dollar.
DOLLAR_COLUMNS = ("cost_usd", "cost_per_win")


#: The per-provider table's column headers, short so that the whole table fits a 1024 px window (the data
#: names, "cost_per_win" and the like, made it scroll sideways); :data:`SUMMARY_HELP` is each one's tooltip.
SUMMARY_LABELS: dict[str, str] = {
    "provider": "Provider",
    "calls": "Calls",
    "success_rate": "Success",
    "failure_rate": "Failed",
    "timeout_rate": "Timeouts",
    "skipped": "Skipped",
    "p50_ms": "p50 ms",
    "p95_ms": "p95 ms",
    "wins": "Wins",
    "win_rate": "Win rate",
    "cost_usd": "Cost",
    "cost_per_win": "Per win",
}
SUMMARY_HELP: dict[str, str] = {
    "provider": "The provider.",
    "calls": "Its finished attempts in the time range (not those its open breaker skipped).",
    "success_rate": "Share of its attempts that brought an image.",
    "failure_rate": "Share of its attempts that failed, timeouts included (races it lost are not failures).",
    "timeout_rate": "Share of its attempts that timed out.",
    "skipped": "Attempts its open circuit breaker refused: it was not called, so they are not in Calls.",
    "p50_ms": "Median time of its successful attempts.",
    "p95_ms": "95th percentile time of its successful attempts.",
    "wins": "Images it delivered: requests its image answered, comparisons an editor picked it in included.",
    "win_rate": "Its share of all the images delivered in the time range.",
    "cost_usd": "Estimated cost of all its attempts, losers and timeouts included, in USD.",
    "cost_per_win": "Its cost divided by its wins (the images it delivered), in USD.",
}


#: What the four totals count: all requests, or (when providers are chosen) those providers' part. The
#: labels are short (four side by side must fit a 1024 px window); their tooltips say the rest.
ALL_PROVIDER_LABELS = {"requests": "Requests", "success": "Succeeded", "failed": "Default image", "cost_usd": "Spent"}
ALL_PROVIDER_HELP = {
    "requests": "Requests in the time range, rejected ones included (refused before any provider was called),"
    " so more than succeeded and default image together; an earlier image reused for an article is not counted.",
    "success": "Requests answered with a provider's image.",
    "failed": "Requests answered with the default image: no provider produced one in time. A request a crash or"
    " kill of the server ended is not counted here (no one knows its answer); it is in Requests.",
    "cost_usd": "Estimated provider cost of these requests.",
}
CHOSEN_PROVIDER_LABELS = {
    "requests": "Their requests",
    "success": "Won by them",
    "failed": "Default image",
    "cost_usd": "Spent on them",
}
CHOSEN_PROVIDER_HELP = {
    "requests": "Requests the chosen providers raced in.",
    "success": "Requests one of the chosen providers won.",
    "failed": "Requests they raced in that got the default image (not those a crash or kill ended).",
    "cost_usd": "Estimated cost of the chosen providers' own calls (not of the whole requests).",
}


@dataclass
class StatsView:
    """What the stats page draws: Altair charts by name (only those with data; see :data:`CHART_TITLES`),
    the per-provider summary table and request totals."""

    charts: dict[str, Any] = field(default_factory=dict)
    summary: pd.DataFrame | None = None
    totals: dict[str, Any] = field(default_factory=dict)
    #: What each total counts, as the page labels it (it changes when providers are chosen), and its tooltip.
    labels: dict[str, str] = field(default_factory=lambda: dict(ALL_PROVIDER_LABELS))
    help: dict[str, str] = field(default_factory=lambda: dict(ALL_PROVIDER_HELP))


def provider_choices(db: LogDB, configured: list[str]) -> list[str]:
    """Providers for the filter: those in the config and those seen in the log (renamed, removed)."""
    return sorted(set(configured) | set(logged_providers(db)))


def split_title(chart: Any) -> tuple[str, str, Any]:
    """A chart's title and subtitle as text ("" when it has none), and the chart without them (a copy).

    The page shows them as text above the chart: Vega draws a title within the chart's own width and
    cuts a longer one with an ellipsis, as it did to most titles of two charts side by side in a 1024 px
    window; page text wraps instead. The subtitle says what an empty chart means ("no image was delivered in
    this range"; QA: it was dropped with the title, leaving bare axes labelled 0.000000%)."""
    import altair as alt

    title = chart.title
    text = title.text if isinstance(title, alt.TitleParams) else title
    subtitle = title.subtitle if isinstance(title, alt.TitleParams) else alt.Undefined
    untitled = chart.copy(deep=False)  # the same data, a spec of its own
    untitled.title = alt.Undefined
    return _title_text(text), _title_text(subtitle), untitled


def _title_text(text: Any) -> str:
    """A Vega title or subtitle (a string, lines, or undefined) as one line of text."""
    import altair as alt

    if isinstance(text, list):  # several lines
        text = " ".join(str(line) for line in text)
    return "" if text is None or text is alt.Undefined else str(text)


def latency_chart(quantiles: pd.DataFrame, *, title: str = "Successful attempts: p50 and p95 latency") -> Any:
    """Side-by-side p50 and p95 bars per provider, from :func:`~imagegen_core.analysis.latency_quantiles`."""
    import altair as alt

    from .analysis.charts import provider_x

    data = quantiles.melt(
        id_vars=["provider", "successes"], value_vars=["p50_ms", "p95_ms"], var_name="quantile", value_name="ms"
    )
    data["quantile"] = data["quantile"].str.removesuffix("_ms")
    return (
        alt.Chart(data, title=title)
        .mark_bar()
        .encode(
            x=provider_x(),
            xOffset="quantile:N",
            y=alt.Y("ms:Q", title="latency (ms)"),
            color=alt.Color("quantile:N", scale=alt.Scale(domain=["p50", "p95"], range=["#00798c", "#edae49"])),
            tooltip=["provider:N", "quantile:N", alt.Tooltip("ms:Q", format=".0f"), "successes:Q"],
        )
        .properties(width=360, height=240)
    )


def stats_view(
    db: LogDB,
    *,
    range_label: str = DEFAULT_RANGE,
    providers: list[str] | None = None,
    now: float | None = None,
) -> StatsView:
    """The page for one time range (a :data:`TIME_RANGES` label) and providers (None: all; any case and
    surrounding spaces, as the analysis functions take them; an empty list is a ValueError, as there).

    Each table (requests, attempts, picks) is read once per call and every number computed from those
    frames: the page redraws every few seconds, and each metric reading the log again cost seconds of CPU
    per refresh on a log of 50k requests."""
    from .analysis import load_attempts, load_picks, load_requests, requests_over_time_chart
    from .analysis.charts import freq_words
    from .analysis.frames import only_providers
    from .analysis.window import provider_list, providers_as_logged

    providers = provider_list(providers)
    look_back, freq = TIME_RANGES[range_label]
    since = None if look_back is None else (time.time() if now is None else now) - look_back
    # Unfiltered: a chosen provider's win rate is its share of *all* the wins.
    every_request = load_requests(db, since=since)
    every_attempt = load_attempts(db, since=since)
    if providers is not None:
        # As the log spells them ("UNSPLASH" found nothing); a name with no attempts in the range stays as
        # it is and finds nothing, as before (the page offers configured providers that never ran).
        providers = providers_as_logged(providers, every_attempt["provider"].dropna().unique())
    requests, attempts = only_providers(every_request, every_attempt, providers)
    # A reuse gave an article an existing image: no provider worked, so it is not a request (nor a race outcome);
    # the one definition `imagegen stats` counts its total by.
    requests = requests[requests["status"].map(counted_as_request).astype(bool)]
    view = StatsView(totals=_totals(requests, attempts, providers))
    if providers:
        view.labels = dict(CHOSEN_PROVIDER_LABELS)
        view.help = dict(CHOSEN_PROVIDER_HELP)
    if len(requests):
        title = f"Requests per {freq_words(freq)}"  # "per day", not pandas' "per 1D"
        view.charts["requests"] = requests_over_time_chart(requests, freq=freq, title=title)
    finished = attempts[attempts["outcome"].isin(("success", "failed", "cancelled"))]
    if len(finished):
        picks = load_picks(db, since=since)
        _add_provider_panels(view, requests, attempts, (every_request, every_attempt, picks), providers)
    return view


def _totals(requests: pd.DataFrame, attempts: pd.DataFrame, providers: list[str] | None) -> dict[str, Any]:
    """The four totals, and ``interrupted``: the requests a crash ended, counted apart from the default-image
    answers (see :data:`~imagegen_core.log.queries.INTERRUPTED`). With providers chosen, the requests are those
    they raced in: count their wins and their own calls' cost, not every winner's and the whole requests'
    (which would credit them with other providers' work)."""
    from .analysis.metrics import interrupted_requests

    interrupted = int(interrupted_requests(requests).sum())
    totals = {
        "requests": len(requests),
        "success": int((requests["status"] == "success").sum()),
        "failed": int((requests["status"] == "failed").sum()) - interrupted,
        "cost_usd": float(requests["cost_usd"].sum()),
        "interrupted": interrupted,
    }
    if providers:
        won = (requests["status"] == "success") & requests["provider"].isin(providers)
        totals["success"] = int(won.sum())
        totals["cost_usd"] = float(attempts["cost_usd"].fillna(0).sum())
    return totals


def _add_provider_panels(
    view: StatsView,
    requests: pd.DataFrame,
    attempts: pd.DataFrame,
    unfiltered: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame],
    providers: list[str] | None,
) -> None:
    """The per-provider charts and the summary table, from the frames read once (``unfiltered``: every
    provider's requests, attempts and picks, for the win rates). Each metric is drawn only when it has
    something to count: an empty group is a blank chart at best, and some metrics are undefined on empty
    frames."""
    from .analysis import bar_chart, failure_classes_chart, success_vs_timeout_chart
    from .analysis.metrics import _cost_per_win, _failure_class_rates, _latency_quantiles, _outcome_rates, _win_rate

    rates = _outcome_rates(attempts)
    view.charts["success"] = success_vs_timeout_chart(rates)
    # As in the notebooks' summary: failures and breaker skips beside the successes, so that a provider whose
    # breaker kept it out of most races does not look like one that was hardly asked.
    summary = rates[["provider", "calls", "success_rate", "failure_rate", "timeout_rate", "skipped"]]
    if (attempts["outcome"] == "success").any():
        quantiles = _latency_quantiles(attempts)
        view.charts["latency"] = latency_chart(quantiles)
        summary = summary.merge(quantiles[["provider", "p50_ms", "p95_ms"]], on="provider", how="left")
        for column in ("p50_ms", "p95_ms"):  # rounded here, as `imagegen stats` rounds: printf's differs on halves
            summary[column] = summary[column].map(whole, na_action="ignore")
    if (attempts["outcome"] == "failed").any():
        view.charts["failures"] = failure_classes_chart(_failure_class_rates(attempts))
    every_request, every_attempt, picks = unfiltered
    # Every provider with attempts in the range, 0 wins as 0 (a bar at 0, not a missing one), as the notebooks.
    wins = _win_rate(every_request, every_attempt, picks, providers=providers, every_provider=True)
    view.charts["wins"] = bar_chart(wins, value="win_rate", title=WIN_CHART_TITLE, fmt="%")
    summary = summary.merge(wins[["provider", "wins", "win_rate"]], on="provider", how="left")
    if (requests["status"] == "success").any():
        cost = _cost_per_win(attempts, requests)
        summary = summary.merge(cost[["provider", "cost_usd", "cost_per_win"]], on="provider", how="left")
        cost = cost.dropna(subset=["cost_per_win"])
        if len(cost):
            view.charts["cost"] = bar_chart(
                cost, value="cost_per_win", title="Cost per winning image (USD)", fmt="$.4f"
            )
    view.summary = summary


def summary_formats(summary: pd.DataFrame) -> dict[str, str]:
    """:data:`SUMMARY_FORMATS` for this table: a column in dollars with a sum below one dollar shows four
    decimals, as :func:`dollars` does ("$%.2f" showed a provider's $0.006 as "$0.01"); a column format holds
    for every cell, so one small sum is enough."""
    formats = dict(SUMMARY_FORMATS)
    for column in DOLLAR_COLUMNS:
        if column in summary and (summary[column].abs() < 1).any():
            formats[column] = "$%.4f"
    return formats


def dollars(amount: float) -> str:
    """A sum spent, as the console's other pages show a request's cost: to the hundredth of a cent below one
    dollar ("$0.0060": two images at $0.003 showed as "$0.01"), to the cent from there on ("$12.35")."""
    return f"${amount:.4f}" if abs(amount) < 1 else f"${amount:,.2f}"
