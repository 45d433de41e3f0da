"""``imagegen drill``: the scripted reliability drill of :mod:`imagegen_core.drill`, printed as a table.

Registered on the ``imagegen`` group by ``cli.py``. The drill takes the names and order of the providers in
the config in force, races fake stand-ins for them in a scratch folder with faults injected through the
config's ``chaos`` section, and exits 1 when any fault's row fails (for CI and cron).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import click

from .cli_common import open_imagegen

#: Exit status when any row of the drill fails.
EXIT_DRILL_FAILED = 1


def _configured_names() -> list[str]:
    """Enabled entries of the config in force, by priority: the providers the drill stands in for."""
    with open_imagegen(no_log_shows="the drill stands in for the built-in config's providers") as gen:
        config = gen.reload_config()
    entries = sorted(config.providers.items(), key=lambda kv: (kv[1].priority, kv[0]))
    return [name for name, pc in entries if pc.enabled]


@click.command()
@click.option("--requests", type=click.IntRange(1, 200), default=6, show_default=True, help="Requests per fault.")
@click.option(
    "--deadline-ms", type=click.IntRange(300, 60_000), default=1000, show_default=True, help="Deadline per request."
)
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the injected faults.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON on stdout.")
def drill(requests: int, deadline_ms: int, seed: int, as_json: bool) -> None:
    """Inject faults into fake stand-ins of the configured providers; print the verdicts."""
    from .drill import format_table, run_drill

    names = _configured_names()
    with tempfile.TemporaryDirectory(prefix="imagegen-drill-") as scratch:
        rows = asyncio.run(run_drill(Path(scratch), names, requests=requests, deadline_ms=deadline_ms, seed=seed))
    if as_json:
        from pydantic.alias_generators import to_camel

        # camelCase, like every other JSON imagegen prints (generate --json, alerts --json, the HTTP API).
        rows_json = [{to_camel(k): v for k, v in (asdict(row) | {"ok": row.ok}).items()} for row in rows]
        click.echo(json.dumps(rows_json, indent=2))
    else:
        click.echo(format_table(rows, deadline_ms=deadline_ms))
    failed = [row.fault for row in rows if not row.ok]
    if failed:
        click.echo(f"imagegen: drill failed: {', '.join(failed)}", err=True)
        raise SystemExit(EXIT_DRILL_FAILED)
