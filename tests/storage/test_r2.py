"""The R2 store without a server: client configuration (R2's quirks), upload parameters (botocore's
Stubber), error translation into one-line messages without secrets, metadata limits, public URLs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.stub import Stubber

from imagegen_core.errors import StorageError
from imagegen_core.storage import Store
from imagegen_core.storage.r2 import MAX_METADATA_BYTES, R2Store, r2_metadata

SECRET = "r2-secret-value-never-shown"
ACCESS = "r2-access-key-id-never-shown"
KEY = "ai/2026/11/0123456789abcdef0123456789abcdef.webp"


def store(**overrides: Any) -> R2Store:
    options: dict[str, Any] = {
        "bucket": "news-images",
        "access_key_id": ACCESS,
        "secret_access_key": SECRET,
        "public_base_url": "https://img.example.com/",
        "account_id": "0123abcd",
    }
    options.update(overrides)
    return R2Store(**options)


@pytest.fixture
def stubbed() -> Iterator[tuple[R2Store, Stubber]]:
    r2 = store()
    with Stubber(r2.client) as stub:
        yield r2, stub
        stub.assert_no_pending_responses()


@pytest.fixture
def stubbed_check() -> Iterator[tuple[R2Store, Stubber]]:
    """The client ``check()`` uses: one try, ``check_wait_s`` (not the uploads' retries and 30 s)."""
    r2 = store()
    with Stubber(r2.client_for(r2.check_wait_s)) as stub:
        yield r2, stub
        stub.assert_no_pending_responses()


def test_r2_store_satisfies_the_store_protocol() -> None:
    assert isinstance(store(), Store)


def test_endpoint_from_account_id_and_r2_client_settings() -> None:
    r2 = store()
    assert r2.endpoint_url == "https://0123abcd.r2.cloudflarestorage.com"
    config = r2.client_config()
    assert config.signature_version == "s3v4"
    assert config.request_checksum_calculation == "when_required"  # R2 rejects boto3's default CRC32s
    assert config.response_checksum_validation == "when_required"
    assert config.retries == {"mode": "standard", "total_max_attempts": 4}
    assert r2.client.meta.region_name == "auto"
    assert r2.client.meta.endpoint_url == "https://0123abcd.r2.cloudflarestorage.com"


def test_a_custom_endpoint_uses_path_style_addressing() -> None:
    r2 = store(account_id=None, endpoint_url="http://127.0.0.1:9000/")
    assert r2.endpoint_url == "http://127.0.0.1:9000" and r2.path_style
    assert r2.client_config().s3 == {"addressing_style": "path"}
    assert not store().path_style


def test_public_url_is_the_public_base_never_the_s3_endpoint() -> None:
    assert store().url_for(KEY) == f"https://img.example.com/{KEY}"
    assert (
        store(public_base_url="https://pub-abc.r2.dev").url_for("ai/a b.webp") == "https://pub-abc.r2.dev/ai/a%20b.webp"
    )
    with pytest.raises(StorageError):
        store().url_for("../etc/passwd")


def test_the_client_and_boto3_load_only_on_first_use() -> None:
    code = (
        "import sys; from imagegen_core.storage.r2 import R2Store; "
        "s = R2Store(bucket='b', access_key_id='a', secret_access_key='s', public_base_url='https://x', "
        "account_id='acc'); s.url_for('ai/k.webp'); print('boto3' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr


def test_repr_shows_no_credential() -> None:
    text = repr(store())
    assert SECRET not in text and ACCESS not in text and "news-images" in text


async def test_put_sends_content_type_cache_control_and_metadata(stubbed: tuple[R2Store, Stubber]) -> None:
    r2, stub = stubbed
    expected = {
        "Bucket": "news-images",
        "Key": KEY,
        "Body": b"RIFF....WEBP",
        "ContentType": "image/webp",
        "CacheControl": "public, max-age=31536000, immutable",
        "Metadata": {"provider": "fal", "prompt-sha256": "ab" * 32, "article-id": "caf\\xe9"},
    }
    stub.add_response("put_object", {"ETag": '"x"'}, expected)
    stored = await r2.put(
        KEY,
        b"RIFF....WEBP",
        content_type="image/webp",
        cache_control="public, max-age=31536000, immutable",
        metadata={"provider": "fal", "prompt-sha256": "ab" * 32, "article-id": "café"},
    )
    assert (stored.key, stored.url, stored.size) == (KEY, f"https://img.example.com/{KEY}", 12)


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        (
            "SignatureDoesNotMatch",
            403,
            "R2 rejected the credentials (SignatureDoesNotMatch) on upload of "
            f"'{KEY}': check R2_ACCESS_KEY_ID / R2_SECRET_ACCESS_KEY",
        ),
        ("InvalidAccessKeyId", 403, "check R2_ACCESS_KEY_ID / R2_SECRET_ACCESS_KEY"),
        ("Unauthorized", 401, "R2 rejected the credentials (Unauthorized)"),
        ("AccessDenied", 403, "the token has Object Read & Write on bucket 'news-images'"),
        ("NoSuchBucket", 404, "R2 bucket 'news-images' does not exist at https://0123abcd.r2.cloudflarestorage.com"),
        ("InternalError", 500, "R2 failed the upload of"),
        ("SlowDown", 503, "throttling; try again later"),
        ("EntityTooLarge", 400, "R2 refused the upload of"),
        # QA: a plain web server's 501 to the PUT was "unavailable or throttling; try again later"
        ("501", 501, "https://0123abcd.r2.cloudflarestorage.com answered the upload of"),
        ("501", 501, "but is not an S3 server: check R2_ACCOUNT_ID"),
        ("NotImplemented", 501, f"R2 refused the upload of '{KEY}' (NotImplemented, HTTP 501): server says"),
    ],
)
async def test_errors_become_one_line_messages_that_say_what_to_fix(
    stubbed: tuple[R2Store, Stubber], code: str, status: int, expected: str
) -> None:
    r2, stub = stubbed
    stub.add_client_error(
        "put_object", service_error_code=code, service_message=f"server says {SECRET} {ACCESS}", http_status_code=status
    )
    with pytest.raises(StorageError) as info:
        await r2.put(KEY, b"x", content_type="image/webp", cache_control="c", metadata={})
    message = str(info.value)
    assert expected in message and "\n" not in message
    assert SECRET not in message and ACCESS not in message


