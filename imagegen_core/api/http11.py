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

Second, a deadline for request headers, which uvicorn does not have: a client that connects and sends
nothing, or sends its headers a byte at a time (slowloris), held its connection for as long as it liked, and
enough of them use up the server's file descriptors. Headers not complete :data:`HEADER_TIMEOUT_S` after the
connection opened (or after the first packet of the next request on a kept-alive connection) end the connection:
with a 408 in the API's error shape when part of a request had arrived, silently when nothing had (as uvicorn's
own keep-alive timeout does). A body has its own deadline (``BodyLimitMiddleware``).

Third, a client that shuts its sending side once its request is out (HTTP/1.0-style scripts, ``nc -N``, some
health checkers) still waiting for the answer: uvicorn took that end-of-file for a hang-up and closed the
connection, so a generate was made, stored and logged for nobody. The connection now stays open for the answer
and closes after it; a body that stopped short is uvicorn's 400 at once.

``imagegen serve`` passes :class:`QuietH11Protocol` to uvicorn. ``uvicorn --factory ...:server_app`` chose
its protocol before the factory runs, so the factory calls :func:`quiet_uvicorn_h11` instead. Only when
uvicorn would use h11 anyway: with ``httptools`` installed, its ``auto`` choice is kept.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.auto import AutoHTTPProtocol
from uvicorn.protocols.http.h11_impl import H11Protocol

#: The body of the 400 that uvicorn sends for a request it cannot parse.
INVALID_REQUEST_BODY = b'{"error":"invalid HTTP request","field":null}'

#: Seconds a client has to send a request's headers (see the module's docstring). Real clients, the
#: Cloudflare Worker and nginx included, send them in one packet.
HEADER_TIMEOUT_S = 10.0

_TIMER = "_imagegen_header_timer"


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


def _headers_408() -> bytes:
    body = b'{"error":"headers: the request headers did not arrive within %g s","field":"headers"}' % HEADER_TIMEOUT_S
    head = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % len(body)
    return head + b"connection: close\r\n\r\n" + body


def _awaiting_headers(protocol: H11Protocol) -> bool:
    return protocol.conn.their_state is h11.IDLE


def _arm_header_deadline(protocol: H11Protocol) -> None:
    if getattr(protocol, _TIMER, None) is None and _awaiting_headers(protocol):
        setattr(protocol, _TIMER, protocol.loop.call_later(HEADER_TIMEOUT_S, _header_deadline_passed, protocol))


def _disarm_header_deadline(protocol: H11Protocol) -> None:
    timer: asyncio.TimerHandle | None = getattr(protocol, _TIMER, None)
    if timer is not None:
        timer.cancel()
        setattr(protocol, _TIMER, None)


def _header_deadline_passed(protocol: H11Protocol) -> None:
    setattr(protocol, _TIMER, None)
    if protocol.transport.is_closing() or not _awaiting_headers(protocol):
        return
    received, _ = protocol.conn.trailing_data  # what h11 holds of a request it could not parse yet
    if received:
        protocol.transport.write(_headers_408())
    protocol.transport.close()


def _eof_received(protocol: H11Protocol) -> bool | None:
    """The client shut its sending side. With a request under way that is no hang-up: it may have sent all it
    means to and wait for the answer (see the module's docstring). True keeps the connection open for it."""
    cycle = protocol.cycle
    if cycle is None or cycle.response_complete:
        return None  # between requests: closed, as uvicorn does
    cycle.keep_alive = False  # the answer ends the connection
    if protocol.conn.their_state is h11.SEND_BODY:
        # The body stopped short: h11 says so at once (uvicorn's 400), rather than the app waiting for the rest.
        protocol.conn.receive_data(b"")
        protocol.handle_events()
    return True


def _hardened(cls: type[H11Protocol]) -> None:
    """Make ``cls`` (uvicorn's h11 protocol or a subclass) enforce :data:`HEADER_TIMEOUT_S` and answer a client
    that half-closed after its request."""
    if cls.__dict__.get("_imagegen_hardened"):
        return
    made, received, lost = cls.connection_made, cls.data_received, cls.connection_lost

    def connection_made(self: H11Protocol, transport: Any) -> None:
        made(self, transport)
        _arm_header_deadline(self)

    def data_received(self: H11Protocol, data: bytes) -> None:
        received(self, data)
        # Armed only for headers still incomplete after a packet (the next request's first bytes on a kept-alive
        # connection, or a slow client): a whole request in one packet, the usual case, costs no timer.
        if _awaiting_headers(self) and not self.transport.is_closing():
            _arm_header_deadline(self)
        else:
            _disarm_header_deadline(self)

    def connection_lost(self: H11Protocol, exc: Exception | None) -> None:
        _disarm_header_deadline(self)
        lost(self, exc)

    cls.connection_made = connection_made  # type: ignore[method-assign]
    cls.data_received = data_received  # type: ignore[method-assign]
    cls.connection_lost = connection_lost  # type: ignore[method-assign]
    cls.eof_received = _eof_received  # type: ignore[method-assign,assignment]
    cls._imagegen_hardened = True  # type: ignore[attr-defined]


class QuietH11Protocol(H11Protocol):
    """uvicorn's h11 protocol; its own 400 is JSON, after it the app's answer is dropped, request headers have a
    deadline, and a client that half-closes after its request gets the answer."""

    def send_400_response(self, msg: str) -> None:
        """Answer a request uvicorn could not parse (see the module's docstring)."""
        _send_400_quietly(self, msg)


_hardened(QuietH11Protocol)


def http_protocol() -> type[asyncio.Protocol] | str:
    """The ``http`` option for ``uvicorn.Config``."""
    return QuietH11Protocol if AutoHTTPProtocol is H11Protocol else "auto"


def quiet_uvicorn_h11() -> None:
    """Give uvicorn's own h11 protocol :class:`QuietH11Protocol`'s behaviour, for a server
    started by uvicorn's command line (whose protocol class was chosen before the app factory ran).
    Process-wide, so only for a process the API owns: the ``server_app`` factory's."""
    H11Protocol.send_400_response = _send_400_quietly  # type: ignore[method-assign,assignment]
    _hardened(H11Protocol)
