"""The HTTP/1.1 protocol ``imagegen serve`` gives uvicorn: uvicorn's own h11 protocol, with one fix.

A request whose headers parse but whose body does not (a bad chunk size: ``Transfer-Encoding: chunked`` then
``zz``) is answered by uvicorn itself, 400 "Invalid HTTP request received.", and the connection is closed.
The app is already running for it, though, and until the loss of the connection reaches it, it may answer
too; h11 then raises ``LocalProtocolError`` (the connection "MUST_CLOSE"), which came out as two ERROR
tracebacks per such request (ours and uvicorn's "Exception in ASGI application") and a 500 in the request
log: anyone could fill the server log with them. Marking the request disconnected as soon as uvicorn has
answered makes the app's answer go nowhere, quietly, as for a client that hung up. For a HEAD request,
uvicorn's 400 (which has a body) failed in h11 itself, an asyncio "Fatal error" traceback: the status line
goes out and the connection is closed instead.

Only when uvicorn would use h11 anyway: with ``httptools`` installed, its ``auto`` choice is kept.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.auto import AutoHTTPProtocol
from uvicorn.protocols.http.h11_impl import H11Protocol


class QuietH11Protocol(H11Protocol):
    """uvicorn's h11 protocol; after uvicorn answers an invalid request itself, the app's answer is dropped."""

    def send_400_response(self, msg: str) -> None:
        try:
            super().send_400_response(msg)
        except h11.LocalProtocolError:
            # A HEAD request's answer may have no body, and uvicorn's 400 has one: h11 refuses it (which ended
            # in asyncio's "Fatal error: protocol.data_received() call failed"). The status line is out.
            self.transport.close()
        finally:
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True  # what connection_lost does, a moment later: the app sends nothing
                cycle.message_event.set()  # and a pending receive() returns http.disconnect now


def http_protocol() -> type[asyncio.Protocol] | str:
    """The ``http`` option for ``uvicorn.Config``."""
    return QuietH11Protocol if AutoHTTPProtocol is H11Protocol else "auto"
