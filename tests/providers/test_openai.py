"""OpenAI Images API provider against respx routes in the documented wire format (providers.md §4.1)."""

from __future__ import annotations

import base64
import json

import pytest

from imagegen_core.errors import FailureClass, ProviderError
from imagegen_core.providers.openai import OpenAIProvider, nearest_size
from tests.providers.fixtures import Harness, job

URL = "https://api.openai.com/v1/images/generations"
PNG = b"\x89PNG\r\n\x1a\nfake-but-base64-safe"


@pytest.fixture
def provider() -> OpenAIProvider:
    return OpenAIProvider(api_key="sk-test-key")


async def test_success_sends_the_documented_body_and_decodes_b64_json(provider: OpenAIProvider, h: Harness) -> None:
    route = h.router.post(URL).respond(
        200, json={"created": 1, "data": [{"b64_json": base64.b64encode(PNG).decode()}], "usage": {"total_tokens": 9}}
    )
    output = await provider.generate(job(width=1600, height=900, model="gpt-image-1"), h.ctx)
    assert output.data == PNG and output.model == "gpt-image-1"
    request = route.calls.last.request
    assert request.headers["Authorization"] == "Bearer sk-test-key"
    assert json.loads(request.content) == {
        "model": "gpt-image-1",
        "n": 1,
        "size": "1536x1024",
        "prompt": "lighthouse at dusk, editorial photo",
    }


async def test_an_openai_compatible_server_answering_with_a_url(provider: OpenAIProvider, h: Harness) -> None:
    h.router.post(URL).respond(200, json={"created": 1, "data": [{"url": "https://x.blob.core.windows.net/i.png"}]})
    output = await provider.generate(job(), h.ctx)
    assert output.url == "https://x.blob.core.windows.net/i.png"
    assert provider.download_policy.allows(output.url)


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        (
            401,
            {"error": {"message": "Incorrect API key", "type": "invalid_request_error", "code": "invalid_api_key"}},
            {},
            FailureClass.AUTH,
        ),
        (
            429,
            {
                "error": {
                    "message": "You exceeded your current quota",
                    "type": "insufficient_quota",
                    "code": "insufficient_quota",
                }
            },
            {},
            FailureClass.BILLING,
        ),
        (
            429,
            {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}},
            {"Retry-After": "7"},
            FailureClass.RATE_LIMITED,
        ),
        (
            400,
            {
                "error": {
                    "message": "Your request was rejected by the safety system",
                    "type": "invalid_request_error",
                    "code": "moderation_blocked",
                }
            },
            {},
            FailureClass.CONTENT_REJECTED,
        ),
        (
            400,
            {"error": {"message": "Invalid size", "type": "invalid_request_error", "param": "size", "code": None}},
            {},
            FailureClass.INVALID_REQUEST,
        ),
        (503, {"error": {"message": "overloaded", "type": "server_error"}}, {}, FailureClass.TRANSIENT),
    ],
)
async def test_errors_are_classified(
    provider: OpenAIProvider, h: Harness, status: int, body: dict, headers: dict, expected: FailureClass
) -> None:
    h.router.post(URL).respond(status, json=body, headers=headers)
    with pytest.raises(ProviderError) as info:
        await provider.generate(job(), h.ctx)
    assert info.value.failure_class is expected and info.value.http_status == status
    if headers:
        assert info.value.retry_after_s == 7


async def test_malformed_answers_are_transient(provider: OpenAIProvider, h: Harness) -> None:
    h.router.post(URL).respond(200, json={"created": 1, "data": []})
    with pytest.raises(ProviderError) as info:
        await provider.generate(job(), h.ctx)
    assert info.value.failure_class is FailureClass.TRANSIENT


async def test_without_a_key_nothing_is_sent(h: Harness) -> None:
    route = h.router.post(URL).respond(200, json={})
    with pytest.raises(ProviderError) as info:
        await OpenAIProvider().generate(job(), h.ctx)
    assert info.value.failure_class is FailureClass.AUTH and "OPENAI_API_KEY" in str(info.value)
    assert not route.called


def test_nearest_size_follows_the_aspect_ratio() -> None:
    assert nearest_size(1200, 630) == "1536x1024"
    assert nearest_size(800, 1000) == "1024x1536"
    assert nearest_size(500, 500) == "1024x1024"


@pytest.mark.parametrize("model", ["   ", "", "gpt image 1", "gpt-image-1?x=1", "../gpt-image-1", "gpt-image-1\n"])
async def test_a_model_name_outside_the_format_fails_the_call_without_a_request(
    provider: OpenAIProvider, h: Harness, model: str
) -> None:
    with pytest.raises(ProviderError) as info:
        await provider.generate(job(model=model), h.ctx)
    assert info.value.failure_class is FailureClass.INVALID_REQUEST
    assert str(info.value).startswith("openai: model: must be an OpenAI model name such as 'gpt-image-1'")
    assert not h.router.calls


@pytest.mark.parametrize("model", ["dall-e-3", "gpt-image-1.5", "black-forest-labs/FLUX.1-schnell"])
async def test_documented_model_names_are_sent_as_they_are(provider: OpenAIProvider, h: Harness, model: str) -> None:
    route = h.router.post(URL).respond(200, json={"created": 1, "data": [{"b64_json": base64.b64encode(PNG).decode()}]})
    assert (await provider.generate(job(model=model), h.ctx)).model == model
    assert json.loads(route.calls.last.request.content)["model"] == model


async def test_a_billing_hard_limit_is_billing_not_our_invalid_request(provider: OpenAIProvider, h: Harness) -> None:
    """OpenAI answers an account past its spending limit with a *400* (seen on the Images API through 2025), not
    the 429 insufficient_quota: it is a billing failure that must open the breaker (providers.md §0.5, §7), not an
    invalid request that blames our config and leaves the provider in every race."""
    body = {
        "error": {
            "code": "billing_hard_limit_reached",
            "message": "Billing hard limit has been reached",
            "param": None,
            "type": "invalid_request_error",
        }
    }
    h.router.post(URL).respond(400, json=body)
    with pytest.raises(ProviderError) as info:
        await provider.generate(job(), h.ctx)
    assert info.value.failure_class is FailureClass.BILLING and info.value.http_status == 400


async def test_a_b64_json_answer_over_the_limit_is_refused_before_it_is_decoded(
    provider: OpenAIProvider, h: Harness
) -> None:
    """``limits.maxDownloadBytes`` (the job's ``max_image_bytes``) holds for inline images too (QA), and a
    base64 text longer than that many bytes can take is refused before being decoded into another copy: here
    the text is not even base64, which decoding would have said."""
    image = PNG * 50  # 1400 bytes: 1868 base64 characters
    exactly = base64.b64encode(image).decode()
    route = h.router.post(URL)
    route.respond(200, json={"created": 1, "data": [{"b64_json": "!" * (len(exactly) + 1)}]})
    with pytest.raises(ProviderError) as err:
        await provider.generate(job(max_image_bytes=len(image)), h.ctx)
    assert str(err.value) == f"openai: image larger than {len(image)} bytes, over limits.maxDownloadBytes"
    assert err.value.failure_class is FailureClass.INVALID_REQUEST and err.value.billed  # answered, so charged
    route.respond(200, json={"created": 1, "data": [{"b64_json": exactly}]})
    assert (await provider.generate(job(max_image_bytes=len(image)), h.ctx)).data == image
    with pytest.raises(ProviderError, match="larger than 1399 bytes"):
        await provider.generate(job(max_image_bytes=len(image) - 1), h.ctx)
