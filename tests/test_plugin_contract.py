"""What imagegen owes a third-party provider (an ``imagegen.providers`` entry point) and its users: its check's
refusals are config errors like the built-ins', a stored config naming it survives in a process without it,
it gets its API key from the settings (and the key is redacted), and it classifies failures with the same
public helpers as the built-ins (QA)."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import sys
import types
from collections.abc import Mapping
from importlib.metadata import EntryPoint, EntryPoints
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from click.testing import CliRunner
from PIL import Image

import imagegen_core.providers as providers
from imagegen_core import (
    ConfigError,
    ImageGen,
    InvalidRequestError,
    ProviderBase,
    ProviderContext,
    ProviderJob,
    ProviderOutput,
    Settings,
)
from imagegen_core.cli import main
from imagegen_core.providers.base import json_object, send
from tests.api.conftest import ADMIN, ADMIN_TOKEN, api_client
from tests.test_cli import run

GROUP = providers.ENTRY_POINT_GROUP
OFF = {name: {"enabled": False} for name in ("replicate", "fal", "unsplash", "openai")}
BAD_QUALITY = {"providers": {"photodesk": {"type": "photodesk", "options": {"quality": "medium"}}}}


def png(width: int = 64, height: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (20, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


class PhotoDesk(ProviderBase):
    """A third party's provider as a plugin author writes one: it subclasses ProviderBase (so it needs a key),
    refuses a bad option with a plain ValueError, and calls its API through ``send``."""

    kind: ClassVar[str] = "photodesk"
    default_base_url: ClassVar[str] = "https://api.photodesk.example"

    @classmethod
    def check_settings(cls, model: str | None, options: Mapping[str, Any]) -> None:
        if options.get("quality") not in (None, "low", "high"):
            raise ValueError("quality must be low or high")
        if model is not None and not model.startswith("pd-"):
            raise KeyError(model)

    async def generate(self, job: ProviderJob, ctx: ProviderContext) -> ProviderOutput:
        response = await send(
            self.name,
            ctx.client,
            "POST",
            f"{self.base_url}/v1/images",
            headers={"Authorization": f"Bearer {self._api_key}"},
            json={"prompt": job.prompt, "width": job.width, "height": job.height},
        )
        body = json_object(self.name, response, "image answer")
        return ProviderOutput(data=base64.b64decode(body["b64"]), content_type="image/png")


def _with_photodesk() -> Any:
    """``entry_points`` as installed plus ``photodesk`` (this module's :class:`PhotoDesk`)."""
    installed = list(providers.entry_points(group=GROUP))
    extra = EntryPoint(name="photodesk", value=f"{__name__}:PhotoDesk", group=GROUP)

    def entry_points(*, group: str) -> EntryPoints:
        assert group == GROUP
        return EntryPoints([*installed, extra])

    return entry_points


@pytest.fixture
def photodesk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The installed entry points plus ``photodesk``."""
    monkeypatch.setattr(providers, "entry_points", _with_photodesk())


# -- 2. a plugin's check raising something other than FieldProblem ------------------------------------------


@pytest.mark.usefixtures("photodesk")
def test_a_plugins_check_raising_valueerror_is_a_config_error_naming_its_options(settings_factory: Any) -> None:
    """QA: ``gen.set_config`` raised the plugin's raw ValueError, outside the ImageGenError tree."""
    with ImageGen.from_settings(settings_factory()) as gen:
        with pytest.raises(ConfigError, match="quality must be low or high") as caught:
            gen.set_config(BAD_QUALITY, source="test")
        assert caught.value.field == "providers.photodesk.options"
        assert str(caught.value) == "invalid config: providers.photodesk.options: quality must be low or high"
        assert gen.config_version is None  # nothing stored
        with pytest.raises(ConfigError) as caught:  # a KeyError, for the model: named so
            gen.set_config({"providers": {"photodesk": {"type": "photodesk", "model": "dalle"}}})
        assert (caught.value.field, str(caught.value)) == (
            "providers.photodesk.model",
            "invalid config: providers.photodesk.model: 'dalle'",
        )
        gen.set_config({"providers": {"photodesk": {"type": "photodesk", "options": {"quality": "high"}}}})


@pytest.mark.usefixtures("photodesk")
async def test_a_plugins_check_raising_valueerror_is_a_422_from_the_api(settings_factory: Any) -> None:
    """QA: PATCH /admin/config answered 500."""
    gen = ImageGen.from_settings(settings_factory(IMAGEGEN_ADMIN_TOKEN=ADMIN_TOKEN))
    async with gen, api_client(gen) as client:
        for method in ("PATCH", "PUT"):
            response = await client.request(method, "/admin/config", json=BAD_QUALITY, headers=ADMIN)
            assert response.status_code == 422, response.text
            assert response.json()["field"] == "providers.photodesk.options", response.json()
            assert "quality must be low or high" in response.json()["error"]


@pytest.mark.usefixtures("photodesk")
def test_a_plugins_check_raising_valueerror_is_one_line_exit_2_from_config_set(tmp_path: Path) -> None:
    """QA: ``imagegen config set`` printed a traceback and exited 1."""
    document = tmp_path / "bad.json"
    document.write_text(json.dumps(BAD_QUALITY))
    result = CliRunner().invoke(main, ["config", "set", str(document)])
    assert result.exit_code == 2, result.output
    assert result.stderr == ("imagegen: invalid config: providers.photodesk.options: quality must be low or high\n"), (
        result.stderr
    )


# -- 3. a stored config naming a type this process does not have -------------------------------------------

SHARED = {
    "providers": {"replicate": {"enabled": False}, "photodesk": {"type": "photodesk", "enabled": True}},
    "rateLimit": {"enabled": True},
    "defaults": {"timeout": 8000},
}


def test_a_stored_version_naming_a_type_not_installed_here_stays_in_force_without_that_entry(
    settings_factory: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """QA: a process without the plugin threw the whole version away ("no stored config version is valid …
    using the defaults"): replicate raced again, the rate limit was off, the timeout back to 30000."""
    with monkeypatch.context() as installed:
        installed.setattr(providers, "entry_points", _with_photodesk())
        with ImageGen.from_settings(settings_factory()) as gen:
            stored = gen.set_config(SHARED, source="test")
            assert gen.config_version == 1 and stored.providers["photodesk"].enabled
    # The same log, read by a process where photodesk is not installed:
    with ImageGen.from_settings(settings_factory()) as gen:
        config = gen.reload_config()
        assert gen.config_in_force_version == 1
        assert not config.providers["replicate"].enabled and config.rate_limit.enabled
        assert config.defaults.timeout == 8000 and "photodesk" in config.providers
        status = {row["name"]: row for row in gen.provider_status()}
        assert (status["photodesk"]["racing"], status["photodesk"]["notRacing"]) == (
            False,
            "its type 'photodesk' is not installed",
        )
        assert gen.config_history()[0].error is None  # listed as valid: this process uses it
        result = gen.generate_sync({"prompt": "x", "width": 64, "height": 64, "provider": "photodesk"})
        assert result.success and result.provider == "offline"
        assert result.notes == [
            "provider 'photodesk' was asked for but did not race: its type 'photodesk' is not installed; "
            "the others raced"
        ]
        # An edit from this process keeps the entry another one serves; a new entry of an unknown type is refused.
        patched = gen.set_config({"defaults": {"timeout": 9000}}, merge=True)
        assert patched.defaults.timeout == 9000 and "photodesk" in patched.providers
        with pytest.raises(ConfigError, match="unknown provider type 'nope'"):
            gen.set_config({"providers": {"ghost": {"type": "nope"}}}, merge=True)
    assert not [r for r in caplog.records if "no stored config version is valid" in r.getMessage()]
    cli = CliRunner().invoke(main, ["providers"])
    assert cli.exit_code == 0 and "note: photodesk does not race: its type 'photodesk' is not installed" in cli.stderr


# -- 1. a plugin's API key --------------------------------------------------------------------------------

SECRET = "pd-SECRET456-0123456789"
ONLY_PHOTODESK = {"providers": {**OFF, "photodesk": {"type": "photodesk", "retries": 0}}}


def echoing_server(request: httpx.Request) -> httpx.Response:
    """A PhotoDesk API that answers 500 quoting the request's Authorization header (QA's server did)."""
    return httpx.Response(500, json={"error": f"upstream refused {request.headers.get('authorization')}"})


def _log_text(home: Path) -> str:
    """Everything the log DB's files hold, as text (its WAL included)."""
    return b"".join(p.read_bytes() for p in home.glob("imagegen.db*")).decode("latin-1")


@pytest.mark.usefixtures("photodesk")
def test_a_plugin_gets_its_key_from_the_environment_and_it_is_redacted_everywhere(
    settings_factory: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """QA: IMAGEGEN_PHOTODESK_API_KEY did nothing ("not configured"), and a key the plugin read itself went into
    result.error and the log unredacted (``Bearer pd-SECRET456``; built-in keys show ***)."""
    monkeypatch.setenv("IMAGEGEN_PHOTODESK_API_KEY", SECRET)
    settings = Settings(_env_file=None)
    assert SECRET in settings.secret_values() and SECRET not in repr(settings)
    client = httpx.AsyncClient(transport=httpx.MockTransport(echoing_server))
    with ImageGen.from_settings(settings, http_client=client) as gen:
        gen.set_config(ONLY_PHOTODESK, source="test")
        status = {row["name"]: row for row in gen.provider_status()}
        assert (status["photodesk"]["configured"], status["photodesk"]["racing"]) == (True, True)
        result = gen.generate_sync({"prompt": "x", "width": 64, "height": 64, "provider": "photodesk"})
        attempt = next(a for a in result.attempts if a.provider == "photodesk")
        assert attempt.error is not None and "Bearer ***" in attempt.error, attempt.error
        assert SECRET not in json.dumps(result.model_dump(mode="json"))
    assert "Bearer ***" in _log_text(settings.home) and SECRET not in _log_text(settings.home)
    listed = CliRunner().invoke(main, ["providers"])
    row = next(line.split() for line in listed.stdout.splitlines() if line.startswith("photodesk"))
    assert row[3] == "yes", listed.stdout


@pytest.mark.usefixtures("photodesk")
def test_a_plugin_gets_its_key_from_the_env_file_and_says_which_variable_when_it_is_missing(
    settings_factory: Any, tmp_path: Path
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"IMAGEGEN_PHOTODESK_API_KEY={SECRET}\n")
    with_file = Settings(_env_file=env_file)
    assert with_file.provider_key("photodesk") == SECRET and SECRET in with_file.secret_values()
    with ImageGen.from_settings(with_file) as gen:
        gen.set_config(ONLY_PHOTODESK, source="test")
        assert {row["name"]: row["configured"] for row in gen.provider_status()}["photodesk"] is True
    with ImageGen.from_settings(settings_factory()) as gen:  # no key anywhere
        result = gen.generate_sync({"prompt": "x", "width": 64, "height": 64, "provider": "photodesk"})
        assert result.notes == [
            "provider 'photodesk' was asked for but did not race: its key is not set (IMAGEGEN_PHOTODESK_API_KEY); "
            "the others raced"
        ]


class PhotoDeskOwnName(PhotoDesk):
    key_variable: ClassVar[str | None] = "IMAGEGEN_PD_API_KEY"


class PhotoDeskBadName(PhotoDesk):
    key_variable: ClassVar[str | None] = "PHOTODESK_TOKEN"  # the settings would neither find nor redact it


def test_a_plugin_may_name_its_key_variable_in_the_settings_form_only(
    settings_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = list(providers.entry_points(group=GROUP))
    extra = [
        EntryPoint(name="own", value=f"{__name__}:PhotoDeskOwnName", group=GROUP),
        EntryPoint(name="bad", value=f"{__name__}:PhotoDeskBadName", group=GROUP),
    ]
    monkeypatch.setattr(providers, "entry_points", lambda *, group: EntryPoints([*installed, *extra]))
    with ImageGen.from_settings(settings_factory(IMAGEGEN_PD_API_KEY=SECRET)) as gen:
        assert SECRET in gen.settings.secret_values()
        gen.set_config({"providers": {**OFF, "own": {"type": "own"}, "bad": {"type": "bad"}}}, source="test")
        status = {row["name"]: row for row in gen.provider_status()}
        assert status["own"]["configured"] and status["own"]["racing"]
        assert (
            not status["bad"]["racing"]
            and "key_variable must be IMAGEGEN_<NAME>_API_KEY, got 'PHOTODESK_TOKEN'" in (status["bad"]["notRacing"])
        )


# -- 4. caller mistakes raise errors of the documented tree ---------------------------------------------------


def test_caller_mistakes_raise_errors_of_the_tree(settings_factory: Any) -> None:
    """QA: ``generate_sync({"prompt": "x", 1: 2})`` raised pydantic's TypeError "keywords must be strings";
    ``config_history("x")`` and ``rollback_config("x")`` internal TypeErrors; ``config_history(10**20)`` sqlite3's
    OverflowError."""
    with ImageGen.from_settings(settings_factory()) as gen:
        with pytest.raises(InvalidRequestError, match=r"^body: field names must be strings, got 1$") as caught:
            gen.generate_sync({"prompt": "x", 1: 2})  # type: ignore[dict-item]
        assert caught.value.field == "body" and caught.value.request_id is not None  # logged as rejected
        with pytest.raises(ConfigError, match=r"^limit must be a whole number of versions \(0 or more\), got 'x'$"):
            gen.config_history("x")  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="got -1"):
            gen.config_history(-1)
        assert gen.config_history(10**20) == []  # QA: past a 64-bit LIMIT, sqlite3's OverflowError; now all of them
        with pytest.raises(ConfigError, match=r"^must be a version number \(an int\), got 'x'$") as refused:
            gen.rollback_config("x")  # type: ignore[arg-type]
        assert refused.value.field == "version" and gen.config_version is None


def test_the_error_tree_drawn_in_the_docstring_names_every_error_class() -> None:
    import imagegen_core.errors as errors

    drawn = errors.__doc__ or ""
    classes = [
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.ImageGenError) and value.__module__ == errors.__name__
    ]
    assert "LogDatabaseBusy" in classes
    assert [name for name in classes if f" {name} " not in drawn] == []


# -- 6. the plugin author's kit ----------------------------------------------------------------------------------


def test_the_plugin_kit_is_public_and_every_name_resolves() -> None:
    """QA: ``send``, ``json_object`` and ``content_rejected`` (the one HTTP-to-failure-class translation) were not
    public, and a plugin that classified a 401 itself called it transient: its breaker never tripped."""
    assert {"send", "poll", "json_object", "content_rejected", "ProviderBase", "FailureClass"} <= set(providers.__all__)
    for name in providers.__all__:
        assert getattr(providers, name) is not None, name
    assert providers.ProviderBase is ProviderBase


def _readme_plugin() -> str:
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Third-party providers (plugins)", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    return code


def test_the_readme_plugin_classifies_a_401_as_auth_and_its_breaker_opens_at_once(
    settings_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = types.ModuleType("readme_photodesk")
    exec(compile(_readme_plugin(), "README.md", "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    installed = list(providers.entry_points(group=GROUP))
    extra = EntryPoint(name="photodesk", value="readme_photodesk:PhotoDesk", group=GROUP)
    monkeypatch.setattr(providers, "entry_points", lambda *, group: EntryPoints([*installed, extra]))
    seen: list[str | None] = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        if request.headers.get("authorization") != "Bearer good-key-0123":
            return httpx.Response(401, json={"detail": "invalid API key"})
        return httpx.Response(200, json={"b64": base64.b64encode(png()).decode()})

    client = httpx.AsyncClient(transport=httpx.MockTransport(server))
    with ImageGen.from_settings(settings_factory(IMAGEGEN_PHOTODESK_API_KEY="bad-key-0123"), http_client=client) as gen:
        with pytest.raises(ConfigError, match=r"providers\.photodesk\.options\.quality: must be one of low, high"):
            gen.set_config({"providers": {"photodesk": {"type": "photodesk", "options": {"quality": "medium"}}}})
        gen.set_config({"providers": {**OFF, "photodesk": {"type": "photodesk", "retries": 2}}}, source="test")
        result = gen.generate_sync({"prompt": "x", "width": 64, "height": 64})
        (attempt,) = [a for a in result.attempts if a.provider == "photodesk"]  # auth: not retried
        assert (attempt.failure_class, attempt.http_status) == ("auth", 401), attempt
    assert seen == ["Bearer ***"] or seen == ["Bearer bad-key-0123"]
    client = httpx.AsyncClient(transport=httpx.MockTransport(server))
    with ImageGen.from_settings(
        settings_factory(IMAGEGEN_PHOTODESK_API_KEY="good-key-0123"), http_client=client
    ) as gen:
        # Read once the first ImageGen is closed, its breaker write applied (read at once, it could still be queued
        # in its log writer: the clean-clone CI saw "closed" once). Open after one call, as for a built-in's 401.
        assert gen.breakers.state("photodesk").state == "open"
        gen.breakers.reset("photodesk")
        result = gen.generate_sync({"prompt": "x", "width": 64, "height": 64})
        assert (result.success, result.provider) == (True, "photodesk"), result.error


# -- 5. IMAGEGEN_* variables nothing reads --------------------------------------------------------------------


@pytest.mark.usefixtures("photodesk")
def test_a_mistyped_imagegen_variable_gets_one_warning_naming_the_closest_known_one(
    settings_factory: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """QA: ``IMAGEGEN_OPENIA_BASE_URL=…`` was silently ignored, and the real API was called with the real key."""
    monkeypatch.setenv("IMAGEGEN_OPENIA_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("IMAGEGEN_FAL_EU_BASE_URL", "http://127.0.0.1:9")  # for the entry fal_eu: no warning
    monkeypatch.setenv("IMAGEGEN_PHOTODESK_API_KEY", SECRET)  # the plugin's: no warning
    env_file = tmp_path / ".env"
    env_file.write_text("IMAGEGEN_ADMN_TOKEN=admin-token-0123456789abcdef\nIMAGEGEN_PHOTODSK_API_KEY=pd-x-123456\n")
    caplog.set_level(logging.WARNING, logger="imagegen")
    with ImageGen.from_settings(Settings(_env_file=env_file)) as gen:
        gen.set_config({"providers": {"fal_eu": {"type": "fal"}}}, source="test")
        for _ in range(2):  # said once, however often the config is planned
            gen.generate_sync({"prompt": "x", "width": 64, "height": 64})
            gen.provider_status()
    said = sorted(r.getMessage() for r in caplog.records if "it is ignored" in r.getMessage())
    assert said == [
        f"IMAGEGEN_ADMN_TOKEN ({env_file}) is not a setting of imagegen: it is ignored; "
        "did you mean IMAGEGEN_ADMIN_TOKEN?",
        "IMAGEGEN_OPENIA_BASE_URL (environment) names no provider type nor config entry: it is ignored; "
        "did you mean IMAGEGEN_OPENAI_BASE_URL?",
        f"IMAGEGEN_PHOTODSK_API_KEY ({env_file}) is the key of no installed provider: it is ignored; "
        "did you mean IMAGEGEN_PHOTODESK_API_KEY?",
    ]
    assert "pd-x-123456" not in caplog.text


def test_imagegen_providers_warns_about_a_mistyped_base_url_on_stderr(tmp_path: Path) -> None:
    proc = run("providers", home=tmp_path, env={"IMAGEGEN_OPENIA_BASE_URL": "http://127.0.0.1:9"})
    assert proc.returncode == 0, proc.stderr
    assert (
        "imagegen: warning: IMAGEGEN_OPENIA_BASE_URL (environment) names no provider type nor config entry: it is "
        "ignored; did you mean IMAGEGEN_OPENAI_BASE_URL?\n"
    ) in proc.stderr


def test_a_key_variable_for_a_provider_that_needs_no_key_is_warned_about(
    settings_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="imagegen")
    with ImageGen.from_settings(settings_factory(IMAGEGEN_OFFLINE_API_KEY="k-0123456789")) as gen:
        gen.provider_status()
    assert "IMAGEGEN_OFFLINE_API_KEY (settings) is the key of no installed provider: it is ignored" in caplog.text


def test_a_base_url_variable_mistyped_out_of_its_form_is_told_the_base_url_variable(
    settings_factory: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """QA: ``IMAGEGEN_FAL_BASEURL`` (no ``_`` before URL) was told "did you mean IMAGEGEN_DATABASE_URL?": only the
    settings of their own were suggested, so the operator was sent to the wrong variable while fal's calls went to
    the real host with the real key."""
    monkeypatch.setenv("IMAGEGEN_FAL_BASEURL", "http://127.0.0.1:9")
    caplog.set_level(logging.WARNING, logger="imagegen")
    with ImageGen.from_settings(settings_factory()) as gen:
        gen.provider_status()
    assert (
        "IMAGEGEN_FAL_BASEURL (environment) is not a setting of imagegen: it is ignored; "
        "did you mean IMAGEGEN_FAL_BASE_URL?"
    ) in caplog.text
