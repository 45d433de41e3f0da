"""Admin routes that change things: the runtime config (``GET|PUT|PATCH /admin/config``, its stored versions
``GET /admin/config/history`` and ``POST /admin/config/rollback``) and the circuit breakers
(``GET|POST /admin/circuit-breaker``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, ValidationError

from ..breaker import BreakerRecord, BreakView, ResetKind, reset_summary
from ..config import RuntimeConfig, unwrap_edited
from ..config_history import ConfigVersionInfo
from ..errors import ConfigError, ConfigVersionError, clip, redact, secret_forms
from ..service import ImageGen
from ..timestamps import iso
from ..validation import entry_named
from .auth import require_admin
from .context import Gen
from .errors import ApiError, error_responses, json_kind, read_json
from .routing import also_head

router = APIRouter(
    prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)], responses=error_responses(401, 403)
)

# -- runtime config -------------------------------------------------------------------------------------------


def _config_view(gen: ImageGen) -> dict[str, Any]:
    config = gen.reload_config()
    return _answer(gen, config)  # all from that one reload


def _answer(gen: ImageGen, config: RuntimeConfig) -> dict[str, Any]:
    # version: the newest stored id (what an edit is based on); inForceVersion: the one config comes from,
    # older while the newest stored version is invalid and ignored (None: the built-in defaults).
    return {
        "version": gen.config_version,
        "config": config.to_document(),
        "inForceVersion": gen.config_in_force_version,
    }


def _store_config(gen: ImageGen, document: Any, *, merge: bool) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise ConfigError("config document must be a JSON object", field="(root)")
    # What GET answered, edited and sent back: stored only if nobody stored a version since.
    document, based_on = unwrap_edited(document)
    document = restore_redacted(document, gen.config.to_document(), secret_forms(gen.secret_values()))
    try:
        config = gen.set_config(document, source="api", merge=merge, based_on=based_on)
    except ConfigVersionError as exc:  # a 422 (ConfigError), not a 409: re-reading would not help
        if exc.current:
            hint = f"the latest is {exc.current}); send back the version GET /admin/config answered"
        else:
            hint = "none is stored yet); send null"
        raise ConfigError(f"{exc.expected} does not exist ({hint}", field="version") from None
    return _answer(gen, config)  # the id this save got, in force


def restore_redacted(sent: Any, current: Any, forms: Sequence[str]) -> Any:
    """``sent`` with each text that is the config in force's text at the same place, as answers show it (every
    secret ``***``), given back as it is in force. Every answer of the API redacts secrets, so a value holding
    one came back from GET as ``***`` and a PUT of GET's answer stored that literally, a silent change (QA). A
    text edited otherwise is the editor's, ``***`` and all."""
    if isinstance(sent, Mapping) and isinstance(current, Mapping):
        return {key: restore_redacted(value, current.get(key), forms) for key, value in sent.items()}
    if isinstance(sent, list) and isinstance(current, list) and len(sent) == len(current):
        return [restore_redacted(value, was, forms) for value, was in zip(sent, current, strict=True)]
    if isinstance(sent, str) and isinstance(current, str) and sent != current and redact(current, forms) == sent:
        return current
    return sent


_CONFIG_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object", "description": "A runtime config document"}}},
    }
}
_CONFIG_ERRORS = error_responses(400, 408, 409, 413, 415, 422)


@router.get("/config", summary="The runtime config in force")
async def get_config(gen: Gen) -> dict[str, Any]:
    """``{version, config}``: the full document in force (camelCase keys, times in ms)."""
    return await gen.log_call(lambda: _config_view(gen))


@router.put("/config", summary="Replace the runtime config", responses=_CONFIG_ERRORS, openapi_extra=_CONFIG_BODY)
async def put_config(request: Request, gen: Gen) -> dict[str, Any]:
    """Replace the config: the document deep-merges over the built-in defaults (not over the current config),
    is validated, stored as a new version and used by the next request of every process. An invalid document
    answers 422 naming the field, and the config in force does not change. GET's ``{version, config}`` may be
    sent back as it is: then it is stored only if ``version`` is still the newest, else 409 (422 for a version
    that was never stored)."""
    document = await read_json(request)
    return await gen.log_call(lambda: _store_config(gen, document, merge=False))


@router.patch(
    "/config", summary="Change part of the runtime config", responses=_CONFIG_ERRORS, openapi_extra=_CONFIG_BODY
)
async def patch_config(request: Request, gen: Gen) -> dict[str, Any]:
    """Deep-merge the document over the config in force, e.g. ``{"providers": {"fal": {"timeout": 8000}}}``;
    validated and stored like PUT (422 naming the field; nothing changes on error)."""
    document = await read_json(request)
    return await gen.log_call(lambda: _store_config(gen, document, merge=True))


@router.get("/config/history", summary="The stored config versions, newest first")
async def get_config_history(
    gen: Gen, limit: Annotated[int, Query(ge=1, le=1000, description="Versions listed")] = 20
) -> dict[str, Any]:
    """``{versions: [{version, storedAt, source, changes, summary, valid, error, inForce}]}``, newest first:
    ``changes`` are the keys that differ from the version before (null for the first one stored), ``valid``
    whether this server would accept it now (``error`` says why not). Any valid one can be rolled back to."""
    versions = await gen.log_call(lambda: gen.config_history(limit))
    return {"versions": [_version_view(v) for v in versions]}


def _version_view(info: ConfigVersionInfo) -> dict[str, Any]:
    return {
        "version": info.version,
        "storedAt": iso(info.stored_at),
        "source": info.source,
        "changes": info.changes,
        "summary": info.summary(),
        "valid": info.error is None,
        "error": info.error,
        "inForce": info.in_force,
    }


