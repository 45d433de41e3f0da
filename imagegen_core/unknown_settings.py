"""``IMAGEGEN_*`` variables imagegen does not know: each gets one warning line, naming the closest known name.

QA: ``IMAGEGEN_OPENIA_BASE_URL=http://127.0.0.1:8080`` was silently ignored, so the real API was called with the
real key instead of the test server. A warning, never a refusal: other tools may share the prefix (a
deployment's own ``IMAGEGEN_VERSION``), and a variable of a newer imagegen, in an env file that an older one also
reads during a rolling upgrade, must not stop the older one from starting.

Three kinds are told apart. A name that is not a setting at all is known when the settings are read. An
``IMAGEGEN_<X>_BASE_URL`` is meant for a provider type or for a config entry (``IMAGEGEN_FAL_EU_BASE_URL`` for
entry ``fal_eu``), and an ``IMAGEGEN_<KIND>_API_KEY`` for a plugin (which may name its own variable): those are
judged against the installed types and the config in force (:class:`~imagegen_core.planning.ProviderSet`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from .errors import closest_name

_log = logging.getLogger("imagegen")

PREFIX = "IMAGEGEN_"


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to ``name`` (compared without the common prefix, which would make every pair
    look alike), or None when none is close."""
    return closest_name(name, known, fold=lambda n: n.removeprefix(PREFIX))


def warning_line(name: str, where: str, what: str, known: Iterable[str]) -> str:
    """The one line said about ``name`` (found in ``where``), which ``what`` (it is not a setting, …)."""
    suggestion = closest(name, known)
    hint = f"; did you mean {suggestion}?" if suggestion else ""
    return f"{name} ({where}) {what}: it is ignored{hint}"


class UnknownVariables:
    """Warns once per name (per instance: one per :class:`ProviderSet`, so once per ImageGen)."""

    def __init__(self) -> None:
        self._said: set[str] = set()

    def warn(self, name: str, where: str, what: str, known: Iterable[str]) -> None:
        """One warning line about ``name``, unless it was said already."""
        if name not in self._said:
            self._said.add(name)
            _log.warning("%s", warning_line(name, where, what, known))
