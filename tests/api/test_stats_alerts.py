"""``/admin/stats`` and ``/admin/alerts`` (and ``imagegen alerts``) over a seeded log, against hand-computed
values."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from imagegen_core.alerts import evaluate_alerts
from imagegen_core.config import AlertsConfig
from imagegen_core.log.db import LogDB
from imagegen_core.service import ImageGen
from imagegen_core.stats import Period, daily_stats, period_stats

from .conftest import ADMIN, api_client

Attempt = tuple[str, str, int, float, str | None]  # provider, outcome, duration_ms, cost_usd, failure class


def seed(db: LogDB, rid: str, at: float, status: str, elapsed_ms: int = 0, *attempts: Attempt) -> None:
    """One request with its attempts, as the service would have logged it."""
    row = {"prompt": "p", "keyword": None, "article_id": None, "width": 64, "height": 64, "style": None}
    if status == "rejected":
        db.reject_request(rid, created_at=at, source="test", error="width: too big", **row)
        return
    db.start_request(rid, created_at=at, source="test", **row)
    for i, (provider, outcome, duration_ms, cost, failure_class) in enumerate(attempts):
        db.start_attempt(f"{rid}-{i}", request_id=rid, provider=provider, attempt=1, hedged=False, started_at=at)
        db.finish_attempt(
            f"{rid}-{i}",
            finished_at=at + duration_ms / 1000,
            outcome=outcome,
            failure_class=failure_class,
            duration_ms=duration_ms,
            cost_usd=cost,
        )
    if status != "running":
        winner = next((p for p, o, *_ in attempts if o == "success"), "default")
        cost = round(sum(a[3] for a in attempts), 6)
        db.finish_request(rid, finished_at=at + 1, status=status, provider=winner, elapsed_ms=elapsed_ms, cost_usd=cost)


def seed_two_days(db: LogDB, day1: date) -> None:
    """Day 1: two successes and one default-image answer, plus a rejection; day 2: one success and one request
    still running. Times are 01:00–05:00 UTC, well inside each day."""
    d1 = datetime(day1.year, day1.month, day1.day, tzinfo=UTC).timestamp()
    d2 = d1 + 86_400
    seed(db, "r1", d1 + 3600, "success", 1000, ("fal", "success", 900, 0.003, None))
    seed(
        db,
        "r2",
        d1 + 7200,
        "success",
        3000,
        ("fal", "failed", 500, 0.0, "transient"),
        ("replicate", "success", 2500, 0.003, None),
    )
    seed(
        db,
        "r3",
        d1 + 10800,
        "failed",
        5000,
        ("fal", "failed", 4000, 0.003, "timeout"),
        ("replicate", "cancelled", 4000, 0.003, None),
    )
    seed(db, "r4", d1 + 14400, "rejected")
    seed(
        db,
        "r5",
        d2 + 3600,
        "success",
        2000,
        ("fal", "success", 1500, 0.003, None),
        ("replicate", "cancelled", 1500, 0.003, None),
    )
    seed(db, "r6", d2 + 7200, "running", 0, ("fal", "running", 0, 0.0, None))


def entry(
    total: int, ok: int, failed: int, rate: float, avg: int, elapsed: int, cost: float, **extra: Any
) -> dict[str, Any]:
    return {"total": total, "successful": ok, "failed": failed, "successRate": rate, "avgElapsedMs": avg,
            "totalElapsedMs": elapsed, "costUsd": cost, "interrupted": 0, **extra}  # fmt: skip


#: Hand-computed from seed_two_days (percentiles interpolate between closest ranks).
DAY1 = {
    "date": "2026-03-01",
    **entry(3, 2, 1, 66.67, 3000, 9000, 0.012),
    "providers": {
        "default": entry(1, 0, 1, 0.0, 5000, 5000, 0.0, cancelled=0),
        "fal": entry(3, 1, 2, 33.33, 1800, 5400, 0.006, cancelled=0),
        "replicate": entry(1, 1, 0, 100.0, 2500, 2500, 0.006, cancelled=1),
    },
}
DAY2 = {
    "date": "2026-03-02",
    **entry(1, 1, 0, 100.0, 2000, 2000, 0.006),
    "providers": {
        "fal": entry(1, 1, 0, 100.0, 1500, 1500, 0.003, cancelled=0),
        "replicate": entry(0, 0, 0, 0.0, 0, 0, 0.003, cancelled=1),
    },
}
PERIOD = {
    "period": "2026-03-01 to 2026-03-02",
    "days": 2,
    **entry(4, 3, 1, 75.0, 2750, 11000, 0.018),
    "p50ElapsedMs": 2500.0,  # of 1000, 2000, 3000, 5000
    "p95ElapsedMs": 4700.0,
    "providers": {
        "default": entry(1, 0, 1, 0.0, 5000, 5000, 0.0, cancelled=0, p50ElapsedMs=None, p95ElapsedMs=None),
        "fal": entry(4, 2, 2, 50.0, 1725, 6900, 0.009, cancelled=0, p50ElapsedMs=1200.0, p95ElapsedMs=3625.0),
        "replicate": entry(1, 1, 0, 100.0, 2500, 2500, 0.009, cancelled=2, p50ElapsedMs=2500.0, p95ElapsedMs=2500.0),
    },
    "dailyBreakdown": [DAY1, DAY2],
}


def shifted(expected: dict[str, Any], day1: date) -> dict[str, Any]:
    """``expected`` with the 2026-03-01/02 dates moved to ``day1`` and the day after."""
    text = json.dumps(expected)
    for old, new in (("2026-03-01", day1), ("2026-03-02", day1 + timedelta(days=1))):
        text = text.replace(old, new.isoformat())
    result: dict[str, Any] = json.loads(text)
    return result


def test_period_and_daily_stats_match_hand_computed_values(db_url: str) -> None:
    """On both backends (SQLite, PostgreSQL): UTC days, sums and percentiles come out the same."""
    with LogDB(db_url) as db:
        seed_two_days(db, date(2026, 3, 1))
        assert period_stats(db, Period(date(2026, 3, 1), date(2026, 3, 2))) == PERIOD
        one_day = daily_stats(db, date(2026, 3, 1))
        assert one_day == {
            **DAY1,
            "p50ElapsedMs": 3000.0,
            "p95ElapsedMs": 4800.0,
            "providers": {
                "default": {**DAY1["providers"]["default"], "p50ElapsedMs": None, "p95ElapsedMs": None},
                "fal": {**DAY1["providers"]["fal"], "p50ElapsedMs": 900.0, "p95ElapsedMs": 3690.0},
                "replicate": {**DAY1["providers"]["replicate"], "p50ElapsedMs": 2500.0, "p95ElapsedMs": 2500.0},
            },
        }
        empty = daily_stats(db, date(2026, 3, 5))
        assert empty == {"date": "2026-03-05", **entry(0, 0, 0, 0.0, 0, 0, 0.0), "providers": {},
                         "p50ElapsedMs": None, "p95ElapsedMs": None}  # fmt: skip


async def test_admin_stats_serves_the_worker_shape_over_utc_days(make_gen: Callable[..., ImageGen]) -> None:
    gen = make_gen()
    today = datetime.now(UTC).date()
    seed_two_days(gen.log, today - timedelta(days=1))
    async with api_client(gen) as client:
        two_days = await client.get("/admin/stats", params={"days": 2}, headers=ADMIN)
        default_week = await client.get("/admin/stats", headers=ADMIN)
        one_day = await client.get(
            "/admin/stats", params={"date": (today - timedelta(days=1)).isoformat()}, headers=ADMIN
        )
    assert two_days.status_code == 200
    assert two_days.json() == shifted(PERIOD, today - timedelta(days=1))
    week = default_week.json()
    assert week["days"] == 7 and len(week["dailyBreakdown"]) == 7 and week["total"] == 4
    assert week["period"] == f"{(today - timedelta(days=6)).isoformat()} to {today.isoformat()}"
    assert one_day.json()["date"] == (today - timedelta(days=1)).isoformat() and one_day.json()["total"] == 3


def seed_around_midnight(db: LogDB, midnight: float) -> None:
    """Two requests in the last instants of the day before ``midnight`` (0.4 ms, which SQLite's ``strftime``
    rounded up to the next day, and 0.4 µs, which PostgreSQL's ``to_timestamp`` did) and one at midnight."""
    seed(db, "late-ms", midnight - 0.0004, "success", 1000, ("fal", "success", 900, 0.003, None))
    seed(db, "late-us", midnight - 0.0000004, "success", 1000, ("fal", "success", 900, 0.003, None))
    seed(db, "midnight", midnight, "success", 1000, ("fal", "success", 900, 0.003, None))


def test_a_request_in_the_last_instant_of_a_day_counts_in_that_day(db_url: str) -> None:
    """Filed under its true UTC day, on both backends alike (QA: SQLite filed 23:59:59.9996 under the next day,
    and ``?date=`` of that day answered 500)."""
    midnight = datetime(2026, 11, 25, tzinfo=UTC).timestamp()
    with LogDB(db_url) as db:
        seed_around_midnight(db, midnight)
        day = daily_stats(db, date(2026, 11, 24))
        next_day = daily_stats(db, date(2026, 11, 25))
        both = period_stats(db, Period(date(2026, 11, 24), date(2026, 11, 25)))
    assert (day["total"], day["providers"]["fal"]["total"]) == (2, 2)
    assert (next_day["total"], next_day["providers"]["fal"]["total"]) == (1, 1)
    assert [(d["date"], d["total"], d["providers"]["fal"]["total"]) for d in both["dailyBreakdown"]] == [
        ("2026-11-24", 2, 2),
        ("2026-11-25", 1, 1),
    ]


def test_a_row_the_database_files_outside_the_period_counts_in_its_nearest_day(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever day the database names, a day's stats answer (never a KeyError, a 500 on the API)."""
    import imagegen_core.log.queries as queries

    def beyond(db: LogDB, *, since: float, until: float) -> list[dict[str, Any]]:
        return [{"day": "2026-11-25", "status": "success", "n": 1, "timed": 1, "elapsed_ms": 1000, "cost_usd": 0.003}]

    def before(db: LogDB, *, since: float, until: float) -> list[dict[str, Any]]:
        return [{"day": "2026-11-23", "provider": "fal", "outcome": "success", "n": 1, "timed": 1,
                 "duration_ms": 900, "cost_usd": 0.003}]  # fmt: skip

    monkeypatch.setattr(queries, "daily_request_totals", beyond)
    monkeypatch.setattr(queries, "daily_attempt_totals", before)
    with LogDB(tmp_path / "log.db") as db:
        day = daily_stats(db, date(2026, 11, 24))
    assert (day["date"], day["total"], day["providers"]["fal"]["total"]) == ("2026-11-24", 1, 1)


async def test_admin_stats_of_a_day_with_a_request_in_its_last_instant_answers(
    make_gen: Callable[..., ImageGen],
) -> None:
    gen = make_gen()
    seed_around_midnight(gen.log, datetime(2026, 11, 25, tzinfo=UTC).timestamp())
    async with api_client(gen) as client:
        response = await client.get("/admin/stats", params={"date": "2026-11-24"}, headers=ADMIN)
    assert response.status_code == 200 and response.json()["total"] == 2


def test_the_cost_is_all_the_money_spent_the_sum_of_its_providers(db_url: str) -> None:
    """A comparison nobody picked (``offered``) and a cancelled request cost money too: the total counts it, so
    it is the sum of its providers' costs, per day and over the period (QA: it counted answered requests
    only)."""
    with LogDB(db_url) as db:
        seed_two_days(db, date(2026, 3, 1))
        at = datetime(2026, 3, 1, 6, tzinfo=UTC).timestamp()
        offered = (("fal", "success", 900, 0.004, None), ("replicate", "success", 1200, 0.005, None))
        seed(db, "compare", at, "offered", 1300, *offered)
        seed(db, "gone", at + 60, "cancelled", 400, ("fal", "cancelled", 400, 0.002, None))
        stats = period_stats(db, Period(date(2026, 3, 1), date(2026, 3, 2)))
        day = daily_stats(db, date(2026, 3, 1))
    for record in (stats, day, *stats["dailyBreakdown"]):
        parts = sum(p["costUsd"] for p in record["providers"].values())
        assert record["costUsd"] == pytest.approx(parts, abs=1e-9)
    assert stats["costUsd"] == pytest.approx(0.018 + 0.011) and day["costUsd"] == pytest.approx(0.012 + 0.011)
    assert stats["total"] == 4  # the money counts; the requests counted are still the answered ones


def test_a_providers_percentiles_are_over_the_attempts_its_total_and_mean_count(db_url: str) -> None:
    """An attempt the deadline cut (cancelled, class timeout) is a failure in ``total``, ``failed`` and
    ``avgElapsedMs``: the percentiles count it too (QA: they left it out, describing another population)."""
    at = datetime(2026, 3, 1, 6, tzinfo=UTC).timestamp()
    with LogDB(db_url) as db:
        seed(db, "quick", at, "success", 1100, ("fal", "success", 1000, 0.003, None))
        seed(db, "hung", at + 60, "failed", 6000, ("fal", "cancelled", 5000, 0.0, "timeout"))
        fal = daily_stats(db, date(2026, 3, 1))["providers"]["fal"]
    assert (fal["total"], fal["failed"], fal["avgElapsedMs"]) == (2, 1, 3000)
    assert (fal["p50ElapsedMs"], fal["p95ElapsedMs"]) == (3000.0, 4800.0)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"days": 0}, "days"),
        ({"days": 366}, "days"),
        ({"days": "week"}, "days"),
        ({"date": "yesterday"}, "date"),
        ({"date": "2026-02-30"}, "date"),
        ({"date": "20260301"}, "date"),
        ({"days": 3, "date": "2026-03-01"}, "date"),
    ],
)
async def test_bad_stats_parameters_are_400(
    make_gen: Callable[..., ImageGen], params: dict[str, Any], field: str
) -> None:
    async with api_client(make_gen()) as client:
        response = await client.get("/admin/stats", params=params, headers=ADMIN)
    assert response.status_code == 400 and response.json()["field"] == field
    assert response.json()["error"].startswith(f"{field}: ")


