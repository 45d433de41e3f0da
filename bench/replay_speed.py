"""How fast the replay simulator runs, against its old breaker store in the same run.

The tuning notebook and ``imagegen_core.analysis.replay`` simulate thousands of races per candidate config, and
the simulator's circuit breakers keep their records in an :class:`~imagegen_core.breaker.InMemoryBreakerStore`.
That store used to keep each record as JSON (decoded on every read, encoded on every write); it now copies
records in and out. The baseline here is the JSON store, rebuilt below and swapped in for the same replays,
so the ratio is the gain of that change on today's machine.

Setup: the newsroom's config and latency profiles (``newsroom_config``, ``newsroom_profiles``: Replicate, fal
and Unsplash, hedged), ``--requests`` simulated requests back to back and at one request every 20 s (where
the breakers open and close), ``--rounds`` rounds alternating which store goes first.

Printed (Markdown): per pace and store the best and median seconds, the simulated requests a second, and the
ratio of the medians.

Run from the project root: ``.venv/bin/python bench/replay_speed.py`` (``--requests 2000`` for a smoke run).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from imagegen_core.analysis import newsroom_config, newsroom_profiles, racesim, replay
from imagegen_core.breaker import BreakerRecord, InMemoryBreakerStore, UpdateFn, log_transitions


class JsonBreakerStore(InMemoryBreakerStore):
    """The store as it was: each record kept as JSON, decoded for every reader (the baseline)."""

    def __init__(self, *, announce: bool = True) -> None:
        super().__init__(announce=announce)
        self._texts: dict[str, str] = {}  # the records as JSON; the parent's lock and transitions are used

    def get(self, provider: str) -> BreakerRecord | None:
        with self._lock:
            text = self._texts.get(provider)
        return BreakerRecord.from_json(text) if text is not None else None

    def all(self) -> dict[str, BreakerRecord]:
        with self._lock:
            items = list(self._texts.items())
        return {name: BreakerRecord.from_json(text) for name, text in items}

    def update(self, provider: str, fn: UpdateFn) -> BreakerRecord:
        with self._lock:
            text = self._texts.get(provider)
            record, transitions = fn(BreakerRecord.from_json(text) if text is not None else None)
            self._texts[provider] = stored = record.to_json()
            self._transitions.extend(transitions)
        if self._announce:
            log_transitions(record, transitions)
        return BreakerRecord.from_json(stored)


@contextmanager
def simulator_store(store: type[InMemoryBreakerStore]) -> Iterator[None]:
    """The simulator builds its breakers on ``store`` while inside."""
    shipped = racesim.InMemoryBreakerStore
    racesim.InMemoryBreakerStore = store  # type: ignore[misc]
    try:
        yield
    finally:
        racesim.InMemoryBreakerStore = shipped  # type: ignore[misc]


def timed_replay(store: type[InMemoryBreakerStore], requests: int, interval_ms: float | None) -> tuple[float, str]:
    """Seconds one replay takes with ``store``, and a fingerprint of its report (both stores must agree)."""
    config, profiles = newsroom_config(), newsroom_profiles()
    with simulator_store(store):
        started = time.perf_counter()
        report = replay(config, profiles, requests=requests, seed=7, interval_ms=interval_ms)
        elapsed = time.perf_counter() - started
    fingerprint = f"{report.success_rate:.6f}/{report.answer_p95_ms:.3f}/{report.skipped_per_request:.6f}"
    return elapsed, fingerprint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="simulated requests per replay")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, alternating which store goes first")
    args = parser.parse_args()
    stores = {"copies (shipped)": InMemoryBreakerStore, "JSON (baseline)": JsonBreakerStore}
    paces = {"back to back": None, "one every 20 s": 20_000.0}
    print(f"replay speed: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}")
    print(f"{args.requests} simulated requests per replay, {args.rounds} rounds\n")
    print("| pace | store | best s | median s | simulated requests/s |")
    print("|---|---|---:|---:|---:|")
    for pace, interval_ms in paces.items():
        times: dict[str, list[float]] = {name: [] for name in stores}
        fingerprints: set[str] = set()
        for round_ in range(args.rounds):
            order = list(stores) if round_ % 2 == 0 else list(reversed(stores))
            for name in order:
                elapsed, fingerprint = timed_replay(stores[name], args.requests, interval_ms)
                times[name].append(elapsed)
                fingerprints.add(fingerprint)
        if len(fingerprints) != 1:
            raise SystemExit(f"the two stores replayed differently ({pace}): {sorted(fingerprints)}")
        for name, seconds in times.items():
            median = statistics.median(seconds)
            print(f"| {pace} | {name} | {min(seconds):.2f} | {median:.2f} | {args.requests / median:,.0f} |")
        ratio = statistics.median(times["JSON (baseline)"]) / statistics.median(times["copies (shipped)"])
        print(f"| {pace} | **ratio** (baseline / shipped, medians) | | **{ratio:.2f}x** | |")


if __name__ == "__main__":
    main()
