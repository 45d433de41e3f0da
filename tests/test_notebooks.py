"""The analysts' notebooks run top to bottom in a real Jupyter kernel (nbclient, the venv's ``python3``
kernel), each in under 60 s, with ``IMAGEGEN_HOME`` pointed at an empty temporary folder (so they build
their synthetic week), and their key outputs are checked. Committed notebooks carry no outputs."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from imagegen_core.config import parse_config

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CELL_TIMEOUT_S = 60
NOTEBOOK_BUDGET_S = 60


def execute(name: str, workdir: Path) -> Any:
    """Run a notebook in ``workdir`` (its cwd); any cell error raises CellExecutionError."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        notebook, kernel_name="python3", timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(workdir)}}
    )
    started = time.perf_counter()
    client.execute()  # the kernel inherits this process's environment, IMAGEGEN_HOME included
    elapsed = time.perf_counter() - started
    assert elapsed < NOTEBOOK_BUDGET_S, f"{name} took {elapsed:.1f} s"
    return notebook


def tagged(notebook: Any, tag: str) -> Any:
    (cell,) = [c for c in notebook.cells if tag in c.metadata.get("tags", [])]
    return cell


def stdout(cell: Any) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def altair_outputs(notebook: Any) -> list[str]:
    """Rendered Altair charts: SVG images drawn in the kernel (``draw_charts_offline``). A chart left to
    the browser (``text/html`` calling vegaEmbed, or a vega-lite mime bundle) fails here: offline it draws
    nothing."""
    found = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            html = data.get("text/html", "")
            assert "vegaEmbed" not in html and not any(key.startswith("application/vnd.vega") for key in data), (
                "a chart drawn by JavaScript in the browser"
            )
            if "image/svg+xml" in data:
                found.append(data["image/svg+xml"])
    return found


#: What a browser would fetch from the network to show an output: a script, a stylesheet, an import.
REMOTE_SOURCE = re.compile(
    r"<script[^>]*\bsrc=[\"']?(?:https?:)?//|<link[^>]*\bhref=[\"']?(?:https?:)?//|@import\s+(?:url\()?[\"']?(?:https?:)?//"
    r"|\b(?:import|require)\s*\(?\s*[\"'](?:https?:)?//",
    re.IGNORECASE,
)


def assert_draws_offline(notebook: Any, *, charts: int) -> None:
    """QA run: with Altair 6 every chart was ``text/html`` loading vega from cdn.jsdelivr.net, so offline no
    chart drew. Every output must be self-contained, and each chart a drawing with marks in it."""
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            for mime, value in output.get("data", {}).items():
                text = value if isinstance(value, str) else json.dumps(value)
                assert not REMOTE_SOURCE.search(text), f"{mime} output loads from the network: {text[:300]}"
                assert "cdn.jsdelivr.net" not in text
    drawn = altair_outputs(notebook)
    assert len(drawn) >= charts
    for svg in drawn:
        assert svg.lstrip().startswith("<svg") and re.search(
            r'class="mark-(?:rect|line|symbol|text)[^"]*role-mark', svg
        )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def recommendation_keeps_success(notebook: Any) -> bool:
    """The notebook's own before/after line: the recommended config loses at most 0.2 points of success."""
    code = [c for c in notebook.cells if c.cell_type == "code"]
    line = next(line for c in code for line in stdout(c).splitlines() if line.startswith("success rate: "))
    match = re.fullmatch(r"success rate: ([\d.]+) today, ([\d.]+) recommended \(seed 1 of 4\)", line)
    assert match, line
    return float(match[2]) >= float(match[1]) - 0.002


