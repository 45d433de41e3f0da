"""Whether an attempt's requests may have reached its provider: what a timed-out attempt costs.

A timeout alone does not say whether the provider got the request. A connection that never opened (a full
listen backlog, a host that drops SYNs) sent nothing, and nothing was billed; a request that went out and was
then waited for may be making an image the provider bills. The shared HTTP client (:func:`make_transport`)
makes each request through a request class that notes, in the attempt making it (a context variable), that one
was started (before its connection is asked for) and that it went out (its connection open, after TCP and
TLS, its headers about to be written). Only an attempt that started requests and sent none is known not to
have reached its provider. Whatever else cannot tell, and a timed-out attempt then costs its price, as it
always did: a client this module did not make (a test's respx or MockTransport client, an embedder's own), and
a provider that started no request through it (a fake, a plugin with an SDK of its own, a chaos drill's hang).

aiohttp is imported on first use only: importing this module costs nothing.
"""

from __future__ import annotations

import functools
import weakref
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    import aiohttp

#: Clients whose transport notes what it sends (made with :func:`make_transport`).
_NOTING: weakref.WeakSet[httpx.AsyncClient] = weakref.WeakSet()

_current: ContextVar[SentRequests | None] = ContextVar("imagegen_sent_requests", default=None)


class SentRequests:
    """What one attempt sent through ``client``; a context manager around the attempt's provider part."""

    __slots__ = ("_token", "known", "sent", "started")

    def __init__(self, client: Any) -> None:
        #: Whether ``client`` can tell (see the module's docstring).
        self.known = client is not None and client in _NOTING
        #: Whether a request was started, and whether one went out (only meaningful when :attr:`known`).
        self.started = self.sent = False
        self._token: Token[SentRequests | None] | None = None

    @property
    def may_have_reached(self) -> bool:
        """Whether a request may have reached the provider: unless requests were started and none went out."""
        return not (self.known and self.started and not self.sent)

    def __enter__(self) -> SentRequests:
        if self.known:
            self._token = _current.set(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None


def note_started() -> None:
    """Note that the running attempt (if any is watching) started a request."""
    watching = _current.get()
    if watching is not None:
        watching.started = True


def note_sent() -> None:
    """Note that the running attempt (if any is watching) sent a request."""
    watching = _current.get()
    if watching is not None:
        watching.sent = True


def noting(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """``client``, registered as one whose transport (:func:`make_transport`) notes what it sends."""
    _NOTING.add(client)
    return client


def make_transport(limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    """httpx_aiohttp's transport, its aiohttp session sending through :func:`_noting_request_class`. A request
    class, not an aiohttp ``TraceConfig``: tracing cost ~20 µs per request (15 %) on a local server, this ~1 µs."""
    from httpx_aiohttp import AiohttpTransport

    def session() -> aiohttp.ClientSession:
        import aiohttp

        # As AiohttpTransport.get_client makes it, with our request class.
        connector = aiohttp.TCPConnector(
            keepalive_timeout=limits.keepalive_expiry,
            ssl=transport.ssl_context,
            limit=limits.max_connections or 0,
        )
        return aiohttp.ClientSession(connector=connector, request_class=_noting_request_class())

    transport = AiohttpTransport(limits=limits, client=session)
    return transport


@functools.cache
def _noting_request_class() -> type[aiohttp.ClientRequest]:
    """aiohttp's request class, noting each request as it is made (before its connection is asked for) and as it
    is sent: once its connection is open (after TCP and TLS), just before its headers are written."""
    import aiohttp

    class NotingRequest(aiohttp.ClientRequest):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            note_started()
            super().__init__(*args, **kwargs)

        async def send(self, conn: Any) -> aiohttp.ClientResponse:
            note_sent()
            return await super().send(conn)

    return NotingRequest
