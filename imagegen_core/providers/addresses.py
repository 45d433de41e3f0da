"""Literal IP addresses in URLs, for the SSRF guard of :class:`~imagegen_core.providers.base.DownloadPolicy`.

A URL's host may spell an address in forms that resolvers accept but a naive check misses (``127.1``,
``0x7f.0.0.1``, ``2130706433``, ``[::ffff:127.0.0.1]``): :func:`literal_ip` reads all of them. Host *names*
are not resolved here — the provider's known-hosts allow-list is what vouches for a name.
"""

from __future__ import annotations

import ipaddress
import re
import socket

_INET_ATON_CHARS = re.compile(r"[0-9a-fA-FxX.]+")


def literal_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``host`` names literally, in any spelling a resolver accepts (``127.0.0.1``, ``[::1]``,
    ``::ffff:127.0.0.1``, and inet_aton's ``127.1``, ``0x7f.1``, ``0177.0.0.1``, ``2130706433``), else None."""
    bare = host.strip("[]")
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    if not bare or not _INET_ATON_CHARS.fullmatch(bare):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(bare))
    except OSError:
        return None


def is_internal_address(host: str) -> bool:
    """Whether ``host`` is a literal IP that is not on the public internet (loopback, private, link-local
    such as the cloud metadata service at 169.254.169.254, shared, reserved, multicast, unspecified)."""
    ip = literal_ip(host)
    if ip is None:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast
