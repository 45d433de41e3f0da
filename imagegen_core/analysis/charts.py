"""Altair chart builders over the analysis frames, shared by the console's stats page and the notebooks.

Each takes a DataFrame from :mod:`.frames` or :mod:`.metrics` and returns an ``altair.Chart``; altair is
imported inside, so importing imagegen_core never loads it. Charts carry aggregated points (a CDF is
101 quantiles per provider), so they stay small whatever the size of the log.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..extras import require
from .frames import expect_frame
from .metrics import bucket_requests

if TYPE_CHECKING:
    import pandas as pd

#: Request statuses in a fixed colour order, so every chart uses the same colour for the same status.
#: ``interrupted``: ``failed`` rows a crash ended (see :data:`~imagegen_core.log.queries.INTERRUPTED`), drawn apart.
STATUS_ORDER = ["success", "failed", "cancelled", "rejected", "running", "offered", "interrupted"]
STATUS_COLOURS = ["#4c9a2a", "#d1495b", "#edae49", "#8d99ae", "#00798c", "#b5c99a", "#5c5c5c"]
#: Failure classes (:class:`~imagegen_core.errors.FailureClass`, and ``unknown`` for an unclassified one) in a
#: fixed colour order: Vega's default scheme gives colours in the order of the classes present, so the same
#: class had one colour in a notebook and another on the console's page. Timeouts are red, as in the success
#: chart.
FAILURE_CLASS_ORDER = [
    "timeout",
    "transient",
    "rate_limited",
    "auth",
    "billing",
    "invalid_request",
    "content_rejected",
    "unknown",
]
FAILURE_CLASS_COLOURS = ["#d1495b", "#edae49", "#00798c", "#30638e", "#6a4c93", "#8d99ae", "#b5838d", "#bbbbbb"]


def _altair() -> Any:
    """altair, imported on first use; :class:`~imagegen_core.errors.MissingExtraError` naming the extra to
    install when it is missing (pandas may be there without it: a frame does not prove altair)."""
    require("notebooks", feature="the charts of imagegen_core.analysis", modules=("altair",))
    import altair

    return altair


def latency_cdf_points(attempts: pd.DataFrame, *, points: int = 101) -> pd.DataFrame:
    """The empirical CDF of successful attempts' durations per provider, as ``points`` quantiles:
    columns ``provider``, ``latency_ms``, ``share`` (of successful attempts at most that fast)."""
    import pandas as pd

    expect_frame(attempts, ("provider", "outcome", "duration_ms"), "load_attempts")
    ok = attempts[(attempts["outcome"] == "success") & attempts["duration_ms"].notna()]
    shares = [i / (points - 1) for i in range(points)]
    frames = [
        pd.DataFrame(
            {"provider": name, "latency_ms": group["duration_ms"].quantile(shares).to_numpy(), "share": shares}
        )
        for name, group in ok.groupby("provider")
    ]
    if not frames:
        return pd.DataFrame({"provider": [], "latency_ms": [], "share": []})
    return pd.concat(frames, ignore_index=True)


def latency_cdf_chart(attempts: pd.DataFrame, *, title: str = "Latency of successful attempts (CDF)") -> Any:
    """One CDF line per provider on a log time axis (cold-start tails stay visible next to 300 ms stock
    photos). ``attempts`` is :func:`~.frames.load_attempts`."""
    alt = _altair()

    data = latency_cdf_points(attempts)
    data["latency_ms"] = data["latency_ms"].clip(lower=1)  # a log axis cannot show 0 ms
    empty = "no attempt succeeded in this range: no latency to draw" if data.empty else None
    return (
        alt.Chart(data, title=chart_title(title, empty))
        .mark_line(interpolate="step-after")
        .encode(
            x=alt.X("latency_ms:Q", title="latency (ms)", scale=alt.Scale(type="log")),
            y=alt.Y("share:Q", title="share of successful attempts", axis=alt.Axis(format="%")),
            color=alt.Color("provider:N"),
            tooltip=["provider:N", alt.Tooltip("latency_ms:Q", format=".0f"), alt.Tooltip("share:Q", format=".0%")],
        )
        .properties(width=520, height=280)
    )


#: Time axis labels on a 24-hour clock (Vega's own are 12-hour without AM/PM: "05:10" for 17:10), the date at
#: midnight, in UTC as the buckets are (:func:`~.metrics.bucket_requests`).
CLOCK_LABELS = (
    "utchours(datum.value) == 0 && utcminutes(datum.value) == 0"
    " ? utcFormat(datum.value, '%b %d') : utcFormat(datum.value, '%H:%M')"
)


def count_axis() -> Any:
    """An axis of counts: whole-number ticks only (not 0.5 of a request)."""
    alt = _altair()

    return alt.Axis(tickMinStep=1, format="d")


def utc_x(field: str, *, title: str = "time (UTC)") -> Any:
    """A time x channel drawn in UTC, whatever the viewer's time zone: the buckets are UTC days and hours, and
    Vega draws a time in the browser's (or the notebook kernel's) zone by default, so a viewer west of UTC saw
    a day's requests under the day before."""
    alt = _altair()

    return alt.X(f"{field}:T", title=title, scale=alt.Scale(type="utc"), axis=alt.Axis(labelExpr=CLOCK_LABELS))


