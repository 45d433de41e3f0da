"""What does the local store cost per image, with its metadata in an extended attribute (the default where
the filesystem has them) against a sidecar file (the fallback)?

Writes ``--images`` objects of ``--bytes`` random bytes through ``LocalStore._write`` (the part of ``put``
that runs on a worker thread: atomic writes, folder creation) under fresh ``ai/YYYY/MM/<id>.webp`` keys in
a temporary folder under ``--dir`` (default: beside the default ``IMAGEGEN_HOME``, where a user's images
go; ``_home.py`` says what file creation costs on this VM), alternating the two layouts for ``--rounds``
rounds so that both see the same moments of the disk.

Printed (Markdown, stdout): per round and layout, wall and CPU (user + system, this thread) µs per image,
and the median ratio sidecar / attribute. Run from the project root: ``.venv/bin/python bench/local_store.py``.
Exits non-zero when the filesystem keeps no user extended attributes (nothing to compare).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from _home import temporary_home

META = json.dumps(
    {
        "content_type": "image/webp",
        "cache_control": "public, max-age=31536000, immutable",
        "metadata": {"request-id": "0" * 32, "provider": "fal", "prompt-sha256": "a" * 64, "model": "flux"},
    }
).encode()


def thread_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


def write_images(root: Path, *, in_xattr: bool, images: int, size: int) -> tuple[float, float]:
    """Wall and CPU µs per image for ``images`` writes in one layout."""
    from imagegen_core.ids import new_id
    from imagegen_core.storage import LocalStore

    store = LocalStore(root)
    store.metadata_in_xattr = in_xattr
    data = os.urandom(size)
    wall0, cpu0 = time.perf_counter(), thread_cpu_s()
    for _ in range(images):
        key = f"ai/2026/11/{new_id()}.webp"
        store._write(key, store.path_for(key), data, META)
    wall, cpu = time.perf_counter() - wall0, thread_cpu_s() - cpu0
    if in_xattr and not store.metadata_in_xattr:
        raise SystemExit(f"{root}: this filesystem keeps no user extended attributes; nothing to compare")
    return wall / images * 1e6, cpu / images * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--images", type=int, default=300, help="images per round and layout (default 300)")
    parser.add_argument("--bytes", type=int, default=600, help="bytes per image (default 600, a small WebP)")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds (default 10)")
    parser.add_argument(
        "--dir", default=None, help="where the temporary folder goes (default: beside the default IMAGEGEN_HOME)"
    )
    args = parser.parse_args(argv)
    if min(args.images, args.bytes, args.rounds) < 1:
        parser.error("--images, --bytes and --rounds must be positive")
    if not hasattr(os, "setxattr"):
        print("this platform has no os.setxattr: the local store always writes sidecars", file=sys.stderr)
        return 1
    rows: list[tuple[int, str, float, float]] = []
    with temporary_home("imagegen-store-bench-", args.dir) as tmp:
        for round_no in range(1, args.rounds + 1):
            for label, in_xattr in (("sidecar file", False), ("extended attribute", True)):
                folder = Path(tmp) / f"{round_no}-{int(in_xattr)}"
                wall, cpu = write_images(folder, in_xattr=in_xattr, images=args.images, size=args.bytes)
                rows.append((round_no, label, wall, cpu))
    print(
        f"\nimagegen local store: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, {args.images} images of {args.bytes} bytes per round\n"
    )
    print("| round | metadata in | wall µs/image | CPU µs/image |")
    print("|---:|---|---:|---:|")
    for round_no, label, wall, cpu in rows:
        print(f"| {round_no} | {label} | {wall:.1f} | {cpu:.1f} |")
    ratios_wall = [rows[i][2] / rows[i + 1][2] for i in range(0, len(rows), 2)]
    ratios_cpu = [rows[i][3] / rows[i + 1][3] for i in range(0, len(rows), 2)]
    print(
        f"\nsidecar / attribute, median over rounds: wall {statistics.median(ratios_wall):.2f}x, "
        f"CPU {statistics.median(ratios_cpu):.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
