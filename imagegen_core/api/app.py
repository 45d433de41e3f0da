"""The FastAPI application: routes, middleware, error handlers and the ImageGen's lifetime."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.types import Message, Receive, Scope, Send

from ..abandoned import sweep_abandoned_requests
from ..errors import ImageGenError, redact, secret_forms
from ..service import ImageGen
from ..settings import Settings
from . import admin, admin_ops, files, public
from .context import ApiContext
from .errors import install_error_handlers
from .loop_watch import watch_loop
from .middleware import BodyLimitMiddleware, JsonCORSMiddleware, RequestLogMiddleware
from .routing import also_head

_log = logging.getLogger("imagegen.api")

_DESCRIPTION = """Article images raced across providers, wire-compatible with the Cloudflare Worker API.

Errors are always `{"error": "<field>: <message>", "field": "<field>"}`. Admin routes need
`Authorization: Bearer <IMAGEGEN_ADMIN_TOKEN>` and are refused (403) when no admin token is configured."""


def _redacting_response(secrets: Iterable[str]) -> type[JSONResponse]:
    """A JSONResponse class that replaces every configured secret in the body's texts with ``***``: a last line
    of defence, since no route is meant to put one there. In values only: a secret that is also a word (a weak
    token, "provider") turned keys into ``***`` and the answer into something no client could read (QA)."""
    forms = secret_forms(secrets)

    def hidden(value: Any) -> Any:
        if isinstance(value, str):
            return redact(value, forms)
        if isinstance(value, dict):
            return {key: hidden(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [hidden(item) for item in value]
        return value

    class RedactingJSONResponse(JSONResponse):
        def render(self, content: Any) -> bytes:
            text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            if redact(text, forms) != text:  # the usual answer holds no secret: one pass over its text
                text = json.dumps(hidden(content), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            return text.encode("utf-8")

    return RedactingJSONResponse


#: How often an API process looks for a newer config version between requests.
CONFIG_REFRESH_S = 5.0


async def keep_config_fresh(gen: ImageGen, *, every_s: float = CONFIG_REFRESH_S) -> None:
    """Look for a newer config version every ``every_s``, requests or not, until cancelled. Requests look
    too, but a ``serve --workers`` worker the kernel gave no request since a version was stored kept the older
    one, and during a log DB outage that followed, for its whole length (QA: version 7 beside version 8)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await gen.current_config()  # bounded, and keeps the config in force while the log DB is down
        except ImageGenError:  # closing: the lifespan cancels this next
            return


def _app_version() -> str:
    try:
        return version("imagegen")
    except PackageNotFoundError:
        return "0"


