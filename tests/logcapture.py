"""Capture what the service logs, through the serve command's redacting JSON handler."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from imagegen_core.api.jsonlog import json_handler


@contextmanager
def redacted_json_log(secrets: Iterable[str]) -> Iterator[io.StringIO]:
    """Everything logged inside the block, at DEBUG, as the JSON lines ``imagegen serve`` would write."""
    stream = io.StringIO()
    handler = json_handler(list(secrets), stream)
    root = logging.getLogger()
    saved = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(saved)
