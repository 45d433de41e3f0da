"""What every ``imagegen`` subcommand shares: building an ImageGen from the environment, and failing with
one line instead of a traceback. Its own module so that command modules never import each other."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NoReturn

import click

from .errors import ImageGenError
from .settings import Settings

if TYPE_CHECKING:
    from .service import ImageGen

EXIT_NO_IMAGE = 1
EXIT_BAD_INPUT = 2


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print ``imagegen: <message>`` on stderr and exit with ``code``."""
    click.echo(f"imagegen: {message}", err=True)
    sys.exit(code)


@contextmanager
def open_imagegen(source: str = "cli") -> Iterator[ImageGen]:
    """An ImageGen from the environment; every ImageGenError becomes a one-line message, never a traceback."""
    from pydantic import ValidationError

    from .service import ImageGen

    try:
        settings = Settings()
    except ValidationError as exc:
        err = exc.errors()[0]
        fail(f"invalid setting {'.'.join(str(p) for p in err['loc'])}: {err['msg']}")
    try:
        gen = ImageGen.from_settings(settings, source=source)
    except (ImageGenError, ValueError) as exc:
        fail(str(exc))
    try:
        yield gen
    except ImageGenError as exc:
        fail(str(exc))
    finally:
        gen.close()