def utc_tooltip(field: str, *, title: str) -> Any:
    """A tooltip of a time in UTC, to the minute, saying so (``title`` gets " (UTC)")."""
    alt = _altair()

    return alt.Tooltip(f"{field}:T", title=f"{title} (UTC)", timeUnit="utcyearmonthdatehoursminutes")


#: Pandas frequency units (as the console's time ranges and the notebooks write them) in words.
_FREQ_UNITS = {"s": "second", "min": "minute", "T": "minute", "h": "hour", "H": "hour", "D": "day", "W": "week"}
_FREQ = re.compile(r"(\d*)([A-Za-z]+)")


def freq_words(freq: str) -> str:
    """A bucket size as a title says it: ``"5min"`` → ``"5 minutes"``, ``"1h"`` → ``"hour"``, ``"1D"`` →
    ``"day"`` (QA: "Requests per 1D" is pandas' code, not English). A code not known here (``"W-MON"``)
    is kept as it is rather than guessed at."""
    match = _FREQ.fullmatch(freq.strip())
    if match is None or match[2] not in _FREQ_UNITS:
        return freq
    count, unit = int(match[1] or 1), _FREQ_UNITS[match[2]]
    return unit if count == 1 else f"{count} {unit}s"


def requests_over_time_chart(requests: pd.DataFrame, *, freq: str = "1h", title: str | None = None) -> Any:
    """Stacked bars: requests per ``freq`` bucket (UTC) by status, drawn in UTC. ``requests`` is
    :func:`~.frames.load_requests`."""
    alt = _altair()

    data = bucket_requests(requests, freq=freq)
    return (
        alt.Chart(data, title=title or f"Requests per {freq_words(freq)} by outcome")
        .mark_bar()
        .encode(
            x=utc_x("bucket"),
            y=alt.Y("requests:Q", title="requests", stack=True, axis=count_axis()),
            color=alt.Color("status:N", scale=alt.Scale(domain=STATUS_ORDER, range=STATUS_COLOURS)),
            tooltip=[utc_tooltip("bucket", title="bucket start"), "status:N", "requests:Q"],
        )
        .properties(width=620, height=220)
    )


def success_vs_timeout_chart(rates: pd.DataFrame, *, title: str = "Success and timeout rate per provider") -> Any:
    """Side-by-side bars of ``success_rate`` and ``timeout_rate`` per provider. ``rates`` is
    :func:`~.metrics.outcome_rates`."""
    alt = _altair()

    data = rates.melt(
        id_vars=["provider", "calls"], value_vars=["success_rate", "timeout_rate"], var_name="rate", value_name="share"
    )
    # The legend says what was counted, not the column names ("success_rate", "timeout_rate").
    data["rate"] = data["rate"].map({"success_rate": "succeeded", "timeout_rate": "timed out"})
    return (
        alt.Chart(data, title=title)
        .mark_bar()
        .encode(
            x=provider_x(),
            xOffset="rate:N",
            y=alt.Y("share:Q", title="share of calls", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])),
            color=alt.Color(
                "rate:N",
                title="calls that",
                scale=alt.Scale(domain=["succeeded", "timed out"], range=["#4c9a2a", "#d1495b"]),
            ),
            tooltip=["provider:N", "rate:N", alt.Tooltip("share:Q", format=".1%"), "calls:Q"],
        )
        .properties(width=360, height=240)
    )


