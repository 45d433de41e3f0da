"""FalProvider against respx routes shaped like queue.fal.run and fal.run (providers.md §2)."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest
import respx

from imagegen_core.errors import FailureClass, ProviderError
from imagegen_core.providers.base import POLL_TRIES
from imagegen_core.providers.fal import FalProvider

from .fixtures import (
    FAL_IMAGE,
    FAL_QUEUE,
    FAL_REQUEST_ID,
    FAL_SYNC,
    Harness,
    fal_result,
    fal_submitted,
    job,
    sent_json,
)

SUBMIT = f"{FAL_QUEUE}/fal-ai/flux/schnell"
# Queue URLs keep only owner/alias of the app id (providers.md §2.3 quirk).
REQUEST = f"{FAL_QUEUE}/fal-ai/flux/requests/{FAL_REQUEST_ID}"
STATUS = f"{REQUEST}/status"
CANCEL = f"{REQUEST}/cancel"
SYNC = f"{FAL_SYNC}/fal-ai/flux/schnell"
KEY = "fal-key-id:fal-key-secret"


@pytest.fixture
def provider() -> FalProvider:
    return FalProvider(api_key=KEY)


def _queue_routes(h: Harness, *statuses: dict[str, object]) -> tuple[respx.Route, respx.Route, respx.Route]:
    submit = h.router.post(SUBMIT).respond(200, json=fal_submitted())
    status = h.router.get(STATUS).mock(side_effect=[httpx.Response(200, json=s) for s in statuses])
    result = h.router.get(REQUEST).respond(200, json=fal_result())
    return submit, status, result


async def _fails(provider: FalProvider, h: Harness, **job_fields: object) -> ProviderError:
    with pytest.raises(ProviderError) as err:
        await provider.generate(job(**job_fields), h.ctx)
    assert KEY not in str(err.value)
    assert str(err.value).startswith("fal: ")
    return err.value


async def test_queue_flow_submits_polls_and_fetches_the_result(provider: FalProvider, h: Harness) -> None:
    """IN_QUEUE → IN_PROGRESS → COMPLETED through the returned status_url, then GET response_url."""
    submit = h.router.post(SUBMIT).respond(200, json=fal_submitted())
    status = h.router.get(STATUS).mock(
        side_effect=[
            httpx.Response(202, json={"status": "IN_QUEUE", "queue_position": 2}),
            httpx.Response(202, json={"status": "IN_PROGRESS", "logs": []}),
            httpx.Response(200, json={"status": "COMPLETED", "logs": [], "metrics": {"inference_time": 0.4}}),
        ]
    )
    result = h.router.get(REQUEST).respond(200, json=fal_result())
    out = await provider.generate(job(seed=7, timeout_s=14.2, options={"poll_interval_s": 0.25}), h.ctx)
    assert out.url == FAL_IMAGE and out.content_type == "image/jpeg"
    assert (out.model, out.seed, out.provider_ref) == ("fal-ai/flux/schnell", 424242, FAL_REQUEST_ID)
    request = submit.calls.last.request
    assert request.headers["Authorization"] == f"Key {KEY}"
    assert request.headers["X-Fal-Request-Timeout"] == "15"
    assert sent_json(request) == {
        "prompt": "lighthouse at dusk, editorial photo",
        "image_size": {"width": 1600, "height": 900},
        "num_images": 1,
        "num_inference_steps": 4,
        "enable_safety_checker": True,
        "output_format": "jpeg",
        "seed": 7,
    }
    assert status.call_count == 3 and result.call_count == 1
    assert status.calls.last.request.headers["Authorization"] == f"Key {KEY}"
    assert result.calls.last.request.headers["Authorization"] == f"Key {KEY}"
    assert h.sleeps == [0.25, 0.25, 0.25] and h.spawned == []


async def test_request_timeout_header_is_at_least_two(provider: FalProvider, h: Harness) -> None:
    """fal rejects deadlines of one second or less, so short budgets still send 2."""
    submit, _, _ = _queue_routes(h, {"status": "COMPLETED"})
    await provider.generate(job(timeout_s=0.5), h.ctx)
    assert submit.calls.last.request.headers["X-Fal-Request-Timeout"] == "2"


async def test_sync_mode_posts_once_to_fal_run(provider: FalProvider, h: Harness) -> None:
    """mode=sync is a single POST to https://fal.run/{app_id} returning the result; data URIs pass through."""
    data_uri = "data:image/jpeg;base64,/9j/4AAQSkZJRg=="
    route = h.router.post(SYNC).respond(200, json=fal_result(url=data_uri), headers={"x-fal-request-id": "r-9"})
    out = await provider.generate(job(options={"mode": "sync", "input": {"sync_mode": True}}), h.ctx)
    assert out.url == data_uri and out.provider_ref == "r-9"
    request = route.calls.last.request
    assert request.headers["Authorization"] == f"Key {KEY}"
    assert sent_json(request)["sync_mode"] is True and "seed" not in sent_json(request)
    assert h.sleeps == []


