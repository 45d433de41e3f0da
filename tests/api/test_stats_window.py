"""``GET /admin/stats?since=…&until=…&provider=…``: the window and provider filter of ``imagegen stats``, read by
the same parser (:mod:`imagegen_core.stats_window`), counted over the same rows, and refused for the same reasons
(a 400 in the API's error shape); the Worker's answer without them is unchanged (test_stats_alerts.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from imagegen_core.api import create_app
from imagegen_core.log.db import LogDB
from imagegen_core.service import ImageGen
from imagegen_core.settings import Settings
from imagegen_core.stats import Period, daily_stats, period_stats

from .conftest import ADMIN, ADMIN_TOKEN, api_client, live_server
from .test_stats_alerts import seed

#: 2026-03-01 00:00:00 UTC: the day the rows are logged on.
MARCH_1 = datetime(2026, 3, 1, tzinfo=UTC).timestamp()
HOUR = 3600


def seed_edges(db: LogDB) -> None:
    """One fal success at each edge of 2026-03-01: the second before it, its first and last seconds, noon, and
    the next day's first second."""
    for rid, at in (
        ("before", MARCH_1 - 1),
        ("first", MARCH_1),
        ("noon", MARCH_1 + 12 * HOUR),
        ("last", MARCH_1 + 86_400 - 1),
        ("next-day", MARCH_1 + 86_400),
    ):
        seed(db, rid, at, "success", 1000, ("fal", "success", 900, 0.001, None))


def seed_races(db: LogDB) -> None:
    """Requests between 06:00 and 18:00 UTC on 2026-03-01, and one just outside each end: fal won one, lost one
    to replicate, was cut by the deadline in a default-image answer, was not called in one (replicate alone) and
    was skipped by its breaker in another (unsplash won); a rejected request called nobody."""
    start = MARCH_1 + 6 * HOUR
    seed(db, "too-early", start - 1, "success", 1000, ("fal", "success", 900, 0.003, None))
    seed(db, "fal-won", start + HOUR, "success", 1000,
         ("fal", "success", 900, 0.003, None), ("replicate", "cancelled", 800, 0.002, None))  # fmt: skip
    seed(db, "replicate-won", start + 2 * HOUR, "success", 3000,
         ("fal", "failed", 500, 0.0, "transient"), ("replicate", "success", 2500, 0.003, None))  # fmt: skip
    seed(db, "default", start + 3 * HOUR, "failed", 5000,
         ("fal", "cancelled", 4000, 0.003, "timeout"), ("replicate", "failed", 300, 0.0, "rate_limited"))  # fmt: skip
    seed(db, "replicate-alone", start + 4 * HOUR, "success", 1600, ("replicate", "success", 1500, 0.004, None))
    seed(db, "rejected", start + 5 * HOUR, "rejected")
    seed(db, "fal-skipped", start + 6 * HOUR, "success", 2100,
         ("fal", "skipped", 0, 0.0, None), ("unsplash", "success", 2000, 0.0, None))  # fmt: skip
    seed(db, "at-until", start + 12 * HOUR, "success", 1000, ("fal", "success", 900, 0.003, None))


async def stats_answer(gen: ImageGen, query: str) -> httpx.Response:
    """``GET /admin/stats?<query>`` (the query as written: a ``+`` stays one) over the ASGI app."""
    async with api_client(gen) as client:
        return await client.get(f"/admin/stats?{query}", headers=ADMIN)


