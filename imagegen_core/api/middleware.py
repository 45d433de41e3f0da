"""Pure ASGI middleware (no BaseHTTPMiddleware: it buffers and breaks streaming): the request body cap, the
one-line-per-request JSON log, and CORS with refusals in the API's error shape."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..ids import new_id
from .errors import ApiError

_log = logging.getLogger("imagegen.api")


#: A refused body up to this size (or the cap, if larger) is read and dropped before the refusal is sent; a
#: larger one is refused at once and its connection closed.
DRAIN_MIN_BYTES = 1 << 20
#: How long a refusal waits for the body it drains: a client that declared a body and sends none (or
#: dribbles it) gets its refusal after this, and the connection is closed, rather than holding it open.
DRAIN_TIMEOUT_S = 5.0
#: How long a route waits for the whole body of a request, from its arrival: a client that declares a body
#: and sends it slowly or not at all gets a 408 after this. Without it, such a client held its request
#: (and a worker's graceful shutdown: SIGTERM waits for every request in flight) for as long as it liked.
BODY_TIMEOUT_S = 10.0


def _relative_location(header: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    """A ``Location`` header as a path (and query) on this server. Starlette builds the absolute URL of a
    trailing-slash redirect from the request's ``Host`` header, so ``Host: evil.example`` got a redirect there
    (QA); a relative one stays on the server the client reached."""
    name, value = header
    if name.lower() != b"location":
        return header
    parts = urlsplit(value.decode("latin-1"))
    return name, urlunsplit(("", "", parts.path or "/", parts.query, "")).encode("latin-1")


#: The answer to a request that declares its body's length both ways.
BOTH_FRAMINGS_ERROR = "the request has both Content-Length and Transfer-Encoding; send only one"


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413 and the API's error shape, and read what a refusal
    left unread before it is sent.

    A declared ``Content-Length`` over the cap is refused before the app runs (nothing is parsed); a chunked
    body is counted as it arrives and the read that crosses the cap raises :class:`ApiError` (413) in the app.
    A body still incomplete :data:`BODY_TIMEOUT_S` after the request arrived raises :class:`ApiError` (408),
    and its connection is closed after the answer.

    A refusal sent before the body has arrived (413, or a route answering without reading it: 401, 404, 405,
    415, 429) left the rest unread, so uvicorn closed the connection after the answer while bytes were still
    coming; the kernel then resets it, and the client could lose the answer it was reading ("connection reset
    by peer" instead of its 4xx). So the body, up to :data:`DRAIN_MIN_BYTES` (or the cap if larger), is read
    and dropped first; a body refused unread within the cap leaves the connection usable. Not when the client
    waits for ``100 Continue`` before sending it (it never will).
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.drain_bytes = max(max_bytes, DRAIN_MIN_BYTES)

    def _error(self) -> ApiError:
        return ApiError(413, f"the request body is larger than {self.max_bytes} bytes", field="body")

    @staticmethod
    def _too_slow() -> ApiError:
        # Connection: close, since the rest of the body may still come: it must not be read as a next request.
        return ApiError(
            408,
            f"the request body did not arrive within {BODY_TIMEOUT_S:g} s",
            field="body",
            headers={"Connection": "close"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        length = int(declared) if declared is not None and declared.isdigit() else None
        waits_for_continue = headers.get("expect", "").lower() == "100-continue"
        received = 0
        read_all = length == 0 or (length is None and "chunked" not in headers.get("transfer-encoding", ""))
        asked = False
        body_deadline = asyncio.get_running_loop().time() + BODY_TIMEOUT_S

        async def drain() -> None:
            # Only what the client sends anyway: nothing while it waits for "100 Continue" we never asked for.
            nonlocal received, read_all
            if waits_for_continue and not asked:
                return
            with contextlib.suppress(TimeoutError):  # then uvicorn closes the connection after the answer
                async with asyncio.timeout(DRAIN_TIMEOUT_S):
                    while not read_all and received <= self.drain_bytes:
                        rest = await receive()
                        received += len(rest.get("body", b""))
                        read_all = rest["type"] != "http.request" or not rest.get("more_body", False)

        if declared is not None and "transfer-encoding" in headers:
            # Both framings: the server reads the chunks, a proxy in front may have read the length, and what one
            # takes for a body the other takes for a next request (request smuggling). RFC 9112 §6.3: handle it
            # as an error and close the connection after answering (QA: accepted, the connection kept).
            await drain()
            await JSONResponse(
                ApiError(400, BOTH_FRAMINGS_ERROR, field="headers").body(),
                status_code=400,
                headers={"Connection": "close"},
            )(scope, receive, send)
            return
        if length is not None and length > self.max_bytes:
            if length <= self.drain_bytes:
                await drain()
            error = self._error()
            await JSONResponse(error.body(), status_code=413, headers={"Connection": "close"})(scope, receive, send)
            return

        async def limited() -> Message:
            nonlocal received, read_all, asked
            asked = True
            if read_all:  # e.g. Starlette listening for a disconnect: that wait has no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(body_deadline):
                    message = await receive()
            except TimeoutError:
                read_all = True  # given up on: a refusal must not wait to drain it
                raise self._too_slow() from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                read_all = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise self._error()
            else:  # http.disconnect: nothing more will come
                read_all = True
            return message

        async def send_after_reading(message: Message) -> None:
            if message["type"] == "http.response.start" and not read_all:
                await drain()
            await send(message)

        await self.app(scope, limited, send_after_reading)


class JsonCORSMiddleware(CORSMiddleware):
    """Starlette's CORS middleware, except that a refused preflight (an origin, method or header not allowed)
    answers in the API's error shape, ``{"error": "Disallowed CORS origin", "field": null}``, not plain text."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        headers = {k: v for k, v in response.headers.items() if k not in ("content-length", "content-type")}
        body = {"error": bytes(response.body).decode("utf-8"), "field": None}
        return JSONResponse(body, status_code=response.status_code, headers=headers)