def seed_alerts(db: LogDB, now: float) -> None:
    """Last 10 minutes: fal 2/5 attempts succeeded, replicate 1/2, unsplash 0/2; 10 answered requests, one
    failed, mean 4800 ms. Twenty minutes ago: five slow failures that must not count."""
    recent = now - 60
    ok = ("success", 0, 0.0, None)
    bad = ("failed", 0, 0.0, "transient")
    attempts: list[list[Attempt]] = [
        [("fal", *ok)],
        [("fal", *ok)],
        [("fal", *bad), ("replicate", *ok)],
        [("fal", *bad), ("unsplash", *bad)],
        [("fal", *bad), ("unsplash", *bad)],
        [("replicate", *bad)],
    ]
    for i in range(10):
        elapsed, status = (30_000, "failed") if i == 9 else (2_000, "success")
        seed(db, f"now{i}", recent, status, elapsed, *(attempts[i] if i < len(attempts) else []))
    seed(db, "now-rejected", recent, "rejected")
    for i in range(5):
        seed(db, f"old{i}", now - 1200, "failed", 60_000, ("fal", *bad))


W = "over the last 10 min"
RATE = "success rate"
P = "providerSuccessRate"
EXPECTED_RULES = [
    (P, "fal", 0.4, 5, True, f"fal {RATE} 40.0% (fires when < 50.0%) {W} (5 attempts)"),
    (P, "offline", None, 0, False,
     f"offline {RATE} - (fires when < 50.0%) {W} (0 attempts); not firing: fewer than 5 attempts"),
    (P, "replicate", 0.5, 2, False,
     f"replicate {RATE} 50.0% (fires when < 50.0%) {W} (2 attempts); not firing: fewer than 5 attempts"),
    (P, "unsplash", 0.0, 2, False,
     f"unsplash {RATE} 0.0% (fires when < 50.0%) {W} (2 attempts); not firing: fewer than 5 attempts"),
    ("errorRate", None, 0.1, 10, True, f"error rate 10.0% (fires when > 5.0%) {W} (10 requests)"),
    ("avgResponseMs", None, 4800.0, 10, False,
     f"average response time 4800 ms (fires when > 10000 ms) {W} (10 requests)"),
]  # fmt: skip