async def test_since_is_included_and_until_excluded_to_the_second(make_gen: Callable[..., ImageGen]) -> None:
    """A row at the window's first second counts, one at ``until`` does not; a date is its UTC midnight, a time
    with an offset that moment; ``days`` counts back from ``until``. The answer is the Worker's shape led by the
    window counted, in ``imagegen stats --json``'s names."""
    gen = make_gen()
    seed_edges(gen.log)
    day = await stats_answer(gen, "since=2026-03-01&until=2026-03-02")
    assert day.status_code == 200, day.text
    body = day.json()
    assert list(body)[:4] == ["since", "until", "days", "providerFilter"]
    assert {k: body[k] for k in ("since", "until", "days", "providerFilter", "period")} == {
        "since": "2026-03-01T00:00:00+00:00",
        "until": "2026-03-02T00:00:00+00:00",
        "days": None,
        "providerFilter": None,
        "period": "2026-03-01 to 2026-03-01",
    }
    assert (body["total"], body["providers"]["fal"]["total"]) == (3, 3)
    assert [(d["date"], d["total"]) for d in body["dailyBreakdown"]] == [("2026-03-01", 3)]

    # 01:00 at +01:00 (its + sent as %2B) is midnight UTC; an until at the last row's second leaves it out
    shifted = (await stats_answer(gen, "since=2026-03-01T01:00%2B01:00&until=2026-03-01T23:59:59")).json()
    assert (shifted["since"], shifted["until"], shifted["total"]) == (
        "2026-03-01T00:00:00+00:00",
        "2026-03-01T23:59:59+00:00",
        2,
    )
    counted_back = (await stats_answer(gen, "until=2026-03-02T00:00:00Z&days=1")).json()
    assert counted_back["days"] == 1
    assert {k: v for k, v in counted_back.items() if k != "days"} == {k: v for k, v in body.items() if k != "days"}

    # a window across midnight: each day's record counts its part of the window only
    across = (await stats_answer(gen, "since=2026-02-28T23:00&until=2026-03-01T00:00:01")).json()
    assert [(d["date"], d["total"]) for d in across["dailyBreakdown"]] == [("2026-02-28", 1), ("2026-03-01", 1)]
    assert across["period"] == "2026-02-28 to 2026-03-01" and across["total"] == 2


async def test_provider_keeps_the_requests_it_raced_in_its_entry_and_what_it_won(
    make_gen: Callable[..., ImageGen],
) -> None:
    """``?provider=FAL`` (any case): the requests fal raced in (not one its breaker skipped, not a rejected one),
    ``won`` of their successes, only fal's entry (no ``default``), and ``costUsd`` the sum of its entries;
    repeated for several. A comma is part of a name, as on the command line: refused, naming those logged."""
    gen = make_gen()
    seed_races(gen.log)
    window = "since=2026-03-01T06:00&until=2026-03-01T18:00"
    fal = await stats_answer(gen, f"{window}&provider=FAL")
    assert fal.status_code == 200, fal.text
    body = fal.json()
    assert body["providerFilter"] == ["fal"]  # as the log spells it
    assert [body[k] for k in ("total", "successful", "failed", "won", "interrupted")] == [3, 2, 1, 1, 0]
    assert list(body["providers"]) == ["fal"]
    entry = body["providers"]["fal"]
    assert [entry[k] for k in ("total", "successful", "failed", "cancelled")] == [3, 1, 2, 0]
    assert body["costUsd"] == entry["costUsd"] == pytest.approx(0.006)
    assert body["dailyBreakdown"][0]["won"] == 1 and list(body["dailyBreakdown"][0]["providers"]) == ["fal"]

    both = (await stats_answer(gen, f"{window}&provider=fal&provider=replicate")).json()
    assert both["providerFilter"] == ["fal", "replicate"]
    assert [both[k] for k in ("total", "successful", "won")] == [4, 3, 3]
    assert list(both["providers"]) == ["fal", "replicate"]

    comma = await stats_answer(gen, f"{window}&provider=fal,replicate")
    assert comma.status_code == 400 and comma.json()["field"] == "provider"
    assert "no provider 'fal,replicate' in the log (providers with attempts: fal, replicate, unsplash)" in comma.text
    assert "repeat it for several" in comma.json()["error"]


