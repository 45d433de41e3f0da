"""``POST /images/generate`` in process: the Worker's wire format, total failure, bad input, the API token."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from imagegen_core.api import create_app
from imagegen_core.log.queries import attempts_for, recent_requests
from imagegen_core.service import ImageGen

from .conftest import api_client, fakes

WORKER_REQUEST = {
    "prompt": "harbour cranes at dawn",
    "keyword": "harbour",
    "articleId": "article-42",
    "width": 640,
    "height": 360,
    "style": "photo",
}


async def test_a_worker_request_round_trips_in_the_worker_response_shape(make_gen: Callable[..., ImageGen]) -> None:
    gen = make_gen()
    async with api_client(gen) as client:
        response = await client.post("/images/generate", json=WORKER_REQUEST)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    body = response.json()
    # The Worker's five fields, with its names and JSON types.
    assert isinstance(body["url"], str) and body["url"].endswith(".webp")
    assert isinstance(body["provider"], str) and body["provider"] == "offline"
    assert isinstance(body["elapsedMs"], int) and not isinstance(body["elapsedMs"], bool) and body["elapsedMs"] >= 0
    assert body["success"] is True
    assert "error" in body and body["error"] is None
    # Extras, camelCase like the rest.
    assert isinstance(body["requestId"], str) and len(body["requestId"]) == 32
    assert (body["width"], body["height"]) == (640, 360)
    assert [(a["provider"], a["outcome"]) for a in body["attempts"]] == [("offline", "success")]
    assert {"elapsedMs", "hedged", "failureClass", "httpStatus"} <= set(body["attempts"][0])
    assert not any("_" in key for key in body)  # no snake_case leaked onto the wire
    # The Worker's own extras that CMSes written for it test (QA): where the image came from, whether stored.
    assert (body["source"], body["r2Stored"]) == ("offline", True)
    await gen.flush()
    row = recent_requests(gen.log, limit=1)[0]
    assert (row["id"], row["source"], row["status"]) == (body["requestId"], "api", "success")
    assert (row["article_id"], row["keyword"], row["style"], row["width"]) == ("article-42", "harbour", "photo", 640)


async def test_fields_the_api_does_not_take_are_ignored_as_the_worker_did_and_named_in_the_notes(
    make_gen: Callable[..., ImageGen],
) -> None:
    """QA: a CMS that sent one field more than the Worker knew (a title, a tracking id) got a 400 and no image:
    "colour: Extra inputs are not permitted". The Worker ignored them; the answer now names them in notes."""
    gen = make_gen()
    async with api_client(gen) as client:
        body = {"prompt": "harbour at dawn", "title": "Harbour news", "colour": "red", "articleId": "a1"}
        response = await client.post("/images/generate", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["success"] is True
    assert answer["notes"] == [
        "fields this API does not take were ignored (as the Worker ignored them): 'title', 'colour'"
    ]
    await gen.flush()
    row = recent_requests(gen.log, limit=1)[0]
    assert (row["status"], row["article_id"], row["prompt"]) == ("success", "a1", "harbour at dawn")


@pytest.mark.parametrize("empty", [None, "", "  "])
async def test_an_empty_image_url_beside_the_prompt_is_taken_as_absent(
    make_gen: Callable[..., ImageGen], empty: str | None
) -> None:
    """Regression (QA): typed CMS clients send an absent optional field as null (or ""), and the Worker took
    ``imageUrl: null`` as absent; it was a 400 "imageUrl is not supported" although a prompt was sent."""
    gen = make_gen()
    async with api_client(gen) as client:
        body = {"prompt": "harbour at dawn", "imageUrl": empty, "image_url": empty, "articleId": "a1"}
        response = await client.post("/images/generate", json=body)
    assert response.status_code == 200 and response.json()["success"] is True, response.text


async def test_a_total_failure_still_answers_200_with_success_false(make_gen: Callable[..., ImageGen]) -> None:
    gen = make_gen(fakes(down={"failureRate": 1.0, "failureClass": "transient"}))
    async with api_client(gen) as client:
        response = await client.post("/images/generate", json={"prompt": "x", "width": 200, "height": 100})
    assert response.status_code == 200
    body = response.json()
    assert (body["success"], body["provider"]) == (False, "default")
    assert body["url"].endswith("default-200x100.webp") and "down: injected transient failure" in body["error"]
    assert (body["source"], body["r2Stored"]) == ("emergency-fallback", False)  # the Worker's words for it


async def test_an_integer_article_id_is_accepted_as_its_decimal_text(make_gen: Callable[..., ImageGen]) -> None:
    """CMSes often send numeric ids as JSON numbers; like ``"width": "800"``, ``"articleId": 42`` is coerced."""
    gen = make_gen()
    async with api_client(gen) as client:
        response = await client.post("/images/generate", json={"prompt": "x", "articleId": 42, "width": 64})
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True
    await gen.flush()
    assert recent_requests(gen.log, limit=1)[0]["article_id"] == "42"


NESTED = b"[" * 20_000 + b"]" * 20_000

BAD_INPUT: list[tuple[str, bytes, dict[str, str], int, str, str]] = [
    # (case, body, headers, status, field, fragment of the message)
    ("malformed JSON", b'{"prompt": ', {}, 400, "body", "not valid JSON: line 1"),
    ("not declared as JSON", b'{"prompt": "x"}', {"content-type": "text/plain"}, 415, "body", "Content-Type"),
    ("no content type", b'{"prompt": "x"}', {"content-type": ""}, 415, "body", "Content-Type"),
    # QA: refused as "not valid UTF-8", which sent the caller looking for the wrong mistake
    (
        "a gzipped body",
        gzip.compress(b'{"prompt": "x"}'),
        {"content-encoding": "gzip"},
        415,
        "body",
        "'gzip' is not taken",
    ),
    ("empty body", b"", {}, 400, "body", "empty"),
    # Said in JSON's words: the caller sent JSON, not Python (was "got NoneType", "got list", "got str").
    ("a JSON array", b'["x"]', {}, 400, "body", "expected a JSON object, got an array"),
    ("JSON null", b"null", {}, 400, "body", "expected a JSON object, got null"),
    ("a JSON string", b'"x"', {}, 400, "body", "expected a JSON object, got a string"),
    ("a JSON number", b"42", {}, 400, "body", "expected a JSON object, got a number"),
    ("a fractional JSON number", b"4.2", {}, 400, "body", "expected a JSON object, got a number"),
    ("JSON true", b"true", {}, 400, "body", "expected a JSON object, got true"),
    ("JSON false", b"false", {}, 400, "body", "expected a JSON object, got false"),
    ("missing prompt", b'{"width": 640}', {}, 400, "prompt", "Field required"),
    ("empty prompt", b'{"prompt": "   "}', {}, 400, "prompt", "must not be empty"),
    # zero-width spaces, a joiner and a direction mark: nothing a provider could draw (QA run: it was drawn)
    ("invisible prompt", b'{"prompt": "\\u200b\\u200d \\u200e"}', {}, 400, "prompt", "has no visible character"),
    ("prompt not a string", b'{"prompt": 42}', {}, 400, "prompt", "valid string"),
    ("prompt too long", json.dumps({"prompt": "x" * 3000}).encode(), {}, 400, "prompt", "limit is 2000"),
    # JSON can spell a lone surrogate; no provider (nor the log) can take it, so it must not reach them
    (
        "lone surrogate in the prompt",
        b'{"prompt": "caf\\ud800"}',
        {},
        400,
        "prompt",
        "character 4 is not valid Unicode",
    ),
    (
        "lone surrogate in the keyword",
        b'{"prompt": "x", "keyword": "\\udce9"}',
        {},
        400,
        "keyword",
        "not valid Unicode",
    ),
    ("width not a number", b'{"prompt": "x", "width": "wide"}', {}, 400, "width", "valid integer"),
    # QA: Python's int() reads these as 128; a size sent as text is digits only
    ("width with an underscore", b'{"prompt": "x", "width": "1_28"}', {}, 400, "width", "valid integer"),
    ("width padded with spaces", b'{"prompt": "x", "width": " 128 "}', {}, 400, "width", "valid integer"),
    ("fractional width", b'{"prompt": "x", "width": 640.5}', {}, 400, "width", "fractional"),
    ("boolean width", b'{"prompt": "x", "width": true}', {}, 400, "width", "valid integer, got a boolean"),
    ("absurd width", b'{"prompt": "x", "width": 100000000}', {}, 400, "width", "between 64 and 4096"),
    ("negative height", b'{"prompt": "x", "height": -5}', {}, 400, "height", "between 64 and 4096"),
    ("infinite width", b'{"prompt": "x", "width": 1e400}', {}, 400, "width", "finite"),
    ("NaN", b'{"prompt": "x", "width": NaN}', {}, 400, "body", "NaN is not a JSON number"),
    ("unknown style", b'{"prompt": "x", "style": "cubist"}', {}, 400, "style", "unknown style 'cubist'"),
    ("unknown provider", b'{"prompt": "x", "provider": "dalle"}', {}, 400, "provider", "unknown provider 'dalle'"),
    ("the Worker's imageUrl", b'{"imageUrl": "https://a.example/b.jpg"}', {}, 400, "imageUrl", "not supported"),
    (
        "an imageUrl beside a prompt",
        b'{"prompt": "x", "imageUrl": "https://a.example/b.jpg"}',
        {},
        400,
        "imageUrl",
        "not supported",
    ),
    # An integer articleId is taken (as its decimal text); other non-strings are not.
    ("fractional articleId", b'{"prompt": "x", "articleId": 7.5}', {}, 400, "articleId", "a string or an integer"),
    ("boolean articleId", b'{"prompt": "x", "articleId": true}', {}, 400, "articleId", "a string or an integer"),
    ("articleId an array", b'{"prompt": "x", "articleId": [7]}', {}, 400, "articleId", "a string or an integer"),
    ("not UTF-8", b'{"prompt": "\xff\xfe"}', {}, 400, "body", "UTF-8"),
    ("nested too deeply", NESTED, {}, 400, "body", "nested too deeply"),
    ("oversized body", json.dumps({"prompt": "x" * 70_000}).encode(), {}, 413, "body", "larger than 65536 bytes"),
]


@pytest.mark.parametrize(
    ("body", "headers", "status", "field", "fragment"),
    [case[1:] for case in BAD_INPUT],
    ids=[case[0] for case in BAD_INPUT],
)
async def test_bad_input_is_a_4xx_json_error_naming_the_problem(
    make_gen: Callable[..., ImageGen], body: bytes, headers: dict[str, str], status: int, field: str, fragment: str
) -> None:
    gen = make_gen()
    sent = {"content-type": "application/json", **headers}
    async with api_client(gen) as client:
        response = await client.post("/images/generate", content=body, headers={k: v for k, v in sent.items() if v})
    assert response.status_code == status, response.text
    error = response.json()
    assert error["field"] == field and error["error"].startswith(f"{field}: ") and fragment in error["error"]
    assert "Traceback" not in response.text


async def test_a_chunked_body_over_the_cap_is_refused_while_it_streams(make_gen: Callable[..., ImageGen]) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(100):
            yield b"x" * 1000  # no Content-Length: only counting can catch it
        yield b'"}'

    async with api_client(make_gen()) as client:
        response = await client.post("/images/generate", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["field"] == "body"


async def test_the_workers_provider_field_starts_that_provider_first_with_the_others_behind_it(
    make_gen: Callable[..., ImageGen],
) -> None:
    """CMSes written for the Worker send ``provider``: that entry starts first instead of the top priority; if
    it fails, the rest of the race still answers."""
    gen = make_gen(fakes(a={}, b={}, c={"failureRate": 1.0}))
    async with api_client(gen) as client:

        async def ask(provider: str | None) -> list[tuple[str, str]]:
            body = {"prompt": "x", "width": 64, "height": 64, **({"provider": provider} if provider else {})}
            answer = (await client.post("/images/generate", json=body)).json()
            assert answer["success"], answer
            return [(a["provider"], a["outcome"]) for a in answer["attempts"]]

        assert await ask(None) == [("a", "success")]
        assert await ask("b") == [("b", "success")]
        assert await ask(" B ") == [("b", "success")]  # as a CMS might send it
        assert await ask("c") == [("c", "failed"), ("a", "success")]  # failed: the next by priority at once


async def test_a_provider_asked_for_that_cannot_race_is_named_in_the_answers_notes(
    make_gen: Callable[..., ImageGen],
) -> None:
    """A CMS asking for ``fal`` without FAL_KEY, or for a disabled entry, gets another provider's image: the
    answer says so, with the reason, rather than let that image pass for the one asked for."""
    document = fakes(a={}, b={})
    document["providers"]["b"]["enabled"] = False
    document["providers"]["fal"] = {"enabled": True, "priority": 9}
    gen = make_gen(document)
    async with api_client(gen) as client:

        async def notes(provider: str) -> list[str]:
            body = {"prompt": "x", "width": 64, "height": 64, "provider": provider}
            answer = (await client.post("/images/generate", json=body)).json()
            assert answer["success"] and answer["provider"] == "a", answer
            notes: list[str] = answer["notes"]
            return notes

        assert await notes("a") == []
        assert await notes("b") == [
            "provider 'b' was asked for but did not race: it is disabled (providers.b.enabled); the others raced"
        ]
        assert await notes("fal") == [
            "provider 'fal' was asked for but did not race: its key is not set (FAL_KEY); the others raced"
        ]


async def test_the_provider_field_finds_an_entry_whatever_its_case(make_gen: Callable[..., ImageGen]) -> None:
    gen = make_gen(fakes(a={}, PhotoDesk={}))
    async with api_client(gen) as client:
        for asked in ("PhotoDesk", "photodesk", "PHOTODESK"):
            body = {"prompt": "x", "width": 64, "height": 64, "provider": asked}
            answer = (await client.post("/images/generate", json=body)).json()
            assert answer["provider"] == "PhotoDesk", (asked, answer)


async def test_rejected_input_is_logged_as_rejected(make_gen: Callable[..., ImageGen]) -> None:
    gen = make_gen()
    async with api_client(gen) as client:
        await client.post("/images/generate", json={"prompt": "x", "width": 99999})
    await gen.flush()
    row = recent_requests(gen.log, limit=1)[0]
    assert (row["status"], row["source"]) == ("rejected", "api") and row["error"].startswith("width: ")


async def test_a_prompt_that_is_not_unicode_is_refused_logged_and_never_reaches_a_provider(
    make_gen: Callable[..., ImageGen],
) -> None:
    """Before, every provider failed on it ("surrogates not allowed", counted as transient), which opened every
    breaker after a few such requests, and the log rows could not be written."""
    gen = make_gen()
    async with api_client(gen) as client:
        for _ in range(6):
            response = await client.post(
                "/images/generate", content=b'{"prompt": "caf\\ud800"}', headers={"content-type": "application/json"}
            )
            assert response.status_code == 400, response.text
    await gen.flush()
    rows = recent_requests(gen.log)
    assert [(r["status"], r["prompt"]) for r in rows] == [("rejected", "caf\\ud800")] * 6  # escaped, kept
    assert all(not attempts_for(gen.log, r["id"]) for r in rows)
    assert all(str(record.state) == "closed" for record in gen.breakers.snapshot().values())


async def test_a_body_that_is_not_a_request_is_logged_as_rejected_and_one_refused_unread_is_not(
    make_gen: Callable[..., ImageGen],
) -> None:
    """Malformed JSON or a JSON array is a request refused like any invalid one: a ``rejected`` row whose id
    is the answer's ``X-Request-ID``. A body refused before it is read (wrong type, over the size cap) is in
    the server log only, so a flood of them costs no database writes."""
    gen = make_gen()
    json_type = {"content-type": "application/json"}
    async with api_client(gen) as client:
        malformed = await client.post("/images/generate", content=b'{"prompt": ', headers=json_type)
        array = await client.post("/images/generate", content=b'["x"]', headers=json_type)
        unread = await client.post(
            "/images/generate", content=b'{"prompt": "x"}', headers={"content-type": "text/plain"}
        )
        too_big = await client.post("/images/generate", content=b"x" * 70_000, headers=json_type)
    assert [r.status_code for r in (malformed, array, unread, too_big)] == [400, 400, 415, 413]
    await gen.flush()
    rows = {row["id"]: row for row in recent_requests(gen.log, limit=10)}
    assert len(rows) == 2
    for response in (malformed, array):
        row = rows[response.headers["x-request-id"]]
        assert (row["status"], row["source"], row["prompt"]) == ("rejected", "api", "")
        assert row["error"] == response.json()["error"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            b'{"prompt": "harbour cranes", "width": 640, "prompt": "a burning ship"}',
            "the key 'prompt' is given twice in one object (JSON keeps only the last one): remove one",
        ),
        # the same key spelled with an escape is the same key once parsed
        (
            b'{"prompt": "x", "width": 640, "\\u0077idth": 64, "width": 128}',
            "the key 'width' is given 3 times in one object (JSON keeps only the last one): remove one",
        ),
        (
            b'{"prompt": "x", "width": 640, "height": 360, "width": 64, "height": 64, "prompt": "y"}',
            "the keys 'prompt', 'width', 'height' are each given more than once in one object (JSON keeps only "
            "the last of each): keep one of each",
        ),
    ],
    ids=["prompt twice", "width three times, once escaped", "three keys twice"],
)
async def test_a_body_giving_a_key_twice_is_refused_naming_the_key_and_logged_as_rejected(
    make_gen: Callable[..., ImageGen], body: bytes, reason: str
) -> None:
    """QA: a CMS bug sending two ``prompt`` (or two sizes) got an image of the last one, without a word: JSON
    parsers keep the last. It is a 400 in the error shape naming each repeated key, as other bad JSON is; the
    request is logged as rejected and no provider is called."""
    gen = make_gen()
    async with api_client(gen) as client:
        response = await client.post("/images/generate", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json() == {"error": f"body: {reason}", "field": "body"}
    await gen.flush()
    row = recent_requests(gen.log, limit=1)[0]
    assert (row["id"], row["status"], row["error"]) == (response.headers["x-request-id"], "rejected", f"body: {reason}")
    assert not attempts_for(gen.log, row["id"])


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": "Basic YWRtaW46YWRtaW4="}, 401),
        ({"Authorization": "Bearer api-token-0123456789"}, 200),
    ],
)
async def test_generate_requires_the_api_token_when_one_is_set(
    make_gen: Callable[..., ImageGen], headers: dict[str, str], status: int
) -> None:
    gen = make_gen(IMAGEGEN_API_TOKEN="api-token-0123456789")
    async with api_client(gen) as client:
        response = await client.post(
            "/images/generate", json={"prompt": "x", "width": 64, "height": 64}, headers=headers
        )
        config = (await client.get("/config")).json()
    assert response.status_code == status
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["field"] is None and "bearer token" in response.json()["error"]
    assert config["auth"] == {"generateRequiresToken": True}


async def test_cors_admits_only_the_configured_origins(make_gen: Callable[..., ImageGen]) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    async with api_client(make_gen(IMAGEGEN_CORS_ORIGINS="https://cms.example")) as client:
        allowed = await client.options("/images/generate", headers={"Origin": "https://cms.example", **preflight})
        other = await client.options("/images/generate", headers={"Origin": "https://evil.example", **preflight})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://cms.example"
    assert "access-control-allow-origin" not in other.headers
    async with api_client(make_gen()) as client:  # none configured: no CORS at all
        plain = await client.post("/images/generate", json={"prompt": "x"}, headers={"Origin": "https://cms.example"})
    assert "access-control-allow-origin" not in plain.headers


async def test_cors_preflights_from_origins_configured_in_another_case_or_with_the_default_port_pass(
    make_gen: Callable[..., ImageGen],
) -> None:
    """QA: with `IMAGEGEN_CORS_ORIGINS='https://CMS.Example.com,https://cms2.example.com:443'` the browsers'
    preflights (`Origin: https://cms.example.com`, `https://cms2.example.com`) got 400."""
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    gen = make_gen(IMAGEGEN_CORS_ORIGINS="https://CMS.Example.com,https://cms2.example.com:443")
    async with api_client(gen) as client:
        for origin in ("https://cms.example.com", "https://cms2.example.com"):
            answer = await client.options("/images/generate", headers={"Origin": origin, **preflight})
            assert (answer.status_code, answer.headers.get("access-control-allow-origin")) == (200, origin)
        other = await client.options("/images/generate", headers={"Origin": "https://cms3.example.com", **preflight})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers


async def test_openapi_documents_the_worker_contract(make_gen: Callable[..., ImageGen]) -> None:
    async with api_client(make_gen()) as client:
        spec: dict[str, Any] = (await client.get("/openapi.json")).json()
        docs = await client.get("/docs")
    operation = spec["paths"]["/images/generate"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"prompt", "keyword", "articleId", "width", "height", "style", "provider"}
    assert schema["required"] == ["prompt"]
    assert {"/health", "/config", "/admin/stats", "/admin/circuit-breaker", "/files/{key}"} <= set(spec["paths"])
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


async def test_an_unexpected_error_is_a_json_500_without_a_traceback(
    make_gen: Callable[..., ImageGen], monkeypatch: pytest.MonkeyPatch
) -> None:
    gen = make_gen(FAL_KEY="fal-key-in-a-crash-0000")

    async def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("provider SDK exploded near fal-key-in-a-crash-0000")

    monkeypatch.setattr(gen, "generate", crash)
    # The error is answered, not raised on to the server (QA: uvicorn logged its traceback a second time).
    transport = httpx.ASGITransport(app=create_app(gen), raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post("/images/generate", json={"prompt": "x"})
    assert response.status_code == 500
    body = response.json()
    request_id = response.headers["x-request-id"]  # QA: the 500 had none
    assert body == {"error": f"internal error; see the server log (requestId {request_id})", "field": None}
    assert "Traceback" not in response.text and "exploded" not in response.text


async def test_a_store_failure_answers_the_default_image_without_naming_the_store(
    make_gen: Callable[..., ImageGen], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The full reason (endpoint, object key, what to check) is for operators: the log row and the server
    log have it; the caller gets one sentence, as for a 503."""
    from imagegen_core.api.public import STORE_FAILED_ERROR
    from imagegen_core.errors import StorageError
    from imagegen_core.storage import LocalStore, StoredObject

    class RefusingStore(LocalStore):
        async def put(self, key: str, data: bytes, **kwargs: Any) -> StoredObject:
            raise StorageError("cannot reach R2 at https://0123abcd.r2.cloudflarestorage.com for the upload")

    gen = make_gen(fakes(painter={}), store=RefusingStore(tmp_path / "bucket"))
    async with api_client(gen) as client:
        body = (await client.post("/images/generate", json={"prompt": "x", "width": 64, "height": 64})).json()
    await gen.flush()
    assert (body["success"], body["provider"], body["error"]) == (False, "default", STORE_FAILED_ERROR)
    row = recent_requests(gen.log, limit=1)[0]
    assert "0123abcd.r2.cloudflarestorage.com" in row["error"] and "kept in the spool" in row["error"]
    assert any("0123abcd.r2.cloudflarestorage.com" in r.getMessage() for r in caplog.records)

    # QA: with the spool failing too (a full disk), the answer still said the image "is kept"
    from imagegen_core.api.public import IMAGE_LOST_ERROR
    from imagegen_core.storage import Spool

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the spool folder should be")
    lost = make_gen(fakes(painter={}), store=RefusingStore(tmp_path / "bucket"), spool=Spool(blocked))
    async with api_client(lost) as client:
        body = (await client.post("/images/generate", json={"prompt": "x", "width": 64, "height": 64})).json()
    # ... and the default image could not be stored either: it is answered inline (SRE: a URL that 404d)
    from imagegen_core.delivery import DEFAULT_INLINE_ERROR

    assert (body["success"], body["error"]) == (False, f"{IMAGE_LOST_ERROR}; {DEFAULT_INLINE_ERROR}")
    assert body["url"].startswith("data:image/webp;base64,")


