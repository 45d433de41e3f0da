"""What every ``imagegen`` subcommand shares: building an ImageGen from the environment, and failing with
one line instead of a traceback. Its own module so that command modules never import each other."""

from __future__ import annotations

import json
import logging
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from .errors import ImageGenError, one_line, redact, secret_forms

if TYPE_CHECKING:
    from .service import ImageGen
    from .settings import Settings
    from .storage import Spool, Store

EXIT_NO_IMAGE = 1
EXIT_BAD_INPUT = 2
#: Exit status after Ctrl-C or SIGTERM (128 + SIGINT, the shell's convention); the console's too.
EXIT_INTERRUPTED = 130


def racing_types(gen: ImageGen) -> set[str]:
    """The provider types that would race now (``offline`` for the built-in one): what production's checks
    look at."""
    return {gen.config.provider_type(entrant.name) for entrant in gen.entrants()}


class Refusal(SystemExit):
    """How :func:`fail` ends a command: a ``SystemExit`` with its status that also carries the line printed and
    the request field it blames (None: no field), so that ``generate --json`` can answer it in the HTTP API's
    error shape too."""

    def __init__(self, message: str, code: int, field: str | None = None) -> None:
        super().__init__(code)
        self.message = message
        self.field = field


def fail(message: str, code: int = EXIT_BAD_INPUT, *, field: str | None = None) -> NoReturn:
    """Print ``imagegen: <message>`` on stderr, as one line whatever text it carries, and exit with ``code``
    (:class:`Refusal`; ``field``: the request field to blame, if any)."""
    line = one_line(message)
    click.echo(f"imagegen: {line}", err=True)
    raise Refusal(line, code, field)


class JsonRefusalCommand(click.Command):
    """A command with a ``--json`` flag (``generate``, ``stats``): every refusal (exit 2: a bad option or
    argument, an invalid request, window or setting, production's refusal) is also answered on stdout in the
    HTTP API's error shape, ``{"error": "<field>: <message>", "field": ...}``, besides the usual line on stderr.
    QA: only a request the engine refused was; the others left stdout empty, and a script reading the JSON had
    nothing to parse."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        # Read before parsing, which a bad option stops; an argument after "--" may be the text "--json".
        asks_json = "--json" in (args[: args.index("--")] if "--" in args else args)
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            if asks_json:
                param = getattr(exc, "param", None)  # BadParameter and MissingParameter name theirs
                _echo_error_shape(exc.format_message(), _api_field(param.name) if param and param.name else None)
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Refusal as exc:
            if exc.code == EXIT_BAD_INPUT and ctx.params.get("as_json"):
                _echo_error_shape(exc.message, exc.field)
            raise


def _api_field(name: str) -> str:
    """An option's name as the HTTP API spells the field (``article_id``: ``articleId``)."""
    head, *rest = name.split("_")
    return head + "".join(word.capitalize() for word in rest)


def _echo_error_shape(message: str, field: str | None) -> None:
    """The HTTP API's error shape on stdout: the message led by the field it blames, when it does not say it
    (a command's own refusals name the option, ``--since: …``: "since: --since: …" would say it twice)."""
    named = field is None or message.startswith((f"{field}:", f"--{field}"))
    text = message if named else f"{field}: {message}"
    click.echo(json.dumps({"error": text, "field": field}))


#: Connections the kernel queues for the server before it accepts them (uvicorn's default backlog).
LISTEN_BACKLOG = 2048


