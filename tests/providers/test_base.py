"""The single httpx → ProviderError translation, Retry-After parsing and the download allow-list."""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import httpx
import pytest

from imagegen_core.errors import FailureClass, ProviderError
from imagegen_core.providers.base import (
    DownloadPolicy,
    ProviderBase,
    ProviderOutput,
    classify_response,
    confirms_use,
    content_rejected,
    expect_mapping,
    json_body,
    json_object,
    looks_like_content_rejection,
    parse_retry_after,
    send,
)

from .fixtures import Harness, harness, problem


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    async with harness() as value:
        yield value


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (problem(401, "Unauthenticated", "You did not pass a valid authentication token"), FailureClass.AUTH),
        (problem(402, "Insufficient credit", "You have insufficient credit to run this model."), FailureClass.BILLING),
        (
            httpx.Response(403, json={"detail": "User is locked. Reason: Exhausted balance. Top up your balance."}),
            FailureClass.BILLING,
        ),
        (
            httpx.Response(403, text="Rate Limit Exceeded", headers={"X-Ratelimit-Remaining": "0"}),
            FailureClass.RATE_LIMITED,
        ),
        (httpx.Response(403, json={"errors": ["Forbidden"]}), FailureClass.AUTH),
        (httpx.Response(429, json={"detail": "Too many requests"}), FailureClass.RATE_LIMITED),
        (httpx.Response(429, json={"error": {"type": "insufficient_quota", "message": "quota"}}), FailureClass.BILLING),
        (
            problem(422, "Input validation failed", "- input.output_format: must be one of"),
            FailureClass.INVALID_REQUEST,
        ),
        (
            httpx.Response(
                422, json={"detail": [{"loc": ["body", "prompt"], "msg": "no", "type": "content_policy_violation"}]}
            ),
            FailureClass.CONTENT_REJECTED,
        ),
        (
            httpx.Response(  # the flag after long validation entries (the description keeps the first three)
                422,
                json={
                    "detail": [
                        *({"loc": ["body", f"f{i}"], "msg": "x" * 200, "type": "value_error"} for i in range(3)),
                        {"loc": ["body", "prompt"], "msg": "flagged", "type": "content_policy_violation"},
                    ]
                },
            ),
            FailureClass.CONTENT_REJECTED,
        ),
        (httpx.Response(409, json={"detail": "Conflict"}), FailureClass.TRANSIENT),  # fal's client retries it
        (httpx.Response(404, json={"detail": "not found"}), FailureClass.INVALID_REQUEST),
        (
            httpx.Response(504, json={"detail": "Request timed out", "error_type": "request_timeout"}),
            FailureClass.TIMEOUT,
        ),
        (
            httpx.Response(503, json={"detail": "x"}, headers={"X-Fal-Error-Type": "runner_connection_timeout"}),
            FailureClass.TIMEOUT,
        ),
        (httpx.Response(500, text="boom"), FailureClass.TRANSIENT),
        (httpx.Response(418, text="teapot"), FailureClass.TRANSIENT),
    ],
)
def test_classify_response_maps_statuses_and_bodies_to_failure_classes(
    response: httpx.Response, expected: FailureClass
) -> None:
    """Each documented provider error lands in the bucket of providers.md §7, keeping the status."""
    error = classify_response("p", response)
    assert error.failure_class is expected
    assert error.http_status == response.status_code
    assert str(error).startswith(f"p: HTTP {response.status_code}")


