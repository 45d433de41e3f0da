"""Compare, then pick: the same prompt to every enabled provider at once, each answering on its own
(no race, nobody cancelled), so an editor can look at the results side by side and choose one.

Only the chosen image is stored; the choice is recorded in the log's ``picks`` table, which is how the
provider statistics learn editors' win rates. Used by the console's Compare page.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .errors import FailureClass, InvalidRequestError, UploadFailedError
from .listeners import notify
from .models import AttemptOutcome, Attribution, GenerateRequest, GenerateResult
from .providers.base import ProviderContext, ProviderOutput, confirms_use
from .race import AttemptEvent, Race
from .validation import ResolvedRequest, entry_named

if TYPE_CHECKING:
    from .config import RuntimeConfig
    from .service import ImageGen


class CandidateStatus(enum.StrEnum):
    """Where one provider's answer stands in a comparison."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    TIMED_OUT = "timed out"
    SKIPPED = "skipped"  # its circuit breaker is open


@dataclass
class Candidate:
    """One provider's answer in a comparison; ``image`` holds the normalised WebP until a pick stores it
    (None for a hotlink, whose ``url`` is then the image)."""

    provider: str
    status: CandidateStatus = CandidateStatus.QUEUED
    #: The time of its attempts so far (a retry's added to the first's; backoff pauses left out), as ``cost_usd``.
    elapsed_ms: int = 0
    cost_usd: float = 0.0
    error: str | None = None
    image: bytes | None = field(default=None, repr=False)  # tens of KB of WebP: not for a repr
    url: str | None = None
    width: int = 0
    height: int = 0
    model: str | None = None
    attribution: Attribution | None = None
    output: ProviderOutput | None = field(default=None, repr=False)
    #: Where a pick's failed upload was to store (and the spool keeps) the image: a second pick stores it there,
    #: not under a new key, which left two copies once the spool uploaded the first (QA).
    kept_key: str | None = None


@dataclass
class Comparison:
    """Every provider's answer to one request; ``picked`` names the providers whose image was stored (or is
    being stored), ``result`` is that pick's. A pick may come while other providers still run (``finished``
    is then False): they run on, and the comparison's row is closed by whichever of the two ends last."""

    request_id: str
    resolved: ResolvedRequest
    candidates: dict[str, Candidate]
    picked: list[str] = field(default_factory=list)
    result: GenerateResult | None = None
    finished: bool = False
    elapsed_ms: int = 0

    @property
    def offered(self) -> list[str]:
        """Providers that produced an image the editor could choose."""
        return [name for name, c in self.candidates.items() if c.status is CandidateStatus.DONE]


def _status(event: AttemptEvent) -> CandidateStatus:
    if event.outcome is AttemptOutcome.RUNNING:
        return CandidateStatus.RUNNING
    if event.outcome is AttemptOutcome.SUCCESS:
        return CandidateStatus.DONE
    if event.outcome is AttemptOutcome.SKIPPED:
        return CandidateStatus.SKIPPED
    if event.outcome is AttemptOutcome.CANCELLED or event.failure_class is FailureClass.TIMEOUT:
        return CandidateStatus.TIMED_OUT
    return CandidateStatus.FAILED


async def compare(
    gen: ImageGen,
    request: GenerateRequest | Mapping[str, Any],
    *,
    on_update: Callable[[Candidate], None] | None = None,
    on_start: Callable[[Comparison], None] | None = None,
    source: str = "compare",
) -> Comparison:
    """Ask every racing provider for ``request`` at once and wait for all of them (or the deadline).

    ``on_update`` is called with a provider's candidate whenever its status changes (queued → running →
    done / failed / timed out), "done" with its image attached, as soon as that provider has answered (the
    others may run on); from the event loop's thread. An exception it raises is logged, and the
    comparison goes on. ``on_start`` gets the comparison before any provider is asked: a done candidate can
    be picked (:func:`pick`) while the others run. Cancelled (or failed), the comparison's row ends as
    ``cancelled``; closing the ImageGen waits for a comparison under way, as for a generate.
    """
    loop = asyncio.get_running_loop()
    started_at, t0 = time.time(), loop.time()
    request_id, config, resolved = await gen._admit(request, at=started_at, source=source)
    opened: list[Comparison] = []

    def started(comparison: Comparison) -> None:
        opened.append(comparison)
        notify(on_start, comparison, name="on_start")

    with gen._under_way(request_id):  # closing waits for it, as for a generate
        try:
            comparison = await _ask_everyone(gen, request_id, config, resolved, on_update, started)
        except BaseException:  # cancelled (a task's cancel, a timeout) or failed: the row must not stay running
            if opened and opened[0].result is not None:  # ... but an image picked meanwhile went to the article
                _close_picked(gen, opened[0], opened[0].result)
            else:
                gen._recorder.finished(request_id, None, elapsed_ms=round((loop.time() - t0) * 1000))
            raise
    comparison.finished, comparison.elapsed_ms = True, round((loop.time() - t0) * 1000)
    if comparison.result is not None:  # picked while others ran: a success, now with every provider's cost
        _close_picked(gen, comparison, comparison.result)
    elif not comparison.picked:  # (a pick being stored now closes the row itself, see pick())
        _close_unpicked(gen, comparison)
    return comparison


