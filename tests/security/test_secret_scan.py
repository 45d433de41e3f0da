"""The secret scan: a distinctive value for every secret setting, servers that echo them back (providers quote
their key in a 401; the S3 stand-in quotes our Authorization header), then a search for every value in every
place one could surface — captured log records, the JSON log output, exception messages and reprs, ``/config``,
every ``/admin/*`` response, the log DB dump and every byte written under IMAGEGEN_HOME."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from imagegen_core import ImageGen
from imagegen_core.errors import ImageGenError, clip, redact
from imagegen_core.settings import Settings
from tests.api.conftest import NETWORKED_OFF, api_client
from tests.logcapture import redacted_json_log
from tests.realserver import ScriptedServer, send_bytes, send_json

SECRETS = {
    "REPLICATE_API_TOKEN": "r8_SCAN_replicate_5e5e5e5e",
    "FAL_KEY": "fal-SCAN-key-6f6f6f6f:secretpart",
    # fal's other spelling of its key: FAL_KEY wins, but the halves are secrets all the same
    "FAL_KEY_ID": "fal-SCAN-id-3a3a3a3a",
    "FAL_KEY_SECRET": "fal-SCAN-secret-4b4b4b4b",
    "UNSPLASH_ACCESS_KEY": "unsplash-SCAN-7a7a7a7a",
    "OPENAI_API_KEY": "sk-SCAN-openai-8b8b8b8b",
    "BFL_API_KEY": "bfl-SCAN-key-7c7c7c7c",
    "STABILITY_API_KEY": "sk-SCAN-stability-8d8d8d8d",
    "R2_ACCESS_KEY_ID": "R2SCANACCESSKEY9C9C",
    "R2_SECRET_ACCESS_KEY": "r2-SCAN-secret-0d0d0d0d",
    "IMAGEGEN_ADMIN_TOKEN": "admin-SCAN-token-1e1e1e1e",
    "IMAGEGEN_API_TOKEN": "api-SCAN-token-2f2f2f2f",
    # a third-party provider's key (Settings.provider_api_keys), though no plugin is installed: redacted all the same
    "IMAGEGEN_SCANPLUGIN_API_KEY": "plugin-SCAN-key-5c5c5c5c",
}
VALUES = list(SECRETS.values())
API = {"Authorization": f"Bearer {SECRETS['IMAGEGEN_API_TOKEN']}"}
ADMIN = {"Authorization": f"Bearer {SECRETS['IMAGEGEN_ADMIN_TOKEN']}"}


def test_the_scan_covers_every_secret_setting() -> None:
    """A new SecretStr setting must be added to SECRETS, or the scan below would not look for it."""
    secret_fields = {
        str(field.validation_alias)
        for field in Settings.model_fields.values()
        if field.annotation is not None and SecretStr in getattr(field.annotation, "__args__", (field.annotation,))
    }
    # provider_api_keys (no alias: IMAGEGEN_<KIND>_API_KEY, any kind) is covered by one plugin's key
    assert secret_fields == {*(set(SECRETS) - {"IMAGEGEN_SCANPLUGIN_API_KEY"}), "None"}


@pytest.fixture
def echoing() -> Iterator[ScriptedServer]:
    """Every provider's stand-in (401 quoting every secret) and an S3 stand-in quoting our Authorization header."""

    async def handler(method: str, path: str, writer: asyncio.StreamWriter) -> None:
        if path.startswith("/s3/"):
            auth = f"{SECRETS['R2_ACCESS_KEY_ID']} {SECRETS['R2_SECRET_ACCESS_KEY']}"  # what a bad S3 could echo
            body = f"<Error><Code>InvalidArgument</Code><Message>bad {auth}</Message></Error>".encode()
            await send_bytes(writer, 400, body, content_type="application/xml")
            return
        # As sent, and in other cases (a provider may echo a key lower-cased: QA found that half of FAL_KEY
        # then came through).
        quoted = [case(value) for value in VALUES for case in (str.lower, str)]
        if path.startswith("/search/photos"):  # Unsplash's stand-in quotes them base64-encoded, as a proxy may
            quoted = [base64.b64encode(value.encode()).decode() for value in VALUES]  # QA: reached the log
        await send_json(writer, 401, {"detail": f"Invalid credentials: {' / '.join(quoted)}"})

    with ScriptedServer(handler) as server:
        yield server


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The serve command's redacting JSON output, attached to the root logger at DEBUG for the test, with the
    secrets serve gives it (``Settings.secret_values``)."""
    with redacted_json_log(Settings(_env_file=None, **SECRETS).secret_values()) as stream:
        yield stream


#: FAL_KEY is "<id>:<secret>": either half alone is a secret too.
HALVES = dict(zip(("FAL_KEY id half", "FAL_KEY secret half"), SECRETS["FAL_KEY"].split(":"), strict=True))


def scan(texts: dict[str, str]) -> list[tuple[str, str]]:
    plain = {**SECRETS, **HALVES}
    encoded = {
        f"{name} in base64": base64.b64encode(value.encode()).decode().rstrip("=") for name, value in plain.items()
    }
    wanted = {**plain, **encoded}
    return [
        (where, name)
        for where, text in texts.items()
        for name, value in wanted.items()
        if value.casefold() in text.casefold()
    ]


async def test_no_secret_surfaces_anywhere(
    settings_factory: Any, echoing: ScriptedServer, json_log: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    # Raw records: everything imagegen itself logs at any level, and libraries from INFO up. (botocore's DEBUG
    # records quote raw wire bodies; the JSON output, scanned at DEBUG for every logger, redacts them.)
    caplog.set_level(logging.DEBUG, logger="imagegen")
    caplog.set_level(logging.INFO)
    base = echoing.base_url
    settings = settings_factory(
        **SECRETS,
        R2_ENDPOINT_URL=f"{base}/s3",
        R2_BUCKET="images",
        R2_PUBLIC_BASE_URL="https://images.example",
        provider_base_urls={name: base for name in ("replicate", "fal", "unsplash", "openai", "bfl", "stability")},
    )
    providers = {name: {"enabled": True, "retries": 0, "timeout": 3000} for name in NETWORKED_OFF}
    providers["fal"]["options"] = {"mode": "sync"}
    providers["painter"] = {"type": "fake", "priority": 9, "retries": 0, "options": {"latencyMs": 1}}
    texts: dict[str, str] = {}
    gen = ImageGen.from_settings(settings, source="api")
    gen.set_config({"providers": providers, "defaults": {"timeout": 5000}}, source="test")
    events: list[str] = []
    try:
        async with api_client(gen) as client:
            made = await client.post("/images/generate", json={"prompt": "x", "width": 64, "height": 64}, headers=API)
            texts["generate"] = made.text
            for path in ("/config", "/health", "/openapi.json"):
                texts[path] = (await client.get(path)).text
            await gen.flush()
            schema = json.loads(texts["/openapi.json"])  # every documented admin read
            admin_gets = [path for path, ops in schema["paths"].items() if path.startswith("/admin") and "get" in ops]
            for path in admin_gets:
                answer = await client.get(path, headers=ADMIN)
                assert answer.status_code in (200, 503), (path, answer.text)  # 503: the S3 stand-in refuses
                texts[path] = answer.text
            texts["POST breaker"] = (
                await client.post("/admin/circuit-breaker", json={"action": "reset-all"}, headers=ADMIN)
            ).text
            texts["PATCH config"] = (await client.patch("/admin/config", json={}, headers=ADMIN)).text
            texts["wrong token"] = (await client.get("/admin/status", headers={"Authorization": "Bearer no"})).text
        # An editor pasting a key into the request (the whole key, or only FAL_KEY's secret half)
        pasted = {
            "prompt": f"again {SECRETS['OPENAI_API_KEY']}",
            "keyword": HALVES["FAL_KEY secret half"],
            "article_id": VALUES[0],
        }
        result = await gen.generate(pasted, on_event=lambda e: events.append(repr(e)))
        texts["result"] = result.model_dump_json()
        texts["events"] = "\n".join(events)
        for call in (
            gen.store.check(),
            gen.store.put("ai/x.webp", b"x", content_type="a", cache_control="b", metadata={}),
        ):
            with pytest.raises(ImageGenError) as info:
                await call
            texts[f"exception {type(info.value).__name__}"] = f"{info.value!s} {info.value!r}"
        texts["reprs"] = " ".join(repr(x) for x in (settings, gen.store, *gen.entrants()))
        await gen.flush()
    finally:
        await gen.aclose()

    assert made.json()["success"] is False  # every provider refused, the painter's image could not be stored
    assert {a["failureClass"] for a in made.json()["attempts"] if a["failureClass"]} == {"auth"}
    assert "Invalid credentials: ***" in texts["generate"] and "could not be stored" in texts["generate"]
    assert set(admin_gets) >= {"/admin/status", "/admin/providers", "/admin/config", "/admin/circuit-breaker"}
    texts["caplog"] = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    texts["json log"] = json_log.getvalue()
    conn = sqlite3.connect(settings.home / "imagegen.db")
    texts["log DB dump"] = "\n".join(conn.iterdump())
    conn.close()
    assert "Invalid credentials: ***" in texts["log DB dump"]  # the echoes were logged, redacted
    assert "kept in the spool" in texts["log DB dump"] and "kept in the spool" in texts["caplog"]  # the details
    for path in sorted(p for p in settings.home.rglob("*") if p.is_file()):  # DB, WAL, spool, sidecars
        texts[f"file {path.relative_to(settings.home)}"] = path.read_bytes().decode("latin-1")
        for attribute in os.listxattr(path) if hasattr(os, "listxattr") else []:  # stored images' metadata
            texts[f"xattr {attribute} of {path.relative_to(settings.home)}"] = os.getxattr(path, attribute).decode()
    assert scan(texts) == []


def pieces_left(text: str, secret: str) -> list[str]:
    """The pieces of ``secret`` of at least 6 characters that begin or end it, found anywhere in ``text``."""
    sizes = range(6, len(secret) + 1)
    return [piece for n in sizes for piece in (secret[:n], secret[-n:]) if piece in text]


async def test_a_secret_cut_short_leaves_no_piece_of_it(settings_factory: Any) -> None:
    """Regression: texts were cut before they were redacted, so a cut inside a key left most of it: a provider's
    error body cut to 300 characters, a refused prompt cut to 2000, a refused list's repr cut in the middle."""
    key = SECRETS["REPLICATE_API_TOKEN"]

    async def handler(method: str, path: str, writer: asyncio.StreamWriter) -> None:
        # The key lands across the 300-character cut of the error detail ("Server error: " + 270 x's).
        await send_json(writer, 500, {"title": "Server error", "detail": "x" * 270 + key + " end"})

    with ScriptedServer(handler) as server:
        settings = settings_factory(REPLICATE_API_TOKEN=key, provider_base_urls={"replicate": server.base_url})
        providers: dict[str, Any] = {name: {"enabled": False} for name in NETWORKED_OFF}
        providers["replicate"] = {"enabled": True, "retries": 0, "timeout": 3000}
        gen = ImageGen.from_settings(settings)
        try:
            gen.set_config({"providers": providers}, source="test")
            result = await gen.generate({"prompt": "x", "width": 64, "height": 64})
            refused = [
                {"prompt": "a" * 1990 + key, "width": 0},  # cut at 2000 characters
                {"prompt": ["a" * 95 + key + "b" * 95]},  # the repr of a string of 200+ is cut in its middle
            ]
            for request in refused:
                with pytest.raises(ImageGenError):
                    await gen.generate(request)
            await gen.flush()
        finally:
            await gen.aclose()
    assert result.success is False and "Server error: xxx" in (result.error or "")
    conn = sqlite3.connect(settings.home / "imagegen.db")
    dump = "\n".join(conn.iterdump())
    conn.close()
    assert dump.count("'rejected'") >= 2 and "Server error: xxx" in dump  # the rows are there
    assert pieces_left(result.model_dump_json(), key) == []
    assert pieces_left(dump, key) == []