async def test_nsfw_result_is_content_rejected(provider: FalProvider, h: Harness) -> None:
    """has_nsfw_concepts [true] means a blacked-out image: a content rejection."""
    h.router.post(SYNC).respond(200, json=fal_result(nsfw=True))
    err = await _fails(provider, h, options={"mode": "sync"})
    assert err.failure_class is FailureClass.CONTENT_REJECTED


async def test_result_without_images_is_transient(provider: FalProvider, h: Harness) -> None:
    """A result with no image is the provider's (retryable) fault."""
    h.router.post(SYNC).respond(200, json={"images": [], "has_nsfw_concepts": []})
    assert (await _fails(provider, h, options={"mode": "sync"})).failure_class is FailureClass.TRANSIENT


@pytest.mark.parametrize(
    ("completed", "expected"),
    [
        ({"status": "COMPLETED", "error": "Content flagged", "error_type": "content_policy_violation"}, "content"),
        ({"status": "COMPLETED", "error": "Runner crashed", "error_type": "runner_disconnected"}, "transient"),
    ],
)
async def test_completed_with_error_is_not_success(
    provider: FalProvider, h: Harness, completed: dict[str, object], expected: str
) -> None:
    """COMPLETED carrying error/error_type fails: content policy → CONTENT_REJECTED, else TRANSIENT."""
    _, _, result = _queue_routes(h, completed)
    err = await _fails(provider, h)
    want = FailureClass.CONTENT_REJECTED if expected == "content" else FailureClass.TRANSIENT
    assert err.failure_class is want
    assert result.call_count == 0
    assert h.spawned == []


@pytest.mark.parametrize(
    ("response", "expected", "retry_after"),
    [
        (httpx.Response(401, json={"detail": "No user found for Key ID and Secret"}), FailureClass.AUTH, None),
        (
            httpx.Response(
                403,
                json={
                    "detail": "User is locked. Reason: Exhausted balance. "
                    "Top up your balance at fal.ai/dashboard/billing."
                },
            ),
            FailureClass.BILLING,
            None,
        ),
        (
            httpx.Response(
                422,
                json={
                    "detail": [
                        {"loc": ["body", "num_images"], "msg": "Input should be <= 4", "type": "less_than_equal"}
                    ]
                },
            ),
            FailureClass.INVALID_REQUEST,
            None,
        ),
        (
            httpx.Response(
                422,
                json={
                    "detail": [
                        {
                            "loc": ["body", "prompt"],
                            "msg": "The content could not be processed because it contained material flagged.",
                            "type": "content_policy_violation",
                            "ctx": {"categories": ["sexual"]},
                        }
                    ]
                },
            ),
            FailureClass.CONTENT_REJECTED,
            None,
        ),
        (
            httpx.Response(429, json={"detail": "Too many requests"}, headers={"Retry-After": "7"}),
            FailureClass.RATE_LIMITED,
            7.0,
        ),
        (
            httpx.Response(
                503,
                json={"detail": "Runner scheduling failure", "error_type": "runner_scheduling_failure"},
                headers={"X-Fal-Error-Type": "runner_scheduling_failure"},
            ),
            FailureClass.TRANSIENT,
            None,
        ),
        (httpx.Response(200, text="<html>bad gateway</html>"), FailureClass.TRANSIENT, None),
    ],
)
async def test_submit_errors_are_classified(
    provider: FalProvider, h: Harness, response: httpx.Response, expected: FailureClass, retry_after: float | None
) -> None:
    """fal's {"detail": ...} errors (string or FastAPI list) map to providers.md §7 classes."""
    h.router.post(SUBMIT).mock(return_value=response)
    err = await _fails(provider, h)
    assert err.failure_class is expected
    assert err.retry_after_s == retry_after