def failure_classes_chart(classes: pd.DataFrame, *, title: str = "Failures by class") -> Any:
    """Stacked bars of failure counts per provider by class. ``classes`` is
    :func:`~.metrics.failure_class_rates`."""
    alt = _altair()

    empty = "no attempt failed in this range" if classes.empty else None
    return (
        alt.Chart(classes, title=chart_title(title, empty))
        .mark_bar()
        .encode(
            x=provider_x(),
            y=alt.Y("count:Q", title="failed attempts", axis=count_axis()),
            color=alt.Color("failure_class:N", title="class", scale=failure_class_scale(classes["failure_class"])),
            tooltip=["provider:N", "failure_class:N", "count:Q", alt.Tooltip("rate:Q", format=".1%")],
        )
        .properties(width=360, height=240)
    )


def failure_class_scale(present: Iterable[str]) -> Any:
    """The colour scale of the failure classes ``present``: each its :data:`FAILURE_CLASS_COLOURS` colour (a
    class it does not know grey), the legend naming only those present (all of them when none is)."""
    alt = _altair()

    colours = dict(zip(FAILURE_CLASS_ORDER, FAILURE_CLASS_COLOURS, strict=True))
    seen = set(present) or set(FAILURE_CLASS_ORDER)
    domain = [c for c in FAILURE_CLASS_ORDER if c in seen] + sorted(seen - set(FAILURE_CLASS_ORDER))
    return alt.Scale(domain=domain, range=[colours.get(c, "#bbbbbb") for c in domain])


def bar_chart(frame: pd.DataFrame, *, value: str, title: str, fmt: str = "", empty: str | None = None) -> Any:
    """A bar per provider of one column of a per-provider frame (win rate, cost per winning image, ...).

    When there is nothing to draw (no value, or a frame with ``wins`` in which nobody won), the subtitle says
    so (``empty``, or a sentence naming the column), rather than leave bare axes to puzzle over."""
    alt = _altair()

    axis = alt.Axis(format=fmt) if fmt else alt.Axis()
    nothing = frame[value].notna().sum() == 0 or ("wins" in frame.columns and frame["wins"].sum() == 0)
    if nothing and empty is None:
        empty = (
            "no image was delivered in this range"
            if "wins" in frame.columns
            else f"no {value.replace('_', ' ')} in this range"
        )
    return (
        alt.Chart(frame, title=chart_title(title, empty if nothing else None))
        .mark_bar()
        .encode(
            x=provider_x(),
            y=alt.Y(f"{value}:Q", title=value.replace("_", " "), axis=axis),
            tooltip=["provider:N", alt.Tooltip(f"{value}:Q", format=fmt or ".4g")],
        )
        .properties(width=300, height=220)
    )


#: The timeout sweep's panels: column, title, axis format, the least step between ticks (the format's last
#: digit, see :func:`stepped_ticks`) and colour.
SWEEP_PANELS = (
    ("success_rate", "success rate", ".1%", 0.001, "#4c9a2a"),
    ("answer_p95_ms", "answer time p95 (ms)", ",.0f", 1, "#d1495b"),
    ("cost_per_image", "USD per image", "$.4f", 0.0001, "#edae49"),
)


def timeout_sweep_chart(sweep: pd.DataFrame, *, provider: str) -> Any:
    """Success, answer-time p95 and cost per image against ``provider``'s timeout, three panels side by side.
    ``sweep`` has a row per timeout tried: ``timeout_ms`` and the replay's numbers (``ReplayReport.as_dict()``)."""
    alt = _altair()

    x = alt.X("timeout_ms:Q", title=f"{provider} timeout (ms)", scale=alt.Scale(type="log"))
    panels = []
    for column, title, fmt, step, colour in SWEEP_PANELS:
        ticks = stepped_ticks(sweep[column], step)
        scale = alt.Scale(zero=False) if ticks is None else alt.Scale(domain=[ticks[0], ticks[-1]], nice=False)
        axis = alt.Axis(format=fmt) if ticks is None else alt.Axis(format=fmt, values=ticks)
        y = alt.Y(f"{column}:Q", title=title, axis=axis, scale=scale)
        line = alt.Chart(sweep).mark_line(point=True, color=colour).encode(x=x, y=y, tooltip=["timeout_ms", column])
        panels.append(line.properties(width=220, height=180, title=title))
    return alt.hconcat(*panels)