def test_alert_rules_match_hand_computed_values(db_url: str) -> None:
    now = 1_780_000_000.0
    with LogDB(db_url) as db:
        seed_alerts(db, now)
        report = evaluate_alerts(db, AlertsConfig(), now=now, providers=["offline"])
        stricter = evaluate_alerts(db, AlertsConfig(avg_response_ms_max=4000, min_samples=2), now=now)
    assert report["firing"] is True and report["evaluatedAt"] == "2026-05-28T20:26:40+00:00"
    got = [(r["rule"], r["provider"], r["value"], r["samples"], r["firing"], r["message"]) for r in report["rules"]]
    assert got == EXPECTED_RULES
    assert {r["rule"]: r["threshold"] for r in report["rules"]} == {
        "providerSuccessRate": 0.5, "errorRate": 0.05, "avgResponseMs": 10000,
    }  # fmt: skip
    firing = {(r["rule"], r["provider"]) for r in stricter["rules"] if r["firing"]}
    assert firing == {
        ("providerSuccessRate", "fal"),
        ("providerSuccessRate", "unsplash"),
        ("errorRate", None),
        ("avgResponseMs", None),
    }


async def test_admin_alerts_use_the_thresholds_in_force(make_gen: Callable[..., ImageGen]) -> None:
    gen = make_gen()
    seed_alerts(gen.log, time.time())
    async with api_client(gen) as client:
        before = (await client.get("/admin/alerts", headers=ADMIN)).json()
        await client.patch(
            "/admin/config", json={"alerts": {"errorRateMax": 0.2, "providerSuccessRateMin": 0.3}}, headers=ADMIN
        )
        after = (await client.get("/admin/alerts", headers=ADMIN)).json()
    assert [(r["rule"], r["provider"], r["firing"]) for r in before["rules"] if r["firing"]] == [
        ("providerSuccessRate", "fal", True),
        ("errorRate", None, True),
    ]
    assert after["firing"] is False and {r["rule"]: r["threshold"] for r in after["rules"]}["errorRate"] == 0.2


