"""BFLProvider against respx routes in BFL's wire format: submit, poll the returned polling_url, Ready with
``result.sample`` (providers.md §4.2)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import respx

from imagegen_core.errors import FailureClass, FieldProblem, ProviderError
from imagegen_core.providers.base import POLL_TRIES
from imagegen_core.providers.bfl import BFLProvider, bfl_size

from .fixtures import (
    BFL_API,
    BFL_POLLING_URL,
    BFL_SAMPLE,
    BFL_TASK_ID,
    Harness,
    bfl_status,
    bfl_submitted,
    job,
    sent_json,
)

KEY = "bfl-test-key-0a1b2c3d"
SUBMIT = f"{BFL_API}/v1/flux-2-pro"


@pytest.fixture
def provider() -> BFLProvider:
    return BFLProvider(api_key=KEY)


def _routes(h: Harness, *statuses: dict[str, object]) -> tuple[respx.Route, respx.Route]:
    submit = h.router.post(SUBMIT).respond(200, json=bfl_submitted())
    polls = h.router.get(BFL_POLLING_URL).mock(side_effect=[httpx.Response(200, json=s) for s in statuses])
    return submit, polls


async def _fails(provider: BFLProvider, h: Harness, **job_fields: object) -> ProviderError:
    with pytest.raises(ProviderError) as err:
        await provider.generate(job(**job_fields), h.ctx)
    assert KEY not in str(err.value) and str(err.value).startswith("bfl: ")
    return err.value


async def test_submit_polls_the_returned_polling_url_until_ready(provider: BFLProvider, h: Harness) -> None:
    """Pending → Pending → Ready through the cluster's polling_url, with x-key on every call; the sample URL,
    its seed and the task id come back."""
    submit, polls = _routes(h, bfl_status("Pending"), bfl_status("Pending"), bfl_status("Ready"))
    out = await provider.generate(job(seed=7, options={"poll_interval_s": 0.25}), h.ctx)
    assert (out.url, out.model, out.seed, out.provider_ref) == (BFL_SAMPLE, "flux-2-pro", 1234, BFL_TASK_ID)
    request = submit.calls.last.request
    assert request.headers["x-key"] == KEY and "authorization" not in request.headers
    assert sent_json(request) == {
        "prompt": "lighthouse at dusk, editorial photo",
        "width": 1440,  # 1600x900 scaled into 256..1440, multiples of 32
        "height": 800,
        "output_format": "jpeg",
        "seed": 7,
    }
    assert polls.call_count == 3 and all(c.request.headers["x-key"] == KEY for c in polls.calls)
    assert h.sleeps == [0.25, 0.25, 0.25] and h.spawned == []


async def test_newer_models_interim_statuses_are_polled_through(provider: BFLProvider, h: Harness) -> None:
    _, polls = _routes(h, bfl_status("Pending"), bfl_status("Reasoning"), bfl_status("Generating"), bfl_status("Ready"))
    assert (await provider.generate(job(), h.ctx)).url == BFL_SAMPLE
    assert polls.call_count == 4


async def test_the_sample_may_be_downloaded_only_from_bfls_delivery_hosts(provider: BFLProvider) -> None:
    policy = provider.download_policy
    assert policy.allows(BFL_SAMPLE)
    assert policy.allows("https://bfldeliveryprod.blob.core.windows.net/results/x/sample.jpeg?sig=1")
    for url in (
        "http://delivery-eu1.bfl.ai/x.jpeg",  # https only
        "https://bfl.ai.evil.example/x.jpeg",
        "https://evilbfl.ai/x.jpeg",
        "https://other.blob.core.windows.net/x.jpeg",  # only BFL's own storage account
        "http://127.0.0.1:8123/x.jpeg",
    ):
        assert not policy.allows(url), url


@pytest.mark.parametrize(
    ("response", "expected", "retry_after"),
    [
        (httpx.Response(401, json={"detail": "Invalid API key"}), FailureClass.AUTH, None),
        (httpx.Response(403, json={"detail": "Forbidden"}), FailureClass.AUTH, None),
        (httpx.Response(402, json={"detail": "Insufficient credits"}), FailureClass.BILLING, None),
        (
            httpx.Response(
                422,
                json={
                    "detail": [
                        {"loc": ["body", "width"], "msg": "width must be a multiple of 32", "type": "value_error"}
                    ]
                },
            ),
            FailureClass.INVALID_REQUEST,
            None,
        ),
        (
            httpx.Response(
                429, json={"detail": "You have exceeded the number of active tasks (24)"}, headers={"Retry-After": "5"}
            ),
            FailureClass.RATE_LIMITED,
            5.0,
        ),
        (httpx.Response(500, json={"detail": "Internal Server Error"}), FailureClass.TRANSIENT, None),
        (httpx.Response(503, text="upstream connect error"), FailureClass.TRANSIENT, None),
        (httpx.Response(200, text="<html>not json</html>"), FailureClass.TRANSIENT, None),
    ],
)
async def test_submit_errors_are_classified(
    provider: BFLProvider, h: Harness, response: httpx.Response, expected: FailureClass, retry_after: float | None
) -> None:
    """providers.md §4.2/§7: 401/403 auth (trip at once), 402 billing, 422 our request, 429 rate limit with its
    Retry-After, 5xx and garbage transient; nothing is polled."""
    h.router.post(SUBMIT).mock(return_value=response)
    polls = h.router.get(BFL_POLLING_URL).respond(200, json=bfl_status("Ready"))
    err = await _fails(provider, h)
    assert err.failure_class is expected and err.retry_after_s == retry_after
    assert not polls.called


@pytest.mark.parametrize("status", ["Request Moderated", "Content Moderated"])
async def test_a_moderated_task_is_content_rejected_with_its_reasons(
    provider: BFLProvider, h: Harness, status: str
) -> None:
    """Not BFL's fault: no breaker hit, no retry (providers.md §7)."""
    _routes(h, bfl_status("Pending"), bfl_status(status, details={"Moderation Reasons": ["Derivative Works Filter"]}))
    err = await _fails(provider, h)
    assert err.failure_class is FailureClass.CONTENT_REJECTED
    assert str(err) == f"bfl: content rejected: {status} (Moderation Reasons: ['Derivative Works Filter'])"


