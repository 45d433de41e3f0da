"""Settings from the environment: a bad value is a ConfigError naming the variable (or the file) to fix,
raised when the settings are read, not a failure of every request later."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imagegen_core import Settings
from imagegen_core.errors import ConfigError
from imagegen_core.log import LogDB


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No imagegen variable from the machine, and a working folder without a stray ``.env``."""
    import os

    for name in list(os.environ):
        if name.startswith(("IMAGEGEN_", "R2_")) or name in {"FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "LOG_LEVEL"}:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("IMAGEGEN_FAL_BASE_URL", "not a url", "must be an http:// or https:// URL with a host"),
        ("IMAGEGEN_FAL_BASE_URL", "ftp://files.example", "must be an http:// or https:// URL"),
        ("IMAGEGEN_REPLICATE_BASE_URL", "http://127.0.0.1:99999", "port in 'http://127.0.0.1:99999' is out of range"),
        ("IMAGEGEN_FAL_BASE_URL", "http://user:pw@127.0.0.1:9", "must not carry a user name or password"),
        ("IMAGEGEN_FAL_BASE_URL", "ftp://user:pw@127.0.0.1:99999", "must not carry a user name or password"),
        ("IMAGEGEN_PUBLIC_BASE_URL", "garbage", "must be an http:// or https:// URL"),
        ("R2_ENDPOINT_URL", "r2.example.com", "must be an http:// or https:// URL"),
        ("IMAGEGEN_DATABASE_URL", "sqlite:///", "needs a file after it"),
        ("IMAGEGEN_DATABASE_URL", "sqlite:///:memory:", "an in-memory SQLite log is empty for every connection"),
        ("IMAGEGEN_DATABASE_URL", "sqlite:///file:log?mode=memory", "an in-memory SQLite log"),
        # QA: the query was taken as part of the name, and a file "x.db?mode=ro" created
        ("IMAGEGEN_DATABASE_URL", "sqlite:////srv/x.db?mode=ro", "takes no ?query or #fragment (got '?mode=ro')"),
        ("IMAGEGEN_DATABASE_URL", "sqlite:///x.db#main", "takes no ?query or #fragment (got '#main')"),
        ("IMAGEGEN_PUBLIC_BASE_URL", "http://127.0.0.1:8000/files?x=1", "must not have a ?query or #fragment"),
        ("IMAGEGEN_PUBLIC_BASE_URL", "https://img.example.com/#top", "must not have a ?query or #fragment"),
        ("R2_PUBLIC_BASE_URL", "https://img.example.com/?", "must not have a ?query or #fragment"),
        ("IMAGEGEN_FAL_BASE_URL", "http://127.0.0.1:9/fal?key=1", "must not have a ?query or #fragment"),
        ("R2_BUCKET", "bad bucket!", "'bad bucket!' is not a bucket name: 3-63 lowercase letters"),
        ("R2_BUCKET", "News-Images", "is not a bucket name"),
        ("R2_BUCKET", "ab", "is not a bucket name"),
        ("R2_BUCKET", "a..b", "is not a bucket name"),
        ("R2_BUCKET", "192.168.1.1", "is not a bucket name"),  # S3 refuses names written as IP addresses
        # QA: the bucket's S3 URL as Cloudflare's dashboard shows it; objects went under "news/" and URLs were 404s
        (
            "R2_ENDPOINT_URL",
            "https://acct.r2.cloudflarestorage.com/news/",
            "without the bucket (got the path '/news/')",
        ),
        # QA: failed only at the first upload, and "host:port#" sent requests signed with the R2 keys there
        ("R2_ACCOUNT_ID", "bad id!", "must be the Cloudflare account ID, 32 hexadecimal digits"),
        ("R2_ACCOUNT_ID", "127.0.0.1:9411#", "got '127.0.0.1:9411#'; for another S3-compatible server set R2_ENDP"),
        ("R2_ACCOUNT_ID", "0123abcd", "32 hexadecimal digits"),
        ("LOG_LEVEL", "loud", "must be one of DEBUG, INFO"),
        ("IMAGEGEN_DATABASE_URL", "mysql://app@db/imagegen", "must start with sqlite:/// or postgresql://"),
        ("IMAGEGEN_DATABASE_URL", "postgresql://app:pw@[::1/imagegen", "is not a valid URL (Invalid IPv6 URL)"),
        ("IMAGEGEN_DATABASE_URL", "postgresql://app:pw@db:99999/imagegen", "Port out of range"),
        ("IMAGEGEN_CORS_ORIGINS", "not a url", "must be an http:// or https:// URL with a host, got 'not a url'"),
        ("IMAGEGEN_CORS_ORIGINS", "https://cms.example, cms2.example", "got 'cms2.example' (origins are"),
        ("IMAGEGEN_CORS_ORIGINS", "https://cms.example/editor", "an origin has no path, got 'https://cms"),
        ("IMAGEGEN_FAL_BASE_URL", "http://[::1", "is not a valid URL (Invalid IPv6 URL)"),
        ("IMAGEGEN_PUBLIC_BASE_URL", "http://[::1", "is not a valid URL (Invalid IPv6 URL)"),
        ("IMAGEGEN_APP_NAME", "My Newsroom", "must be 1 to 40 lower-case letters, digits, _ or - (it is the utm_"),
    ],
)
def test_a_bad_variable_is_one_config_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        Settings()
    message = str(info.value)
    assert message.startswith(f"invalid setting {variable}: ") and fragment in message
    assert "\n" not in message and "Value error" not in message
    if "user:pw" in value:
        assert "pw" not in message  # a password typed into the URL is not echoed back


