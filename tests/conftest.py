"""Shared fixtures: every test runs with no provider keys, no IMAGEGEN_* settings from the developer's
environment, and its own IMAGEGEN_HOME."""

from __future__ import annotations

import gc
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imagegen_core.settings import Settings
from tests.pgcluster import db_url, logdb, postgres, postgres_url  # noqa: F401 (fixtures for every test)

_ENV_PREFIXES = ("IMAGEGEN_", "R2_")
_ENV_NAMES = (
    "REPLICATE_API_TOKEN",
    "FAL_KEY",
    "UNSPLASH_ACCESS_KEY",
    "OPENAI_API_KEY",
    "BFL_API_KEY",
    "STABILITY_API_KEY",
    "LOG_LEVEL",
    "FAL_KEY_ID",
    "FAL_KEY_SECRET",
)


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl+C reaches the processes the tests start, however the suite was launched. A shell without job control
    (``pytest ... &`` in a script, ``nohup``) starts its background commands with SIGINT ignored, every child
    inherits that, and the tests that stop a server or the console with Ctrl+C then saw them exit 0 instead of
    130. Python's own handler is reset to the default on ``exec``, so the children get the default again."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith(_ENV_PREFIXES) or name in _ENV_NAMES:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IMAGEGEN_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)  # no stray .env is read
    yield


@pytest.fixture(autouse=True)
def young_heap_only() -> Iterator[None]:
    """Each test's garbage collections walk only the objects made since it began (``gc.freeze()``, undone after
    it). Why: by the fault suite, this process holds ~1.1 M objects (the console's, the notebooks' and the
    analysis' libraries, earlier tests' leftovers) and a full collection of them takes ~1 s, measured; one that
    fell inside the 200-request load test stalled its client, whose answers then read as ~1 s late (a red CI).
    imagegen's own processes hold no such heap: ``imagegen serve`` freezes its ~90k start-up objects after its
    warm-up (and the README suggests the same to embedders)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@pytest.fixture
def settings_factory(tmp_path: Path) -> Callable[..., Settings]:
    """Settings for a test: a private home, no .env, extra values by env name (e.g. FAL_KEY=...)."""

    def make(**values: Any) -> Settings:
        values.setdefault("IMAGEGEN_HOME", str(tmp_path / "home"))
        return Settings(_env_file=None, **values)

    return make
