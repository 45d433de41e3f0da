"""Property-based fuzzing of the HTTP API over a real socket (uvicorn on 127.0.0.1), small and derandomised so
that it is fast and the same on every run. Whatever arrives, the answer keeps the contract: never a 5xx or a
traceback, errors as ``{"error": "<field>: ...", "field"}`` JSON, every generate answer (200 or 400) has a
finished row in the log under its X-Request-ID, and no configured secret comes back in a body or the log DB.

Found this way (each with its own example test in ``test_hostile_input.py``): X-Request-IDs of refused
requests naming no row, sizes past 64 bits losing the rejected row, deep nesting crashing the config merge,
client disconnects and bodies uvicorn refused logged as 500s with tracebacks, and plain-text CORS refusals.
Deep nesting is checked there only: Hypothesis raises the recursion limit while it runs, and the server shares
this process, so the stack overflow it caused cannot happen under ``@given``.
"""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagegen_core.api import create_app
from imagegen_core.log.queries import recent_requests
from imagegen_core.service import ImageGen
from imagegen_core.settings import Settings
from tests.logcapture import redacted_json_log

from .conftest import ADMIN, ADMIN_TOKEN, NETWORKED_OFF, live_server

SECRETS = {"REPLICATE_API_TOKEN": "r8_fuzzsecret123", "FAL_KEY": "fal-fuzzsecret-456", "OPENAI_API_KEY": "sk-fuzz789"}
OFFLINE_ONLY = {"providers": {**NETWORKED_OFF, "offline": {"enabled": True}}}
ORIGIN = "https://cms.example"


def fuzz(examples: int) -> Callable[[Any], Any]:
    """Hypothesis settings for this module: deterministic, no example database, no per-example deadline."""
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# -- what can arrive ------------------------------------------------------------------------------------------

odd_text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        ["", " ", "\x00", "a\x00b", "\u202eevil", "🐱🐱", "\ud800", "\udfff", "x" * 2001, "\x7f", "\u2028", "{prompt}"]
    ),
)
odd_number = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 63, 64, 4096, 4097, 2**63, -(2**63) - 1]),
    st.floats(allow_nan=False, allow_infinity=False),
)
json_value = st.recursive(
    st.none() | st.booleans() | odd_number | odd_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(odd_text, inner, max_size=3),
    max_leaves=8,
)
plausible = {
    "prompt": st.sampled_from(["a lighthouse at dusk", " x "]),
    "keyword": st.sampled_from(["harbour", None]),
    "articleId": st.sampled_from(["article-42", None]),
    "width": st.sampled_from([64, 96, "64", 64.0, None]),
    "height": st.sampled_from([64, 80, None]),
    "style": st.sampled_from(["photo", " PHOTO ", None]),
    "provider": st.sampled_from(["offline", "OFFLINE", None]),
}


@st.composite
def generate_body(draw: st.DrawFn) -> bytes:
    """A generate request built from the real fields, each left out, plausible or anything JSON can hold;
    sometimes an unknown field, a duplicated key, or deep nesting."""
    body: dict[str, Any] = {}
    for name, good in plausible.items():
        choice = draw(st.sampled_from(["omit", "good", "good", "odd"]))
        if choice != "omit":
            body[name] = draw(good) if choice == "good" else draw(json_value)
    if draw(st.integers(0, 6)) == 0:
        body[draw(odd_text)] = draw(json_value)
    text = json.dumps(body, ensure_ascii=draw(st.booleans()))
    shape = draw(st.sampled_from(["plain", "plain", "plain", "duplicate", "nested"]))
    if shape == "duplicate" and body:
        text = "{" + json.dumps(next(iter(body))) + ": " + json.dumps(draw(json_value)) + ", " + text[1:]
    elif shape == "nested":
        depth = draw(st.sampled_from([63, 65, 900]))
        text = '{"prompt": ' + "[" * depth + "]" * depth + "}"
    return text.encode("utf-8", "surrogatepass")


# -- the server and the checks --------------------------------------------------------------------------------