def listen_or_fail(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port`` before the server starts, so that a busy port is a one-line error
    (not a server's logged traceback) and port 0 can be reported as the port actually chosen. Listening from
    here on: a client that connects as soon as the start line names the port waits in the backlog while the
    server warms up, rather than being refused (QA: 0.2 s with one worker, 1.3 s with two)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    sock.set_inheritable(True)
    return sock


class _PlainRedactingFormatter(logging.Formatter):
    """``imagegen: warning: <message>``, with every secret replaced by ``***``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__("imagegen: %(levelname)s: %(message)s")
        self._secrets = secret_forms(secrets)

    def format(self, record: logging.LogRecord) -> str:
        record.levelname = record.levelname.lower()
        return redact(super().format(record), self._secrets)


def log_to_stderr(settings: Settings) -> None:
    """The commands' log lines: plain text on stderr at ``LOG_LEVEL`` (default WARNING), secrets redacted.
    Left alone when the root logger has a handler already (``serve`` installs its JSON lines)."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(_PlainRedactingFormatter(settings.secret_values()))
    if logging.getLevelName(settings.log_level) > logging.INFO:
        # Libraries' own warnings (psycopg's pool reconnecting, say) repeat what imagegen's one line says, in
        # their words and with object addresses; they show at ERROR, or with LOG_LEVEL=INFO/DEBUG.
        handler.addFilter(lambda record: record.name.startswith("imagegen") or record.levelno >= logging.ERROR)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    from .http_clients import quiet_http_client_lines

    quiet_http_client_lines(settings.log_level)


@contextmanager
def open_imagegen(
    source: str = "cli",
    *,
    no_log_shows: str | None = None,
    log_setup: Callable[[Settings], object] = log_to_stderr,
    without_log: bool = False,
) -> Iterator[ImageGen]:
    """An ImageGen from the environment; every ImageGenError becomes a one-line message, never a traceback.
    ``log_setup`` sets up logging from the settings before the ImageGen is built (what building it logs, such
    as a provider plugin that does not load, goes through it): the commands' plain lines by default.

    ``no_log_shows``: the command only reads, and can answer without a log. When the log the environment
    points at is a SQLite file that does not exist, none is created there (QA: a mistyped IMAGEGEN_HOME made
    ``imagegen providers`` create an empty log, and its folder): the ImageGen reads an empty log in a temporary
    folder, removed on exit (the built-in config in force, every breaker closed: what an empty log holds), and
    once the command has answered, a line on stderr names the missing log, the variable that chose its path
    and what the answer shows (``no_log_shows``). Commands that have nothing to show without a log call
    :func:`require_log` instead.

    ``without_log``: the command goes on when the SQLite log cannot be opened at all (a full disk, a read-only
    mount), with one warning that says so (``generate``, ``serve``, the storage commands). Without it, such a log
    is the command's one-line error (QA: ``providers`` printed that warning, "going on without it", then failed)."""
    from .service import ImageGen
    from .settings import Settings

    with ExitStack() as cleanup:  # the empty log's folder, removed after the ImageGen is closed
        try:
            settings = Settings()
            log_setup(settings)
            missing = _missing_log(settings) if no_log_shows is not None else None
            if missing is None:
                gen = ImageGen.from_settings(settings, source=source, start_without_log=without_log)
            else:
                from .log.db import LogDB
                from .storage import make_store

                scratch = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="imagegen-no-log-")))
                empty_log = LogDB.from_url(f"sqlite:///{scratch / 'imagegen.db'}")
                gen = ImageGen(settings=settings, log=empty_log, store=make_store(settings), source=source)
        except (ImageGenError, ValueError) as exc:
            fail(str(exc))
        try:
            yield gen
        except ImageGenError as exc:
            fail(error_line(exc), field=getattr(exc, "field", None))
        finally:
            gen.close()
        if missing is not None:  # with an answer only: a command that failed says so in its one line
            click.echo(f"note: {missing}; {no_log_shows}", err=True)


@contextmanager
def open_store(*, log_setup: Callable[[Settings], object] = log_to_stderr) -> Iterator[tuple[Store, Spool]]:
    """The image store and the spool the environment describes, and no log database: for a command that only
    moves images (``storage flush``), which so runs whatever state the log is in (QA: with the PostgreSQL log
    away, the flush refused to run, "cannot reach the log database"). Errors are one line, as in
    :func:`open_imagegen`."""
    from .settings import Settings
    from .storage import make_spool, make_store

    try:
        settings = Settings()
        log_setup(settings)
        store, spool = make_store(settings), make_spool(settings)
    except (ImageGenError, ValueError) as exc:
        fail(str(exc))
    try:
        yield store, spool
    except ImageGenError as exc:
        fail(error_line(exc), field=getattr(exc, "field", None))