def test_redact_hides_a_secret_and_the_pieces_a_cut_leaves_of_it() -> None:
    key = "r8_SECRETVALUE123"
    assert redact(f"a {key} b {key}", [key]) == "a *** b ***"
    assert clip("x" * 5 + key, 15) == "xxxxxr8_SECRET…"
    assert redact(clip("x" * 5 + key, 15), [key]) == "xxxxx***…"  # cut short inside it
    assert redact(f"({key[:9]}...{key[9:]})", [key]) == "(***...***)"  # a repr cut in its middle
    assert redact(f"x…{key[4:]} end", [key]) == "x…*** end"  # a text resumed inside it
    # a piece away from a cut, shorter than SECRET_PIECE_MIN, or of a secret under PARTIAL_SECRET_MIN stays
    assert redact(f"{key[:9]} and {key[-9:]}", [key]) == f"{key[:9]} and {key[-9:]}"
    assert redact(f"{key[:3]}… and …{key[-3:]}", [key]) == f"{key[:3]}… and …{key[-3:]}"
    assert redact("abcdefgh…", ["abcdefghi"]) == "abcdefgh…"
    assert redact(f"key={key.lower()} / {key.upper()}", [key]) == "key=*** / ***"  # echoed in another case


def test_every_secret_is_hidden_base64_encoded_too() -> None:
    """QA: a credential echoed base64-encoded (a proxy's error page quoting the header it was sent) reached the
    log in clear. Each secret's encoding on its own is hidden, padded or not, in either base64 alphabet."""
    secrets = Settings(_env_file=None, **SECRETS).secret_values()
    for value in [*VALUES, *HALVES.values()]:
        encoded = base64.b64encode(value.encode()).decode()
        for form in (encoded, encoded.rstrip("="), base64.urlsafe_b64encode(value.encode()).decode()):
            assert redact(f"got {form} here", secrets) in ("got *** here", "got ***= here", "got ***== here"), form


