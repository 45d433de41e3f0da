"""``imagegen serve`` (the HTTP API under uvicorn) and ``imagegen alerts`` (the alert rules, for cron).

Registered on the ``imagegen`` group by ``cli.py``. FastAPI and uvicorn are imported only when ``serve`` runs,
so every other command starts as fast as before; ``cli`` itself is imported inside the commands, because
``cli.py`` imports this module while it is still loading (an import at the top would be a cycle, which fails
under ``python -m imagegen_core.cli``).

``serve --workers N`` runs N uvicorn worker processes on the one pre-bound socket. The parent checks the
settings, the log database (migrating it once) and the production profile, then only supervises; each worker
builds its own app and ImageGen through :func:`worker_app`, and stops gracefully by itself when the parent
dies (``supervision.py``: a ``kill -9`` of the parent left its workers serving on the port). Breakers, config
versions and the log are shared through the log database (SQLite's WAL on one machine, PostgreSQL across
several).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from .cli_common import (
    EXIT_INTERRUPTED,
    fail,
    listen_or_fail,
    open_imagegen,
    racing_types,
    require_log,
    sigint_interrupts,
)
from .extras import require

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

    from .service import ImageGen
    from .settings import Settings

#: uvicorn's import path of the per-worker app factory.
WORKER_APP = "imagegen_core.cli_serve:worker_app"

#: ``imagegen alerts`` exit status when at least one rule fires.
EXIT_ALERT = 1


def _server_log_level(settings: Settings) -> str:
    # A server logs its requests: INFO unless LOG_LEVEL says otherwise (the CLI's default is WARNING).
    return settings.log_level if "log_level" in settings.model_fields_set else "INFO"


def worker_app() -> FastAPI:
    """The app of one ``serve --workers N`` worker process (a uvicorn factory): logging set up like the
    parent's, and an app whose lifespan builds this process's own ImageGen from the environment."""
    from .api import create_app
    from .api.jsonlog import configure_logging
    from .settings import Settings
    from .supervision import exit_with_supervisor

    settings = Settings()
    configure_logging(_server_log_level(settings), settings.secret_values())
    exit_with_supervisor()  # a supervisor killed outright must not leave this worker holding the port
    return create_app(settings=settings, freeze_gc=True)  # the worker process is ours


def server_app() -> FastAPI:
    """A uvicorn factory for the API without ``imagegen serve``: ``uvicorn --factory
    imagegen_core.cli_serve:server_app`` (``--workers N`` too). Each process first makes ``serve``'s checks
    (the settings, the log database and its migrations, the production profile), where a problem is one
    line on stderr and exit status 2, not a traceback; then builds its app as a ``serve --workers`` worker
    does."""
    from .errors import MissingExtraError

    try:
        require("api", feature="the HTTP API")
    except MissingExtraError as exc:  # raised under uvicorn, whose traceback would hide the line that matters
        fail(str(exc))
    from .api.http11 import quiet_uvicorn_h11

    server_log = ServerLog()
    with open_imagegen(source="api", log_setup=server_log, without_log=True) as gen:
        handler = server_log.handler
        refuse_production_problems(gen)
        warn(log_write_warning(gen), handler)
        warn(store_start_warning(gen), handler)
        warn_of_production_risks(gen.settings, handler)
    quiet_uvicorn_h11()  # uvicorn's command line chose plain h11 before calling us (see api/http11.py)
    return worker_app()


class ServerLog:
    """Sets up the server's JSON log lines from the settings (:func:`~.api.jsonlog.configure_logging`), before
    the ImageGen is built: its warnings (a provider plugin that does not load) and the start's are JSON lines
    like the rest of the server's log (QA: plain ``imagegen: warning:`` lines came first). Keeps the handler,
    through which the start's lines are announced."""

    def __init__(self) -> None:
        self.handler: logging.Handler | None = None

    def __call__(self, settings: Settings) -> None:
        from .api.jsonlog import configure_logging

        self.handler = configure_logging(_server_log_level(settings), settings.secret_values())
        refuse_unopenable_log_in_production(settings)


def refuse_unopenable_log_in_production(settings: Settings) -> None:
    """In production, exit with one line when the SQLite log cannot be opened now (its folder on a read-only
    mount or a full disk), before the ImageGen is built: elsewhere the ImageGen starts without it and says so
    (:meth:`~.service.ImageGen._start_without_log`), which production refuses, as it does a log that refuses
    writes (:func:`log_write_warning`). A PostgreSQL that cannot be reached is refused by building the ImageGen."""
    from .errors import LogDatabaseBusy
    from .log.db import open_log

    if settings.environment != "production":
        return
    log = open_log(settings)
    if log.path is None:
        return
    try:
        log.open()
    except LogDatabaseBusy as exc:
        fail(f"refusing to start in production: {exc}")
    finally:
        log.close()


