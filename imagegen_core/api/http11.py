"""The HTTP/1.1 protocol the API is served with: uvicorn's own h11 protocol, with one fix.

A request whose headers parse but whose body does not (a bad chunk size: ``Transfer-Encoding: chunked`` then
``zz``) is answered by uvicorn itself, 400, and the connection is closed. The app is already running for it,
though, and until the loss of the connection reaches it, it may answer too; h11 then raises
``LocalProtocolError`` (the connection "MUST_CLOSE"), which came out as two ERROR tracebacks per such request
(ours and uvicorn's "Exception in ASGI application") and a 500 in the request log: anyone could fill the
server log with them. Marking the request disconnected as soon as uvicorn has answered makes the app's answer
go nowhere, quietly, as for a client that hung up. For a HEAD request, uvicorn's 400 (which has a body) failed
in h11 itself, an asyncio "Fatal error" traceback: the status line goes out and the connection is closed
instead. uvicorn's 400 says "Invalid HTTP request received." in plain text; this one is in the API's error
shape.

``imagegen serve`` passes :class:`QuietH11Protocol` to uvicorn. ``uvicorn --factory ...:server_app`` chose
its protocol before the factory runs, so the factory calls :func:`quiet_uvicorn_h11` instead. Only when
uvicorn would use h11 anyway: with ``httptools`` installed, its ``auto`` choice is kept.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.auto import AutoHTTPProtocol
from uvicorn.protocols.http.h11_impl import H11Protocol

#: The body of the 400 that uvicorn sends for a request it cannot parse.
INVALID_REQUEST_BODY = b'{"error":"invalid HTTP request","field":null}'


def _send_400_quietly(protocol: H11Protocol, msg: str) -> None:
    """uvicorn's ``send_400_response`` in the API's error shape; after it, the app's answer is dropped."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(INVALID_REQUEST_BODY)).encode()),
        (b"connection", b"close"),
    ]
    try:
        protocol.transport.write(
            protocol.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request"))
        )
        protocol.transport.write(protocol.conn.send(h11.Data(data=INVALID_REQUEST_BODY)))
        protocol.transport.write(protocol.conn.send(h11.EndOfMessage()))
    except h11.LocalProtocolError:
        # A HEAD request's answer may have no body: h11 refuses it (which ended in asyncio's "Fatal error:
        # protocol.data_received() call failed"). The status line is out; closing ends the answer.
        pass
    finally:
        protocol.transport.close()
        cycle = protocol.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # what connection_lost does, a moment later: the app sends nothing
            cycle.message_event.set()  # and a pending receive() returns http.disconnect now


class QuietH11Protocol(H11Protocol):
    """uvicorn's h11 protocol; its own 400 is JSON, and after it the app's answer is dropped."""

    def send_400_response(self, msg: str) -> None:
        """Answer a request uvicorn could not parse (see the module's docstring)."""
        _send_400_quietly(self, msg)


def http_protocol() -> type[asyncio.Protocol] | str:
    """The ``http`` option for ``uvicorn.Config``."""
    return QuietH11Protocol if AutoHTTPProtocol is H11Protocol else "auto"


def quiet_uvicorn_h11() -> None:
    """Give uvicorn's own h11 protocol :class:`QuietH11Protocol`'s answer, for a server started by uvicorn's
    command line (whose protocol class was chosen before the app factory ran). Process-wide, so only for a
    process the API owns: the ``server_app`` factory's."""
    H11Protocol.send_400_response = _send_400_quietly  # type: ignore[method-assign,assignment]
