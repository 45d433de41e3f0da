"""Pruning a big SQLite request log (``imagegen db prune``): how long the prune of its oldest three quarters
takes, how long each batch holds the write lock, how long a writer running meanwhile waits, and what
``--vacuum`` gives back.

Builds a log of ``--requests`` requests (default 1.5 million, a year of traffic with ~2.3 attempts each, a
pick in every 500th, a request left ``running`` in every 20 000th) straight through ``sqlite3`` in a minute or
two, in ``--dir`` (default /var/tmp/imagegen-prune; reused when it holds one of that size, ``--fresh`` builds
anew), then times, on a copy of it:

1. ``prune_log(dry_run=True)`` at the cut (the oldest 3/4 of the requests);
2. ``prune_log`` at that cut, while a thread of its own writes a request with two attempts every 20 ms through
   the log's usual write API (its own connection, as ``imagegen serve`` would): batch median / max, and the
   writer's wait p50 / p99 / max;
3. ``vacuum_log``: size before / after, time.

    .venv/bin/python bench/log_prune.py [--requests N] [--dir DIR] [--fresh] [--batch N] [--pause S]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import threading
import time
from pathlib import Path

from _measure import pct

from imagegen_core.log import LogDB
from imagegen_core.log.retention import BATCH_REQUESTS, prune_log, vacuum_log

PROVIDERS = ("fal", "replicate", "unsplash", "openai")
YEAR_S = 365 * 86_400


def build(path: Path, requests: int, *, now: float) -> None:
    """A migrated log at ``path`` with ``requests`` requests spread evenly over the year before ``now``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    LogDB(path).open().close()  # the schema, through the migrations
    rng = random.Random(7)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    start = now - YEAR_S
    step = YEAR_S / requests
    chunk_r: list[tuple[object, ...]] = []
    chunk_a: list[tuple[object, ...]] = []
    chunk_p: list[tuple[object, ...]] = []

    def flush() -> None:
        conn.executemany(
            "INSERT INTO requests (id, created_at, finished_at, status, prompt, keyword, article_id, width, height,"
            " style, provider, url, storage_key, elapsed_ms, error, cost_usd, source)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 1200, 675, NULL, ?, ?, ?, ?, ?, ?, 'api')",
            chunk_r,
        )
        conn.executemany(
            "INSERT INTO attempts (id, request_id, provider, attempt, hedged, started_at, finished_at, outcome,"
            " failure_class, http_status, duration_ms, cost_usd, error) VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            chunk_a,
        )
        conn.executemany(
            "INSERT INTO picks (request_id, provider, offered, article_id, url, storage_key, picked_at)"
            " VALUES (?, ?, ?, ?, NULL, ?, ?)",
            chunk_p,
        )
        chunk_r.clear()
        chunk_a.clear()
        chunk_p.clear()

    for i in range(requests):
        rid = f"{i:08x}-0000-4000-8000-{rng.getrandbits(48):012x}"
        at = start + i * step
        running = i % 20_000 == 19_999
        ok = rng.random() < 0.93
        winner = rng.choice(PROVIDERS)
        key = f"ai/2026/{1 + i * 12 // requests:02d}/{rid}.webp"
        chunk_r.append((
            rid, at, None if running else at + 4, "running" if running else ("success" if ok else "failed"),
            f"A photo for article {i}: harbour cranes at dawn, wide shot, muted colours", f"kw{i % 997}",
            f"art-{i // 3}", None if running else winner, None if running or not ok else f"https://img.example/{key}",
            key if ok else None, None if running else 3000 + i % 5000, None if ok else "every provider failed",
            0.004,
        ))  # fmt: skip
        for n in range(1 + (i % 3 != 0) + (i % 4 == 0)):
            provider = PROVIDERS[(PROVIDERS.index(winner) + n) % 4]
            outcome = "running" if running else ("success" if n == 0 and ok else ("cancelled" if n else "failed"))
            chunk_a.append((
                f"{rid}-{n}", rid, provider, int(n > 0), at + n, None if running else at + n + 2, outcome,
                "timeout" if outcome == "failed" else None, 504 if outcome == "failed" else None,
                None if running else 2000 + i % 3000, 0.003 if n == 0 else 0.0,
                "provider timed out" if outcome == "failed" else None,
            ))  # fmt: skip
        if i % 500 == 0:
            chunk_p.append((rid, winner, json.dumps(list(PROVIDERS[:2])), f"art-{i // 3}", key, at + 30))
        if len(chunk_r) >= 20_000:
            flush()
    flush()
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