def require_log() -> None:
    """Exit with one line (:data:`EXIT_BAD_INPUT`, as for other settings that point nowhere) when the log the
    environment points at is a SQLite file that does not exist. Commands that only read the log (``stats``,
    ``alerts``) create none: a mistyped IMAGEGEN_HOME made ``imagegen stats`` create an empty log there and
    print an empty table, exit 0. A PostgreSQL URL is left to the connection to check."""
    from .settings import Settings

    try:
        missing = _missing_log(Settings())
    except (ImageGenError, ValueError) as exc:
        fail(str(exc))
    if missing is not None:
        fail(missing)


def missing_log_line() -> str | None:
    """:func:`require_log`'s line when the SQLite log the environment points at does not exist (None when it
    does, for a PostgreSQL URL, or when the settings cannot be read: the command that opens the log says
    so)."""
    from .settings import Settings

    try:
        return _missing_log(Settings())
    except (ImageGenError, ValueError):
        return None


def _missing_log(settings: Settings) -> str | None:
    """ "no log at PATH: check VARIABLE (...)" when the log ``settings`` point at is a SQLite file that does not
    exist; None otherwise. Opens nothing."""
    from .errors import LogDatabaseError
    from .log.backend import file_in_the_way
    from .log.db import LogDB

    log = LogDB.from_url(settings.log_database_url, migrate=False)  # opens nothing
    if log.path is None or log.path.is_file():
        return None
    # Not missing but unusable: the command's error, as `generate`'s (QA: `providers` with IMAGEGEN_HOME naming a
    # file said "note: no log at FILE/imagegen.db" and exit 0, with a folder as the database "no log at /tmp").
    if log.path.is_dir():
        raise LogDatabaseError(f"the log database {log.path} is a folder: check {_log_chosen_by(settings)}")
    blocker = file_in_the_way(log.path.parent)
    if blocker is not None:
        raise LogDatabaseError(f"{blocker} is a file, not a folder: check {_log_chosen_by(settings)}")
    return f"no log at {log.path}: check {_log_chosen_by(settings)} (a log is created by the first image request)"


def _log_chosen_by(settings: Settings) -> str:
    """The variable that chose the log's path: IMAGEGEN_DATABASE_URL when set (it wins over IMAGEGEN_HOME), so
    that the operator is not sent to fix a variable that played no part (QA: a mistyped URL said "check
    IMAGEGEN_HOME")."""
    return "IMAGEGEN_DATABASE_URL" if settings.database_url else "IMAGEGEN_HOME"


def error_line(exc: ImageGenError) -> str:
    """The error's message, led by the field it names when the message does not say it (the API adds the field
    the same way): "imagegen: 7 does not exist (the latest is 2)" did not say it was the version."""
    text, field = str(exc), getattr(exc, "field", None)
    named = not field or field.startswith("(") or f"{field}:" in text  # "(root)": the document as a whole
    return text if named else f"{field}: {text}"


def sigint_interrupts() -> None:
    """Give SIGINT Python's own handler (KeyboardInterrupt) when the process started with it ignored: a shell
    without job control starts its background commands so (``imagegen serve &`` in a script, ``nohup``). The
    servers stop on SIGINT all the same (uvicorn and Streamlit catch it while they serve), but then exited 0,
    with no last line, where a Ctrl+C gives 130 (QA: ``kill -INT`` of a backgrounded ``serve``). For the
    long-running commands only, which stop on SIGINT in any case."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (a supervisor, ``timeout``, ``kill``) interrupts like Ctrl-C: the running
    request is cancelled and logged as ``cancelled`` instead of the process dying with a ``running`` row.
    Only for commands that do not install their own handlers (``serve``: uvicorn shuts down gracefully)."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
