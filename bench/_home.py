"""Where the benchmarks put their temporary ``IMAGEGEN_HOME``: beside the default home (the platform's user
data folder, ``~/.local/share`` on Linux), where a user's images and log go.

Every stored image creates a file, and on this VM's disk (ext4 mounted with ``discard``) creating one costs
anywhere from 13 µs to nearly 800 µs, by folder and by moment: in six interleaved rounds at 07:25 UTC,
``/tmp`` went 31 → 402 µs and ``~/.local/share`` 185 → 788 µs while ``/var/tmp`` and ``/work`` stayed at
15-150 µs; an hour earlier ``/tmp`` was the slow one (160-210 µs against 14-35). Removing a benchmark's
folder of thousands of files seems to bring the slow spells on. No folder is reliably quick, so the
benchmarks print :func:`file_create_us` beside their figures: a sequential request pays it once.
"""

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