def internal_error(request_id: object) -> dict[str, Any]:
    """The answer to a request that a defect ended: where to look, nothing of the error itself."""
    return {"error": f"internal error; see the server log (requestId {request_id})", "field": None}


#: The answer to a request cancelled by a forced shutdown.
SHUTDOWN_ERROR = {"error": "the server is shutting down and cancelled this request; retry", "field": None}


class RequestLogMiddleware:
    """One JSON log line per request: requestId, method, path, status, elapsedMs, client, outcome, winner.

    Routes add detail through ``request.state`` (``request_id``, ``outcome``, ``winner``); the request id is
    also returned as ``X-Request-ID``. Levels: ERROR for 5xx, WARNING when generate answered with the default
    image, INFO otherwise. Query strings are never logged (they might carry a token by mistake).

    A request the server cancels (a forced shutdown: a second Ctrl+C, or uvicorn's
    ``--timeout-graceful-shutdown`` running out) is answered 503 in the API's error shape and logged as
    ``cancelled``. It was a plain-text 500 from uvicorn, with an ERROR traceback per request in flight.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        # The HTTP layer may have answered this request already (a body it could not parse) and named it.
        state["request_id"] = state.get(SERVER_REQUEST_ID) or new_id()
        state["received_at"] = asyncio.get_running_loop().time()  # generate's deadline counts from here
        status = 500
        responded = False
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
                headers = list(message.get("headers", []))
                if status in (307, 308):  # Starlette's trailing-slash redirects, the API's only ones
                    headers = [_relative_location(header) for header in headers]
                headers.append((b"x-request-id", str(state.get("request_id")).encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            if responded:  # too late for an answer: uvicorn closes the connection
                raise
            # Only the server cancels a request task, and only to stop: the request ends here, answered.
            state["outcome"] = "cancelled"
            await JSONResponse(SHUTDOWN_ERROR, status_code=503, headers={"Connection": "close"})(
                scope, receive, send_with_id
            )
        except Exception as exc:
            if responded:  # too late for an answer: uvicorn closes the connection
                raise
            # Answered here, not by Starlette's outermost handler: that answer had no X-Request-ID (it runs
            # outside this middleware), and it raised the error on, so uvicorn logged its traceback a second time.
            state["outcome"] = "error"
            _log.error("unhandled error in %s %s", scope.get("method"), scope.get("path"), exc_info=exc)
            await JSONResponse(internal_error(state.get("request_id")), status_code=500)(scope, receive, send_with_id)
        finally:
            client = scope.get("client")
            log_request(
                request_id=state.get("request_id"),
                method=scope.get("method"),
                path=scope.get("path"),
                # What the client got: the HTTP layer's answer, when it answered first (the app's went nowhere).
                status=state.get(SERVER_STATUS, status),
                started=started,
                client=client[0] if client else None,
                outcome=state.get("outcome"),
                winner=state.get("winner"),
            )


#: Keys of a request's ``scope["state"]`` that the HTTP/1.1 layer (api/http11.py) sets when it answers a
#: request the app is running for: the id its answer carried (the app's line must name the same one) and
#: its status (the app's own answer went nowhere).
SERVER_REQUEST_ID = "imagegen_server_request_id"
SERVER_STATUS = "imagegen_server_status"
#: Key of a request's ``scope["state"]`` that the HTTP/1.1 layer sets when the client shut its sending side
#: after the whole request (an end-of-file, which a client that closed its connection sends too): a generate
#: takes it for the client leaving (see ``public.until_client_leaves``).
CLIENT_SHUT_SENDING = "imagegen_client_shut_sending"


def log_request(
    *,
    request_id: object,
    method: str | None,
    path: str | None,
    status: int,
    started: float,
    client: str | None,
    outcome: str | None = None,
    winner: str | None = None,
) -> None:
    """Write the one JSON line of a request (``started``: its ``time.perf_counter()``): the app's answers
    through :class:`RequestLogMiddleware`, the HTTP layer's own (a malformed request, headers too slow) through
    api/http11.py, so that an operator finds every answer's ``X-Request-ID`` in the same kind of line."""
    outcome = outcome or ("ok" if status < 400 else "refused" if status < 500 else "error")
    # A request cancelled by a forced shutdown is not a fault of the server's: a warning, as a failure is.
    if status >= 500 and outcome != "cancelled":
        level = logging.ERROR
    else:
        level = logging.WARNING if outcome in ("failed", "cancelled") else logging.INFO
    _log.log(
        level,
        "request",
        extra={
            "requestId": request_id,
            "method": method,
            "path": path,
            "status": status,
            "elapsedMs": round((time.perf_counter() - started) * 1000, 1),
            "client": client,
            "outcome": outcome,
            "winner": winner,
        },
    )
