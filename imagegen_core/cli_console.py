"""``imagegen console``: the editors' Streamlit console on http://127.0.0.1:PORT.

It runs ``streamlit run <console/server.py>`` with the server flags spelled out (headless, loopback only,
no usage statistics, no file watcher), so it behaves the same from any folder, whatever
``.streamlit/config.toml`` the current folder has. ``console/server.py`` serves ``console/app.py`` behind a
``Host`` check (:mod:`~imagegen_core.web_hosts`: binding to loopback alone does not stop DNS rebinding).
Streamlit is imported only by the process it starts.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import click

from .cli_common import fail, listen_or_fail
from .extras import require

#: Where the console listens: loopback only (put a reverse proxy with authentication in front to share it,
#: and list its host name in IMAGEGEN_CONSOLE_HOSTS).
CONSOLE_HOST = "127.0.0.1"


def console_app_path() -> Path | None:
    """The console's server script (``console/server.py`` of the installed package: ``console/app.py``
    behind the Host check), or None if absent."""
    spec = importlib.util.find_spec("console.server")
    return Path(spec.origin) if spec is not None and spec.origin else None


def streamlit_command(app: Path, port: int) -> list[str]:
    """The ``streamlit run`` command line for ``app`` on ``port`` (flags from docs/tooling.md)."""
    return [
        sys.executable,
        "-m",
        "console.launch",  # `streamlit run`, ending on Ctrl+C with 130 rather than "Aborted!", 1
        "run",
        str(app),
        "--server.headless",
        "true",
        "--server.address",
        CONSOLE_HOST,
        "--server.port",
        str(port),
        "--browser.gatherUsageStats",
        "false",
        "--browser.serverAddress",
        CONSOLE_HOST,
        "--server.fileWatcherType",
        "none",
        "--server.runOnSave",
        "false",
        "--client.toolbarMode",
        "minimal",
    ]


def secrets_files() -> list[Path]:
    """The secrets files Streamlit reads for the console, where they exist: the user's, then the folder's."""
    candidates = (Path.home() / ".streamlit" / "secrets.toml", Path(".streamlit") / "secrets.toml")
    return [path for path in candidates if path.is_file()]


def toml_problem(path: Path) -> str | None:
    """Why ``path`` is not a TOML document (its values are not shown: they are secrets), or None."""
    import tomllib

    try:
        tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return f"cannot be read ({exc.__class__.__name__})"
    except tomllib.TOMLDecodeError as exc:
        where = str(exc).rsplit("(", 1)[-1].rstrip(")") if "(at line" in str(exc) else "somewhere"
        return f"is not valid TOML ({where})"
    return None


@click.command()
@click.option("--port", type=click.IntRange(1, 65535), default=8501, show_default=True, help="TCP port.")
def console(port: int) -> None:
    """Open the editors' console (Streamlit) on http://127.0.0.1:PORT."""
    require("console", feature="`imagegen console`")
    app = console_app_path()
    if app is None:  # the package ships it: only a damaged installation lacks it
        fail("the console's files are missing from this installation (console/server.py): reinstall imagegen")
    for path in secrets_files():
        problem = toml_problem(path)
        if problem:  # Streamlit only logs "Failed to load secrets" and runs with every key in it missing
            fail(f"secrets file {path} {problem}: fix it (see .streamlit/secrets.example.toml)")
    from .errors import ConfigError
    from .settings import Settings

    try:  # a bad setting: one line and exit 2 here, as serve does, not a console whose every page says it
        Settings()
    except ConfigError as exc:
        fail(str(exc))
    listen_or_fail(CONSOLE_HOST, port).close()  # a busy port: one line here, not Streamlit's after a start line
    click.echo(f"imagegen: console on http://{CONSOLE_HOST}:{port} (Ctrl+C stops it)", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    # Replace this process: Ctrl+C and a service manager's SIGTERM then reach Streamlit directly.
    os.execv(sys.executable, streamlit_command(app, port))
