"""A year of request log, written fast: the rows a newsroom's imagegen would have logged in 365 days, for the
read paths' benchmark (``bench/log_scale.py``).

The schema is the project's own (:class:`~imagegen_core.log.LogDB` applies the migrations); the rows go in with
``executemany`` on a plain ``sqlite3`` connection, one transaction a day of rows, in time order (as the log
writer appends them: rowid order is time order). No ``ANALYZE``: a real log has no planner statistics either
(imagegen never runs it), so the planner sees this one as it sees theirs.

The mix (seeded, so two builds of the same size are the same log):

- requests per day: weekdays busier than weekends, the year's traffic growing by half from its first day to its
  last, the hours of a European newsroom (busiest 06–18 UTC);
- statuses: about 92 % success, 3.5 % answered with the default image (``failed``), 1.5 % rejected input, 1 %
  reuses (History), 0.5 % comparisons nobody picked (``offered``, with a pick row for the picked ones), 0.3 %
  cancelled by the caller, a few crash-ended (``failed`` with :data:`ABANDONED_ERROR`), and the last minutes'
  requests still running;
- attempts, about two a request: the first of Replicate / fal / Unsplash (photo style), a hedge or a fallback
  (OpenAI, Black Forest Labs; Stability AI only in the last 60 days: a provider added during the year), the
  losers cancelled, the failures by class with an HTTP status, now and then a breaker's skip, and a deadline's
  cut (cancelled, class ``timeout``); durations log-normal per provider.
"""

from __future__ import annotations

import json
import math
import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DAY_S = 86_400
YEAR_DAYS = 365
#: Changes when the rows written change: a cached log of an older format is built again.
FORMAT = 1

ABANDONED_ERROR = "the process ended before this request finished (crash or kill)"

#: name → (median ms of a success, log-normal sigma, cost of a call in USD, cost kept by a cancelled call).
PROVIDERS: dict[str, tuple[float, float, float, float]] = {
    "replicate": (4_200.0, 0.45, 0.003, 0.003),
    "fal": (2_600.0, 0.40, 0.0025, 0.0),
    "unsplash": (450.0, 0.35, 0.0, 0.0),
    "openai": (9_500.0, 0.30, 0.04, 0.04),
    "bfl": (5_500.0, 0.35, 0.04, 0.0),
    "stability": (4_000.0, 0.35, 0.03, 0.0),
}
#: failure class → (weight, HTTP status or None, error text).
FAILURES: dict[str, tuple[float, int | None, str]] = {
    "transient": (45.0, 502, "502 Bad Gateway from the provider"),
    "timeout": (20.0, None, "no answer within the provider's timeout (30000 ms)"),
    "rate_limited": (15.0, 429, "429 Too Many Requests"),
    "content_rejected": (10.0, 400, "the provider refused the prompt (content policy)"),
    "invalid_request": (5.0, 422, "422 Unprocessable Entity: width must be a multiple of 16"),
    "auth": (3.0, 401, "401 Unauthorized: check REPLICATE_API_TOKEN"),
    "billing": (2.0, 402, "402 Payment Required: add credit to the account"),
}
SUBJECTS = (
    "harbour cranes",
    "city council meeting",
    "football stadium",
    "wind farm",
    "election night",
    "wheat field",
    "hospital corridor",
    "train station",
    "school classroom",
    "bakery window",
    "mountain road",
    "flooded street",
    "solar panels",
    "courtroom",
    "fishing boats",
)
MOODS = ("at dawn", "in the rain", "at night", "in winter", "under a grey sky", "in golden light", "from above")
STYLES = ("photo", "illustration", "editorial", None)
SIZES = ((1200, 630), (1600, 900), (1080, 1080), (1080, 1350))
SOURCES = ("api", "api", "api", "api", "console", "cli", "python")


def day_counts(requests: int, rng: random.Random) -> list[int]:
    """How many requests each of the 365 days has, oldest first, adding up to ``requests``."""
    weights = []
    for day in range(YEAR_DAYS):
        weekend = day % 7 in (5, 6)
        weights.append((0.55 if weekend else 1.0) * (1.0 + 0.5 * day / YEAR_DAYS) * rng.uniform(0.85, 1.15))
    scale = requests / sum(weights)
    counts = [int(w * scale) for w in weights]
    for i in rng.sample(range(YEAR_DAYS), requests - sum(counts)):
        counts[i] += 1
    return counts


#: Share of a day's requests in each UTC hour (a European newsroom).
HOUR_WEIGHTS = [1, 1, 1, 1, 2, 4, 7, 9, 10, 10, 9, 9, 8, 9, 9, 8, 7, 6, 5, 4, 3, 2, 2, 1]


