"""Bearer-token checks: the admin token (required: without one configured, admin is switched off) and the
optional API token for generate.

Tokens are compared as SHA-256 digests with :func:`secrets.compare_digest`: comparing the raw values would
return early when the lengths differ, telling a caller the token's length; digests always have 32 bytes.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from .context import get_ctx
from .errors import ApiError

# auto_error=False: we answer missing tokens ourselves, in the API's error shape, with WWW-Authenticate.
_admin_scheme = HTTPBearer(auto_error=False, scheme_name="AdminToken", description="IMAGEGEN_ADMIN_TOKEN")
_api_scheme = HTTPBearer(auto_error=False, scheme_name="ApiToken", description="IMAGEGEN_API_TOKEN (when set)")


def tokens_match(given: str, expected: str) -> bool:
    """Constant-time equality that does not reveal the expected token's length."""
    digest_given = hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest()
    digest_expected = hashlib.sha256(expected.encode("utf-8", "surrogateescape")).digest()
    return secrets.compare_digest(digest_given, digest_expected)


def _configured(secret: SecretStr | None) -> str | None:
    value = secret.get_secret_value() if secret is not None else ""
    return value or None


def _verify(
    request: Request, credentials: HTTPAuthorizationCredentials | None, expected: str, *, realm: str, env: str
) -> None:
    if len(request.headers.getlist("authorization")) > 1:
        # QA: the first of two was used (right then wrong: 200; wrong then right: 401); a proxy that adds one
        # to a client's own is a setup to fix, not a token to guess between.
        raise ApiError(
            401,
            f"more than one Authorization header: send one, Authorization: Bearer <{env}>",
            headers={"WWW-Authenticate": f'Bearer realm="{realm}", error="invalid_request"'},
        )
    if credentials is None or not credentials.credentials:
        raise ApiError(
            401,
            f"missing bearer token: send Authorization: Bearer <{env}>",
            headers={"WWW-Authenticate": f'Bearer realm="{realm}"'},
        )
    if not tokens_match(credentials.credentials, expected):
        raise ApiError(
            401, "invalid bearer token", headers={"WWW-Authenticate": f'Bearer realm="{realm}", error="invalid_token"'}
        )


async def require_admin(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_admin_scheme)]
) -> None:
    """Admit only ``Authorization: Bearer <IMAGEGEN_ADMIN_TOKEN>``; with no admin token configured every call
    is refused (403), whatever it sends: admin is never open by default."""
    expected = _configured(get_ctx(request).settings.admin_token)
    if expected is None:
        raise ApiError(403, "admin endpoints are disabled: set IMAGEGEN_ADMIN_TOKEN to enable them")
    _verify(request, credentials, expected, realm="imagegen-admin", env="IMAGEGEN_ADMIN_TOKEN")


async def require_api_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_api_scheme)]
) -> None:
    """When ``IMAGEGEN_API_TOKEN`` is set, admit only ``Authorization: Bearer <IMAGEGEN_API_TOKEN>``."""
    expected = _configured(get_ctx(request).settings.api_token)
    if expected is not None:
        _verify(request, credentials, expected, realm="imagegen", env="IMAGEGEN_API_TOKEN")