def test_an_empty_variable_is_an_unset_one_whichever_it_is(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """QA: `LOG_LEVEL=`, `IMAGEGEN_ENV=`, `IMAGEGEN_MAX_BODY_BYTES=` or `IMAGEGEN_APP_NAME=` (a .env template's
    blank lines) stopped every command with "invalid setting", while `IMAGEGEN_HOME=` was taken as unset."""
    blank = ("LOG_LEVEL", "IMAGEGEN_ENV", "IMAGEGEN_MAX_BODY_BYTES", "IMAGEGEN_APP_NAME", "FAL_KEY", "R2_BUCKET")
    for variable in blank[:3]:
        monkeypatch.setenv(variable, "")
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{variable}=\n" for variable in blank[3:]))
    settings = Settings(_env_file=env_file)
    assert (settings.log_level, settings.environment, settings.max_body_bytes) == ("WARNING", "development", 65_536)
    assert settings.app_name == "imagegen" and settings.fal_key is None


def test_r2_names_as_s3_and_r2_write_them_are_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """An endpoint with only a trailing slash, an account ID in either case; a bucket with dots on an S3 server
    other than R2 (QA: ``my.bucket`` was refused, though S3 names may have dots)."""
    monkeypatch.setenv("R2_ENDPOINT_URL", "http://127.0.0.1:9411/")
    monkeypatch.setenv("R2_BUCKET", "news.images-2")
    assert (Settings().r2_endpoint_url, Settings().r2_bucket) == ("http://127.0.0.1:9411/", "news.images-2")
    monkeypatch.delenv("R2_ENDPOINT_URL")
    monkeypatch.setenv("R2_BUCKET", "news-images")
    monkeypatch.setenv("R2_ACCOUNT_ID", "0123456789abcdef0123456789ABCDEF")
    assert Settings().r2_account_id == "0123456789abcdef0123456789ABCDEF"


def test_an_endpoint_ending_with_the_bucket_is_refused_and_another_path_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """QA: R2_ENDPOINT_URL=http://127.0.0.1:9411/news with R2_BUCKET=news stored objects as "news/ai/..." in the
    bucket and answered URLs that were 404s. A path that is not the bucket is a server behind a prefix: kept."""
    monkeypatch.setenv("R2_BUCKET", "news")
    monkeypatch.setenv("R2_ENDPOINT_URL", "http://127.0.0.1:9411/news")
    with pytest.raises(ConfigError) as info:
        Settings()
    assert str(info.value).startswith(
        "invalid setting R2_ENDPOINT_URL: must be the S3 endpoint without the bucket (got the path '/news'): the"
        " bucket goes in R2_BUCKET only"
    )
    monkeypatch.setenv("R2_ENDPOINT_URL", "http://127.0.0.1:9411/s3/")
    assert Settings().r2_endpoint_url == "http://127.0.0.1:9411/s3/"


def test_a_bucket_with_dots_on_cloudflare_r2_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("R2_ACCOUNT_ID", "0123456789abcdef0123456789abcdef")
    monkeypatch.setenv("R2_BUCKET", "news.images")
    with pytest.raises(ConfigError) as info:
        Settings()
    assert str(info.value) == (
        "invalid setting: R2_BUCKET 'news.images' has dots, which Cloudflare R2's bucket names cannot have (another"
        " S3-compatible server, reached with R2_ENDPOINT_URL instead of R2_ACCOUNT_ID, may take them)"
    )


def test_good_base_urls_are_kept_without_a_trailing_slash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGEN_FAL_BASE_URL", "http://127.0.0.1:8080/fal/")
    monkeypatch.setenv("IMAGEGEN_PUBLIC_BASE_URL", "https://img.example.com/news")
    settings = Settings()
    assert settings.base_url("fal") == "http://127.0.0.1:8080/fal"
    assert settings.public_base_url == "https://img.example.com/news"


def test_cors_origins_are_a_comma_separated_list_of_origins_or_a_star(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGEN_CORS_ORIGINS", "https://cms.example/, http://127.0.0.1:3000")
    assert Settings().cors_origins == ["https://cms.example", "http://127.0.0.1:3000"]
    monkeypatch.setenv("IMAGEGEN_CORS_ORIGINS", "*")
    assert Settings().cors_origins == ["*"]


def test_cors_origins_are_kept_as_browsers_write_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """QA: `https://CMS.Example.com,https://cms2.example.com:443` started fine, and the preflights of
    `Origin: https://cms.example.com` / `https://cms2.example.com` got 400: an origin is compared as a string, and
    a browser writes scheme and host in lower case without the scheme's default port."""
    monkeypatch.setenv(
        "IMAGEGEN_CORS_ORIGINS",
        "https://CMS.Example.com, https://cms2.example.com:443, HTTP://Intranet:80, http://cms3.example:8080,"
        " https://cms4.example:80, http://[::1]:3000, HTTPS://[2001:DB8::1]:443, https://cms.example.com/",
    )
    assert Settings().cors_origins == [
        "https://cms.example.com",  # once, though given twice
        "https://cms2.example.com",
        "http://intranet",
        "http://cms3.example:8080",
        "https://cms4.example:80",  # not https's default port: kept
        "http://[::1]:3000",
        "https://[2001:db8::1]",
    ]


def test_an_international_origin_is_kept_in_the_ascii_form_browsers_send(monkeypatch: pytest.MonkeyPatch) -> None:
    """QA: `https://Bücher.example` was kept as written, and the browser's `Origin: https://xn--bcher-kva.example`
    never matched it."""
    monkeypatch.setenv("IMAGEGEN_CORS_ORIGINS", "https://Bücher.example, https://xn--bcher-kva.example:443")
    assert Settings().cors_origins == ["https://xn--bcher-kva.example"]


@pytest.mark.parametrize(
    "value", ["https://CMS.example.com/editor", "ftp://cms.example.com", "https://user@cms.example.com", "cms.example"]
)
def test_what_is_not_an_origin_is_still_refused_whatever_its_case(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("IMAGEGEN_CORS_ORIGINS", value)
    with pytest.raises(ConfigError, match=r"^invalid setting IMAGEGEN_CORS_ORIGINS: .*"):
        Settings()


def test_an_env_file_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_bytes(b"FAL_KEY=\xff\xfe\n")
    with pytest.raises(ConfigError, match=r"^env file \.env is not valid UTF-8 \(byte 8\): save it as UTF-8$"):
        Settings()


def test_an_env_file_that_sets_a_variable_twice_is_refused_naming_both_lines(tmp_path: Path) -> None:
    """QA: `FAL_KEY=abc` then `FAL_KEY=` left fal without its key, the last line winning without a word."""
    (tmp_path / ".env").write_text("# keys\nFAL_KEY=fal-id:fal-secret\n\nLOG_LEVEL=INFO\nfal_key=\n")
    with pytest.raises(ConfigError) as info:
        Settings()
    said = "env file .env: fal_key is set on line 2 and again on line 5 (the last would win without a word): keep one"
    assert str(info.value) == said and "fal-secret" not in said


def test_a_variable_imagegen_does_not_read_may_be_set_twice_in_an_env_file(tmp_path: Path) -> None:
    """QA (embedding): the ``.env`` of the application that embeds imagegen set its own ``DEBUG`` twice, and
    ``Settings()`` refused it, stopping the application over a variable imagegen never reads."""
    (tmp_path / ".env").write_text("DEBUG=1\nFAL_KEY=fal-id:fal-secret\nDEBUG=0\n")
    assert Settings().provider_key("fal") == "fal-id:fal-secret"
    (tmp_path / ".env").write_text("DEBUG=1\nIMAGEGEN_PHOTODESK_API_KEY=a\nimagegen_photodesk_api_key=b\n")
    with pytest.raises(ConfigError, match="imagegen_photodesk_api_key is set on line 2 and again on line 3"):
        Settings()


def test_an_env_file_line_that_does_not_parse_is_named_without_its_content(tmp_path: Path) -> None:
    """python-dotenv skipped it with an unlabelled warning, and the key on it went missing."""
    (tmp_path / ".env").write_text("FAL_KEY=fal-id:fal-secret\n\nOPENAI_API_KEY sk-no-equals-sign\n")
    with pytest.raises(ConfigError) as info:
        Settings()
    assert str(info.value) == "env file .env: line 3 is not NAME=value (quote a value that holds spaces, # or quotes)"


def test_an_env_file_line_with_a_name_and_no_equals_sign_is_refused_naming_the_line(tmp_path: Path) -> None:
    """QA: a token pasted on the line after its ``NAME=`` (or any word alone) parsed as a variable without a value,
    ignored without a word, though the README says a line that is not NAME=value is an error."""
    (tmp_path / ".env").write_text("IMAGEGEN_ADMIN_TOKEN=\nadmin0123456789abcdef\n")
    with pytest.raises(ConfigError) as info:
        Settings()
    assert str(info.value) == "env file .env: line 2 is not NAME=value (quote a value that holds spaces, # or quotes)"


def test_a_missing_env_file_named_explicitly_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A mistyped IMAGEGEN_ENV_FILE would otherwise run silently without its secrets."""
    monkeypatch.setenv("IMAGEGEN_ENV_FILE", str(tmp_path / "prod.env"))
    with pytest.raises(ConfigError, match=r"IMAGEGEN_ENV_FILE=.*prod\.env: no such file"):
        Settings()
    (tmp_path / "prod.env").write_text("FAL_KEY=from-the-file\n")
    assert Settings().provider_key("fal") == "from-the-file"


def test_an_env_file_named_explicitly_that_is_a_folder_is_called_a_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """QA: IMAGEGEN_ENV_FILE=<a folder> said "no such file", which sent the operator looking for a typo."""
    monkeypatch.setenv("IMAGEGEN_ENV_FILE", str(tmp_path))
    with pytest.raises(ConfigError) as info:
        Settings()
    assert str(info.value) == (
        f"IMAGEGEN_ENV_FILE={tmp_path}: is a folder, not a file: name the env file itself "
        "(e.g. /srv/imagegen/.env.production)"
    )


def test_an_env_file_named_explicitly_that_is_a_device_or_a_fifo_says_what_it_is(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """QA: IMAGEGEN_ENV_FILE=/dev/null (or a FIFO: any existing path that is not a regular file) said "no such
    file"; it says what the path is and to name a regular env file."""
    fifo = tmp_path / "env.fifo"
    os.mkfifo(fifo)
    for path, kind in ((Path("/dev/null"), "a character device"), (fifo, "a named pipe (FIFO)")):
        monkeypatch.setenv("IMAGEGEN_ENV_FILE", str(path))
        with pytest.raises(ConfigError) as info:
            Settings()
        assert str(info.value) == (
            f"IMAGEGEN_ENV_FILE={path}: is {kind}, not a regular file: name a regular env file "
            "(e.g. /srv/imagegen/.env.production)"
        )


def test_an_empty_home_means_the_default_folder_not_the_working_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGEN_HOME", "")
    home = Settings().home
    assert home.is_absolute() and home.name == "imagegen" and home != Path.cwd()


def test_a_folder_named_env_is_not_an_env_file(tmp_path: Path) -> None:
    """``python -m venv .env`` is a common habit: as for pydantic-settings, such a folder is not read."""
    (tmp_path / ".env").mkdir()
    assert Settings().fal_key is None


def test_fal_key_from_its_two_halves_as_fal_s_client_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAL_KEY_ID", "key-id")
    monkeypatch.setenv("FAL_KEY_SECRET", "key-secret")
    settings = Settings(_env_file=None)
    assert settings.provider_key("fal") == "key-id:key-secret"
    assert {"key-secret", "key-id:key-secret"} <= set(settings.secret_values())  # both redacted
    monkeypatch.setenv("FAL_KEY", "whole-key")  # FAL_KEY wins when both ways are given
    assert Settings(_env_file=None).provider_key("fal") == "whole-key"


def test_half_a_fal_key_is_refused_naming_the_missing_half(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAL_KEY_ID", "key-id")
    with pytest.raises(ConfigError, match="FAL_KEY_SECRET is not set: fal needs both halves") as info:
        Settings(_env_file=None)
    assert "key-id" not in str(info.value)


def test_every_key_and_token_loses_the_spaces_around_it() -> None:
    """QA run: `IMAGEGEN_ADMIN_TOKEN="...0123 "` (a trailing space in a .env line) was accepted, and every admin
    call then got 401: HTTP drops a header value's surrounding spaces, so no client could send it."""
    from pydantic import SecretStr

    secret_aliases = [
        str(field.validation_alias)
        for field in Settings.model_fields.values()
        if field.annotation is not None
        and field.validation_alias is not None  # provider_api_keys: a plugin's key, whose name varies (below)
        and SecretStr in getattr(field.annotation, "__args__", (field.annotation,))
    ]
    assert "IMAGEGEN_ADMIN_TOKEN" in secret_aliases
    values = {alias: f"  {alias.lower()}-value\t\n" for alias in secret_aliases}
    settings = Settings(_env_file=None, **values)
    for name, field in Settings.model_fields.items():
        if str(field.validation_alias) in values:
            secret = getattr(settings, name)
            assert secret.get_secret_value() == f"{str(field.validation_alias).lower()}-value", name
    plugin = Settings(_env_file=None, IMAGEGEN_PHOTODESK_API_KEY=" pd-key\t\n")
    assert plugin.provider_key("photodesk") == "pd-key" and plugin.secret_values() == ["pd-key"]


@pytest.mark.parametrize("key", ["r8_abcé123", "sk-\u201cabc\u201d", "abc\x00def", "abc\x1bdef"])
def test_a_key_no_http_header_can_carry_is_refused_without_showing_it(key: str) -> None:
    """QA (embedding): ``FAL_KEY`` with an ``é`` failed every call as a transient UnicodeEncodeError, retried and
    counted against fal's breaker as an outage of fal's, where the key is what to fix."""
    for values in ({"FAL_KEY": key}, {"IMAGEGEN_ADMIN_TOKEN": key}, {"IMAGEGEN_PHOTODESK_API_KEY": key}):
        with pytest.raises(ConfigError, match=r"is not printable ASCII .*: copy the key or token again") as info:
            Settings(_env_file=None, **values)
        assert next(iter(values)) in str(info.value) and "abc" not in str(info.value)
    assert Settings(_env_file=None, FAL_KEY="id-1:s3cr3t~!").provider_key("fal") == "id-1:s3cr3t~!"


def test_settings_given_by_field_name_are_used_and_an_unknown_name_is_refused(tmp_path: Path) -> None:
    """Regression (QA): ``Settings(home=…)``, ``database_url=…`` and ``environment=…`` (the names ``repr`` shows)
    were silently ignored, and the library wrote to the default home; ``Settings(bogus=1)`` passed too."""
    settings = Settings(
        _env_file=None,
        home=tmp_path / "kw",
        database_url=f"sqlite:///{tmp_path / 'kw' / 'x.db'}",
        environment="production",
        admin_token="0123456789abcdef0123",
        log_level="debug",
    )
    assert settings.home == tmp_path / "kw" and settings.database_path == tmp_path / "kw" / "x.db"
    assert settings.environment == "production" and settings.log_level == "DEBUG"
    assert settings.admin_token is not None and settings.admin_token.get_secret_value() == "0123456789abcdef0123"
    assert Settings(_env_file=None, IMAGEGEN_HOME=str(tmp_path / "var")).home == tmp_path / "var"  # still
    with pytest.raises(ConfigError, match=r"^unknown setting 'hoem': use a field of Settings or its variable"):
        Settings(_env_file=None, hoem=tmp_path)


def test_a_home_under_tilde_puts_the_log_where_the_images_go(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Regression (QA): with IMAGEGEN_HOME=~/x the images went to $HOME/x and the log to ./~/x/imagegen.db."""
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("IMAGEGEN_HOME", "~/imagegen")
    settings = Settings(_env_file=None)
    assert settings.home == tmp_path / "user" / "imagegen"
    assert settings.database_path == tmp_path / "user" / "imagegen" / "imagegen.db"
    assert Settings(_env_file=None, IMAGEGEN_DATABASE_URL="sqlite:///~/log.db").database_path == (
        tmp_path / "user" / "log.db"
    )
    with LogDB("sqlite:///~/log.db") as db:  # the log opens the same file
        db.migrate()
    assert (tmp_path / "user" / "log.db").is_file() and not (tmp_path / "~").exists()


def test_provider_base_urls_in_env_files_are_read_as_their_keys_are(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Regression (QA): ``.env``'s OPENAI_API_KEY was used and its IMAGEGEN_OPENAI_BASE_URL ignored, so the key
    went to the real api.openai.com instead of the proxy or test server the file named."""
    (tmp_path / ".env").write_text(
        "OPENAI_API_KEY=sk-from-dotenv\nIMAGEGEN_OPENAI_BASE_URL=http://127.0.0.1:18210/\n"
        "IMAGEGEN_FAL_BASE_URL=http://127.0.0.1:18211\nIMAGEGEN_PUBLIC_BASE_URL=https://img.example.com\n"
    )
    settings = Settings()
    assert settings.provider_key("openai") == "sk-from-dotenv"
    assert settings.provider_base_urls == {"openai": "http://127.0.0.1:18210", "fal": "http://127.0.0.1:18211"}
    assert settings.public_base_url == "https://img.example.com"  # a setting of its own, not a provider "public"
    assert Settings(_env_file=None).provider_base_urls == {}  # the files chosen are the files read
    (tmp_path / ".env.staging").write_text("IMAGEGEN_FAL_BASE_URL=http://127.0.0.1:18212\n")
    monkeypatch.setenv("IMAGEGEN_ENV", "staging")  # the profile's file wins over .env, as for every setting
    assert Settings().base_url("fal") == "http://127.0.0.1:18212"


def test_the_environment_wins_over_env_files_for_each_provider_base_url(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("IMAGEGEN_OPENAI_BASE_URL=http://127.0.0.1:1\nIMAGEGEN_FAL_BASE_URL=http://f:2\n")
    monkeypatch.setenv("IMAGEGEN_OPENAI_BASE_URL", "http://127.0.0.1:3")
    assert Settings().provider_base_urls == {"openai": "http://127.0.0.1:3", "fal": "http://f:2"}
    monkeypatch.setenv("IMAGEGEN_OPENAI_BASE_URL", "")  # set but empty: no override, as an empty setting is unset
    assert Settings().provider_base_urls == {"fal": "http://f:2"}


def test_a_bad_provider_base_url_in_an_env_file_is_one_config_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("IMAGEGEN_OPENAI_BASE_URL=api.openai.local\n")
    with pytest.raises(ConfigError) as info:
        Settings()
    assert str(info.value) == (
        "invalid setting IMAGEGEN_OPENAI_BASE_URL: must be an http:// or https:// URL with a host,"
        " got 'api.openai.local'"
    )


def test_provider_base_urls_given_as_arguments_by_variable_name_or_as_a_dict_are_checked() -> None:
    """Regression (QA): ``Settings(IMAGEGEN_OPENAI_BASE_URL=…)`` was refused as an unknown setting, although values
    can be passed by variable name; ``provider_base_urls={"openai": "not a url?x#y"}`` was taken unchecked."""
    settings = Settings(
        _env_file=None,
        IMAGEGEN_OPENAI_BASE_URL="http://127.0.0.1:18210/v1/",
        imagegen_fal_base_url="https://fal.proxy.example",
        provider_base_urls={"replicate": "http://127.0.0.1:18213"},
    )
    assert settings.provider_base_urls == {
        "replicate": "http://127.0.0.1:18213",
        "openai": "http://127.0.0.1:18210/v1",
        "fal": "https://fal.proxy.example",
    }
    for values in ({"provider_base_urls": {"openai": "not a url?x#y"}}, {"IMAGEGEN_OPENAI_BASE_URL": "not a url?x#y"}):
        with pytest.raises(ConfigError) as info:
            Settings(_env_file=None, **values)
        assert str(info.value) == (
            "invalid setting IMAGEGEN_OPENAI_BASE_URL: must be an http:// or https:// URL with a host,"
            " got 'not a url?x#y'"
        )
    with pytest.raises(ConfigError, match=r"^invalid setting IMAGEGEN_FAL_BASE_URL: must not have a \?query"):
        Settings(_env_file=None, provider_base_urls={"fal": "https://fal.example/?key=1"})


def test_a_base_url_variable_is_named_as_the_key_variable_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """QA: a plugin registered as ``photo-desk`` read its key from IMAGEGEN_PHOTO_DESK_API_KEY, but its base URL
    only from IMAGEGEN_PHOTO-DESK_BASE_URL, which no shell can export (and the warning suggested that name)."""
    from imagegen_core.base_urls import variable_name

    monkeypatch.setenv("IMAGEGEN_PHOTO_DESK_BASE_URL", "http://127.0.0.1:9/desk/")
    settings = Settings()
    assert settings.base_url("photo-desk") == settings.base_url("PHOTO_DESK") == "http://127.0.0.1:9/desk"
    assert variable_name("photo-desk") == "IMAGEGEN_PHOTO_DESK_BASE_URL"
    given = Settings(provider_base_urls={"qa-url": "http://127.0.0.1:9/qa"})
    assert given.base_url("qa-url") == "http://127.0.0.1:9/qa"


@pytest.mark.parametrize(
    ("environment", "named"),
    [
        ({"IMAGEGEN_LOG_LEVEL": "bogus"}, "IMAGEGEN_LOG_LEVEL"),
        ({"LOG_LEVEL": "bogus"}, "LOG_LEVEL"),
        ({"LOG_LEVEL": "bogus", "IMAGEGEN_LOG_LEVEL": "INFO"}, "LOG_LEVEL"),  # LOG_LEVEL wins when both are set
    ],
)
def test_a_refused_setting_of_two_names_names_the_one_set(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], named: str
) -> None:
    """QA: IMAGEGEN_LOG_LEVEL=bogus was told "invalid setting LOG_LEVEL", a variable that was not set."""
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as refused:
        Settings(_env_file=None)
    assert str(refused.value).startswith(f"invalid setting {named}: must be one of DEBUG"), refused.value


def test_a_refused_setting_of_two_names_from_an_env_file_names_both(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("IMAGEGEN_LOG_LEVEL=bogus\n")
    with pytest.raises(ConfigError, match=r"^invalid setting LOG_LEVEL or IMAGEGEN_LOG_LEVEL: must be one of"):
        Settings(_env_file=env_file)
