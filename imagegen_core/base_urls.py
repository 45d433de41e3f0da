"""Web addresses in the settings, and ``IMAGEGEN_<PROVIDER>_BASE_URL``: one variable per provider, for any
provider (third-party ones included), so no field of :class:`~imagegen_core.settings.Settings` can declare
them. They are read by name pattern from the same places as every other setting: the arguments, the
environment, then the env files (``.env``), in that order of priority, into ``Settings.provider_base_urls``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .provider_keys import variable_part
from .web_hosts import ascii_host

#: ``IMAGEGEN_<PROVIDER>_BASE_URL``, in any case (pydantic-settings lower-cases the names it reads).
_VARIABLE = re.compile(r"IMAGEGEN_(?P<provider>.+)_BASE_URL", re.IGNORECASE)
BASE_URL_VARIABLE = _VARIABLE


def web_url_problem(url: str) -> str | None:
    """Why ``url`` is not a usable ``http(s)://host[:port][/path]`` address, or None."""
    try:
        parts = urlsplit(url.strip())
    except ValueError as exc:  # "Invalid IPv6 URL": said under the variable's name, as every other problem
        return f"is not a valid URL ({exc}), got {url!r}"
    if "@" in parts.netloc:  # first, so that the messages below never echo a password
        return "must not carry a user name or password (credentials go in their own variables)"
    try:
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError:
        return f"the port in {url!r} is out of range"
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url.strip()):
        return f"must be an http:// or https:// URL with a host, got {url!r}"
    if parts.query or parts.fragment or url.strip().endswith(("?", "#")):
        # Paths are appended to these addresses: "…/files?x=1" + "/ai/…" would end up inside the query.
        return f"must not have a ?query or #fragment (paths are appended to it), got {url!r}"
    return None


#: The port a scheme's URLs mean when they name none: a browser's ``Origin`` header leaves it out.
DEFAULT_PORTS = {"http": 80, "https": 443}


def normalised_origin(origin: str) -> str:
    """``scheme://host[:port]`` as a browser's ``Origin`` header writes it: scheme and host in lower case, the
    scheme's default port left out (``https://CMS.Example.com:443`` → ``https://cms.example.com``). ``origin``
    is an http(s) URL without a path (:func:`web_url_problem` passed it)."""
    parts = urlsplit(origin.strip())
    host = parts.hostname or ""  # lower case, without an IPv6 address's brackets
    # An international name as the browser sends it (QA: https://Bücher.example never matched its Origin).
    host = f"[{host}]" if ":" in host else ascii_host(host).lower()
    port = parts.port
    scheme = parts.scheme.lower()
    return f"{scheme}://{host}" if port is None or port == DEFAULT_PORTS.get(scheme) else f"{scheme}://{host}:{port}"


def variable_name(provider: str) -> str:
    """The variable that sets ``provider``'s base URL (see :func:`base_url_key`)."""
    return f"IMAGEGEN_{base_url_key(provider).upper()}_BASE_URL"


def base_urls_in(variables: Mapping[str, Any], *, reserved: frozenset[str]) -> dict[str, Any]:
    """The providers' base URLs among ``variables`` (name → value), keyed by :func:`base_url_key`.
    ``reserved``: upper-case names of settings of their own that fit the pattern (``IMAGEGEN_PUBLIC_BASE_URL``).
    Empty values are kept: set but empty means "no override", also over an env file's value."""
    urls: dict[str, Any] = {}
    for name, value in variables.items():
        match = _VARIABLE.fullmatch(name)
        if match and name.upper() not in reserved:
            urls[base_url_key(match["provider"])] = value
    return urls


def base_url_key(provider: str) -> str:
    """How a provider (a type or an entry) is looked up among the base URLs: its :func:`variable_part` in lower
    case, as its API key's variable names it (``photo-desk`` → ``photo_desk``; QA: the key was read
    from ``IMAGEGEN_PHOTO_DESK_API_KEY`` but the base URL only from ``IMAGEGEN_PHOTO-DESK_BASE_URL``, a name
    no shell can export)."""
    return variable_part(provider).lower()


def checked_base_urls(urls: Mapping[str, str]) -> dict[str, str]:
    """``urls`` without the empty ones and without a trailing ``/`` (paths are appended to them); a
    :class:`ConfigError` naming the variable for one that is not an http(s) URL with a host."""
    checked: dict[str, str] = {}
    for provider, url in urls.items():
        if not url.strip():
            continue
        problem = web_url_problem(url)
        if problem:
            raise ConfigError(f"invalid setting {variable_name(provider)}: {problem}")
        checked[provider] = url.strip().rstrip("/")
    return checked
