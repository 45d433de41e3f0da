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

Third, an end-of-file from the client during a request. TCP does not say whether the client closed its
connection (a CMS whose own timeout ran out: the usual case) or only shut its sending side and still waits for
the answer (HTTP/1.0-style scripts, ``nc -N``, some health checkers); only writing to it would tell. uvicorn
took every end-of-file for a hang-up and closed the connection, which dropped the half-closing client's answer.
Now the connection stays open for the answer and closes after it, and the request's ``scope["state"]`` says
the client shut its sending side (:data:`~.middleware.CLIENT_SHUT_SENDING`): a generate, whose race costs money,
takes that as nginx and Go's server do, for the client leaving (its race is cancelled: QA found a CMS that
gave up still paying for the whole race, logged a success); every other route answers. A body that stopped
short is uvicorn's 400 at once.

Each answer this layer gives itself (the 400 and the 408) carries an ``X-Request-ID`` and has one request line
in the server log, as the app's answers do (an operator could not correlate them). When the app is already
running for the request (a body uvicorn could not parse), the answer carries the app's id and the app's line,
written when it ends, says the status the client got: one line, one id. Otherwise (a request line or headers
that never made a request) this layer makes the id and writes the line.

``imagegen serve`` passes :class:`QuietH11Protocol` to uvicorn. ``uvicorn --factory ...:server_app`` chose
its protocol before the factory runs, so the factory calls :func:`quiet_uvicorn_h11` instead. Only when
uvicorn would use h11 anyway: with ``httptools`` installed, its ``auto`` choice is kept.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import h11
from uvicorn.protocols.http.auto import AutoHTTPProtocol
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..ids import new_id
from .middleware import CLIENT_SHUT_SENDING, SERVER_REQUEST_ID, SERVER_STATUS, log_request

#: The body of the 400 that uvicorn sends for a request it cannot parse.
INVALID_REQUEST_BODY = b'{"error":"invalid HTTP request","field":null}'

#: Seconds a client has to send a request's headers (see the module's docstring). Real clients, the
#: Cloudflare Worker and nginx included, send them in one packet.
HEADER_TIMEOUT_S = 10.0

_TIMER = "_imagegen_header_timer"
#: ``time.perf_counter()`` when the first bytes of the request whose headers are awaited arrived.
_STARTED = "_imagegen_request_started"
#: The longest request path a request line of this layer's own answers logs (it is the client's text).
_MAX_LOGGED_PATH = 200


def _answer_id(protocol: H11Protocol, status: int) -> str:
    """The ``X-Request-ID`` of this layer's answer. The app's, when it runs (or is about to run) for this request:
    its line then names it and says ``status`` (its own answer goes nowhere). Else "": the caller makes an id
    and writes this layer's own line (:func:`_log_own_answer`)."""
    cycle = protocol.cycle
    if cycle is not None and not cycle.response_complete:
        state = cycle.scope.setdefault("state", {})
        if not cycle.response_started:  # else the app's status line went out, and h11 refuses this one
            state[SERVER_STATUS] = status
        # The app's task may not have run yet (the bad body came in the request's packet): the id is handed to it.
        request_id = state.get("request_id") or state.setdefault(SERVER_REQUEST_ID, new_id())
        return str(request_id)
    return ""


def _request_line(protocol: H11Protocol) -> tuple[str | None, str | None]:
    """Method and path of the request h11 holds unparsed, when its request line is complete and looks like one;
    the query string is never logged (it might carry a token), as for the app's lines."""
    received, _ = protocol.conn.trailing_data
    line = bytes(received).split(b"\r\n", 1)
    if len(line) < 2:
        return None, None
    parts = line[0].split(b" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1].startswith(b"/"):
        return None, None
    path = parts[1].split(b"?", 1)[0][:_MAX_LOGGED_PATH]
    return parts[0].decode("ascii"), path.decode("latin-1")


def _log_own_answer(protocol: H11Protocol, request_id: str, status: int) -> None:
    """The request line of an answer no app saw, in the app's format (see the module's docstring)."""
    method, path = _request_line(protocol)
    started = getattr(protocol, _STARTED, None)
    log_request(
        request_id=request_id,
        method=method,
        path=path,
        status=status,
        started=started if started is not None else time.perf_counter(),
        client=protocol.client[0] if protocol.client else None,
    )


def _send_400_quietly(protocol: H11Protocol, msg: str) -> None:
    """uvicorn's ``send_400_response`` in the API's error shape; after it, the app's answer is dropped."""
    request_id = _answer_id(protocol, 400)
    if not request_id:  # a request line or headers that never made a request: no app saw it
        request_id = new_id()
        _log_own_answer(protocol, request_id, 400)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(INVALID_REQUEST_BODY)).encode()),
        (b"x-request-id", request_id.encode("ascii")),
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


def _headers_408(request_id: str) -> bytes:
    body = b'{"error":"headers: the request headers did not arrive within %g s","field":"headers"}' % HEADER_TIMEOUT_S
    head = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % len(body)
    return head + b"x-request-id: %s\r\nconnection: close\r\n\r\n" % request_id.encode("ascii") + body


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
        # Headers still awaited: no app runs for this request (h11 holds the previous one's answer until done).
        request_id = new_id()
        _log_own_answer(protocol, request_id, 408)
        protocol.transport.write(_headers_408(request_id))
    protocol.transport.close()


def _eof_received(protocol: H11Protocol) -> bool | None:
    """The client closed its connection or shut its sending side (see the module's docstring). With a request
    under way, True keeps the connection open for its answer, and the request's state says so to the app."""
    cycle = protocol.cycle
    if cycle is None or cycle.response_complete:
        return None  # between requests: closed, as uvicorn does
    cycle.keep_alive = False  # the answer ends the connection
    if protocol.conn.their_state is h11.SEND_BODY:
        # The body stopped short: h11 says so at once (uvicorn's 400), rather than the app waiting for the rest.
        protocol.conn.receive_data(b"")
        protocol.handle_events()
    else:
        cycle.scope.setdefault("state", {})[CLIENT_SHUT_SENDING] = True
        cycle.message_event.set()  # wakes an app waiting in receive() for the client to leave
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
        if getattr(self, _STARTED, None) is None and _awaiting_headers(self):
            setattr(self, _STARTED, time.perf_counter())  # the elapsedMs of this layer's own request lines
        received(self, data)
        # Armed only for headers still incomplete after a packet (the next request's first bytes on a kept-alive
        # connection, or a slow client): a whole request in one packet, the usual case, costs no timer.
        if _awaiting_headers(self) and not self.transport.is_closing():
            _arm_header_deadline(self)
        else:
            _disarm_header_deadline(self)
            setattr(self, _STARTED, None)

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