class RollbackBody(BaseModel):
    """``POST /admin/config/rollback`` body."""

    model_config = ConfigDict(extra="forbid", strict=True)

    version: int


@router.post(
    "/config/rollback",
    summary="Store an old config version again as the newest",
    responses=error_responses(400, 408, 413, 415, 422),
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": RollbackBody.model_json_schema()}}}
    },
)
async def rollback_config(request: Request, gen: Gen) -> dict[str, Any]:
    """``{"version": N}``: version N's document is validated like a PUT and stored as a new version (none when it
    is the document in force), used by the next request of every process; answers like GET. A version never
    stored, or one this server refuses now, answers 422 naming ``version``, and nothing changes."""
    data = await read_json(request)
    if not isinstance(data, dict):
        raise ApiError(400, f"expected a JSON object, got {json_kind(data)}", field="body")
    try:
        body = RollbackBody.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ApiError(400, err["msg"], field=".".join(str(p) for p in err["loc"]) or "body") from None

    def roll_back() -> dict[str, Any]:
        return _answer(gen, gen.rollback_config(body.version, source="api"))

    return await gen.log_call(roll_back)


# -- circuit breakers -----------------------------------------------------------------------------------------


class BreakerAction(BaseModel):
    """``POST /admin/circuit-breaker`` body."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["reset", "reset-all", "force-open"]
    provider: str | None = None


def break_fields(brk: BreakView | None) -> dict[str, Any]:
    """``openedUntil`` and ``breakOver`` of a breaker whose break is ``brk`` (see ``open_break``): what admission
    does, so that a break it counts as over (elapsed, or begun before the clock stepped back) is never shown as
    running until a time ahead. ``openedUntil`` is null unless the breaker is open, and when the clock went back
    since its break began (its stored end means nothing then)."""
    return {"openedUntil": iso(brk.until) if brk else None, "breakOver": brk.over if brk else False}


def _record_view(record: BreakerRecord, brk: BreakView | None) -> dict[str, Any]:
    """One provider's breaker; ``brk``, its break as admission treats it now (see ``open_break``)."""
    return {
        "state": str(record.state),
        "trips": record.trips,
        "openedAt": iso(record.opened_at),
        **break_fields(brk),
        "lastReason": record.last_reason or None,
        "windowCalls": len(record.window),
        "windowFailures": sum(1 for _, failed in record.window if failed),
        "updatedAt": iso(record.updated_at or None),
    }


def _known(gen: ImageGen) -> list[str]:
    return sorted(set(gen.reload_config().providers) | set(gen.breakers.snapshot()))


def _breakers_view(gen: ImageGen, limit: int = 50) -> dict[str, Any]:
    records = [(name, gen.breakers.state(name)) for name in _known(gen)]
    return {
        "providers": {name: _record_view(record, gen.breakers.open_break(record)) for name, record in records},
        "transitions": [
            {
                "provider": t.provider,
                "from": str(t.from_state),
                "to": str(t.to_state),
                "reason": t.reason,
                "at": iso(t.at),
            }
            for t in gen.breakers.transitions(limit=limit)
        ],
    }


def _apply(gen: ImageGen, body: BreakerAction) -> dict[str, Any]:
    if body.action == "reset-all":
        if body.provider is not None:
            raise ApiError(400, "reset-all resets every breaker: leave provider out, or use reset", field="provider")
        outcomes = gen.breakers.reset_all(reason="reset by admin (API)")  # a provider without a stored record is closed
        summary = reset_summary(outcomes, _known(gen))
        # Beside the contract's view: which were reset (a transition), which only had their window cleared
        # (closed all along: no transition), which were clean already.
        done = {
            "reset": summary[ResetKind.RESET],
            "windowCleared": summary[ResetKind.CLEARED],
            "alreadyClean": summary[ResetKind.CLEAN],
        }
        return {**_breakers_view(gen), "resetAll": done}
    known = _known(gen)
    if not body.provider:
        raise ApiError(400, f"action {body.action!r} needs a provider; known: {', '.join(known)}", field="provider")
    provider = entry_named(body.provider, known)
    if provider is None:
        raise ApiError(
            400, f"unknown provider {clip(body.provider, 60)!r}; known: {', '.join(known)}", field="provider"
        )
    if body.action == "reset":
        gen.breakers.reset(provider, reason="reset by admin (API)")
    else:
        gen.breakers.force_open(provider, reason="forced open by admin (API)")
    return _breakers_view(gen)


@router.get("/circuit-breaker", summary="Breaker state per provider and recent transitions")
async def get_breakers(gen: Gen) -> dict[str, Any]:
    """``{providers: {name: {state, trips, openedUntil, lastReason, windowCalls, windowFailures, …}},
    transitions: [newest first]}``."""
    return await gen.log_call(lambda: _breakers_view(gen))


@router.post(
    "/circuit-breaker",
    summary="Reset or force open a breaker",
    responses=error_responses(400, 408, 413, 415),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": BreakerAction.model_json_schema()}},
        }
    },
)
async def post_breakers(request: Request, gen: Gen) -> dict[str, Any]:
    """``{"action": "reset", "provider": NAME}``, ``{"action": "reset-all"}`` or
    ``{"action": "force-open", "provider": NAME}`` (denies calls until reset). Answers the new states; reset-all
    also ``resetAll: {reset, windowCleared, alreadyClean}`` (provider names)."""
    data = await read_json(request)
    if not isinstance(data, dict):  # pydantic would say "a valid dictionary or instance of BreakerAction"
        raise ApiError(400, f"expected a JSON object, got {json_kind(data)}", field="body")
    try:
        body = BreakerAction.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "body"
        raise ApiError(400, err["msg"], field=field) from None
    return await gen.log_call(lambda: _apply(gen, body))


also_head(router)