@contextmanager
def fuzzed_server(settings_factory: Callable[..., Settings]) -> Iterator[tuple[httpx.Client, Settings, io.StringIO]]:
    """The API with dummy provider keys (pointed at a closed port on 127.0.0.1, never the internet), the offline
    provider racing, CORS for one origin, and its log captured."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: a provider called here is refused at once
    nowhere = f"http://127.0.0.1:{closed.getsockname()[1]}"
    app_settings = settings_factory(
        IMAGEGEN_ADMIN_TOKEN=ADMIN_TOKEN,
        IMAGEGEN_CORS_ORIGINS=ORIGIN,
        provider_base_urls={name: nowhere for name in NETWORKED_OFF},
        **SECRETS,
    )
    with ImageGen.from_settings(app_settings) as gen:
        gen.set_config(OFFLINE_ONLY, source="test")
    try:
        with (
            redacted_json_log([*SECRETS.values(), ADMIN_TOKEN]) as logs,
            live_server(create_app(settings=app_settings)) as base,
            httpx.Client(base_url=base, timeout=30) as client,
        ):
            yield client, app_settings, logs
    finally:
        closed.close()
    text = logs.getvalue()
    assert "Traceback" not in text and '"level": "ERROR"' not in text, text[-3000:]
    with ImageGen.from_settings(app_settings) as gen:
        dump = json.dumps(recent_requests(gen.log, limit=10_000), default=str)
    assert not any(secret in dump for secret in SECRETS.values())


def check_answer(answer: httpx.Response, *, sent: object = None) -> None:
    """What every answer keeps: no 5xx, no traceback or secret, JSON errors in the one shape."""
    context = (answer.request.method, str(answer.request.url)[:120], sent, answer.status_code, answer.text[:300])
    assert answer.status_code < 500, context
    assert "Traceback" not in answer.text and not any(s in answer.text for s in SECRETS.values()), context
    assert "x-request-id" in answer.headers, context
    if answer.status_code >= 400 and answer.request.method != "HEAD":
        assert answer.headers["content-type"] == "application/json", context
        error = answer.json()
        assert set(error) == {"error", "field"} and isinstance(error["error"], str), context
        if error["field"] is not None:
            assert error["error"].startswith(f"{error['field']}: "), context
    if answer.status_code == 401:
        assert answer.headers["www-authenticate"].startswith("Bearer"), context


def check_logged(settings_: Settings, answers: list[tuple[bytes, httpx.Response]]) -> None:
    """Each generate answer's X-Request-ID has a finished row: rejected for a 400, success/failed for a 200."""
    with ImageGen.from_settings(settings_) as gen:
        rows = {row["id"]: row for row in recent_requests(gen.log, limit=10_000)}
    for body, answer in answers:
        row = rows.get(answer.headers["x-request-id"])
        assert row is not None, (body[:200], answer.status_code, answer.text[:200])
        expected = {"rejected"} if answer.status_code == 400 else {"success", "failed"}
        assert row["status"] in expected, (body[:200], answer.text[:200], row["status"])


# -- properties -----------------------------------------------------------------------------------------------


def test_every_generate_body_gets_a_contract_answer_and_a_log_row(settings_factory: Callable[..., Settings]) -> None:
    answers: list[tuple[bytes, httpx.Response]] = []
    with fuzzed_server(settings_factory) as (client, app_settings, _):

        @fuzz(90)
        @given(body=generate_body(), origin=st.sampled_from([None, ORIGIN]))
        def one_request(body: bytes, origin: str | None) -> None:
            headers = {"content-type": "application/json", **({"Origin": origin} if origin else {})}
            answer = client.post("/images/generate", content=body, headers=headers)
            check_answer(answer, sent=body)
            assert answer.status_code in (200, 400), (body[:200], answer.text[:300])
            if answer.status_code == 200:
                result = answer.json()
                assert {"url", "provider", "elapsedMs", "success", "requestId"} <= set(result)
                assert result["requestId"] == answer.headers["x-request-id"]
            if origin:
                assert answer.headers["access-control-allow-origin"] == ORIGIN
            answers.append((body, answer))

        one_request()

        @fuzz(8)
        @given(body=generate_body(), copies=st.integers(2, 6))
        def the_same_body_at_once(body: bytes, copies: int) -> None:
            def send(_: int) -> httpx.Response:
                with httpx.Client(base_url=client.base_url, timeout=30) as own:
                    return own.post("/images/generate", content=body, headers={"content-type": "application/json"})

            with ThreadPoolExecutor(copies) as pool:
                for answer in pool.map(send, range(copies)):
                    check_answer(answer, sent=body)
                    assert answer.status_code in (200, 400)
                    answers.append((body, answer))

        the_same_body_at_once()
    check_logged(app_settings, answers)


