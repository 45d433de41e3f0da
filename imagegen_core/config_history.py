"""The stored config versions as an operator reads them (``imagegen config history``,
``GET /admin/config/history``): each version's id, time and source, what it changed from the version before
it, whether this imagegen would accept it now, and which one is in force. Every version is kept in the log
DB's ``config_versions``; this is how one is found again to roll back to (``ImageGen.rollback_config``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .config import RuntimeConfig, parse_stored
from .errors import ConfigError

#: Changed keys named in a summary; the rest are counted.
SUMMARY_PATHS = 3


@dataclass(frozen=True)
class ConfigVersionInfo:
    """One stored config version, summarised."""

    version: int
    stored_at: float
    source: str
    #: Dotted keys whose value differs from the version before (added or removed keys too); None for the
    #: oldest version listed when nothing older is stored.
    changes: list[str] | None
    #: Why this imagegen would refuse it now (None: valid): such a version cannot be rolled back to.
    error: str | None
    in_force: bool

    def summary(self) -> str:
        """A few words: the keys it changed, "first version", or "no change"."""
        if self.changes is None:
            return "first version"
        if not self.changes:
            return "no change"
        named = ", ".join(self.changes[:SUMMARY_PATHS])
        more = len(self.changes) - SUMMARY_PATHS
        return f"{named} (+{more} more)" if more > 0 else named


def changed_paths(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted paths where two JSON documents differ, sorted; a whole object added or removed is one path."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        paths: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                paths.append(path)
            else:
                paths.extend(changed_paths(old[key], new[key], path))
        return paths
    return [] if old == new else [prefix or "(root)"]


def summarise(
    versions: list[tuple[int, float, str, Any]],
    *,
    parse: Callable[[Mapping[str, Any]], RuntimeConfig],
    in_force: int | None,
    limit: int,
) -> list[ConfigVersionInfo]:
    """``versions`` (newest first, one more than ``limit`` when there is an older one to compare with) as
    :class:`ConfigVersionInfo`, ``limit`` at most."""
    infos = []
    for index, (version, stored_at, source, document) in enumerate(versions[:limit]):
        older = versions[index + 1][3] if index + 1 < len(versions) else None
        changes = None if index + 1 >= len(versions) else changed_paths(older, document)
        infos.append(
            ConfigVersionInfo(
                version=version,
                stored_at=stored_at,
                source=source,
                changes=changes,
                error=_refusal(document, parse),
                in_force=version == in_force,
            )
        )
    return infos


def _refusal(document: Any, parse: Callable[[Mapping[str, Any]], RuntimeConfig]) -> str | None:
    try:
        parse_stored(document, parse)
    except ConfigError as exc:
        return named_error(exc)
    return None


def named_error(exc: ConfigError) -> str:
    """The error's message, led by the field it names when the message does not say it already."""
    text, field = str(exc), exc.field
    return f"{field}: {text}" if field and not field.startswith("(") and f"{field}:" not in text else text
