"""Names a package exports but imports only on first use, so that importing the package stays cheap
(``import imagegen_core`` does not load httpx, Pillow or pydantic; ``imagegen_core.providers`` not httpx)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``name`` is imported from the module ``where[name]`` names
    relative to ``package`` (``"models"``, or ``"..errors"`` for one above it) on first use, and kept in the
    package's namespace, so the next use is a plain attribute read."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module if module.startswith(".") else f".{module}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
