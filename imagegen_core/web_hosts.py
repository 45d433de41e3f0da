"""Which ``Host`` headers the console answers: DNS rebinding protection for a server bound to loopback.

A web page whose host name an attacker re-points at 127.0.0.1 (DNS rebinding) reaches a loopback server from
the victim's own browser, with its own name in the ``Host`` header, and its own origin, so same-origin rules do
not stop it. Binding to 127.0.0.1 is then no protection; checking the ``Host`` header is: a browser always sends
the name it resolved. The console (``imagegen console``) therefore answers only a loopback address or
``localhost`` (any port), plus the host names the operator lists in ``IMAGEGEN_CONSOLE_HOSTS`` (a console
deliberately put behind a reverse proxy). :class:`HostGuard` applies the rule to every HTTP request and every
websocket upgrade; it is plain ASGI, so the core stays free of Streamlit.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

#: The one name, besides loopback addresses, that always means this machine (browsers resolve it themselves).
LOCALHOST = "localhost"
#: The setting that lists further host names (documented in the README).
HOSTS_VARIABLE = "IMAGEGEN_CONSOLE_HOSTS"
#: What a refused request reads (no detail of the server: the caller may be an attacker's page).
REFUSAL = (
    f"Forbidden: this console answers only on localhost and loopback addresses, or on a host listed in "
    f"{HOSTS_VARIABLE}.\n"
)

#: A DNS host name: dot-separated labels of letters, digits and inner hyphens.
_HOST_NAME = re.compile(r"(?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def host_name(header: str | None) -> str | None:
    """The host name of a ``Host`` header (``name[:port]`` or ``[v6]:port``), lower case without a trailing
    dot, or None when the header is missing or is not ``host[:port]``."""
    if not header or any(c.isspace() or c in "/?#@\\" for c in header):
        return None
    try:
        parts = urlsplit(f"//{header}")
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        return None
    name = (parts.hostname or "").rstrip(".")
    return name or None


def is_loopback(name: str) -> bool:
    """Whether the host name ``name`` (lower case) is ``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if name == LOCALHOST:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_allowed(header: str | None, extra_hosts: Iterable[str] = ()) -> bool:
    """Whether a request with this ``Host`` header may reach the console: loopback, or one of ``extra_hosts``
    (host names as :func:`normalised_host` gives them; the port is not compared)."""
    name = host_name(header)
    return name is not None and (is_loopback(name) or name in set(extra_hosts))


def ascii_host(name: str) -> str:
    """``name`` as browsers send it in ``Host`` and ``Origin`` headers: an international domain name in its
    ASCII (punycode) form, IDNA 2008 with UTS #46 mapping as browsers do (``Bücher.example`` →
    ``xn--bcher-kva.example``); an ASCII name unchanged. ValueError for a name IDNA refuses."""
    if name.isascii():
        return name
    import idna  # httpx's own dependency

    try:
        return str(idna.encode(name, uts46=True).decode("ascii"))
    except idna.IDNAError as exc:
        raise ValueError(f"{name!r} is not a valid international domain name ({exc})") from None


def normalised_host(entry: str) -> str:
    """``entry`` of ``IMAGEGEN_CONSOLE_HOSTS`` as compared: a host name or IP address, lower case, without a
    trailing dot; ValueError saying what an entry must be otherwise (a URL, a port, a pattern)."""
    text = ascii_host(entry.strip().rstrip(".")).lower()  # QA: Bücher.example was refused as no host name
    candidate = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        pass
    if not _HOST_NAME.fullmatch(text):
        raise ValueError(
            f"{entry.strip()!r} is not a host name: list names as a browser's address bar shows them, without"
            " scheme, port or path (console.example.com), comma-separated"
        )
    return text


class HostGuard:
    """ASGI middleware: answers 403 (with a short text) to an HTTP request, and 403 to a websocket upgrade, whose
    ``Host`` header is not allowed by :func:`host_allowed`; passes everything else (and lifespan events) to ``app``."""

    def __init__(self, app: ASGIApp, *, extra_hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.extra_hosts = frozenset(extra_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or host_allowed(_host_header(scope), self.extra_hosts):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            # A close before accept: the server answers the upgrade 403 instead of 101. (The denial-response
            # extension could add a text, but uvicorn's websockets-sansio then logs an error per refusal.)
            await send({"type": "websocket.close", "code": 1008})
            return
        body = REFUSAL.encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 403, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _host_header(scope: Scope) -> str | None:
    hosts = [value for key, value in scope.get("headers", ()) if key == b"host"]
    if len(hosts) != 1:  # none, or two (which one would the application read?): refused
        return None
    try:
        return bytes(hosts[0]).decode("ascii")
    except UnicodeDecodeError:
        return None
