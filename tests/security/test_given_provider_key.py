"""The key of a provider instance given in code (``ImageGen.from_settings(providers={...})``) is a secret like the
settings' keys: redacted from results, errors, the log and breaker reasons (QA: a plugin built as
``PhotoDesk(name="pd", api_key=...)`` whose API echoed the key in its 401 had it in ``result.error``, the attempts,
the breaker's warning and the log DB in clear)."""

from __future__ import annotations

import base64
from typing import Any, ClassVar

import pytest

from imagegen_core import FailureClass, ImageGen, ProviderBase, ProviderContext, ProviderError, ProviderJob
from imagegen_core.console_data import breaker_rows
from imagegen_core.providers.base import ProviderOutput
from tests.api.conftest import ADMIN, ADMIN_TOKEN, api_client
from tests.faults.harness import db_file

KEY = "pd-given-in-code-0123456789"


class EchoingProvider(ProviderBase):
    """A plugin whose API answers a 401 that quotes the key it was sent, as some gateways do, in clear and base64."""

    kind: ClassVar[str] = "photodesk"

    async def generate(self, job: ProviderJob, ctx: ProviderContext) -> ProviderOutput:
        encoded = base64.b64encode(f"{self.api_key}".encode()).decode()
        raise ProviderError(
            f"{self.name}: HTTP 401 invalid key {self.api_key} (sent as {encoded})", failure_class=FailureClass.AUTH
        )


def test_a_given_provider_s_key_is_redacted_everywhere(settings_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    provider = EchoingProvider(name="pd", api_key=KEY)
    with ImageGen.from_settings(settings_factory(), providers={"pd": provider}) as gen:
        gen.set_config({"providers": {"pd": {"priority": 0}, "offline": {"enabled": False}}}, merge=True)
        first = gen.generate_sync({"prompt": "a lighthouse", "width": 64, "height": 64})
        second = gen.generate_sync({"prompt": "a lighthouse", "width": 64, "height": 64})  # skipped: its breaker
        path = db_file(gen)
    assert not first.success and first.attempts[0].failure_class == FailureClass.AUTH
    encoded = base64.b64encode(KEY.encode()).decode().rstrip("=")
    for result in (first, second):
        shown = result.model_dump_json()
        assert KEY not in shown and encoded not in shown, shown
        assert "***" in (result.attempts[0].error or ""), result.attempts
    assert "circuit breaker open" in caplog.text and KEY not in caplog.text, caplog.text
    logged = b"".join(file.read_bytes() for file in path.parent.glob("imagegen.db*"))  # -wal included, if any
    assert b"HTTP 401 invalid key" in logged
    assert KEY.encode() not in logged and encoded.encode() not in logged


async def test_a_given_provider_s_key_is_redacted_by_the_admin_api_and_the_console(settings_factory: Any) -> None:
    """The answers of ``create_app(gen)`` and the console's tables redact it too (they used the settings' secrets
    only): here in a breaker reason an admin pasted it into, which the log's own redaction never saw."""
    settings = settings_factory(IMAGEGEN_ADMIN_TOKEN=ADMIN_TOKEN)
    async with ImageGen.from_settings(settings, providers={"pd": EchoingProvider(name="pd", api_key=KEY)}) as gen:
        gen.set_config({"providers": {"pd": {"priority": 0}}}, merge=True)
        gen.breakers.force_open("pd", reason=f"the vendor revoked {KEY}")
        async with api_client(gen) as client:
            answer = await client.get("/admin/circuit-breaker", headers=ADMIN)
        rows = breaker_rows(gen)
    assert answer.status_code == 200 and "the vendor revoked ***" in answer.text, answer.text
    assert KEY not in answer.text
    shown = [row for row in rows if row["provider"] == "pd"]
    assert shown and KEY not in repr(shown) and "***" in repr(shown), shown