def test_classify_response_reads_retry_after_header_then_body_hint() -> None:
    """Retry-After wins; without it the seconds in Replicate's throttle message are used."""
    with_header = httpx.Response(429, json={"detail": "slow down"}, headers={"Retry-After": "7"})
    assert classify_response("p", with_header).retry_after_s == 7.0
    body_only = httpx.Response(429, json={"detail": "Request was throttled. Expected available in 1 second."})
    assert classify_response("p", body_only).retry_after_s == 1.0
    newer = httpx.Response(429, json={"detail": "Your rate limit resets in ~30s."})
    assert classify_response("p", newer).retry_after_s == 30.0
    assert classify_response("p", httpx.Response(429)).retry_after_s is None
    # OpenAI says when each limit refills, as Go durations: the exhausted one's reset is the wait (the other
    # one's is the time to refill it completely, minutes for tokens, and says nothing about this 429)
    body = {"error": {"type": "requests", "code": "rate_limit_exceeded", "message": "Rate limit reached"}}
    resets = {"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}
    requests_out = httpx.Response(
        429,
        json=body,
        headers={**resets, "x-ratelimit-remaining-requests": "0", "x-ratelimit-remaining-tokens": "149000"},
    )
    assert classify_response("p", requests_out).retry_after_s == 1.0
    tokens_out = httpx.Response(
        429,
        json=body,
        headers={**resets, "x-ratelimit-remaining-requests": "12", "x-ratelimit-remaining-tokens": "0"},
    )
    assert classify_response("p", tokens_out).retry_after_s == 360.0
    no_counts = httpx.Response(
        429, json=body, headers={"x-ratelimit-reset-requests": "12s", "x-ratelimit-reset-tokens": "1m0.5s"}
    )
    assert classify_response("p", no_counts).retry_after_s == 12.0
    garbled = httpx.Response(429, headers={"x-ratelimit-reset-requests": "soon"})
    assert classify_response("p", garbled).retry_after_s is None


def test_classify_response_truncates_long_bodies() -> None:
    """Error messages carry at most a few hundred characters of the provider's body."""
    error = classify_response("p", httpx.Response(500, text="x" * 5000))
    assert len(str(error)) < 400


def test_parse_retry_after_accepts_seconds_and_http_dates() -> None:
    """Delta-seconds and HTTP dates both work; garbage and absence give None; the past gives 0."""
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-3") is None  # not delta-seconds
    assert parse_retry_after("inf") is None and parse_retry_after("nan") is None
    now = 1_700_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30.0)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0


@pytest.fixture
def new_york_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time zone set to UTC-5/-4, as on a server that is not kept on UTC."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_parse_retry_after_reads_every_http_date_form_as_gmt(new_york_time: None) -> None:
    """HTTP dates are always GMT, and a recipient must read all three forms (RFC 9110 §5.6.7), also the asctime
    one that names no zone: it is not the server's local time (which would turn a 30 s wait into 5 h 30 s)."""
    now = 1_700_000_000.0
    when = datetime.fromtimestamp(now + 30, UTC)
    forms = [
        email.utils.formatdate(now + 30, usegmt=True),  # IMF-fixdate: Tue, 14 Nov 2023 22:13:50 GMT
        when.strftime("%A, %d-%b-%y %H:%M:%S GMT"),  # obsolete RFC 850 form
        when.strftime("%a %b ") + f"{when.day:>2}" + when.strftime(" %H:%M:%S %Y"),  # obsolete asctime form
        email.utils.formatdate(now + 30).replace("+0000", "-0000"),  # RFC 5322's "UTC, zone unknown"
    ]
    for form in forms:
        assert parse_retry_after(form, now=now) == pytest.approx(30.0), form


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://replicate.delivery/xezq/abc/out-0.webp", True),
        ("https://pbxt.replicate.delivery/abc/out-0.png", True),
        ("https://REPLICATE.DELIVERY/abc.webp", True),
        ("http://replicate.delivery/abc.webp", False),
        ("https://evil.com/abc.webp", False),
        ("https://evilreplicate.delivery/abc.webp", False),
        ("https://replicate.delivery.evil.com/abc.webp", False),
        ("https://replicate.delivery@evil.com/abc.webp", False),
        ("https://user:pw@replicate.delivery/abc.webp", False),
        ("ftp://replicate.delivery/abc.webp", False),
        ("http://127.0.0.1:8123/abc.webp", False),
        ("not a url", False),
    ],
)
def test_download_policy_allows_only_https_on_known_hosts(url: str, allowed: bool) -> None:
    """Exact hosts and ``*.suffix`` wildcards over https; no userinfo tricks, no look-alike hosts."""
    assert DownloadPolicy(hosts=("replicate.delivery", "*.replicate.delivery")).allows(url) is allowed


