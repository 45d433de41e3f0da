"""Admin routes that change or describe the running service: hot config, circuit breakers, status, providers,
storage."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from imagegen_core.breaker import Permit
from imagegen_core.errors import ConfigConflictError, FailureClass, LogDatabaseBusy, StorageError
from imagegen_core.log.queries import attempts_for
from imagegen_core.service import ImageGen
from imagegen_core.storage.local import LocalStore
from imagegen_core.timestamps import iso
from tests.log.rows import add_request

from .conftest import ADMIN, api_client, fakes


def race_slow_then_backup() -> dict[str, Any]:
    """``slow`` (1.5 s, 5 s timeout) first, then ``backup`` (instant) only after slow has failed."""
    doc = fakes(slow={"latencyMs": 1500}, backup={})
    doc["race"] = {"mode": "sequential"}
    return doc


async def test_a_patched_timeout_is_used_by_the_very_next_generate(
    make_gen: Callable[..., ImageGen], db_url: str
) -> None:
    """On both log backends (``db_url``): the config version lives in the log DB."""
    gen = make_gen(race_slow_then_backup(), IMAGEGEN_DATABASE_URL=db_url)
    async with api_client(gen) as client:
        before = (await client.get("/admin/config", headers=ADMIN)).json()
        assert before["config"]["providers"]["slow"]["timeout"] == 5000
        patched = await client.patch("/admin/config", json={"providers": {"slow": {"timeout": 150}}}, headers=ADMIN)
        assert patched.status_code == 200
        assert patched.json()["version"] == before["version"] + 1
        assert patched.json()["config"]["providers"]["slow"]["timeout"] == 150
        assert patched.json()["config"]["providers"]["backup"]["type"] == "fake"  # merged, not replaced
        body = (await client.post("/images/generate", json={"prompt": "x", "width": 64, "height": 64})).json()
    assert (body["success"], body["provider"]) == (True, "backup")
    first = body["attempts"][0]
    assert (first["provider"], first["outcome"], first["failureClass"]) == ("slow", "failed", "timeout")
    assert first["error"] == "slow: no image within 150 ms"
    await gen.flush()
    logged = attempts_for(gen.log, body["requestId"])[0]
    assert logged["provider"] == "slow" and logged["error"] == "slow: no image within 150 ms"
    assert 100 <= logged["duration_ms"] < 1000  # cut at 150 ms, not the old 5 s nor the 1.5 s latency


@pytest.mark.parametrize(
    ("document", "field", "fragment"),
    [
        ({"providers": {"slow": {"timeout": "fast"}}}, "providers.slow.timeout", "valid integer"),
        ({"providers": {"slow": {"timeout": -1}}}, "providers.slow.timeout", "greater than 0"),
        ({"race": {"mdoe": "parallel"}}, "race.mdoe", "Extra inputs"),
        ({"alerts": {"errorRateMax": 2}}, "alerts.errorRateMax", "less than or equal to 1"),
        ({"rateLimit": {"burst": 0}}, "rateLimit.burst", "greater than or equal to 1"),
        ({"providers": {"ghost": {"type": "nonexistent"}}}, "providers.ghost", "unknown provider type"),
        # Checks across fields still name one field.
        ({"limits": {"minSize": 5000}}, "limits.minSize", "must not exceed limits.maxSize"),
        ({"defaults": {"width": 10}}, "defaults.width", "within limits.minSize"),
        ({"chaos": {"providers": {"nope": {}}}}, "chaos.providers.nope", "no such entry"),
        ({"styles": {"flat": "no placeholder"}}, "styles.flat", "must contain {prompt}"),
        # The provider's own rules for its model and options, checked when the config is saved.
        ({"providers": {"fal": {"options": {"mode": "bogus"}}}}, "providers.fal.options.mode", "queue, sync"),
        ({"providers": {"replicate": {"model": "flux"}}}, "providers.replicate.model", "owner/name"),
        ({"providers": {"fal": {"options": {"input": [1]}}}}, "providers.fal.options.input", "an object"),
        # Handed to CMSes as the image to publish.
        ({"defaults": {"imageUrl": "javascript:alert(1)"}}, "defaults.imageUrl", "http(s) URL"),
        (["not", "an", "object"], "body", "must be a JSON object"),
        # Keys of stored images: an empty segment fails every store; a line break in a header, every upload.
        ({"r2": {"pathPrefix": "news//ai"}}, "r2.pathPrefix", "joined by single '/'"),
        ({"r2": {"cacheControl": "public\r\nX-Evil: 1"}}, "r2.cacheControl", "printable ASCII on one line"),
    ],
)
async def test_an_invalid_patch_is_422_naming_the_field_and_changes_nothing(
    make_gen: Callable[..., ImageGen], document: Any, field: str, fragment: str
) -> None:
    gen = make_gen(race_slow_then_backup())
    async with api_client(gen) as client:
        before = (await client.get("/admin/config", headers=ADMIN)).json()
        for method in ("PATCH", "PUT"):
            response = await client.request(method, "/admin/config", json=document, headers=ADMIN)
            assert response.status_code == 422, response.text
            assert response.json()["field"] == field and fragment in response.json()["error"]
            assert response.json()["error"].startswith(f"{field}: "), response.json()
        after = (await client.get("/admin/config", headers=ADMIN)).json()
    assert after == before and gen.config.providers["slow"].timeout == 5000


async def send_config(client: httpx.AsyncClient, method: str, body: bytes) -> httpx.Response:
    """``body`` as it is (the JSON a client wrote, not one httpx makes) to ``METHOD /admin/config``."""
    return await client.request(
        method, "/admin/config", content=body, headers={**ADMIN, "content-type": "application/json"}
    )


async def test_a_config_with_a_lone_surrogate_is_422_and_stores_nothing(make_gen: Callable[..., ImageGen]) -> None:
    """JSON can spell one ("\\ud800"); stored, it failed every request using the style and every later GET."""
    gen = make_gen(race_slow_then_backup())
    versions = len(gen.log.config_history())
    body = b'{"styles": {"x": "{prompt} \\ud800"}}'
    async with api_client(gen) as client:
        for method in ("PATCH", "PUT"):
            response = await send_config(client, method, body)
            assert response.status_code == 422, response.text
            assert response.json()["field"] == "styles.x" and "not valid Unicode" in response.json()["error"]
        assert (await client.get("/admin/config", headers=ADMIN)).status_code == 200
    assert len(gen.log.config_history()) == versions


@pytest.mark.parametrize(
    ("body", "field", "shown"),
    [
        (
            b'{"providers":{"fake1":{"type":"fake","enabled":false,"options":{"latencyMs":1e400}}}}',
            "providers.fake1.options.latencyMs",
            "inf",
        ),
        (b'{"providers":{"slow":{"options":{"latencyMs":[5, 1e999]}}}}', "providers.slow.options.latencyMs[1]", "inf"),
        (
            b'{"providers":{"fal":{"options":{"input":{"guidance":-1e400}}}}}',
            "providers.fal.options.input.guidance",
            "-inf",
        ),
        (b'{"alerts":{"errorRateMax":-1e400}}', "alerts.errorRateMax", "-inf"),
        # An integer too large for a float: float() of it raised at every generate (fake latencyMs).
        (
            b'{"providers":{"slow":{"options":{"latencyMs":1' + b"0" * 400 + b"}}}}",
            "providers.slow.options.latencyMs",
            "an integer of 401 digits",
        ),
    ],
)
async def test_a_config_with_a_non_finite_number_is_422_and_stores_nothing(
    make_gen: Callable[..., ImageGen], body: bytes, field: str, shown: str
) -> None:
    """Regression (QA): Python's JSON reads 1e400 as inf (the body's NaN is already a 400); PATCH answered 200,
    the number was stored as JSON null, and every later config change failed (422 "got None")."""
    gen = make_gen(race_slow_then_backup())
    versions = len(gen.log.config_history())
    async with api_client(gen) as client:
        for method in ("PATCH", "PUT"):
            response = await send_config(client, method, body)
            assert response.status_code == 422, response.text
            assert response.json()["field"] == field
            assert response.json()["error"] == f"{field}: must be a finite number, got {shown}"
        assert (await client.get("/admin/config", headers=ADMIN)).status_code == 200
        later = await client.patch("/admin/config", json={"providers": {"slow": {"timeout": 150}}}, headers=ADMIN)
        assert later.status_code == 200, later.text
    assert len(gen.log.config_history()) == versions + 1


async def test_malformed_json_for_the_config_is_400_not_422(make_gen: Callable[..., ImageGen]) -> None:
    async with api_client(make_gen()) as client:
        response = await client.patch(
            "/admin/config", content=b"{oops", headers={**ADMIN, "content-type": "application/json"}
        )
    assert response.status_code == 400 and response.json()["field"] == "body"


async def test_a_config_giving_a_key_twice_is_400_and_stores_nothing(make_gen: Callable[..., ImageGen]) -> None:
    """QA (the same in `imagegen config set`): the last one won silently."""
    gen = make_gen()
    versions = len(gen.log.config_history())
    body = b'{"providers": {"fal": {"enabled": false}, "fal": {"enabled": true}}}'
    async with api_client(gen) as client:
        for method in ("PUT", "PATCH"):
            response = await send_config(client, method, body)
            assert response.status_code == 400, response.text
            assert response.json() == {
                "error": "body: the key 'fal' is given twice in one object (JSON keeps only the last one): remove one",
                "field": "body",
            }
    assert len(gen.log.config_history()) == versions


async def test_what_get_answers_can_be_edited_and_put_back_unless_someone_saved_since(
    make_gen: Callable[..., ImageGen], db_url: str
) -> None:
    """GET's ``{version, config}`` is a valid PUT body: stored when ``version`` is still the newest; otherwise
    409, so one admin's save never silently undoes another's."""
    gen = make_gen(race_slow_then_backup(), IMAGEGEN_DATABASE_URL=db_url)
    async with api_client(gen) as client:
        first = (await client.get("/admin/config", headers=ADMIN)).json()
        first["config"]["providers"]["slow"]["timeout"] = 4000
        saved = await client.put("/admin/config", json=first, headers=ADMIN)
        assert saved.status_code == 200, saved.text
        assert saved.json()["version"] == first["version"] + 1
        assert saved.json()["config"]["providers"]["slow"]["timeout"] == 4000
        first["config"]["providers"]["slow"]["timeout"] = 3000  # an edit of the now stale version
        for method in ("PUT", "PATCH"):
            stale = await client.request(method, "/admin/config", json=first, headers=ADMIN)
            assert stale.status_code == 409, stale.text
            assert stale.json() == {
                "error": f"version: the config changed since version {first['version']}, "
                f"now version {first['version'] + 1}: read it again and re-apply your change",
                "field": "version",
            }
        # null: read when none was stored (regression: "changed since version 0")
        unread = await client.put("/admin/config", json={"version": None, "config": {}}, headers=ADMIN)
        assert unread.status_code == 409 and unread.json()["error"] == (
            "version: the config changed since it was read (no version was stored then), "
            f"now version {first['version'] + 1}: read it again and re-apply your change"
        )
        bad = await client.put("/admin/config", json={"version": "latest", "config": {}}, headers=ADMIN)
        assert bad.status_code == 422 and bad.json()["field"] == "version"
        after = (await client.get("/admin/config", headers=ADMIN)).json()
    assert after["version"] == first["version"] + 1 and after["config"]["providers"]["slow"]["timeout"] == 4000


async def test_a_version_that_was_never_stored_is_a_422_not_a_conflict(
    make_gen: Callable[..., ImageGen], db_url: str
) -> None:
    """``version`` past the newest (or negative) names nothing GET ever answered: re-reading and re-applying, as a
    409 would advise, cannot help. It is a bad field, saying which versions exist; a stale one stays a 409."""
    gen = make_gen(race_slow_then_backup(), IMAGEGEN_DATABASE_URL=db_url)
    gen.set_config({"defaults": {"timeout": 20_000}}, source="test", merge=True)  # versions 1 and 2
    async with api_client(gen) as client:
        newest = (await client.get("/admin/config", headers=ADMIN)).json()["version"]
        for method in ("PUT", "PATCH"):
            for version in (999, newest + 1, -1):
                body = {"version": version, "config": {"defaults": {"timeout": 12_345}}}
                response = await client.request(method, "/admin/config", json=body, headers=ADMIN)
                assert response.status_code == 422, response.text
                assert response.json() == {
                    "error": f"version: {version} does not exist (the latest is {newest}); "
                    "send back the version GET /admin/config answered",
                    "field": "version",
                }
        stale = await client.put("/admin/config", json={"version": newest - 1, "config": {}}, headers=ADMIN)
        assert stale.status_code == 409 and "changed since version" in stale.json()["error"]
        after = (await client.get("/admin/config", headers=ADMIN)).json()
    assert after["version"] == newest and after["config"]["defaults"]["timeout"] == 20_000


async def test_a_version_sent_before_any_was_stored_says_to_send_null(make_gen: Callable[..., ImageGen]) -> None:
    gen = make_gen()
    async with api_client(gen) as client:
        response = await client.put("/admin/config", json={"version": 3, "config": {}}, headers=ADMIN)
        assert response.status_code == 422
        assert response.json()["error"] == "version: 3 does not exist (none is stored yet); send null"
        assert (
            await client.put("/admin/config", json={"version": None, "config": {}}, headers=ADMIN)
        ).status_code == 200
    assert gen.log.latest_config_id() == 1


def test_two_edits_of_the_same_version_never_both_land(make_gen: Callable[..., ImageGen], db_url: str) -> None:
    """The version check and the write happen under one lock: of two threads saving edits of the same version
    at once, exactly one succeeds, on both log backends."""
    gen = make_gen(IMAGEGEN_DATABASE_URL=db_url)
    base = gen.set_config({"defaults": {"timeout": 9000}}, source="test")
    assert base.defaults.timeout == 9000
    version = gen.log.latest_config_id()
    barrier = threading.Barrier(2)

    def save(timeout_ms: int) -> str:
        barrier.wait()
        try:
            gen.set_config({"defaults": {"timeout": timeout_ms}}, source="test", based_on=version)
        except ConfigConflictError:
            return "conflict"
        return "saved"

    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(save, (8000, 7000)))
    assert outcomes == ["conflict", "saved"]
    assert gen.log.latest_config_id() == (version or 0) + 1


async def test_put_replaces_the_document_over_the_defaults(make_gen: Callable[..., ImageGen], db_url: str) -> None:
    gen = make_gen(race_slow_then_backup(), IMAGEGEN_DATABASE_URL=db_url)
    async with api_client(gen) as client:
        replaced = await client.put("/admin/config", json={"defaults": {"timeout": 9000}}, headers=ADMIN)
    config = replaced.json()["config"]
    assert replaced.status_code == 200 and config["defaults"]["timeout"] == 9000
    assert "slow" not in config["providers"] and config["race"]["mode"] == "hedged"  # back to the defaults
    assert gen.config.defaults.timeout == 9000


async def test_circuit_breaker_actions_and_their_transitions(make_gen: Callable[..., ImageGen], db_url: str) -> None:
    gen = make_gen(fakes(a={}, b={}), IMAGEGEN_DATABASE_URL=db_url)
    async with api_client(gen) as client:

        async def act(**body: Any) -> Any:
            return await client.post("/admin/circuit-breaker", json=body, headers=ADMIN)

        forced = await act(action="force-open", provider="a")
        assert forced.status_code == 200 and forced.json()["providers"]["a"]["state"] == "forced_open"
        result = (await client.post("/images/generate", json={"prompt": "x", "width": 64, "height": 64})).json()
        assert result["provider"] == "b" and result["attempts"][0]["outcome"] == "skipped"
        assert (await act(action="force-open", provider="b")).status_code == 200
        reset = await act(action="reset", provider="a")
        assert reset.json()["providers"]["a"]["state"] == "closed"
        assert reset.json()["providers"]["b"]["state"] == "forced_open"
        everything = await act(action="reset-all")
        assert {p["state"] for p in everything.json()["providers"].values()} == {"closed"}
        view = (await client.get("/admin/circuit-breaker", headers=ADMIN)).json()
    reset, forced = "reset by admin (API)", "forced open by admin (API)"
    assert [(t["provider"], t["to"], t["reason"]) for t in view["transitions"]] == [  # newest first
        ("b", "closed", reset),  # reset-all: a, reset just before and nothing counted since, is left alone
        ("a", "closed", reset),
        ("b", "forced_open", forced),
        ("a", "forced_open", forced),
    ]
    assert all(t["at"].endswith("+00:00") for t in view["transitions"])


async def test_a_break_begun_before_the_clock_stepped_back_is_shown_over_as_admission_treats_it(
    make_gen: Callable[..., ImageGen],
) -> None:
    """QA: after a clock step back of an hour, admission counted a break as over (the next call probed) while
    ``GET /admin/circuit-breaker`` and ``/admin/providers`` showed it open until an hour ahead. Both now say the
    break is over, with no end ahead of the clock; a break still running shows its end."""
    gen = make_gen(fakes(a={}, b={}))

    def auth_failure(name: str) -> None:  # opens at once, for billingBreakDuration (an hour)
        permit = gen.breakers.acquire(name)
        assert isinstance(permit, Permit)
        gen.breakers.record(permit, outcome="failure", failure_class=FailureClass.AUTH)

    auth_failure("a")
    gen.breakers.clock = lambda: time.time() - 3600  # the clock stepped back an hour (NTP, a VM snapshot)
    auth_failure("b")  # opened on the clock as it now reads: its break runs
    b_until = gen.breakers.state("b").opened_until
    async with api_client(gen) as client:
        view = (await client.get("/admin/circuit-breaker", headers=ADMIN)).json()["providers"]
        listed = (await client.get("/admin/providers", headers=ADMIN)).json()["providers"]
        for shown in (view, {row["name"]: row["circuitBreaker"] for row in listed}):
            assert (shown["a"]["state"], shown["a"]["openedUntil"], shown["a"]["breakOver"]) == ("open", None, True)
            assert (shown["b"]["state"], shown["b"]["openedUntil"], shown["b"]["breakOver"]) == (
                "open",
                iso(b_until),
                False,
            )
        # ... as admission treats them: a's next call is a probe, b is skipped
        result = (await client.post("/images/generate", json={"prompt": "x", "width": 64, "height": 64})).json()
    assert result["provider"] == "a" and result["success"] is True, result


async def test_reset_all_says_which_breakers_it_reset_and_adds_no_closed_to_closed_transition(
    make_gen: Callable[..., ImageGen],
) -> None:
    """QA: reset-all recorded "closed → closed" for a closed breaker with failures counted. Its window is cleared
    without a transition, and the answer (the contract's view, plus ``resetAll``) says which breakers were
    reset, which only had their window cleared and which were already clean."""
    gen = make_gen(fakes(a={}, b={}, c={}))
    gen.breakers.record(Permit("b", probe=False, token=0.0), outcome="failure", failure_class=FailureClass.TRANSIENT)
    async with api_client(gen) as client:
        assert (
            await client.post("/admin/circuit-breaker", json={"action": "force-open", "provider": "a"}, headers=ADMIN)
        ).status_code == 200
        answer = await client.post("/admin/circuit-breaker", json={"action": "reset-all"}, headers=ADMIN)
    body = answer.json()
    assert answer.status_code == 200 and {"providers", "transitions"} <= set(body)
    assert body["resetAll"]["reset"] == ["a"] and body["resetAll"]["windowCleared"] == ["b"]
    assert "c" in body["resetAll"]["alreadyClean"] and not {"a", "b"} & set(body["resetAll"]["alreadyClean"])
    assert {body["providers"][name]["state"] for name in "abc"} == {"closed"}
    assert [(t["provider"], t["from"], t["to"]) for t in body["transitions"]] == [
        ("a", "forced_open", "closed"),
        ("a", "closed", "forced_open"),
    ]


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"action": "explode"}, "action", "'reset', 'reset-all' or 'force-open'"),
        ({"action": "reset"}, "provider", "needs a provider"),
        ({"action": "reset", "provider": "nope"}, "provider", "unknown provider 'nope'"),
        ({"action": "force-open", "provider": "nope"}, "provider", "unknown provider"),
        ({"action": "reset", "provider": "a", "extra": 1}, "extra", "Extra inputs"),
        ({}, "action", "Field required"),
        ({"action": "reset-all", "provider": "a"}, "provider", "leave provider out"),
        # In JSON's words, not pydantic's "a valid dictionary or instance of BreakerAction".
        (None, "body", "expected a JSON object, got null"),
        (["reset-all"], "body", "expected a JSON object, got an array"),
        ("reset-all", "body", "expected a JSON object, got a string"),
    ],
)
async def test_bad_circuit_breaker_requests_are_400(
    make_gen: Callable[..., ImageGen], body: Any, field: str, fragment: str
) -> None:
    gen = make_gen(fakes(a={}))
    async with api_client(gen) as client:
        sent = {**ADMIN, "content-type": "application/json"}  # json=None would send no body at all
        response = await client.post("/admin/circuit-breaker", content=json.dumps(body), headers=sent)
    assert response.status_code == 400 and response.json()["field"] == field and fragment in response.json()["error"]
    assert gen.breakers.transitions() == []


async def test_a_breaker_action_giving_a_key_twice_is_400_and_touches_no_breaker(
    make_gen: Callable[..., ImageGen],
) -> None:
    """QA: ``{"action": "force-open", "provider": "a", "provider": "b"}`` forced b open without a word (JSON
    keeps the last); the admin meant one of them. Refused like malformed JSON, naming the key."""
    gen = make_gen(fakes(a={}, b={}))
    body = b'{"action": "force-open", "provider": "a", "provider": "b"}'
    async with api_client(gen) as client:
        sent = {**ADMIN, "content-type": "application/json"}
        response = await client.post("/admin/circuit-breaker", content=body, headers=sent)
    assert response.status_code == 400, response.text
    assert response.json() == {
        "error": "body: the key 'provider' is given twice in one object (JSON keeps only the last one): remove one",
        "field": "body",
    }
    assert gen.breakers.transitions() == []


async def test_providers_last_24h_leaves_out_attempts_dated_in_the_future(make_gen: Callable[..., ImageGen]) -> None:
    """QA: an attempt a machine with its clock ahead dated two days from now counted in ``last24h``."""
    import time

    gen = make_gen(fakes(a={}))
    async with api_client(gen) as client:
        await client.post("/images/generate", json={"prompt": "x", "width": 64, "height": 64})
        await gen.flush()
        at = time.time() + 2 * 86_400
        add_request(gen.log, "ahead", at, "success")
        gen.log.start_attempt("ahead-a", request_id="ahead", provider="a", attempt=1, hedged=False, started_at=at)
        gen.log.finish_attempt("ahead-a", finished_at=at + 1, outcome="failed", failure_class="transient")
        providers = (await client.get("/admin/providers", headers=ADMIN)).json()["providers"]
    recent = {p["name"]: p for p in providers}["a"]["last24h"]
    assert (recent["calls"], recent["successRate"]) == (1, 1.0)


async def test_status_providers_and_storage_describe_the_service(make_gen: Callable[..., ImageGen]) -> None:
    gen = make_gen(fakes(a={}))
    async with api_client(gen) as client:
        made = (await client.post("/images/generate", json={"prompt": "x", "width": 64, "height": 64})).json()
        await gen.flush()
        status = (await client.get("/admin/status", headers=ADMIN)).json()
        providers = (await client.get("/admin/providers", headers=ADMIN)).json()["providers"]
        storage = (await client.get("/admin/storage", headers=ADMIN)).json()
    assert status["config"]["valid"] and status["config"]["inForce"] and status["config"]["source"] == "test"
    assert status["logDb"]["ok"] and status["store"] == {
        "ok": True,
        "kind": "local",
        "error": None,
        "keptImages": 0,
        "oldestKeptAgeS": None,
        "keptForOtherStores": {},
        "spool": {"ok": True, "error": None},
    }
    assert status["logDb"]["keptRows"] == 0
    row = {p["name"]: p for p in providers}["a"]
    assert (row["enabled"], row["configured"], row["racing"], row["circuitBreaker"]["state"]) == (
        True,
        True,
        True,
        "closed",
    )
    assert row["last24h"]["calls"] == 1 and row["last24h"]["successRate"] == 1.0
    month = made["key"].split("/")[1] + "-" + made["key"].split("/")[2]
    assert storage["prefix"] == "ai" and storage["totalObjects"] == 1
    assert [m["month"] for m in storage["months"]] == [month] and storage["months"][0]["bytes"] > 0


async def test_status_counts_apart_the_spooled_images_kept_for_another_store(make_gen: Callable[..., ImageGen]) -> None:
    """QA: images kept for another store (which this process never uploads) were counted in ``keptImages``, with
    ``oldestKeptAgeS`` growing: an alert on them would fire for ever, without a word of where they belong."""
    gen = make_gen(fakes(a={}))
    other = "r2 bucket news-images at http://127.0.0.1:18620"
    for key, destination in (("ai/2026/11/mine.webp", None), ("ai/2026/11/r2.webp", other)):
        gen.spool.keep(key, b"paid", content_type="image/webp", cache_control="c", metadata={}, destination=destination)
    async with api_client(gen) as client:
        store = (await client.get("/admin/status", headers=ADMIN)).json()["store"]
    assert (store["keptImages"], store["keptForOtherStores"]) == (1, {other: 1})
    assert store["oldestKeptAgeS"] is not None


async def test_status_counts_log_rows_kept_through_an_outage_until_they_are_written(
    make_gen: Callable[..., ImageGen],
) -> None:
    """Rows that another process on this machine kept on disk while the log database was away (it ended
    before the database came back) show in the status, and go into the log with this process's next rows."""
    gen = make_gen(fakes(a={}))
    start = {"request_id": "kept-1", "provider": "a", "attempt": 1, "hedged": False, "started_at": 1.0}
    end = {"finished_at": 2.0, "outcome": "failed", "error": "HTTP 503"}
    async with api_client(gen) as client:
        add_request(gen.log, "kept-1", 1.0)
        gen.log_spill.keep([("start_attempt", ["att-1"], start), ("finish_attempt", ["att-1"], end)])
        before = (await client.get("/admin/status", headers=ADMIN)).json()["logDb"]
        await client.post("/images/generate", json={"prompt": "x", "width": 64, "height": 64})
        await gen.flush()
        after = (await client.get("/admin/status", headers=ADMIN)).json()["logDb"]
    assert (before["keptRows"], after["keptRows"]) == (2, 0)
    assert [(a["id"], a["outcome"]) for a in attempts_for(gen.log, "kept-1")] == [("att-1", "failed")]


async def test_health_is_503_while_the_log_refuses_writes_and_says_why_to_the_admin(
    make_gen: Callable[..., ImageGen], monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA (full_disk.sh): with the SQLite log on a full disk, reads worked, so /health said 200 while every row
    was lost. Now it is 503 while the writer's writes are refused, /admin/status names the cause, and both are
    back to ok once a write is taken."""
    gen = make_gen(fakes(a={}))
    backend = gen.log.backend
    real_write, full = backend.write, [True]

    def write(sql: str, params: Any) -> int:
        if full[0]:
            raise backend._error(sqlite3.OperationalError("database or disk is full"), "write")  # type: ignore[attr-defined]
        return real_write(sql, params)

    monkeypatch.setattr(backend, "write", write)
    async with api_client(gen) as client:
        made = await client.post("/images/generate", json={"prompt": "x", "width": 64, "height": 64})
        assert made.status_code == 200  # the rows wait in the writer, retried
        async with asyncio.timeout(10):
            while (health := await client.get("/health")).status_code == 200:
                await asyncio.sleep(0.05)
        status = (await client.get("/admin/status", headers=ADMIN)).json()
        full[0] = False
        await gen.flush()
        healthy = await client.get("/health")
    assert health.status_code == 503 and health.json()["checks"]["logDb"]["ok"] is False
    assert health.json()["checks"]["logDb"]["writesFailingForS"] >= 0 and str(gen.log.path) not in health.text
    assert status["logDb"]["ok"] is False
    assert status["logDb"]["error"].endswith(f"database or disk is full: free space on {gen.log.path.parent}")
    assert healthy.status_code == 200 and healthy.json()["checks"]["logDb"] == {
        "ok": True,
        "schemaVersion": status["logDb"]["schemaVersion"],
    }


async def test_status_with_the_log_database_down_shows_the_providers_in_force_and_says_why_apart(
    make_gen: Callable[..., ImageGen], monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA (admin_status_db_down.sh): with the log database down, /admin/status answered "providers": [] and
    "config": null (read as "no provider configured") while /config listed the providers in force."""
    gen = make_gen(fakes(a={}))
    in_force = gen.config_in_force_version

    def unreachable(sql: str, params: Any) -> Any:
        raise LogDatabaseBusy("cannot reach the log database postgresql://db/imagegen: connection refused")

    monkeypatch.setattr(gen.log.backend, "query", unreachable)
    async with api_client(gen) as client:
        status = (await client.get("/admin/status", headers=ADMIN)).json()
        public = (await client.get("/config")).json()
    rows = {row["name"]: row for row in status["providers"]}
    assert sorted(rows) == sorted(p["name"] for p in public["providers"])
    assert (rows["a"]["enabled"], rows["a"]["racing"], rows["a"]["breaker"]) == (True, True, None)
    assert in_force is not None and status["config"]["inForceVersion"] == in_force
    assert "log database cannot be read" in status["config"]["error"]
    assert status["logDb"]["ok"] is False and "connection refused" in status["logDb"]["error"]


class BrokenStore(LocalStore):
    """A local store whose health check fails (the folder cannot be written)."""

    async def check(self) -> None:
        raise StorageError("local store: folder /srv/images is not writable")


async def test_health_is_503_when_the_store_is_unusable_without_leaking_the_reason(
    make_gen: Callable[..., ImageGen], tmp_path: Any
) -> None:
    gen = make_gen(store=BrokenStore(tmp_path / "images"))
    async with api_client(gen) as client:
        health = await client.get("/health")
        status = (await client.get("/admin/status", headers=ADMIN)).json()
    assert health.status_code == 503 and health.json()["status"] == "unhealthy"
    assert health.json()["checks"]["store"] == {"ok": False, "kind": "local"}
    assert "/srv/images" not in health.text
    # The admin's page says why (QA: ok false and no more, where logDb and spool say why).
    assert (status["store"]["ok"], status["store"]["error"]) == (
        False,
        "local store: folder /srv/images is not writable",
    )


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        ("not json", "not JSON"),
        ("null", "JSON null, not an object"),
        ('{"a":' * 100_000 + "1" + "}" * 100_000, "not JSON"),  # QA: deeper than the decoder goes
    ],
)
async def test_a_stored_row_that_is_not_a_config_object_is_ignored_and_the_answers_say_which_is_in_force(
    make_gen: Callable[..., ImageGen], stored: str, reason: str
) -> None:
    """A row written by hand (not JSON, or `null`): every request still works with the version before it
    (it had made every command fail, or silently meant "all defaults"), and the config answers say which
    version is in force."""
    gen = make_gen(fakes(a={}))
    good = gen.config_version
    with gen.log.transaction() as tx:
        tx.execute(
            "INSERT INTO config_versions (created_at, source, document) VALUES (?, ?, ?)", (1.0, "manual", stored)
        )
    async with api_client(gen) as client:
        answer = await client.post("/images/generate", json={"prompt": "x", "width": 64, "height": 64})
        view = (await client.get("/admin/config", headers=ADMIN)).json()
        status = (await client.get("/admin/status", headers=ADMIN)).json()["config"]
    assert answer.status_code == 200 and answer.json()["provider"] == "a"
    assert view["version"] == good + 1 and view["inForceVersion"] == good  # an edit is based on the newest
    assert "a" in view["config"]["providers"]
    assert (status["valid"], status["inForce"], status["inForceVersion"]) == (False, False, good)
    assert reason in status["error"]