def _total_cost(comparison: Comparison) -> float:
    return round(sum(c.cost_usd for c in comparison.candidates.values()), 6)


def _close_unpicked(gen: ImageGen, comparison: Comparison) -> None:
    """Close the row of a finished comparison nobody picked from: ``offered``, or ``failed`` without an image."""
    offered = comparison.offered
    gen._recorder.closed(
        comparison.request_id,
        status="offered" if offered else "failed",  # success only once an editor picks one
        elapsed_ms=comparison.elapsed_ms,
        error=None if offered else "no provider produced an image",
        cost_usd=_total_cost(comparison),
    )


def _close_picked(gen: ImageGen, comparison: Comparison, result: GenerateResult, *, at: float | None = None) -> None:
    """Close the row as the success of the pick ``result``, with the cost of every provider's answer so far."""
    gen._recorder.closed(
        comparison.request_id,
        status="success",
        provider=result.provider,
        url=result.url,
        storage_key=result.key,
        elapsed_ms=result.elapsed_ms,
        cost_usd=_total_cost(comparison),
        at=at,
        attribution=result.attribution,
    )


async def _ask_everyone(
    gen: ImageGen,
    request_id: str,
    config: RuntimeConfig,
    resolved: ResolvedRequest,
    on_update: Callable[[Candidate], None] | None,
    on_start: Callable[[Comparison], None],
) -> Comparison:
    """One single-entrant race per racing provider, all at once; the comparison as they left it."""
    entrants = gen._provider_set.entrants(config)  # not gen.entrants: it refuses once closing began
    comparison = Comparison(request_id, resolved, {e.name: Candidate(e.name) for e in entrants})
    on_start(comparison)
    for candidate in comparison.candidates.values():
        notify(on_update, candidate, name="on_update")

    def listener(event: AttemptEvent) -> None:
        event = gen._recorder.redact_event(event)
        gen._recorder.attempt(request_id, event)
        candidate = comparison.candidates[event.provider]
        status = _status(event)
        if status is CandidateStatus.SKIPPED and candidate.status in (
            CandidateStatus.FAILED,
            CandidateStatus.TIMED_OUT,
        ):
            # Its retry, skipped because its own failure opened the breaker: the card keeps saying how it failed
            # (it read "skipped: breaker open · 0 ms", the timeout hidden; QA).
            candidate.error = f"{candidate.error or candidate.status}; retry skipped: circuit breaker open"
            notify(on_update, candidate, name="on_update")
            return
        candidate.status = status
        # Its attempts' time, as its cost is theirs: each ended attempt adds its own (QA: after a retry the card
        # said "timed out · 3,001 ms · $0.0400", the last attempt's time beside both attempts' cost).
        candidate.elapsed_ms += event.duration_ms or 0
        candidate.cost_usd += event.cost_usd
        candidate.error = event.error
        if candidate.status is not CandidateStatus.DONE:  # "done" is announced with its image, by answer()
            notify(on_update, candidate, name="on_update")

    client = gen._client()
    steps = gen._race_steps(resolved, config, client)
    race: Race[Any] = Race(
        client=client,
        breakers=gen._gate,
        fetch=steps.fetch,
        finish=steps.finish,
        listener=listener,
        spawn=gen._spawn,
        linger=gen._linger,
    )
    # One single-entrant race per provider: each answers on its own, none is cancelled by another.
    plan = gen._provider_set.plan(config, deadline_s=config.defaults.timeout / 1000)

    async def answer(entrant: Any) -> None:
        job = resolved.job(request_id, plan.deadline_s, max_image_bytes=config.limits.max_download_bytes)
        result = await race.run(replace(plan, entrants=[entrant]), job)
        candidate = comparison.candidates[entrant.name]
        if result.winner is not None:
            # Filled (and announced) as soon as this provider's race ends, not when the slowest one's does: a
            # card showed "done" with no image for as long as another provider hung (QA).
            output, payload = result.winner.output, result.winner.payload
            candidate.image, candidate.output, candidate.model = payload.data, output, output.model
            candidate.width, candidate.height, candidate.attribution = payload.width, payload.height, output.attribution
            candidate.url = output.url if payload.data is None else None
            notify(on_update, candidate, name="on_update")
        elif candidate.status in (CandidateStatus.QUEUED, CandidateStatus.RUNNING):
            candidate.status = CandidateStatus.TIMED_OUT  # the deadline ended it between attempts
            candidate.error = result.error
            notify(on_update, candidate, name="on_update")

    await asyncio.gather(*(answer(entrant) for entrant in entrants))
    return comparison


