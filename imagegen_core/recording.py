"""What the service writes to the log for one request: its row, its attempts, its end — redacted and
queued on the non-blocking :class:`~imagegen_core.log.writer.LogWriter`, in order."""

from __future__ import annotations

import concurrent.futures
import reprlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from .errors import clip, redact
from .log.db import LogDB
from .log.writer import LogWriter
from .models import AttemptOutcome, Attribution, GenerateRequest, GenerateResult
from .race import AttemptEvent
from .validation import ResolvedRequest


class _ShortRepr(reprlib.Repr):
    """How a refused request's field that is not a text is logged: a bounded repr (a list nested thousands
    deep, or a million items long, is cut to a few levels and items rather than blowing the stack or memory).
    Its texts are redacted before they are cut: a cut inside a secret would leave pieces of it."""

    def __init__(self, redact: Callable[[str], str]) -> None:
        super().__init__()
        self.maxlevel, self.maxlist, self.maxdict, self.maxother = 4, 10, 10, 200
        self.maxstring, self.maxlong = 200, 60
        self._redact = redact

    def repr_str(self, x: str, level: int) -> str:
        return super().repr_str(self._redact(x), level)

    # JSON's words for them, as the client sent them (QA: an articleId of true was logged as 'True').
    def repr_bool(self, x: bool, level: int) -> str:
        return "true" if x else "false"

    def repr_NoneType(self, x: None, level: int) -> str:  # reprlib names the method after the type
        return "null"