@pytest.mark.parametrize(
    ("query", "field", "says"),
    [
        ("since=yesterday", "since", "since: 'yesterday' is not an ISO 8601 date or date-time: give e.g."),
        ("until=2026-13-01", "until", "until: '2026-13-01' is not an ISO 8601 date or date-time"),
        ("since=", "since", "since: '' is not an ISO 8601 date"),
        ("since=2026-03-01T01:00+01:00", "since", "send an offset's + as %2B"),
        ("since=2026-03-02&until=2026-03-01", "since",
         "since: since (2026-03-02 00:00:00 UTC) is not before until (2026-03-01 00:00:00 UTC): give a since"),
        ("since=2026-03-01&until=2026-03-01", "since", "is not before until"),
        ("since=2999-01-01", "since", "is not before the end of today ("),
        ("since=2026-03-01&days=3", "days", "days: days and since both set where the window starts"),
        ("until=0001-01-03", "days", "days: the window starts outside the years 1 to 9999 (UTC): give fewer days"),
        ("since=2025-01-01&until=2026-03-01", "since", "since: the window is 424.0 days long; at most 365"),
        ("since=2026-03-01&date=2026-03-01", "date", "date: give either date or a window (days, since, until)"),
        ("until=2026-03-02&date=2026-03-01", "date", "date: give either date or a window"),
        ("provider=dalle&date=2026-03-01", "provider", "provider: no provider 'dalle' in the log"),
        ("provider=dalle", "provider", "provider: no provider 'dalle' in the log (providers with attempts: fal)"),
        ("provider=%20", "provider", "provider: provider takes a provider name, not a blank one"),
        ("since=2026-03-01&since=2026-03-02", "since", "since: given 2 times: give it once"),
        ("days=3&days=30", "days", "days: given 2 times: give it once"),
        ("date=2026-03-01&date=2026-03-01", "date", "date: given 2 times"),
        ("until=2026-03-02&until=2026-03-03&provider=fal", "until", "until: given 2 times"),
    ],
    ids=["bad since", "bad until", "empty since", "offset + unencoded", "since after until", "empty window",
         "future since", "days and since", "before year 1", "over 365 days", "date and since", "date and until",
         "unknown provider on a date", "unknown provider", "blank provider", "since twice", "days twice",
         "date twice", "until twice"],
)  # fmt: skip
async def test_a_window_or_provider_it_cannot_count_is_a_one_line_400(
    make_gen: Callable[..., ImageGen], query: str, field: str, says: str
) -> None:
    """What ``imagegen stats`` refuses (exit 2), and a parameter given twice, is a 400 in the error shape naming
    the parameter, the message saying what to change, on one line; never a 500, nor an answer that ignores it."""
    gen = make_gen()
    seed(gen.log, "r1", MARCH_1, "success", 1000, ("fal", "success", 900, 0.003, None))
    response = await stats_answer(gen, query)
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"error", "field"} and body["field"] == field
    assert body["error"].startswith(f"{field}: ") and says in body["error"], body["error"]
    assert "\n" not in body["error"]


def _cli_stats(home: Path, *args: str) -> dict[str, Any]:
    """``imagegen stats --json ARGS`` run as a user runs it, on the log under ``home``."""
    env = {**os.environ, "IMAGEGEN_HOME": str(home)}
    command = [sys.executable, "-m", "imagegen_core.cli", "stats", "--json", *args]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    document: dict[str, Any] = json.loads(proc.stdout)
    return document


def _assert_same_numbers(cli: dict[str, Any], api: dict[str, Any]) -> None:
    """The figures both answers have, each in its own spelling: the window and filter alike; the API's
    ``total`` is the answered requests (the CLI's success + failed: the Worker's count); a provider's ``total``
    is its decided calls (the CLI's calls less cancelled and interrupted), ``failed`` the CLI's failures,
    ``successRate`` a percent where the CLI's is a share; the API's ``costUsd`` the sum of its providers'."""
    assert {k: api[k] for k in ("since", "until", "days", "providerFilter")} == {
        k: cli[k] for k in ("since", "until", "days", "providerFilter")
    }
    requests = cli["requests"]
    assert api["total"] == requests["success"] + requests["failed"]
    assert [api[k] for k in ("successful", "failed", "won", "interrupted")] == [
        requests[k] for k in ("success", "failed", "won", "interrupted")
    ]
    rows = {row["provider"]: row for row in cli["providers"]}
    assert list(api["providers"]) == list(rows)
    for name, row in rows.items():
        entry = api["providers"][name]
        assert entry["successful"] == row["successes"] and entry["failed"] == sum(row["failures"].values())
        assert (entry["cancelled"], entry["interrupted"]) == (row["cancelled"], row["interrupted"])
        assert entry["total"] == row["calls"] - row["cancelled"] - row["interrupted"]
        assert entry["successRate"] == pytest.approx(row["successRate"] * 100, abs=0.01)
        assert entry["costUsd"] == pytest.approx(row["costUsd"])
    assert api["costUsd"] == pytest.approx(sum(row["costUsd"] for row in rows.values()))


