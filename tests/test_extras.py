"""A plain install (no extras): the library and the core commands work, and every feature of an extra that is
missing says in one line which extra to install (exit 2 for a command, a MissingExtraError for the library),
instead of a ModuleNotFoundError traceback that named neither (QA: ``imagegen generate`` itself crashed on
``fastapi``, and exited 1, "answered with the default image")."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from imagegen_core import errors
from imagegen_core.log import LogDB

ROOT = Path(__file__).resolve().parents[1]
PG_URL = "postgresql://app:pw@127.0.0.1:1/imagegen"

#: The modules of every extra that imagegen imports, made unimportable as in an install without extras: an entry of
#: None in sys.modules makes ``import`` raise ModuleNotFoundError and ``importlib.util.find_spec`` answer None.
BLOCKED = [
    *("fastapi", "fastapi_offline", "uvicorn", "uvloop", "limits", "pythonjsonlogger"),  # api
    *("psycopg", "psycopg_pool"),  # postgres
    *("streamlit", "pandas", "altair"),  # console, notebooks
]
_WITHOUT_EXTRAS = f"import sys\nfor name in {BLOCKED!r}:\n    sys.modules[name] = None\n"
_CLI = _WITHOUT_EXTRAS + "from imagegen_core.cli import main\nmain(sys.argv[1:], prog_name='imagegen')\n"


def without_extras(
    code: str, *args: str, home: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where none of the extras' modules can be imported."""
    full_env = {**os.environ, "IMAGEGEN_HOME": str(home), **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=full_env, cwd=home.parent, timeout=90
    )


@pytest.mark.parametrize(
    "command",
    [
        ["generate", "a lighthouse", "--width", "100", "--height", "100"],
        ["stats"],
        ["stats", "--since", "2026-11-01T08:00Z"],  # read as the analysis layer reads a time, without pandas
        ["providers"],
        ["breakers"],
        ["config", "show"],
        ["storage", "stats"],
        ["alerts"],
    ],
)
def test_the_core_commands_need_no_extra(tmp_path: Path, command: list[str]) -> None:
    home = tmp_path / "home"
    if command[0] in ("stats", "alerts"):  # they read a log, and refuse to make one where there is none
        home.mkdir()
        with LogDB(home / "imagegen.db") as db:
            db.query("SELECT 1")  # opened lazily: this makes it
    proc = without_extras(_CLI, *command, home=home)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "ModuleNotFoundError" not in proc.stderr
    if command[0] == "generate":
        assert proc.stdout.startswith("file://") and proc.stdout.strip().endswith(".webp")


@pytest.mark.parametrize(
    ("command", "env", "extra", "module"),
    [
        (["serve", "--port", "0"], {}, "api", "fastapi"),
        (["console"], {}, "console", "streamlit"),
        (["stats"], {"IMAGEGEN_DATABASE_URL": PG_URL}, "postgres", "psycopg"),
        (["generate", "x"], {"IMAGEGEN_DATABASE_URL": PG_URL}, "postgres", "psycopg"),
    ],
)
def test_a_command_that_needs_a_missing_extra_names_it_in_one_line_and_exits_2(
    tmp_path: Path, command: list[str], env: dict[str, str], extra: str, module: str
) -> None:
    proc = without_extras(_CLI, *command, home=tmp_path / "home", env=env)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("imagegen: ") and f"needs the '{extra}' extra ({module} is not installed): " in line
    assert re.search(rf"pip install .*\[{extra}\]", line), line
    assert "pw" not in line  # the database URL's password is not echoed


def test_the_api_package_imported_without_its_extra_names_it(tmp_path: Path) -> None:
    code = _WITHOUT_EXTRAS + (
        "try:\n    import imagegen_core.api\n"
        "except ImportError as exc:\n    print(type(exc).__name__, exc.extra, exc.name, '|', exc)\n"
    )
    proc = without_extras(code, home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("MissingExtraError api fastapi | imagegen_core.api needs the 'api' extra")


def test_the_analysis_loaders_and_charts_say_which_extra_installs_pandas_and_altair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imagegen_core import analysis

    db = LogDB(tmp_path / "log.db")
    try:
        frame = analysis.load_attempts(db)  # with pandas: the frame a chart takes
        monkeypatch.setitem(sys.modules, "altair", None)
        with pytest.raises(errors.MissingExtraError, match=r"needs the 'notebooks' extra \(altair is not installed\)"):
            analysis.latency_cdf_chart(frame)
        monkeypatch.setitem(sys.modules, "pandas", None)
        for loader in (analysis.load_requests, analysis.load_attempts, analysis.load_picks, analysis.outcome_rates):
            with pytest.raises(errors.MissingExtraError) as info:
                loader(db)
            assert isinstance(info.value, errors.ConfigError) and info.value.extra == "notebooks"
            assert str(info.value).startswith("imagegen_core.analysis needs the 'notebooks' extra (pandas is not")
        with pytest.raises(errors.MissingExtraError, match="pandas is not installed"):
            analysis.model_table(analysis.models_from_log(db))  # the models need no pandas; their table does
    finally:
        db.close()


def test_a_postgresql_log_without_its_extra_is_a_config_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(errors.MissingExtraError) as info:
        LogDB("postgresql://app:secret-pw@127.0.0.1:1/imagegen")
    assert (info.value.extra, info.value.module) == ("postgres", "psycopg")
    assert "[postgres]" in str(info.value) and "secret-pw" not in str(info.value)


@pytest.mark.parametrize(
    ("origin", "command"),
    [
        (None, "pip install 'imagegen[api]'"),
        ({"url": "file:///srv/imagegen", "dir_info": {}}, "pip install '/srv/imagegen[api]'"),
        ({"url": "file:///srv/imagegen", "dir_info": {"editable": True}}, "pip install -e '/srv/imagegen[api]'"),
        (
            {"url": "https://github.com/n/imagegen", "vcs_info": {"vcs": "git", "commit_id": "abc123"}},
            "pip install 'imagegen[api] @ git+https://github.com/n/imagegen@abc123'",
        ),
        (
            {"url": "https://example.com/imagegen-0.1.0.tar.gz", "archive_info": {}},
            "pip install 'imagegen[api] @ https://example.com/imagegen-0.1.0.tar.gz'",
        ),
    ],
)
def test_the_install_command_installs_from_where_imagegen_came_from(origin: object, command: str) -> None:
    """A clone installed with pip has no index to get ``imagegen[api]`` from; an index could hold another
    package of that name."""
    from imagegen_core.extras import install_command_from

    assert install_command_from(origin, "api") == command


def _installed_by(requirements: list[str]) -> set[str]:
    """The distributions these requirements install: their own, and those of the extras they ask for
    (``psycopg[pool]`` brings ``psycopg-pool``)."""
    names: set[str] = set()
    for text in requirements:
        requirement = Requirement(text)
        names.add(canonicalize_name(requirement.name))
        for extra in requirement.extras:
            for dependency in map(Requirement, metadata.requires(requirement.name) or []):
                if dependency.marker is not None and dependency.marker.evaluate({"extra": extra}):
                    names.add(canonicalize_name(dependency.name))
    return names


def test_each_optional_module_belongs_to_the_extra_that_names_it() -> None:
    """:data:`MODULES_OF` stays in step with pyproject.toml: the message must name an extra that installs it."""
    from imagegen_core.extras import MODULES_OF

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    distributions = metadata.packages_distributions()
    for extra, modules in MODULES_OF.items():
        installed = _installed_by(extras[extra])
        for module in modules:
            providers = {canonicalize_name(name) for name in distributions.get(module, [])}
            assert providers & installed, (extra, module, providers)