def test_download_policy_test_origin_allows_exactly_that_origin() -> None:
    """An overridden base URL's origin is allowed over http, but not other ports or schemes."""
    policy = DownloadPolicy(hosts=("fal.media",), test_origin="http://127.0.0.1:8123")
    assert policy.allows("http://127.0.0.1:8123/files/a.jpg")
    assert not policy.allows("http://127.0.0.1:8124/files/a.jpg")
    assert not policy.allows("https://127.0.0.1:8123/files/a.jpg")
    assert policy.allows("https://fal.media/files/a.jpg")


class _Demo(ProviderBase):
    kind = "demo"
    output_hosts = ("cdn.example",)
    default_base_url = "https://api.example"


def test_provider_base_hides_the_key_and_derives_the_test_origin() -> None:
    """repr never shows the key; an override sets base_url and opens its origin for downloads."""
    default = _Demo(api_key="sk-secret-123")
    assert "sk-secret-123" not in repr(default)
    assert default.base_url == "https://api.example" and default.name == "demo" and default.configured
    assert not _Demo().configured
    local = _Demo(name="mine", base_url="http://127.0.0.1:8123/")
    assert local.base_url == "http://127.0.0.1:8123"
    assert local.download_policy.allows("http://127.0.0.1:8123/out.png")
    assert not default.download_policy.allows("http://127.0.0.1:8123/out.png")


async def test_send_turns_timeouts_into_timeout_and_connect_errors_into_transient(h: Harness) -> None:
    """httpx exceptions never escape send; their class decides the failure class."""
    h.router.get("https://api.example/slow").mock(side_effect=httpx.ReadTimeout("slow"))
    h.router.get("https://api.example/down").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(ProviderError) as slow:
        await send("p", h.client, "GET", "https://api.example/slow")
    assert slow.value.failure_class is FailureClass.TIMEOUT
    with pytest.raises(ProviderError) as down:
        await send("p", h.client, "GET", "https://api.example/down")
    assert down.value.failure_class is FailureClass.TRANSIENT


async def test_send_lets_listed_statuses_through(h: Harness) -> None:
    """``ok_statuses`` hands chosen non-2xx answers back to the caller; others raise."""
    h.router.get("https://api.example/gone").mock(return_value=httpx.Response(404, json={"detail": "gone"}))
    response = await send("p", h.client, "GET", "https://api.example/gone", ok_statuses=(404,))
    assert response.status_code == 404
    with pytest.raises(ProviderError) as err:
        await send("p", h.client, "GET", "https://api.example/gone")
    assert err.value.failure_class is FailureClass.INVALID_REQUEST


def test_json_body_expect_mapping_and_json_object_treat_garbage_as_transient() -> None:
    """A 200 with malformed JSON, or JSON of the wrong shape, is the provider's transient fault."""
    with pytest.raises(ProviderError) as bad:
        json_body("p", httpx.Response(200, text="<html>oops"))
    assert bad.value.failure_class is FailureClass.TRANSIENT
    with pytest.raises(ProviderError) as shape:
        expect_mapping("p", [1, 2], "prediction")
    assert shape.value.failure_class is FailureClass.TRANSIENT
    assert expect_mapping("p", {"a": 1}, "x") == {"a": 1}
    with pytest.raises(ProviderError, match=r"^p: unexpected prediction \(not a JSON object\)$") as listed:
        json_object("p", httpx.Response(200, json=[1]), "prediction")
    assert listed.value.failure_class is FailureClass.TRANSIENT
    with pytest.raises(ProviderError, match="malformed JSON in HTTP 200"):
        json_object("p", httpx.Response(200, text="<html>oops"), "prediction")
    assert json_object("p", httpx.Response(200, json={"a": 1}), "x") == {"a": 1}


def test_content_rejection_markers() -> None:
    """Moderation texts seen from Replicate are recognised; ordinary failures are not."""
    assert looks_like_content_rejection("All generated images contained NSFW content")
    assert looks_like_content_rejection("The input or output was flagged as sensitive. (E005)")
    assert not looks_like_content_rejection("CUDA out of memory")
    assert content_rejected("p", "nsfw").failure_class is FailureClass.CONTENT_REJECTED


