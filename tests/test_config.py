"""The runtime config document: partial documents merge over the defaults, and a bad one is refused with
one message naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagegen_core.config import DEFAULT_STYLES, load_document_file, parse_config
from imagegen_core.errors import ConfigError


def test_adding_a_style_keeps_the_built_in_ones_and_null_removes_one() -> None:
    config = parse_config({"styles": {"noir": "{prompt}, film noir", "3d": None}})
    assert set(config.styles) == (set(DEFAULT_STYLES) - {"3d"}) | {"noir"}
    assert config.styles["photo"] == DEFAULT_STYLES["photo"]


def test_options_belong_to_the_type_an_entry_has() -> None:
    """Merged over fal's defaults, ``{"mode": "queue"}`` would otherwise ride along into a fake stand-in."""
    stand_in = parse_config({"providers": {"fal": {"type": "fake", "options": {"latencyMs": 5}}}})
    assert stand_in.providers["fal"].options == {"latencyMs": 5}
    same_type = parse_config({"providers": {"fal": {"options": {"poll_interval_s": 1}}}})
    assert same_type.providers["fal"].options == {"mode": "queue", "poll_interval_s": 1}


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"\xff\xfe\x00bad", "is not valid UTF-8 (byte 0): save it as UTF-8"),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "is nested too deeply"),
        (b"{oops", "is not valid JSON: line 1 col 2"),
        (b"[1, 2]", "must hold a JSON object"),
    ],
)
def test_a_config_file_that_is_not_a_document_is_one_line(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_document_file(path)
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"providers": {"slow": {"type": "fake", "options": {"failRate": 1}}}}, "providers.slow.options.failRate"),
        (
            {"providers": {"slow": {"type": "fake", "options": {"latencyMs": "abc"}}}},
            "providers.slow.options.latencyMs",
        ),
        (
            {"providers": {"slow": {"type": "fake", "options": {"failureRate": 2}}}},
            "providers.slow.options.failureRate",
        ),
        ({"providers": {"slow": {"type": "fake", "options": {"hang": "yes"}}}}, "providers.slow.options.hang"),
    ],
)
def test_fake_provider_options_are_checked_when_the_config_is_saved(
    settings_factory: object, document: dict[str, object], field: str
) -> None:
    """A typo or a wrong type used to fail every call (and open the breaker) instead of the save."""
    from imagegen_core import ImageGen

    with ImageGen.from_settings(settings_factory()) as gen, pytest.raises(ConfigError) as info:  # type: ignore[operator]
        gen.set_config(document)
    assert info.value.field == field
    assert gen.log.latest_config_id() is None  # nothing stored


def test_a_removed_built_in_style_stays_removed_through_storing_and_reloading() -> None:
    """The stored (and served) document says ``null`` for it; merged over the defaults again, a missing key
    would have brought the style back in every other process."""
    removed = parse_config({"styles": {"3d": None}})
    stored = removed.to_document()
    assert stored["styles"]["3d"] is None
    reloaded = parse_config(stored)
    assert "3d" not in reloaded.styles and reloaded.to_document() == stored


@pytest.mark.parametrize("url", ["https://cdn.example.com/default.webp", "/static/default.webp", ""])
def test_a_default_image_url_may_be_absolute_or_a_path_on_the_cms_site(url: str) -> None:
    assert parse_config({"defaults": {"imageUrl": url}}).defaults.image_url == url


@pytest.mark.parametrize("url", ["javascript:alert(1)", "not a url", "data:image/png;base64,AAAA", "//x y"])
def test_any_other_default_image_url_is_refused(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"defaults": {"imageUrl": url}})
    assert info.value.field == "defaults.imageUrl"


def test_a_version_stored_before_the_provider_checks_still_loads(settings_factory: object) -> None:
    """Provider options are checked when a config is saved, not when a stored one is loaded: a version the
    previous imagegen stored (a fal entry turned fake keeps fal's ``mode``) must not fall back to defaults."""
    from imagegen_core import ImageGen

    stored = parse_config({"defaults": {"timeout": 12_345}}).to_document()
    stored["providers"]["fal"] |= {"type": "fake", "options": {"mode": "queue", "latencyMs": 5}}
    with ImageGen.from_settings(settings_factory()) as first:  # type: ignore[operator]
        first.log.save_config(stored, source="an older imagegen")
    with ImageGen.from_settings(settings_factory()) as later:  # type: ignore[operator]
        assert later.config.defaults.timeout == 12_345
        assert later.config.provider_type("fal") == "fake"


def test_a_path_prefix_is_folder_names_a_trailing_slash_is_dropped() -> None:
    """An older release stored "news/" (it worked: keys strip the slash); that version must still load, as
    "news". An empty segment never worked and is refused, naming the field."""
    assert parse_config({"r2": {"pathPrefix": "news/"}}).r2.path_prefix == "news"
    assert parse_config({"r2": {"pathPrefix": "news/ai-2"}}).r2.path_prefix == "news/ai-2"
    for broken in ("news//ai", "/news", "news/../x", ""):
        with pytest.raises(ConfigError) as info:
            parse_config({"r2": {"pathPrefix": broken}})
        assert info.value.field == "r2.pathPrefix", broken