class RequestRecorder:
    """Writes requests and attempts to the log; every text passes through secret redaction first."""

    def __init__(self, log: LogDB, writer: LogWriter, secrets: list[str]) -> None:
        self.log = log
        self.writer = writer
        self._secrets = secrets
        self._short_repr = _ShortRepr(lambda text: redact(text, secrets))
        #: request id -> its attempts started and not ended (attempt id -> started_at): what
        #: :meth:`cancelled_by_closing` ends when closing cannot wait for the request any longer.
        self._open_attempts: dict[str, dict[str, float]] = {}
        #: Requests whose rows closing ended (:meth:`cancelled_by_closing`): what they log later is dropped, since
        #: the writer is closed by then (it raised into the request, or into the race's listener).
        self._ended_by_closing: set[str] = set()

    def redact(self, text: str | None) -> str | None:
        """``text`` with every configured secret replaced by ``***``."""
        return redact(text, self._secrets) if text else text

    def redact_request(self, resolved: ResolvedRequest) -> ResolvedRequest:
        """``resolved`` with every configured secret in its texts replaced by ``***``: a key pasted into a
        prompt, keyword or article id by mistake reaches no provider, URL, object metadata or log row."""
        if not self._secrets:
            return resolved
        return replace(
            resolved,
            prompt=self.redact(resolved.prompt) or "",
            final_prompt=self.redact(resolved.final_prompt) or "",
            keyword=self.redact(resolved.keyword),
            article_id=self.redact(resolved.article_id),
        )

    def redact_event(self, event: AttemptEvent) -> AttemptEvent:
        """``event`` with its error message redacted."""
        return replace(event, error=self.redact(event.error)) if event.error and self._secrets else event

    def started(
        self, request_id: str, resolved: ResolvedRequest, *, at: float, source: str
    ) -> concurrent.futures.Future[Any]:
        """The request passed validation: its row exists from now on (status ``running``); the future is done
        once the row is written."""
        return self.writer.submit(
            self.log.start_request,
            request_id,
            created_at=at,
            prompt=resolved.prompt,  # redacted on admission (redact_request)
            keyword=resolved.keyword,
            article_id=resolved.article_id,
            width=resolved.width,
            height=resolved.height,
            style=resolved.style,
            source=source,
        )

    def rejected(
        self, request_id: str, request: GenerateRequest | Mapping[str, Any], *, at: float, source: str, error: str
    ) -> concurrent.futures.Future[Any]:
        """The request failed validation: one row with status ``rejected`` and the reason; the future is done
        once the row is written."""
        return self._unadmitted(request_id, request, at=at, source=source, error=error, status="rejected")

    def cancelled_unadmitted(
        self, request_id: str, request: GenerateRequest | Mapping[str, Any], *, at: float, source: str
    ) -> concurrent.futures.Future[Any]:
        """The request's caller cancelled it while it was being admitted (an HTTP client that left with its
        request): one row with status ``cancelled``; the future is done once the row is written."""
        error = "cancelled by its caller before its race began"
        return self._unadmitted(request_id, request, at=at, source=source, error=error, status="cancelled")

    def _unadmitted(
        self,
        request_id: str,
        request: GenerateRequest | Mapping[str, Any],
        *,
        at: float,
        source: str,
        error: str,
        status: str,
    ) -> concurrent.futures.Future[Any]:
        # Anything may arrive here, a list or None included (the error says what it should have been).
        data: Mapping[str, Any] = {}
        if isinstance(request, GenerateRequest):
            data = dict(request)  # as it is: one made without validation may hold anything (model_copy)
        elif isinstance(request, Mapping):
            data = request

        def text(*names: str) -> str | None:
            value = next((data[n] for n in names if data.get(n) is not None), None)
            if value is None:
                return None
            # Not a text (the refusal says so): a short repr, which also survives nesting too deep for str().
            # Redacted before it is cut, so that no cut falls inside a secret.
            shown = clip(redact(value, self._secrets), 2000) if isinstance(value, str) else self._short_repr.repr(value)
            # A refused text may hold what the database cannot store (lone surrogates): kept visibly escaped.
            storable = shown.encode("utf-8", "backslashreplace").decode("utf-8")
            return self.redact(storable)

        def number(name: str) -> int | None:
            value = data.get(name)
            if not isinstance(value, int) or isinstance(value, bool):
                return None
            # A refused size may be any JSON integer; the column holds 64 bits (past that, the row was lost).
            return value if -(2**63) <= value < 2**63 else None

        return self.writer.submit(
            self.log.reject_request,
            request_id,
            created_at=at,
            prompt=text("prompt") or "",
            keyword=text("keyword"),
            article_id=text("article_id", "articleId"),
            width=number("width"),
            height=number("height"),
            style=text("style"),
            source=source,
            error=self.redact(error) or error,
            status=status,
        )

    def attempt(self, request_id: str, event: AttemptEvent) -> None:
        """An attempt started or ended (a skipped one does both at once)."""
        if request_id in self._ended_by_closing:
            return
        event = self.redact_event(event)
        if event.outcome is AttemptOutcome.RUNNING:
            self._open_attempts.setdefault(request_id, {})[event.attempt_id] = event.started_at
        else:
            self._open_attempts.get(request_id, {}).pop(event.attempt_id, None)
        if event.outcome in (AttemptOutcome.RUNNING, AttemptOutcome.SKIPPED):
            self.writer.submit(
                self.log.start_attempt,
                event.attempt_id,
                request_id=request_id,
                provider=event.provider,
                attempt=event.attempt,
                hedged=event.hedged,
                started_at=event.started_at,
            )
        if event.outcome is not AttemptOutcome.RUNNING:
            self.writer.submit(
                self.log.finish_attempt,
                event.attempt_id,
                finished_at=event.finished_at or event.started_at,
                outcome=event.outcome.value,
                failure_class=event.failure_class.value if event.failure_class else None,
                http_status=event.http_status,
                duration_ms=event.duration_ms,
                cost_usd=event.cost_usd,
                error=event.error,
                retry_after_ms=event.retry_after_ms,
            )

    def finished(
        self, request_id: str, result: GenerateResult | None, *, elapsed_ms: int, broke: Exception | None = None
    ) -> None:
        """The request ended with ``result``, or was cancelled before it had one (``result is None``), or an
        unexpected exception (``broke``, a defect) ended it: then ``failed``, saying so (QA: a crash in the race
        was logged as "request cancelled before it finished", as if the caller had left)."""
        if result is None and broke is not None:
            self.closed(
                request_id,
                status="failed",
                elapsed_ms=elapsed_ms,
                error=clip(f"internal error ({type(broke).__name__}: {broke})", 500),
                cost_usd=None,
            )
            return
        if result is None:
            self.closed(
                request_id,
                status="cancelled",
                elapsed_ms=elapsed_ms,
                error="request cancelled before it finished",
                cost_usd=None,  # what its attempts cost: they were paid for even though nobody got the image
            )
            return
        self.closed(
            request_id,
            status="success" if result.success else "failed",
            provider=result.provider,
            url=None if result.default_inline else result.url,  # an inline image (kBs of base64) has no address
            storage_key=result.key,
            elapsed_ms=result.elapsed_ms,
            error=result.error,
            cost_usd=result.cost_usd,
            attribution=result.attribution,
        )

    def closed(
        self,
        request_id: str,
        *,
        status: str,
        elapsed_ms: int,
        provider: str | None = None,
        url: str | None = None,
        storage_key: str | None = None,
        error: str | None = None,
        cost_usd: float | None = 0.0,
        at: float | None = None,
        attribution: Attribution | None = None,
    ) -> None:
        """Close the request's row (``success``, ``failed`` or ``cancelled``): what :meth:`finished` does for
        ``generate``, for the console's compare-and-pick, which has no single result. ``attribution``: the
        credit a stock photo must be published with, kept so that a later reuse of the image still has it."""
        if request_id in self._ended_by_closing:
            self._ended_by_closing.discard(request_id)
            return
        self._open_attempts.pop(request_id, None)
        self.writer.submit(
            self.log.finish_request,
            request_id,
            finished_at=at if at is not None else time.time(),
            status=status,
            provider=provider,
            url=url,
            storage_key=storage_key,
            elapsed_ms=elapsed_ms,
            error=self.redact(error),
            cost_usd=cost_usd,
            # JSON text: the writer may keep the call in its spill (JSON lines) while the database is away.
            attribution=attribution.to_log() if attribution is not None else None,
        )

    def cancelled_by_closing(self, request_id: str, *, elapsed_ms: int) -> None:
        """Closing cannot wait for the request any longer (it is under way on the loop closing blocks, or ignored
        its cancellation): its open attempts and its row end as ``cancelled`` now, while the writer still takes
        rows, rather than stay ``running`` for ever."""
        now = time.time()
        self._ended_by_closing.add(request_id)
        for attempt_id, started_at in self._open_attempts.pop(request_id, {}).items():
            self.writer.submit(
                self.log.finish_attempt,
                attempt_id,
                finished_at=now,
                outcome=AttemptOutcome.CANCELLED.value,
                duration_ms=round((now - started_at) * 1000),
                error="the ImageGen was closed while the attempt was under way",
            )
        self.writer.submit(
            self.log.finish_request,
            request_id,
            finished_at=now,
            status="cancelled",
            elapsed_ms=elapsed_ms,
            error="the ImageGen was closed while the request was under way",
            cost_usd=None,
        )

    def picked(
        self,
        request_id: str,
        *,
        provider: str,
        offered: Sequence[str],
        article_id: str | None,
        url: str | None,
        storage_key: str | None,
        at: float,
    ) -> None:
        """An editor chose ``provider``'s image among ``offered`` in the console's compare view."""
        self.writer.submit(
            self.log.record_pick,
            request_id,
            provider=provider,
            offered=offered,
            article_id=article_id,
            url=url,
            storage_key=storage_key,
            picked_at=at,
        )