CONFIG_SECTIONS = st.fixed_dictionaries(
    {},
    optional={
        "providers": st.dictionaries(
            st.sampled_from(["fal", "offline", "replicate", "extra"]) | odd_text,
            st.dictionaries(
                st.sampled_from(["enabled", "timeout", "retries", "priority", "type", "options", "costPerImage"]),
                json_value,
                max_size=3,
            )
            | json_value,
            max_size=2,
        ),
        "race": st.dictionaries(st.sampled_from(["mode", "hedgeDelay", "hedgeQuantile", "order"]), json_value),
        "defaults": st.dictionaries(st.sampled_from(["timeout", "imageUrl", "width", "height"]), json_value),
        "limits": st.dictionaries(st.sampled_from(["maxPromptLength", "minSize", "maxSize"]), odd_number),
        "r2": st.dictionaries(st.sampled_from(["pathPrefix", "cacheControl"]), json_value),
        "styles": st.dictionaries(odd_text, json_value, max_size=2),
        "rateLimit": st.dictionaries(st.sampled_from(["enabled", "requestsPerMinute", "burst"]), json_value),
        "version": json_value,
        "config": json_value,
        "action": st.sampled_from(["reset", "reset-all", "force-open"]) | json_value,
        "provider": st.sampled_from(["offline", "FAL"]) | json_value,
    },
)


WRITES = [("PATCH", "/admin/config"), ("PUT", "/admin/config"), ("POST", "/admin/circuit-breaker")]


def test_admin_writes_of_any_document_keep_the_contract(settings_factory: Callable[..., Settings]) -> None:
    with fuzzed_server(settings_factory) as (client, _, _):

        @fuzz(70)
        @given(
            route=st.sampled_from(WRITES),
            document=CONFIG_SECTIONS | json_value,
            authorised=st.sampled_from([True, True, True, False]),
        )
        def one_write(route: tuple[str, str], document: Any, authorised: bool) -> None:
            method, path = route
            body = json.dumps(document).encode("utf-8", "surrogatepass")
            headers = {"content-type": "application/json", **(ADMIN if authorised else {})}
            answer = client.request(method, path, content=body, headers=headers)
            check_answer(answer, sent=body)
            assert answer.status_code in ((200, 400, 409, 422) if authorised else (401,)), (body, answer.text)
            if answer.status_code == 200:  # whatever was accepted, the service still answers in full
                for read in ("/config", "/health", "/admin/status", "/admin/providers", "/admin/config"):
                    check_answer(client.get(read, headers=ADMIN))
                made = client.post("/images/generate", json={"prompt": "after a write", "width": 64, "height": 64})
                check_answer(made)
                assert made.status_code == 200
                client.put("/admin/config", json=OFFLINE_ONLY, headers=ADMIN).raise_for_status()
                client.post("/admin/circuit-breaker", json={"action": "reset-all"}, headers=ADMIN).raise_for_status()

        one_write()


@st.composite
def query_string(draw: st.DrawFn) -> str:
    """Repeated, unknown, valueless and badly %-encoded parameters, with odd values for days and date."""
    values = (
        st.sampled_from(["7", "0", "-1", "366", "1.5", "", "７", "2024-02-29", "2023-02-29", "20240101"]) | odd_text
    )
    parts = []
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(["days", "date", "days", "x", ""]))
        value = draw(values).encode("utf-8", "surrogatepass")
        parts.append(
            draw(st.sampled_from([f"{key}={quote(value, safe='')}", key, f"{key}=%", f"{key}=%zz", f"{key}=%ff"]))
        )
    return draw(st.sampled_from(["&", ";"])).join(parts)


def test_reads_with_any_query_method_or_token_keep_the_contract(settings_factory: Callable[..., Settings]) -> None:
    paths = [
        "/health",
        "/health/live",
        "/config",
        "/admin/status",
        "/admin/stats",
        "/admin/providers",
        "/admin/storage",
        "/admin/circuit-breaker",
        "/admin/config",
        "/admin/alerts",
        "/images/generate",
        "/files/ai/2026/01/x.webp",
        "/files/%2e%2e/secret",
        "/nothing",
    ]
    with fuzzed_server(settings_factory) as (client, _, _):

        @fuzz(100)
        @given(
            path=st.sampled_from(paths),
            query=query_string(),
            method=st.sampled_from(["GET", "GET", "GET", "HEAD", "OPTIONS", "DELETE", "TRACE"]),
            auth=st.sampled_from(
                [f"Bearer {ADMIN_TOKEN}", f"bearer {ADMIN_TOKEN}", None, "Bearer", "Bearer x", "Basic eDp5"]
            ),
        )
        def one_read(path: str, query: str, method: str, auth: str | None) -> None:
            url = path + ("?" + query if query else "")
            answer = client.request(method, url, headers={"Authorization": auth} if auth else {})
            check_answer(answer, sent=url)
            if path.startswith("/admin/") and method == "GET" and not (auth or "").endswith(ADMIN_TOKEN):
                assert answer.status_code == 401, (url, auth, answer.text)

        one_read()
