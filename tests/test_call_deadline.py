"""``ImageGen.generate(deadline_s=...)``: an embedder's own deadline for one call, instead of the config's
``defaults.timeout``, shorter or longer, bounded as that one is (0.1 to 600 s)."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from imagegen_core import ImageGen, InvalidRequestError
from imagegen_core.log import recent_requests
from tests.faults.harness import NETWORKED_OFF

REQUEST = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64}
#: An answer's own work after the deadline (the default image, the rows) on a shared 2-core machine.
LATE_MARGIN_S = 0.5


def slow_fake(latency_ms: int, deadline_ms: int) -> dict[str, Any]:
    """One fake provider answering after ``latency_ms``, with its own timeout well past it, under a config
    deadline of ``deadline_ms``."""
    return {
        "providers": {
            **NETWORKED_OFF,
            "slow": {"type": "fake", "priority": 1, "timeout": 60_000, "options": {"latencyMs": latency_ms}},
        },
        "defaults": {"timeout": deadline_ms},
    }


async def test_a_shorter_deadline_answers_by_it_with_the_default_image(settings_factory: Any) -> None:
    async with ImageGen.from_settings(settings_factory()) as gen:
        gen.set_config(slow_fake(latency_ms=5_000, deadline_ms=30_000), source="test")
        started = time.monotonic()
        result = await gen.generate(REQUEST, deadline_s=0.4)
        took = time.monotonic() - started
    # The race itself gives up half the deadline early at most (race.finalizeReserve, capped at half): the
    # rest is kept for the answer.
    assert 0.4 / 2 - 0.01 <= took < 0.4 + LATE_MARGIN_S, took
    assert not result.success and "deadline" in (result.error or ""), result
    assert result.url  # the default image, as at the config's deadline


def test_a_longer_deadline_waits_for_a_provider_the_config_would_cut(settings_factory: Any) -> None:
    with ImageGen.from_settings(settings_factory()) as gen:
        gen.set_config(slow_fake(latency_ms=400, deadline_ms=150), source="test")
        assert not gen.generate_sync(REQUEST).success  # the config's 150 ms cut it
        result = gen.generate_sync(REQUEST, deadline_s=3)
    assert result.success and result.provider == "slow", result


@pytest.mark.parametrize("bad", [0, 0.05, -1, 600.5, math.inf, math.nan, True, "5", None.__class__])
def test_a_deadline_the_config_could_not_set_is_refused_before_anything_is_logged(
    settings_factory: Any, bad: Any
) -> None:
    with ImageGen.from_settings(settings_factory()) as gen:
        gen.set_config(slow_fake(latency_ms=0, deadline_ms=30_000), source="test")
        with pytest.raises(InvalidRequestError) as raised:
            gen.generate_sync(REQUEST, deadline_s=bad)
        assert raised.value.field == "deadline_s"
        assert "from 0.1 to 600" in str(raised.value)
        assert recent_requests(gen.log) == []


def test_the_bounds_themselves_are_accepted(settings_factory: Any) -> None:
    with ImageGen.from_settings(settings_factory()) as gen:
        gen.set_config(slow_fake(latency_ms=0, deadline_ms=30_000), source="test")
        assert gen.generate_sync(REQUEST, deadline_s=600).success
        assert gen.generate_sync(REQUEST, deadline_s=600.0).success
        # Accepted: answered (100 ms may be too short for the race itself, as with defaults.timeout at 100).
        assert gen.generate_sync(REQUEST, deadline_s=0.1).url