def run_alerts(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IMAGEGEN_HOME": str(home)}
    code = "from imagegen_core.cli_serve import alerts; alerts(prog_name='imagegen alerts')"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=60)


def test_imagegen_alerts_prints_each_rule_and_exits_1_when_one_fires(tmp_path: Path) -> None:
    quiet_home, home = tmp_path / "quiet", tmp_path / "home"
    with LogDB(quiet_home / "imagegen.db") as db:
        db.start_request(
            "r0", created_at=time.time(), prompt="p", keyword=None, article_id=None, width=1, height=1, style=None,
            source="test",
        )  # fmt: skip
        db.finish_request("r0", finished_at=time.time(), status="success", provider="offline", elapsed_ms=100)
    quiet = run_alerts(quiet_home)  # one request: its rules measured something, and nothing fires
    assert quiet.returncode == 0, quiet.stderr
    assert [line.split()[:2] for line in quiet.stdout.splitlines()] == [
        ["not", "enough"], ["ok", "errorRate"], ["ok", "avgResponseMs"],
    ]  # fmt: skip
    with LogDB(home / "imagegen.db") as db:
        seed_alerts(db, time.time())
    loud = run_alerts(home)
    assert loud.returncode == 1, loud.stderr
    lines = loud.stdout.splitlines()
    # the states in a column as wide as the longest ("not enough data": the racing offline provider made no call)
    assert re.match(r"FIRING +providerSuccessRate  fal success rate 40\.0% \(fires when < 50\.0%\)", lines[0])
    assert any(re.match(r"FIRING +errorRate .*10\.0% \(fires when > 5\.0%\)", line) for line in lines)
    assert any(re.match(r"ok +avgResponseMs .*4800 ms \(fires when > 10000 ms\)", line) for line in lines)
    assert len({len(line) - len(line.split(maxsplit=1)[1]) for line in lines if not line.startswith("not")}) == 1
    as_json = run_alerts(home, "--json")
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["firing"] is True


