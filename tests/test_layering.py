"""Architecture rules (DESIGN §2): the core never imports UI code, and importing it stays cheap."""

from __future__ import annotations

import ast
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import imagegen_core

CORE = Path(imagegen_core.__file__).parent
FORBIDDEN_IN_CORE = {"streamlit"}
HEAVY = ["pandas", "altair", "boto3", "streamlit", "numpy", "psycopg", "psycopg_pool"]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_imagegen_core_never_imports_streamlit() -> None:
    offenders = {str(p.relative_to(CORE)): imported_modules(p) & FORBIDDEN_IN_CORE for p in CORE.rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_importing_the_core_and_its_facade_loads_no_heavy_library() -> None:
    code = (
        "import sys, imagegen_core, imagegen_core.service, imagegen_core.cli; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_the_command_line_loads_the_engine_only_for_commands_that_run_it() -> None:
    """`imagegen --help` (and a mistyped argument) answers without the second of pydantic, httpx and
    tenacity imports that a real command needs."""
    engine = ["pydantic", "pydantic_settings", "httpx", "tenacity", "PIL", "imagegen_core.service"]
    code = f"import sys, imagegen_core.cli; print(','.join(m for m in {engine!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_public_api_is_complete_and_every_name_resolves() -> None:
    from imagegen_core import errors, models

    public_types = {
        name
        for module in (errors, models)
        for name, value in vars(module).items()
        if isinstance(value, type) and value.__module__ == module.__name__ and not name.startswith("_")
    } - {"WireModel"}
    assert public_types <= set(imagegen_core.__all__)
    assert {"ImageGen", "GenerateRequest", "GenerateResult", "Settings"} <= set(imagegen_core.__all__)
    for name in imagegen_core.__all__:
        assert getattr(imagegen_core, name) is not None


def _own_classes(annotation: Any, found: set[type]) -> None:
    """The imagegen_core classes named anywhere in ``annotation`` (unions, generics, Callable arguments)."""
    if isinstance(annotation, type):
        if annotation.__module__.startswith("imagegen_core"):
            found.add(annotation)
        return
    for arg in annotation if isinstance(annotation, list) else typing.get_args(annotation):
        _own_classes(arg, found)


def test_every_type_imagegens_public_methods_take_or_return_is_public() -> None:
    """QA run: ``compare()`` returned a ``Comparison`` and ``on_event`` received an ``AttemptEvent`` that a
    developer could not import from ``imagegen_core`` (nor find in ``dir()``)."""
    from imagegen_core.service import ImageGen

    found: set[type] = set()
    for name, member in vars(ImageGen).items():
        function = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
        if name.startswith("_") or not callable(function):
            continue
        for annotation in typing.get_type_hints(function).values():
            _own_classes(annotation, found)
    assert {"Comparison", "AttemptEvent", "GenerateResult"} <= {cls.__name__ for cls in found}
    assert {cls.__name__ for cls in found} <= set(imagegen_core.__all__)
    for cls in found:
        assert getattr(imagegen_core, cls.__name__) is cls


def test_the_request_and_answer_fields_are_described_for_help_and_the_openapi_schema() -> None:
    """QA run: the fields' meaning lived in ``#:`` comments, so ``model_fields[...].description`` (and the API
    docs' schema) said nothing about, e.g., ``provider``."""
    from imagegen_core.models import GenerateRequest, GenerateResult

    for model in (GenerateRequest, GenerateResult):
        undescribed = [name for name, field in model.model_fields.items() if not field.description]
        assert undescribed in ([], ["content_type", "store_failed"]), (model.__name__, undescribed)
