"""The README is the front door: what it shows must be true (commands, example, defaults, CLI help)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from imagegen_core.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def fenced_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_quick_start_has_exactly_two_commands_and_ci_runs_the_test_one() -> None:
    quick = README.split("## Quick start", 1)[1].split("To use real providers", 1)[0]
    setup_and_run, tests = (block.strip() for block in fenced_blocks(quick, "bash"))
    assert setup_and_run == "bash scripts/setup && .venv/bin/imagegen console"
    assert "http://127.0.0.1:8501" in quick
    assert tests == "bash scripts/setup && .venv/bin/python -m pytest"
    assert tests in (ROOT / ".ci" / "run").read_text()


def test_setup_leaves_bytecode_so_commands_start_without_compiling() -> None:
    """`scripts/setup` compiles the installed packages and the project: where PYTHONDONTWRITEBYTECODE is
    set, nothing else would, and every `imagegen` command would spend most of a second compiling."""
    import importlib.util

    import pydantic

    import imagegen_core.service

    for module in (pydantic, imagegen_core.service):
        assert module.__file__ is not None
        assert Path(importlib.util.cache_from_source(module.__file__)).is_file(), module.__name__


def test_the_first_command_starts_the_console_on_loopback() -> None:
    """`imagegen console` exists, and runs Streamlit headless on 127.0.0.1:8501 without usage statistics
    (the browser test starts it for real)."""
    from imagegen_core.cli_console import console_app_path, streamlit_command

    command = Path(sys.executable).parent / "imagegen"
    proc = subprocess.run([str(command), "console", "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "--port" in proc.stdout and "[default: 8501" in proc.stdout
    app = console_app_path()
    assert app is not None and app == ROOT / "console" / "server.py"  # app.py behind the Host check
    flags = " ".join(streamlit_command(app, 8501)[4:])
    for flag in ("--server.headless true", "--server.address 127.0.0.1", "--server.port 8501"):
        assert flag in flags
    assert "--browser.gatherUsageStats false" in flags


def test_the_console_tour_shows_screenshots_that_exist() -> None:
    tour = README.split("## Console tour", 1)[1].split("\n## ", 1)[0]
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", tour)
    assert images and all((ROOT / image).is_file() for image in images)
    assert "scripts/screenshots" in tour and (ROOT / "scripts" / "screenshots").is_file()


def test_the_embedding_example_runs_as_shown(tmp_path: Path) -> None:
    section = README.split("## Embedding", 1)[1].split("## ", 1)[0]
    (code,) = fenced_blocks(section, "python")
    env = {**os.environ, "IMAGEGEN_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    success, provider, url = proc.stdout.split()
    assert (success, provider) == ("True", "offline") and url.startswith("file://")


def test_the_default_config_shown_is_the_real_default() -> None:
    block = README.split("<!-- config-defaults:start -->", 1)[1].split("<!-- config-defaults:end -->", 1)[0]
    (shown,) = fenced_blocks(block, "json")
    assert json.loads(shown) == parse_config().to_document()


def test_the_probe_leases_shown_are_the_default_configs() -> None:
    """The breaker paragraph's probe leases per provider: what the default config derives."""
    from imagegen_core.breaker import PROBE_LEASE_FACTOR, PROBE_LEASE_MIN_S, probe_leases

    text = " ".join(README.split())
    leases = probe_leases(parse_config())
    shown = ", ".join(f"{label} {leases[label.lower()]:g} s" for label in ("Replicate", "fal", "Unsplash", "OpenAI"))
    assert f"With the default config: {shown} (" in text, shown
    assert PROBE_LEASE_FACTOR == 3 and "for its lease at most: three times the provider's `timeout`" in text
    assert f"and at least {PROBE_LEASE_MIN_S:g} s." in text


def test_the_cli_help_shown_is_the_real_help() -> None:
    section = README.split("## Command line", 1)[1]
    shown = fenced_blocks(section, "text")[0].rstrip()
    command = Path(sys.executable).parent / "imagegen"  # the installed console script
    real = subprocess.run([str(command), "--help"], capture_output=True, text=True, timeout=30).stdout.rstrip()
    assert shown == real


