"""The runtime config document: partial documents merge over the defaults, and a bad one is refused with
one message naming the field."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imagegen_core.config import DEFAULT_STYLES, MAX_CONFIG_FILE_BYTES, load_document_file, parse_config, unwrap_edited
from imagegen_core.errors import ConfigError
from imagegen_core.validation import entry_named


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
        (b"{oops", "config.json: not valid JSON: line 1 column 2"),
        (b'{"defaults": {"timeout": Infinity}}', "config.json: Infinity is not a JSON number"),
        (b"[1, 2]", "must hold a JSON object"),
        # QA: last one won silently, the provider the first had turned off racing
        (
            b'{"providers": {"fal": {"enabled": false}, "fal": {"enabled": true}}}',
            "the key 'fal' is given twice in one object (JSON keeps only the last one): remove one",
        ),
        (b'{"defaults": {"timeout": 1, "timeout": 2}}', "the key 'timeout' is given twice"),
        # QA: `imagegen config set` printed a ValueError traceback (Python's 4300-digit limit)
        (b'{"defaults": {"timeout": ' + b"9" * 5000 + b"}}", "a number in the document has too many digits"),
    ],
)
def test_a_config_file_that_is_not_a_document_is_one_line(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_document_file(path)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_a_config_path_that_is_no_regular_file_is_refused_before_it_is_opened(tmp_path: Path) -> None:
    """QA: `imagegen config set /dev/zero` (or a FIFO) never returned; a folder said "Is a directory"."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, kind in [
        (Path("/dev/zero"), "not a regular file (a device, a FIFO or a socket)"),
        (fifo, "not a regular file (a device, a FIFO or a socket)"),
        (tmp_path, "a folder"),
    ]:
        with pytest.raises(ConfigError) as info:
            load_document_file(path)
        assert str(info.value) == f"config file {path} is {kind}: name a JSON file"
    huge = tmp_path / "huge.json"
    with huge.open("wb") as f:
        f.truncate(MAX_CONFIG_FILE_BYTES + 1)  # sparse: no 16 MiB written
    with pytest.raises(ConfigError, match=r"holds 16,777,217 bytes: a config document is a few KiB"):
        load_document_file(huge)


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


@pytest.mark.parametrize(
    ("provider", "option", "says"),
    [
        ("replicate", "waitS", "unknown replicate option (did you mean wait_s? known: input, poll_interval_s, wait_s)"),
        ("fal", "unknownOpt", "unknown fal option (known: input, mode, poll_interval_s)"),
        ("openai", "qualty", "unknown openai option (did you mean quality? known: input, quality)"),
        ("bfl", "steps", "unknown bfl option (known: input, poll_interval_s)"),
        ("stability", "inputs", "unknown stability option (did you mean input? known: input)"),
        ("unsplash", "orientation", "unknown unsplash option (known: none)"),
        ("offline", "foo", "unknown offline option (known: none)"),
    ],
)
def test_an_option_a_built_in_provider_does_not_use_is_refused_when_the_config_is_saved(
    settings_factory: object, provider: str, option: str, says: str
) -> None:
    """QA: ``{"replicate": {"options": {"waitS": 3}}}`` was stored, then ignored at every call (the name is
    ``wait_s``); so was any name on fal, OpenAI, Unsplash and the offline drawing. Only the fake provider
    refused a typo."""
    from imagegen_core import ImageGen

    with ImageGen.from_settings(settings_factory()) as gen:  # type: ignore[operator]
        with pytest.raises(ConfigError) as info:
            gen.set_config({"providers": {provider: {"options": {option: 3}}}})
        assert info.value.field == f"providers.{provider}.options.{option}"
        assert says in str(info.value)
        assert gen.log.latest_config_id() is None  # nothing stored
        if provider in (
            "replicate",
            "fal",
            "openai",
            "bfl",
            "stability",
        ):  # what a model takes goes under options.input, any name
            gen.set_config({"providers": {provider: {"options": {"input": {option: 3}}}}})
            assert gen.config.providers[provider].options["input"] == {option: 3}