async def test_result_fetch_error_is_classified(provider: FalProvider, h: Harness) -> None:
    """A content-policy 422 from response_url surfaces as CONTENT_REJECTED."""
    h.router.post(SUBMIT).respond(200, json=fal_submitted())
    h.router.get(STATUS).respond(200, json={"status": "COMPLETED"})
    h.router.get(REQUEST).respond(
        422, json={"detail": [{"loc": ["body"], "msg": "flagged", "type": "content_policy_violation"}]}
    )
    assert (await _fails(provider, h)).failure_class is FailureClass.CONTENT_REJECTED


async def test_timeout_and_connection_errors(provider: FalProvider, h: Harness) -> None:
    """A read timeout is TIMEOUT; a refused connection is TRANSIENT."""
    route = h.router.post(SUBMIT)
    route.side_effect = httpx.ReadTimeout("slow")
    assert (await _fails(provider, h)).failure_class is FailureClass.TIMEOUT
    route.side_effect = httpx.ConnectError("refused")
    assert (await _fails(provider, h)).failure_class is FailureClass.TRANSIENT


async def test_invalid_mode_and_missing_key(h: Harness) -> None:
    """Unknown modes are INVALID_REQUEST; no key is AUTH; neither touches the network."""
    route = h.router.post(SUBMIT).respond(200, json=fal_submitted())
    assert (await _fails(FalProvider(api_key=KEY), h, options={"mode": "turbo"})).failure_class is (
        FailureClass.INVALID_REQUEST
    )
    assert (await _fails(FalProvider(), h)).failure_class is FailureClass.AUTH
    assert route.call_count == 0


async def test_cancelled_while_polling_puts_cancel_url(provider: FalProvider, h: Harness) -> None:
    """A race loser spawns PUT cancel_url (the returned one, owner/alias form) and re-raises."""
    h.router.post(SUBMIT).respond(200, json=fal_submitted())
    cancel = h.router.put(CANCEL).respond(202, json={"status": "CANCELLATION_REQUESTED"})
    h.park_on_sleep = True
    task = asyncio.create_task(provider.generate(job(), h.ctx))
    await h.parked.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await h.run_spawned()
    assert cancel.call_count == 1
    assert cancel.calls.last.request.headers["Authorization"] == f"Key {KEY}"


async def test_cancel_answer_already_completed_is_swallowed(provider: FalProvider, h: Harness) -> None:
    """A 400 ALREADY_COMPLETED from the cancel call never escapes the spawned coroutine."""
    h.router.post(SUBMIT).respond(200, json=fal_submitted())
    cancel = h.router.put(CANCEL).respond(400, json={"status": "ALREADY_COMPLETED"})
    h.park_on_sleep = True
    task = asyncio.create_task(provider.generate(job(), h.ctx))
    await h.parked.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await h.run_spawned()
    assert cancel.call_count == 1


async def test_gives_up_after_the_budget_and_cancels(provider: FalProvider, h: Harness) -> None:
    """A request stuck IN_QUEUE past the attempt budget is TIMEOUT and gets cancelled."""
    h.router.post(SUBMIT).respond(200, json=fal_submitted())
    h.router.get(STATUS).respond(202, json={"status": "IN_QUEUE", "queue_position": 9})
    cancel = h.router.put(CANCEL).respond(202, json={"status": "CANCELLATION_REQUESTED"})
    err = await _fails(provider, h, timeout_s=1.0)
    assert err.failure_class is FailureClass.TIMEOUT
    await h.run_spawned()
    assert cancel.call_count == 1


async def test_submit_answer_without_usable_urls_is_transient(provider: FalProvider, h: Harness) -> None:
    """Queue URLs are never guessed; missing or foreign ones fail the attempt without leaking the key."""
    answer = {**fal_submitted(), "status_url": "https://evil.example/status"}
    h.router.post(SUBMIT).respond(200, json=answer)
    evil = h.router.get(host="evil.example").respond(200, json={"status": "COMPLETED"})
    cancel = h.router.put(CANCEL).respond(202, json={"status": "CANCELLATION_REQUESTED"})
    error = await _fails(provider, h)
    assert error.failure_class is FailureClass.TRANSIENT
    # QA run: it said the URLs were missing, though one was there, on another host
    assert str(error) == (
        "fal: queue submit answer points its status_url away from https://queue.fal.run (not followed: the key "
        "would go there)"
    )
    await h.run_spawned()
    assert evil.call_count == 0 and cancel.call_count == 1


