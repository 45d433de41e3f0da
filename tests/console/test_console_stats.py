"""The Provider stats page draws the log through imagegen_core.analysis: the charts' data is checked, for a
time range and a provider filter."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pandas as pd
import pytest
from console_helpers import charts_by_title, core, open_page

from imagegen_core.console_stats import TIME_RANGES, dollars, stats_view, summary_formats
from imagegen_core.log.db import LogDB

HOUR = 3600.0


def add_request(
    db: LogDB,
    request_id: str,
    *,
    at: float,
    status: str,
    winner: str | None,
    attempts: list[tuple[str, str, int, float]],
) -> None:
    """One finished request and its attempts ``(provider, outcome or failure class, ms, cost)``."""
    db.start_request(
        request_id, created_at=at, prompt=request_id, keyword=None, article_id=None, width=1200, height=630,
        style=None, source="test",
    )  # fmt: skip
    for number, (provider, outcome, ms, cost) in enumerate(attempts):
        attempt_id = f"{request_id}-{number}"
        db.start_attempt(attempt_id, request_id=request_id, provider=provider, attempt=1, hedged=False, started_at=at)
        failed = outcome not in ("success", "cancelled")
        db.finish_attempt(
            attempt_id,
            finished_at=at + ms / 1000,
            outcome="failed" if failed else outcome,
            failure_class=outcome if failed else None,
            duration_ms=ms,
            cost_usd=cost,
        )
    db.finish_request(
        request_id,
        finished_at=at + 1,
        status=status,
        provider=winner or "default",
        elapsed_ms=max(ms for _, _, ms, _ in attempts),
        cost_usd=sum(cost for *_, cost in attempts),
    )


@pytest.fixture
def seeded() -> float:
    """Five requests in the last hour (alpha 100/200/300 ms, beta a timeout and a 400 ms success that an
    editor picked over alpha) and an alpha request three days ago (1000 ms)."""
    now = time.time()
    with core() as gen:
        db = gen.log
        for n, ms in enumerate((100, 200, 300), start=1):
            add_request(
                db,
                f"r{n}",
                at=now - 600 + n,
                status="success",
                winner="alpha",
                attempts=[("alpha", "success", ms, 0.002)],
            )
        add_request(db, "r4", at=now - 500, status="failed", winner=None, attempts=[("beta", "timeout", 1000, 0.001)])
        add_request(db, "r5", at=now - 400, status="success", winner="beta", attempts=[("beta", "success", 400, 0.001)])
        add_request(
            db,
            "old",
            at=now - 72 * HOUR,
            status="success",
            winner="alpha",
            attempts=[("alpha", "success", 1000, 0.002)],
        )
        db.record_pick(
            "r5",
            provider="beta",
            offered=["alpha", "beta"],
            article_id=None,
            url=None,
            storage_key=None,
            picked_at=now - 390,
        )
    return now


def by(rows: list[dict[str, Any]], *keys: str, value: str) -> dict[Any, Any]:
    return {tuple(row[k] for k in keys) if len(keys) > 1 else row[keys[0]]: row[value] for row in rows}


def test_the_charts_carry_the_log_numbers_for_the_time_range(seeded: float) -> None:
    at = open_page("stats").run()
    at.selectbox(key="stats_range").select("Last 24 hours").run()

    assert not at.exception
    charts = charts_by_title(at)
    assert set(charts) == {
        "Requests per hour",
        "Success and timeout rate per provider",
        "Successful attempts: p50 and p95 latency",
        "Failures by class",
        "Win rate: share of the images delivered",
        "Cost per winning image (USD)",
    }
    per_status: dict[str, int] = {}
    for row in charts["Requests per hour"]:
        per_status[row["status"]] = per_status.get(row["status"], 0) + row["requests"]
    assert per_status == {"success": 4, "failed": 1}
    latency = by(charts["Successful attempts: p50 and p95 latency"], "provider", "quantile", value="ms")
    assert latency == {
        ("alpha", "p50"): 200,
        ("alpha", "p95"): pytest.approx(290),
        ("beta", "p50"): 400,
        ("beta", "p95"): 400,
    }
    rates = by(charts["Success and timeout rate per provider"], "provider", "rate", value="share")
    assert rates == {
        ("alpha", "succeeded"): 1.0,
        ("alpha", "timed out"): 0.0,
        ("beta", "succeeded"): 0.5,
        ("beta", "timed out"): 0.5,
    }
    assert by(charts["Failures by class"], "provider", "failure_class", value="count") == {("beta", "timeout"): 1}
    # wins are the images delivered (r5, picked, is beta's), not the picks only (alpha 0 next to its cost per win)
    assert by(charts["Win rate: share of the images delivered"], "provider", value="win_rate") == {
        "alpha": 0.75,
        "beta": 0.25,
    }
    cost = by(charts["Cost per winning image (USD)"], "provider", value="cost_per_win")
    assert cost == {"alpha": pytest.approx(0.002), "beta": pytest.approx(0.002)}
    assert {m.label: m.value for m in at.metric} == {
        "Requests": "5",
        "Succeeded": "4",
        "Default image": "1",
        "Spent": "$0.0080",  # four calls at $0.002: "$0.01" before, rounded to the cent (QA)
    }


def test_the_range_and_provider_filters_change_the_data(seeded: float) -> None:
    at = open_page("stats").run()
    at.selectbox(key="stats_range").select("All time").run()
    latency = by(charts_by_title(at)["Successful attempts: p50 and p95 latency"], "provider", "quantile", value="ms")
    assert latency[("alpha", "p50")] == 250  # the old 1000 ms request now counts

    at.multiselect(key="stats_providers").select("beta").run()
    charts = charts_by_title(at)
    assert {row["provider"] for row in charts["Successful attempts: p50 and p95 latency"]} == {"beta"}
    assert {row["provider"] for row in charts["Success and timeout rate per provider"]} == {"beta"}


def test_a_chart_with_nothing_to_draw_says_why_above_it(seeded: float) -> None:
    """QA: the win-rate chart of a provider that never won came as bare axes labelled 0.000000%: its subtitle
    ("no image was delivered in this range") was dropped with the title the page shows above the chart."""
    with core() as gen:
        add_request(
            gen.log, "g1", at=seeded - 300, status="failed", winner=None, attempts=[("gamma", "timeout", 900, 0.0)]
        )
    at = open_page("stats").run()
    at.multiselect(key="stats_providers").select("gamma").run()
    assert "no image was delivered in this range" in [caption.value for caption in at.caption]


def test_an_empty_log_says_so_instead_of_drawing_empty_charts() -> None:
    at = open_page("stats").run()
    assert not at.exception
    assert not at.get("vega_lite_chart")
    assert [i.value for i in at.info] == ["No requests in this range yet: generate an image, or widen the time range."]


def test_providers_not_called_in_the_range_are_named_instead_of_an_empty_log(seeded: float) -> None:
    """QA: with only providers that were never called chosen (a configured backup, say), the page said "No requests
    in this range yet: generate an image, or widen the time range." over a log of 60,000 requests. It names the
    filter as the reason now, and widening the range is one way out of three."""
    at = open_page("stats").run()
    at.multiselect(key="stats_providers").select("replicate").select("bfl").run()
    assert not at.exception
    assert not at.get("vega_lite_chart")
    assert [i.value for i in at.info] == [
        "No request in this range called bfl or replicate: choose other providers (or All), or widen the time range."
    ]


def test_totals_under_a_provider_filter_count_that_providers_part(seeded: float) -> None:
    """Regression: with providers chosen, the totals credited them with every winner of the requests they
    raced in and with the whole requests' cost."""
    with core() as gen:  # alpha fails at once, beta answers: beta's win, alpha's (wasted) call
        add_request(
            gen.log,
            "r6",
            at=seeded - 300,
            status="success",
            winner="beta",
            attempts=[("alpha", "transient", 50, 0.002), ("beta", "success", 400, 0.05)],
        )
    at = open_page("stats").run()
    at.selectbox(key="stats_range").select("All time").run()
    assert {m.label: m.value for m in at.metric} == {
        "Requests": "7",
        "Succeeded": "6",
        "Default image": "1",
        "Spent": "$0.0620",
    }
    at.multiselect(key="stats_providers").select("alpha").run()
    assert {m.label: m.value for m in at.metric} == {
        "Their requests": "5",  # r1-r3, old, r6
        "Won by them": "4",  # not r6: beta won it
        "Default image": "0",
        "Spent on them": "$0.0100",  # five alpha calls at $0.002, not the $0.062 of their requests
    }
    at.multiselect(key="stats_providers").unselect("alpha").select("beta").run()
    assert {m.label: m.value for m in at.metric}["Won by them"] == "2"  # r5, r6


