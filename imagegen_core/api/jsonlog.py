"""Structured logs: one JSON object per line (python-json-logger), with every secret redacted.

Redaction runs on the finished line, so messages, extra fields and tracebacks are all covered, in each of
the forms a secret can take there (raw, and JSON-escaped with or without ``ensure_ascii``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import IO, Any

from pythonjsonlogger.json import JsonFormatter

from ..errors import redact, secret_forms
from ..http_clients import quiet_http_client_lines

#: The fields of every line, renamed to short keys.
_FORMAT = "%(levelname)s %(name)s %(message)s"
_RENAME = {"levelname": "level", "name": "logger"}


class RedactingJsonFormatter(JsonFormatter):
    """A JSON formatter that replaces every configured secret with ``***`` in the line it produces."""

    def __init__(self, secrets: Iterable[str], **kwargs: Any) -> None:
        # timestamp="time": an ISO 8601 UTC time (asctime would be local time without a zone).
        super().__init__(_FORMAT, rename_fields=_RENAME, timestamp="time", **kwargs)
        self._forms = secret_forms(secrets)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        """Drop uvicorn's ``color_message`` (the message again, with terminal colour codes)."""
        log_data.pop("color_message", None)
        return log_data

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line, secrets redacted."""
        return redact(str(super().format(record)), self._forms)


def json_handler(secrets: Iterable[str], stream: IO[str] | None = None) -> logging.Handler:
    """A stream handler (stderr by default) writing redacted JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(RedactingJsonFormatter(secrets))
    return handler


def configure_logging(level: str, secrets: Iterable[str]) -> logging.Handler:
    """Send every logger's records (imagegen's and uvicorn's) to one redacted JSON handler on stderr at
    ``level``; replaces the root logger's handlers. For the ``serve`` process, not for library use."""
    handler = json_handler(secrets)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    quiet_http_client_lines(level)
    for name in ("uvicorn", "uvicorn.error"):  # uvicorn's own handlers would print plain text
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # Our middleware writes the one line per request. uvicorn's access line is printed when that logger has a
    # handler anywhere up its chain: in a `--workers` process this runs after uvicorn's own setup, so it
    # must switch the access log off itself (it was on there: two lines per request).
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    return handler


def announce(handler: logging.Handler, message: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """One line of the server's start (it listens on a URL; a warning about its setup) through ``handler``,
    whatever the loggers' level: the operator needs it (and a supervisor the URL, in ``url``) even with
    ``LOG_LEVEL=ERROR``. As a JSON line like the rest of the server's log: QA read a plain-text
    "imagegen: serving on ..." among them, which a log shipper parsing JSON drops or mangles."""
    record = logging.LogRecord("imagegen.serve", level, __file__, 0, message, None, None)
    record.__dict__.update(fields)
    handler.handle(record)