@pytest.mark.parametrize("status", ["Error", "Failed", "Task not found"])
async def test_a_task_that_ends_without_an_image_is_transient(provider: BFLProvider, h: Harness, status: str) -> None:
    _routes(h, bfl_status(status, details="GPU worker lost"))
    err = await _fails(provider, h)
    assert err.failure_class is FailureClass.TRANSIENT and not err.billed
    assert str(err) == f"bfl: task ended: {status} (GPU worker lost)"


async def test_ready_without_a_sample_is_transient_and_billed(provider: BFLProvider, h: Harness) -> None:
    _routes(h, bfl_status("Ready", sample=None))
    err = await _fails(provider, h)
    assert err.failure_class is FailureClass.TRANSIENT and err.billed


async def test_a_polling_url_off_bfls_hosts_is_not_sent_the_key(provider: BFLProvider, h: Harness) -> None:
    h.router.post(SUBMIT).respond(200, json=bfl_submitted(polling_url="https://evil.example/v1/get_result?id=1"))
    evil = h.router.get(host="evil.example").respond(200, json=bfl_status("Ready"))
    err = await _fails(provider, h)
    assert err.failure_class is FailureClass.TRANSIENT and "not a BFL host" in str(err)
    assert not evil.called


async def test_without_a_polling_url_get_result_on_the_base_url_is_polled(provider: BFLProvider, h: Harness) -> None:
    """The API's older answers named only the task id."""
    h.router.post(SUBMIT).respond(200, json=bfl_submitted(polling_url=None))
    polls = h.router.get(f"{BFL_API}/v1/get_result", params={"id": BFL_TASK_ID}).respond(200, json=bfl_status("Ready"))
    assert (await provider.generate(job(), h.ctx)).url == BFL_SAMPLE
    assert polls.call_count == 1


async def test_a_429_or_503_on_a_poll_is_polled_again_not_a_new_task(provider: BFLProvider, h: Harness) -> None:
    """The task is submitted and paid for: a rate-limited or failing poll is sent again (after Retry-After when
    given), without a second submit."""
    submit = h.router.post(SUBMIT).respond(200, json=bfl_submitted())
    polls = h.router.get(BFL_POLLING_URL).mock(
        side_effect=[
            httpx.Response(429, json={"detail": "Too many requests"}, headers={"Retry-After": "2"}),
            httpx.Response(503, text="upstream connect error"),
            httpx.Response(200, json=bfl_status("Ready")),
        ]
    )
    assert (await provider.generate(job(options={"poll_interval_s": 0.25}), h.ctx)).url == BFL_SAMPLE
    assert (submit.call_count, polls.call_count) == (1, 3)
    assert h.sleeps == [0.25, 2.0, 1.0]  # poll interval, Retry-After, backoff


async def test_a_poll_that_keeps_failing_gives_up(provider: BFLProvider, h: Harness) -> None:
    h.router.post(SUBMIT).respond(200, json=bfl_submitted())
    polls = h.router.get(BFL_POLLING_URL).respond(502, text="bad gateway")
    err = await _fails(provider, h)
    assert err.failure_class is FailureClass.TRANSIENT and err.http_status == 502
    assert polls.call_count == POLL_TRIES


async def test_a_task_pending_past_the_budget_times_out(provider: BFLProvider, h: Harness) -> None:
    h.router.post(SUBMIT).respond(200, json=bfl_submitted())
    polls = h.router.get(BFL_POLLING_URL).respond(200, json=bfl_status("Pending"))
    err = await _fails(provider, h, timeout_s=1.0, options={"poll_interval_s": 0.25})
    assert err.failure_class is FailureClass.TIMEOUT and str(err) == f"bfl: task {BFL_TASK_ID} not ready after 1s"
    assert polls.call_count == 4


