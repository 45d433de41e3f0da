"""Secrets (provider keys, the admin and API tokens) never reach a response or a log line, even when a
provider echoes its key back in an error."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Callable, Iterator

import pytest

from imagegen_core.service import ImageGen
from tests.logcapture import redacted_json_log
from tests.realserver import ScriptedServer, send_json

from .conftest import ADMIN, ADMIN_TOKEN, NETWORKED_OFF, api_client

FAL_KEY = "fal-key-SECRET-4f1e2d3c"
REPLICATE_TOKEN = "r8_SECRET_replicate_77aa"
UNSPLASH_KEY = "unsplash-SECRET-key-9b9b"
API_TOKEN = "api-token-SECRET-0c0c0c"
SECRETS = [FAL_KEY, REPLICATE_TOKEN, UNSPLASH_KEY, API_TOKEN, ADMIN_TOKEN]


@pytest.fixture
def leaky_fal() -> Iterator[ScriptedServer]:
    """A fal stand-in on 127.0.0.1 that refuses the key and quotes it back (as some APIs do)."""

    async def handler(method: str, path: str, writer: asyncio.StreamWriter) -> None:
        await send_json(writer, 401, {"detail": f"Invalid key {FAL_KEY}; also tried {REPLICATE_TOKEN}"})

    with ScriptedServer(handler) as server:
        yield server


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """Everything logged during the test, through the serve command's redacting JSON handler."""
    with redacted_json_log(SECRETS) as stream:
        yield stream


async def test_no_secret_in_responses_or_logs(
    make_gen: Callable[..., ImageGen], leaky_fal: ScriptedServer, captured_logs: io.StringIO
) -> None:
    providers = {**NETWORKED_OFF, "fal": {"enabled": True, "retries": 0, "timeout": 5000, "options": {"mode": "sync"}}}
    gen = make_gen(
        {"providers": providers},
        FAL_KEY=FAL_KEY,
        REPLICATE_API_TOKEN=REPLICATE_TOKEN,
        UNSPLASH_ACCESS_KEY=UNSPLASH_KEY,
        IMAGEGEN_API_TOKEN=API_TOKEN,
        provider_base_urls={"fal": leaky_fal.base_url},
    )
    texts: dict[str, str] = {}
    async with api_client(gen) as client:
        generated = await client.post(
            "/images/generate",
            json={"prompt": "x", "width": 64, "height": 64},
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        )
        texts["generate"] = generated.text
        for path in ("/config", "/health", "/openapi.json"):
            texts[path] = (await client.get(path)).text
        await gen.flush()
        for path in ("status", "providers", "config", "circuit-breaker", "alerts", "stats?days=1", "storage"):
            response = await client.get(f"/admin/{path}", headers=ADMIN)
            assert response.status_code == 200, path
            texts[path] = response.text
    logging.getLogger("imagegen.test").error("a careless line with %s and %s", FAL_KEY, json.dumps({"k": ADMIN_TOKEN}))

    result = generated.json()
    assert result["success"] is False and result["attempts"][0]["failureClass"] == "auth"
    assert "Invalid key ***" in result["error"]  # the echo happened, and was redacted
    assert "auth failure" in texts["circuit-breaker"]  # the breaker tripped, its reason is shown…
    for name, text in texts.items():
        for secret in SECRETS:
            assert secret not in text, (name, secret)  # …without the key
    public = json.loads(texts["/config"])
    assert "*" not in texts["/config"] and "options" not in texts["/config"]  # not even masked values
    assert set(public) == {"providers", "race", "defaults", "limits", "styles", "storage", "auth", "rateLimit"}

    log = captured_logs.getvalue()
    for secret in SECRETS:
        assert secret not in log
    lines = [json.loads(line) for line in log.splitlines()]
    careless = [line for line in lines if line["logger"] == "imagegen.test"]
    assert careless[0]["message"] == 'a careless line with *** and {"k": "***"}'
    requests = [line for line in lines if line.get("message") == "request" and line["logger"] == "imagegen.api"]
    generate_line = next(line for line in requests if line["path"] == "/images/generate")
    assert generate_line["requestId"] == result["requestId"] and generate_line["level"] == "WARNING"
    assert (generate_line["outcome"], generate_line["winner"], generate_line["status"]) == ("failed", "default", 200)
    assert isinstance(generate_line["elapsedMs"], float) and generate_line["time"].endswith("+00:00")
    assert len(requests) == 1 + 3 + 7  # one line per request