@pytest.mark.parametrize(
    ("cli_args", "query"),
    [
        (["--provider", "fal"], "provider=fal"),
        (["--provider", "FAL", "--provider", "replicate"], "provider=FAL&provider=replicate"),
        (["--provider", "unsplash"], "provider=unsplash"),
    ],
    ids=["fal", "fal and replicate", "unsplash"],
)
async def test_the_cli_and_the_api_give_the_same_numbers_for_one_window_and_provider(
    make_gen: Callable[..., ImageGen], tmp_path: Path, cli_args: list[str], query: str
) -> None:
    """``imagegen stats --json --since … --until … --provider …`` and ``GET /admin/stats`` with the same
    parameters, on the same log: the same window, filter, requests and per-provider figures."""
    gen = make_gen()
    seed_races(gen.log)
    since, until = "2026-03-01T07:00:00+01:00", "2026-03-01T18:00:00Z"  # 06:00 to 18:00 UTC
    cli = _cli_stats(tmp_path / "home", "--since", since, "--until", until, *cli_args)
    assert cli["requests"]["total"] > 0  # the window holds rows: the comparison compares something
    api = await stats_answer(gen, f"since={since.replace('+', '%2B')}&until={until}&{query}")
    assert api.status_code == 200, api.text
    _assert_same_numbers(cli, api.json())


def test_a_window_and_provider_over_a_real_socket(settings_factory: Callable[..., Settings]) -> None:
    """Over uvicorn on 127.0.0.1, the app opening the log itself: a window with an offset (its + as %2B) and a
    repeated provider are read off the wire as in-process; a parameter sent twice and an unencoded + are 400s."""
    settings = settings_factory(IMAGEGEN_ADMIN_TOKEN=ADMIN_TOKEN)
    with ImageGen.from_settings(settings) as gen:
        seed_races(gen.log)
    window = "since=2026-03-01T07:00%2B01:00&until=2026-03-01T18:00Z"
    with live_server(create_app(settings=settings)) as base, httpx.Client(base_url=base, timeout=30) as client:
        answer = client.get(f"/admin/stats?{window}&provider=fal&provider=Replicate", headers=ADMIN)
        twice = client.get(f"/admin/stats?{window}&until=2026-03-02", headers=ADMIN)
        plus = client.get("/admin/stats?since=2026-03-01T07:00+01:00", headers=ADMIN)
        unauthorised = client.get(f"/admin/stats?{window}")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["since"], body["until"], body["providerFilter"]) == (
        "2026-03-01T06:00:00+00:00",
        "2026-03-01T18:00:00+00:00",
        ["fal", "replicate"],
    )
    assert [body[k] for k in ("total", "successful", "won")] == [4, 3, 3]
    assert twice.status_code == 400 and twice.json() == {
        "error": "until: given 2 times: give it once",
        "field": "until",
    }
    assert plus.status_code == 400 and plus.json()["field"] == "since" and "%2B" in plus.json()["error"]
    assert unauthorised.status_code == 401


def test_a_window_inside_days_and_a_filter_count_alike_on_both_backends(db_url: str) -> None:
    """SQLite and PostgreSQL: a window that cuts a day (``Period.between``) and a provider filter count the same
    rows, ``won`` included, in the aggregate, the day's record and ``daily_stats``."""
    with LogDB(db_url) as db:
        seed_races(db)
        start, end = MARCH_1 + 6 * HOUR, MARCH_1 + 18 * HOUR
        window = period_stats(db, Period.between(start, end), providers=["fal"])
        day = daily_stats(db, date(2026, 3, 1), providers=["fal"])
    assert (window["period"], window["days"]) == ("2026-03-01 to 2026-03-01", 1)
    assert [window[k] for k in ("total", "successful", "failed", "won")] == [3, 2, 1, 1]
    assert window["p50ElapsedMs"] == 3000.0 and window["providers"]["fal"]["p50ElapsedMs"] == 900.0
    assert [day[k] for k in ("total", "successful", "won")] == [5, 4, 3]  # the whole day: too-early, at-until too
    assert list(day["providers"]) == ["fal"] and "days" not in day
