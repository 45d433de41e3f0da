"""``/admin/status`` says which config version the answering process (a ``serve --workers`` worker) has in
force, and that it may be stale while the log database cannot be read; an API process looks for a newer version
between requests too.

Regression (QA, log DB outage with two workers): one worker that served no request since version 8 was stored
kept version 7 the whole outage, and nothing said which worker ran which version.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import pytest

from imagegen_core.api.app import keep_config_fresh
from imagegen_core.errors import LogDatabaseBusy
from imagegen_core.log import LogDB
from imagegen_core.service import ImageGen

from .conftest import ADMIN, api_client, fakes

SIZE = {"width": 64, "height": 64}


async def test_status_names_the_answering_workers_config_version_and_says_when_it_may_be_stale(
    make_gen: Callable[..., ImageGen], db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gen = make_gen(fakes(a={}), IMAGEGEN_DATABASE_URL=db_url)  # version 1
    with LogDB.from_url(db_url) as other:  # another process stores version 2 just before the outage
        other.save_config({**fakes(a={}), "defaults": {"timeout": 9000}}, source="other worker")
    real_query = gen.log.backend.query

    def unreachable(sql: str, params: Any = ()) -> Any:
        raise LogDatabaseBusy("cannot reach the log database: connection refused")

    async with api_client(gen) as client:
        monkeypatch.setattr(gen.log.backend, "query", unreachable)
        answer = await client.post("/images/generate", json={"prompt": "during", **SIZE})
        during = (await client.get("/admin/status", headers=ADMIN)).json()["config"]["worker"]
        monkeypatch.setattr(gen.log.backend, "query", real_query)
        after = (await client.get("/admin/status", headers=ADMIN)).json()["config"]["worker"]

    assert answer.json()["success"]  # with the config in force, version 1
    assert (during["pid"], during["inForceVersion"], during["mayBeStale"]) == (os.getpid(), 1, True)
    assert during["checkedAt"] is not None and during["checkedAt"].endswith("+00:00")
    assert (after["inForceVersion"], after["mayBeStale"]) == (2, False)


async def test_an_idle_api_process_picks_up_a_new_config_version(
    make_gen: Callable[..., ImageGen], db_url: str
) -> None:
    gen = make_gen(fakes(a={}), IMAGEGEN_DATABASE_URL=db_url)
    refresher = asyncio.create_task(keep_config_fresh(gen, every_s=0.01))
    try:
        with LogDB.from_url(db_url) as other:
            stored = other.save_config({**fakes(a={}), "defaults": {"timeout": 9000}}, source="other worker")
        for _ in range(500):  # bounded: the refresher runs every 10 ms
            if gen.config_in_force_version == stored:
                break
            await asyncio.sleep(0.01)
    finally:
        refresher.cancel()
    assert gen.config_in_force_version == stored and gen.config.defaults.timeout == 9000


async def test_the_first_status_during_an_outage_already_says_the_config_may_be_stale(
    make_gen: Callable[..., ImageGen], db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA: the status right after the log database went away said ``mayBeStale: false``: no request had failed
    to read the config yet, though this answer could not read it either."""
    gen = make_gen(fakes(a={}), IMAGEGEN_DATABASE_URL=db_url)

    def unreachable(sql: str, params: Any = ()) -> Any:
        raise LogDatabaseBusy("cannot reach the log database: connection refused")

    async with api_client(gen) as client:
        assert (await client.get("/admin/status", headers=ADMIN)).json()["config"]["worker"]["mayBeStale"] is False
        monkeypatch.setattr(gen.log.backend, "query", unreachable)
        first = (await client.get("/admin/status", headers=ADMIN)).json()["config"]["worker"]
    assert first["mayBeStale"] is True