def seed_two_requests(db: LogDB, now: float) -> None:
    """Two requests a minute ago, below the default ``minSamples`` (5): one won by unsplash in 2 s, one
    answered with the default image after unsplash failed (error rate 50 %, unsplash's success rate 50 %)."""
    seed(db, "ok", now - 60, "success", 2_000, ("unsplash", "success", 0, 0.0, None))
    seed(db, "failed", now - 60, "failed", 2_000, ("unsplash", "failed", 0, 0.0, "transient"))


def test_every_rule_with_fewer_than_its_minimum_samples_says_it_is_not_firing(tmp_path: Path) -> None:
    """QA: with 1-4 samples in the window only a breached rule said "not firing: fewer than 5 requests"; the
    others read "ok … unsplash success rate 50.0% … (2 attempts)", as if they had measured enough. Every rule
    with fewer than ``minSamples`` says so, in the CLI and in the report the API serves (which carries
    ``minSamples``), whatever its value; nothing fires (exit 0)."""
    home = tmp_path / "home"
    with LogDB(home / "imagegen.db") as db:
        seed_two_requests(db, time.time())
        report = evaluate_alerts(db, AlertsConfig(), now=time.time(), providers=["offline"])
    assert report["firing"] is False
    for rule in report["rules"]:
        unit = "attempts" if rule["rule"] == "providerSuccessRate" else "requests"
        assert rule["message"].endswith(f"; not firing: fewer than 5 {unit}"), rule
        assert rule["minSamples"] == 5 and rule["samples"] < 5, rule
    cli = run_alerts(home)
    assert cli.returncode == 0, cli.stderr
    lines = cli.stdout.splitlines()
    unsplash = next(line for line in lines if "unsplash success rate" in line)
    assert unsplash.endswith(
        "50.0% (fires when < 50.0%) over the last 10 min (2 attempts); not firing: fewer than 5 attempts"
    )
    assert len(lines) == 4 and all(
        re.search(r"; not firing: fewer than 5 (attempts|requests)$", line) for line in lines
    )