def test_the_generate_answer_shown_has_the_answers_fields_and_their_types() -> None:
    """The HTTP section's example answer: the same keys as a real one, each value of the real field's type."""
    from imagegen_core.models import GenerateResult

    (shown,) = [block for block in fenced_blocks(README, "json") if '"requestId"' in block]
    example = json.loads(shown)
    parsed = GenerateResult.model_validate(example)  # every value valid for its field
    assert list(example) == list(parsed.to_wire())


def test_the_replay_shown_is_paced_as_the_tuning_notebook_paces_it() -> None:
    """QA: the README's ``replay(config, models_from_log(db))`` replayed the requests back to back, so its
    breakers skipped far more than the log's did and its predictions differed wildly from notebook 01's,
    which replays at the log's pace. Every replay the README shows passes that pace: the log's own gaps
    between requests (QA, D3: an even pace at the median gap missed the bursts that open breakers)."""
    shown = re.findall(r"`(replay\([^`]*\))`", README)
    notebook = (ROOT / "notebooks" / "01_tuning_timeouts.ipynb").read_text()
    assert shown and "gaps_ms=gaps_ms" in notebook and "gaps_ms = arrival_gaps_ms(db" in notebook
    assert all("gaps_ms=arrival_gaps_ms(db)" in call for call in shown), shown


def test_the_stats_pages_refresh_shown_is_the_pages_own() -> None:
    """QA: the README said the Provider stats page was "redrawn every few seconds"; it is every 10 s by default,
    and the page's Refresh picks another interval or none, which the README did not say."""
    import ast

    source = (ROOT / "console" / "views" / "stats.py").read_text()
    (refresh,) = (
        ast.literal_eval(node.value)
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign) and [ast.unparse(target) for target in node.targets] == ["REFRESH"]
    )
    chosen = re.search(r'selectbox\("Refresh", list\(REFRESH\), index=(\d+)', source)
    assert chosen is not None
    default = list(refresh)[int(chosen.group(1))]
    tour = README.split("## Console tour", 1)[1].split("\n## ", 1)[0]
    stats = " ".join(tour.split("**Provider stats**", 1)[1].split("\n- **", 1)[0].split())
    assert f"redrawn every {default} " in stats, stats
    assert all(label in stats for label in refresh), (list(refresh), stats)


def test_every_commands_options_are_in_the_readme() -> None:
    """QA: `--help` listed options the README never named (`generate --keyword`, `--article-id`, `--provider`;
    `storage stats --prefix`; `db check` / `db migrate --url`; `db copy --from`): every long option of every
    command and subcommand is named in the README."""
    import click

    from imagegen_core.cli import main

    def options(command: click.Command, path: str) -> list[tuple[str, str]]:
        found = [
            (path, flag)
            for param in command.params
            if isinstance(param, click.Option)
            for flag in param.opts
            if flag.startswith("--") and flag != "--help"
        ]
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                found += options(sub, f"{path} {name}")
        return found

    unnamed = [
        (path, flag)
        for path, flag in options(main, "imagegen")
        if not re.search(rf"{re.escape(flag)}(?![\w-])", README)
    ]
    assert not unnamed, unnamed


def test_every_environment_variable_read_is_in_the_readme() -> None:
    """QA: `IMAGEGEN_LOG_LEVEL` is read as `LOG_LEVEL` is, and the README named only the latter (a user reading
    an env file that sets it could not tell what it does): every variable a setting reads is named."""
    from pydantic import AliasChoices

    from imagegen_core.settings import Settings

    names: list[str] = []
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names += [choice for choice in alias.choices if isinstance(choice, str)]
        elif isinstance(alias, str):
            names.append(alias)
    assert "LOG_LEVEL" in names
    unnamed = [name for name in names if not re.search(rf"(?<![A-Z0-9_]){name}(?![A-Z0-9_])", README)]
    assert not unnamed, unnamed
