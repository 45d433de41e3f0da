"""The race on uvloop's real clock (the loop ``imagegen serve`` runs on), where the virtual clock of
``test_race.py`` cannot show what timers firing early do."""

from __future__ import annotations

import asyncio

import pytest

from imagegen_core.errors import FailureClass
from imagegen_core.models import AttemptOutcome
from tests.test_race import Harness, entrant

uvloop = pytest.importorskip("uvloop")


def test_every_attempt_the_deadline_cuts_is_a_timeout_on_uvloop() -> None:
    """QA: uvloop runs a timer up to ~0.5 ms before its time, and the race judged "cut by the deadline" by the
    clock alone, so 6 attempts in 30 were logged cancelled without a class (as lost to a winner): the alerts and
    the timeout rates missed them. The race now says so when it cuts its lanes at the deadline."""

    async def races() -> list[tuple[AttemptOutcome, FailureClass | None]]:
        h = Harness()
        found = []
        for n in range(60):  # deadlines off the millisecond grid, where libuv's timers round
            result = await h.run(entrant("a", hang=True, timeout_s=60), deadline_s=0.010 + n * 0.000_37)
            found += [(a.outcome, a.failure_class) for a in result.attempts]
        return found

    found = uvloop.run(races())
    assert found == [(AttemptOutcome.CANCELLED, FailureClass.TIMEOUT)] * 60
    assert isinstance(asyncio.get_event_loop_policy(), asyncio.DefaultEventLoopPolicy)  # uvloop.run left it be
