"""SSRF guard on provider output downloads: https only, the provider's known hosts, and never a literal internal
address (loopback, private, link-local — the cloud metadata service —, in any spelling a resolver accepts), at
the first hop or after a redirect; the one exception is the configured test base URL's exact origin."""

from __future__ import annotations

import httpx
import pytest

from imagegen_core.errors import ProviderError
from imagegen_core.images import fetch_image
from imagegen_core.providers.addresses import is_internal_address
from imagegen_core.providers.base import DownloadPolicy

INTERNAL = [
    "127.0.0.1",
    "127.1",  # inet_aton shorthand
    "0x7f.0.0.1",  # hex
    "0177.0.0.1",  # octal
    "2130706433",  # one decimal number
    "0.0.0.0",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",  # carrier-grade NAT
    "169.254.169.254",  # cloud metadata
    "224.0.0.1",  # multicast
    "::1",
    "[::1]",
    "::ffff:127.0.0.1",  # IPv4-mapped IPv6
    "::ffff:a9fe:a9fe",  # 169.254.169.254, mapped and in hex
    "fe80::1",
    "fc00::1",
]


@pytest.mark.parametrize("host", INTERNAL)
def test_internal_addresses_are_recognised_in_every_spelling(host: str) -> None:
    assert is_internal_address(host)


@pytest.mark.parametrize("host", ["8.8.8.8", "2606:4700::1111", "replicate.delivery", "cafe.fal.media", "deadbeef"])
def test_public_addresses_and_host_names_are_not_internal(host: str) -> None:
    """Host names are not resolved here: the known-hosts allow-list is what vouches for them."""
    assert not is_internal_address(host)


@pytest.mark.parametrize("host", INTERNAL)
def test_an_allow_list_naming_an_internal_address_still_refuses_it(host: str) -> None:
    """A third-party provider (or a careless config) listing an internal IP does not open it."""
    literal = f"[{host.strip('[]')}]" if ":" in host else host
    policy = DownloadPolicy(hosts=(host.strip("[]").lower(), literal.lower()))
    assert not policy.allows(f"https://{literal}/out.png")


def test_the_test_origin_is_the_only_internal_address_allowed() -> None:
    policy = DownloadPolicy(hosts=("cdn.example",), test_origin="http://127.0.0.1:8123")
    assert policy.allows("http://127.0.0.1:8123/files/out.png")
    for url in (
        "http://127.0.0.1:8124/files/out.png",  # another port: another service
        "https://127.0.0.1:8123/files/out.png",
        "http://127.1:8123/files/out.png",  # the same address, spelled differently: not the configured origin
        "http://localhost:8123/files/out.png",
        "http://[::1]:8123/files/out.png",
    ):
        assert not policy.allows(url), url
    assert policy.allows("https://cdn.example/out.png")


@pytest.mark.parametrize(
    "location",
    [
        "https://169.254.169.254/latest/meta-data/iam/",
        "https://10.0.0.7/internal.png",
        "https://[::ffff:127.0.0.1]/x.png",
        "https://2130706433/x.png",
        "http://cdn.example/plain-http.png",
    ],
)
async def test_a_redirect_from_an_allowed_host_to_an_internal_address_is_refused_before_connecting(
    location: str,
) -> None:
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        return httpx.Response(302, headers={"location": location})

    policy = DownloadPolicy(hosts=("cdn.example", "10.0.0.7", "169.254.169.254"))
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(ProviderError, match="output URL host not allowed"):
            await fetch_image(client, "https://cdn.example/out.png", policy=policy, provider="p", max_bytes=10_000)
    assert asked == ["https://cdn.example/out.png"]  # the internal target was never contacted
