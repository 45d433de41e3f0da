"""What every route needs: the settings, the process's ImageGen, the rate limiter — held on ``app.state``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from ..service import ImageGen
from ..settings import Settings
from .errors import ApiError
from .loop_watch import LoopStalls
from .probes import StoreCheckCache
from .ratelimit import TokenBucketLimiter


@dataclass
class ApiContext:
    """Per-app state. ``gen`` is set by the lifespan (or injected) and cleared on shutdown."""

    settings: Settings
    gen: ImageGen | None = None
    limiter: TokenBucketLimiter = field(default_factory=TokenBucketLimiter)
    started_at: float = field(default_factory=time.time)
    #: The store's health answers, reused for a few seconds (each R2 check is a billed listing).
    store_checks: StoreCheckCache = field(default_factory=StoreCheckCache)
    #: The event loop's stalls since start-up (see loop_watch.py).
    loop_stalls: LoopStalls = field(default_factory=LoopStalls)


def get_ctx(request: Request) -> ApiContext:
    """The app's :class:`ApiContext` (a FastAPI dependency)."""
    ctx: ApiContext = request.app.state.ctx
    return ctx


def get_gen(request: Request) -> ImageGen:
    """The process's ImageGen (a FastAPI dependency); 503 while the app is starting or stopping."""
    gen = get_ctx(request).gen
    if gen is None:
        raise ApiError(503, "the service is starting or stopping; retry in a moment")
    return gen


#: Route parameter types: ``gen: Gen`` receives the ImageGen, ``ctx: Ctx`` the context.
Gen = Annotated[ImageGen, Depends(get_gen)]
Ctx = Annotated[ApiContext, Depends(get_ctx)]
