"""Secrets and deployment settings from the environment (and ``.env``), loaded once at the edge.

The variable names are a contract (DESIGN §3): scripts and users rely on them. Secrets are
:class:`pydantic.SecretStr`, so they print as ``**********`` and never leak through ``repr``; the database URL
is a plain string whose password ``repr`` and dumps leave out.
"""

from __future__ import annotations

import base64
import io
import os
import re
import stat
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from pydantic import (
    AliasChoices,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from .base_urls import (
    base_url_key,
    base_urls_in,
    checked_base_urls,
    normalised_origin,
    web_url_problem,
)
from .errors import ConfigError, clip
from .pattern_settings import VariablesByPattern
from .profiles import Environment, env_files
from .provider_keys import key_variable, keys_in

#: Settings field holding each built-in provider's credential.
PROVIDER_KEY_FIELDS: dict[str, str] = {
    "replicate": "replicate_api_token",
    "fal": "fal_key",
    "unsplash": "unsplash_access_key",
    "openai": "openai_api_key",
    "bfl": "bfl_api_key",
    "stability": "stability_api_key",
}


def default_home() -> Path:
    """Where imagegen keeps its images and log when ``IMAGEGEN_HOME`` is unset (the platform's user data
    folder, ``~/.local/share/imagegen`` on Linux)."""
    import platformdirs  # imported here: only needed when IMAGEGEN_HOME is unset

    return Path(platformdirs.user_data_dir("imagegen", appauthor=False))


#: S3's bucket names: 3-63 lowercase letters, digits, hyphens and dots, a letter or digit at each end. R2's have no
#: dots (checked apart: an S3-compatible server at ``R2_ENDPOINT_URL`` may take them; QA: ``my.bucket`` was refused).
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
#: A Cloudflare account ID, as the dashboard shows it: 32 hexadecimal digits.
_ACCOUNT_ID = re.compile(r"[0-9a-fA-F]{32}")


def _looks_like_ip(name: str) -> bool:
    """Whether a bucket name is written as an IPv4 address (``192.168.5.4``), which S3 refuses."""
    return re.fullmatch(r"\d+\.\d+\.\d+\.\d+", name) is not None


#: What a path that exists but is not a regular file is, in an operator's words (``stat`` mode tests).
_SPECIAL_FILE_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_an_env_file(path: Path) -> str:
    """Why ``path`` (not a regular file) cannot be read as an env file, in words that say what to fix (QA: a
    folder, and then /dev/null or a FIFO, were reported as "no such file", which sent the operator looking for
    a typo)."""
    if path.is_dir():
        return "is a folder, not a file: name the env file itself (e.g. /srv/imagegen/.env.production)"
    try:
        mode = path.stat().st_mode
    except OSError:  # missing, or a dangling link: stat follows links, as reading the file would
        return "no such file"
    kind = next((f"is {name}, not" for test, name in _SPECIAL_FILE_KINDS if test(mode)), "is not")
    return f"{kind} a regular file: name a regular env file (e.g. /srv/imagegen/.env.production)"


def _check_env_file(path: Path) -> None:
    if not path.is_file():  # missing, or a folder (a virtualenv named .env): not an env file, as for pydantic
        return
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"env file {path} is not valid UTF-8 (byte {exc.start}): save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read env file {path}: {exc.strerror or exc}") from None
    # python-dotenv skips a line it cannot parse with an unlabelled warning, and the key on it (a provider's,
    # say) silently goes missing. The line itself is not shown: it may hold a secret.
    from dotenv.parser import parse_stream

    seen: dict[str, int] = {}
    ours = known_variables()
    for binding in parse_stream(io.StringIO(text)):
        raw = binding.original.string
        line = binding.original.line + len(raw) - len(raw.lstrip("\r\n"))
        # A word alone (`FOO`, a token pasted on the line after its `NAME=`) parses as a name without a value,
        # which is then ignored as unset (QA): not NAME=value either.
        if binding.error or (binding.key is not None and binding.value is None):
            raise ConfigError(
                f"env file {path}: line {line} is not NAME=value (quote a value that holds spaces, # or quotes)"
            )
        if binding.key is None:  # a comment or a blank line
            continue
        # QA: `FAL_KEY=abc` and later `FAL_KEY=` left fal without its key, the last line winning without a word;
        # config documents refuse a key given twice, and so does this (names are read without regard to case).
        # Only a name imagegen reads: the file may be the embedding application's own `.env` (QA, embedding: its
        # `DEBUG=1` ... `DEBUG=0` stopped Settings(), and with it the application, over a variable imagegen never
        # reads).
        name = binding.key.upper()
        if name in seen and (name in ours or name.startswith("IMAGEGEN_")):
            raise ConfigError(
                f"env file {path}: {binding.key} is set on line {seen[name]} and again on line {line} (the last "
                "would win without a word): keep one"
            )
        seen[name] = line