async def test_a_missing_bucket_is_named_when_checked(stubbed_check: tuple[R2Store, Stubber]) -> None:
    r2, stub = stubbed_check
    stub.add_client_error("list_objects_v2", service_error_code="NoSuchBucket", http_status_code=404)
    with pytest.raises(StorageError, match=r"R2 bucket 'news-images' does not exist.*check R2_BUCKET"):
        await r2.check()


async def test_check_lists_at_most_one_key_and_accepts_an_empty_bucket(
    stubbed_check: tuple[R2Store, Stubber],
) -> None:
    """R2's answer to a listing of an empty bucket: no Contents, but the fields every listing states."""
    r2, stub = stubbed_check
    answer = {"IsTruncated": False, "KeyCount": 0, "MaxKeys": 1, "Name": "news-images", "Prefix": ""}
    stub.add_response("list_objects_v2", answer, {"Bucket": "news-images", "MaxKeys": 1})
    await r2.check()
    stub.assert_no_pending_responses()


async def test_exists_is_false_on_404_and_a_clear_error_on_403(stubbed: tuple[R2Store, Stubber]) -> None:
    r2, stub = stubbed
    stub.add_client_error("head_object", service_error_code="404", http_status_code=404)
    stub.add_client_error("head_object", service_error_code="403", http_status_code=403)
    assert await r2.exists(KEY) is False
    with pytest.raises(StorageError, match="check R2_ACCESS_KEY_ID / R2_SECRET_ACCESS_KEY"):
        await r2.exists(KEY)


async def test_an_unreachable_endpoint_names_the_variable_to_check() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    r2 = store(account_id=None, endpoint_url=f"http://127.0.0.1:{port}", max_attempts=2, connect_timeout_s=1)
    with pytest.raises(StorageError) as info:
        await r2.put(KEY, b"x", content_type="image/webp", cache_control="c", metadata={})
    assert f"cannot reach R2 at http://127.0.0.1:{port}" in str(info.value)
    assert "check R2_ENDPOINT_URL" in str(info.value)


def test_metadata_is_ascii_header_safe() -> None:
    meta = r2_metadata({"Article ID": "  Zürich\nnews  ", "seed": "42", "": "dropped", "emoji": "🦆"})
    assert meta == {"article-id": "Z\\xfcrich\\x0anews", "seed": "42", "emoji": "\\U0001f986"}
    assert all(v.isascii() and v.isprintable() for v in meta.values())


def test_metadata_is_trimmed_to_r2s_8_kb_longest_value_first() -> None:
    meta = r2_metadata({"provider": "fal", "prompt": "p" * 9000, "note": "n" * 500})
    assert sum(len(k) + len(v) for k, v in meta.items()) == MAX_METADATA_BYTES
    assert meta["provider"] == "fal" and meta["note"] == "n" * 500  # the longest value gave way
    assert r2_metadata({"a": "x" * 10}, limit=100) == {"a": "x" * 10}


def test_a_store_needs_an_account_or_an_endpoint() -> None:
    with pytest.raises(StorageError, match="R2_ACCOUNT_ID"):
        store(account_id=None)


def test_checks_and_listings_use_a_client_that_tries_once_within_its_wait() -> None:
    """``/health`` (``check``) and ``storage stats`` (``stats``) are waited for by someone: 4 attempts × 30 s of
    the uploads' client held them for minutes against a server that never answered."""
    r2 = store(check_wait_s=2.0, list_wait_s=10.0)
    for wait_s in (r2.check_wait_s, r2.list_wait_s):
        config = r2.client_for(wait_s).meta.config
        assert config.retries == {"mode": "standard", "total_max_attempts": 1}
        assert (config.connect_timeout, config.read_timeout) == (min(5.0, wait_s), wait_s)
    assert r2.client.meta.config.retries == {"mode": "standard", "total_max_attempts": 4}
    assert r2.client_for(2.0) is r2.client_for(2.0) and r2.client_for(None) is r2.client
