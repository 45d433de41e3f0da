"""StabilityProvider against respx routes in Stability's v2beta wire format: a multipart POST answered with the
image's bytes and a ``finish-reason`` header, or ``{"id", "name", "errors"}`` (providers.md §4.3)."""

from __future__ import annotations

import asyncio
import base64

import httpx
import pytest

from imagegen_core.errors import FailureClass, FieldProblem, ProviderError
from imagegen_core.providers.stability import StabilityProvider

from .fixtures import STABILITY_API, Harness, job, sent_form, stability_error

KEY = "sk-stability-test-5e6f7a8b"
CORE = f"{STABILITY_API}/v2beta/stable-image/generate/core"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def image(finish: str = "SUCCESS", seed: str = "4242", content_type: str = "image/png") -> httpx.Response:
    return httpx.Response(
        200, content=PNG, headers={"content-type": content_type, "finish-reason": finish, "seed": seed}
    )


@pytest.fixture
def provider() -> StabilityProvider:
    return StabilityProvider(api_key=KEY)


async def _fails(provider: StabilityProvider, h: Harness, **job_fields: object) -> ProviderError:
    with pytest.raises(ProviderError) as err:
        await provider.generate(job(**job_fields), h.ctx)
    assert KEY not in str(err.value) and str(err.value).startswith("stability: ")
    return err.value


async def test_success_posts_a_multipart_form_and_returns_the_bytes(provider: StabilityProvider, h: Harness) -> None:
    route = h.router.post(CORE).mock(return_value=image())
    out = await provider.generate(job(seed=7), h.ctx)
    assert (out.data, out.content_type, out.model, out.seed, out.url) == (PNG, "image/png", "core", 4242, None)
    request = route.calls.last.request
    assert request.headers["Authorization"] == f"Bearer {KEY}" and request.headers["Accept"] == "image/*"
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert sent_form(request) == {
        "prompt": "lighthouse at dusk, editorial photo",
        "aspect_ratio": "16:9",  # 1600x900
        "output_format": "png",
        "seed": "7",
    }
    assert h.spawned == [] and h.sleeps == []


@pytest.mark.parametrize(
    ("model", "url_service", "model_field"),
    [("ultra", "ultra", None), ("sd3", "sd3", None), ("sd3.5-large", "sd3", "sd3.5-large")],
)
async def test_each_service_and_sd3_model_is_posted_where_it_belongs(
    provider: StabilityProvider, h: Harness, model: str, url_service: str, model_field: str | None
) -> None:
    route = h.router.post(f"{STABILITY_API}/v2beta/stable-image/generate/{url_service}").mock(return_value=image())
    assert (await provider.generate(job(model=model), h.ctx)).model == model
    assert sent_form(route.calls.last.request).get("model") == model_field


async def test_input_fields_are_sent_as_form_text(provider: StabilityProvider, h: Harness) -> None:
    route = h.router.post(CORE).mock(return_value=image())
    options = {"input": {"style_preset": "photographic", "negative_prompt": "text, watermark", "cfg_scale": 4.5}}
    await provider.generate(job(options=options), h.ctx)
    form = sent_form(route.calls.last.request)
    assert (form["style_preset"], form["negative_prompt"], form["cfg_scale"]) == (
        "photographic",
        "text, watermark",
        "4.5",
    )


@pytest.mark.parametrize(
    ("width", "height", "ratio"),
    [
        (1600, 900, "16:9"),
        (1200, 630, "16:9"),
        (1000, 1000, "1:1"),
        (800, 1000, "4:5"),
        (900, 1600, "9:16"),
        (2100, 900, "21:9"),
        (1200, 800, "3:2"),
    ],
)
async def test_the_nearest_aspect_ratio_is_asked_for(
    provider: StabilityProvider, h: Harness, width: int, height: int, ratio: str
) -> None:
    route = h.router.post(CORE).mock(return_value=image())
    await provider.generate(job(width=width, height=height), h.ctx)
    assert sent_form(route.calls.last.request)["aspect_ratio"] == ratio


async def test_a_json_answer_is_read_too(provider: StabilityProvider, h: Harness) -> None:
    """``Accept: application/json`` (a proxy may ask for it): ``{"image": <base64>, "finish_reason", "seed"}``."""
    body = {"image": base64.b64encode(PNG).decode(), "finish_reason": "SUCCESS", "seed": 99}
    h.router.post(CORE).respond(200, json=body)
    out = await provider.generate(job(), h.ctx)
    assert (out.data, out.seed, out.content_type) == (PNG, 99, None)


