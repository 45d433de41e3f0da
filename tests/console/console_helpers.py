"""Helpers shared by the console tests: open a page with AppTest, seed through the core, read chart data."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.element_tree import Block

import console
from imagegen_core import ImageGen, Settings

CONSOLE = Path(console.__file__).parent
APP = CONSOLE / "app.py"
PAGES = {name: CONSOLE / "views" / f"{name}.py" for name in ("generate", "compare", "history", "stats", "admin")}
OFF = {"enabled": False}


def open_page(name: str) -> AppTest:
    """A page run on its own, as AppTest sees it (``app`` for the whole app with its navigation)."""
    return AppTest.from_file(str(APP if name == "app" else PAGES[name]), default_timeout=30)


def open_job(name: str, token: str) -> AppTest:
    """Page ``name`` run in a new session whose URL names the job ``token`` (a reload, another tab, a link)."""
    page = open_page(name)
    page.query_params["job"] = token
    return page.run()


def started(name: str, prompt: str) -> AppTest:
    """Page ``name`` (generate or compare) run with ``prompt`` sent; its job has ended."""
    page = open_page(name).run()
    page.text_area(key=f"{name}_prompt").input(prompt)
    return page.button(key=f"{name}_go").click().run()


@contextmanager
def core() -> Iterator[ImageGen]:
    """An ImageGen over the test's IMAGEGEN_HOME, for seeding and for checking what the console did."""
    with ImageGen.from_settings(Settings()) as gen:
        yield gen


def fake_config(**fakes: dict[str, Any]) -> dict[str, Any]:
    """A config where only the given fake providers race (real ones off), in the given priority order."""
    providers: dict[str, Any] = {"replicate": OFF, "fal": OFF, "unsplash": OFF, "openai": OFF}
    for priority, (name, spec) in enumerate(fakes.items(), start=1):
        providers[name] = {"type": "fake", "priority": priority, "retries": 0, "costPerImage": 0.002, **spec}
    return {"providers": providers, "defaults": {"timeout": 5000}}


def chart_data(element: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A chart element's vega-lite spec and its data rows (Streamlit ships the data as Arrow datasets)."""
    import pyarrow as pa

    spec = json.loads(element.proto.spec)
    rows: list[dict[str, Any]] = []
    for dataset in element.proto.datasets:
        rows += pa.ipc.open_stream(dataset.data.data).read_all().to_pylist()
    return spec, rows


def charts_by_title(at: AppTest) -> dict[str, list[dict[str, Any]]]:
    """Every Altair chart on the page: its title → its data rows. The stats page shows a chart's title as
    text above it, in one container with the chart (``stats_panel_<name>``); a chart drawn with its own
    title is refused, since Vega cuts a title longer than the chart's width."""
    found = {}
    for node in at.main:
        if not isinstance(node, Block) or not (node.key or "").startswith("stats_panel_"):
            continue
        (heading,) = [child for child in node if child.type == "markdown"]
        (element,) = [child for child in node if child.type == "vega_lite_chart"]
        spec, rows = chart_data(element)
        assert "title" not in spec, f"{node.key}: the chart draws its own title {spec['title']!r}"
        found[rendered(heading.value).removeprefix("**").removesuffix("**")] = rows
    assert len(found) == len(at.get("vega_lite_chart")), "a chart outside a titled panel"
    return found


def rendered(markdown: str) -> str:
    """What the browser shows for Markdown that escapes its special characters (console text from outside
    imagegen is escaped, see ``markdown_literal``)."""
    return re.sub(r"\\(.)", r"\1", markdown)


def texts(at: AppTest) -> list[str]:
    """Every markdown and caption text on the page (badges, facts, notices)."""
    return [m.value for m in at.markdown] + [c.value for c in at.caption]


def result_facts(at: AppTest) -> dict[str, str]:
    """The facts beside a Generate result (provider, elapsed time, cost): label → value as the browser shows it."""
    (facts,) = [node for node in at.main if isinstance(node, Block) and node.key == "result_facts"]
    found = {}
    for node in facts:  # the block itself, then everything inside it
        if node.type == "markdown":
            fact = re.fullmatch(r":gray\[(.+)\]  \n\*\*(.+)\*\*", node.value, re.S)
            assert fact, node.value
            found[fact[1]] = rendered(fact[2])
    return found