def _sendable_key(key: str) -> str:
    """``key`` if every character of it can go into an HTTP header (or an S3 signature): printable ASCII. QA
    (embedding): a key holding a typographic character (``é``, a curly quote pasted with it) failed every call as
    a *transient* ``UnicodeEncodeError``, retried, and counted against the provider's breaker as an outage, where
    the key is to fix. The character itself is not shown: it is part of a secret."""
    bad = next((i for i, char in enumerate(key) if not " " <= char <= "~"), None)
    if bad is not None:
        raise ValueError(
            f"character {bad + 1} is not printable ASCII (a letter with an accent, a typographic quote, a control "
            "character), which no HTTP header can carry: copy the key or token again"
        )
    return key


#: The variables R2 needs, besides one of ``R2_ACCOUNT_ID`` / ``R2_ENDPOINT_URL``.
R2_REQUIRED = ("R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY", "R2_BUCKET", "R2_PUBLIC_BASE_URL")
#: Every R2 variable; setting any of them asks for R2.
R2_VARIABLES = ("R2_ACCOUNT_ID", *R2_REQUIRED, "R2_ENDPOINT_URL")


def _settings_error(exc: ValidationError) -> str:
    """Every refused variable in one line (QA: only the first was named, the next one after fixing it). After an
    R2 variable's refusal, what R2 needs besides: which of them are missing is known only once every value
    parses, and a partial R2 is refused then (``storage.select``)."""
    said = []
    for err in exc.errors():
        name = _variable_set(".".join(str(p) for p in err["loc"]))
        message = err["msg"].removeprefix("Value error, ")
        said.append(f"invalid setting {name}: {message}" if name else f"invalid setting: {message}")
    text = "; ".join(said)
    if any(str(err["loc"][0]).startswith("R2_") for err in exc.errors() if err["loc"]):
        text += f" (R2 needs {', '.join(R2_REQUIRED)}, and R2_ACCOUNT_ID or R2_ENDPOINT_URL)"
    return text


def _variable_set(name: str) -> str:
    """The variable to blame for a refused setting that more than one name sets: pydantic names the first
    (``LOG_LEVEL``) whichever was set (QA: ``IMAGEGEN_LOG_LEVEL=bogus`` was told to fix LOG_LEVEL, which was not
    set). The one set in the environment, else (an env file's) every name of the setting."""
    for info in Settings.model_fields.values():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices) and alias.choices and alias.choices[0] == name:
            names = [str(choice) for choice in alias.choices]
            environment = {key.upper() for key in os.environ}
            return next((n for n in names if n.upper() in environment), " or ".join(names))
    return name