async def test_a_race_loser_stops_polling_at_once(provider: BFLProvider, h: Harness) -> None:
    """Cancelled while it polls, it re-raises without another call: BFL documents no cancel endpoint, so nothing
    is spawned either."""
    submit = h.router.post(SUBMIT).respond(200, json=bfl_submitted())
    polls = h.router.get(BFL_POLLING_URL).respond(200, json=bfl_status("Pending"))
    h.park_on_sleep = True
    task = asyncio.create_task(provider.generate(job(), h.ctx))
    await h.parked.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (submit.call_count, polls.call_count) == (1, 0) and h.spawned == []


async def test_without_a_key_nothing_is_sent(h: Harness) -> None:
    route = h.router.post(SUBMIT).respond(200, json=bfl_submitted())
    err = await _fails(BFLProvider(), h)
    assert err.failure_class is FailureClass.AUTH and "BFL_API_KEY" in str(err)
    assert not route.called and not BFLProvider().configured


@pytest.mark.parametrize(
    ("width", "height", "sent"),
    [
        (1600, 900, (1440, 800)),
        (1200, 630, (1216, 640)),
        (64, 64, (256, 256)),  # up to the minimum, the normaliser scales it down
        (4096, 4096, (1440, 1440)),
        (800, 1000, (800, 992)),
        (4096, 64, (1440, 256)),  # too extreme to keep its ratio: the long side stays within bounds
    ],
)
def test_sizes_are_multiples_of_32_within_bounds(width: int, height: int, sent: tuple[int, int]) -> None:
    size = bfl_size(width, height)
    assert (size["width"], size["height"]) == sent
    assert all(side % 32 == 0 and 256 <= side <= 1440 for side in sent)


async def test_ultra_is_asked_for_the_nearest_aspect_ratio(provider: BFLProvider, h: Harness) -> None:
    submit = h.router.post(f"{BFL_API}/v1/flux-pro-1.1-ultra").respond(200, json=bfl_submitted())
    h.router.get(BFL_POLLING_URL).respond(200, json=bfl_status("Ready"))
    out = await provider.generate(job(model="flux-pro-1.1-ultra", options={"input": {"raw": True}}), h.ctx)
    assert out.model == "flux-pro-1.1-ultra"
    body = sent_json(submit.calls.last.request)
    assert body["aspect_ratio"] == "16:9" and body["raw"] is True and "width" not in body


@pytest.mark.parametrize(
    ("model", "options", "says"),
    [
        ("FLUX-2-PRO", {}, "model: must be a BFL endpoint name (one of flux-2-max, flux-2-pro, "),
        ("flux-2-pro/../x", {}, "model: must be a BFL endpoint name"),
        ("flux-2-pro?x=1", {}, "model: must be a BFL endpoint name"),
        (None, {"poll_intervall_s": 1}, "options.poll_intervall_s: unknown bfl option (did you mean poll_interval_s? "),
        (None, {"steps": 4}, "options.steps: unknown bfl option (known: input, poll_interval_s); a model's own"),
        (None, {"poll_interval_s": 0}, "options.poll_interval_s: must be a positive number"),
        (None, {"input": "steps=4"}, "options.input: must be an object"),
    ],
)
async def test_settings_it_can_never_use_are_refused_naming_what_it_takes(
    provider: BFLProvider, h: Harness, model: str | None, options: dict[str, object], says: str
) -> None:
    """Refused when a config is saved (``check_settings``), and as our config's fault by a call, sending nothing."""
    with pytest.raises(FieldProblem):
        BFLProvider.check_settings(model, options)
    err = await _fails(provider, h, model=model, options=options)
    assert err.failure_class is FailureClass.INVALID_REQUEST and str(err).startswith(f"bfl: {says}"), str(err)
    assert not h.router.calls


async def test_a_base_url_override_is_followed_for_polls_and_downloads(h: Harness) -> None:
    """IMAGEGEN_BFL_BASE_URL (a regional host, a proxy, a local stand-in): the submit goes there, a polling_url on
    that origin is followed, and outputs may be downloaded from it."""
    local = "http://127.0.0.1:19431"
    provider = BFLProvider(api_key=KEY, base_url=local + "/")
    submit = h.router.post(f"{local}/v1/flux-dev").respond(
        200, json=bfl_submitted(polling_url=f"{local}/v1/get_result?id={BFL_TASK_ID}")
    )
    h.router.get(f"{local}/v1/get_result").respond(200, json=bfl_status("Ready", sample=f"{local}/out.jpeg"))
    out = await provider.generate(job(model="flux-dev"), h.ctx)
    assert submit.called and out.url == f"{local}/out.jpeg"
    assert provider.download_policy.allows(out.url) and not BFLProvider(api_key=KEY).download_policy.allows(out.url)
