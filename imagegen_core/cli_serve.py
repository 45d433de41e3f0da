"""``imagegen serve`` (the HTTP API under uvicorn) and ``imagegen alerts`` (the alert rules, for cron).

Registered on the ``imagegen`` group by ``cli.py``. FastAPI and uvicorn are imported only when ``serve`` runs,
so every other command starts as fast as before; ``cli`` itself is imported inside the commands, because
``cli.py`` imports this module while it is still loading (an import at the top would be a cycle, which fails
under ``python -m imagegen_core.cli``).
"""

from __future__ import annotations

import json
import socket

import click

from .cli_common import fail, open_imagegen

#: ``imagegen alerts`` exit status when at least one rule fires.
EXIT_ALERT = 1


def _listen(host: str, port: int) -> socket.socket:
    """Bind before uvicorn starts, so a busy port is a one-line error (not a logged traceback) and port 0
    can be reported as the port actually chosen."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()

        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    sock.set_inheritable(True)
    return sock


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0: all).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="TCP port (0: any).")
def serve(host: str, port: int) -> None:
    """Run the HTTP API (the Worker's endpoints, admin, /files); docs at /docs."""
    import uvicorn

    from .api import create_app
    from .api.jsonlog import configure_logging

    with open_imagegen(source="api") as gen:
        settings = gen.settings
        # A server logs its requests: INFO unless LOG_LEVEL says otherwise (the CLI's default is WARNING).
        level = settings.log_level if "log_level" in settings.model_fields_set else "INFO"
        configure_logging(level, settings.secret_values())
        sock = _listen(host, port)
        bound_host, bound_port = sock.getsockname()[:2]
        click.echo(f"imagegen: serving on http://{bound_host}:{bound_port} (docs at /docs)", err=True)
        app = create_app(gen, close_gen=True)  # the lifespan closes it on uvicorn's loop, with its HTTP client
        config = uvicorn.Config(app, log_config=None, log_level=level.lower(), access_log=False, server_header=False)
        uvicorn.Server(config).run(sockets=[sock])


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the evaluation as JSON on stdout.")
def alerts(as_json: bool) -> None:
    """Evaluate the alert rules over the log; exit 1 when one fires (for cron)."""
    from .alerts import alerts_for

    with open_imagegen() as gen:
        report = alerts_for(gen)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for rule in report["rules"]:
            click.echo(f"{'FIRING' if rule['firing'] else 'ok':<8}{rule['rule']:<21}{rule['message']}")
    if report["firing"]:
        raise SystemExit(EXIT_ALERT)