@pytest.mark.parametrize(
    ("document", "field", "says"),
    [
        ({"config": {"race": {"hedgeDelay": 1600}}}, "version", "missing: an edit of GET /admin/config's answer"),
        ({"inForceVersion": 3, "config": {}}, "version", "keeps its version (null when none was stored)"),
        ({"version": 18}, "config", "missing: the config document, beside the version it is based on"),
        ({"version": "abc"}, "config", "or send the document alone"),
        ({"version": 1, "config": {}, "foo": 1}, "foo", "unknown key beside version and config"),
    ],
)
def test_part_of_gets_answer_says_what_is_missing(document: dict[str, object], field: str, says: str) -> None:
    """QA: an edit of GET /admin/config's answer that lost its version, or its config, or gained a key, was taken
    for a config document with unknown sections: "config: Extra inputs are not permitted"."""
    with pytest.raises(ConfigError) as info:
        unwrap_edited(document)
    assert info.value.field == field and says in str(info.value)
    assert unwrap_edited({"version": None, "config": {"race": {}}}) == ({"race": {}}, 0)
    assert unwrap_edited({"race": {}}) == ({"race": {}}, None)


def test_a_provider_that_is_not_an_object_is_refused_without_a_class_name() -> None:
    """QA: ``{"providers": {"slow": null}}`` (meant to remove it) answered "Input should be a valid dictionary
    or instance of ProviderConfig", an internal name, and no way forward."""
    with pytest.raises(ConfigError) as info:
        parse_config({"providers": {"slow": None}})
    assert info.value.field == "providers.slow"
    assert str(info.value) == (
        "invalid config: providers.slow: must be a JSON object (a provider's settings: to turn one off, give it"
        ' {"enabled": false}; one you added is removed by leaving it out of a whole config: PUT, or imagegen config'
        " set)"
    )


KNOWN_TYPES = ["bfl", "fake", "fal", "offline", "openai", "replicate", "stability", "unsplash"]


@pytest.mark.parametrize(
    ("kind", "hint"),
    [("nope", "known: bfl, fake"), ("FAL", "did you mean 'fal'? known: "), ("repliate", "did you mean 'replicate'?")],
)
def test_an_unknown_provider_type_names_the_near_one(kind: str, hint: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"providers": {"mine": {"type": kind}}}, known_providers=KNOWN_TYPES)
    assert f"unknown provider type {kind!r} ({hint}" in str(info.value)


@pytest.mark.parametrize(
    ("document", "field", "message"),
    [
        ({"providers": {"fal": {"enabled": "yes"}}}, "providers.fal.enabled", "Input should be a valid boolean"),
        ({"providers": {"fal": {"priority": "3"}}}, "providers.fal.priority", "Input should be a valid integer"),
        ({"race": {"hedgeDelay": 1.5}}, "race.hedgeDelay", "Input should be a valid integer"),
        ({"rateLimit": {"enabled": 1}}, "rateLimit.enabled", "Input should be a valid boolean"),
        ({"styles": {"": "{prompt}"}}, "styles", "a style needs a name"),
        ({"styles": {"  ": "{prompt}, noir"}}, "styles", "a style needs a name"),
    ],
)
def test_a_value_of_the_wrong_json_type_is_refused_not_converted(
    document: dict[str, object], field: str, message: str
) -> None:
    """Regression: ``"enabled": "yes"`` and ``"priority": "3"`` were converted and stored, while ``"abc"`` was
    refused; an empty style name was stored too."""
    with pytest.raises(ConfigError) as info:
        parse_config(document)
    assert info.value.field == field and message in str(info.value)


def test_whole_numbers_go_where_fractions_do_and_failure_classes_by_name() -> None:
    config = parse_config(
        {
            "providers": {"fal": {"costPerImage": 1}},
            "race": {"hedgeQuantile": 1 - 0.25},
            "chaos": {"providers": {"fal": {"errorRate": 1, "errorClass": "auth"}}},
        }
    )
    assert config.providers["fal"].cost_per_image == 1.0 and config.chaos.providers["fal"].error_class == "auth"


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


