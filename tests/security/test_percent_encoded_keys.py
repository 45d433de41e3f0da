"""A key echoed percent-encoded is a secret like the key itself: redacted from results, the log and breaker reasons
(QA: a stand-in for Replicate on 127.0.0.1 answered a 401 quoting the token it was sent as a URL carries it,
``r8_…%3A…%2F…%2B…%3D``; the generate's answer, the attempt and request rows, the breaker's reason in the log
DB, ``/admin/circuit-breaker`` and the server's JSON log all had it in clear; raw and base64 forms were hidden)."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any
from urllib.parse import quote

import pytest

from imagegen_core import ImageGen
from imagegen_core.errors import redact
from imagegen_core.settings import Settings
from tests.api.conftest import NETWORKED_OFF
from tests.faults.harness import db_file
from tests.realserver import ScriptedServer, send_json

#: Keys with the characters URLs escape: an R2 secret holds "/" and "+", FAL_KEY is "<id>:<secret>".
TOKEN = "r8_PCT_replicate:tok/en+9z="
KEYS = {
    "REPLICATE_API_TOKEN": TOKEN,
    "FAL_KEY": "fal-PCT-id-1234:fal/secret+part=",
    "R2_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYPCT=",
    "IMAGEGEN_ADMIN_TOKEN": "admin/PCT+token=0123456789",
}


def test_every_secret_is_hidden_percent_encoded_too() -> None:
    """In either case of hex digits, with "/" escaped or not; FAL_KEY's halves may be hidden one by one."""
    secrets = Settings(_env_file=None, **KEYS).secret_values()
    for value in KEYS.values():
        for form in (quote(value, safe=""), quote(value, safe="").lower(), quote(value)):
            shown = redact(f"got {form} here", secrets)
            assert re.fullmatch(r"got \*\*\*(%3A\*\*\*)? here", shown, re.IGNORECASE), (form, shown)


def test_a_key_echoed_percent_encoded_is_redacted_everywhere(
    settings_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    encoded = quote(TOKEN, safe="")

    async def handler(method: str, path: str, writer: asyncio.StreamWriter) -> None:
        await send_json(writer, 401, {"title": "Unauthenticated", "detail": f"invalid token {encoded}", "status": 401})

    caplog.set_level(logging.DEBUG, logger="imagegen")
    with ScriptedServer(handler) as server:
        settings = settings_factory(REPLICATE_API_TOKEN=TOKEN, provider_base_urls={"replicate": server.base_url})
        with ImageGen.from_settings(settings) as gen:
            providers = {**NETWORKED_OFF, "replicate": {"enabled": True, "retries": 0}, "offline": {"enabled": False}}
            gen.set_config({"providers": providers}, merge=True)
            first = gen.generate_sync({"prompt": "a lighthouse", "width": 64, "height": 64})
            second = gen.generate_sync({"prompt": "a lighthouse", "width": 64, "height": 64})  # its breaker's reason
            path = db_file(gen)
    assert first.attempts[0].http_status == 401 and "invalid token ***" in (first.attempts[0].error or "")
    for result in (first, second):
        assert encoded.casefold() not in result.model_dump_json().casefold(), result.model_dump_json()
    assert "circuit breaker open" in caplog.text and encoded not in caplog.text, caplog.text
    logged = b"".join(file.read_bytes() for file in path.parent.glob("imagegen.db*"))  # -wal included, if any
    assert b"invalid token ***" in logged and encoded.encode() not in logged
