"""The analysis functions over a hand-built log with known answers (rows written with LogDB's own write
methods, as the service writes them)."""

from __future__ import annotations

import gc
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from imagegen_core import AnalysisError
from imagegen_core.analysis import (
    cost_per_winning_image,
    failure_class_rates,
    latency_cdf_chart,
    latency_quantiles,
    load_attempts,
    load_picks,
    load_requests,
    newsroom_config,
    newsroom_profiles,
    notebook_log,
    outcome_rates,
    provider_summary,
    requests_over_time_chart,
    success_vs_timeout_chart,
    win_rate,
    write_simulated_log,
)
from imagegen_core.analysis.charts import freq_words
from imagegen_core.log import LogDB

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC

#: request id -> (created offset s, status, winner, [(provider, attempt, outcome, class, duration ms, cost, hedged)])
LOG: dict[str, tuple[float, str, str, list[tuple[str, int, str, str | None, int, float, bool]]]] = {
    "r1": (0, "success", "fal", [
        ("replicate", 1, "cancelled", None, 900, 0.003, False),
        ("fal", 1, "success", None, 400, 0.002, True),
    ]),
    "r2": (60, "success", "replicate", [("replicate", 1, "success", None, 1000, 0.003, False)]),
    "r3": (120, "success", "replicate", [
        ("replicate", 1, "failed", "transient", 200, 0.0, False),
        ("replicate", 2, "success", None, 1200, 0.003, False),
    ]),
    "r4": (180, "failed", "default", [
        ("replicate", 1, "failed", "timeout", 2000, 0.003, False),
        ("fal", 1, "failed", "content_rejected", 100, 0.0, True),
    ]),
    "r5": (3600, "success", "unsplash", [
        ("replicate", 1, "skipped", None, 0, 0.0, False),
        ("unsplash", 1, "success", None, 300, 0.0, False),
    ]),
    "r6": (7200, "success", "fal", [("fal", 1, "success", None, 600, 0.002, False)]),
}  # fmt: skip


def write_log(db: LogDB) -> None:
    for request_id, (offset, status, winner, attempts) in LOG.items():
        at = T0 + offset
        db.start_request(
            request_id, created_at=at, prompt="p", keyword=None, article_id=None, width=64, height=64, style=None,
            source="test",
        )  # fmt: skip
        for index, (provider, number, outcome, cls, ms, cost, hedged) in enumerate(attempts):
            attempt_id = f"{request_id}-{index}"
            started = at + index * 0.1
            db.start_attempt(
                attempt_id, request_id=request_id, provider=provider, attempt=number, hedged=hedged, started_at=started
            )
            db.finish_attempt(
                attempt_id, finished_at=started + ms / 1000, outcome=outcome, failure_class=cls, duration_ms=ms,
                cost_usd=cost,
            )  # fmt: skip
        total = sum(a[5] for a in attempts)
        db.finish_request(
            request_id, finished_at=at + 2, status=status, provider=winner, elapsed_ms=1500, cost_usd=total
        )


@pytest.fixture
def db(tmp_path: Path) -> Iterator[LogDB]:
    with LogDB(tmp_path / "log.db") as log:
        write_log(log)
        yield log


def add_picks(db: LogDB, rows: list[tuple[str, str, str, float]]) -> None:
    """Editors' picks, written with SQL so the test runs with or without the console's ``picks``
    migration (when it is missing, a stand-in table with the same column names is created)."""
    with db.transaction() as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS picks (id INTEGER PRIMARY KEY, request_id TEXT NOT NULL,"
            " provider TEXT NOT NULL, offered TEXT NOT NULL, picked_at REAL NOT NULL)"
        )
        conn.executemany("INSERT INTO picks (request_id, provider, offered, picked_at) VALUES (?, ?, ?, ?)", rows)


def drop_picks(db: LogDB) -> None:
    """A log from before the console's migration: no ``picks`` table at all."""
    with db.transaction() as conn:
        conn.execute("DROP TABLE IF EXISTS picks")


