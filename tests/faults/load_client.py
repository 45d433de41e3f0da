"""The load test's client, run as its own process: ``python -m tests.faults.load_client URL REQUESTS``.

It fires REQUESTS generate requests at once, each on a connection opened beforehand (as a CMS keeps them
alive), and prints one JSON object: ``answers`` (status, body and answer time in ms of each, from its bytes
being written to its answer being read) and ``loopStallMs`` (the longest its own event loop went without
running, measured by the server's own watch: tells a client that read late from a late server).

Why a process of its own: in the test runner's process, the answer times were those of a client sharing its
interpreter with everything the suite had loaded by then (~1.1 M objects, earlier tests' threads); a stall of
that process (a collection of its heap: measured ~1 s) read as answers ~1 s late, twice a red CI while the
server's own slowest answer was ~1.1 s. A CMS calling the API is a process of its own too.

A raw HTTP/1.1 client: a full client library would spend part of the measured time scheduling its own
requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Any

from imagegen_core.api.loop_watch import LoopStalls, watch_loop

#: How often the stall watch wakes (s); every lateness counts (the server's watch logs from 250 ms on).
MONITOR_TICK_S = 0.005


async def fire(base: str, requests: int) -> dict[str, Any]:
    """All ``requests`` at once; the answers and the client's longest loop stall."""
    host, port = base.removeprefix("http://").split(":")
    payload = json.dumps({"prompt": "a harbour at dawn", "width": 320, "height": 200}).encode()
    head = f"POST /images/generate HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
    request = f"{head}Content-Length: {len(payload)}\r\n\r\n".encode() + payload
    connections = await asyncio.gather(*(asyncio.open_connection(host, int(port)) for _ in range(requests)))

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, dict[str, Any], float]:
        started = time.perf_counter()
        writer.write(request)
        await writer.drain()
        lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
        body = json.loads(await reader.readexactly(length))
        elapsed_ms = (time.perf_counter() - started) * 1000
        writer.close()
        return int(lines[0].split()[1]), body, elapsed_ms

    stalls = LoopStalls()
    # The server's own watch (api/loop_watch.py), so that both sides' stalls are one measure; its lines stay quiet.
    logging.getLogger("imagegen.api").disabled = True
    monitor = asyncio.create_task(watch_loop(stalls, tick_s=MONITOR_TICK_S, warn_s=0.0))
    wall = time.perf_counter()
    answers = await asyncio.gather(*(one(reader, writer) for reader, writer in connections))
    wall_s = time.perf_counter() - wall
    monitor.cancel()
    return {"answers": answers, "wallS": wall_s, "loopStallMs": stalls.longest_ms}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(fire(sys.argv[1], int(sys.argv[2])))))