def refuse_production_problems(gen: ImageGen) -> None:
    """In production, exit with every problem of the profile (one line each) when there is any."""
    from .profiles import production_problems

    problems = production_problems(gen.settings, racing_types(gen))
    for problem in problems[:-1]:
        click.echo(f"imagegen: refusing to start in production: {problem}", err=True)
    if problems:
        fail(f"refusing to start in production: {problems[-1]}")


def log_write_warning(gen: ImageGen) -> str | None:
    """A log database that refuses writes at start (a SQLite file made read-only, or one that could not even be
    opened: its folder on a read-only mount or a full disk): production refuses to start, as it does with a
    PostgreSQL it cannot reach; elsewhere the warning to print (the rows wait in the log spill until the file is
    writable again, ``/health`` says 503 meanwhile), else None. None too when the ImageGen said so already, as
    it started without the log (:attr:`~.service.ImageGen.log_unavailable_at_start`): one line, not two."""
    refused = gen.log_unavailable_at_start or gen.log_writes_refused()
    if refused is None:
        return None
    if gen.settings.environment == "production":
        fail(f"refusing to start in production: {refused}")
    if gen.log_unavailable_at_start is not None:
        return None
    return f"{refused}; its rows wait in {gen.log_spill.root} until then"


#: How long the start waits for its one look at the store (R2's check itself waits 2 s for an answer).
STORE_CHECK_WAIT_S = 5.0


def store_start_warning(gen: ImageGen) -> str | None:
    """R2 looked at once before serving (one listing, :data:`STORE_CHECK_WAIT_S` at most). A setup it refuses
    (credentials, access, bucket: :class:`~.errors.StoreSetupError`) makes production refuse to start, naming the
    variable to fix, as it does with a log database it cannot reach: every answer would otherwise be a default
    image. Outside production that is a warning; and a store that does not answer is one everywhere (the spool
    keeps the images of an outage). Returns the warning to print, or None."""
    import asyncio

    from .errors import StorageError, StoreSetupError

    if getattr(gen.store, "name", None) != "r2":
        return None  # the local store's folder is made on first use, and /health looks at it

    async def look() -> None:
        async with asyncio.timeout(STORE_CHECK_WAIT_S):
            await gen.store.check()

    try:
        asyncio.run(look())
    except StoreSetupError as exc:
        if gen.settings.environment == "production":
            fail(f"refusing to start in production: {exc}")
        return str(exc)
    except (StorageError, TimeoutError) as exc:
        said = str(exc) or f"R2 did not answer in {STORE_CHECK_WAIT_S:g} s"
        return f"{said}; starting anyway: images are kept in the spool until the store answers"
    return None


def warn(line: str | None, handler: logging.Handler | None = None) -> None:
    """A warning about the setup, if there is a line: a JSON line through the server's log ``handler`` (see
    :func:`~.api.jsonlog.announce`), else ``imagegen: warning: <line>`` on stderr (before logging is set up)."""
    if not line:
        return
    if handler is not None:
        from .api.jsonlog import announce

        announce(handler, line, level=logging.WARNING)
    else:
        click.echo(f"imagegen: warning: {line}", err=True)


def warn_of_production_risks(settings: Settings, handler: logging.Handler | None = None) -> None:
    """One line for each risk production refuses to start with, outside production: answers' image URLs
    that would be ``file://`` ones the API's clients cannot open, an admin or API token short enough to guess."""
    from .profiles import file_url_problem, weak_tokens

    for problem in (file_url_problem(settings), *weak_tokens(settings)):
        warn(problem, handler)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0: all).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="TCP port (0: any).")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker processes on the one port (state is shared through the log DB).",
)
def serve(host: str, port: int, workers: int) -> None:
    """Run the HTTP API (the Worker's endpoints, admin, /files); docs at /docs."""
    sigint_interrupts()
    server_log = ServerLog()
    with sigterm_handed_back():
        try:
            _serve(host, port, workers, server_log)
        except KeyboardInterrupt:
            if server_log.handler is None:  # before the server's log was set up: the commands' plain line
                raise
            from .api.jsonlog import announce

            # Once the server logs JSON, its last line too (QA: a plain "imagegen: interrupted" ended the log).
            announce(server_log.handler, "interrupted (Ctrl+C): the server has stopped")
            sys.exit(EXIT_INTERRUPTED)


class _HandedBack(BaseException):
    """SIGTERM, raised again by uvicorn once it has shut down (see :func:`sigterm_handed_back`)."""


