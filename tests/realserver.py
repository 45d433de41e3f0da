"""A real HTTP/1.1 server on 127.0.0.1 in its own thread, scripted per test to misbehave like a
provider can: hang, drip its body, reset the connection — things respx cannot emulate."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
from collections.abc import Awaitable, Callable
from typing import Any

Handler = Callable[[str, str, asyncio.StreamWriter], Awaitable[None]]


class ScriptedServer:
    """``handler(method, path, writer)`` answers each request; the server runs until :meth:`stop`."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0
        self.requests: list[tuple[str, str]] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()
        self._loop.run_until_complete(server.wait_closed())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                length = 0
                for line in lines[1:]:
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                if length:
                    await reader.readexactly(length)
                self.requests.append((method, path))
                await self.handler(method, path, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        for task in asyncio.all_tasks(self._loop):
            self._loop.call_soon_threadsafe(task.cancel)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


async def send_json(writer: asyncio.StreamWriter, status: int, body: Any) -> None:
    """Write one complete JSON response (keep-alive)."""
    data = json.dumps(body).encode()
    writer.write(
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data
    )
    await writer.drain()


async def hang(writer: asyncio.StreamWriter) -> None:
    """Never answer."""
    await asyncio.Event().wait()


async def drip(writer: asyncio.StreamWriter, *, content_type: str, every_s: float = 0.1) -> None:
    """Promise a large body, then send one byte per ``every_s`` forever."""
    writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: 1000000\r\n\r\n".encode())
    while True:
        writer.write(b"{" if content_type.endswith("json") else b"\x89")
        await writer.drain()
        await asyncio.sleep(every_s)


def reset(writer: asyncio.StreamWriter) -> None:
    """Abort the connection with a TCP RST (SO_LINGER 0), the way a crashing proxy does."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def send_bytes(
    writer: asyncio.StreamWriter, status: int, body: bytes, *, content_type: str, headers: dict[str, str] | None = None
) -> None:
    """Write one complete response with any body and extra headers (keep-alive)."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    writer.write(head.encode() + body)
    await writer.drain()


async def stream_body(writer: asyncio.StreamWriter, total: int, *, content_type: str, sent: list[int]) -> None:
    """Send ``total`` bytes without a Content-Length (ended by closing), one 64 KiB chunk at a time, so a
    50 MB body is never held in memory; ``sent`` gets the running count of bytes handed to the socket."""
    writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nConnection: close\r\n\r\n".encode())
    chunk = b"\x89" * 65536
    sent.append(0)
    while sent[-1] < total:
        writer.write(chunk[: total - sent[-1]])
        await writer.drain()  # raises ConnectionResetError once the client has given up
        sent[-1] += min(len(chunk), total - sent[-1])
    writer.close()
