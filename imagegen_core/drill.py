"""A scripted reliability drill: fake stand-ins for the configured providers, faults injected through the
config's ``chaos`` section, a batch of concurrent requests per fault, and a verdict per fault — answered by
the deadline, the right failure class in the log, no lost log row, no lost paid-for image.

It runs in a folder of its own (log DB, images, spool), never touching the real log or store, and makes no
network call: ``imagegen drill`` (:mod:`imagegen_core.cli_drill`) is safe on a production machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .breaker import TRANSITION_LOG
from .config import DEFAULT_DOCUMENT
from .errors import StorageError
from .log.queries import attempts_for, recent_requests
from .models import AttemptOutcome, GenerateResult
from .service import ImageGen
from .settings import Settings
from .storage import Store
from .storage.base import StoredObject
from .storage.local import LocalStore
from .storage.stats import StorageStats

#: Slack allowed past the deadline when measuring answers in real time.
DEADLINE_SLACK_MS = 50
_FINISHED_REQUEST = frozenset({"success", "failed", "cancelled"})


@dataclass(frozen=True, slots=True)
class Step:
    """One fault of the drill: the chaos faults per role (``primary``, ``backup``, ``all``), the failure class
    that must then appear in the log, and whether the requests must still get a provider's image."""

    fault: str
    chaos: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    expect_class: str | None = None
    expect_success: bool = True
    race: Mapping[str, Any] = field(default_factory=dict)
    store_down: bool = False


#: The script. Faults hit the first provider (``primary``) unless they say ``all``; the second one covers.
STEPS: tuple[Step, ...] = (
    Step("none (baseline)"),
    Step("latency +300 ms", {"primary": {"latencyMs": 300}}),
    Step("errors: transient", {"primary": {"errorRate": 1.0}}, "transient"),
    Step("errors: 429 + Retry-After", {"primary": {"errorRate": 1.0, "errorClass": "rate_limited"}}, "rate_limited"),
    Step("hang", {"primary": {"hangRate": 1.0}}, "timeout", race={"mode": "sequential"}),
    Step("corrupt payload", {"primary": {"corruptRate": 1.0}}, "transient"),
    Step("errors: auth (breaker opens)", {"primary": {"errorRate": 1.0, "errorClass": "auth"}}, "auth"),
    Step("every provider failing", {"all": {"errorRate": 1.0}}, "transient", expect_success=False),
    Step("store down (image spooled)", store_down=True, expect_success=False),
)


@dataclass(slots=True)
class DrillRow:
    """The verdict on one fault."""

    fault: str
    requests: int
    in_deadline: int
    max_ms: float
    classes: list[str]
    expected_class: str | None
    lost_rows: int
    lost_images: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        """True when nothing went wrong."""
        return not self.problems