def test_the_requests_total_says_that_it_counts_rejected_requests(seeded: float) -> None:
    """QA: the Requests total counted rejected requests, which appear nowhere else on the page (no provider
    was called), without a word: its tooltip says so."""
    from tests.log.rows import add_rejected

    with core() as gen:
        add_rejected(gen.log, "refused", seeded - 100)
    at = open_page("stats").run()
    at.selectbox(key="stats_range").select("Last 24 hours").run()
    (requests,) = [m for m in at.metric if m.label == "Requests"]
    assert requests.value == "6"  # five raced, one rejected
    assert "rejected ones included (refused before any provider was called)" in requests.proto.help


def test_missing_table_values_show_a_dash_and_numbers_stay_numbers(seeded: float) -> None:
    """Regression: a provider with no success yet (no latency, no win, no cost per win) had cells reading
    "None" in the per-provider table. A missing value shows as an em dash (the grid's placeholder), and the
    other cells stay numbers with a display format, so that sorting a column sorts by value."""
    with core() as gen:  # gamma only ever timed out
        add_request(
            gen.log, "r7", at=seeded - 200, status="failed", winner=None, attempts=[("gamma", "timeout", 1000, 0.0)]
        )
        add_request(
            gen.log, "r8", at=seeded - 100, status="failed", winner=None, attempts=[("delta", "transient", 5, 0.0)]
        )
        log, at = gen.log, seeded - 100
        log.start_attempt("r8-9", request_id="r8", provider="gamma", attempt=1, hedged=False, started_at=at)
        log.finish_attempt("r8-9", finished_at=at, outcome="skipped", failure_class=None, duration_ms=0)  # breaker
    at = open_page("stats").run()
    at.selectbox(key="stats_range").select("Last 24 hours").run()

    assert not at.exception
    (table,) = at.dataframe
    assert table.proto.placeholder == "—"
    columns = {name: c for name, c in json.loads(table.proto.columns).items() if not c.get("hidden")}  # the index
    formats = {name: c["type_config"]["format"] for name, c in columns.items() if "format" in c.get("type_config", {})}
    # short headers (the data names made the table scroll sideways at 1024 px), each with a tooltip
    assert {name: c["label"] for name, c in columns.items()} == {
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
    assert all(c.get("help") for c in columns.values())
    assert [name for name, c in columns.items() if c.get("pinned")] == ["provider"]  # in view when scrolled
    assert formats == {
        "calls": "%d",
        "success_rate": "percent",
        "failure_rate": "percent",
        "timeout_rate": "percent",
        "skipped": "%d",
        "p50_ms": "%.0f",  # rounded, not cut (see the test below)
        "p95_ms": "%.0f",
        "wins": "%d",
        "win_rate": "percent",
        "cost_usd": "$%.4f",  # sums below a dollar: "$%.2f" showed $0.006 as $0.01
        "cost_per_win": "$%.4f",
    }
    frame = table.value
    assert all(pd.api.types.is_numeric_dtype(frame[name]) for name in formats)
    rows = {row["provider"]: row for row in frame.to_dict("records")}
    assert set(rows) == {"alpha", "beta", "gamma", "delta"}
    gamma = rows["gamma"]
    missing = {name for name in formats if pd.isna(gamma[name])}
    assert missing == {"p50_ms", "p95_ms", "cost_per_win"}
    # QA: its wins were missing too, and it had no bar in the win chart; 0 wins are 0, as in the notebooks
    assert (gamma["calls"], gamma["success_rate"], gamma["timeout_rate"]) == (1, 0.0, 1.0)
    # QA (D11): failures and breaker skips have columns, as in notebook 02's summary
    assert (gamma["failure_rate"], gamma["skipped"]) == (1.0, 1)
    assert (gamma["wins"], gamma["win_rate"]) == (0, 0.0)
    wins = by(charts_by_title(at)["Win rate: share of the images delivered"], "provider", value="win_rate")
    assert wins == {"alpha": 0.75, "beta": 0.25, "gamma": 0.0, "delta": 0.0}
    alpha = rows["alpha"]
    assert (alpha["p50_ms"], alpha["success_rate"], alpha["cost_per_win"]) == (200, 1.0, pytest.approx(0.002))


def test_a_refresh_reads_each_table_once(seeded: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (QA, a log of 50k requests: ~4.5 s of CPU per refresh of the page): every metric read the
    log again, the attempts six times and the requests three. One refresh now reads each table once, with or
    without a provider filter, and still draws every chart."""
    read: list[str] = []
    query = LogDB.query

    def counting(self: LogDB, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        read.extend(re.findall(r"\bFROM (requests|attempts|picks)\b", sql))
        return query(self, sql, params)

    monkeypatch.setattr(LogDB, "query", counting)
    with core() as gen:
        for providers in (None, ["beta"]):
            read.clear()
            view = stats_view(gen.log, range_label="All time", providers=providers)
            assert len(view.charts) == 6
            assert sorted(read) == ["attempts", "picks", "requests"], providers


def test_the_page_matches_chosen_providers_in_any_case_as_the_analysis_functions_do(seeded: float) -> None:
    """QA: ``stats_view(providers=["BETA"])`` showed nothing (no requests, no charts) while the analysis
    functions take any case; one normalisation serves both: any case, surrounding spaces ignored, and an empty
    list is the same ValueError (None means every provider)."""
    with core() as gen:
        lower = stats_view(gen.log, range_label="All time", providers=["beta"])
        for spelling in (["BETA"], [" Beta "]):
            view = stats_view(gen.log, range_label="All time", providers=spelling)
            assert view.totals == lower.totals and view.totals["requests"] > 0, spelling
            assert sorted(view.charts) == sorted(lower.charts)
            pd.testing.assert_frame_equal(view.summary, lower.summary)
        with pytest.raises(ValueError, match=r"^providers is empty: name at least one provider, or pass None for all$"):
            stats_view(gen.log, range_label="All time", providers=[])


def test_the_table_rounds_latencies_and_shows_sums_below_a_dollar_to_the_hundredth_of_a_cent() -> None:
    """QA: "%d" cut a p95 of 3099.9999 ms to 3099 (``imagegen stats`` said 3100) and "$%.2f" showed a
    provider's $0.006 as "$0.01". The formats are printf's, as Python applies them."""
    small = pd.DataFrame({"p50_ms": [3099.9999], "p95_ms": [0.5001], "cost_usd": [0.006], "cost_per_win": [0.0015]})
    formats = summary_formats(small)
    shown = {column: formats[column] % value for column, value in small.iloc[0].items()}
    assert shown == {"p50_ms": "3100", "p95_ms": "1", "cost_usd": "$0.0060", "cost_per_win": "$0.0015"}
    large = pd.DataFrame({"cost_usd": [12.345, 3.0], "cost_per_win": [1.5, float("nan")]})
    formats = summary_formats(large)
    assert (formats["cost_usd"] % 12.345, formats["cost_per_win"] % 1.5) == ("$12.35", "$1.50")  # like dollars()


def test_sums_spent_show_what_a_request_costs_below_a_dollar_and_cents_above() -> None:
    assert [dollars(x) for x in (0, 0.006, 0.0625, 0.99994, 1, 1234.5)] == [
        "$0.0000",
        "$0.0060",
        "$0.0625",
        "$0.9999",
        "$1.00",
        "$1,234.50",
    ]


def test_open_tabs_on_an_unchanged_log_share_one_computation_per_refresh(
    seeded: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA: three Provider stats tabs on a 200k-request log took 92 % of a core, each recomputing everything
    (3 s) on every refresh tick though the log had not changed. Sessions now share the computation, keyed by
    the range, the providers and a cheap mark of the log's last change: a second tab on the same log in the
    same refresh interval computes nothing; a new request, or the next interval, computes again."""
    import console.common
    import imagegen_core.console_stats as console_stats

    computed: list[str] = []
    compute = console_stats.stats_view

    def counting(db: LogDB, **options: Any) -> Any:
        computed.append(options["range_label"])
        return compute(db, **options)

    clock = [1_000_000.0]
    monkeypatch.setattr(console_stats, "stats_view", counting)
    monkeypatch.setattr(console.common, "stats_clock", lambda: clock[0], raising=False)
    first, second = open_page("stats").run(), open_page("stats").run()
    assert not first.exception and not second.exception
    assert computed == ["Last 7 days"]  # the second session drew the first one's result
    assert first.metric[0].value == second.metric[0].value == "6"

    with core() as gen:
        add_request(
            gen.log, "new", at=time.time(), status="success", winner="alpha", attempts=[("alpha", "success", 50, 0.002)]
        )
    first.run()
    assert computed == ["Last 7 days"] * 2 and first.metric[0].value == "7"  # the new request shows at once
    second.run()
    assert computed == ["Last 7 days"] * 2 and second.metric[0].value == "7"

    clock[0] += 10  # the default refresh interval: a range's start has moved, so it is computed again
    second.run()
    assert computed == ["Last 7 days"] * 3


def test_the_requests_chart_says_its_bucket_in_words_for_every_time_range(seeded: float) -> None:
    """QA: the requests chart's title showed pandas frequency codes ("Requests per 1D", "per 5min", "per 1h").
    Every range's bucket is said in words."""
    words = {
        "Last hour": "Requests per 5 minutes",
        "Last 24 hours": "Requests per hour",
        "Last 7 days": "Requests per 6 hours",
        "Last 30 days": "Requests per day",
        "All time": "Requests per day",
    }
    assert set(words) == set(TIME_RANGES), "a new range needs its title here"
    at = open_page("stats").run()
    for label, title in words.items():
        at.selectbox(key="stats_range").select(label).run()
        assert not at.exception
        assert title in charts_by_title(at), label
