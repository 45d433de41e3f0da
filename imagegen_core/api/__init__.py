"""The HTTP API (FastAPI) over :class:`~imagegen_core.ImageGen`, wire-compatible with the Cloudflare Worker.

``create_app()`` builds it; ``imagegen serve`` runs it under uvicorn. Routes: ``public`` (generate, health,
config), ``files`` (the local store over HTTP), ``admin`` (status, providers, storage, stats, alerts) and
``admin_ops`` (config, circuit breakers). Errors have one shape, see ``errors``.
"""

from __future__ import annotations

from ..extras import require

# Before FastAPI's import: without the extra, one error naming it rather than "No module named 'fastapi'".
require("api", feature="imagegen_core.api")

from .app import create_app  # noqa: E402 (after the check above)

__all__ = ["create_app"]
