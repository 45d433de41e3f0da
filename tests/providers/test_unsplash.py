"""UnsplashProvider against respx routes shaped like api.unsplash.com (providers.md §3)."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from imagegen_core.errors import FailureClass, ProviderError
from imagegen_core.providers.base import ProviderOutput
from imagegen_core.providers.unsplash import UnsplashProvider, orientation, search_query

from .fixtures import UNSPLASH_API, UNSPLASH_RAW, Harness, job, unsplash_photo, unsplash_search

SEARCH = f"{UNSPLASH_API}/search/photos"
PING = f"{UNSPLASH_API}/photos/Abc123xyz/download"
KEY = "unsplash-access-key"


@pytest.fixture
def provider() -> UnsplashProvider:
    return UnsplashProvider(api_key=KEY, app_name="newsroom")


async def _fails(provider: UnsplashProvider, h: Harness, **job_fields: object) -> ProviderError:
    with pytest.raises(ProviderError) as err:
        await provider.generate(job(**job_fields), h.ctx)
    assert KEY not in str(err.value)
    assert str(err.value).startswith("unsplash: ")
    return err.value


async def test_search_request_headers_and_params(provider: UnsplashProvider, h: Harness) -> None:
    """Client-ID auth, pinned Accept-Version, keyword as query, safe content filter and landscape orientation."""
    route = h.router.get(SEARCH).respond(200, json=unsplash_search(unsplash_photo()))
    await provider.generate(job(keyword="lighthouse"), h.ctx)
    request = route.calls.last.request
    assert request.headers["Authorization"] == f"Client-ID {KEY}"
    assert request.headers["Accept-Version"] == "v1"
    assert dict(request.url.params) == {
        "query": "lighthouse",
        "per_page": "10",
        "orientation": "landscape",
        "content_filter": "high",
        "order_by": "relevant",
    }


async def test_first_result_becomes_a_resized_webp_hotlink(provider: UnsplashProvider, h: Harness) -> None:
    """The result is urls.raw extended with imgix resize params (raw's own query kept), never a copy."""
    h.router.get(SEARCH).respond(200, json=unsplash_search(unsplash_photo(), unsplash_photo("Zzz999", "Other")))
    out = await provider.generate(job(width=1600, height=900), h.ctx)
    assert out.hotlink and out.content_type == "image/webp" and out.provider_ref == "Abc123xyz"
    assert out.url is not None and out.url.startswith(UNSPLASH_RAW + "&")
    query = parse_qs(urlsplit(out.url).query)
    assert query["ixid"] == ["TESTIXID"]
    assert {k: v[0] for k, v in query.items() if k not in ("ixid", "ixlib")} == {
        "w": "1600",
        "h": "900",
        "fit": "crop",
        "crop": "entropy",
        "fm": "webp",
        "q": "80",
    }
    assert provider.download_policy.allows(out.url)
    assert out.use_ping_url == f"{PING}?ixid=TESTIXID"


async def test_attribution_links_carry_utm_parameters(provider: UnsplashProvider, h: Harness) -> None:
    """Photographer, photo and Unsplash links all carry utm_source=<app_name>&utm_medium=referral."""
    h.router.get(SEARCH).respond(200, json=unsplash_search(unsplash_photo()))
    out = await provider.generate(job(), h.ctx)
    credit = out.attribution
    assert credit is not None
    utm = "utm_source=newsroom&utm_medium=referral"
    assert credit.photographer_name == "Ada Lens"
    assert credit.photographer_url == f"https://unsplash.com/@adalens?{utm}"
    assert credit.source_name == "Unsplash"
    assert credit.source_url == f"https://unsplash.com/?{utm}"
    assert credit.photo_url == f"https://unsplash.com/photos/Abc123xyz?{utm}"
    assert credit.text == "Photo by Ada Lens on Unsplash"


@pytest.mark.parametrize(
    "link",
    [
        "javascript:alert(document.cookie)//",
        "data:text/html,<script>alert(1)</script>",
        "https://evil.example/@adalens",
        "https://unsplash.com.evil.example/@adalens",
        "http://unsplash.com/@adalens",
        "//evil.example/@adalens",
        ["not", "a", "string"],
    ],
)
async def test_attribution_links_only_ever_lead_to_unsplash(
    provider: UnsplashProvider, h: Harness, link: object
) -> None:
    """The credit links are published next to the image (the console and CMSes render them as links): whatever
    a hostile or broken answer puts in user.links.html or links.html, they lead to https://unsplash.com, the
    profile and photo page being rebuilt from the username and photo id (providers.md §3.6)."""
    photo = unsplash_photo()
    photo["user"]["links"]["html"] = link
    photo["links"]["html"] = link
    h.router.get(SEARCH).respond(200, json=unsplash_search(photo))
    credit = (await provider.generate(job(), h.ctx)).attribution
    assert credit is not None
    utm = "utm_source=newsroom&utm_medium=referral"
    assert credit.photographer_url == f"https://unsplash.com/@adalens?{utm}"
    assert credit.photo_url == f"https://unsplash.com/photos/Abc123xyz?{utm}"


async def test_a_username_cannot_steer_the_rebuilt_profile_link(provider: UnsplashProvider, h: Harness) -> None:
    """A profile link rebuilt from the username stays one path segment on unsplash.com."""
    photo = unsplash_photo()
    photo["user"] = {"name": "Ada Lens", "username": "../../evil.example?x=1#"}
    h.router.get(SEARCH).respond(200, json=unsplash_search(photo))
    credit = (await provider.generate(job(), h.ctx)).attribution
    assert credit is not None
    parts = urlsplit(credit.photographer_url)
    assert (parts.scheme, parts.netloc, parts.fragment) == ("https", "unsplash.com", "")
    assert parts.path.count("/") == 1 and parse_qs(parts.query) == {
        "utm_source": ["newsroom"],
        "utm_medium": ["referral"],
    }


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [(1600, 900, "landscape"), (900, 1600, "portrait"), (1000, 1000, "squarish"), (1100, 1000, "squarish")],
)
def test_orientation_follows_the_target_ratio(width: int, height: int, expected: str) -> None:
    """Wider than 1.2 is landscape, narrower than 0.83 portrait, in between squarish."""
    assert orientation(width, height) == expected