async def test_getting_the_config_and_putting_it_back_keeps_a_secret_inside_a_value(
    make_gen: Callable[..., ImageGen],
) -> None:
    """QA: a config value holding a secret (a style template with a key in it) comes back from GET as ``***``, as
    every answer redacts secrets; PUT that answer back unchanged stored a new version with ``***`` in it, a
    silent change. Now such a text is given back as it is in force: nothing changes, no version is stored. A
    text edited otherwise is stored as sent."""
    gen = make_gen(REPLICATE_API_TOKEN=REPLICATE_TOKEN)
    async with api_client(gen) as client:
        patched = await client.patch(
            "/admin/config", json={"styles": {"leak": f"{{prompt}} {REPLICATE_TOKEN}"}}, headers=ADMIN
        )
        assert patched.status_code == 200, patched.text
        answer = (await client.get("/admin/config", headers=ADMIN)).json()
        assert answer["config"]["styles"]["leak"] == "{prompt} ***"
        put = await client.put("/admin/config", json=answer, headers=ADMIN)
        assert put.status_code == 200, put.text
        assert put.json()["version"] == answer["version"]  # unchanged: no version stored
        assert gen.config.styles["leak"] == f"{{prompt}} {REPLICATE_TOKEN}"
        answer["config"]["styles"]["leak"] = "{prompt} *** edited"
        edited = await client.put("/admin/config", json=answer, headers=ADMIN)
        assert edited.status_code == 200 and edited.json()["version"] == answer["version"] + 1
        assert gen.config.styles["leak"] == "{prompt} *** edited"


def test_serve_logging_honours_the_level_and_replaces_uvicorns_handlers() -> None:
    from imagegen_core.api.jsonlog import RedactingJsonFormatter, configure_logging

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        handler = configure_logging("WARNING", SECRETS)
        assert root.handlers == [handler] and root.level == logging.WARNING
        assert isinstance(handler.formatter, RedactingJsonFormatter)
        assert not logging.getLogger("imagegen.api").isEnabledFor(logging.INFO)  # no request lines at WARNING
        assert logging.getLogger("uvicorn.error").handlers == [] and logging.getLogger("uvicorn.error").propagate
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_the_http_clients_line_per_call_shows_only_at_debug(leaky_fal: ScriptedServer) -> None:
    """Regression: at INFO, httpx added a line per provider call to the one line per request, with the URL
    (Unsplash's query is the prompt)."""
    import httpx

    from imagegen_core.api.jsonlog import configure_logging

    root = logging.getLogger()
    saved = (list(root.handlers), root.level, {n: logging.getLogger(n).level for n in ("httpx", "httpcore")})
    shown: dict[str, str] = {}
    try:
        for level in ("INFO", "DEBUG"):
            handler = configure_logging(level, SECRETS)
            stream = io.StringIO()
            assert isinstance(handler, logging.StreamHandler)
            handler.setStream(stream)
            httpx.get(f"{leaky_fal.base_url}/search/photos?query=a+secret+prompt")
            shown[level] = stream.getvalue()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name, level_number in saved[2].items():
            logging.getLogger(name).setLevel(level_number)
    assert "a+secret+prompt" not in shown["INFO"] and "HTTP Request" not in shown["INFO"]
    assert "a+secret+prompt" in shown["DEBUG"]  # asked for: every call
