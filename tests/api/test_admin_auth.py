"""Admin authentication: a bearer token compared in constant time; no token configured → admin is off."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from imagegen_core.api import auth, create_app
from imagegen_core.service import ImageGen

from .conftest import ADMIN_TOKEN, api_client

BODIES = {"POST": {"action": "reset-all"}, "PUT": {}, "PATCH": {}}
#: Routes whose body is not their method's usual one; version 1 is the document ``make_gen({})`` stores.
PATH_BODIES = {"/admin/config/rollback": {"version": 1}}


def body_for(method: str, path: str) -> object:
    return PATH_BODIES.get(path, BODIES.get(method))


def admin_calls(gen: ImageGen) -> list[tuple[str, str]]:
    """Every admin (method, path) the app has, read from its OpenAPI document so a new route cannot be forgotten."""
    paths = create_app(gen).openapi()["paths"]
    calls = [(method.upper(), path) for path, ops in paths.items() if path.startswith("/admin") for method in ops]
    assert len(calls) >= 10  # status, stats, providers, storage, alerts, breaker GET/POST, config GET/PUT/PATCH
    return calls


@pytest.mark.parametrize("token_env", [None, ""])
async def test_without_an_admin_token_every_admin_call_is_refused(
    make_gen: Callable[..., ImageGen], token_env: str | None
) -> None:
    gen = make_gen(admin=False, **({} if token_env is None else {"IMAGEGEN_ADMIN_TOKEN": token_env}))
    async with api_client(gen) as client:
        for method, path in admin_calls(gen):
            for headers in ({}, {"Authorization": "Bearer anything"}, {"Authorization": "Bearer "}):
                response = await client.request(method, path, json=body_for(method, path), headers=headers)
                assert response.status_code == 403, (method, path, headers)
                assert response.json() == {
                    "error": "admin endpoints are disabled: set IMAGEGEN_ADMIN_TOKEN to enable them",
                    "field": None,
                }
    assert gen.log.latest_config_id() is None and gen.breakers.transitions() == []  # nothing was done


@pytest.mark.parametrize(
    ("authorization", "why"),
    [
        (None, "missing bearer token"),
        ("Bearer", "missing bearer token"),
        (f"Basic {ADMIN_TOKEN}", "missing bearer token"),
        ("Bearer " + "x" * len(ADMIN_TOKEN), "invalid bearer token"),  # same length, wrong
        (f"Bearer {ADMIN_TOKEN[:-1]}", "invalid bearer token"),  # a prefix: shorter
        (f"Bearer {ADMIN_TOKEN}x", "invalid bearer token"),  # longer
        (f"Bearer {ADMIN_TOKEN.upper()}", "invalid bearer token"),
    ],
)
async def test_a_missing_or_wrong_admin_token_is_401_with_www_authenticate(
    make_gen: Callable[..., ImageGen], authorization: str | None, why: str
) -> None:
    gen = make_gen()
    headers = {"Authorization": authorization} if authorization is not None else {}
    async with api_client(gen) as client:
        for method, path in admin_calls(gen):
            response = await client.request(method, path, json=body_for(method, path), headers=headers)
            assert response.status_code == 401, (method, path)
            assert response.headers["www-authenticate"].startswith('Bearer realm="imagegen-admin"')
            assert why in response.json()["error"]


@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
async def test_the_right_admin_token_is_admitted(make_gen: Callable[..., ImageGen], scheme: str) -> None:
    gen = make_gen({})  # a stored version: the rollback route restores one
    async with api_client(gen) as client:
        for method, path in admin_calls(gen):
            response = await client.request(
                method, path, json=body_for(method, path), headers={"Authorization": f"{scheme} {ADMIN_TOKEN}"}
            )
            assert response.status_code == 200, (method, path, response.text)


@pytest.mark.parametrize("right_first", [True, False], ids=["right then wrong", "wrong then right"])
async def test_two_authorization_headers_are_refused_whichever_comes_first(
    make_gen: Callable[..., ImageGen], right_first: bool
) -> None:
    """QA: the first of two Authorization headers was used: right then wrong was admitted, wrong then right not."""
    gen = make_gen()
    pair = [("Authorization", f"Bearer {ADMIN_TOKEN}"), ("Authorization", "Bearer nope")]
    headers = pair if right_first else pair[::-1]
    async with api_client(gen) as client:
        response = await client.get("/admin/status", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == (
        "more than one Authorization header: send one, Authorization: Bearer <IMAGEGEN_ADMIN_TOKEN>"
    )
    assert response.headers["www-authenticate"].endswith('error="invalid_request"')


async def test_tokens_are_compared_as_equal_length_digests_whatever_their_length(
    make_gen: Callable[..., ImageGen], monkeypatch: pytest.MonkeyPatch
) -> None:
    """compare_digest on the raw values would return at once on a length mismatch; it must never see them."""
    seen: list[tuple[int, int]] = []
    real = auth.secrets.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.secrets, "compare_digest", spy)
    async with api_client(make_gen()) as client:
        for token in ("x", ADMIN_TOKEN[:-1], ADMIN_TOKEN, ADMIN_TOKEN * 10):
            await client.get("/admin/status", headers={"Authorization": f"Bearer {token}"})
    assert seen == [(32, 32)] * 4
    assert auth.tokens_match(ADMIN_TOKEN, ADMIN_TOKEN) and not auth.tokens_match("", ADMIN_TOKEN)
