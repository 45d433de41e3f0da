"""``generate(received_at=...)`` is a time of the running loop's clock; anything else (NaN, an infinity, a text) is
refused naming it before anything is logged (QA: NaN and -inf raised a bare ValueError / OverflowError from inside
the service and left the request's row ``running`` for good; a text raised a TypeError)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from imagegen_core import ImageGen, InvalidRequestError
from tests.faults.harness import db_file, read_db

REQUEST = {"prompt": "a lighthouse", "width": 64, "height": 64}


@pytest.mark.parametrize("received_at", [float("nan"), float("-inf"), float("inf"), "soon", True], ids=repr)
def test_a_bad_arrival_time_is_refused_naming_it_and_nothing_is_logged(settings_factory: Any, received_at: Any) -> None:
    async def main() -> None:
        async with ImageGen.from_settings(settings_factory()) as gen:
            with pytest.raises(InvalidRequestError, match=r"^received_at: must be a time of this loop's clock"):
                await gen.generate(REQUEST, received_at=received_at)
            assert read_db(db_file(gen), "SELECT count(*) FROM requests") == [(0,)]

    asyncio.run(main())


def test_an_arrival_time_counts_towards_the_deadline(settings_factory: Any) -> None:
    async def main() -> None:
        async with ImageGen.from_settings(settings_factory()) as gen:
            loop = asyncio.get_running_loop()
            late = await gen.generate(REQUEST, received_at=loop.time() - 100)
            assert not late.success and late.elapsed_ms >= 100_000
            assert (await gen.generate(REQUEST, received_at=loop.time())).success

    asyncio.run(main())
