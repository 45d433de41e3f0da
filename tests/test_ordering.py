"""``race.order = "fastest"``: the start order follows recent answer times (virtual clock for the races)."""

from __future__ import annotations

from typing import Any

import pytest

from imagegen_core.hedging import Hedger, HedgeSettings
from imagegen_core.ordering import AnswerTimes
from imagegen_core.race import RacePlan
from tests.test_hedging import JOB, entrant, race
from tests.test_service import fakes, make_gen


def order(times: AnswerTimes, *providers: str) -> list[str]:
    return times.fastest_first(list(providers), lambda name: name)


def test_unmeasured_providers_start_first_in_priority_order_then_the_measured_by_median() -> None:
    times = AnswerTimes(recent=20, min_samples=3)
    for seconds in (0.9, 1.0, 1.1):
        times.record("replicate", seconds)
    for seconds in (0.2, 5.0, 0.3):  # one straggler does not move a median
        times.record("fal", seconds)
    times.record("unsplash", 0.01)  # one answer is not yet a measurement
    times.record("unsplash", 0.01)
    assert order(times, "replicate", "fal", "unsplash", "openai") == ["unsplash", "openai", "fal", "replicate"]
    assert times.typical_s("fal") == 0.3 and times.typical_s("unsplash") is None


def test_equal_medians_keep_priority_order() -> None:
    times = AnswerTimes(recent=5, min_samples=1)
    times.record("b", 0.5)
    times.record("a", 0.5)
    assert order(times, "a", "b") == ["a", "b"]
    assert order(times, "b", "a") == ["b", "a"]


def test_a_provider_that_slows_down_moves_back_once_most_of_its_recent_answers_are_slow() -> None:
    times = AnswerTimes(recent=5, min_samples=3)
    for _ in range(5):
        times.record("a", 0.1)
        times.record("b", 0.5)
    assert order(times, "a", "b") == ["a", "b"]
    times.record("a", 2.0)
    times.record("a", 2.0)
    assert order(times, "a", "b") == ["a", "b"]  # 2 of the 5 recent answers slow: median still 0.1
    times.record("a", 2.0)
    assert order(times, "a", "b") == ["b", "a"]


def test_min_samples_must_fit_in_the_recent_window() -> None:
    with pytest.raises(ValueError, match="min_samples"):
        AnswerTimes(recent=3, min_samples=4)


def test_a_cancelled_hedge_says_nothing_about_its_provider_but_a_cancelled_first_attempt_does() -> None:
    hedger = Hedger(HedgeSettings(min_samples=1))
    for _ in range(3):
        hedger.observe_at_least("late-starter", 0.001, ran_first=False)
        hedger.observe_at_least("straggler", 0.8, ran_first=True)
    assert hedger.answers.typical_s("late-starter") is None
    assert hedger.answers.typical_s("straggler") == 0.8
    # both still count for the hedge delay, as before (a lower bound keeps stragglers in that window)
    assert hedger.samples("late-starter") == 3 and hedger.samples("straggler") == 3


@pytest.mark.looptime
async def test_in_a_race_a_failure_counts_as_its_timeout_and_a_content_rejection_does_not_count() -> None:
    hedger = Hedger()
    r = race(hedger)
    broken = entrant("broken", latencyMs=5, failureRate=1.0)  # entrant() gives a 10 s timeout
    picky = entrant("picky", latencyMs=5, failureRate=1.0, failureClass="content_rejected")
    for _ in range(3):
        await r.run(RacePlan(entrants=[broken, picky], mode="sequential"), JOB)
    assert hedger.answers.typical_s("broken") == 10.0
    assert hedger.answers.typical_s("picky") is None


@pytest.mark.looptime
@pytest.mark.parametrize("order_mode", ["fastest", "priority"])
async def test_a_slow_primary_stops_costing_requests_under_fastest_but_not_under_priority(
    settings_factory: Any, order_mode: str
) -> None:
    """The issue-7 scenario: a 1 s primary, an instant backup, the default hedge delay (2 s, never reached)
    and budget. Under ``fastest`` the primary leads until measured (3 answers), then the backup leads until
    measured, and from then on every request is answered by the backup alone; ``priority`` keeps paying 1 s."""
    doc = fakes(slow={"latencyMs": 1000}, instant={"latencyMs": 5})
    doc["race"] = {"order": order_mode}
    async with make_gen(settings_factory, doc) as gen:
        results = [await gen.generate({"prompt": f"p{i}", "width": 64, "height": 64}) for i in range(20)]
    assert all(r.success for r in results)
    providers_called = [[a.provider for a in r.attempts] for r in results]
    if order_mode == "priority":
        assert providers_called == [["slow"]] * 20
        assert all(r.elapsed_ms >= 1000 for r in results)
    else:
        assert providers_called[:3] == [["slow"]] * 3
        assert providers_called[3:] == [["instant"]] * 17
        assert all(r.elapsed_ms < 100 for r in results[3:])


@pytest.mark.looptime
async def test_under_fastest_each_provider_is_measured_then_a_leader_that_slows_down_is_overtaken(
    settings_factory: Any,
) -> None:
    """a answers in 10 ms for its first 5 calls, then takes 3 s; b always takes 200 ms; hedges after 500 ms."""
    doc = fakes(a={"latencyMs": [10] * 5 + [3000] * 100}, b={"latencyMs": 200})
    doc["race"] = {"order": "fastest", "hedgeDelay": 500, "adaptiveHedge": False, "hedgeBudgetShare": 1.0}
    async with make_gen(settings_factory, doc) as gen:
        results = [await gen.generate({"prompt": f"p{i}", "width": 64, "height": 64}) for i in range(20)]
    first_started = [r.attempts[0].provider for r in results]
    winners = [r.provider for r in results]
    # 1-3: nobody measured, priority: a (10 ms). 4-6: b is not measured yet, so it leads (200 ms).
    # 7-8: a (median 10 ms) leads again and answers in 10 ms. 9-13: a takes 3 s; b's hedge wins at 700 ms
    # and a is remembered as >= 700 ms (it ran first). After 5 such answers a's median of 10 values is
    # (10 + 700) / 2 ms > b's 200 ms: from request 14 on, b leads and a is no longer asked at all.
    assert first_started == ["a"] * 3 + ["b"] * 3 + ["a"] * 7 + ["b"] * 7
    assert winners == ["a"] * 3 + ["b"] * 3 + ["a"] * 2 + ["b"] * 12
    assert all(len(r.attempts) == 1 for r in results[13:])