def test_long_prompts_are_trimmed_at_a_word_boundary() -> None:
    """Queries stay within 100 characters without half words; whitespace is normalised."""
    prompt = "a " + "lighthouse " * 20
    query = search_query(prompt)
    assert len(query) <= 100 and query.endswith("lighthouse")
    assert search_query("  misty   harbour \n") == "misty harbour"


async def test_prompt_is_the_query_without_a_keyword(provider: UnsplashProvider, h: Harness) -> None:
    """Without a keyword the (trimmed) prompt is searched, with portrait orientation for tall sizes."""
    route = h.router.get(SEARCH).respond(200, json=unsplash_search(unsplash_photo()))
    await provider.generate(job(width=800, height=1200), h.ctx)
    params = route.calls.last.request.url.params
    assert params["query"] == "lighthouse at dusk, editorial photo"
    assert params["orientation"] == "portrait"


async def test_no_results_is_invalid_request(provider: UnsplashProvider, h: Harness) -> None:
    """An empty result list is nobody's fault: INVALID_REQUEST naming the query (no breaker hit)."""
    h.router.get(SEARCH).respond(200, json=unsplash_search())
    err = await _fails(provider, h, keyword="qwxzv")
    assert err.failure_class is FailureClass.INVALID_REQUEST
    assert "no photo matches 'qwxzv'" in str(err)


@pytest.mark.parametrize(
    ("response", "expected", "retry_after"),
    [
        (httpx.Response(401, json={"errors": ["OAuth error: The access token is invalid"]}), FailureClass.AUTH, None),
        (
            httpx.Response(
                403, text="Rate Limit Exceeded", headers={"X-Ratelimit-Limit": "50", "X-Ratelimit-Remaining": "0"}
            ),
            FailureClass.RATE_LIMITED,
            None,
        ),
        (
            httpx.Response(403, json={"errors": ["Rate Limit Exceeded"]}, headers={"X-Ratelimit-Remaining": "0"}),
            FailureClass.RATE_LIMITED,
            None,
        ),
        (
            httpx.Response(429, json={"errors": ["Too many"]}, headers={"Retry-After": "7"}),
            FailureClass.RATE_LIMITED,
            7.0,
        ),
        (httpx.Response(400, json={"errors": ["query is missing"]}), FailureClass.INVALID_REQUEST, None),
        (httpx.Response(503, json={"errors": ["Service unavailable"]}), FailureClass.TRANSIENT, None),
        (httpx.Response(200, text="{oops"), FailureClass.TRANSIENT, None),
        (httpx.Response(200, json={"total": 0}), FailureClass.TRANSIENT, None),
    ],
)
async def test_search_errors_are_classified(
    provider: UnsplashProvider, h: Harness, response: httpx.Response, expected: FailureClass, retry_after: float | None
) -> None:
    """{"errors": [...]} bodies map to providers.md §7; exhausted quota is a 403 with remaining 0."""
    h.router.get(SEARCH).mock(return_value=response)
    err = await _fails(provider, h)
    assert err.failure_class is expected
    assert err.retry_after_s == retry_after