async def pick(gen: ImageGen, comparison: Comparison, provider: str) -> GenerateResult:
    """Store ``provider``'s image from ``comparison`` as the article's image and record the pick. One pick per
    comparison: a request has one image, and a second pick would count as a second win."""
    if not isinstance(comparison, Comparison):  # QA: pick_sync(None) raised AttributeError: 'NoneType' ...
        raise InvalidRequestError(
            "comparison", f"expected the Comparison that compare() returned, got {type(comparison).__name__}"
        )
    if comparison.picked:
        raise InvalidRequestError(
            "provider", f"{comparison.picked[0]}'s image is already this article's: compare again to choose another"
        )
    # Named as generate's provider is, without regard to case (QA: "A" after comparing "a" and "b" was refused).
    if isinstance(provider, str):
        provider = entry_named(provider, comparison.candidates) or provider
    candidate = comparison.candidates.get(provider)
    if candidate is None or candidate.status is not CandidateStatus.DONE or candidate.output is None:
        raise InvalidRequestError("provider", f"{provider!r} has no image in this comparison to pick")
    config = gen.config
    # Reserved before the upload, in the same step as the check (no await between them): a second pick of
    # this comparison made meanwhile (two console tabs showing it, two editors with its link) is refused
    # instead of storing a second image and counting a second win.
    comparison.picked.append(provider)
    try:
        placed = await gen.delivery.place(
            request_id=comparison.request_id,
            provider=provider,
            output=candidate.output,
            webp=candidate.image,
            resolved=comparison.resolved,
            config=config,
            key=candidate.kept_key,
        )
    except BaseException as exc:
        comparison.picked.remove(provider)  # not stored: the editor may pick again
        if isinstance(exc, UploadFailedError) and exc.key is not None:
            candidate.kept_key = exc.key
        if comparison.finished:  # the comparison ended while this upload ran, and left the row to this pick
            _close_unpicked(gen, comparison)
        raise
    entrant = next((e for e in gen._provider_set.entrants(config) if e.name == provider), None)
    if entrant is not None and confirms_use(entrant.provider):  # Unsplash download tracking: the photo is now used
        gen._spawn(
            entrant.provider.confirm_use(candidate.output, ProviderContext(client=gen._client(), spawn=gen._spawn))
        )
    now = time.time()
    gen._recorder.picked(
        comparison.request_id,
        provider=provider,
        offered=comparison.offered,
        article_id=comparison.resolved.article_id,
        url=placed.url,
        storage_key=placed.key,
        at=now,
    )
    result = GenerateResult(
        url=placed.url,
        provider=provider,
        elapsed_ms=candidate.elapsed_ms,
        success=True,
        request_id=comparison.request_id,
        width=candidate.width,
        height=candidate.height,
        key=placed.key,
        content_type="image/webp" if placed.key else (candidate.output.content_type or "image/webp"),
        model=candidate.model,
        cost_usd=_total_cost(comparison),
        attribution=candidate.attribution,
    )
    comparison.result = result  # a comparison still running closes the row again when it ends, with its cost
    _close_picked(gen, comparison, result, at=now)
    return result