class Settings(BaseSettings):
    """Deployment settings. Build with ``Settings()`` (reads the environment and the profile's env files:
    ``.env``, then ``.env.<IMAGEGEN_ENV>``; see :mod:`~imagegen_core.profiles`) or pass values directly."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    def __init__(self, **values: Any) -> None:
        """Values by variable name (``IMAGEGEN_HOME=…``) or by field name (``home=…``). Raises
        :class:`ConfigError` naming the variable (or the env file) to fix, or an unknown name."""
        values = _by_variable_name(values)
        # The profile picks the env files, so it is read from the process environment before anything else.
        # An explicit ``_env_file`` (tests pass None) wins.
        if "_env_file" not in values:
            explicit = os.environ.get("IMAGEGEN_ENV_FILE")
            if explicit and not Path(explicit).is_file():
                # A mistyped path would otherwise run silently without its secrets.
                raise ConfigError(f"IMAGEGEN_ENV_FILE={explicit}: {_not_an_env_file(Path(explicit))}")
        files = values.setdefault("_env_file", env_files(os.environ))
        chosen = tuple(Path(f) for f in ((files,) if isinstance(files, str | Path) else tuple(files or ())))
        for path in chosen:
            _check_env_file(path)
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_settings_error(exc)) from None
        self._env_files_read = tuple(f for f in chosen if f.is_file())
        self._imagegen_variables = _imagegen_variables(self._env_files_read)

    replicate_api_token: SecretStr | None = Field(default=None, validation_alias="REPLICATE_API_TOKEN")
    fal_key: SecretStr | None = Field(default=None, validation_alias="FAL_KEY")
    #: fal's client also takes its key as two variables (providers.md §2.1); they make ``fal_key`` ``id:secret``.
    fal_key_id: SecretStr | None = Field(default=None, validation_alias="FAL_KEY_ID")
    fal_key_secret: SecretStr | None = Field(default=None, validation_alias="FAL_KEY_SECRET")
    unsplash_access_key: SecretStr | None = Field(default=None, validation_alias="UNSPLASH_ACCESS_KEY")
    openai_api_key: SecretStr | None = Field(default=None, validation_alias="OPENAI_API_KEY")
    bfl_api_key: SecretStr | None = Field(default=None, validation_alias="BFL_API_KEY")
    stability_api_key: SecretStr | None = Field(default=None, validation_alias="STABILITY_API_KEY")

    r2_account_id: str | None = Field(default=None, validation_alias="R2_ACCOUNT_ID")
    r2_access_key_id: SecretStr | None = Field(default=None, validation_alias="R2_ACCESS_KEY_ID")
    r2_secret_access_key: SecretStr | None = Field(default=None, validation_alias="R2_SECRET_ACCESS_KEY")
    r2_bucket: str | None = Field(default=None, validation_alias="R2_BUCKET")
    r2_public_base_url: str | None = Field(default=None, validation_alias="R2_PUBLIC_BASE_URL")
    r2_endpoint_url: str | None = Field(default=None, validation_alias="R2_ENDPOINT_URL")

    home: Path = Field(default_factory=default_home, validation_alias="IMAGEGEN_HOME")
    #: ``sqlite:///path`` or ``postgresql://user:password@host:port/db``; default the SQLite file in ``home``.
    database_url: str | None = Field(default=None, validation_alias="IMAGEGEN_DATABASE_URL")
    #: Deployment profile (DESIGN §3 names): chooses the env files and the production checks.
    environment: Environment = Field(default="development", validation_alias="IMAGEGEN_ENV")
    #: Production normally refuses to run with the offline provider as its only image source.
    allow_offline_only: bool = Field(default=False, validation_alias="IMAGEGEN_ALLOW_OFFLINE_ONLY")
    #: Serve /docs, /redoc and /openapi.json; default on, except in production.
    api_docs: bool | None = Field(default=None, validation_alias="IMAGEGEN_API_DOCS")
    admin_token: SecretStr | None = Field(default=None, validation_alias="IMAGEGEN_ADMIN_TOKEN")
    #: When set, ``POST /images/generate`` requires ``Authorization: Bearer <token>``.
    api_token: SecretStr | None = Field(default=None, validation_alias="IMAGEGEN_API_TOKEN")
    #: Browser origins allowed to call the HTTP API (comma-separated in the environment); none by default.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, validation_alias="IMAGEGEN_CORS_ORIGINS")
    #: Host names the console answers besides loopback and ``localhost`` (behind a proxy); comma-separated.
    console_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="IMAGEGEN_CONSOLE_HOSTS"
    )
    #: Request bodies above this size are refused with 413 before they are parsed.
    max_body_bytes: int = Field(default=65_536, ge=1_024, le=16_777_216, validation_alias="IMAGEGEN_MAX_BODY_BYTES")
    public_base_url: str | None = Field(default=None, validation_alias="IMAGEGEN_PUBLIC_BASE_URL")
    app_name: str = Field(default="imagegen", validation_alias="IMAGEGEN_APP_NAME")
    log_level: str = Field(default="WARNING", validation_alias=AliasChoices("LOG_LEVEL", "IMAGEGEN_LOG_LEVEL"))

    #: ``IMAGEGEN_<PROVIDER>_BASE_URL`` for any provider, keyed by lower-case provider name.
    provider_base_urls: dict[str, str] = Field(default_factory=dict)
    #: Third-party providers' keys: ``IMAGEGEN_<KIND>_API_KEY`` (see :mod:`~imagegen_core.provider_keys`), keyed by
    #: upper-case variable name.
    provider_api_keys: dict[str, SecretStr] = Field(default_factory=dict)

    _env_files_read: tuple[Path, ...] = PrivateAttr(default=())
    _imagegen_variables: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _fal_key_from_its_two_halves(self) -> Settings:
        halves = [h.get_secret_value() if h is not None else "" for h in (self.fal_key_id, self.fal_key_secret)]
        if self.fal_key is None and any(halves):
            if not all(halves):
                missing = "FAL_KEY_SECRET" if halves[0] else "FAL_KEY_ID"
                raise ValueError(f"{missing} is not set: fal needs both halves, or FAL_KEY=<id>:<secret>")
            self.fal_key = SecretStr(":".join(halves))
        return self

    @field_validator(
        "replicate_api_token",
        "fal_key",
        "fal_key_id",
        "fal_key_secret",
        "unsplash_access_key",
        "openai_api_key",
        "bfl_api_key",
        "stability_api_key",
        "r2_access_key_id",
        "r2_secret_access_key",
        "admin_token",
        "api_token",
        mode="before",
    )
    @classmethod
    def _without_surrounding_spaces(cls, value: Any) -> Any:
        # `IMAGEGEN_ADMIN_TOKEN="…0123 "` (a .env line's trailing space) was accepted, and no client could ever
        # match it: HTTP drops a header value's surrounding spaces. No key or token holds them on purpose.
        return _sendable_key(value.strip()) if isinstance(value, str) else value

    @field_validator("provider_api_keys", mode="before")
    @classmethod
    def _keys_without_surrounding_spaces(cls, value: Any) -> Any:
        # As every other key (above): a plugin's, from IMAGEGEN_<KIND>_API_KEY, its refusal naming that variable.
        if isinstance(value, dict):
            keys = {}
            for name, key in value.items():
                try:
                    keys[name] = _sendable_key(key.strip()) if isinstance(key, str) else key
                except ValueError as exc:
                    raise ConfigError(f"invalid setting {name}: {exc}") from None
            return keys
        return value

    @field_serializer("database_url")
    def _database_url_without_password(self, value: str | None) -> str | None:
        from .log.backend import safe_url

        # A plain str, not a SecretStr (the log's code reads it everywhere), yet its password is a secret.
        return safe_url(value) if value else value

    def __repr_args__(self) -> Any:
        from .log.backend import safe_url

        for name, value in super().__repr_args__():
            yield name, (safe_url(value) if name == "database_url" and value else value)

    @field_validator("database_url")
    @classmethod
    def _known_backend(cls, value: str | None) -> str | None:
        from .log.backend import database_url_problem

        problem = database_url_problem(value) if value else None
        if problem:
            raise ValueError(problem)
        return value or None

    @model_validator(mode="before")
    @classmethod
    def _empty_is_unset(cls, values: Any) -> Any:
        # An empty setting is an unset one (its default), for every setting alike, once the sources are merged: a
        # real environment variable set empty still wins over an env file's value. QA: `LOG_LEVEL=` or
        # `IMAGEGEN_ENV=` (a .env template's blank lines) stopped every command, while `IMAGEGEN_HOME=` and
        # `R2_BUCKET=` were taken as unset.
        if isinstance(values, dict):
            return {key: value for key, value in values.items() if not (isinstance(value, str) and value == "")}
        return values

    @field_validator("app_name")
    @classmethod
    def _utm_source_name(cls, value: str) -> str:
        # QA: "String should match pattern '^[a-z0-9_\-]{1,40}$'" for "My Newsroom", and the README gave no form.
        if not re.fullmatch(r"[a-z0-9_\-]{1,40}", value):
            raise ValueError(
                f"must be 1 to 40 lower-case letters, digits, _ or - (it is the utm_source of Unsplash's links), "
                f"got {clip(value, 60)!r}"
            )
        return value

    @field_validator("environment", mode="before")
    @classmethod
    def _lower_environment(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        # The environment gives one string, ``https://a.example, https://b.example``; origins never end in "/".
        if isinstance(value, str):
            return [origin.strip().rstrip("/") for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _web_origins(cls, value: list[str]) -> list[str]:
        # A browser's Origin is scheme://host[:port]; anything else would never match, silently. It is compared
        # as a string, so each is kept as browsers write it (QA: https://CMS.Example.com and
        # https://cms2.example.com:443 started fine, and their browsers' preflights got 400).
        origins = []
        for origin in value:
            if origin == "*":
                origins.append(origin)
                continue
            problem = web_url_problem(origin)
            if problem is None and urlsplit(origin).path:
                problem = f"an origin has no path, got {origin!r}"
            if problem:
                raise ValueError(f"{problem} (origins are scheme://host[:port], comma-separated, or *)")
            origins.append(normalised_origin(origin))
        return list(dict.fromkeys(origins))

    @field_validator("console_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [host.strip() for host in value.split(",") if host.strip()]
        return value

    @field_validator("console_hosts")
    @classmethod
    def _host_names(cls, value: list[str]) -> list[str]:
        from .web_hosts import normalised_host

        return list(dict.fromkeys(normalised_host(host) for host in value))

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("public_base_url", "r2_public_base_url", "r2_endpoint_url")
    @classmethod
    def _web_address(cls, value: str | None) -> str | None:
        if value:
            problem = web_url_problem(value)
            if problem:
                raise ValueError(problem)
        return value or None

    @field_validator("r2_bucket")
    @classmethod
    def _bucket_name(cls, value: str | None) -> str | None:
        if value and (not _BUCKET_NAME.fullmatch(value) or ".." in value or _looks_like_ip(value)):
            raise ValueError(
                f"{clip(repr(value), 80)} is not a bucket name: 3-63 lowercase letters, digits and hyphens (and"
                " dots on an S3 server other than R2), starting and ending with a letter or digit"
            )
        return value or None

    @field_validator("r2_account_id")
    @classmethod
    def _account_id(cls, value: str | None) -> str | None:
        # QA: "bad id!" failed only at the first upload (the image spooled for that endpoint for good), and
        # "127.0.0.1:9411#" sent requests signed with the R2 keys to that address.
        if value and not _ACCOUNT_ID.fullmatch(value):
            raise ValueError(
                f"must be the Cloudflare account ID, 32 hexadecimal digits (the dashboard's Account ID), got"
                f" {clip(repr(value), 80)}; for another S3-compatible server set R2_ENDPOINT_URL instead"
            )
        return value or None

    @field_validator("r2_endpoint_url")
    @classmethod
    def _endpoint_without_the_bucket(cls, value: str | None, info: ValidationInfo) -> str | None:
        # QA: Cloudflare's dashboard shows the bucket's S3 URL, ".../<bucket>"; with it here, objects went to
        # "<bucket>/ai/..." under the bucket (boto3 keeps the path) and every answered URL was a 404. A path
        # that is not the bucket stays allowed: an S3-compatible server behind a proxy under a prefix.
        if not value:
            return value
        parts = urlsplit(value.strip())
        segments = [segment for segment in parts.path.split("/") if segment]
        on_r2 = (parts.hostname or "").endswith(".r2.cloudflarestorage.com")  # R2's endpoint has no path
        if segments and (on_r2 or segments[-1] == info.data.get("r2_bucket")):
            raise ValueError(
                f"must be the S3 endpoint without the bucket (got the path {clip(repr(parts.path), 80)}): the bucket"
                " goes in R2_BUCKET only, e.g. https://<account>.r2.cloudflarestorage.com"
            )
        return value

    @model_validator(mode="after")
    def _r2_bucket_without_dots(self) -> Settings:
        if self.r2_bucket and "." in self.r2_bucket and not self.r2_endpoint_url:
            raise ValueError(
                f"R2_BUCKET {self.r2_bucket!r} has dots, which Cloudflare R2's bucket names cannot have (another"
                " S3-compatible server, reached with R2_ENDPOINT_URL instead of R2_ACCOUNT_ID, may take them)"
            )
        return self

    @field_validator("home", mode="before")
    @classmethod
    def _home_or_default(cls, value: Any) -> Any:
        # IMAGEGEN_HOME= (set but empty) would otherwise mean the current folder.
        return default_home() if isinstance(value, str) and not value.strip() else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """pydantic-settings' sources, each followed by the variables it read that are picked by name pattern
        (:mod:`.pattern_settings`: ``IMAGEGEN_<PROVIDER>_BASE_URL``, ``IMAGEGEN_<KIND>_API_KEY``): those of
        ``.env`` were ignored (a key from it was used, with the provider's real address), and those of the
        environment then win over them as for every other setting."""
        reserved = frozenset(name.upper() for name in _variable_names().values())

        def by_pattern(source: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
            return (
                VariablesByPattern(
                    settings_cls, source, field="provider_base_urls", pick=lambda v: base_urls_in(v, reserved=reserved)
                ),
                VariablesByPattern(
                    settings_cls, source, field="provider_api_keys", pick=lambda v: keys_in(v, reserved=reserved)
                ),
            )

        return (
            init_settings,
            *by_pattern(env_settings),
            env_settings,
            *by_pattern(dotenv_settings),
            dotenv_settings,
            file_secret_settings,
        )

    @field_validator("provider_base_urls")
    @classmethod
    def _provider_base_urls(cls, value: dict[str, str]) -> dict[str, str]:
        # Given directly too (``provider_base_urls={...}``): the same check as the variables', naming them, and
        # the same keys.
        return {base_url_key(provider): url for provider, url in checked_base_urls(value).items()}

    @field_validator("home")
    @classmethod
    def _home_expanded(cls, value: Path) -> Path:
        # IMAGEGEN_HOME=~/x: the store expanded it, the log did not (a folder named "~" in the current one).
        return value.expanduser()

    @property
    def database_path(self) -> Path:
        """The SQLite file (``IMAGEGEN_DATABASE_URL=sqlite:///path`` or ``<home>/imagegen.db``); ValueError when
        the log is on a PostgreSQL server."""
        url = self.database_url
        if url:
            if url.startswith("sqlite:///"):
                return Path(url.removeprefix("sqlite:///")).expanduser()
            raise ValueError("IMAGEGEN_DATABASE_URL points at PostgreSQL: there is no SQLite log file")
        return self.home / "imagegen.db"

    @property
    def log_database_url(self) -> str:
        """Where the log is, as a URL: ``IMAGEGEN_DATABASE_URL``, or ``sqlite:///<home>/imagegen.db``."""
        return self.database_url or f"sqlite:///{self.home / 'imagegen.db'}"

    @property
    def api_docs_enabled(self) -> bool:
        """Whether the HTTP API serves its interactive docs: ``IMAGEGEN_API_DOCS``, else all but production."""
        return self.api_docs if self.api_docs is not None else self.environment != "production"

    @property
    def env_files_read(self) -> tuple[Path, ...]:
        """The env files these settings were read from (those that existed)."""
        return self._env_files_read

    @property
    def imagegen_variables(self) -> dict[str, str]:
        """Every ``IMAGEGEN_*`` variable of the environment and of the env files read (upper-case name → where:
        ``environment`` or the file's path), known or not: for the warning about names imagegen does not know
        (see :mod:`~imagegen_core.unknown_settings`)."""
        return self._imagegen_variables

    def provider_key(self, provider: str, *, variable: str | None = None) -> str | None:
        """The credential for provider type ``provider``, or ``None`` when unset: a built-in's from its own
        variable, any other's from ``variable`` (its class's ``key_variable``) or ``IMAGEGEN_<PROVIDER>_API_KEY``."""
        field = PROVIDER_KEY_FIELDS.get(provider)
        secret: SecretStr | None = (
            getattr(self, field) if field else self.provider_api_keys.get(key_variable(provider, variable))
        )
        return secret.get_secret_value() or None if secret is not None else None

    def base_url(self, provider: str) -> str | None:
        """``IMAGEGEN_<PROVIDER>_BASE_URL`` when set: a proxy, a regional host or a local test server (``PROVIDER``
        in any case, anything but letters and digits as ``_``: :func:`~.base_urls.base_url_key`)."""
        return self.provider_base_urls.get(base_url_key(provider))

    def secret_values(self) -> list[str]:
        """Every configured secret value, for redaction of logs and error messages (the database password
        included: it sits in a plain URL)."""
        values = []
        for name, field_value in self:
            if isinstance(field_value, SecretStr) and field_value.get_secret_value():
                values.append(field_value.get_secret_value())
            del name
        values += [key.get_secret_value() for key in self.provider_api_keys.values() if key.get_secret_value()]
        # FAL_KEY is "<key id>:<key secret>": either half may be echoed alone (FAL_KEY_ID / FAL_KEY_SECRET are).
        fal_key = self.fal_key.get_secret_value() if self.fal_key is not None else ""
        key_id, colon, key_secret = fal_key.partition(":")
        if colon:
            values += [half for half in (key_id, key_secret) if half]
        from .log.backend import url_password

        password = url_password(self.database_url or "")
        if password:
            values.append(password)
            encoded = urlsplit(self.database_url or "").password  # as written in the URL, %-escapes and all
            if encoded and encoded != password:
                values.append(encoded)
        values += [form for value in values for form in encoded_forms(value)]
        # Once each: FAL_KEY_ID and FAL_KEY_SECRET make FAL_KEY, whose halves are listed above too, and every
        # secret is replaced in every text redacted (each request's texts included).
        return list(dict.fromkeys(values))


def known_variables() -> set[str]:
    """The variables that are settings of their own (``IMAGEGEN_<X>_BASE_URL`` and ``IMAGEGEN_<KIND>_API_KEY``
    aside: whether those are known depends on the providers), choices included, and ``IMAGEGEN_ENV_FILE``."""
    names = {"IMAGEGEN_ENV_FILE"}
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
        names.update(choice.upper() for choice in choices if isinstance(choice, str))
    return names


def _imagegen_variables(env_files_read: tuple[Path, ...]) -> dict[str, str]:
    """The ``IMAGEGEN_*`` names of the environment and of ``env_files_read``, each with where it was found
    (the environment wins, as its values do)."""
    from dotenv import dotenv_values

    found: dict[str, str] = {}
    for path in env_files_read:  # a later file's entry wins over an earlier one's, as its value does
        found.update({name.upper(): str(path) for name in dotenv_values(path) if name.upper().startswith("IMAGEGEN_")})
    found.update({name.upper(): "environment" for name in os.environ if name.upper().startswith("IMAGEGEN_")})
    return found


def _variable_names() -> dict[str, str]:
    """Each setting's field name → the environment variable it is read from (its first, for a choice)."""
    names: dict[str, str] = {}
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            alias = alias.choices[0]
        names[name] = alias if isinstance(alias, str) else name
    return names


def _by_variable_name(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` keyed by variable name. ``Settings(home=…)`` (the name ``repr`` shows) was silently ignored, and
    the library then wrote to the default home; a mistyped name too. pydantic's ``populate_by_name`` would also
    read a field's own name from the environment, where ``HOME`` is always set. ``IMAGEGEN_<PROVIDER>_BASE_URL=…``
    joins ``provider_base_urls`` (it was refused as unknown, though the environment's is read)."""
    names = _variable_names()
    known = set(names.values())
    reserved = frozenset(name.upper() for name in known)
    by_variable: dict[str, Any] = {}
    base_urls: dict[str, Any] = {}
    api_keys: dict[str, Any] = {}
    for key, value in values.items():
        if key.startswith("_") or key in known:  # pydantic-settings' own arguments (_env_file), or a variable
            by_variable[key] = value
        elif key in names:
            by_variable[names[key]] = value
        elif key.upper() in known:  # fal_key=…: the variable in lower case, as pydantic-settings takes it
            by_variable[key.upper()] = value
        elif found := base_urls_in({key: value}, reserved=reserved):
            base_urls.update(found)
        elif found := keys_in({key: value}, reserved=reserved):
            api_keys.update(found)
        else:
            raise ConfigError(f"unknown setting {key!r}: use a field of Settings or its variable (e.g. IMAGEGEN_HOME)")
    given = by_variable.get("provider_base_urls")
    if base_urls and (given is None or isinstance(given, dict)):  # anything else: pydantic refuses it, naming it
        by_variable["provider_base_urls"] = {**(given or {}), **base_urls}
    given = by_variable.get("provider_api_keys")
    if api_keys and (given is None or isinstance(given, dict)):
        by_variable["provider_api_keys"] = {**(given or {}), **api_keys}
    return by_variable


def encoded_forms(secret: str) -> list[str]:
    """The forms ``secret`` travels in besides its own, each to be redacted like it: base64 (QA: a proxy's error
    page echoed the credential it was sent that way, and it reached the log in clear), and percent-encoded, of
    the secret and of its base64 forms (QA: a stand-in quoting the key as a URL carries it, "r8_…%3A…%2F…",
    reached the answer, the log rows and breaker reasons: a key with ":", "/", "+" or "=", such as FAL_KEY or an
    R2 secret). The settings' secrets and the keys of providers given in code alike."""
    encoded = base64_forms(secret)
    return [*encoded, *(form for plain in (secret, *encoded) for form in percent_forms(plain))]


def percent_forms(secret: str) -> list[str]:
    """``secret`` percent-encoded as URLs carry it (every reserved character escaped, or all but ``/``), where
    that differs from ``secret`` itself; the hex digits' case does not matter, since redaction ignores case."""
    forms = [quote(secret, safe=""), quote(secret, safe="/")]
    return [form for form in dict.fromkeys(forms) if form != secret]


def base64_forms(secret: str) -> list[str]:
    """``secret`` base64-encoded (standard and URL-safe alphabets), without padding; none for a short secret,
    whose encoding could be a piece of ordinary text. The encoding of the secret on its own: not inside a longer
    encoded text (user:key), whose alignment varies."""
    if len(secret) < 8:
        return []
    encoded = base64.b64encode(secret.encode("utf-8")).decode("ascii").rstrip("=")
    return list(dict.fromkeys([encoded, encoded.replace("+", "-").replace("/", "_")]))