def _id(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


def _status(rng: random.Random) -> str:
    r = rng.random()
    for status, share in (
        ("success", 0.920),
        ("failed", 0.035),
        ("rejected", 0.015),
        ("reused", 0.010),
        ("offered", 0.010),
        ("cancelled", 0.003),
        ("interrupted", 0.0005),
    ):
        if r < share:
            return status
        r -= share
    return "success"


def _order(rng: random.Random, style: str | None, day: int) -> list[str]:
    """The providers of one race, in start order."""
    first = rng.choices(("replicate", "fal", "unsplash"), weights=(55, 30, 15 if style == "photo" else 2))[0]
    rest = [p for p in ("replicate", "fal", "unsplash", "openai", "bfl") if p != first]
    if day >= YEAR_DAYS - 60:
        rest.append("stability")
    rng.shuffle(rest)
    return [first, *rest]


def _duration(rng: random.Random, provider: str) -> int:
    median, sigma, _, _ = PROVIDERS[provider]
    return max(30, int(rng.lognormvariate(math.log(median), sigma)))


def _failure(rng: random.Random) -> tuple[str, int | None, str]:
    names = list(FAILURES)
    name = rng.choices(names, weights=[FAILURES[n][0] for n in names])[0]
    return name, FAILURES[name][1], FAILURES[name][2]


def _attempts(
    rng: random.Random, request_id: str, status: str, style: str | None, day: int, t0: float, running: bool
) -> tuple[list[tuple[Any, ...]], str | None, float, float]:
    """One request's attempt rows, its winner (or None), its cost and its end (seconds after ``t0``)."""
    count = rng.choices((1, 2, 3, 4), weights=(25, 55, 15, 5))[0]
    order = _order(rng, style, day)[:count]
    winner_at = rng.randrange(count) if status == "success" else None
    rows: list[tuple[Any, ...]] = []
    cost = 0.0
    start = 0.0
    end = 0.0
    won_ms: float | None = None
    for i, provider in enumerate(order):
        _, _, call_cost, kept_cost = PROVIDERS[provider]
        started = t0 + start
        hedged = int(i > 0 and rng.random() < 0.7)
        duration = _duration(rng, provider)
        failure_class = http_status = error = retry_after = None
        if running:
            outcome, duration_v, finished, spent = "running", None, None, 0.0
        elif status == "interrupted":
            outcome, duration_v, finished, spent, error = "cancelled", None, t0 + 900, 0.0, ABANDONED_ERROR
        elif rng.random() < 0.01:
            outcome, duration_v, finished, spent = "skipped", 0, started, 0.0
        elif winner_at == i:
            outcome, duration_v, finished, spent = "success", duration, started + duration / 1000, call_cost
            won_ms = start * 1000 + duration
        elif status == "success" and winner_at is not None and i > winner_at:
            # started as a hedge, lost the race: cancelled when the winner answered
            lost = max(10, int((won_ms or duration) - start * 1000)) if won_ms else duration // 2
            outcome, duration_v, finished, spent = "cancelled", lost, started + lost / 1000, kept_cost
        elif status == "success" and winner_at is not None and i < winner_at and rng.random() < 0.6:
            # slower than the hedge that won: cancelled when it answered
            outcome, duration_v, finished, spent = "cancelled", duration, started + duration / 1000, kept_cost
        elif status == "offered" and rng.random() < 0.85:
            # a comparison: every provider runs to its end
            outcome, duration_v, finished, spent = "success", duration, started + duration / 1000, call_cost
        elif status == "cancelled":
            outcome, duration_v, finished, spent = "cancelled", duration // 3, started + duration / 3000, kept_cost
        elif status == "failed" and i == count - 1 and rng.random() < 0.4:
            # the deadline cut the last one
            outcome, duration_v, finished, spent = "cancelled", duration, started + duration / 1000, kept_cost
            failure_class, error = "timeout", "cut by the request's deadline"
        else:
            failure_class, http_status, error = _failure(rng)
            if failure_class == "rate_limited":
                retry_after = rng.choice((1000, 2000, 5000))
            failed_ms = duration // 4 if failure_class != "timeout" else 30_000
            outcome, duration_v, finished, spent = "failed", failed_ms, started + failed_ms / 1000, 0.0
        cost += spent
        if finished is not None:
            end = max(end, finished - t0)
        rows.append(
            (
                _id(rng),
                request_id,
                provider,
                1 if rng.random() < 0.93 else 2,
                hedged,
                started,
                finished,
                outcome,
                failure_class,
                http_status,
                duration_v,
                spent,
                error,
                retry_after,
            )
        )
        start += rng.uniform(1.5, 4.0) if hedged else (duration_v or 0) / 1000
    winner = order[winner_at] if winner_at is not None else None
    return rows, winner, cost, end


def _days(
    rng: random.Random, counts: list[int], first_day_s: float, now: float
) -> Iterator[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
    """Per day, oldest first: its request rows, attempt rows and pick rows."""
    article = 100_000
    hours = list(range(24))
    for day, n in enumerate(counts):
        base = first_day_s + day * DAY_S
        times = sorted(base + h * 3600 + rng.random() * 3600 for h in rng.choices(hours, HOUR_WEIGHTS, k=n))
        requests: list[tuple[Any, ...]] = []
        attempts: list[tuple[Any, ...]] = []
        picks: list[tuple[Any, ...]] = []
        month = time.strftime("%Y/%m", time.gmtime(base))
        for created in times:
            rid = _id(rng)
            status = _status(rng)
            running = now - created < 120
            if running:
                status = "running"
            subject = rng.choice(SUBJECTS)
            prompt = f"{rng.choice(SUBJECTS)} {rng.choice(MOODS)}, {subject}, for article {article}"
            style = rng.choice(STYLES)
            width, height = rng.choice(SIZES)
            source = "console" if status == "offered" else rng.choice(SOURCES)
            article += 1
            aid = f"a-{article}"
            provider = url = key = error = attribution = None
            elapsed: int | None = None
            finished: float | None = None
            cost = 0.0
            if status in ("rejected", "reused"):
                finished = created
                if status == "rejected":
                    error = "prompt: is 2,400 characters; the limit is 2,000"
                else:
                    provider, elapsed = rng.choice(("replicate", "fal")), 0
                    key = f"ai/{month}/{_id(rng)}.webp"
                    url = f"https://images.example-news.com/{key}"
            else:
                rows, winner, cost, end = _attempts(rng, rid, status, style, day, created, running)
                attempts.extend(rows)
                if status == "interrupted":
                    status, error, finished = "failed", ABANDONED_ERROR, created + 900
                elif not running:
                    finished = created + end + 0.05
                    elapsed = int((finished - created) * 1000)
                if status == "success" and winner is not None:
                    provider = winner
                    if winner == "unsplash":
                        url = f"https://images.unsplash.com/photo-{_id(rng)[:13]}?w={width}&h={height}&fit=crop"
                        attribution = json.dumps(
                            {"photographer": "A. Photographer", "photographerUrl": "https://unsplash.com/@a"}
                        )
                    else:
                        key = f"ai/{month}/{_id(rng)}.webp"
                        url = f"https://images.example-news.com/{key}"
                    if source == "console" and rng.random() < 0.05:
                        offered = json.dumps(sorted({r[2] for r in rows}))
                        picks.append((rid, winner, offered, aid, url, key, finished))
                elif status == "failed" and error is None:
                    provider, url = "default", "https://images.example-news.com/default/1200x630.webp"
                    error = "every provider failed: " + ", ".join(sorted({r[2] for r in rows}))
            requests.append(
                (
                    rid,
                    created,
                    finished,
                    status,
                    prompt,
                    subject,
                    aid,
                    width,
                    height,
                    style,
                    provider,
                    url,
                    key,
                    elapsed,
                    error,
                    cost,
                    source,
                    attribution,
                )
            )
        yield requests, attempts, picks


_INSERT_REQUEST = (
    "INSERT INTO requests (id, created_at, finished_at, status, prompt, keyword, article_id, width, height, style,"
    " provider, url, storage_key, elapsed_ms, error, cost_usd, source, attribution)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_ATTEMPT = (
    "INSERT INTO attempts (id, request_id, provider, attempt, hedged, started_at, finished_at, outcome,"
    " failure_class, http_status, duration_ms, cost_usd, error, retry_after_ms)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_PICK = (
    "INSERT INTO picks (request_id, provider, offered, article_id, url, storage_key, picked_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def build(path: Path, *, requests: int, today_s: float, seed: int = 2026, progress: bool = True) -> dict[str, Any]:
    """Write the 365 UTC days ending with the day of ``today_s`` (Unix seconds) into a new log at ``path``; returns
    its description (counts; ``end``: the UTC midnight that ends the year, the "now" its windows count back
    from)."""
    from imagegen_core.log import LogDB

    with LogDB(path):  # the schema, through the project's migrations
        pass
    rng = random.Random(seed)
    counts = day_counts(requests, rng)
    first_day_s = (math.floor(today_s / DAY_S) - YEAR_DAYS + 1) * DAY_S
    now = first_day_s + YEAR_DAYS * DAY_S
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -1000000")  # 1 GB: the random primary keys' B-trees stay in memory
    written = {"requests": 0, "attempts": 0, "picks": 0}
    started = time.perf_counter()
    for day, (request_rows, attempt_rows, pick_rows) in enumerate(_days(rng, counts, first_day_s, now)):
        conn.execute("BEGIN")
        conn.executemany(_INSERT_REQUEST, request_rows)
        conn.executemany(_INSERT_ATTEMPT, attempt_rows)
        conn.executemany(_INSERT_PICK, pick_rows)
        conn.execute("COMMIT")
        written["requests"] += len(request_rows)
        written["attempts"] += len(attempt_rows)
        written["picks"] += len(pick_rows)
        if progress and day % 30 == 29:
            print(
                f"  day {day + 1}/365: {written['requests']:,} requests, {written['attempts']:,} attempts"
                f" ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return {
        "format": FORMAT,
        "seed": seed,
        "requests_asked": requests,
        **written,
        "first_day_s": first_day_s,
        "end": now,
        "build_s": round(time.perf_counter() - started, 1),
    }