class Writer(threading.Thread):
    """Writes a request with two attempts every ``every_s`` through the log's write API until stopped; the
    time each request's writes took (a wait for the prune's lock included)."""

    def __init__(self, path: Path, every_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.db = LogDB(path)
        self.every_s = every_s
        self.waits_ms: list[float] = []
        self.errors = 0
        self.halt = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            rid = f"live-{n}"
            begun = time.perf_counter()
            now = time.time()
            try:
                self.db.start_request(rid, created_at=now, prompt="live", keyword=None, article_id=None, width=512,
                                      height=512, style=None, source="api")  # fmt: skip
                for a in range(2):
                    self.db.start_attempt(f"{rid}-{a}", request_id=rid, provider="fal", attempt=1, hedged=a > 0,
                                          started_at=now)  # fmt: skip
                self.db.finish_request(rid, finished_at=now + 1, status="success", provider="fal")
            except Exception:
                self.errors += 1
            self.waits_ms.append((time.perf_counter() - begun) * 1000)
            n += 1
            self.halt.wait(self.every_s)
        self.db.close()


def mb(size: int) -> str:
    return f"{size / 1e6:,.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_500_000)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/imagegen-prune"))
    parser.add_argument("--fresh", action="store_true", help="build the log anew even when one is there")
    parser.add_argument("--batch", type=int, default=BATCH_REQUESTS)
    parser.add_argument("--pause", type=float, default=None, help="seconds between batches (default: the library's)")
    args = parser.parse_args()

    now = time.time()
    source = args.dir / f"log-{args.requests}.db"
    marker = args.dir / f"log-{args.requests}.json"
    if args.fresh or not marker.is_file():
        begun = time.perf_counter()
        build(source, args.requests, now=now)
        marker.write_text(json.dumps({"now": now}))
        print(f"built {source}: {args.requests:,} requests, {mb(source.stat().st_size)} in "
              f"{time.perf_counter() - begun:.1f} s")  # fmt: skip
    now = json.loads(marker.read_text())["now"]
    work = args.dir / "work.db"
    for suffix in ("-wal", "-shm"):
        Path(f"{work}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(source, work)
    cut = now - YEAR_S / 4  # the oldest three quarters

    with LogDB(work) as db:
        total = db.query("SELECT COUNT(*) AS n FROM requests")[0]["n"]
        plan = db.query(
            "EXPLAIN QUERY PLAN SELECT id, created_at FROM requests WHERE created_at >= ? AND created_at < ?"
            " AND status <> 'running' ORDER BY created_at LIMIT 500",
            (0, cut),
        )
        print(f"log: {total:,} requests, {mb(work.stat().st_size)}; plan: {[row['detail'] for row in plan]}")
        dry = prune_log(db, before=cut, dry_run=True)
        print(f"dry run: {dry.deleted} would go, {dry.kept_running} running kept, in {dry.elapsed_s:.1f} s")

        writer = Writer(work)
        writer.start()
        time.sleep(1)  # its baseline
        baseline = len(writer.waits_ms)
        result = prune_log(db, before=cut, batch_requests=args.batch, pause_s=args.pause)
        writer.halt.set()
        writer.join()
        pause = "default" if args.pause is None else f"{args.pause:g} s"
        during = writer.waits_ms[baseline:]
        print(
            f"prune (batch {args.batch}, pause {pause}): {result.deleted} in {result.elapsed_s:.1f} s,"
            f" {result.batches} batches,"
            f" median {result.batch_median_s * 1000:.1f} ms, p99 {pct(result.batch_s, 99) * 1000:.1f} ms,"
            f" max {result.batch_max_s * 1000:.1f} ms; kept running {result.kept_running}"
        )
        print(
            f"writer meanwhile ({len(during)} requests, 4 writes each, {writer.errors} errors): wait p50"
            f" {pct(during, 50):.1f} ms, p99 {pct(during, 99):.1f} ms, max {max(during):.1f} ms"
            f" (before the prune: p50 {pct(writer.waits_ms[:baseline], 50):.1f} ms)"
        )
        done = vacuum_log(db)
        print(f"vacuum: {mb(done.size_before)} → {mb(done.size_after)} in {done.elapsed_s:.1f} s ({done.note})")
        left = db.query("SELECT COUNT(*) AS n FROM requests")[0]["n"]
        print(f"left: {left:,} requests")


if __name__ == "__main__":
    main()