async def test_a_request_id_that_names_another_request_is_a_409_and_both_rows_stay(
    make_gen: Callable[..., ImageGen], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An HTTP caller cannot choose the id (the server makes it, and ignores any X-Request-ID sent); should the
    id it made name another request (made to here: the service's new id is the first request's), the request is
    refused 409 in the API's error shape, logged as rejected under its own X-Request-ID, and the first request's
    row is left as it was. QA: a used id lost the second request's row and overwrote the first's."""
    gen = make_gen()
    async with api_client(gen) as client:
        first = await client.post("/images/generate", json=WORKER_REQUEST, headers={"X-Request-ID": "0" * 32})
        taken = first.json()["requestId"]
        assert taken != "0" * 32  # a client's X-Request-ID is not taken
        monkeypatch.setattr(gen, "new_request_id", lambda: taken, raising=False)
        second = await client.post("/images/generate", json={**WORKER_REQUEST, "prompt": "another"})
    assert first.status_code == 200 and first.headers["x-request-id"] == taken
    assert second.status_code == 409 and second.json() == {
        "error": "requestId: the id made for this request names another request already; retry",
        "field": "requestId",
    }
    refused = second.headers["x-request-id"]
    assert refused != taken
    await gen.flush()
    rows = {row["id"]: row for row in recent_requests(gen.log, limit=10)}
    assert set(rows) == {taken, refused}
    assert (rows[taken]["prompt"], rows[taken]["status"], rows[taken]["url"]) == (
        WORKER_REQUEST["prompt"],
        "success",
        first.json()["url"],
    )
    assert (rows[refused]["status"], rows[refused]["prompt"]) == ("rejected", "another")
    assert "already used" in rows[refused]["error"]
