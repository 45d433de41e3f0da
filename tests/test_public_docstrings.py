"""Every public name a developer meets through ``help()`` says what it is (DESIGN §5.9): the classes and functions
of ``imagegen_core.__all__`` and of the plugin kit (``imagegen_core.providers.__all__``), and their public methods
and properties, inherited ones included (QA: ``help(ProviderBase)`` showed ``configured``, ``download_policy`` and
``confirm_use`` bare, and ``GenerateResult.source`` and ``r2_stored`` had no docstring)."""

from __future__ import annotations

import enum
import inspect
from types import ModuleType

import pytest

import imagegen_core
import imagegen_core.providers


def _documented(cls: type, attr: str, member: object) -> bool:
    """Whether ``cls.attr`` (``member``: its function or property) has a docstring, its own or a base class's."""
    if inspect.getdoc(member if isinstance(member, property) else getattr(cls, attr)):
        return True
    return any(inspect.getdoc(getattr(base, attr, None)) for base in cls.__mro__[1:] if base is not object)


def _undocumented(module: ModuleType) -> list[str]:
    missing = []
    for name in module.__all__:
        obj = getattr(module, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if not inspect.getdoc(obj):
            missing.append(name)
        if not inspect.isclass(obj) or issubclass(obj, enum.Enum | BaseException):
            continue
        for attr, value in vars(obj).items():
            member = value.__func__ if isinstance(value, classmethod | staticmethod) else value
            member = getattr(member, "wrapped_property", member)  # pydantic's computed fields
            public = not attr.startswith("_") and (isinstance(member, property) or inspect.isfunction(member))
            if public and not _documented(obj, attr, member):
                missing.append(f"{name}.{attr}")
    return missing


@pytest.mark.parametrize("module", [imagegen_core, imagegen_core.providers], ids=lambda m: m.__name__)
def test_every_public_name_and_member_has_a_docstring(module: ModuleType) -> None:
    assert _undocumented(module) == []
