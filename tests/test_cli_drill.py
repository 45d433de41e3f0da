"""``imagegen drill``: fake stand-ins for the configured providers, one row per injected fault, exit 0 only when
every row holds; it never touches the real log DB or store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from imagegen_core import drill as drill_module
from imagegen_core.cli import main
from imagegen_core.drill import STEPS, Step

IMAGEGEN = [sys.executable, "-m", "imagegen_core.cli"]


def test_the_drill_passes_prints_its_table_and_leaves_the_real_log_alone(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "IMAGEGEN_HOME": str(home)}
    proc = subprocess.run([*IMAGEGEN, "drill", "--requests", "3"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The drill's breakers open on purpose, in its scratch log: no "reset it" warning about them (they went to
    # stderr once breaker openings were logged). The one line: no log here yet, so the built-in config's names.
    assert proc.stderr == (
        f"note: no log at {home / 'imagegen.db'}: check IMAGEGEN_HOME (a log is created by the first image request);"
        " the drill stands in for the built-in config's providers\n"
    )
    lines = proc.stdout.splitlines()
    assert lines[0] == "deadline 1000 ms (+50 ms slack)"
    assert lines[1].startswith("fault") and "failure class logged" in lines[1] and lines[1].endswith("result")
    rows = lines[3:]
    assert len(rows) == len(STEPS) and all(row.endswith("  ok") for row in rows)
    assert all(" 3/3 " in row for row in rows)
    hang = next(row for row in rows if row.startswith("hang"))
    assert "timeout" in hang
    # QA: reading the config in force created the real home and an empty log there; now nothing at all (no drill
    # request, image or spool either)
    assert not home.exists()
    # With a log, the drill reads the config from it and says nothing, and logs nothing there.
    subprocess.run([*IMAGEGEN, "db", "migrate"], capture_output=True, env=env, timeout=60, check=True)
    again = subprocess.run(
        [*IMAGEGEN, "drill", "--requests", "1"], capture_output=True, text=True, env=env, timeout=120
    )
    assert (again.returncode, again.stderr) == (0, ""), again.stdout + again.stderr
    assert not (home / "images").exists() and not (home / "spool").exists()
    stats = subprocess.run([*IMAGEGEN, "stats"], capture_output=True, text=True, env=env, timeout=60).stdout
    assert stats.splitlines()[1] == "no requests in this window"  # the drill logged nothing here


def test_the_drill_uses_the_configured_provider_names_and_reports_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[str]] = []
    real = drill_module.drill_document

    def spy(names: list[str], step: Step, **kwargs: int) -> dict[str, object]:
        seen.append(list(names))
        return real(names, step, **kwargs)

    monkeypatch.setattr(drill_module, "drill_document", spy)
    monkeypatch.setattr(drill_module, "STEPS", STEPS[:3])
    result = CliRunner().invoke(main, ["drill", "--requests", "2", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)  # the note on stderr (no log in this home yet) is not part of the JSON
    assert [r["fault"] for r in rows] == [s.fault for s in STEPS[:3]] and all(r["ok"] for r in rows)
    assert rows[2]["classes"] == ["transient"] and rows[2]["lostRows"] == 0 and rows[2]["lostImages"] == 0
    assert all("_" not in key for row in rows for key in row)  # camelCase like every JSON imagegen prints
    assert seen[0] == ["replicate", "fal", "unsplash"]  # the default config's enabled entries, by priority


def test_a_failing_row_makes_the_drill_exit_1_and_say_which(monkeypatch: pytest.MonkeyPatch) -> None:
    impossible = Step("auth that never comes", expect_class="auth")  # no fault injected: auth is never logged
    monkeypatch.setattr(drill_module, "STEPS", (STEPS[0], impossible))
    result = CliRunner().invoke(main, ["drill", "--requests", "2"])
    assert result.exit_code == 1
    assert "FAIL: auth not logged" in result.output
    assert "imagegen: drill failed: auth that never comes" in result.output


async def test_an_image_kept_at_its_answer_and_uploaded_since_is_not_counted_lost(tmp_path: Path) -> None:
    """QA: `imagegen drill --requests 200 --deadline-ms 300` failed with "lost images" while the server log said
    each was "kept in the spool after its answer went out": the background retry had uploaded them since, under
    keys no answer gave, and the drill looked for them by the answer's key. It reads the store's metadata now."""
    from imagegen_core import ImageGen, Settings
    from imagegen_core.models import AttemptOutcome, AttemptSummary, GenerateResult
    from imagegen_core.storage import LocalStore

    store = LocalStore(tmp_path / "images")
    made = AttemptSummary(provider="p", attempt=1, outcome=AttemptOutcome.SUCCESS, elapsed_ms=5)

    def answered_default(request_id: str) -> GenerateResult:
        return GenerateResult(
            url="file:///default.webp", provider="default", elapsed_ms=300, success=False, request_id=request_id,
            width=64, height=64, attempts=[made], store_failed=True, image_keeping=True,
        )  # fmt: skip

    await store.put("ai/2026/11/later.webp", b"RIFF", content_type="image/webp", cache_control="x",
                    metadata={"request-id": "uploaded-since"})  # fmt: skip
    async with ImageGen.from_settings(Settings(_env_file=None, IMAGEGEN_HOME=str(tmp_path)), store=store) as gen:
        results = [answered_default("uploaded-since"), answered_default("nowhere")]
        assert await drill_module._lost_images(gen, store, results) == 1  # only the image that is nowhere