async def test_a_filtered_image_is_content_rejected_not_a_result(provider: StabilityProvider, h: Harness) -> None:
    route = h.router.post(CORE).mock(return_value=image(finish="CONTENT_FILTERED"))
    err = await _fails(provider, h)
    assert err.failure_class is FailureClass.CONTENT_REJECTED and "CONTENT_FILTERED" in str(err)
    route.respond(200, json={"image": base64.b64encode(PNG).decode(), "finish_reason": "CONTENT_FILTERED", "seed": 1})
    assert (await _fails(provider, h)).failure_class is FailureClass.CONTENT_REJECTED


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (stability_error(400, "bad_request", "aspect_ratio: must be one of 16:9, 1:1"), FailureClass.INVALID_REQUEST),
        (stability_error(401, "unauthorized", "Missing or invalid API key"), FailureClass.AUTH),
        (stability_error(402, "payment_required", "You lack sufficient credits"), FailureClass.BILLING),
        (
            stability_error(
                403,
                "content_moderation",
                "Your request was flagged by our content moderation system, as a result your request was denied "
                "and you were not charged.",
            ),
            FailureClass.CONTENT_REJECTED,
        ),
        (stability_error(403, "forbidden", "You do not have access to this resource"), FailureClass.AUTH),
        (stability_error(413, "payload_too_large", "Request body too large"), FailureClass.INVALID_REQUEST),
        (
            stability_error(422, "invalid_language", "English is the only supported language"),
            FailureClass.INVALID_REQUEST,
        ),
        (stability_error(429, "rate_limit_exceeded", "You have exceeded the rate limit"), FailureClass.RATE_LIMITED),
        (stability_error(500, "internal_error", "An unexpected server error occurred"), FailureClass.TRANSIENT),
    ],
)
async def test_errors_are_classified(
    provider: StabilityProvider, h: Harness, response: httpx.Response, expected: FailureClass
) -> None:
    """providers.md §4.3/§7: 403 is a moderation refusal when the body says so (not the provider's fault), an
    unusable key otherwise."""
    h.router.post(CORE).mock(return_value=response)
    err = await _fails(provider, h)
    assert err.failure_class is expected and err.http_status in (None, response.status_code)


async def test_a_429_carries_its_retry_after(provider: StabilityProvider, h: Harness) -> None:
    response = stability_error(429, "rate_limit_exceeded", "150 requests per 10 seconds")
    response.headers["Retry-After"] = "10"
    h.router.post(CORE).mock(return_value=response)
    err = await _fails(provider, h)
    assert (err.failure_class, err.retry_after_s, err.http_status) == (FailureClass.RATE_LIMITED, 10.0, 429)


async def test_an_answer_without_an_image_is_transient(provider: StabilityProvider, h: Harness) -> None:
    h.router.post(CORE).respond(200, content=b"", headers={"content-type": "image/png", "finish-reason": "SUCCESS"})
    assert (await _fails(provider, h)).failure_class is FailureClass.TRANSIENT


async def test_an_image_over_the_size_limit_is_refused_and_billed(provider: StabilityProvider, h: Harness) -> None:
    h.router.post(CORE).mock(return_value=image())
    err = await _fails(provider, h, max_image_bytes=len(PNG) - 1)
    assert err.failure_class is FailureClass.INVALID_REQUEST and err.billed
    assert (await provider.generate(job(max_image_bytes=len(PNG)), h.ctx)).data == PNG


async def test_without_a_key_nothing_is_sent(h: Harness) -> None:
    route = h.router.post(CORE).mock(return_value=image())
    err = await _fails(StabilityProvider(), h)
    assert err.failure_class is FailureClass.AUTH and "STABILITY_API_KEY" in str(err)
    assert not route.called and not StabilityProvider().configured


async def test_a_race_loser_drops_its_call_and_leaves_nothing_behind(provider: StabilityProvider, h: Harness) -> None:
    """The call is synchronous: cancelling it is all there is (no job to cancel server-side)."""
    started = asyncio.Event()

    async def hold(request: httpx.Request) -> httpx.Response:
        started.set()
        await asyncio.Future()
        raise AssertionError("unreachable")

    h.router.post(CORE).mock(side_effect=hold)
    task = asyncio.create_task(provider.generate(job(), h.ctx))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert h.spawned == []


@pytest.mark.parametrize(
    ("model", "options", "says"),
    [
        ("sdxl", {}, "model: must be one of 'core', 'ultra', 'sd3', or an SD3 model such as 'sd3.5-large'"),
        ("Core", {}, "model: must be one of 'core', 'ultra', 'sd3'"),
        ("sd3.5-large/../x", {}, "model: must be one of 'core', 'ultra', 'sd3'"),
        (None, {"style_preset": "photographic"}, "options.style_preset: unknown stability option (known: input);"),
        (None, {"inputs": {}}, "options.inputs: unknown stability option (did you mean input? known: input)"),
        (None, {"input": ["x"]}, "options.input: must be an object"),
    ],
)
async def test_settings_it_can_never_use_are_refused_naming_what_it_takes(
    provider: StabilityProvider, h: Harness, model: str | None, options: dict[str, object], says: str
) -> None:
    with pytest.raises(FieldProblem):
        StabilityProvider.check_settings(model, options)
    err = await _fails(provider, h, model=model, options=options)
    assert err.failure_class is FailureClass.INVALID_REQUEST and str(err).startswith(f"stability: {says}"), str(err)
    assert not h.router.calls


async def test_a_base_url_override_is_where_the_form_goes(h: Harness) -> None:
    """IMAGEGEN_STABILITY_BASE_URL: a proxy or a local stand-in."""
    local = "http://127.0.0.1:19432"
    route = h.router.post(f"{local}/v2beta/stable-image/generate/core").mock(return_value=image())
    assert (await StabilityProvider(api_key=KEY, base_url=local).generate(job(), h.ctx)).data == PNG
    assert route.called
