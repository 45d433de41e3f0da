"""Deployment profiles: ``IMAGEGEN_ENV`` = ``development`` (default), ``staging`` or ``production``.

A profile chooses which env files :class:`~imagegen_core.settings.Settings` reads — ``.env`` then
``.env.<profile>`` (the later file wins; real environment variables win over both), or only
``IMAGEGEN_ENV_FILE`` when that is set — and its safe defaults: production serves no interactive API docs
unless ``IMAGEGEN_API_DOCS=1``. Production also refuses to start (:func:`production_problems`) rather
than run open or half-configured: without an admin token, with a secrets file any local user can read, or
with the offline provider as the only image source (unless ``IMAGEGEN_ALLOW_OFFLINE_ONLY=1``).

``IMAGEGEN_ENV`` itself is read from the process environment only: it decides which files are read.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .settings import Settings

Environment = Literal["development", "staging", "production"]
ENVIRONMENTS: tuple[Environment, ...] = ("development", "staging", "production")
#: The shortest admin or API token production accepts: long enough not to be guessed over HTTP.
MIN_TOKEN_CHARS = 16
#: Other files that hold secrets and must not be readable by every local user in production.
SECRET_FILES = (Path(".streamlit") / "secrets.toml",)


def environment(environ: Mapping[str, str]) -> str:
    """The profile named by ``IMAGEGEN_ENV`` (lower-cased; ``development`` when unset)."""
    return (environ.get("IMAGEGEN_ENV") or "development").strip().lower()


def env_files(environ: Mapping[str, str]) -> tuple[Path, ...]:
    """The env files a profile reads, in increasing priority (missing ones are skipped by the reader)."""
    explicit = environ.get("IMAGEGEN_ENV_FILE")
    if explicit:
        return (Path(explicit),)
    return (Path(".env"), Path(f".env.{environment(environ)}"))


def world_readable(paths: Iterable[Path]) -> list[str]:
    """One reason per existing file that every local user may read (mode & 0o004)."""
    reasons = []
    for path in paths:
        try:
            mode = path.stat().st_mode
        except OSError:
            continue
        if mode & stat.S_IROTH:
            reasons.append(
                f"secrets file {path} is readable by every user (mode {stat.S_IMODE(mode):04o}); run chmod 600 {path}"
            )
    return reasons


def file_url_problem(settings: Settings) -> str | None:
    """Why a served API's image URLs would be of no use to its clients: the local store without
    ``IMAGEGEN_PUBLIC_BASE_URL`` answers ``file://`` URLs of the server's own disk (None: they are fine)."""
    from .storage.select import r2_values

    if settings.public_base_url or r2_values(settings):
        return None
    return (
        "images would be answered as file:// URLs that only this machine can open; set IMAGEGEN_PUBLIC_BASE_URL "
        "to the address the API's /files is reached at (e.g. https://images.example.com/files), or configure R2"
    )


def weak_tokens(settings: Settings) -> list[str]:
    """Why the admin or API token is too easy to guess (a warning outside production, a refusal in it), one line
    each. The API token too (QA): a short one is guessed, and a word such as "files" or "provider" is hidden as
    ``***`` wherever it appears in answers and logs, which rewrites them and so tells what the token is."""
    weak = []
    for variable, secret in (
        ("IMAGEGEN_ADMIN_TOKEN", settings.admin_token),
        ("IMAGEGEN_API_TOKEN", settings.api_token),
    ):
        token = secret.get_secret_value() if secret is not None else ""
        if token and len(token) < MIN_TOKEN_CHARS:
            weak.append(f"{variable} has under {MIN_TOKEN_CHARS} characters; use a random one (openssl rand -hex 24)")
    return weak


def offline_only_problem(settings: Settings, source_types: Iterable[str]) -> str | None:
    """In production, why only the offline provider must not answer (its drawings are no article images);
    None when another provider races, outside production, or with ``IMAGEGEN_ALLOW_OFFLINE_ONLY=1``."""
    if settings.environment != "production" or settings.allow_offline_only or not set(source_types) <= {"offline"}:
        return None
    return (
        "only the offline provider would answer (no provider key set, or every networked provider disabled); "
        "configure a provider or set IMAGEGEN_ALLOW_OFFLINE_ONLY=1"
    )


def production_problems(settings: Settings, source_types: Iterable[str]) -> list[str]:
    """Why ``settings`` must not serve in production, one line each (empty: fine, or not production).

    ``source_types`` are the provider types that would race now (``offline`` for the built-in one).
    """
    if settings.environment != "production":
        return []
    problems = []
    token = settings.admin_token.get_secret_value() if settings.admin_token is not None else ""
    if not token:
        problems.append("IMAGEGEN_ADMIN_TOKEN is not set; production needs the admin endpoints protected")
    problems += weak_tokens(settings)
    problems += world_readable([*settings.env_files_read, *SECRET_FILES])
    offline_only = offline_only_problem(settings, source_types)
    if offline_only:
        problems.append(offline_only)
    file_urls = file_url_problem(settings)
    if file_urls:
        problems.append(file_urls)
    return problems