async def test_base_url_override_serves_both_modes_and_opens_test_origin(h: Harness) -> None:
    """With IMAGEGEN_FAL_BASE_URL, queue and sync calls go to that origin, and so may downloads."""
    local = "http://127.0.0.1:8123"
    provider = FalProvider(api_key=KEY, base_url=local)
    image = f"{local}/files/out.jpg"
    submit = h.router.post(f"{local}/fal-ai/flux/schnell").mock(
        side_effect=[
            httpx.Response(200, json=fal_submitted(queue=local)),
            httpx.Response(200, json=fal_result(url=image)),
        ]
    )
    h.router.get(f"{local}/fal-ai/flux/requests/{FAL_REQUEST_ID}/status").respond(200, json={"status": "COMPLETED"})
    h.router.get(f"{local}/fal-ai/flux/requests/{FAL_REQUEST_ID}").respond(200, json=fal_result(url=image))
    assert (await provider.generate(job(), h.ctx)).url == image
    assert (await provider.generate(job(options={"mode": "sync"}), h.ctx)).url == image
    assert submit.call_count == 2
    assert provider.download_policy.allows(image)
    default = FalProvider(api_key=KEY).download_policy
    assert not default.allows(image)
    assert default.allows(FAL_IMAGE) and default.allows("https://fal.media/files/x.png")
    assert not default.allows("https://fal.media.evil.com/x.png")


@pytest.mark.parametrize(
    ("model", "options", "field"),
    [
        ("fal-ai", {}, "model"),
        (None, {"mode": "bogus"}, "options.mode"),
        (None, {"poll_interval_s": 0}, "options.poll_interval_s"),
        (None, {"input": "steps=4"}, "options.input"),
    ],
)
async def test_settings_it_can_never_use_fail_the_call_as_our_config_without_any_request(
    provider: FalProvider, h: Harness, model: str | None, options: dict[str, object], field: str
) -> None:
    """The same check that refuses such a config when it is saved (``check_settings``) guards each call of
    an instance built in code."""
    error = await _fails(provider, h, model=model, options=options)
    assert error.failure_class is FailureClass.INVALID_REQUEST
    assert str(error).startswith(f"fal: {field}: ")
    assert not h.router.calls


async def test_a_429_or_503_on_a_status_poll_is_polled_again_not_a_new_job(provider: FalProvider, h: Harness) -> None:
    """The job is queued and paid for: a rate-limited or failing status GET is sent again (after Retry-After
    when given), without a cancel and without a second submit (providers.md §2.3)."""
    submit = h.router.post(SUBMIT).respond(200, json=fal_submitted())
    status = h.router.get(STATUS).mock(
        side_effect=[
            httpx.Response(429, json={"detail": "Too many requests"}, headers={"Retry-After": "2"}),
            httpx.Response(503, text="upstream connect error"),
            httpx.Response(200, json={"status": "COMPLETED"}),
        ]
    )
    result = h.router.get(REQUEST).respond(200, json=fal_result())
    out = await provider.generate(job(options={"poll_interval_s": 0.25}), h.ctx)
    assert out.url == FAL_IMAGE
    assert (submit.call_count, status.call_count, result.call_count) == (1, 3, 1)
    assert h.sleeps == [0.25, 2.0, 1.0] and h.spawned == []  # poll interval, Retry-After, backoff; no cancel


async def test_a_status_poll_that_keeps_failing_gives_up_and_cancels(provider: FalProvider, h: Harness) -> None:
    h.router.post(SUBMIT).respond(200, json=fal_submitted())
    status = h.router.get(STATUS).respond(503, text="upstream connect error")
    cancel = h.router.put(CANCEL).respond(200, json={"status": "CANCELLATION_REQUESTED"})
    err = await _fails(provider, h, options={"poll_interval_s": 0.25})
    assert err.failure_class is FailureClass.TRANSIENT and err.http_status == 503
    assert status.call_count == POLL_TRIES
    await h.run_spawned()
    assert cancel.call_count == 1


