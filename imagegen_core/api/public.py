"""Public routes: ``POST /images/generate`` (the Worker's contract), ``GET /health``, ``GET /health/live`` and
``GET /config``."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from ..config import RateLimitConfig
from ..delivery import DEFAULT_INLINE_ERROR
from ..errors import DuplicateRequestIdError, InvalidRequestError, clip
from ..models import IMAGE_URL_KEYS, GenerateRequest, GenerateResult
from .auth import require_api_token
from .context import Ctx, Gen, get_ctx, get_gen
from .errors import CLIENT_CLOSED, ApiError, error_responses, json_kind, read_json
from .middleware import CLIENT_SHUT_SENDING
from .probes import check_db, check_spool, read_breakers
from .ratelimit import TokenBucketLimiter
from .routing import also_head

router = APIRouter()
_log = logging.getLogger("imagegen.api")
T = TypeVar("T")

#: What a caller is told when a provider's image could not be stored (the default image is answered).
STORE_FAILED_ERROR = (
    "the image was made but could not be stored; it is kept and will be uploaded later (see the server log)"
)
#: ... when keeping it was still under way at the deadline (QA: waiting for it answered past the deadline; the
#: answer cannot claim it is kept yet: the server log says once it is).
STORE_KEEPING_ERROR = (
    "the image was made but could not be stored; keeping it for a later upload was still under way when the "
    "answer was due (see the server log)"
)
#: ... and when the spool could not keep it either (QA: the answer said "kept" of an image that was lost).
IMAGE_LOST_ERROR = "the image was made but could neither be stored nor kept for a later upload (see the server log)"


async def rate_limit(request: Request) -> None:
    """Per-client token bucket from the runtime config's ``rateLimit``; 429 with ``Retry-After`` (whole seconds)
    when the client's bucket is empty. On SQLite it decides on the newest config (the change stamp says when to
    read it: a memory read otherwise), so limiting switched on by another process or worker applies from its
    next request (QA: each process let one more through). On a server database it decides on the config in
    force without a round trip (a change stored elsewhere applies from this process's next generate on), and
    reads the newest config before refusing: a refused request reaches no generate, so limiting switched off
    (or loosened) by another process or worker stayed on here until a token came back."""
    ctx, gen = get_ctx(request), get_gen(request)
    client = request.client.host if request.client else "unknown"
    fresh = gen.log.change_token() is not None  # SQLite: looking costs a memory read while nothing changed
    limits = (await gen.current_config()).rate_limit if fresh else gen.config.rate_limit
    wait_s = _rate_limit_wait(ctx.limiter, client, limits)
    if wait_s > 0 and not fresh:  # (fresh: read just now)
        limits = (await gen.current_config()).rate_limit
        wait_s = _rate_limit_wait(ctx.limiter, client, limits)
    if wait_s > 0:
        retry_after = max(1, math.ceil(wait_s))
        raise ApiError(
            429,
            f"rate limit exceeded ({limits.requests_per_minute} requests per minute, burst {limits.burst}); "
            f"retry after {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )


def _rate_limit_wait(limiter: TokenBucketLimiter, client: str, limits: RateLimitConfig) -> float:
    """Seconds until ``client`` may call under ``limits`` (0.0: now, and a token is taken)."""
    if not limits.enabled:
        return 0.0
    return limiter.acquire(client, rate_per_s=limits.requests_per_minute / 60, burst=limits.burst)


#: The fields a generate body may name: each of GenerateRequest's, by its JSON name or its Python one, and the
#: Worker's imageUrl (which GenerateRequest refuses in words).
_BODY_FIELDS = frozenset(
    {name for field_name, info in GenerateRequest.model_fields.items() for name in (field_name, info.alias) if name}
    | set(IMAGE_URL_KEYS)
)
#: What the API answers, in ``notes``, of fields it does not take.
IGNORED_FIELDS_NOTE = "fields this API does not take were ignored (as the Worker ignored them): {names}"


def _generate_body_schema() -> dict[str, Any]:
    schema = GenerateRequest.model_json_schema(by_alias=True)
    schema["additionalProperties"] = True  # ignored, with a note (see generate)
    return schema


_GENERATE_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": _generate_body_schema()}}}
}


@router.post(
    "/images/generate",
    summary="Generate an image (the Worker's contract)",
    dependencies=[Depends(rate_limit), Depends(require_api_token)],
    responses={200: {"model": GenerateResult}, **error_responses(400, 401, 408, 409, 413, 415, 429)},
    openapi_extra=_GENERATE_BODY,
)
async def generate(request: Request, gen: Gen) -> Response:
    """Race the providers and answer ``{url, provider, elapsedMs, success, error?}`` plus extras (requestId,
    attribution, attempts, …). A total failure still answers 200, with the default image and
    ``success: false``; invalid input answers 400 naming the field."""
    # The body is read here, after the rate limit and the token check, so an unauthenticated caller learns
    # nothing from body errors; then the service validates it (and logs a rejection).
    try:
        data = await read_json(request)
        if not isinstance(data, dict):
            raise ApiError(400, f"expected a JSON object, got {json_kind(data)}", field="body")
    except ApiError as exc:
        if exc.status_code == 400:  # a body read and refused; 413 and 415 are refused unread (server log only)
            request.state.outcome = "rejected"
            request.state.request_id = gen.reject_unreadable(exc.body()["error"], source="api")
        raise
    # Fields the API does not take are left out and named in the answer's notes: the Worker ignored them, and a
    # CMS sending one more (a title, a tracking id) got a 400 and no image from imagegen (QA). The Python API
    # refuses them, as a typo in code should be.
    ignored = [key for key in data if key not in _BODY_FIELDS]
    if ignored:
        data = {key: value for key, value in data.items() if key in _BODY_FIELDS}
    # Under an id given out as X-Request-ID before the work starts: a request cancelled before it answers (a
    # forced shutdown's 503) must name the row that says so, as an answered one does. Made by the service, it
    # is new: generate takes it without looking it up in the log.
    request.state.request_id = gen.new_request_id()
    try:
        result = await until_client_leaves(
            request,
            gen.generate(
                data,
                source="api",
                received_at=getattr(request.state, "received_at", None),
                request_id=getattr(request.state, "request_id", None),
            ),
        )
    except InvalidRequestError as exc:
        request.state.outcome = "rejected"
        request.state.request_id = exc.request_id or request.state.request_id  # X-Request-ID names its row
        raise ApiError(400, exc.reason, field=exc.field) from None
    except DuplicateRequestIdError as exc:
        # The id names another request's row: this one is logged as rejected under a new id, which the answer
        # names (every answer's X-Request-ID has its own row).
        request.state.outcome = "rejected"
        request.state.request_id = gen.reject_unreadable(str(exc), source="api", request=data)
        raise ApiError(
            409, "the id made for this request names another request already; retry", field="requestId"
        ) from None
    request.state.request_id = result.request_id
    request.state.outcome = "success" if result.success else "failed"
    request.state.winner = result.provider
    answer = result.to_wire()
    if ignored:
        names = ", ".join(repr(clip(key, 40)) for key in ignored[:10]) + (", …" if len(ignored) > 10 else "")
        answer["notes"] = [*answer.get("notes", []), IGNORED_FIELDS_NOTE.format(names=names)]
    if result.store_failed:
        # The full text names the store's endpoint and the object key: the server log keeps it, as for a 503.
        _log.error("request %s: %s", result.request_id, result.error)
        answer["error"] = _store_failed_error(result)
    response: Response = request.app.router.default_response_class(answer)
    return response


def _store_failed_error(result: GenerateResult) -> str:
    """What a caller is told of an image the store refused: kept, being kept, or lost."""
    if result.image_kept:
        said = STORE_FAILED_ERROR
    else:
        said = STORE_KEEPING_ERROR if result.image_keeping else IMAGE_LOST_ERROR
    return f"{said}; {DEFAULT_INLINE_ERROR}" if result.default_inline else said


#: The 499's message: a client that only shut its sending side reads it (it still can).
CLIENT_LEFT_ERROR = (
    "the client closed the connection (or its sending side) before the answer, so the race was cancelled;"
    " keep the connection open until the answer comes"
)


async def until_client_leaves(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """``work``'s result, unless the client disconnects first: then ``work`` is cancelled (its request is
    logged ``cancelled``, a Replicate prediction under way is cancelled, an image being stored is kept in the
    spool) and :class:`ApiError` :data:`CLIENT_CLOSED` is raised (server log only: nobody is there to answer).

    Why: a CMS that gave up waiting (its own timeout, an editor who left) never reads the answer, and its race
    went on spending on providers for nothing. (A Cloudflare Worker, which this API replaces, is cancelled the
    same way when its client disconnects.) It costs about 20 µs per request."""
    task = asyncio.ensure_future(work)
    left = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait((task, left), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the server stops the request (a forced shutdown): the work ends with it
        task.cancel()
        await asyncio.wait((task,))
        raise
    finally:
        left.cancel()
    if not task.done():
        task.cancel()
        await asyncio.wait((task,))
        request.state.outcome = "cancelled"
        raise ApiError(CLIENT_CLOSED, CLIENT_LEFT_ERROR)
    return task.result()


async def _disconnect(request: Request) -> None:
    """Returns once the client has disconnected, or closed its sending side (an end-of-file: a client that
    closes its connection normally sends nothing else; see ``api/http11.py``). Called after the body was read:
    the server then has nothing else to deliver until the answer is sent."""
    # Looked at before each wait too: the end-of-file may have come with the request, its wake-up taken by the
    # body's read.
    while not request.scope.get("state", {}).get(CLIENT_SHUT_SENDING):
        if (await request.receive())["type"] == "http.disconnect":
            return


@router.get("/health/live", summary="Liveness: the process answers (no I/O)")
async def live() -> dict[str, str]:
    """Always ``{"status": "ok"}`` while the process serves requests."""
    return {"status": "ok"}


@router.get("/health", summary="Readiness: log DB, store and breakers", responses=error_responses(503))
async def health(request: Request, ctx: Ctx, gen: Gen) -> Response:
    """200 when the log DB answers and takes writes, the store is writable and the upload spool usable (else the
    next store outage loses paid-for images), else 503; breaker states are reported (an open breaker degrades one
    provider, not the service). The store's answer is reused for ``STORE_CHECK_TTL_S`` (5 s), failures too."""
    # At once: with both hanging, one after the other took twice the probe's wait.
    # The store's answer may be a few seconds old (STORE_CHECK_TTL_S): each R2 check is a billed listing.
    probes = (check_db(gen), ctx.store_checks.check(gen.store), check_spool(gen.spool))
    db, store, spool = await asyncio.gather(*probes)
    breakers: dict[str, Any] | None = None
    if db["schemaVersion"] is not None:  # breaker state lives in the log DB (readable while writes fail)
        breakers = await read_breakers(gen)
        db["ok"] = db["ok"] and breakers is not None
    healthy = db["ok"] and store["ok"] and spool["ok"]
    checks = {"logDb": db, "store": store, "spool": spool}
    body = {"status": "ok" if healthy else "unhealthy", "checks": checks, "breakers": breakers}
    response: Response = request.app.router.default_response_class(body, status_code=200 if healthy else 503)
    return response


