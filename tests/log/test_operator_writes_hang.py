"""Changes an operator makes from a blocking caller (``imagegen config set``, ``imagegen breakers reset``, the
console's Admin page) while the PostgreSQL log hangs (a server that hangs, or a network that drops packets;
played by a stalling TCP proxy on 127.0.0.1). Before, only reads were bounded: such a change waited for TCP to
give up, many minutes, and the command or page with it. Now it gives up after ``LOG_CALL_WAIT_S`` with one
line, at once while that one is unanswered, and may still be applied once the server answers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from imagegen_core import service
from imagegen_core.errors import LogDatabaseBusy
from imagegen_core.service import ImageGen
from tests.pgcluster import PostgresCluster
from tests.tcpproxy import StallingProxy


@pytest.fixture
def proxied(
    postgres: PostgresCluster, settings_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ImageGen, StallingProxy]]:
    """An ImageGen on a fresh database through a stalling proxy; its blocking log calls wait 1 s (10 s in
    production)."""
    monkeypatch.setattr(service, "LOG_CALL_WAIT_S", 1.0)
    url = postgres.url(postgres.create_database())
    with StallingProxy(("127.0.0.1", postgres.port)) as proxy:
        proxied_url = url.replace(f":{postgres.port}/", f":{proxy.port}/")
        with ImageGen.from_settings(settings_factory(IMAGEGEN_DATABASE_URL=proxied_url)) as gen:
            yield gen, proxy
            proxy.resume()  # closing writes what waited in the log writer's queue


def timed(call: Callable[[], object]) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        call()
    except Exception as exc:
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


def test_a_config_change_gives_up_in_bounded_time_and_lands_once_the_server_answers(
    proxied: tuple[ImageGen, StallingProxy],
) -> None:
    gen, proxy = proxied
    gen.set_config({"defaults": {"timeout": 4000}}, source="cli")
    proxy.stall()
    error, took = timed(lambda: gen.set_config({"defaults": {"timeout": 6000}}, source="cli"))
    assert isinstance(error, LogDatabaseBusy) and 1.0 <= took < 3.0, (error, took)
    assert str(error) == (
        "the log database did not answer within 1 s (a server that hangs, or a network that drops packets?)"
    )
    again, took = timed(lambda: gen.set_config({"defaults": {"timeout": 7000}}, source="cli"))
    assert isinstance(again, LogDatabaseBusy) and took < 0.5, (again, took)
    assert "has not answered an earlier call yet" in str(again)
    reset, took = timed(lambda: gen.log_call_sync(lambda: gen.breakers.reset_all(reason="reset from the CLI")))
    assert isinstance(reset, LogDatabaseBusy) and took < 0.5, (reset, took)
    proxy.resume()
    give_up = time.monotonic() + 30
    while True:  # the hung change ends once the server answers; then changes work again
        error, _ = timed(lambda: gen.set_config({"defaults": {"timeout": 8000}}, source="cli"))
        if error is None:
            break
        assert time.monotonic() < give_up, error
        time.sleep(0.1)
    history = [row[2] for row in gen.log.config_history()]
    timeouts = [document["defaults"]["timeout"] for _, document in gen.log.recent_configs()]
    # The change that timed out was applied when the server answered (as the error allows); the refused
    # one never was.
    assert timeouts == [8000, 6000, 4000] and history == ["cli"] * 3
    assert gen.reload_config().defaults.timeout == 8000
