"""Storage statistics: object count and bytes per ``YYYY-MM`` under a key prefix.

Keys written by imagegen look like ``{prefix}/YYYY/MM/<uuid>.webp``; the default images live under
``{prefix}/defaults/``. Default images are *not* counted in any month: they are reported on their own
(``defaults``), and anything else under the prefix (files put there by hand, other tools) as ``other``.
The totals cover all three, so they match what the bucket or folder holds under the prefix.

Both stores feed :func:`tally` with ``(key, size)`` pairs: R2 from a paginated ``ListObjectsV2``
listing, the local store from a folder walk; the counting rules are therefore identical.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Usage:
    """A number of objects and their total size in bytes."""

    objects: int = 0
    bytes: int = 0

    def add(self, size: int) -> Usage:
        """This usage plus one object of ``size`` bytes."""
        return Usage(self.objects + 1, self.bytes + size)


@dataclass(frozen=True, slots=True)
class MonthUsage:
    """Usage of one calendar month (``month`` is ``YYYY-MM``, from the key, i.e. when it was stored)."""

    month: str
    objects: int
    bytes: int


@dataclass(frozen=True, slots=True)
class StorageStats:
    """Usage under ``prefix`` of one store: per month (oldest first), default images, other objects."""

    backend: str
    location: str
    prefix: str
    months: tuple[MonthUsage, ...] = ()
    defaults: Usage = field(default_factory=Usage)
    other: Usage = field(default_factory=Usage)

    @property
    def total(self) -> Usage:
        """Everything under the prefix: months, default images and other objects."""
        objects = sum(m.objects for m in self.months) + self.defaults.objects + self.other.objects
        size = sum(m.bytes for m in self.months) + self.defaults.bytes + self.other.bytes
        return Usage(objects, size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (camelCase, like the HTTP API), e.g. for ``/admin/storage``."""
        total = self.total
        return {
            "backend": self.backend,
            "location": self.location,
            "prefix": self.prefix,
            "months": [{"month": m.month, "objects": m.objects, "bytes": m.bytes} for m in self.months],
            "defaults": {"objects": self.defaults.objects, "bytes": self.defaults.bytes},
            "other": {"objects": self.other.objects, "bytes": self.other.bytes},
            "totalObjects": total.objects,
            "totalBytes": total.bytes,
        }


_MONTH_KEY = re.compile(r"(\d{4})/(0[1-9]|1[0-2])/[^/]+")


def listing_prefix(prefix: str) -> str:
    """The key prefix to list: ``prefix`` with exactly one trailing slash (``ai`` → ``ai/``), so that
    ``ai`` never matches ``ai-archive/...``; an empty prefix lists everything."""
    cleaned = prefix.strip("/")
    return f"{cleaned}/" if cleaned else ""


def tally(items: Iterable[tuple[str, int]], *, prefix: str, backend: str, location: str) -> StorageStats:
    """Count ``(key, size)`` pairs into months, defaults and other objects. Keys outside ``prefix``
    are ignored (a listing may be wider than the prefix)."""
    start = listing_prefix(prefix)
    months: dict[str, Usage] = {}
    defaults = Usage()
    other = Usage()
    for key, size in items:
        if not key.startswith(start):
            continue
        rest = key[len(start) :]
        match = _MONTH_KEY.fullmatch(rest)
        if match:
            month = f"{match.group(1)}-{match.group(2)}"
            months[month] = months.get(month, Usage()).add(size)
        elif rest.startswith("defaults/"):
            defaults = defaults.add(size)
        else:
            other = other.add(size)
    return StorageStats(
        backend=backend,
        location=location,
        prefix=start.rstrip("/"),
        months=tuple(MonthUsage(m, u.objects, u.bytes) for m, u in sorted(months.items())),
        defaults=defaults,
        other=other,
    )