async def test_a_patch_that_changes_nothing_stores_no_version(make_gen: Callable[..., ImageGen]) -> None:
    """QA: each ``PATCH /admin/config {}`` stored a new version (1 → 2 → 3), so an editor working from an earlier
    GET got a 409 although nothing had changed. A patch that changes something still stores one."""
    gen = make_gen(race_slow_then_backup())
    async with api_client(gen) as client:
        before = (await client.get("/admin/config", headers=ADMIN)).json()
        for patch in ({}, {"providers": {"slow": {"timeout": 5000}}}):  # the second sets what is already set
            answer = await client.patch("/admin/config", json=patch, headers=ADMIN)
            assert answer.status_code == 200 and answer.json()["version"] == before["version"], answer.text
        edited = await client.put(
            "/admin/config", json={"version": before["version"], "config": before["config"]}, headers=ADMIN
        )
        changed = await client.patch("/admin/config", json={"providers": {"slow": {"timeout": 4000}}}, headers=ADMIN)
    assert edited.status_code == 200, edited.text  # the editor's GET is still the newest version
    assert changed.status_code == 200 and changed.json()["version"] == edited.json()["version"] + 1
    assert len(gen.log.config_history()) == changed.json()["version"]


async def test_breaker_actions_read_provider_names_as_generate_does(make_gen: Callable[..., ImageGen]) -> None:
    """QA: generate took ``"provider": "OFFLINE"``, but resetting the breaker of ``"OFFLINE"`` was refused as an
    unknown provider. Both read the name without regard to case, and act on the entry's own spelling."""
    gen = make_gen(fakes(painter={}))
    async with api_client(gen) as client:
        forced = await client.post(
            "/admin/circuit-breaker", json={"action": "force-open", "provider": "PAINTER"}, headers=ADMIN
        )
        assert forced.status_code == 200, forced.text
        assert (
            forced.json()["providers"]["painter"]["state"] == "forced_open"
            and "PAINTER" not in forced.json()["providers"]
        )
        reset = await client.post(
            "/admin/circuit-breaker", json={"action": "reset", "provider": " Painter "}, headers=ADMIN
        )
    assert reset.status_code == 200 and reset.json()["providers"]["painter"]["state"] == "closed"