def test_provider_output_needs_exactly_one_of_url_or_data() -> None:
    """An output is either a URL or inline bytes, never both or neither."""
    assert ProviderOutput(url="https://x").url == "https://x"
    assert ProviderOutput(data=b"x").data == b"x"
    with pytest.raises(ValueError):
        ProviderOutput()
    with pytest.raises(ValueError):
        ProviderOutput(url="https://x", data=b"x")


@pytest.mark.parametrize("status", [401, 402])
def test_an_auth_or_billing_answer_with_a_body_nested_thousands_deep_keeps_its_class(status: int) -> None:
    """QA: ``[[[[…]]]]`` 100 000 deep in a 401's body raised RecursionError in the description; the race took it
    for a transient failure (retried, no status, the breaker not tripped at once)."""
    deep = "[" * 100_000 + "]" * 100_000
    error = classify_response("p", httpx.Response(status, text=deep, headers={"Content-Type": "application/json"}))
    expected = FailureClass.AUTH if status == 401 else FailureClass.BILLING
    assert (error.failure_class, error.http_status) == (expected, status)
    assert len(str(error)) < 400
    fal_422 = classify_response("p", httpx.Response(422, text=deep))  # the content-policy check parses it too
    assert fal_422.failure_class is FailureClass.INVALID_REQUEST
    with pytest.raises(ProviderError, match="malformed JSON in HTTP 200") as success:
        json_body("p", httpx.Response(200, text=deep))
    assert success.value.failure_class is FailureClass.TRANSIENT


@pytest.mark.parametrize(
    "number", [float("inf"), float("-inf"), float("nan"), 10**400], ids=["inf", "-inf", "nan", "10**400"]
)
@pytest.mark.parametrize(
    ("provider", "key"),
    [
        ("replicate", "wait_s"),
        ("replicate", "poll_interval_s"),
        ("fal", "poll_interval_s"),
        ("fake", "latencyMs"),
        ("fake", "retryAfterS"),
    ],
)
def test_provider_number_options_refuse_inf_and_nan(provider: str, key: str, number: float) -> None:
    """Regression (QA): inf passed ``value <= 0`` and NaN every comparison, so a Replicate ``wait_s`` of 1e400
    (or a fake ``latencyMs``) was accepted and every call then waited forever or failed; each provider's own
    check refuses it too, not only the document's."""
    from imagegen_core.errors import FieldProblem
    from imagegen_core.providers.fake import FakeProvider
    from imagegen_core.providers.fal import FalProvider
    from imagegen_core.providers.replicate import ReplicateProvider

    kinds: dict[str, type[ProviderBase]] = {
        "replicate": ReplicateProvider,
        "fal": FalProvider,
        "fake": FakeProvider,
    }
    with pytest.raises(FieldProblem) as info:
        kinds[provider].check_settings(None, {key: number})
    assert info.value.field == f"options.{key}"
    shown = repr(number) if isinstance(number, float) else "an integer of 401 digits"
    assert info.value.message.endswith(f"got {shown}")


def test_confirms_use_is_false_only_for_provider_bases_own_no_op() -> None:
    from imagegen_core.chaos import ChaosProvider
    from imagegen_core.providers.fake import FakeProvider
    from imagegen_core.providers.unsplash import UnsplashProvider

    class OwnConfirmation(FakeProvider):
        async def confirm_use(self, output: ProviderOutput, ctx: object) -> None:
            return None

    class NotABase:  # a plugin written to the Provider protocol alone
        async def confirm_use(self, output: ProviderOutput, ctx: object) -> None:
            return None

    assert not confirms_use(FakeProvider(name="f"))
    assert confirms_use(OwnConfirmation(name="o"))
    assert confirms_use(UnsplashProvider.__new__(UnsplashProvider))
    assert confirms_use(NotABase())  # type: ignore[arg-type]
    assert confirms_use(ChaosProvider.__new__(ChaosProvider))  # it hands on to the provider it wraps
