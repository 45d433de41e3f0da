"""Fault injection (``chaos``): off by default, validated, applied by wrapping the racing provider, logged like a
real fault of the same class, reproducible with a seed, and visible in ``/admin/status`` and to the console."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from imagegen_core import ImageGen
from imagegen_core.chaos import ChaosProvider, chaos_status
from imagegen_core.config import parse_config
from imagegen_core.errors import ConfigError
from imagegen_core.log.queries import attempts_for
from imagegen_core.providers.fake import FakeProvider
from tests.api.conftest import ADMIN, api_client, fakes


def chaos(**faults: dict[str, Any]) -> dict[str, Any]:
    return {"chaos": {"enabled": True, "seed": 1, "providers": faults}}


def test_chaos_is_off_by_default_and_a_bad_section_names_the_field() -> None:
    config = parse_config()
    assert config.chaos.enabled is False and chaos_status(config)["active"] is False
    with pytest.raises(ConfigError, match=r"chaos.providers.nope: no such entry under providers"):
        parse_config({"chaos": {"providers": {"nope": {"errorRate": 1}}}})
    with pytest.raises(ConfigError, match=r"chaos.providers.fal.errorRate: Input should be less than or equal to 1"):
        parse_config({"chaos": {"providers": {"fal": {"errorRate": 2}}}})
    with pytest.raises(ConfigError, match=r"chaos.providers.fal.errorClass"):
        parse_config({"chaos": {"providers": {"fal": {"errorClass": "flaky"}}}})
    with pytest.raises(ConfigError, match=r"chaos.providers.fal.hangrate: Extra inputs are not permitted"):
        parse_config({"chaos": {"providers": {"fal": {"hangrate": 1}}}})


async def test_faults_wrap_only_the_racing_provider_and_only_when_switched_on(settings_factory: Any) -> None:
    real = FakeProvider(name="painter", options={"latencyMs": 1})
    doc = fakes(painter={}) | chaos(painter={"errorRate": 1.0})
    async with ImageGen.from_settings(settings_factory(), providers={"painter": real}) as gen:
        gen.set_config(doc | {"chaos": {**doc["chaos"], "enabled": False}}, source="test")
        assert [e.provider for e in gen.entrants()] == [real] and not gen.chaos_active()
        gen.set_config(doc, source="test")
        (entrant,) = gen.entrants()
        assert isinstance(entrant.provider, ChaosProvider) and entrant.provider.inner is real
        assert gen.chaos_active() and entrant.provider.configured and entrant.provider.name == "painter"
        assert entrant.provider.download_policy == real.download_policy
        assert gen.entrants()[0].provider is entrant.provider  # kept across requests: the sequence continues


@pytest.mark.parametrize(
    ("fault", "failure_class", "status", "message"),
    [
        ({"errorRate": 1.0, "errorClass": "rate_limited", "retryAfterMs": 50}, "rate_limited", 429, "painter: chaos: "),
        ({"errorRate": 1.0, "errorClass": "billing"}, "billing", 402, "painter: chaos: injected billing failure"),
        ({"corruptRate": 1.0}, "transient", None, "painter: cannot normalise image"),  # as a real bad payload
        ({"hangRate": 1.0}, "timeout", None, "painter: no image within 300 ms"),
    ],
)
async def test_an_injected_fault_is_logged_like_a_real_one_and_never_reaches_the_real_provider(
    settings_factory: Any, fault: dict[str, Any], failure_class: str, status: int | None, message: str
) -> None:
    real = FakeProvider(name="painter", options={"latencyMs": 1})
    doc = fakes(painter={}) | chaos(painter=fault)
    doc["providers"]["painter"]["timeout"] = 300  # a hang ends by the attempt timeout
    doc["providers"]["painter"]["costPerImage"] = 0.01
    async with ImageGen.from_settings(settings_factory(), providers={"painter": real}) as gen:
        gen.set_config(doc, source="test")
        result = await gen.generate({"prompt": "p", "width": 320, "height": 200})
        await gen.flush()
        (row,) = attempts_for(gen.log, result.request_id)
    assert not result.success and real.calls == []  # a drill never pays for an image it throws away
    assert (row["failure_class"], row["http_status"]) == (failure_class, status)
    assert row["error"].startswith(message)
    if failure_class != "timeout":  # nothing was made, so nothing is charged (a corrupt payload included)
        assert row["cost_usd"] == 0
    if failure_class == "billing":
        assert gen.breakers.state("painter").state == "open"  # counted by the breaker like a real 402


@pytest.mark.looptime
async def test_latency_delays_the_call_then_the_real_provider_answers(settings_factory: Any) -> None:
    real = FakeProvider(name="painter", options={"latencyMs": 10})
    doc = fakes(painter={}) | chaos(painter={"latencyMs": 700})
    async with ImageGen.from_settings(settings_factory(), providers={"painter": real}) as gen:
        gen.set_config(doc, source="test")
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await gen.generate({"prompt": "p", "width": 320, "height": 200})
        assert result.success and len(real.calls) == 1
        assert loop.time() - started == pytest.approx(0.71, abs=0.05)


async def test_a_seed_makes_the_injected_faults_reproducible(settings_factory: Any) -> None:
    doc = fakes(painter={"latencyMs": 0}) | chaos(painter={"errorRate": 0.5})

    async def outcomes(home: str) -> list[bool]:
        real = FakeProvider(name="painter")
        async with ImageGen.from_settings(settings_factory(IMAGEGEN_HOME=home), providers={"painter": real}) as gen:
            gen.set_config(doc | {"breaker": {"minCalls": 1000}}, source="test")
            return [(await gen.generate({"prompt": "p", "width": 64, "height": 64})).success for _ in range(12)]

    first, second = await outcomes("one"), await outcomes("two")
    assert first == second and True in first and False in first


async def test_admin_status_shows_chaos_and_its_faults(settings_factory: Any) -> None:
    gen = ImageGen.from_settings(settings_factory(IMAGEGEN_ADMIN_TOKEN="admin-token-0123456789abcdef"))
    try:
        async with api_client(gen) as client:
            assert (await client.get("/admin/status", headers=ADMIN)).json()["chaos"] == {
                "enabled": False,
                "active": False,
                "seed": None,
                "providers": {},
            }
            gen.set_config(fakes(painter={}) | chaos(painter={"hangRate": 0.1}), source="test")
            shown = (await client.get("/admin/status", headers=ADMIN)).json()["chaos"]
    finally:
        await gen.aclose()
    assert shown["enabled"] and shown["active"] and shown["seed"] == 1
    assert shown["providers"]["painter"]["hangRate"] == 0.1