@pytest.mark.parametrize("how", ["a-file-in-its-place", "cannot-create-it"])
async def test_health_and_status_say_when_the_upload_spool_cannot_keep_images(
    make_gen: Callable[..., ImageGen], tmp_path: Any, how: str
) -> None:
    """QA (repro_spool_unusable_health.sh): with a file where the spool's folder should be, /health said 200 ok
    and /admin/status ``keptImages: null`` without a word; the next store outage then lost every paid image.
    Now /health is 503 (``checks.spool.ok`` false, no path) and the status says why, until the folder is back."""
    gen = make_gen(fakes(a={}))
    spool = gen.spool.root
    if how == "a-file-in-its-place":
        spool.parent.mkdir(parents=True, exist_ok=True)
        spool.write_text("not a folder")
    else:  # its parent is a file: the folder cannot be made (as on a read-only disk, which root would not see)
        gen.spool.root = tmp_path / "blocker" / "spool"
        (tmp_path / "blocker").write_text("x")
    async with api_client(gen) as client:
        health = await client.get("/health")
        status = (await client.get("/admin/status", headers=ADMIN)).json()
        if how == "a-file-in-its-place":
            spool.unlink()
        else:
            (tmp_path / "blocker").unlink()
        healthy = await client.get("/health")
    assert health.status_code == 503 and health.json()["checks"]["spool"] == {"ok": False}
    assert str(gen.spool.root) not in health.text
    assert status["store"]["spool"]["ok"] is False and status["store"]["spool"]["error"].startswith(
        f"cannot use the spool {gen.spool.root}: "
    )
    assert healthy.status_code == 200 and healthy.json()["checks"]["spool"] == {"ok": True}


async def test_an_unusable_spool_is_said_at_start_and_checked_without_a_write_per_probe(
    make_gen: Callable[..., ImageGen], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start (warm-up) makes the folder and says when it cannot; a probe then costs a ``stat``, not a write:
    a found-usable spool is written to again only after a minute (or by a keep, which says so itself)."""
    gen = make_gen(fakes(a={}))
    gen.spool.root.parent.mkdir(parents=True, exist_ok=True)
    gen.spool.root.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="imagegen"):
        await gen.warm_up()
    assert f"spool: cannot use the spool {gen.spool.root}" in caplog.text
    gen.spool.root.unlink()
    writes: list[str] = []
    real_open = os.open

    def counting_open(path: Any, *args: Any, **kwargs: Any) -> int:
        writes.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting_open)
    async with api_client(gen) as client:
        codes = [(await client.get("/health")).status_code for _ in range(5)]
    assert codes == [200] * 5 and gen.spool.root.is_dir()
    assert len([w for w in writes if w.startswith(str(gen.spool.root))]) == 1  # the first probe after the fix
