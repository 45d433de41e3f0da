"""Admin routes that change or describe the running service: hot config, circuit breakers, status, providers,
storage."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from imagegen_core.errors import StorageError
from imagegen_core.log.queries import attempts_for
from imagegen_core.service import ImageGen
from imagegen_core.storage.local import LocalStore

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
        (["not", "an", "object"], "(root)", "must be a JSON object"),
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
            assert field in response.json()["error"] or field == "(root)"
        after = (await client.get("/admin/config", headers=ADMIN)).json()
    assert after == before and gen.config.providers["slow"].timeout == 5000


async def test_malformed_json_for_the_config_is_400_not_422(make_gen: Callable[..., ImageGen]) -> None:
    async with api_client(make_gen()) as client:
        response = await client.patch(
            "/admin/config", content=b"{oops", headers={**ADMIN, "content-type": "application/json"}
        )
    assert response.status_code == 400 and response.json()["field"] == "body"


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
        ("b", "closed", reset),
        ("a", "closed", reset),
        ("a", "closed", reset),
        ("b", "forced_open", forced),
        ("a", "forced_open", forced),
    ]
    assert all(t["at"].endswith("+00:00") for t in view["transitions"])


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"action": "explode"}, "action", "'reset', 'reset-all' or 'force-open'"),
        ({"action": "reset"}, "provider", "needs a provider"),
        ({"action": "reset", "provider": "nope"}, "provider", "unknown provider 'nope'"),
        ({"action": "force-open", "provider": "nope"}, "provider", "unknown provider"),
        ({"action": "reset", "provider": "a", "extra": 1}, "extra", "Extra inputs"),
        ({}, "action", "Field required"),
    ],
)
async def test_bad_circuit_breaker_requests_are_400(
    make_gen: Callable[..., ImageGen], body: dict[str, Any], field: str, fragment: str
) -> None:
    gen = make_gen(fakes(a={}))
    async with api_client(gen) as client:
        response = await client.post("/admin/circuit-breaker", json=body, headers=ADMIN)
    assert response.status_code == 400 and response.json()["field"] == field and fragment in response.json()["error"]
    assert gen.breakers.transitions() == []


async def test_status_providers_and_storage_describe_the_service(make_gen: Callable[..., ImageGen]) -> None:
    gen = make_gen(fakes(a={}))
    async with api_client(gen) as client:
        made = (await client.post("/images/generate", json={"prompt": "x", "width": 64, "height": 64})).json()
        await gen.flush()
        status = (await client.get("/admin/status", headers=ADMIN)).json()
        providers = (await client.get("/admin/providers", headers=ADMIN)).json()["providers"]
        storage = (await client.get("/admin/storage", headers=ADMIN)).json()
    assert status["config"]["valid"] and status["config"]["inForce"] and status["config"]["source"] == "test"
    assert status["logDb"]["ok"] and status["store"] == {"ok": True, "kind": "local"}
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
    assert status["store"]["ok"] is False
