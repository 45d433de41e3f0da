"""Architecture rules for the console (DESIGN §2): it is layout over imagegen_core — it never imports httpx,
boto3 or sqlite3, never reaches into private names, and the core modules it uses stay free of Streamlit."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from console_helpers import CONSOLE

FORBIDDEN = {"httpx", "boto3", "botocore", "sqlite3"}
CONSOLE_FILES = sorted(CONSOLE.rglob("*.py"))


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def test_the_console_has_pages_to_check() -> None:
    names = {p.relative_to(CONSOLE).as_posix() for p in CONSOLE_FILES}
    assert {"app.py", "common.py", "views/generate.py", "views/stats.py", "views/admin.py"} <= names


def test_nothing_under_console_imports_httpx_boto3_or_sqlite3() -> None:
    offenders = {}
    for path in CONSOLE_FILES:
        found = set()
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module.split(".")[0])
        if found & FORBIDDEN:
            offenders[path.name] = found & FORBIDDEN
    assert offenders == {}


def test_the_console_uses_no_private_name_of_imagegen_core() -> None:
    offenders = []
    for path in CONSOLE_FILES:
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("imagegen_core"):
                parts = node.module.split(".") + [alias.name for alias in node.names]  # type: ignore[union-attr]
                offenders += [f"{path.name}: {node.module}" for part in parts if part.startswith("_")]
            elif isinstance(node, ast.Import):
                offenders += [f"{path.name}: {a.name}" for a in node.names if "._" in a.name]
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                offenders.append(f"{path.name}:{node.lineno}: .{node.attr}")
    assert offenders == []


def test_the_core_modules_behind_the_console_load_neither_streamlit_nor_pandas() -> None:
    code = (
        "import sys, imagegen_core.console_data, imagegen_core.console_stats, imagegen_core.history, "
        "imagegen_core.cli_console; "
        "print(','.join(m for m in ('streamlit', 'pandas', 'altair') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
