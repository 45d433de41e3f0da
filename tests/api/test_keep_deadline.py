"""A store that dies mid-traffic: a burst of uploads gives up just before the deadline and every image goes to
the spool at once. QA (repro_s3down_deadline.sh): 9 answers at 4313-4397 ms for a 4000 ms deadline, as the 30
keeps ran on the loop's shared default executor with no limit. Now they run on threads of their own, the answer
waits for a keep until just before the deadline, and a keep still under way then finishes after the answer,
which says so (neither "kept" nor "lost": it is not done yet)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from imagegen_core.api.public import STORE_FAILED_ERROR, STORE_KEEPING_ERROR
from imagegen_core.log.queries import recent_requests
from imagegen_core.service import ImageGen
from imagegen_core.storage import LocalStore, Spool, StoredObject
from imagegen_core.storage.spool import SpoolEntry

from .conftest import api_client, fakes

DEADLINE_MS = 1500
#: Time a burst of keeps took on a disk that fsyncs slowly (QA: 30 at once on the spool's first use took past
#: the 250 ms the upload leaves for it).
KEEP_S = 0.6
#: Past the deadline an answer may come (the loop's own work for 30 answers at once, on a shared 2-core box).
TOLERANCE_S = 0.2
BURST = 30


class DeadStore(LocalStore):
    """An S3 server that stopped answering: every upload hangs (given up at the deadline by the delivery)."""

    async def put(self, key: str, data: bytes, **kwargs: Any) -> StoredObject:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


class SlowSpool(Spool):
    """A spool whose keeps take :data:`KEEP_S` each (a slow disk's fsyncs), blocking their thread."""

    def keep(self, key: str, data: bytes, **kwargs: Any) -> SpoolEntry:
        time.sleep(KEEP_S)
        return super().keep(key, data, **kwargs)


@pytest.mark.looptime(False)  # deadlines in true time: the keeps' threads take true time
async def test_a_burst_of_keeps_never_holds_answers_past_the_deadline_and_every_image_is_kept(
    make_gen: Callable[..., ImageGen], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    doc = fakes(painter={})
    doc["defaults"] = {"timeout": DEADLINE_MS, "imageUrl": "https://cdn.example/default.webp"}
    spool = SlowSpool(tmp_path / "spool")
    gen = make_gen(doc, store=DeadStore(tmp_path / "bucket"), spool=spool)

    async def one(client: httpx.AsyncClient, n: int) -> tuple[float, dict[str, Any]]:
        sent = time.monotonic()
        answer = await client.post("/images/generate", json={"prompt": f"p{n}", "width": 64, "height": 64})
        return time.monotonic() - sent, answer.json()

    with caplog.at_level(logging.WARNING, logger="imagegen"):
        async with api_client(gen) as client:
            answers = await asyncio.gather(*(one(client, n) for n in range(BURST)))
        await gen.flush()  # the keeps that outlived their answers end here
    late = [round(s * 1000) for s, _ in answers if s > DEADLINE_MS / 1000 + TOLERANCE_S]
    assert not late, f"answers past the deadline: {sorted(late)} ms"
    errors = [body["error"] for _, body in answers]
    assert all(body["success"] is False for _, body in answers)
    assert set(errors) <= {STORE_FAILED_ERROR, STORE_KEEPING_ERROR} and STORE_KEEPING_ERROR in errors
    assert spool.waiting() == BURST  # every paid-for image kept, none lost
    assert sorted(e.key for e in spool.entries()) == sorted(r["key"] for r in _keys(gen))
    rows = recent_requests(gen.log, limit=BURST)
    still = [r for r in rows if "still under way at the answer's deadline" in (r["error"] or "")]
    assert len(still) == errors.count(STORE_KEEPING_ERROR)
    assert caplog.text.count("kept in the spool after its answer went out") == len(still)
    assert "lost" not in caplog.text


def _keys(gen: ImageGen) -> list[dict[str, Any]]:
    """The key each request's image was to be stored under (as its row's error names it)."""
    rows = recent_requests(gen.log, limit=BURST)
    keys = []
    for row in rows:
        error = row["error"] or ""
        key = error.split("in the spool as ", 1)[1].split(" ", 1)[0].rstrip(",")
        keys.append({"key": key})
    return keys
