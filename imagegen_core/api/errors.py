"""The API's one error shape, ``{"error": "<field>: <message>", "field": "<field>"}``, and the handlers that
put every failure into it: our own refusals, FastAPI's validation lists, Starlette's 404/405, the core's
exceptions, and anything unexpected (a 500 without a traceback in the body).

Status codes: 400 bad input (the Worker's choice, kept for its clients), 401 missing or wrong token, 403 a
feature switched off, 404, 408 the body did not arrive in time, 413 body too large, 415 not JSON, 422 an
invalid config document, 429 rate limited, 503 the log DB or the store is unavailable; 499 (server log only)
the client left before its body arrived, or before a generate's answer (its race is cancelled).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import Match

from ..errors import (
    ConfigConflictError,
    ConfigError,
    InvalidRequestError,
    LogDatabaseError,
    StorageError,
    clip,
)
from ..json_text import JsonTextError, parse_json_text

_log = logging.getLogger("imagegen.api")

#: The status logged for a request whose client went away before its body was read, or before a generate's
#: answer (nginx's "client closed request"): nobody is there to answer, and it is neither our fault (5xx) nor a
#: refusal of the input.
CLIENT_CLOSED = 499


class ErrorBody(BaseModel):
    """Every error response: a one-line message (prefixed by the field when one is to blame) and the field."""

    error: str
    field: str | None = None


class ApiError(StarletteHTTPException):
    """A refusal with a status, a message and, for bad input, the field to blame.

    A Starlette ``HTTPException``, so FastAPI lets it through when it is raised while the body is read."""

    def __init__(
        self, status_code: int, message: str, *, field: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status_code, detail=message, headers=headers)
        self.message = message
        self.field = field

    def body(self) -> dict[str, Any]:
        """The JSON body."""
        return {"error": f"{self.field}: {self.message}" if self.field else self.message, "field": self.field}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting the error shape for ``codes``."""
    return {code: {"model": ErrorBody} for code in codes}


async def read_json(request: Request) -> Any:
    """The request body parsed as JSON. Refuses (as :class:`ApiError`) a body that is not declared as JSON
    (415: a browser cannot then send it cross-site without a CORS preflight), empty, or refused by
    :func:`~imagegen_core.json_text.parse_json_text` (400: not UTF-8, malformed, too deep, NaN/Infinity, an
    object giving a key twice: a CMS's two ``prompt`` keys must not pass as the last one). A client that
    disconnects before its body has arrived gets :data:`CLIENT_CLOSED` (in the log only)."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise ApiError(415, "send a JSON document with Content-Type: application/json", field="body")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":  # QA: a gzipped body was refused as "not valid UTF-8"
        raise ApiError(
            415, f"Content-Encoding {clip(encoding, 40)!r} is not taken: send the JSON uncompressed", field="body"
        )
    try:
        raw = await request.body()
    except ClientDisconnect:
        raise ApiError(CLIENT_CLOSED, "the client disconnected before its body was read", field="body") from None
    if not raw.strip():
        raise ApiError(400, "the request body is empty; expected a JSON object", field="body")
    try:
        return parse_json_text(raw)
    except JsonTextError as exc:
        raise ApiError(400, str(exc), field="body") from None


def json_kind(value: Any) -> str:
    """What a parsed JSON value is, in JSON's words (``null``, ``an array``, ``true``), for messages: a caller
    knows the document it sent, not the Python types it became."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _field_of(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    """Route every failure into :class:`ErrorBody`; responses go through the app's response class."""
    respond = app.router.default_response_class

    def reply(status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> Response:
        response: Response = respond(body, status_code=status, headers=dict(headers or {}))
        return response

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return reply(exc.status_code, exc.body(), exc.headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = _field_of(first.get("loc", ()))
        return reply(400, ApiError(400, str(first.get("msg")), field=field).body())

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        headers = exc.headers
        if exc.status_code == 405:
            # Starlette's Allow names the first route on the path; GET and PUT of one path are two routes here.
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return reply(exc.status_code, {"error": str(exc.detail), "field": None}, headers)

    async def invalid_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, InvalidRequestError)
        return reply(400, ApiError(400, exc.reason, field=exc.field).body())

    async def config_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ConfigError)
        status = 409 if isinstance(exc, ConfigConflictError) else 422
        # The CLI's line says "invalid config: <field>: <message>"; here the status says it already.
        field = "body" if exc.field == "(root)" else exc.field
        message = str(exc).removeprefix("invalid config: ")
        if exc.field:
            message = message.removeprefix(f"{exc.field}: ")
        return reply(status, ApiError(status, message, field=field).body())

    async def unavailable(request: Request, exc: Exception) -> Response:
        # The detail names files and folders: it goes to the server log, not to the caller.
        what = "log database" if isinstance(exc, LogDatabaseError) else "image store"
        _log.error("%s unavailable: %s", what, exc)
        return reply(503, {"error": f"the {what} is unavailable; see the server log", "field": None})

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(InvalidRequestError, invalid_request)
    app.add_exception_handler(ConfigError, config_error)
    app.add_exception_handler(LogDatabaseError, unavailable)
    app.add_exception_handler(StorageError, unavailable)


#: The methods a 405's Allow may name.
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _allowed_methods(request: Request) -> list[str]:
    """Every method that some route of the app takes on the request's path (HEAD with GET), sorted. Each is
    asked of the routes as the router itself does (``matches``), included routers too."""
    routes = request.app.router.routes
    methods = {
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    }
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)
