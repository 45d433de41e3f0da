"""What every fault test does: run requests in real time, then read the real SQLite file and the store to judge
them — answered by the deadline, the failure classes logged, the breaker transitions, lost log rows and lost
paid-for images — and record the row for the suite's table."""

from __future__ import annotations

import asyncio
import io
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from imagegen_core import GenerateResult, ImageGen
from imagegen_core.models import AttemptOutcome

from .table import FaultRow, record

OFF = {"enabled": False}
NETWORKED_OFF: dict[str, Any] = {name: OFF for name in ("replicate", "fal", "unsplash", "openai")}
#: Small enough that a few failures open it: the suite checks the transitions.
BREAKER = {"minCalls": 3, "windowSize": 10, "failureRatio": 0.5}
REQUEST = {"prompt": "a lighthouse at dusk", "width": 320, "height": 200}


def png_bytes() -> bytes:
    """A small real PNG, what a healthy provider's output URL serves."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 90, 150)).save(buf, format="PNG")
    return buf.getvalue()


def replicate_config(*, deadline_ms: int, timeout_ms: int = 10_000, retries: int = 0) -> dict[str, Any]:
    """Only Replicate races (its base URL is the test's server), with the suite's breaker thresholds."""
    return {
        "providers": {**NETWORKED_OFF, "replicate": {"enabled": True, "timeout": timeout_ms, "retries": retries}},
        "defaults": {"timeout": deadline_ms},
        "race": {"finalizeReserve": 300, "backoffInitial": 50},
        "breaker": BREAKER,
    }


def prediction(base_url: str, *, output: str | None = None, status: str = "succeeded") -> dict[str, Any]:
    """A Replicate prediction as the API returns it, with its URLs on the test server."""
    pid = "q1w2e3r4t5y6u7i8o9p0asdfgh"
    return {
        "id": pid,
        "status": status,
        "output": [output] if output else None,
        "error": None,
        "urls": {"get": f"{base_url}/v1/predictions/{pid}", "cancel": f"{base_url}/v1/predictions/{pid}/cancel"},
    }


async def timed(gen: ImageGen, body: dict[str, Any] | None = None) -> tuple[GenerateResult, float]:
    """One generate, with its answer time in real milliseconds."""
    started = time.perf_counter()
    result = await gen.generate(body or REQUEST)
    return result, (time.perf_counter() - started) * 1000


async def run_concurrently(gen: ImageGen, count: int) -> tuple[list[GenerateResult], list[float]]:
    """``count`` concurrent generates; their results and real answer times (ms)."""
    answers = await asyncio.gather(*(timed(gen) for _ in range(count)))
    return [r for r, _ in answers], [ms for _, ms in answers]


def db_file(gen: ImageGen) -> Path:
    """The log's SQLite file (the documented default: ``<IMAGEGEN_HOME>/imagegen.db``)."""
    return Path(gen.settings.home) / "imagegen.db"


def read_db(path: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Rows straight from the SQLite file, through a connection of its own (not the service's)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def breaker_path(path: Path, provider: str) -> str:
    """The provider's breaker transitions in order, e.g. ``closed→open``; ``closed`` when there were none."""
    rows = read_db(path, "SELECT from_state, to_state FROM breaker_events WHERE provider = ? ORDER BY id", (provider,))
    if not rows:
        return "closed"
    return "→".join([rows[0][0], *(to for _, to in rows)])


async def lost_rows(
    gen: ImageGen, results: Sequence[GenerateResult], *, requests: int | None = None, attempts: int | None = None
) -> int:
    """Rows missing or unfinished in the SQLite file once the writer is flushed. Every request must have a
    finished row and every attempt it reported a finished attempt row (the test's home holds nothing else).
    ``requests``/``attempts`` override the expected counts (a cancelled request has no result)."""
    await gen.flush()
    path = db_file(gen)
    want_requests = len(results) if requests is None else requests
    want_attempts = sum(len(r.attempts) for r in results) if attempts is None else attempts
    finished = read_db(path, "SELECT count(*) FROM requests WHERE status IN ('success', 'failed', 'cancelled')")
    done = read_db(path, "SELECT count(*) FROM attempts WHERE outcome != ?", (AttemptOutcome.RUNNING.value,))
    return abs(want_requests - finished[0][0]) + abs(want_attempts - done[0][0])


async def lost_images(gen: ImageGen, results: Sequence[GenerateResult]) -> int:
    """Images a provider delivered that are neither in the store nor in the spool."""
    spooled = {e.metadata.get("request-id") for e in await asyncio.to_thread(gen.spool.entries)}
    lost = 0
    for result in results:
        if any(a.outcome is AttemptOutcome.SUCCESS for a in result.attempts):
            stored = result.key is not None and await gen.store.exists(result.key)
            lost += 0 if stored or result.request_id in spooled else 1
    return lost


async def judge(
    gen: ImageGen,
    fault: str,
    results: Sequence[GenerateResult],
    times_ms: Sequence[float],
    *,
    deadline_ms: int,
    expected_class: str,
    provider: str = "replicate",
    notes: str = "",
    requests: int | None = None,
    attempts: int | None = None,
) -> FaultRow:
    """Judge a fault's requests from the log file and the store, record the row and return it."""
    rows = await lost_rows(gen, results, requests=requests, attempts=attempts)
    images = await lost_images(gen, results)
    path = db_file(gen)
    classes = read_db(path, "SELECT DISTINCT failure_class FROM attempts WHERE failure_class IS NOT NULL")
    return record(
        FaultRow(
            fault=fault,
            deadline_ms=deadline_ms,
            answered_ms=max(times_ms),
            expected_class=expected_class,
            logged_classes=sorted(c for (c,) in classes),
            breaker=breaker_path(path, provider),
            lost_rows=rows,
            lost_images=images,
            notes=notes,
        )
    )


def assert_row(row: FaultRow, *, breaker: str) -> None:
    """The suite's bar for every fault."""
    assert row.in_deadline, f"{row.fault}: answered after {row.answered_ms:.0f} ms (deadline {row.deadline_ms})"
    assert row.class_ok, f"{row.fault}: logged {row.logged_classes}, want {row.expected_class}"
    assert row.breaker == breaker, f"{row.fault}: breaker {row.breaker}, want {breaker}"
    assert (row.lost_rows, row.lost_images) == (0, 0), row