class _DownStore:
    """A store whose uploads fail, the way an R2 outage looks to the service; reads go to the real one."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.name = store.name

    async def put(
        self, key: str, data: bytes, *, content_type: str, cache_control: str, metadata: dict[str, str]
    ) -> StoredObject:
        raise StorageError(f"drill: the store is down (upload of {key!r} refused)")

    async def exists(self, key: str) -> bool:
        return await self._store.exists(key)

    def url_for(self, key: str) -> str:
        return self._store.url_for(key)

    async def get(self, key: str) -> bytes:
        return await self._store.get(key)

    async def stats(self, *, prefix: str) -> StorageStats:
        return await self._store.stats(prefix=prefix)

    async def check(self) -> None:
        await self._store.check()


def drill_document(names: Sequence[str], step: Step, *, deadline_ms: int, seed: int) -> dict[str, Any]:
    """The runtime config for ``step``: only fakes named like ``names`` race, with the step's chaos faults."""
    providers: dict[str, Any] = {name: {"enabled": False} for name in DEFAULT_DOCUMENT["providers"]}
    chaos: dict[str, Any] = {}
    attempt_ms = max(100, deadline_ms * 2 // 5)
    for priority, name in enumerate(names, start=1):
        options = {"latencyMs": {"uniform": [20, 60]}, "seed": seed + priority}
        providers[name] = {"type": "fake", "enabled": True, "priority": priority, "timeout": attempt_ms}
        providers[name] |= {"retries": 1, "hedgeDelay": attempt_ms // 3, "options": options}
        role = "primary" if priority == 1 else "backup"
        fault = step.chaos.get("all") or step.chaos.get(role)
        if fault:
            chaos[name] = dict(fault)
    race = {"finalizeReserve": deadline_ms // 5, "backoffInitial": 20, "adaptiveHedge": False, **step.race}
    return {
        "providers": providers,
        "race": race,
        "defaults": {"timeout": deadline_ms},
        "breaker": {"minCalls": 3},
        "chaos": {"enabled": bool(chaos), "seed": seed, "providers": chaos},
    }


async def _timed(gen: ImageGen, prompt: str) -> tuple[GenerateResult, float]:
    started = time.perf_counter()
    result = await gen.generate({"prompt": prompt, "width": 320, "height": 200}, source="drill")
    return result, (time.perf_counter() - started) * 1000


async def _read_log(gen: ImageGen, results: Sequence[GenerateResult]) -> tuple[int, list[str]]:
    """Once the writer is flushed: log rows missing or left unfinished (one request row per request, one
    finished attempt row per attempt the request reported), and the failure classes the log holds."""
    await gen.flush()
    wanted = {r.request_id: r for r in results}
    rows = await asyncio.to_thread(recent_requests, gen.log, 10 * len(results) + 100)
    finished = {row["id"] for row in rows if row["id"] in wanted and row["status"] in _FINISHED_REQUEST}
    lost = len(wanted) - len(finished)
    classes: set[str] = set()
    for request_id, result in wanted.items():
        attempts = await asyncio.to_thread(attempts_for, gen.log, request_id)
        done = [a for a in attempts if a["outcome"] != AttemptOutcome.RUNNING.value]
        lost += max(0, len(result.attempts) - len(done))
        classes.update(str(a["failure_class"]) for a in done if a["failure_class"])
    return lost, sorted(classes)


async def _lost_images(gen: ImageGen, store: LocalStore, results: Sequence[GenerateResult]) -> int:
    """Images a provider delivered (and was paid for) that are neither stored nor kept in the spool. Read after
    the keeps under way at the answers finished (:func:`_read_log` flushes), the spool first: the background
    retry moves an image from there to the store (stored first, then dropped from the spool)."""
    spooled = {entry.metadata.get("request-id") for entry in await asyncio.to_thread(gen.spool.entries)}
    stored = await _stored_request_ids(store)
    lost = 0
    for result in results:
        if not any(a.outcome is AttemptOutcome.SUCCESS for a in result.attempts):
            continue  # nothing was delivered, nothing to keep
        lost += 0 if result.request_id in spooled or result.request_id in stored else 1
    return lost


async def _stored_request_ids(store: LocalStore) -> set[str]:
    """The requests whose image the drill's store holds, from each image's metadata. By key alone (the answer's)
    an image kept in the spool at its answer and uploaded since, under a key no answer gave, read as lost (QA:
    a drill of 200 requests at once failed with such "lost images")."""
    keys = await asyncio.to_thread(
        lambda: [path.relative_to(store.root).as_posix() for path in store.root.rglob("*.webp") if path.is_file()]
    )
    ids: set[str] = set()
    for key in keys:
        meta = await store.read_meta(key)
        request_id = meta.get("metadata", {}).get("request-id")
        if request_id:
            ids.add(str(request_id))
    return ids


async def run_step(
    gen: ImageGen, store: LocalStore, names: Sequence[str], step: Step, *, requests: int, deadline_ms: int, seed: int
) -> DrillRow:
    """Run ``requests`` concurrent requests under ``step``'s faults and judge them."""
    await asyncio.to_thread(
        gen.set_config, drill_document(names, step, deadline_ms=deadline_ms, seed=seed), source="drill"
    )
    await asyncio.to_thread(gen.breakers.reset_all, reason="drill: next fault")
    answers = await asyncio.gather(*(_timed(gen, f"drill {step.fault} #{i}") for i in range(requests)))
    results = [result for result, _ in answers]
    times = [ms for _, ms in answers]
    lost_rows, classes = await _read_log(gen, results)
    lost_images = await _lost_images(gen, store, results)
    in_deadline = sum(1 for ms in times if ms <= deadline_ms + DEADLINE_SLACK_MS)
    problems = []
    if in_deadline < requests:
        problems.append(f"{requests - in_deadline} answered after the deadline")
    if step.expect_class and step.expect_class not in classes:
        problems.append(f"{step.expect_class} not logged")
    if step.expect_success and not all(r.success for r in results):
        problems.append("a request got no image")
    if lost_rows or lost_images:
        problems.append("lost log rows or images")
    return DrillRow(
        step.fault, requests, in_deadline, max(times), classes, step.expect_class, lost_rows, lost_images, problems
    )


async def run_drill(
    home: Path, names: Sequence[str], *, requests: int = 6, deadline_ms: int = 1000, seed: int = 7
) -> list[DrillRow]:
    """Run every step of :data:`STEPS` in ``home`` (a scratch folder) and return one row per fault."""
    names = list(dict.fromkeys(names))[:3] or ["primary"]
    if len(names) < 2:
        names.append("backup" if names[0] != "backup" else "secondary")
    # Explicit database and store: the environment's IMAGEGEN_DATABASE_URL or R2_* must not be drilled.
    settings = Settings(_env_file=None, IMAGEGEN_HOME=str(home), IMAGEGEN_DATABASE_URL=f"sqlite:///{home / 'drill.db'}")
    store = LocalStore(home / "images")
    rows: list[DrillRow] = []
    with _quiet_breaker_log():
        for step in STEPS:
            gen = ImageGen.from_settings(
                settings, store=_DownStore(store) if step.store_down else store, source="drill"
            )
            try:
                await gen.warm_up()  # as `imagegen serve` does: the drill measures faults, not a cold start
                rows.append(
                    await run_step(gen, store, names, step, requests=requests, deadline_ms=deadline_ms, seed=seed)
                )
            finally:
                await gen.aclose()
    return rows


@contextlib.contextmanager
def _quiet_breaker_log() -> Iterator[None]:
    """The drill opens breakers on purpose, in its scratch log: their openings' warnings ("reset it with imagegen
    breakers reset …") would speak of breakers the user does not have."""
    level = TRANSITION_LOG.level
    TRANSITION_LOG.setLevel(logging.ERROR)
    try:
        yield
    finally:
        TRANSITION_LOG.setLevel(level)


def format_table(rows: Sequence[DrillRow], *, deadline_ms: int) -> str:
    """The drill's table: fault × answered in deadline × failure class logged × lost rows × lost images."""
    head = (
        f"{'fault':<30}{'in deadline':>12}{'max ms':>8}  {'failure class logged':<24}"
        f"{'lost rows':>10}{'lost images':>12}  result"
    )
    lines = [f"deadline {deadline_ms} ms (+{DEADLINE_SLACK_MS} ms slack)", head, "-" * len(head)]
    for row in rows:
        logged = ", ".join(row.classes) or "-"
        if row.expected_class:
            logged = logged if row.expected_class in row.classes else f"{logged} (want {row.expected_class})"
        verdict = "ok" if row.ok else "FAIL: " + "; ".join(row.problems)
        lines.append(
            f"{row.fault:<30}{f'{row.in_deadline}/{row.requests}':>12}{row.max_ms:>8.0f}  {logged:<24}"
            f"{row.lost_rows:>10}{row.lost_images:>12}  {verdict}"
        )
    return "\n".join(lines)