VERSION = "5599ed30703defd1d160a25a63321b4dec97101d98b4674bcc56e41f62f35637"

#: Model ids that would change the URL called (a query, a fragment, a dot segment, an escape) or are not in
#: the provider's id format at all, per provider type.
BAD_MODEL_IDS = [
    ("replicate", "owner/name?x=1"),
    ("replicate", "owner/name#frag"),
    ("replicate", "owner/../name"),
    ("replicate", "owner/na%2Fme"),
    ("replicate", "owner/name:not-hex"),
    ("replicate", "owner/name:" + VERSION[:40]),
    ("replicate", "owner/name/extra"),
    ("replicate", "no-slash"),
    ("replicate", "   "),
    ("replicate", ""),
    ("fal", "../../x"),
    ("fal", "fal-ai/flux/../x"),
    ("fal", "fal-ai/./flux"),
    ("fal", "fal-ai//flux"),
    ("fal", "fal-ai/flux?x=1"),
    ("fal", "fal-ai/flux#frag"),
    ("fal", "fal-ai/fl%75x"),
    ("fal", "fal-ai\\flux"),
    ("fal", "fal-ai/flux schnell"),
    ("fal", "fal-ai"),
    ("fal", "   "),
    ("openai", "   "),
    ("openai", ""),
    ("openai", "gpt image 1"),
    ("openai", "gpt-image-1\n"),
    ("openai", "gpt-image-1?x=1"),
    ("openai", "../gpt-image-1"),
    ("openai", "-gpt-image-1"),
    ("openai", "x" * 201),
    ("bfl", "FLUX-2-PRO"),
    ("bfl", "v1/flux-2-pro"),
    ("bfl", "flux-2-pro?x=1"),
    ("bfl", "flux--2"),
    ("bfl", ""),
    ("stability", "sdxl"),
    ("stability", "Core"),
    ("stability", "sd3.5-large?x=1"),
    ("stability", "../core"),
]
GOOD_MODEL_IDS = [
    ("replicate", "black-forest-labs/flux-schnell"),
    ("replicate", "black-forest-labs/flux-1.1-pro"),
    ("replicate", "google/nano-banana"),
    ("replicate", f"black-forest-labs/flux-schnell:{VERSION}"),
    ("fal", "fal-ai/flux/schnell"),
    ("fal", "fal-ai/flux-1/schnell"),
    ("fal", "fal-ai/flux-2-klein/4b"),
    ("fal", "fal-ai/fast-sdxl"),
    ("fal", "fal-ai/flux/dev/image-to-image"),
    ("openai", "gpt-image-1"),
    ("openai", "gpt-image-1.5"),
    ("openai", "dall-e-3"),
    ("openai", "black-forest-labs/FLUX.1-schnell"),  # an OpenAI-compatible server's model
    ("bfl", "flux-2-pro"),
    ("bfl", "flux-pro-1.1-ultra"),
    ("bfl", "flux-2-klein-4b"),
    ("bfl", "flux-dev"),
    ("stability", "core"),
    ("stability", "ultra"),
    ("stability", "sd3"),
    ("stability", "sd3.5-large-turbo"),
]
#: What each provider's message says: what the field is, and the expected form by example.
_EXPECTED = {
    "replicate": ("a Replicate model", "'owner/name'"),
    "fal": ("a fal app id", "'fal-ai/flux/schnell'"),
    "openai": ("an OpenAI model name", "'gpt-image-1'"),
    "bfl": ("a BFL endpoint name", "flux-2-pro"),
    "stability": ("one of 'core', 'ultra', 'sd3'", "'sd3.5-large'"),
}