@router.get("/config", summary="Public settings (never a secret)")
async def public_config(ctx: Ctx, gen: Gen) -> dict[str, Any]:
    """What a client may know: providers (enabled, priority, timeouts, retries), race mode, request defaults
    and limits, style names, store kind, whether generate needs a token, the rate limit. Built field by field
    from an allow-list: no secret, token or key — not even masked — and no provider options."""
    config = await gen.current_config()  # another process may have stored a new version
    return {
        "providers": [
            {
                "name": name,
                "enabled": pc.enabled,
                "priority": pc.priority,
                "timeoutMs": pc.timeout,
                "retries": pc.retries,
            }
            for name, pc in sorted(config.providers.items(), key=lambda kv: (kv[1].priority, kv[0]))
        ],
        "race": {"mode": config.race.mode, "hedgeDelayMs": config.race.hedge_delay},
        "defaults": {
            "timeoutMs": config.defaults.timeout,
            "width": config.defaults.width,
            "height": config.defaults.height,
        },
        "limits": {
            "maxPromptLength": config.limits.max_prompt_length,
            "minSize": config.limits.min_size,
            "maxSize": config.limits.max_size,
            "maxBodyBytes": ctx.settings.max_body_bytes,
        },
        "styles": sorted(config.styles),
        "storage": {"kind": getattr(gen.store, "name", "unknown")},
        "auth": {"generateRequiresToken": bool(ctx.settings.api_token and ctx.settings.api_token.get_secret_value())},
        "rateLimit": {
            "enabled": config.rate_limit.enabled,
            "requestsPerMinute": config.rate_limit.requests_per_minute,
            "burst": config.rate_limit.burst,
        },
    }


also_head(router)