def create_app(
    gen: ImageGen | None = None,
    *,
    settings: Settings | None = None,
    close_gen: bool | None = None,
    freeze_gc: bool = False,
) -> FastAPI:
    """The HTTP API over one ImageGen per process.

    Without ``gen``, the lifespan builds one from ``settings`` (default ``Settings()``) at start-up and closes it
    at shutdown. An injected ``gen`` (tests, embedding, ``imagegen serve``) is only flushed at shutdown unless
    ``close_gen=True``. For uvicorn directly: ``uvicorn --factory imagegen_core.api:create_app``.

    ``freeze_gc``: after the warm-up, move every object alive to the garbage collector's permanent generation
    (``gc.freeze()``), which full collections skip. A full collection otherwise walks all ~65,000 start-up
    objects and stalls every request in flight for 50–60 ms, about once per thousand requests on the test
    VM (``bench/gc_pauses.py``: 59.8 ms, 0.9 ms frozen). Process-wide, so only for a process the app owns:
    ``imagegen serve`` turns it on; an app mounted in someone else's server leaves it to them.
    """
    settings = settings or (gen.settings if gen is not None else Settings())
    ctx = ApiContext(settings=settings, gen=gen)
    owned = gen is None if close_gen is None else close_gen

    startup_error: ImageGenError | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal owned, startup_error
        if ctx.gen is None:
            try:
                ctx.gen = ImageGen.from_settings(settings, source="api")
            except ImageGenError as exc:  # a log folder or database that is not there: said in one line
                startup_error = exc
                raise
            owned = True
        if not settings.admin_token or not settings.admin_token.get_secret_value():
            _log.warning("admin endpoints are disabled: set IMAGEGEN_ADMIN_TOKEN to enable them")
        await ctx.gen.warm_up()  # before the first request, not during it
        if freeze_gc:
            gc.freeze()
        # Rows a killed process left running (see abandoned.py); in the background, never delaying the start.
        sweeper = asyncio.create_task(sweep_abandoned_requests(ctx.gen), name="imagegen-abandoned-requests")
        refresher = asyncio.create_task(keep_config_fresh(ctx.gen), name="imagegen-config-refresh")
        watch = asyncio.create_task(watch_loop(ctx.loop_stalls), name="imagegen-loop-watch")
        try:
            yield
        finally:
            sweeper.cancel()
            refresher.cancel()
            watch.cancel()
            running, ctx.gen = ctx.gen, (None if owned else ctx.gen)
            if owned:
                await running.aclose()  # on this loop, so its HTTP client closes here too
            else:
                await running.flush()

    # The interactive docs load Swagger UI and ReDoc from our own server (fastapi-offline bundles them):
    # FastAPI's default pages fetch them from cdn.jsdelivr.net and stay blank on a machine without internet.
    make_app = FastAPIOffline if settings.api_docs_enabled else FastAPI
    app = make_app(
        title="imagegen",
        version=_app_version(),
        description=_DESCRIPTION,
        lifespan=lifespan,
        # An injected ImageGen may know more (the keys of provider instances given in code).
        default_response_class=_redacting_response(
            gen.secret_values() if gen is not None else settings.secret_values()
        ),
        # Off in production by default (IMAGEGEN_API_DOCS): the schema maps every route for a visitor.
        docs_url="/docs" if settings.api_docs_enabled else None,
        redoc_url="/redoc" if settings.api_docs_enabled else None,
        openapi_url="/openapi.json" if settings.api_docs_enabled else None,
    )
    app.state.ctx = ctx
    also_head(app.router)  # fastapi-offline's doc pages are GET routes of the app's own (QA: HEAD /docs was 405)
    for module in (public, files, admin, admin_ops):
        app.include_router(module.router)
    install_error_handlers(app)
    # add_middleware wraps: the last added runs first. Order: log → CORS → body cap → routes.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            JsonCORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["X-Request-ID", "Retry-After"],
            max_age=600,
        )
    app.add_middleware(RequestLogMiddleware)
    _one_line_lifespan_failures(app, lambda: startup_error)
    return app


#: What the server logs when it is stopped without waiting (a second Ctrl+C).
FORCED_SHUTDOWN = "imagegen: forced shutdown: the requests in flight were cancelled (answered 503)"


def _one_line_lifespan_failures(app: FastAPI, error: Callable[[], ImageGenError | None]) -> None:
    """When the lifespan fails with an :class:`ImageGenError` (``uvicorn --factory
    imagegen_core.api:create_app`` over a bad IMAGEGEN_HOME), the server logs its message in one line; and a
    forced shutdown, which cancels the lifespan, is one line too.

    Starlette reports a failed startup or shutdown with the whole traceback as the message, which uvicorn
    logs; the error's own message already says what to fix, and a cancelled shutdown is no error of the app's
    (the ImageGen is still closed: the lifespan's ``finally`` runs). Only those messages are rewritten (the
    router's lifespan handler is wrapped on this app), so requests pay nothing."""
    starlette_lifespan = app.router.lifespan

    async def lifespan(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_one_line(message: Message) -> None:
            exc = error()
            if message["type"] == "lifespan.startup.failed" and exc is not None:
                message = {**message, "message": f"imagegen cannot start: {exc}"}
            elif message["type"] == "lifespan.shutdown.failed" and _being_cancelled():
                message = {**message, "message": FORCED_SHUTDOWN}
            await send(message)

        await starlette_lifespan(scope, receive, send_one_line)

    app.router.lifespan = lifespan  # type: ignore[method-assign]


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
