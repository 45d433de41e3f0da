"""Optional dependencies: which extra of ``pyproject.toml`` installs each, and one error that says so.

A plain ``pip install imagegen`` has only the base dependencies: enough for the library and the core commands
(``generate``, ``stats``, ``providers``, ``config``, …). The HTTP API, the console, a PostgreSQL log and the
pandas views need an extra. Where one of those starts, :func:`require` checks that its modules can be
found and raises :class:`~imagegen_core.errors.MissingExtraError` naming the extra and the command that
installs it, instead of a ``ModuleNotFoundError`` from deep inside (which named neither).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shlex
from collections.abc import Iterable

from .errors import MissingExtraError

#: The distribution whose extras these are.
DISTRIBUTION = "imagegen"

#: Each extra → the optional modules imagegen imports from it (import names). A test keeps this in step with
#: ``[project.optional-dependencies]``. pandas and altair come with ``notebooks`` and with ``console``.
MODULES_OF: dict[str, tuple[str, ...]] = {
    "api": ("fastapi", "fastapi_offline", "uvicorn", "limits", "pythonjsonlogger"),
    "postgres": ("psycopg", "psycopg_pool"),
    "notebooks": ("pandas", "altair"),
    "console": ("streamlit", "pandas", "altair"),
}


def require(extra: str, *, feature: str, modules: Iterable[str] | None = None) -> None:
    """Raise :class:`MissingExtraError` when one of ``modules`` (default: all of ``extra``'s) is not installed.
    ``feature`` names what needs them, as the user called it (``imagegen serve``). Nothing is imported: the
    check only looks along the import path, so it can run before the feature's own (slower) imports."""
    for module in MODULES_OF[extra] if modules is None else modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except ValueError:  # in sys.modules without a __spec__ (put there by hand): importable all the same
            found = True
        if not found:
            raise MissingExtraError(
                f"{feature} needs the {extra!r} extra ({module} is not installed): {install_command(extra)}",
                extra=extra,
                module=module,
            )


def install_command(extra: str) -> str:
    """The command that adds ``extra`` to this installation, from where imagegen was installed when that was not
    an index (PEP 610's ``direct_url.json``: a clone, an archive or a repository): a bare
    ``pip install 'imagegen[api]'`` would fetch whatever an index holds under that name."""
    from importlib import metadata

    origin: object = None
    with contextlib.suppress(metadata.PackageNotFoundError, ValueError):  # a source tree; an unreadable record
        origin = json.loads(metadata.distribution(DISTRIBUTION).read_text("direct_url.json") or "null")
    return install_command_from(origin, extra)


def install_command_from(origin: object, extra: str) -> str:
    """:func:`install_command` for an installation whose ``direct_url.json`` holds ``origin`` (None: none)."""
    # Imported here: only an error's message needs them, and urllib.request pulls in http.client and more.
    from urllib.parse import urlsplit
    from urllib.request import url2pathname

    url = origin.get("url") if isinstance(origin, dict) else None
    if not isinstance(url, str) or not isinstance(origin, dict):
        return f"pip install {shlex.quote(f'{DISTRIBUTION}[{extra}]')}"
    if url.startswith("file:") and "dir_info" in origin:  # a local folder: its path reads better than the URL
        editable = isinstance(origin["dir_info"], dict) and origin["dir_info"].get("editable") is True
        path = url2pathname(urlsplit(url).path)
        return f"pip install {'-e ' if editable else ''}{shlex.quote(f'{path}[{extra}]')}"
    vcs = origin.get("vcs_info")
    if isinstance(vcs, dict) and isinstance(vcs.get("vcs"), str):
        # PEP 440's direct reference to a repository, at the commit installed: git+https://…@<commit>
        commit = vcs.get("commit_id")
        url = f"{vcs['vcs']}+{url}" + (f"@{commit}" if isinstance(commit, str) else "")
    return f"pip install {shlex.quote(f'{DISTRIBUTION}[{extra}] @ {url}')}"