@pytest.mark.parametrize(
    "model", ["../../x", "fal-ai/flux/../x", "fal-ai/./flux", "fal-ai/flux?x=1", "fal-ai/flux#f", "fal-ai/fl%75x"]
)
async def test_a_model_id_outside_the_app_id_format_fails_the_call_without_a_request(
    provider: FalProvider, h: Harness, model: str
) -> None:
    err = await _fails(provider, h, model=model)
    assert err.failure_class is FailureClass.INVALID_REQUEST
    assert str(err).startswith("fal: model: must be a fal app id such as 'fal-ai/flux/schnell'") and not h.router.calls


async def test_an_app_id_of_more_segments_is_posted_as_its_path(provider: FalProvider, h: Harness) -> None:
    """fal app ids may have more than three segments (``fal-ai/flux/dev/image-to-image``)."""
    submit = h.router.post(f"{FAL_QUEUE}/fal-ai/flux/dev/image-to-image").respond(200, json=fal_submitted())
    h.router.get(STATUS).respond(200, json={"status": "COMPLETED"})
    h.router.get(REQUEST).respond(200, json=fal_result())
    out = await provider.generate(job(model="fal-ai/flux/dev/image-to-image"), h.ctx)
    assert submit.call_count == 1 and out.model == "fal-ai/flux/dev/image-to-image"


class _Unchecked(FalProvider):
    """A subclass that skips the app id rule: the URL builder must hold on its own."""

    @classmethod
    def check_settings(cls, model: str | None, options: object) -> None:  # type: ignore[override]
        return None


@pytest.mark.parametrize("mode", ["queue", "sync"])
async def test_an_app_id_that_bypassed_the_check_cannot_steer_the_url(h: Harness, mode: str) -> None:
    route = h.router.post(url__regex=r"https://(queue\.)?fal\.run/").respond(200, json=fal_result())
    with contextlib.suppress(ProviderError):  # in queue mode the answer is no submit answer: only the URL matters
        await _Unchecked(api_key=KEY).generate(job(model="fal-ai/flux?x=1#f", options={"mode": mode}), h.ctx)
    url = route.calls.last.request.url
    assert (url.raw_path, url.query, url.fragment) == (b"/fal-ai/flux%3Fx%3D1%23f", b"", "")
    for model in ("../../x", "fal-ai/../x", "fal-ai/./x"):
        err = await _fails(_Unchecked(api_key=KEY), h, model=model, options={"mode": mode})
        assert err.failure_class is FailureClass.INVALID_REQUEST
    assert route.call_count == 1


async def test_a_gateway_timeout_on_a_status_poll_is_polled_again(provider: FalProvider, h: Harness) -> None:
    """fal's client sends its calls again after 408 and an ingress 504 (providers.md §2.3): the queued job is
    fine and paid for, so neither ends the attempt (or cancels the job)."""
    submit = h.router.post(SUBMIT).respond(200, json=fal_submitted())
    status = h.router.get(STATUS).mock(
        side_effect=[
            httpx.Response(408, json={"detail": "Request Timeout"}),
            httpx.Response(504, text="<html><center><h1>504 Gateway Time-out</h1></center></html>"),
            httpx.Response(200, json={"status": "COMPLETED"}),
        ]
    )
    result = h.router.get(REQUEST).respond(200, json=fal_result())
    out = await provider.generate(job(options={"poll_interval_s": 0.25}), h.ctx)
    assert out.url == FAL_IMAGE
    assert (submit.call_count, status.call_count, result.call_count) == (1, 3, 1) and h.spawned == []


async def test_a_passed_request_deadline_on_the_result_is_not_fetched_again(provider: FalProvider, h: Harness) -> None:
    """A 504 with X-Fal-Request-Timeout-Type is the job's own X-Fal-Request-Timeout passing (providers.md §2.3):
    asking again cannot help, so the attempt ends at once as TIMEOUT."""
    h.router.post(SUBMIT).respond(200, json=fal_submitted())
    h.router.get(STATUS).respond(200, json={"status": "COMPLETED"})
    result = h.router.get(REQUEST).respond(
        504,
        json={"detail": "Request timed out", "error_type": "request_timeout"},
        headers={"X-Fal-Request-Timeout-Type": "user", "X-Fal-Error-Type": "request_timeout"},
    )
    err = await _fails(provider, h)
    assert err.failure_class is FailureClass.TIMEOUT and err.http_status == 504
    assert result.call_count == 1
