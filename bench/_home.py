"""Where the benchmarks put their temporary ``IMAGEGEN_HOME``: beside the default home (the platform's user
data folder, ``~/.local/share`` on Linux), where a user's images and log go, not in the system's temporary
folder. On this VM creating a file under ``/tmp`` took 160-210 µs against 14-35 µs under ``~/.local/share``
or ``/var/tmp`` at the same moments (same disk; interleaved rounds), and every stored image creates one:
measured in ``/tmp``, imagegen paid up to a millisecond per request for a quirk of that folder.
:func:`file_create_us` lets a benchmark print the cost of both places beside its figures."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path


def home_parent(override: str | None = None) -> Path:
    """``override`` if given, else the folder that holds imagegen's default home; created if missing."""
    from imagegen_core.settings import default_home

    parent = Path(override) if override else default_home().parent
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def temporary_home(prefix: str, override: str | None = None) -> tempfile.TemporaryDirectory[str]:
    """A temporary folder for one run's ``IMAGEGEN_HOME``, under :func:`home_parent` (removed on exit)."""
    return tempfile.TemporaryDirectory(prefix=prefix, dir=home_parent(override))


def file_create_us(parent: Path, files: int = 200) -> float:
    """Median µs to create (and close) a new empty file in a fresh folder under ``parent``: what the local
    store's atomic write pays once per image on top of writing the bytes."""
    with tempfile.TemporaryDirectory(prefix="imagegen-bench-create-", dir=parent) as folder:
        times = []
        for i in range(files):
            start = time.perf_counter()
            fd = os.open(os.path.join(folder, f"f{i}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            times.append(time.perf_counter() - start)
            os.close(fd)
    return statistics.median(times) * 1e6