async def test_timeout_and_connection_errors(provider: UnsplashProvider, h: Harness) -> None:
    """A read timeout is TIMEOUT; a refused connection is TRANSIENT."""
    route = h.router.get(SEARCH)
    route.side_effect = httpx.ReadTimeout("slow")
    assert (await _fails(provider, h)).failure_class is FailureClass.TIMEOUT
    route.side_effect = httpx.ConnectError("refused")
    assert (await _fails(provider, h)).failure_class is FailureClass.TRANSIENT


async def test_missing_key_is_auth(h: Harness) -> None:
    """Without an access key nothing is sent and the attempt fails as AUTH."""
    route = h.router.get(SEARCH).respond(200, json=unsplash_search(unsplash_photo()))
    assert (await _fails(UnsplashProvider(), h)).failure_class is FailureClass.AUTH
    assert route.call_count == 0


async def test_confirm_use_pings_download_location(provider: UnsplashProvider, h: Harness) -> None:
    """Using a photo GETs its download_location (ixid kept) with the Client-ID header."""
    h.router.get(SEARCH).respond(200, json=unsplash_search(unsplash_photo()))
    ping = h.router.get(PING).respond(200, json={"url": "https://images.unsplash.com/photo-1?ixid=TESTIXID"})
    out = await provider.generate(job(), h.ctx)
    assert ping.call_count == 0  # only when used
    await provider.confirm_use(out, h.ctx)
    request = ping.calls.last.request
    assert request.url.params["ixid"] == "TESTIXID"
    assert request.headers["Authorization"] == f"Client-ID {KEY}"
    assert request.headers["Accept-Version"] == "v1"


@pytest.mark.parametrize("failure", [httpx.Response(403, text="Rate Limit Exceeded"), httpx.ConnectError("down")])
async def test_failed_ping_never_fails_the_request(
    provider: UnsplashProvider, h: Harness, failure: httpx.Response | Exception
) -> None:
    """Errors from the download ping are swallowed."""
    route = h.router.get(PING)
    if isinstance(failure, Exception):
        route.side_effect = failure
    else:
        route.return_value = failure
    await provider.confirm_use(ProviderOutput(url=UNSPLASH_RAW, hotlink=True, use_ping_url=PING), h.ctx)
    assert route.call_count == 1


async def test_ping_cancellation_propagates(provider: UnsplashProvider, h: Harness) -> None:
    """Cancelling confirm_use cancels it: CancelledError is not swallowed like an HTTP failure."""
    entered = asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        entered.set()
        await asyncio.Future()
        raise AssertionError("unreachable")

    h.router.get(PING).mock(side_effect=hang)
    task = asyncio.create_task(
        provider.confirm_use(ProviderOutput(url=UNSPLASH_RAW, hotlink=True, use_ping_url=PING), h.ctx)
    )
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_ping_is_only_sent_to_the_api_host(provider: UnsplashProvider, h: Harness) -> None:
    """The key is never sent elsewhere: a foreign or missing ping URL is skipped."""
    evil = h.router.get(host="evil.example").respond(200)
    await provider.confirm_use(ProviderOutput(url=UNSPLASH_RAW, use_ping_url="https://evil.example/ping"), h.ctx)
    await provider.confirm_use(ProviderOutput(url=UNSPLASH_RAW), h.ctx)
    assert evil.call_count == 0


async def test_base_url_override_sends_to_that_host(h: Harness) -> None:
    """With IMAGEGEN_UNSPLASH_BASE_URL searches and pings go to that origin, which downloads may use."""
    local = "http://127.0.0.1:8123"
    provider = UnsplashProvider(api_key=KEY, base_url=local)
    search = h.router.get(f"{local}/search/photos").respond(200, json=unsplash_search(unsplash_photo(api=local)))
    ping = h.router.get(f"{local}/photos/Abc123xyz/download").respond(200, json={"url": "x"})
    out = await provider.generate(job(), h.ctx)
    await provider.confirm_use(out, h.ctx)
    assert search.call_count == 1 and ping.call_count == 1
    assert provider.download_policy.allows(f"{local}/photo.webp")
    default = UnsplashProvider(api_key=KEY).download_policy
    assert not default.allows(f"{local}/photo.webp")
    assert default.allows(UNSPLASH_RAW) and not default.allows("https://plus.unsplash.com/photo.webp")
