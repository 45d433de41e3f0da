"""Third-party providers' API keys: ``IMAGEGEN_<KIND>_API_KEY`` (or the name a plugin's ``key_variable`` gives,
of the same form). No field of :class:`~imagegen_core.settings.Settings` can declare them, so they are read by
name pattern from the same places as every other setting, the arguments, the environment and then the env
files, into ``Settings.provider_api_keys``, and redacted like the built-in keys (QA: a plugin could only read
its own variable, and its key then went unredacted into errors and the log).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

#: What a plugin's key variable is called, in any case (pydantic-settings lower-cases the names it reads).
KEY_VARIABLE = re.compile(r"IMAGEGEN_[A-Z0-9_]+_API_KEY", re.IGNORECASE)


def key_variable(kind: str, declared: str | None = None) -> str:
    """The variable holding the key of a plugin registered as ``kind``: ``declared`` (its class's
    ``key_variable``), else ``IMAGEGEN_<KIND>_API_KEY``, ``KIND`` upper-cased with anything but letters and
    digits as ``_`` (``photo-desk`` → ``IMAGEGEN_PHOTO_DESK_API_KEY``)."""
    if declared:
        return declared.upper()
    return f"IMAGEGEN_{variable_part(kind)}_API_KEY"


def variable_part(name: str) -> str:
    """How a provider type or entry name is written inside a variable's name: upper case, anything but letters and
    digits as ``_`` (``photo-desk`` → ``PHOTO_DESK``), for its key and its base URL alike."""
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


def keys_in(variables: Mapping[str, Any], *, reserved: frozenset[str]) -> dict[str, Any]:
    """The plugins' keys among ``variables`` (name → value), by upper-case variable name; ``reserved``: names of
    settings of their own that fit the pattern."""
    return {
        name.upper(): value
        for name, value in variables.items()
        if KEY_VARIABLE.fullmatch(name) and name.upper() not in reserved
    }