def test_settings_shown_whole_leave_out_every_secret_and_the_database_password() -> None:
    """QA run: ``repr(Settings())`` (what a notebook cell shows) and its dumps printed the PostgreSQL
    password of IMAGEGEN_DATABASE_URL, a plain string; the keys were already SecretStr."""
    url = "postgresql://bob:pg-SCAN-password-5c5c@127.0.0.1:5432/imagegen"
    settings = Settings(_env_file=None, **SECRETS, IMAGEGEN_DATABASE_URL=url)  # type: ignore[arg-type]
    assert settings.database_url == url  # the log still connects with it
    for shown in (repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())):
        assert "pg-SCAN-password" not in shown
        assert not [value for value in VALUES if value in shown]
    assert "postgresql://bob@127.0.0.1:5432/imagegen" in repr(settings)


async def test_a_secret_that_is_also_a_word_is_hidden_in_values_but_never_rewrites_an_answer_s_keys(
    settings_factory: Any,
) -> None:
    """QA: with IMAGEGEN_API_TOKEN=provider, a generate answered {"***": "default", …}: its keys were rewritten,
    so no client could read it, and GET /config's {"***s": …} told anyone the token. Keys stay as they are now;
    such a token is warned about at start (refused in production)."""
    settings = settings_factory(IMAGEGEN_API_TOKEN="provider")
    async with ImageGen.from_settings(settings, source="api") as gen, api_client(gen) as client:
        made = await client.post(
            "/images/generate",
            json={"prompt": "x", "width": 64, "height": 64},
            headers={"Authorization": "Bearer provider"},
        )
        public = await client.get("/config")
    answer = made.json()
    assert made.status_code == 200 and {"url", "provider", "elapsedMs", "success"} <= set(answer)
    assert answer["provider"] == "offline" and answer["success"] is True
    assert "providers" in public.json() and "***s" not in public.text