def test_tuning_notebook_on_a_simulated_week_shows_its_recommendation_and_writes_none(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA (D2): with no real log the notebook tuned the simulated week's config and wrote it to
    recommended.json, the very file the README says to apply. It shows the (valid) document, writes none,
    removes one left by an earlier run, and prints no command that would apply it."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # the kernel's temporary folder
    (workdir / "recommended.json").write_text("{}")  # from an earlier run
    notebook = execute("01_tuning_timeouts.ipynb", workdir)
    assert list(scratch.glob("imagegen-notebook-*")) == []  # its synthetic week went with the kernel
    assert "synthetic week" in stdout(notebook.cells[1])  # IMAGEGEN_HOME is empty here
    note, document = stdout(tagged(notebook, "recommended-config")).split("\n", 1)
    assert note == "no recommended.json: this comes from a simulated week, not from your providers. It would be:"
    printed = json.loads(document)
    assert parse_config(printed).to_document() == printed  # the validator behind `imagegen config set`
    assert not (workdir / "recommended.json").exists() and list(workdir.glob("*.json")) == []
    everything = "".join(stdout(c) for c in notebook.cells if c.cell_type == "code")
    assert "imagegen config set" not in everything
    assert stdout(notebook.cells[-1]).startswith("Nothing to apply: the recommendation comes from a simulated week")
    assert_draws_offline(notebook, charts=3)  # latency CDF, timeout sweep, hedge what-if
    # QA (D9): the sweep tried a fixed 1-20 s list; now the primary's own latencies, its timeout, the race's length
    from imagegen_core.analysis import newsroom_config

    config = newsroom_config()
    primary = min((pc.priority, name) for name, pc in config.providers.items() if pc.enabled)[1]
    printed = "".join(stdout(c) for c in notebook.cells if c.cell_type == "code")
    swept = re.search(
        rf"^{primary}: timeouts tried \(ms\): ([\d, ]+) \(the race lasts at most (\d+) ms\)$", printed, re.M
    )
    assert swept, printed
    tried = [int(ms) for ms in swept[1].split(", ")]
    assert tried == sorted(set(tried)) and tried[-1] == int(swept[2]) and config.providers[primary].timeout in tried
    # QA: the sweep's cost axis read "$0.0032" twice, and the hedge what-if wrote its names over each other
    _, sweep, hedge = altair_outputs(notebook)
    for axis_labels in (re.findall(r">(\$[\d.]+)</text>", sweep), re.findall(r">([\d.]+%)</text>", sweep)):
        assert len(axis_labels) == len(set(axis_labels)), axis_labels
    assert "mark-text role-mark" not in hedge  # no names beside the points: the legend names them
    assert re.search(r">(fixed \d+ ms / )*current</text>", hedge)  # with the variants of the same result
    assert recommendation_keeps_success(notebook)


def test_the_recommendation_from_a_real_log_changes_timings_and_nothing_else(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: providers without attempts in the log sat out the replay, and the written recommendation
    switched them off, which took a keyed provider out of service once applied."""
    from imagegen_core.analysis import newsroom_config, newsroom_profiles, write_simulated_log
    from imagegen_core.log import LogDB

    home = tmp_path / "home"
    with LogDB(home / "imagegen.db") as log:
        write_simulated_log(log, newsroom_config(), newsroom_profiles(), requests=400, seed=5)
        stored = parse_config(log.latest_config()[1])  # type: ignore[index]
        # Then an operator turned OpenAI on: no attempt of it in the log yet.
        in_force = parse_config({"providers": {"openai": {"enabled": True}}}, base=stored.to_document())
        log.save_config(in_force.to_document(), source="test")
    monkeypatch.setenv("IMAGEGEN_HOME", str(home))
    notebook = execute("01_tuning_timeouts.ipynb", workdir)
    assert stdout(notebook.cells[1]).startswith("Analysing the real log")
    recommended = parse_config(json.loads((workdir / "recommended.json").read_text()))
    assert {n: p.enabled for n, p in recommended.providers.items()} == {
        n: p.enabled for n, p in in_force.providers.items()
    }
    assert recommended.providers["openai"].timeout == in_force.providers["openai"].timeout
    assert recommended.styles == in_force.styles and recommended.breaker == in_force.breaker
    printed = json.loads(stdout(tagged(notebook, "recommended-config")))
    assert json.loads((workdir / "recommended.json").read_text()) == printed == recommended.to_document()
    last = stdout(notebook.cells[-1])
    assert last.startswith("imagegen config set") and "recommended.json" in last and "simulated" not in last
    assert recommendation_keeps_success(notebook)


def test_the_tuning_notebook_leaves_out_rows_dated_in_the_future(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA: rows a machine with its clock ahead dated two days from now were counted in the notebook's table of
    the last 7 days and in its latency models, though not in the attempts that made the log worth reading."""
    from imagegen_core.analysis import newsroom_config, newsroom_profiles, outcome_rates, write_simulated_log
    from imagegen_core.log import LogDB

    home, now = tmp_path / "home", time.time()
    with LogDB(home / "imagegen.db") as log:
        config, profiles = newsroom_config(), newsroom_profiles()
        write_simulated_log(log, config, profiles, requests=400, seed=5, start=now - 6 * 86400, end=now - 60)
        write_simulated_log(log, config, profiles, requests=100, seed=6, start=now + 86400, end=now + 2 * 86400)
        calls = outcome_rates(log, until=now).set_index("provider")["calls"].to_dict()
    monkeypatch.setenv("IMAGEGEN_HOME", str(home))
    notebook = execute("01_tuning_timeouts.ipynb", workdir)
    assert stdout(notebook.cells[1]).startswith("Analysing the real log")
    (summary,) = [o.data["text/plain"] for o in notebook.cells[3].outputs if o.output_type == "execute_result"]
    shown = {line.split()[0]: int(line.split()[1].replace(",", "")) for line in summary.splitlines()[2:]}
    assert shown == calls


def test_the_tuning_notebook_on_a_log_of_failures_only_recommends_nothing_and_says_why(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New-user run: on a real log where every attempt failed, the recommendation cell raised TypeError
    (``None * 1.10``: no replayed race brought an image, so there is no cost per image). QA run: it then
    recommended a config all the same (success 0.0000 today and recommended), wrote recommended.json and
    printed the command that applies it. Nothing is recommended, in one line saying why; a stale
    recommended.json is removed; the empty latency chart says why it is empty."""
    from imagegen_core.analysis import ProfileModel, newsroom_config, write_simulated_log
    from imagegen_core.analysis.latency import Fixed
    from imagegen_core.log import LogDB

    home = tmp_path / "home"
    failing = {name: ProfileModel(Fixed(5.0), failure_rate=1.0) for name in ("replicate", "fal", "unsplash")}
    with LogDB(home / "imagegen.db") as log:
        write_simulated_log(log, newsroom_config(), failing, requests=200, seed=5)
    monkeypatch.setenv("IMAGEGEN_HOME", str(home))
    (workdir / "recommended.json").write_text("{}")  # from an earlier run
    notebook = execute("01_tuning_timeouts.ipynb", workdir)
    assert stdout(notebook.cells[1]).startswith("Analysing the real log")
    printed = "".join(stdout(c) for c in notebook.cells if c.cell_type == "code")
    assert "no replayed race produced an image under the current config" in printed
    assert "no recommendation: no replayed request succeeds under it" in printed
    # QA (D10): the rejected candidate's patch is shown as such, not as a proposal
    assert "rejected candidate (not a proposal): {" in printed and "worth applying" not in printed
    assert re.search(r"success rate: [\d.]+ today, [\d.]+ rejected candidate \(seed 1 of 1\)", printed)
    assert not (workdir / "recommended.json").exists()
    assert "imagegen config set" not in printed
    assert stdout(notebook.cells[-1]).startswith("Nothing to apply: keep the current config, because no replayed")
    assert "no attempt succeeded in this range: no latency to draw" in altair_outputs(notebook)[0]
    tables = [
        o["data"]["text/html"] for c in notebook.cells for o in c.get("outputs", []) if "text/html" in o.get("data", {})
    ]
    assert tables and not [t for t in tables if "NaN" in t or "<td>None</td>" in t]  # "—", as in the console


def test_provider_report_has_one_summary_row_per_provider_and_charts(workdir: Path) -> None:
    notebook = execute("02_provider_report.ipynb", workdir)
    (html,) = [o["data"]["text/html"] for o in tagged(notebook, "summary-table").outputs if "data" in o]
    body = html.split("<tbody>", 1)[1]
    assert re.findall(r"<tr>\s*<th>([^<]+)</th>", body) == ["fal", "replicate", "unsplash"]
    for column in ("calls", "success_rate", "p50_ms", "p95_ms", "failure_classes", "win_rate", "cost_per_win"):
        assert f"<th>{column}</th>" in html
    assert_draws_offline(notebook, charts=4)
    window = stdout(notebook.cells[1]).splitlines()[-1]  # QA run: it printed nanoseconds
    assert re.fullmatch(r"Window: \d{4}-\d\d-\d\d \d\d:\d\d UTC to \d{4}-\d\d-\d\d \d\d:\d\d UTC", window), window
    # QA run: the failure-class bars beside the success chart had no colour, under one legend for both
    (outcomes,) = [o["data"]["image/svg+xml"] for o in notebook.cells[5].outputs if "data" in o]
    assert "calls that, class" not in outcomes and ">calls that</text>" in outcomes and ">class</text>" in outcomes
    assert ">transient</text>" in outcomes


def test_the_provider_report_on_a_log_of_failures_only_says_why_charts_are_empty(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA run: the latency and win-rate/cost charts were bare axes without a word, and the win-rate chart had
    no provider (none had won)."""
    from imagegen_core.analysis import ProfileModel, newsroom_config, write_simulated_log
    from imagegen_core.analysis.latency import Fixed
    from imagegen_core.log import LogDB

    home = tmp_path / "home"
    failing = {name: ProfileModel(Fixed(5.0), failure_rate=1.0) for name in ("replicate", "fal", "unsplash")}
    with LogDB(home / "imagegen.db") as log:
        write_simulated_log(log, newsroom_config(), failing, requests=200, seed=5)
    monkeypatch.setenv("IMAGEGEN_HOME", str(home))
    notebook = execute("02_provider_report.ipynb", workdir)
    assert stdout(notebook.cells[1]).startswith("Weekly report from the real log")
    (latency,) = [o["data"]["image/svg+xml"] for o in notebook.cells[6].outputs if "data" in o]
    (wins_and_cost,) = [o["data"]["image/svg+xml"] for o in notebook.cells[7].outputs if "data" in o]
    assert ">no attempt succeeded in this range: no latency to draw</text>" in latency
    assert wins_and_cost.count(">no image was delivered in this range</text>") == 2
    assert all(f">{name}</text>" in wins_and_cost for name in ("fal", "replicate", "unsplash"))  # 0-win bars
    # QA: no success, so no latency and no cost per win: the table showed NaN where the console shows "—"
    (html,) = [o["data"]["text/html"] for o in tagged(notebook, "summary-table").outputs if "data" in o]
    assert "NaN" not in html and html.count("<td>—</td>") == 3 * 3  # p50_ms, p95_ms, cost_per_win


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_notebooks_carry_no_outputs(path: Path) -> None:
    """Reviewable diffs: outputs and execution counts are stripped before committing
    (``.venv/bin/python notebooks/strip.py``)."""
    notebook = json.loads(path.read_text())
    dirty = [
        index
        for index, cell in enumerate(notebook["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert dirty == [], f"{path.name}: cells {dirty} have outputs; run notebooks/strip.py"


def test_there_are_notebooks_to_check() -> None:
    assert {p.name for p in NOTEBOOKS.glob("*.ipynb")} >= {"01_tuning_timeouts.ipynb", "02_provider_report.ipynb"}


def test_the_tuning_notebook_says_there_is_nothing_to_change_when_todays_config_is_its_choice(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA: on a log whose config was already what the tuning chooses, the notebook printed "no
    recommendation" and today's own settings as a "rejected candidate". Applied once, its recommendation is
    the config in force: the second run has nothing to change, and says so."""
    from imagegen_core.analysis import newsroom_config, newsroom_profiles, write_simulated_log
    from imagegen_core.log import LogDB

    home = tmp_path / "home"
    with LogDB(home / "imagegen.db") as log:
        write_simulated_log(log, newsroom_config(), newsroom_profiles(), requests=400, seed=5)
    monkeypatch.setenv("IMAGEGEN_HOME", str(home))
    execute("01_tuning_timeouts.ipynb", workdir)
    with LogDB(home / "imagegen.db") as log:  # `imagegen config set recommended.json`
        log.save_config(json.loads((workdir / "recommended.json").read_text()), source="test")
    notebook = execute("01_tuning_timeouts.ipynb", workdir)
    printed = "".join(stdout(c) for c in notebook.cells if c.cell_type == "code")
    assert "nothing to change: today's timeouts and hedge delay are what this tuning would choose" in printed
    assert "rejected candidate" not in printed and "worth applying" not in printed
    assert not (workdir / "recommended.json").exists()
    assert stdout(notebook.cells[-1]).startswith("Nothing to apply: the current config is already")


def test_the_report_with_report_end_none_reports_on_the_week_up_to_now(workdir: Path) -> None:
    """QA: ``REPORT_END = None`` (a window open at its end, as the analysis functions take it) ended in a
    TypeError traceback, ``None - 7 days``."""
    notebook = nbformat.read(NOTEBOOKS / "02_provider_report.ipynb", as_version=4)
    (cell,) = [c for c in notebook.cells if "REPORT_END = time.time()" in c.source]
    cell.source = cell.source.replace("REPORT_END = time.time()", "REPORT_END = None")
    client = NotebookClient(
        notebook, kernel_name="python3", timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()
    window = stdout(cell).splitlines()[-1]
    assert window.startswith("Window: ")
    end = datetime.strptime(window.split(" to ")[1], "%Y-%m-%d %H:%M UTC").replace(tzinfo=UTC).timestamp()
    assert abs(end - time.time()) < 300  # the week up to now


def test_an_imagegen_error_in_a_notebook_cell_is_its_one_line_not_a_traceback(workdir: Path) -> None:
    """QA: a damaged log or a `REPORT_END` that is no date showed a traceback through imagegen's internals, its
    message on the last line. An ImageGenError is its own line in the cell's output; other errors keep theirs."""
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell('from imagegen_core.analysis import to_epoch\nto_epoch("not a date")'),
        nbformat.v4.new_code_cell("1 / 0"),
    ]
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        allow_errors=True,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()
    (ours,) = notebook.cells[0].outputs
    assert ours["output_type"] == "error" and ours["ename"] == "AnalysisError"
    (line,) = ours["traceback"]
    assert line.startswith("AnalysisError: ") and "not a date" in line
    (theirs,) = notebook.cells[1].outputs
    assert len(theirs["traceback"]) > 1  # a Python error of another kind: its traceback, as Jupyter shows one