@pytest.mark.parametrize(("provider", "model"), BAD_MODEL_IDS)
def test_a_model_id_outside_the_providers_format_is_refused_in_one_line(
    settings_factory: object, provider: str, model: str
) -> None:
    """Each provider type has one rule for ``model``, following its real id format (providers.md): the message
    names the field and the provider and shows the expected form, and nothing is stored."""
    from imagegen_core import ImageGen

    with ImageGen.from_settings(settings_factory()) as gen, pytest.raises(ConfigError) as info:  # type: ignore[operator]
        gen.set_config({"providers": {provider: {"model": model}}})
    message = str(info.value)
    assert info.value.field == f"providers.{provider}.model"
    assert message.startswith(f"invalid config: providers.{provider}.model: must be ")
    what, example = _EXPECTED[provider]
    assert what in message and example in message and "\n" not in message
    assert gen.log.latest_config_id() is None


@pytest.mark.parametrize(("provider", "model"), GOOD_MODEL_IDS)
def test_the_documented_model_ids_are_accepted(settings_factory: object, provider: str, model: str) -> None:
    from imagegen_core import ImageGen

    with ImageGen.from_settings(settings_factory()) as gen:  # type: ignore[operator]
        config = gen.set_config({"providers": {provider: {"model": model}}})
    assert config.providers[provider].model == model


def test_an_entry_of_another_name_follows_its_types_model_rule(settings_factory: object) -> None:
    """The rule belongs to the implementation (``type``), not to the entry's name."""
    from imagegen_core import ImageGen

    with ImageGen.from_settings(settings_factory()) as gen:  # type: ignore[operator]
        with pytest.raises(ConfigError) as info:
            gen.set_config({"providers": {"backup": {"type": "fal", "model": "../../x"}}})
        assert info.value.field == "providers.backup.model" and "fal app id" in str(info.value)
        gen.set_config({"providers": {"backup": {"type": "openai", "model": "dall-e-3"}}})


def test_provider_names_that_differ_only_in_case_are_refused() -> None:
    """QA: "mine" and "MINE" both raced, and `breakers force-open MINE` opened mine's breaker."""
    with pytest.raises(ConfigError) as info:
        parse_config({"providers": {"mine": {"type": "fake"}, "MINE": {"type": "fake"}}})
    assert info.value.field == "providers.MINE"
    assert "differs from providers.mine only in case" in str(info.value)


def test_a_name_is_its_own_entry_before_another_spelled_in_another_case() -> None:
    """A config stored before such names were refused may still hold both: the exact one is meant."""
    assert entry_named("MINE", ["mine", "MINE"]) == "MINE"
    assert entry_named("mine", ["mine", "MINE"]) == "mine"
    assert entry_named(" Fal ", ["offline", "fal"]) == "fal"
    assert entry_named("nope", ["fal"]) is None


@pytest.mark.parametrize("name", ["x" * 65, "two\nlines", "tab\there"])
def test_a_style_name_is_short_and_printable(name: str) -> None:
    """QA: a 300-character style name was taken, then printed whole in the console's lists and messages."""
    with pytest.raises(ConfigError, match=r"a style name is 1 to 64 printable characters, not '") as refused:
        parse_config({"styles": {name: "{prompt}, plain"}})
    assert refused.value.field == "styles" and len(str(refused.value)) < 200
    assert parse_config({"styles": {"y" * 64: "{prompt}, plain"}}).styles["y" * 64] == "{prompt}, plain"


def test_default_sizes_of_more_pixels_than_any_image_may_have_are_refused() -> None:
    """QA (embedding): with limits.maxSize raised to 16383, defaults of 16383x16383 were accepted, and then every
    request that names no size was refused (no image of more than 50 M pixels is made). The config names the
    side; 8000x6000, the largest the message suggests, is taken."""
    limits = {"limits": {"maxSize": 16_383}}
    with pytest.raises(ConfigError) as info:
        parse_config({**limits, "defaults": {"width": 16_383, "height": 16_383}})
    assert info.value.field == "defaults.width"
    assert "16383x16383 is 268,402,689 pixels; at most 50,000,000 are made" in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse_config({**limits, "defaults": {"width": 4000, "height": 16_383}})
    assert info.value.field == "defaults.height"
    assert parse_config({**limits, "defaults": {"width": 8000, "height": 6000}}).defaults.width == 8000