def by_provider(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    return {row["provider"]: row for row in frame.to_dict("records")}


def test_loaders_honour_the_half_open_time_range_and_the_provider_filter(db: LogDB) -> None:
    requests = load_requests(db, since=T0 + 60, until=T0 + 3600)
    assert list(requests["id"]) == ["r2", "r3", "r4"]  # r5 at exactly `until` is out
    assert str(requests["created_at"].dt.tz) == "UTC" and requests["created_at"].iloc[0].timestamp() == T0 + 60
    since = datetime.fromtimestamp(T0 + 60, tz=UTC).replace(tzinfo=None)  # a naive datetime counts as UTC
    assert list(load_requests(db, since=since, until=T0 + 3600)["id"]) == ["r2", "r3", "r4"]
    # an ISO string or a date works as well (naive: UTC); anything else says what it takes
    assert list(load_requests(db, since=since.isoformat(), until=T0 + 3600)["id"]) == ["r2", "r3", "r4"]
    day = datetime.fromtimestamp(T0, tz=UTC).date()
    assert len(load_requests(db, since=day)) == len(load_requests(db, since=day.isoformat())) > 0
    with pytest.raises(ValueError, match="not a date or time: 'last week'"):
        load_requests(db, since="last week")
    with pytest.raises(TypeError, match="since/until take Unix seconds, a datetime, a date or an ISO 8601 string"):
        load_requests(db, since=[T0])
    # a provider filter keeps the requests it took part in, including failed ones (provider "default")
    assert list(load_requests(db, providers="fal")["id"]) == ["r1", "r4", "r6"]
    # QA: nor the requests in which its breaker skipped it (replicate in r5): it did not race there
    assert list(load_requests(db, providers="replicate")["id"]) == ["r1", "r2", "r3", "r4"]
    attempts = load_attempts(db, providers=["unsplash", "fal"])
    assert sorted(set(attempts["provider"])) == ["fal", "unsplash"] and len(attempts) == 4
    assert attempts["hedged"].dtype == bool and attempts["duration_ms"].dtype == "float64"


@pytest.mark.parametrize("providers", [None, "fal", "replicate", ["replicate", "unsplash"]])
def test_filtering_loaded_frames_by_provider_gives_what_the_filtered_loaders_give(
    db: LogDB, providers: str | list[str] | None
) -> None:
    """The console reads each table once per refresh and filters in pandas (only_providers): the same rows as
    the loaders' own provider filter."""
    from imagegen_core.analysis.frames import only_providers

    requests, attempts = only_providers(load_requests(db, since=T0), load_attempts(db, since=T0), providers)
    pd.testing.assert_frame_equal(requests, load_requests(db, since=T0, providers=providers))
    pd.testing.assert_frame_equal(attempts, load_attempts(db, since=T0, providers=providers))


def test_empty_results_keep_their_columns(db: LogDB) -> None:
    assert load_requests(db, since=T0 + 10**6).empty and "status" in load_requests(db, since=T0 + 10**6)
    assert list(latency_quantiles(db, since=T0 + 10**6).columns)[:2] == ["provider", "successes"]
    assert outcome_rates(db, since=T0 + 10**6).empty


def test_latency_quantiles_of_successful_attempts(db: LogDB) -> None:
    rows = by_provider(latency_quantiles(db))
    rep = rows["replicate"]  # successes 1000 and 1200 ms; linear interpolation
    assert (rep["successes"], rep["p50_ms"], rep["p90_ms"], rep["p95_ms"], rep["p99_ms"], rep["mean_ms"]) == (
        2, 1100, 1180, 1190, 1198, 1100
    )  # fmt: skip
    assert (rows["fal"]["p50_ms"], rows["fal"]["p90_ms"]) == (500, 580)
    assert rows["unsplash"]["p99_ms"] == 300


def test_outcome_rates_count_finished_attempts_and_report_skips_apart(db: LogDB) -> None:
    rep = by_provider(outcome_rates(db))["replicate"]
    # calls: cancelled, success, transient, success, timeout; the skipped attempt is not a call
    assert {k: rep[k] for k in ("calls", "successes", "failures", "timeouts", "cancelled", "skipped")} == {
        "calls": 5, "successes": 2, "failures": 2, "timeouts": 1, "cancelled": 1, "skipped": 1
    }  # fmt: skip
    assert (rep["success_rate"], rep["failure_rate"], rep["timeout_rate"], rep["cancelled_rate"]) == (
        0.4, 0.4, 0.2, 0.2
    )  # fmt: skip
    fal = by_provider(outcome_rates(db, until=T0 + 3600))["fal"]
    assert (fal["calls"], fal["success_rate"]) == (2, 0.5)


def test_failure_class_rates(db: LogDB) -> None:
    frame = failure_class_rates(db)
    assert frame[["provider", "failure_class", "count"]].values.tolist() == [
        ["fal", "content_rejected", 1],
        ["replicate", "timeout", 1],
        ["replicate", "transient", 1],
    ]
    assert frame["rate"].tolist() == pytest.approx([1 / 3, 0.2, 0.2])


def test_win_rate_from_successful_requests_when_there_are_no_picks(db: LogDB) -> None:
    assert load_picks(db).columns.tolist() == ["request_id", "provider", "offered", "picked_at"]
    assert load_picks(db).empty
    drop_picks(db)
    assert load_picks(db).columns.tolist() == ["request_id", "provider", "offered", "picked_at"]
    assert load_picks(db).empty
    rows = by_provider(win_rate(db))
    assert {p: (r["wins"], r["win_rate"]) for p, r in rows.items()} == {
        "fal": (2, 0.4), "replicate": (2, 0.4), "unsplash": (1, 0.2)
    }  # fmt: skip
    # replicate was called in r1, r2, r3 (its r5 attempt was skipped by the breaker)
    assert (rows["replicate"]["offered"], rows["replicate"]["win_rate_when_offered"]) == (3, pytest.approx(2 / 3))
    assert {(r["picks"], pd.isna(r["pick_rate_when_offered"])) for r in rows.values()} == {(0, True)}
    # filtered on one provider, its share of *all* the wins is unchanged (it was its share among its requests)
    assert {p: r["win_rate"] for p, r in by_provider(win_rate(db, providers="fal")).items()} == {"fal": 0.4}


def test_wins_stay_the_images_delivered_once_there_are_picks_which_are_counted_apart(db: LogDB) -> None:
    """QA: once a range had a pick, the wins became the picks only, while the cost per win divides by the
    images delivered: a provider showed 0 wins next to a cost per win. Wins are the images delivered (a
    picked comparison is a success of the picked provider); the picks have columns of their own."""
    add_picks(
        db,
        [
            ("r1", "fal", '["replicate", "fal"]', T0 + 10),
            ("r2", "replicate", '["replicate", "fal"]', T0 + 70),
            ("r3", "fal", "replicate, fal, unsplash", T0 + 130),
        ],
    )
    picks = load_picks(db)
    assert picks["offered"].tolist() == [["replicate", "fal"], ["replicate", "fal"], ["replicate", "fal", "unsplash"]]
    rows = by_provider(win_rate(db))
    assert {p: (r["wins"], r["win_rate"]) for p, r in rows.items()} == {
        "fal": (2, 0.4), "replicate": (2, 0.4), "unsplash": (1, 0.2)
    }  # fmt: skip
    cost = by_provider(cost_per_winning_image(db))
    assert {p: r["wins"] for p, r in rows.items()} == {p: r["wins"] for p, r in cost.items()}
    assert {p: (r["picks"], r["pick_rate_when_offered"]) for p, r in rows.items()} == {
        "fal": (2, pytest.approx(2 / 3)), "replicate": (1, pytest.approx(1 / 3)), "unsplash": (0, 0.0)
    }  # fmt: skip
    assert list(by_provider(win_rate(db, since=T0 + 60))) == ["fal", "replicate", "unsplash"]
    assert by_provider(win_rate(db, since=T0 + 60))["fal"]["picks"] == 1
    assert by_provider(provider_summary(db))["fal"]["picks"] == 2


def test_cost_per_winning_image_counts_everything_paid_to_the_provider(db: LogDB) -> None:
    rows = by_provider(cost_per_winning_image(db))
    # replicate: cancelled + 2 successes + a timeout = 4 × 0.003, for 2 images
    assert (rows["replicate"]["cost_usd"], rows["replicate"]["wins"]) == (pytest.approx(0.012), 2)
    assert rows["replicate"]["cost_per_win"] == pytest.approx(0.006)
    assert rows["fal"]["cost_per_win"] == pytest.approx(0.002) and rows["unsplash"]["cost_per_win"] == 0


def test_provider_summary_has_one_row_per_provider_with_every_number(db: LogDB) -> None:
    summary = provider_summary(db)
    assert summary["provider"].tolist() == ["fal", "replicate", "unsplash"]
    rep = by_provider(summary)["replicate"]
    assert (rep["calls"], rep["success_rate"], rep["timeout_rate"], rep["p50_ms"], rep["p95_ms"]) == (
        5, 0.4, 0.2, 1100, 1190
    )  # fmt: skip
    assert rep["failure_classes"] == "timeout: 1, transient: 1"
    assert (rep["wins"], rep["win_rate"], rep["cost_per_win"]) == (2, 0.4, pytest.approx(0.006))
    assert by_provider(summary)["unsplash"]["failure_classes"] == ""
    # lost races and breaker skips apart from failures: a provider that mostly loses is not a failing one
    assert (rep["failure_rate"], rep["cancelled_rate"], rep["skipped"]) == (0.4, 0.2, 1)


def test_charts_carry_the_expected_data(db: LogDB) -> None:
    cdf = latency_cdf_chart(load_attempts(db))
    points = cdf.data
    rep = points[points["provider"] == "replicate"]
    assert len(rep) == 101 and rep["latency_ms"].min() == 1000 and rep["latency_ms"].max() == 1200
    assert cdf.to_dict()["encoding"]["x"]["scale"]["type"] == "log"
    over_time = requests_over_time_chart(load_requests(db), freq="1h")
    counts = over_time.data.groupby("status")["requests"].sum().to_dict()
    assert counts == {"failed": 1, "success": 5} and len(over_time.data["bucket"].unique()) == 3
    bars = success_vs_timeout_chart(outcome_rates(db)).data
    assert bars[(bars["provider"] == "replicate") & (bars["rate"] == "timed out")]["share"].item() == 0.2
    assert "vega-lite" in cdf.to_dict()["$schema"]


def test_the_requests_chart_leaves_reuses_out_as_the_console_does(db: LogDB) -> None:
    """QA: notebook 02's chart counted History's reuses (status ``reused``) as requests; the console and
    ``imagegen stats`` do not (no provider was asked)."""
    from imagegen_core.analysis import bucket_requests
    from imagegen_core.log.history import get_request, record_reuse

    winner = db.query("SELECT id, created_at FROM requests WHERE status = 'success' LIMIT 1")[0]
    db.query("UPDATE requests SET url = 'https://img.example/x.webp' WHERE id = ?", (winner["id"],))
    original = get_request(db, winner["id"])
    assert original is not None
    record_reuse(db, original, request_id="again", article_id="a2", at=float(winner["created_at"]) + 1)
    requests = load_requests(db)
    assert "reused" in set(requests["status"])  # the log's rows, as they are
    counts = requests_over_time_chart(requests, freq="1h").data.groupby("status")["requests"].sum().to_dict()
    assert counts == {"failed": 1, "success": 5}
    assert "reused" not in set(bucket_requests(requests, freq="1D")["status"])


@pytest.mark.parametrize("freq", ["0h", "-1h", "1W", "1ME", "bogus", ""])
def test_the_requests_chart_refuses_a_bucket_size_that_is_no_positive_fixed_length_in_one_line(
    db: LogDB, freq: str
) -> None:
    """QA: "0h" drew one bucket per request and "-1h" counted a 14:03 request in the 15:00 bucket, both without
    a word, and "1W" (which the title would call "week") or "1ME" ended in pandas' own messages."""
    with pytest.raises(AnalysisError, match=r"^freq must be a positive fixed length of time such as") as caught:
        requests_over_time_chart(load_requests(db), freq=freq)
    assert "\n" not in str(caught.value) and repr(freq) in str(caught.value)


def test_the_requests_chart_draws_its_utc_buckets_in_utc_whatever_the_viewers_time_zone(db: LogDB) -> None:
    """QA: the day buckets are UTC days, but Vega drew them in the viewer's time zone: west of UTC a day's
    requests stood under the day before. Every time axis and tooltip is in UTC and says so."""
    import json

    spec = requests_over_time_chart(load_requests(db), freq="1D").to_dict()
    temporal = [
        (channel, field)
        for channel, value in spec["encoding"].items()
        for field in (value if isinstance(value, list) else [value])
        if isinstance(field, dict) and field.get("type") == "temporal"
    ]
    assert [channel for channel, _ in temporal] == ["tooltip", "x"]
    for channel, field in temporal:
        assert "UTC" in field["title"], channel
        assert field.get("scale", {}).get("type") == "utc" or field.get("timeUnit", "").startswith("utc"), channel
    # the 24-hour labels read the UTC clock too (Vega's hours() and timeFormat() are the viewer's local time)
    labels = json.dumps(spec["encoding"]["x"]["axis"])
    assert "utcFormat" in labels and not re.search(r"(?<!utc)(hours|minutes|timeFormat)\(", labels), labels


def test_a_failure_class_has_one_colour_whatever_classes_the_range_holds(db: LogDB) -> None:
    """QA: Vega gave the failure classes colours in the order of those present, so one class had one colour
    in the notebook and another on the console's page. The scale is fixed, and names every class."""
    from imagegen_core.analysis.charts import failure_classes_chart
    from imagegen_core.errors import FailureClass

    def colours(classes: pd.DataFrame) -> dict[str, str]:
        scale = failure_classes_chart(classes).to_dict()["encoding"]["color"]["scale"]
        return dict(zip(scale["domain"], scale["range"], strict=True))

    every = colours(failure_class_rates(db))  # replicate: timeout, transient; fal: content_rejected
    fal_only = colours(failure_class_rates(db, providers="fal"))
    assert list(every) == ["timeout", "transient", "content_rejected"] and list(fal_only) == ["content_rejected"]
    assert fal_only["content_rejected"] == every["content_rejected"] and every["timeout"] == "#d1495b"
    palette = colours(failure_class_rates(db, since=T0 + 10**6))  # none: the whole palette, one colour each
    assert set(palette) == {c.value for c in FailureClass} | {"unknown"} and len(set(palette.values())) == 8


def test_the_timeout_sweeps_axes_never_repeat_a_label() -> None:
    """QA: with costs between $0.0029 and $0.0032 the cost axis read "$0.0032" twice (and "$0.0029", ...):
    Vega drew ticks finer than the format shows. Drawn as the notebook draws it, each label once."""
    import vl_convert

    from imagegen_core.analysis import timeout_sweep_chart

    sweep = pd.DataFrame(
        {
            "timeout_ms": [900, 1500, 2000, 2500, 3000],
            "success_rate": [0.9995, 0.9996, 0.9998, 1.0, 1.0],
            "answer_p95_ms": [1370.0, 1780.0, 1612.0, 1613.0, 1613.0],
            "cost_per_image": [0.003237, 0.003024, 0.002945, 0.002912, 0.002912],
        }
    )
    svg = vl_convert.vegalite_to_svg(timeout_sweep_chart(sweep, provider="fal").to_dict())
    cost, success, p95 = (re.findall(rf">({label})</text>", svg) for label in (r"\$[\d.]+", r"[\d.]+%", r"1,[1-9]00"))
    assert cost == ["$0.0029", "$0.0030", "$0.0031", "$0.0032", "$0.0033"]
    assert success == ["99.9%", "100.0%"]  # two ticks a digit apart, though the values span half of one
    assert p95 == ["1,300", "1,400", "1,500", "1,600", "1,700", "1,800"]
    steady = sweep.assign(success_rate=1.0, cost_per_image=0.0)  # one value: an axis a step wide, not 0 wide
    labels = re.findall(
        r">([^<]+)</text>", vl_convert.vegalite_to_svg(timeout_sweep_chart(steady, provider="x").to_dict())
    )
    assert {"99.9%", "100.0%", "$0.0000", "$0.0001"} <= set(labels) and "100.1%" not in labels


def test_the_hedge_what_if_names_its_variants_in_a_legend_and_draws_equal_results_once() -> None:
    """QA: the names written beside the points overlapped, three variants with the same result written over
    one another. The legend names the variants; equal results are one point naming them all."""
    from imagegen_core.analysis import hedge_delay_chart

    hedging = pd.DataFrame(
        {
            "variant": ["fixed 500 ms", "fixed 2000 ms", "fixed 3000 ms", "current"],
            "extra_calls_per_request": [0.49, 0.34, 0.34, 0.485],
            "answer_p95_ms": [1790.0, 1800.0, 1800.0, 1790.0],
            "success_rate": [1.0, 1.0, 1.0, 1.0],
        }
    )
    chart = hedge_delay_chart(hedging)
    spec = chart.to_dict()
    assert spec["mark"]["type"] == "point" and "layer" not in spec  # no text beside the points
    assert chart.data["variant"].tolist() == ["fixed 500 ms", "fixed 2000 ms / fixed 3000 ms", "current"]
    assert spec["encoding"]["color"]["sort"] == chart.data["variant"].tolist()  # the legend in the sweep's order


def test_every_per_provider_chart_names_every_bar(db: LogDB) -> None:
    """New-user run: in a narrow panel Vega dropped every other provider name (its default label overlap
    handling), leaving bars without a name. Checked on the specs; a screenshot at 1024 px showed all seven."""
    from imagegen_core.analysis.charts import bar_chart, failure_classes_chart
    from imagegen_core.console_stats import latency_chart

    charts = [
        success_vs_timeout_chart(outcome_rates(db)),
        failure_classes_chart(failure_class_rates(db)),
        bar_chart(cost_per_winning_image(db), value="cost_per_win", title="cost"),
        latency_chart(latency_quantiles(db)),
    ]
    for chart in charts:
        x = chart.to_dict()["encoding"]["x"]
        assert (x["field"], x["axis"]["labelOverlap"]) == ("provider", False)


def test_count_axes_tick_whole_numbers(db: LogDB) -> None:
    """QA run: with one or two failed attempts Vega ticked the failures chart at 0.5 and 1.5. Checked on the specs;
    the browser test of the stats page reads the labels drawn."""
    from imagegen_core.analysis.charts import failure_classes_chart

    for chart in (failure_classes_chart(failure_class_rates(db)), requests_over_time_chart(load_requests(db))):
        y = chart.to_dict()["encoding"]["y"]
        assert (y["axis"]["tickMinStep"], y["axis"]["format"]) == (1, "d"), y


def test_a_chart_given_the_wrong_frame_names_the_loader_to_use(db: LogDB) -> None:
    with pytest.raises(ValueError, match=r"expects a frame from load_attempts\(db, \.\.\.\): it has no outcome"):
        latency_cdf_chart(load_requests(db))
    with pytest.raises(ValueError, match=r"from load_requests\(db, \.\.\.\): it has no created_at, status"):
        requests_over_time_chart(load_attempts(db))


def test_importing_the_analysis_package_loads_neither_pandas_nor_altair() -> None:
    code = "import sys, imagegen_core.analysis; print([m for m in ('pandas', 'altair') if m in sys.modules])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_notebooks_read_the_real_log_when_it_has_enough_recent_attempts(tmp_path: Path) -> None:
    """Enough recent attempts: that log. Too few: a synthetic week in a fresh folder, never the real one."""
    real = tmp_path / "home" / "imagegen.db"
    with LogDB(real) as log:
        write_simulated_log(log, newsroom_config(), newsroom_profiles(), requests=30, seed=3)
        frame = load_attempts(log)
        attempts = int(frame["outcome"].isin(["success", "failed", "cancelled"]).sum())  # calls that ended
    db, source = notebook_log(real, min_attempts=attempts)
    with db:
        assert db.path == real and source.startswith("the real log")
    db, source = notebook_log(real, min_attempts=attempts + 1, requests=40)
    with db:
        assert db.path != real and "synthetic week" in source
        assert len(load_requests(db)) == 40 and set(load_attempts(db)["provider"]) <= {"replicate", "fal", "unsplash"}
    with LogDB(real) as log:
        assert len(load_requests(log)) == 30  # the real log was not touched


def test_attempts_a_breaker_skipped_do_not_count_towards_a_real_log(tmp_path: Path) -> None:
    """New-user run: a home with 10 failed and 10 skipped attempts was said to hold 20 finished attempts."""
    real = tmp_path / "home" / "imagegen.db"
    with LogDB(real) as log:
        log.start_request(
            "r", created_at=time.time(), prompt="p", keyword=None, article_id=None, width=1, height=1, style=None,
            source="t",
        )  # fmt: skip
        for i, outcome in enumerate(["failed", "skipped"] * 10):
            log.start_attempt(f"a{i}", request_id="r", provider="fal", attempt=i, hedged=False, started_at=time.time())
            log.finish_attempt(
                f"a{i}", finished_at=time.time(), outcome=outcome, failure_class="transient", duration_ms=0
            )
    db, source = notebook_log(real, min_attempts=11, requests=5)
    with db:
        assert source.synthetic and "has 10 finished attempts" in source


def test_a_synthetic_week_is_removed_with_its_log(tmp_path: Path) -> None:
    """New-user run: every notebook run left its simulated week (~1 MB) in the temporary folder."""
    db, source = notebook_log(tmp_path / "none.db", requests=5)
    folder = db.path.parent if db.path else None
    assert source.synthetic and folder is not None and folder.is_dir()
    del db
    gc.collect()
    assert not folder.exists()


def test_a_report_window_in_the_future_is_refused_not_simulated(tmp_path: Path) -> None:
    """QA: REPORT_END = 2030-01-01 simulated a week in 2030 without a word."""
    with pytest.raises(AnalysisError, match=r"^the window ends in the future \(2029-12-25 00:00 UTC to 2030-01-01"):
        notebook_log(tmp_path / "none.db", until="2030-01-01", requests=5)
    db, source = notebook_log(tmp_path / "none.db", until=time.time() + 3600, requests=5)  # a clock a bit ahead
    assert source.synthetic
    db.close()


def test_a_log_without_failures_has_no_failure_classes_and_still_summarises(tmp_path: Path) -> None:
    """Regression: under pandas 3 an empty group-by comes back typed as text and the rates crashed."""
    with LogDB(tmp_path / "ok.db") as log:
        log.start_request(
            "r1", created_at=T0, prompt="p", keyword=None, article_id=None, width=64, height=64, style=None, source="t"
        )
        log.start_attempt("a1", request_id="r1", provider="fal", attempt=1, hedged=False, started_at=T0)
        log.finish_attempt(
            "a1",
            finished_at=T0 + 1,
            outcome="success",
            failure_class=None,
            http_status=None,
            duration_ms=1000,
            cost_usd=0.003,
            error=None,
        )
        log.finish_request(
            "r1",
            finished_at=T0 + 1,
            status="success",
            provider="fal",
            url="u",
            storage_key="k",
            elapsed_ms=1000,
            error=None,
            cost_usd=0.003,
        )
        assert failure_class_rates(log).empty
        summary = provider_summary(log)
        assert summary.loc[0, "provider"] == "fal" and summary.loc[0, "failure_classes"] == ""
        assert summary.loc[0, "p50_ms"] == 1000 and summary.loc[0, "wins"] == 1


def test_an_attempt_the_deadline_cut_is_a_timeout_failure_not_a_lost_race(tmp_path: Path) -> None:
    """The engine logs it ``cancelled`` with class ``timeout``; the console's rates and failure chart count it
    as the log's own queries (CLI stats, alerts) do: a failure of the provider, unlike losing to a winner."""
    with LogDB(tmp_path / "cut.db") as log:
        for request_id, cls in (("cut", "timeout"), ("lost", None)):
            log.start_request(
                request_id, created_at=T0, prompt="p", keyword=None, article_id=None, width=64, height=64,
                style=None, source="test",
            )  # fmt: skip
            log.start_attempt(f"{request_id}-0", request_id=request_id, provider="stuck", attempt=1, hedged=False,
                              started_at=T0)  # fmt: skip
            log.finish_attempt(f"{request_id}-0", finished_at=T0 + 2, outcome="cancelled", failure_class=cls,
                               duration_ms=2000)  # fmt: skip
        stuck = by_provider(outcome_rates(log))["stuck"]
        assert {k: stuck[k] for k in ("calls", "successes", "failures", "timeouts", "cancelled")} == {
            "calls": 2, "successes": 0, "failures": 1, "timeouts": 1, "cancelled": 1
        }  # fmt: skip
        assert failure_class_rates(log)[["provider", "failure_class", "count"]].values.tolist() == [
            ["stuck", "timeout", 1]
        ]


def failures_only_log(path: Path, *, requests: int = 40, end: float | None = None) -> None:
    """A log where every attempt of every provider failed (no image was ever delivered)."""
    from imagegen_core.analysis import ProfileModel
    from imagegen_core.analysis.latency import Fixed

    failing = {name: ProfileModel(Fixed(5.0), failure_rate=1.0) for name in ("replicate", "fal", "unsplash")}
    with LogDB(path) as log:
        write_simulated_log(log, newsroom_config(), failing, requests=requests, seed=5, end=end)


def test_charts_side_by_side_keep_their_own_colours(db: LogDB) -> None:
    """QA run: ``success_vs_timeout_chart(...) | failure_classes_chart(...)`` shared one colour scale, whose
    domain the first fixed to ["succeeded", "timed out"]: the failure-class bars had no colour and the legend
    read "calls that, class". ``side_by_side`` resolves colours (and legends) per chart."""
    import vl_convert

    from imagegen_core.analysis import side_by_side
    from imagegen_core.analysis.charts import failure_classes_chart

    chart = side_by_side(success_vs_timeout_chart(outcome_rates(db)), failure_classes_chart(failure_class_rates(db)))
    spec = chart.to_dict()
    assert spec["resolve"]["scale"]["color"] == "independent"
    assert spec["resolve"]["legend"]["color"] == "independent"
    success, failures = spec["hconcat"]
    assert success["encoding"]["color"]["scale"]["domain"] == ["succeeded", "timed out"]
    # its domain is its own classes (in the palette's fixed order, each with its one colour)
    assert failures["encoding"]["color"]["scale"]["domain"] == ["timeout", "transient", "content_rejected"]
    svg = vl_convert.vegalite_to_svg(spec)  # drawn as the notebooks draw it: two legends, every class named
    assert "calls that, class" not in svg
    for label in ("calls that", "class", "succeeded", "transient", "timeout", "content_rejected"):
        assert f">{label}</text>" in svg, label


def test_the_notebook_log_is_judged_on_the_report_s_window(tmp_path: Path) -> None:
    """QA run: a report on a past week simulated one although the real log held that week: the attempts were
    counted over the 7 days before now, not over the report's window."""
    real = tmp_path / "home" / "imagegen.db"
    until = time.time() - 30 * 86_400
    with LogDB(real) as log:
        write_simulated_log(log, newsroom_config(), newsroom_profiles(), requests=60, end=until, seed=3)
        attempts = int(load_attempts(log)["outcome"].isin(["success", "failed", "cancelled"]).sum())
    db, source = notebook_log(real, since=until - 7 * 86_400, until=until, min_attempts=attempts)
    with db:
        assert not source.synthetic and db.path == real
        assert source.startswith(f"the real log at {real}: {attempts} attempts in ")
    db, source = notebook_log(real, min_attempts=attempts, requests=20)  # the last 7 days: nothing there
    with db:
        assert source.synthetic and "has 0 finished attempts in the last 7 days" in source
    # A week simulated in place of a missing one is the reported week, so the report has something to show.
    db, source = notebook_log(tmp_path / "none.db", since=until - 7 * 86_400, until=until, requests=20)
    with db:
        created = load_requests(db)["created_at"]
        assert source.synthetic and len(created) == 20
        assert until - 7 * 86_400 <= created.min().timestamp() and created.max().timestamp() < until


def test_the_models_table_shows_the_longest_attempt_seen_not_inf(tmp_path: Path) -> None:
    """QA run: "longest seen ms" read ``inf`` for a provider none of whose attempts was cut short (the
    replay's horizon is unbounded then); the table shows the longest attempt the log holds."""
    import math

    from imagegen_core.analysis import model_table, models_from_log

    with LogDB(tmp_path / "log.db") as log:
        write_log(log)
        models = models_from_log(log)
        assert models["fal"].horizon_ms == math.inf  # every fal attempt ended: nothing unknown
        table = model_table(models, providers=["fal", "replicate"])
    assert list(table.index) == ["fal", "replicate"]
    assert table.loc["fal", "longest seen ms"] == 600 and table.loc["replicate", "longest seen ms"] == 2000
    assert table["longest seen ms"].map(math.isfinite).all()


def test_a_log_of_failures_only_lists_every_provider_with_0_wins_and_its_charts_say_why_they_are_empty(
    tmp_path: Path,
) -> None:
    """QA run: on a log where every attempt failed, ``win_rate`` left out the providers (none had won) that the
    summary lists, and the latency, win-rate and cost charts were bare axes without a word."""
    from imagegen_core.analysis import bar_chart

    failures_only_log(tmp_path / "f.db")
    with LogDB(tmp_path / "f.db") as log:
        wins = win_rate(log, every_provider=True)
        assert list(wins["provider"]) == list(provider_summary(log)["provider"]) == ["fal", "replicate", "unsplash"]
        assert wins["wins"].tolist() == [0, 0, 0] and wins["win_rate"].tolist() == [0.0, 0.0, 0.0]
        assert list(win_rate(log, providers="fal", every_provider=True)["provider"]) == ["fal"]
        assert win_rate(log).empty  # without every_provider: only those that won or were offered
        charts = {
            "latency": latency_cdf_chart(load_attempts(log)),
            "wins": bar_chart(wins, value="win_rate", title="Win rate", fmt="%"),
            "cost": bar_chart(cost_per_winning_image(log), value="cost_per_win", title="Cost per winning image"),
        }
    subtitles = {name: chart.to_dict()["title"].get("subtitle") for name, chart in charts.items()}
    assert subtitles == {
        "latency": "no attempt succeeded in this range: no latency to draw",
        "wins": "no image was delivered in this range",
        "cost": "no image was delivered in this range",
    }


def test_charts_with_something_to_draw_have_no_empty_note(db: LogDB) -> None:
    from imagegen_core.analysis import bar_chart

    assert latency_cdf_chart(load_attempts(db)).to_dict()["title"] == "Latency of successful attempts (CDF)"
    assert bar_chart(win_rate(db), value="win_rate", title="Win rate").to_dict()["title"] == "Win rate"


def test_notebook_log_names_a_path_as_a_path_and_refuses_other_databases(tmp_path: Path) -> None:
    """QA run: a path was labelled ``:///path/imagegen.db``, and ``mysql://…`` was "no log" and simulated
    a week instead of being refused as ``Settings`` refuses it."""
    real = tmp_path / "imagegen.db"
    with LogDB(real) as log:
        write_simulated_log(log, newsroom_config(), newsroom_profiles(), requests=5, seed=3)
    for given in (str(real), real):
        db, source = notebook_log(given, min_attempts=1)
        with db:
            assert source.startswith(f"the real log at {real}: ")
    db, source = notebook_log(f"sqlite:///{real}", min_attempts=1)
    with db:
        assert source.startswith(f"the real log at sqlite:///{real}: ")
    with pytest.raises(ValueError, match=r"^the log database URL mysql://app@db/images must start with sqlite:///"):
        notebook_log("mysql://app:secret@db/images")


def test_analysis_functions_refuse_a_path_or_a_time_range_that_selects_nothing_by_mistake(db: LogDB) -> None:
    """QA run: ``provider_summary("/path/imagegen.db")`` died with ``'str' object has no attribute 'query'``,
    and ``since`` in milliseconds, NaN or after ``until`` returned empty frames without a word."""
    from imagegen_core.analysis import models_from_log

    with pytest.raises(TypeError, match=r"takes the log as a LogDB, not str: LogDB\('/path/imagegen.db'\)"):
        provider_summary("/path/imagegen.db")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="takes the log as a LogDB, not PosixPath"):
        models_from_log(Path("/path/imagegen.db"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"looks like milliseconds \(divide by 1000\)"):
        load_attempts(db, since=T0 * 1000)
    with pytest.raises(ValueError, match="must be a finite time in Unix seconds, not nan"):
        provider_summary(db, since=float("nan"))
    with pytest.raises(ValueError, match=r"^since \(2023-11-14 23:13 UTC\) is after until \(2023-11-14 22:13 UTC\)"):
        load_requests(db, since=T0 + 3600, until=T0)
    with pytest.raises(ValueError, match="is after until"):
        models_from_log(db, since=T0 + 3600, until=T0)
    assert len(load_requests(db, since=T0, until=T0)) == 0  # an empty range is no mistake


def test_a_time_taken_from_numpy_or_pandas_is_accepted_with_the_same_checks() -> None:
    """QA: ``to_epoch`` took numpy's float64 but refused its int64 and datetime64, which a value read from a
    DataFrame often is."""
    import numpy as np

    from imagegen_core.analysis import to_epoch

    day = "2023-11-14T22:13:20"
    assert to_epoch(np.int64(int(T0))) == to_epoch(np.uint32(int(T0))) == to_epoch(np.float32(T0)) == T0
    assert to_epoch(np.datetime64(day)) == to_epoch(np.datetime64(day, "ns")) == to_epoch(pd.Timestamp(day)) == T0
    assert to_epoch(pd.Timestamp(day, tz="Europe/Paris")) == T0 - 3600
    assert to_epoch(pd.Series([T0], dtype="int64").iloc[0]) == to_epoch(pd.to_datetime([T0], unit="s")[0]) == T0
    with pytest.raises(ValueError, match="looks like milliseconds"):
        to_epoch(np.int64(int(T0) * 1000))
    for missing in (np.datetime64("NaT"), pd.NaT):
        with pytest.raises(ValueError, match="must be a time, not NaT"):
            to_epoch(missing)
    with pytest.raises(TypeError, match="since/until take Unix seconds"):
        to_epoch(np.bool_(True))


def test_a_table_shows_missing_values_as_a_dash_and_keeps_them_missing() -> None:
    """QA: the notebooks' tables showed NaN where the console shows "—" (a provider with no success yet)."""
    from imagegen_core.analysis import table

    frame = pd.DataFrame(
        {"provider": ["fal", "doomed"], "p50_ms": [812.0, float("nan")], "cost": [None, None]}
    ).set_index("provider")
    shown = table(frame)
    html = shown._repr_html_()
    assert html.count("<td>—</td>") == 3 and "NaN" not in html and "None" not in html
    assert repr(shown).splitlines()[-1].split() == ["doomed", "—", "—"]
    assert frame["p50_ms"].isna().sum() == 1 and frame["cost"].tolist() == [None, None]  # display only


def test_a_report_window_is_printed_to_the_minute() -> None:
    """QA run: the report's "Window:" line printed nanoseconds (``18:59:00.944749355+00:00``)."""
    from imagegen_core.analysis import window_label

    assert window_label(T0 + 0.944749355, T0 + 7 * 86_400) == "2023-11-14 22:13 UTC to 2023-11-21 22:13 UTC"
    assert window_label(None, "2023-11-21") == "the beginning to 2023-11-21 00:00 UTC"


def _win_rate_per_request_lists(
    requests: pd.DataFrame, attempts: pd.DataFrame, picks: pd.DataFrame, *, every_provider: bool
) -> pd.DataFrame:
    """The win rates as computed before they were vectorised (a list of the providers raced per request, built
    group by group in Python): the reference the join must reproduce exactly."""

    def counts(names: pd.Series) -> pd.Series:
        return names.dropna().astype(object).value_counts().astype("int64")

    won = requests[requests["status"] == "success"]
    called = attempts[attempts["outcome"] != "skipped"]
    raced = called.drop_duplicates(["request_id", "provider"]).groupby("request_id")["provider"].agg(list)
    frame = pd.DataFrame(
        {
            "wins": counts(won["provider"]),
            "offered": counts(won["id"].map(raced).explode()),
            "picks": counts(picks["provider"]),
            "picks_offered": counts(picks["offered"].explode()),
        }
    )
    seen = attempts["provider"].dropna().unique().tolist() if every_provider else []
    frame = frame.reindex(frame.index.union(pd.Index(seen, dtype=frame.index.dtype))).fillna(0).astype("int64")
    frame.index.name = "provider"
    frame["win_rate"] = frame["wins"] / max(len(won), 1)
    frame["win_rate_when_offered"] = (frame["wins"] / frame["offered"]).where(frame["offered"] > 0)
    frame["pick_rate_when_offered"] = (frame["picks"] / frame["picks_offered"]).where(frame["picks_offered"] > 0)
    columns = ["provider", "wins", "win_rate", "offered", "win_rate_when_offered", "picks", "pick_rate_when_offered"]
    return frame.reset_index()[columns].sort_values("provider", ignore_index=True)


def random_frames(seed: int, requests: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Requests, attempts and picks with the awkward cases mixed in: a provider tried twice in a request,
    skipped attempts, attempts without a provider, requests without attempts, attempts of requests outside the
    range, winners never called (picked comparisons), a provider that only ever was skipped, empty offers."""
    import random

    rng = random.Random(seed)
    names = ["fal", "replicate", "unsplash", "openai", "only-skipped"]
    request_rows: list[dict[str, Any]] = []
    attempt_rows: list[dict[str, Any]] = []
    for n in range(requests):
        status = rng.choice(["success", "success", "failed", "rejected"])
        winner = rng.choice(names[:4]) if status == "success" else "default"
        request_rows.append({"id": f"r{n}", "status": status, "provider": winner})
        for _ in range(rng.randint(0, 4)):
            provider = rng.choice([*names, None])
            outcome = rng.choice(["success", "failed", "cancelled", "skipped", "running"])
            if provider == "only-skipped":
                outcome = "skipped"
            attempt_rows.append({"request_id": f"r{n}", "provider": provider, "outcome": outcome})
    for n in range(requests // 10):  # requests created before the range, attempts in it
        attempt_rows.append({"request_id": f"old{n}", "provider": rng.choice(names), "outcome": "success"})
    pick_rows = [
        {"provider": rng.choice(names[:4]), "offered": rng.sample(names[:4], rng.randint(0, 3))}
        for _ in range(requests // 5)
    ]
    picks = pd.DataFrame(pick_rows, columns=["provider", "offered"])
    requests_frame = pd.DataFrame(request_rows, columns=["id", "status", "provider"])
    return requests_frame, pd.DataFrame(attempt_rows, columns=["request_id", "provider", "outcome"]), picks


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("every_provider", [False, True])
def test_win_rates_joined_equal_the_per_request_lists_they_replace(seed: int, every_provider: bool) -> None:
    from imagegen_core.analysis.metrics import _win_rate

    requests, attempts, picks = random_frames(seed, requests=[0, 1, 7, 60, 400, 2000][seed])
    expected = _win_rate_per_request_lists(requests, attempts, picks, every_provider=every_provider)
    got = _win_rate(requests, attempts, picks, providers=None, every_provider=every_provider)
    pd.testing.assert_frame_equal(got, expected)


def test_win_rates_of_a_big_log_take_no_per_request_python() -> None:
    """QA (D1): on 200k requests the Provider stats page took longer than its 10 s refresh, most of it building a
    list per request in Python (about 30 Python calls a request). Counted, not timed, so that a busy machine
    cannot fail it: fewer Python calls than requests, on 20k of them."""
    import sys

    from imagegen_core.analysis.metrics import _win_rate

    requests, attempts, picks = random_frames(7, requests=20_000)
    calls = 0

    def count(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        calls += event == "call"

    sys.setprofile(count)
    try:
        _win_rate(requests, attempts, picks, providers=None, every_provider=True)
    finally:
        sys.setprofile(None)
    assert calls < len(requests)


def test_provider_summary_reads_each_table_once(db: LogDB, monkeypatch: pytest.MonkeyPatch) -> None:
    """QA (D1): provider_summary read the requests, attempts and picks a second time for the win rates. With a
    provider filter the requests it raced in are read with SQL's filter (once more, but only theirs)."""
    import imagegen_core.analysis.metrics as metrics

    calls: list[str] = []
    for name in ("load_requests", "load_attempts", "load_picks"):
        real = getattr(metrics, name)
        counted = lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k)  # noqa: E731
        monkeypatch.setattr(metrics, name, counted)
    expected = provider_summary(db)
    assert sorted(calls) == ["load_attempts", "load_picks", "load_requests"]
    assert by_provider(expected)["replicate"]["wins"] == 2
    calls.clear()
    fal = provider_summary(db, providers="fal")
    assert sorted(calls) == ["load_attempts", "load_picks", "load_requests", "load_requests"]
    pd.testing.assert_frame_equal(fal, expected[expected["provider"] == "fal"].reset_index(drop=True))


def test_provider_names_match_in_any_case_and_a_name_the_log_lacks_is_an_error(db: LogDB) -> None:
    """QA (D6): ``providers="FAL"`` and ``"nope"`` returned empty frames silently, though provider names are
    case-insensitive elsewhere; ``float("nan")`` raised a bare TypeError. Any case matches; a name the log has
    no attempt of is a ValueError naming those it has; anything but names is a one-line ValueError."""
    from imagegen_core.analysis import models_from_log

    pd.testing.assert_frame_equal(provider_summary(db, providers="FAL"), provider_summary(db, providers="fal"))
    pd.testing.assert_frame_equal(win_rate(db, providers=["Fal", "fal"]), win_rate(db, providers="fal"))
    assert list(load_requests(db, providers=["FAL"])["id"]) == ["r1", "r4", "r6"]
    assert set(load_attempts(db, providers=("Unsplash", "FAL"))["provider"]) == {"fal", "unsplash"}
    assert list(models_from_log(db, providers="REPLICATE")) == ["replicate"]
    known = r"no provider 'nope' in the log \(providers with attempts: fal, replicate, unsplash\)"
    for call in (provider_summary, win_rate, latency_quantiles, load_requests, load_picks, models_from_log):
        with pytest.raises(ValueError, match=known):
            call(db, providers=["fal", "nope"])
    for wrong, shown in ((float("nan"), "nan"), (3, "3"), ([b"fal"], "b'fal'"), ({"fal": 1}, "{'fal': 1}")):
        with pytest.raises(ValueError, match=re.escape(f"not {shown}")):
            latency_quantiles(db, providers=wrong)  # type: ignore[arg-type]


def test_provider_names_are_stripped_and_an_empty_list_is_an_error_not_an_empty_frame(db: LogDB) -> None:
    """QA: ``providers=[" unsplash "]`` matched nothing (a ValueError for a provider the log has), and
    ``providers=[]`` returned an empty frame silently while None means every provider. Surrounding spaces are
    ignored; an empty list (or a blank name) is a one-line ValueError saying what to pass."""
    from imagegen_core.analysis.frames import only_providers

    pd.testing.assert_frame_equal(load_attempts(db, providers=[" unsplash "]), load_attempts(db, providers="unsplash"))
    pd.testing.assert_frame_equal(provider_summary(db, providers=" Fal"), provider_summary(db, providers="fal"))
    loaded = load_requests(db, since=T0), load_attempts(db, since=T0)
    for got, want in zip(only_providers(*loaded, [" FAL "]), only_providers(*loaded, ["fal"]), strict=True):
        pd.testing.assert_frame_equal(got, want)
    empty = "providers is empty: name at least one provider, or pass None for all"
    for call in (provider_summary, win_rate, latency_quantiles, load_requests, load_attempts, load_picks):
        with pytest.raises(ValueError, match=f"^{empty}$"):
            call(db, providers=[])
    with pytest.raises(ValueError, match=f"^{empty}$"):
        only_providers(*loaded, ())
    with pytest.raises(ValueError, match=r"^providers takes provider names, not a blank one \(' '\)$"):
        load_attempts(db, providers=["fal", " "])


@pytest.mark.parametrize(
    ("freq", "words"),
    [
        ("5min", "5 minutes"), ("1min", "minute"), ("min", "minute"), ("15T", "15 minutes"), ("1h", "hour"),
        ("6h", "6 hours"), ("1H", "hour"), ("1D", "day"), ("D", "day"), ("7D", "7 days"), ("30s", "30 seconds"),
        ("1W", "week"), ("W-MON", "W-MON"),
    ],
)  # fmt: skip
def test_a_bucket_size_is_said_in_words_and_an_unknown_code_stays_as_it_is(freq: str, words: str) -> None:
    """Chart titles say "per day", not pandas' "per 1D" (QA); a code without words here is kept, not guessed."""
    assert freq_words(freq) == words


def test_the_requests_chart_title_says_its_bucket_in_words(db: LogDB) -> None:
    assert requests_over_time_chart(load_requests(db), freq="1D").title == "Requests per day by outcome"


def test_every_refusal_of_the_analysis_functions_is_an_imagegen_error(tmp_path: Path) -> None:
    """QA: "Everything imagegen raises on purpose is an ImageGenError", but the analysis functions' one-line
    refusals were plain ValueError and TypeError. They stay those too, for code that caught them."""
    from imagegen_core import AnalysisError, AnalysisTypeError, ImageGenError

    with LogDB(tmp_path / "imagegen.db") as db:
        calls = [
            (lambda: win_rate(db, providers=[]), AnalysisError, ValueError),
            (lambda: latency_quantiles(db, since="garbage"), AnalysisError, ValueError),
            (lambda: load_requests(None), AnalysisTypeError, TypeError),  # type: ignore[arg-type]
        ]
        for call, kind, builtin in calls:
            with pytest.raises(kind) as info:
                call()
            assert isinstance(info.value, ImageGenError) and isinstance(info.value, builtin)
            assert "\n" not in str(info.value)
