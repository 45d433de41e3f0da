"""From runtime config to race entrants (reused while the config object is the same, rebuilt for a new one)
and to the hedging knobs."""

from __future__ import annotations

from typing import Any

from imagegen_core.config import parse_config
from imagegen_core.hedging import Hedger
from imagegen_core.planning import ProviderSet, hedge_settings
from tests.test_service import fakes


def test_entrants_are_reused_for_the_same_config_and_rebuilt_for_a_new_one(settings_factory: Any) -> None:
    providers = ProviderSet(settings_factory(), overrides={})
    first = parse_config(fakes(a={"latencyMs": 1}, b={"latencyMs": 1}))
    once, twice = providers.entrants(first), providers.entrants(first)
    assert [e.name for e in once] == ["a", "b"] and once == twice
    assert once is not twice and all(x is y for x, y in zip(once, twice, strict=True))  # same Entrants, own list
    twice.reverse()  # a caller re-ordering its list (race.order = fastest) does not touch the next one's
    assert [e.name for e in providers.entrants(first)] == ["a", "b"]
    changed = fakes(a={"latencyMs": 1}, b={"latencyMs": 1})
    changed["providers"]["a"].update(priority=9, timeout=1234)
    rebuilt = providers.entrants(parse_config(changed))
    assert [(e.name, e.timeout_s) for e in rebuilt] == [("b", 5.0), ("a", 1.234)]


def test_the_hedging_knobs_come_from_the_race_section_and_a_config_change_reaches_the_budget() -> None:
    hedger = Hedger(hedge_settings(parse_config()))
    assert (hedger.budget.share, hedger.budget.burst, hedger.budget.reserve) == (0.1, 5.0, 2.0)
    hedger.configure(hedge_settings(parse_config({"race": {"hedgeBudgetBurst": 3, "hedgeBudgetReserve": 0}})))
    assert (hedger.budget.burst, hedger.budget.reserve, hedger.budget.tokens) == (3.0, 0.0, 3.0)
    hedger.configure(hedge_settings(parse_config({"race": {"hedgeBudgetBurst": 3, "hedgeBudgetReserve": 5}})))
    assert hedger.budget.reserve == 2.0  # capped at burst - 1: a bucket must hold a hedge beyond its reserve