@contextlib.contextmanager
def sigterm_handed_back() -> Iterator[None]:
    """Within the block, SIGTERM unwinds like Ctrl+C; then the process ends by SIGTERM all the same.

    uvicorn catches SIGTERM and SIGINT while it serves, shuts down, then raises each again under the handler
    from before it started. Under SIGTERM's default the process died right there, before the event loop's
    runner cancelled what a forced shutdown (SIGTERM, then Ctrl+C) had left running: the requests in flight
    got no 503, their rows stayed ``running``, and the lifespan's clean-up was skipped (QA). Raised under this
    handler, the signal unwinds the loop as Ctrl+C does (every task cancelled: the 503s, the ``cancelled``
    rows), and everything the command opened is closed before the process ends by SIGTERM, so that its exit
    status still says so. A SIGTERM before uvicorn starts ends the same way."""

    def handed_back(signum: int, frame: object) -> None:
        raise _HandedBack

    previous = signal.signal(signal.SIGTERM, handed_back)
    try:
        yield
    except _HandedBack:
        pass
    else:
        return
    finally:
        signal.signal(signal.SIGTERM, previous)
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _serve(host: str, port: int, workers: int, server_log: ServerLog) -> None:
    require("api", feature="`imagegen serve`")
    import uvicorn

    from .api import create_app
    from .api.jsonlog import announce

    with open_imagegen(source="api", log_setup=server_log, without_log=True) as gen:
        settings = gen.settings
        level = _server_log_level(settings)
        handler = server_log.handler
        assert handler is not None  # set up before the ImageGen was built
        refuse_production_problems(gen)
        log_warning = log_write_warning(gen)
        store_warning = store_start_warning(gen)
        sock = listen_or_fail(host, port)
        bound_host, bound_port = sock.getsockname()[:2]
        docs = "docs at /docs" if settings.api_docs_enabled else "no /docs in production"
        more = f", {workers} workers" if workers > 1 else ""
        url = f"http://{bound_host}:{bound_port}"
        announce(handler, f"serving on {url} ({docs}{more}, {event_loop()})", url=url, workers=workers)
        warn(log_warning, handler)
        warn(store_warning, handler)
        warn_of_production_risks(settings, handler)
        if workers == 1:
            # The lifespan closes it on uvicorn's loop, with its HTTP client; the process is ours: freeze_gc.
            app = create_app(gen, close_gen=True, freeze_gc=True)
            uvicorn.Server(_uvicorn_config(app, level)).run(sockets=[sock])
            return
    # Several workers: this ImageGen has served its purpose (settings, database and migrations, profile checks).
    from .api.processes import Supervisor, WorkerConfig

    config = _uvicorn_config(WORKER_APP, level, config_class=WorkerConfig, factory=True, workers=workers)
    Supervisor(config, sockets=[sock]).run()


def event_loop() -> str:
    """The server's event loop: uvloop where it is installed (the ``api`` extra has it but on Windows), which
    measured 1.26x the generates per second of asyncio's own loop and 2.9x on ``/health/live``
    (``bench/api_throughput.py``, both loops in one run); else asyncio's."""
    import importlib.util

    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def _uvicorn_config(
    app: Any, level: str, config_class: type[uvicorn.Config] | None = None, **extra: Any
) -> uvicorn.Config:
    import uvicorn

    from .api.http11 import http_protocol

    return (config_class or uvicorn.Config)(
        app,
        loop=event_loop(),
        http=http_protocol(),  # no tracebacks for a body uvicorn itself refused (see api/http11.py)
        log_config=None,
        log_level=level.lower(),
        access_log=False,
        server_header=False,
        **extra,
    )


def _alert_state(rule: dict[str, Any]) -> str:
    """What a rule's line leads with: ``FIRING``, ``ok``, or ``not enough data`` when its window held no sample
    (QA: an empty or idle log printed "ok" for rules that had measured nothing)."""
    if rule["firing"]:
        return "FIRING"
    return "not enough data" if rule["samples"] == 0 else "ok"


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the evaluation as JSON on stdout.")
def alerts(as_json: bool) -> None:
    """Evaluate the alert rules over the log; exit 1 when one fires (for cron)."""
    from .alerts import alerts_for

    require_log()
    with open_imagegen() as gen:
        report = alerts_for(gen)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        states = [_alert_state(rule) for rule in report["rules"]]
        width = max([6, *map(len, states)]) + 2  # "FIRING  ", as before, unless a longer state needs room
        for state, rule in zip(states, report["rules"], strict=True):
            click.echo(f"{state:<{width}}{rule['rule']:<21}{rule['message']}")
    if report["firing"]:
        raise SystemExit(EXIT_ALERT)