async def test_admin_alerts_say_which_rules_have_too_few_samples(make_gen: Callable[..., ImageGen]) -> None:
    """``/admin/alerts`` serves the same report: every rule carries ``minSamples``, and a rule below it says so
    in its message (here ``minSamples`` 3 from the runtime config: two requests are too few)."""
    gen = make_gen()
    seed_two_requests(gen.log, time.time())
    async with api_client(gen) as client:
        await client.patch("/admin/config", json={"alerts": {"minSamples": 3}}, headers=ADMIN)
        report = (await client.get("/admin/alerts", headers=ADMIN)).json()
    by_rule = {(r["rule"], r["provider"]): r["message"] for r in report["rules"]}
    assert by_rule[("providerSuccessRate", "unsplash")].endswith("(2 attempts); not firing: fewer than 3 attempts")
    assert by_rule[("errorRate", None)].endswith("(2 requests); not firing: fewer than 3 requests")
    assert by_rule[("avgResponseMs", None)].endswith("(2 requests); not firing: fewer than 3 requests")
    assert report["firing"] is False and {r["minSamples"] for r in report["rules"]} == {3}


async def test_a_provider_that_hangs_past_the_deadline_fires_its_success_rate_alert(
    make_gen: Callable[..., ImageGen],
) -> None:
    """Its attempts are all cut by the request deadline (cancelled, class timeout), never failed by its own
    timeout: they used to count for nothing, so the alert could never fire for it."""
    from .conftest import fakes

    document = fakes(stuck={"hang": True}) | {"defaults": {"timeout": 300}, "race": {"finalizeReserve": 100}}
    document["providers"]["stuck"]["timeout"] = 60_000  # longer than any deadline: only the deadline ends it
    gen = make_gen(document | {"alerts": {"minSamples": 3}})
    async with api_client(gen) as client:
        for _ in range(3):
            answer = (await client.post("/images/generate", json={"prompt": "x", "width": 64, "height": 64})).json()
            assert answer["success"] is False
        await gen.flush()
        report = (await client.get("/admin/alerts", headers=ADMIN)).json()
    (stuck,) = [r for r in report["rules"] if r["rule"] == "providerSuccessRate" and r["provider"] == "stuck"]
    assert (stuck["value"], stuck["samples"], stuck["firing"]) == (0.0, 3, True)


def test_imagegen_alerts_says_not_enough_data_for_rules_that_measured_nothing_and_needs_a_log(tmp_path: Path) -> None:
    """QA (D8): on an empty log every rule printed "ok" though it had measured 0 samples; with a mistyped
    IMAGEGEN_HOME the command created a log there to say so. Such rules say "not enough data" (exit 0: nothing
    fires); a missing log is one line naming the path (exit 2, as for other settings that point nowhere)."""
    missing = run_alerts(tmp_path / "typo")
    assert (missing.returncode, missing.stdout) == (2, "")
    assert missing.stderr == f"imagegen: no log at {tmp_path / 'typo' / 'imagegen.db'}: check IMAGEGEN_HOME" + (
        " (a log is created by the first image request)\n"
    )
    assert not (tmp_path / "typo").exists()
    home = tmp_path / "home"
    LogDB(home / "imagegen.db").open().close()
    empty = run_alerts(home)
    assert empty.returncode == 0, empty.stderr
    lines = empty.stdout.splitlines()
    assert [line[:17] for line in lines] == ["not enough data  "] * 3
    assert "(0 attempts)" in lines[0] and "(0 requests)" in lines[1]
