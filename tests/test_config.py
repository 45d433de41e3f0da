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
