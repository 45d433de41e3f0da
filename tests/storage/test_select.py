"""Store selection from Settings: the local folder when no R2 variable is set, R2 when every needed one
is, and a ConfigError naming every missing variable in between (never a silent fallback)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from imagegen_core import ConfigError, ImageGen
from imagegen_core.storage import LocalStore, make_spool, make_store
from imagegen_core.storage.r2 import R2Store

COMPLETE = {
    "R2_ACCOUNT_ID": "0123abcd0123abcd0123abcd0123abcd",
    "R2_ACCESS_KEY_ID": "key-id",
    "R2_SECRET_ACCESS_KEY": "s3cr3t-value",
    "R2_BUCKET": "news-images",
    "R2_PUBLIC_BASE_URL": "https://img.example.com",
}


def test_no_r2_variable_means_the_local_folder_under_home(settings_factory: Any) -> None:
    settings = settings_factory(IMAGEGEN_PUBLIC_BASE_URL="https://files.example.com")
    store = make_store(settings)
    assert isinstance(store, LocalStore)
    assert store.root == settings.home / "images" and store.public_base_url == "https://files.example.com"
    assert make_spool(settings).root == settings.home / "spool"


def test_a_public_base_url_beside_r2_is_said_to_be_unused(
    settings_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """QA: IMAGEGEN_PUBLIC_BASE_URL with R2 configured was ignored without a word."""
    with caplog.at_level(logging.WARNING, logger="imagegen.storage"):
        make_store(settings_factory(**COMPLETE))
        assert caplog.records == []
        make_store(settings_factory(**COMPLETE, IMAGEGEN_PUBLIC_BASE_URL="https://files.example.com"))
    (record,) = caplog.records
    assert record.getMessage().startswith("IMAGEGEN_PUBLIC_BASE_URL is not used: images go to R2")


def test_complete_r2_settings_with_an_account_id(settings_factory: Any) -> None:
    store = make_store(settings_factory(**COMPLETE))
    assert isinstance(store, R2Store)
    assert (store.bucket, store.endpoint_url) == (
        "news-images",
        "https://0123abcd0123abcd0123abcd0123abcd.r2.cloudflarestorage.com",
    )
    assert store.url_for("ai/x.webp") == "https://img.example.com/ai/x.webp"


def test_an_endpoint_url_replaces_the_account_id(settings_factory: Any) -> None:
    values = {k: v for k, v in COMPLETE.items() if k != "R2_ACCOUNT_ID"}
    store = make_store(settings_factory(**values, R2_ENDPOINT_URL="http://127.0.0.1:8333"))
    assert isinstance(store, R2Store) and store.endpoint_url == "http://127.0.0.1:8333" and store.path_style


@pytest.mark.parametrize(
    ("drop", "missing"),
    [
        (["R2_SECRET_ACCESS_KEY"], "R2_SECRET_ACCESS_KEY"),
        (["R2_BUCKET", "R2_PUBLIC_BASE_URL"], "R2_BUCKET, R2_PUBLIC_BASE_URL"),
        (["R2_ACCOUNT_ID"], "R2_ACCOUNT_ID or R2_ENDPOINT_URL"),
        (
            ["R2_ACCOUNT_ID", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY", "R2_PUBLIC_BASE_URL"],
            "R2_ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY, R2_PUBLIC_BASE_URL, R2_ACCOUNT_ID or R2_ENDPOINT_URL",
        ),
    ],
)
def test_a_half_configured_r2_is_an_error_naming_every_missing_variable(
    settings_factory: Any, drop: list[str], missing: str
) -> None:
    values = {k: v for k, v in COMPLETE.items() if k not in drop}
    with pytest.raises(ConfigError) as info:
        make_store(settings_factory(**values))
    message = str(info.value)
    assert message.startswith(f"R2 is partly configured; missing: {missing}. ") and "\n" not in message
    assert "s3cr3t-value" not in message and "key-id" not in message  # names variables, never values


def test_empty_values_count_as_unset(settings_factory: Any) -> None:
    assert isinstance(make_store(settings_factory(R2_BUCKET="", R2_ACCESS_KEY_ID="")), LocalStore)
    with pytest.raises(ConfigError, match="R2_SECRET_ACCESS_KEY"):
        make_store(settings_factory(**{**COMPLETE, "R2_SECRET_ACCESS_KEY": "  "}))


def test_a_public_base_that_is_not_a_url_is_refused(settings_factory: Any) -> None:
    with pytest.raises(ConfigError, match=r"^invalid setting R2_PUBLIC_BASE_URL: must be an http"):
        make_store(settings_factory(**{**COMPLETE, "R2_PUBLIC_BASE_URL": "img.example.com"}))


def test_every_refused_r2_variable_is_named_at_once_with_what_r2_needs(settings_factory: Any) -> None:
    """QA: a partial R2 set up with a bad bucket name named only the bucket; the missing variables (and a second
    bad value) came one fix at a time."""
    with pytest.raises(ConfigError) as info:
        settings_factory(R2_ACCESS_KEY_ID="key-id", R2_BUCKET="b", R2_PUBLIC_BASE_URL="ftp://x")
    message = str(info.value)
    assert message.startswith("invalid setting R2_BUCKET: 'b' is not a bucket name") and "\n" not in message
    assert "; invalid setting R2_PUBLIC_BASE_URL: must be an http:// or https:// URL" in message
    assert message.endswith(
        "(R2 needs R2_ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY, R2_BUCKET, R2_PUBLIC_BASE_URL, and R2_ACCOUNT_ID or"
        " R2_ENDPOINT_URL)"
    )
    assert "key-id" not in message


def test_from_settings_refuses_a_half_configured_r2_before_opening_anything(settings_factory: Any) -> None:
    settings = settings_factory(R2_BUCKET="news-images")
    with pytest.raises(ConfigError, match="R2_ACCESS_KEY_ID"):
        ImageGen.from_settings(settings)
    assert not settings.database_path.exists()


def test_from_settings_uses_r2_and_the_spool_under_home(settings_factory: Any) -> None:
    settings = settings_factory(**COMPLETE)
    gen = ImageGen.from_settings(settings)
    try:
        assert isinstance(gen.store, R2Store) and gen.spool.root == settings.home / "spool"
    finally:
        gen.close()