def stepped_ticks(values: pd.Series, step: float, *, most: int = 5) -> list[float] | None:
    """Axis ticks at whole multiples of ``step`` (the format's last digit), at least two and at most about
    ``most``, spanning ``values``; None when there is no value. Vega's own ticks may be finer than the format
    shows, and its ``tickMinStep`` gives way when the values span less than a step: an axis then read
    "$0.0032" twice, or "100.0%" twice for successes from 99.95 % to 100 %."""
    finite = values.dropna().astype("float64")
    if finite.empty:
        return None
    low = math.floor(round(float(finite.min()) / step, 6))
    high = math.ceil(round(float(finite.max()) / step, 6))
    if high == low:  # one value: a step below it (a success rate of 100 % tops the axis), or above 0
        low, high = (low - 1, high) if low > 0 else (low, high + 1)
    stride = next(k * 10**e for e in range(12) for k in (1, 2, 5) if (high - low) / (k * 10**e) <= most)
    low = low // stride * stride
    count = -(-(high - low) // stride)
    return [round((low + i * stride) * step, 12) for i in range(count + 1)]


def hedge_delay_chart(hedging: pd.DataFrame, *, title: str = "Hedge delay what-if") -> Any:
    """Each variant of a hedge-delay sweep as a point (extra calls per request against answer-time p95), named
    by its colour in the legend. Names written beside the points overlapped wherever variants land close
    together, and variants with the same result (a breaker-bound replay) were one point under three names
    written over each other: they are one point, its legend entry naming them all. ``hedging`` has a row per
    variant: ``variant`` and the replay's numbers (``ReplayReport.as_dict()``)."""
    alt = _altair()

    where = ["extra_calls_per_request", "answer_p95_ms"]
    others = {column: (column, "first") for column in hedging.columns if column not in (*where, "variant")}
    data = hedging.groupby(where, sort=False, dropna=False).agg(variant=("variant", " / ".join), **others).reset_index()
    tips = [c for c in ("answer_p50_ms", "success_rate", "cost_per_image") if c in data.columns]
    return (
        alt.Chart(data, title=title)
        .mark_point(filled=True, size=90)
        .encode(
            x=alt.X("extra_calls_per_request:Q", title="extra provider calls per request"),
            y=alt.Y("answer_p95_ms:Q", title="answer time p95 (ms)"),
            color=alt.Color("variant:N", sort=list(data["variant"]), legend=alt.Legend(labelLimit=320)),
            tooltip=["variant:N", *where, *tips],
        )
        .properties(width=420, height=300)
    )


def provider_x() -> Any:
    """The x channel of a per-provider bar chart: every provider's name drawn. Vega drops every other label
    once they overlap, and in a narrow panel (two charts side by side in a 1024 px window) a bar then had
    no name."""
    alt = _altair()

    return alt.X("provider:N", title=None, axis=alt.Axis(labelOverlap=False))


def chart_title(title: str, empty: str | None) -> Any:
    """The title, with ``empty`` (why there is nothing to draw) as its subtitle when given."""
    alt = _altair()

    return alt.TitleParams(title, subtitle=empty) if empty else title


def side_by_side(*charts: Any) -> Any:
    """Charts next to each other, each with its own colours and legend. Altair's ``a | b`` shares one colour
    scale: the success chart fixed its domain to ``["succeeded", "timed out"]``, so the failure-class bars
    beside it got no colour at all and one merged legend read "calls that, class"."""
    alt = _altair()

    return alt.hconcat(*charts).resolve_scale(color="independent").resolve_legend(color="independent")


def draw_charts_offline() -> str:
    """Draw this kernel's Altair charts as SVG images (Altair's ``svg`` renderer, through vl-convert), and
    return the renderer's name.

    Altair's default output is HTML that loads vega, vega-lite and vega-embed from a CDN: offline (the
    product must work there) no chart drew. An SVG is drawn in the kernel, needs no JavaScript and no trust,
    and shows the same in JupyterLab, VS Code, nbconvert exports and any notebook viewer, with or without a
    network. Altair's ``jupyter`` renderer can also work offline, but it is a widget (anywidget): its charts
    vanish from saved notebooks and exports. Inline HTML embeds ~1 MB of JavaScript per chart and runs only in
    trusted notebooks. The price: no tooltips (a notebook's tables carry the numbers)."""
    alt = _altair()

    alt.renderers.enable("svg")
    return "svg"
